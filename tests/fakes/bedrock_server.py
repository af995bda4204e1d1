"""A fake Bedrock Runtime: `POST /model/{modelId}/converse` and `/converse-stream`.

What AWS checks, it checks: every request must carry a valid SigV4 signature (service
`bedrock`, the fake's region, its key pair), recomputed here with botocore from the
request as received; an unknown key is `UnrecognizedClientException`, a wrong signature
`InvalidSignatureException`, a stale date `InvalidSignatureException` too, all 403. The
body must have Converse's shape where Bedrock refuses one (`ValidationException`): known
top-level fields only, turns that start with the user and alternate, no blank text, the
tools declared when the conversation holds tool blocks.

Streams are `application/vnd.amazon.eventstream` frames encoded here per the event
stream spec (prelude of total and header lengths and its CRC32, typed string headers,
the JSON payload, a CRC32 of the whole), as Bedrock sends them: `messageStart`,
text `contentBlockDelta`s, per tool `contentBlockStart` (toolUse id and name), input
deltas and `contentBlockStop`, `messageStop`, then `metadata` with usage and metrics;
each payload padded with a `p` field, as AWS pads them. Errors are AWS's: the
`x-amzn-ErrorType` header and a `{"message"}` body; in a stream, an exception frame.
"""

from __future__ import annotations

import datetime
import struct
import zlib
from typing import Any, Final

import msgspec
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .behaviour import ErrorEvent, Fail, FakeServer, Reply, argument_pieces, encode, request_id

ACCESS_KEY: Final = "AKIAIOSFODNN7EXAMPLE"  # AWS's documented example pair
SECRET_KEY: Final = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION: Final = "eu-central-1"
EVENTSTREAM: Final = "application/vnd.amazon.eventstream"
_PAD: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"
_MAX_SKEW: Final = datetime.timedelta(minutes=5)
_REQUEST_FIELDS: Final = {
    "messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig",
    "additionalModelRequestFields", "promptVariables", "additionalModelResponseFieldPaths",
    "requestMetadata", "performanceConfig", "serviceTier", "outputConfig",
}
_ERROR_TYPES: Final[dict[int, str]] = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


# -- the event stream encoding -------------------------------------------------------------


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event stream message: prelude (total length, headers length, CRC32 of the
    two), headers (name length, name, type 7 = string, value length, value), payload,
    CRC32 of everything before it."""
    head = b"".join(
        struct.pack(">B", len(n)) + n.encode() + b"\x07" + struct.pack(">H", len(v)) + v.encode()
        for n, v in headers.items()
    )
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + head + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event_frame(event_type: str, body: dict[str, Any]) -> bytes:
    return encode_frame(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        encode({**body, "p": _PAD}),
    )


def exception_frame(exception_type: str, message: str) -> bytes:
    return encode_frame(
        {":exception-type": exception_type, ":content-type": "application/json",
         ":message-type": "exception"},
        encode({"message": message}),
    )


# -- answers -------------------------------------------------------------------------------


def _stop_reason(reply: Reply) -> str:
    return reply.finish_reason or ("tool_use" if reply.tools else "end_turn")


def _tool_id(number: int, i: int) -> str:
    return f"tooluse_fake{number:06d}x{i}"


def usage(reply: Reply) -> dict[str, int]:
    out = reply.output_tokens()
    u = {"inputTokens": reply.prompt_tokens, "outputTokens": out,
         "totalTokens": reply.prompt_tokens + out + reply.cached_tokens + reply.cache_write_tokens}
    if reply.cached_tokens or reply.cache_write_tokens:
        u["cacheReadInputTokens"] = reply.cached_tokens
        u["cacheWriteInputTokens"] = reply.cache_write_tokens
    return u


def response(reply: Reply, req: Any, number: int) -> bytes:
    content: list[dict[str, Any]] = []
    if reply.content:
        content.append({"text": reply.content})
    for i, (name, args) in enumerate(reply.tools):
        content.append({"toolUse": {"toolUseId": _tool_id(number, i), "name": name,
                                    "input": msgspec.json.decode(args)}})
    body: dict[str, Any] = {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": _stop_reason(reply),
        "metrics": {"latencyMs": 321},
    }
    if not reply.omit_usage:
        body["usage"] = usage(reply)
    return encode(body)


def frames(reply: Reply, req: Any, number: int) -> list[bytes]:
    out = [event_frame("messageStart", {"role": "assistant"})]
    index = 0
    if reply.content:
        out += [event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
                for piece in reply.pieces()]
        out.append(event_frame("contentBlockStop", {"contentBlockIndex": 0}))
        index = 1
    for i, (name, args) in enumerate(reply.tools):
        block = index + i
        start = {"toolUse": {"toolUseId": _tool_id(number, i), "name": name}}
        out.append(event_frame("contentBlockStart", {"contentBlockIndex": block, "start": start}))
        out += [event_frame("contentBlockDelta",
                            {"contentBlockIndex": block, "delta": {"toolUse": {"input": piece}}})
                for piece in argument_pieces(args)]
        out.append(event_frame("contentBlockStop", {"contentBlockIndex": block}))
    out.append(event_frame("messageStop", {"stopReason": _stop_reason(reply)}))
    if not reply.omit_usage:
        out.append(event_frame("metadata", {"usage": usage(reply), "metrics": {"latencyMs": 321}}))
    return out


# -- the server ----------------------------------------------------------------------------


class FakeBedrock(FakeServer):
    request_id_header = "x-amzn-RequestId"
    sse_content_type = EVENTSTREAM

    def __init__(
        self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, region: str = REGION
    ) -> None:
        super().__init__()
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.session_token: str | None = None  # required when set
        self.signatures_checked = 0

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/model/{model_id}/converse", self._converse),
            web.post("/model/{model_id}/converse-stream", self._converse_stream),
        ]

    def error_body(self, status: int, message: str, error_type: str | None) -> bytes:
        return encode({"message": message})

    def error_headers(self, f: Fail) -> dict[str, str]:
        kind = f.error_type or _ERROR_TYPES.get(f.status, "InternalServerException")
        return {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"}

    def error_frame(self, event: ErrorEvent) -> bytes:
        return exception_frame(event.error_type or "internalServerException", event.message)

    async def _converse(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, stream=False)

    async def _converse_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, stream=True)

    async def _answer(self, request: web.Request, stream: bool) -> web.StreamResponse:
        body = await request.read()
        refused = self._check_signature(request, body) or _check_body(body)
        if refused is not None:
            return refused
        return await self.serve(request, response, frames, stream=stream)

    # -- what AWS checks ---------------------------------------------------------------

    def _check_signature(self, request: web.Request, body: bytes) -> web.Response | None:
        self.signatures_checked += 1
        auth = request.headers.get("Authorization", "")
        fields = dict(
            part.strip().split("=", 1)
            for part in auth.removeprefix("AWS4-HMAC-SHA256 ").split(",") if "=" in part
        )
        if not auth.startswith("AWS4-HMAC-SHA256 ") or not fields.keys() >= {
            "Credential", "SignedHeaders", "Signature"
        }:
            return aws_error(403, "IncompleteSignatureException",
                             "Authorization header requires 'Credential', 'SignedHeaders' and "
                             "'Signature' parameters.")
        key, _, scope = fields["Credential"].partition("/")
        if key != self.access_key:
            return aws_error(403, "UnrecognizedClientException",
                             "The security token included in the request is invalid.")
        if self.session_token and request.headers.get("X-Amz-Security-Token") != self.session_token:
            return aws_error(403, "UnrecognizedClientException",
                             "The security token included in the request is invalid.")
        stamp = request.headers.get("X-Amz-Date", "")
        try:
            when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
        except ValueError:
            return aws_error(403, "IncompleteSignatureException",
                             "X-Amz-Date is missing or malformed.")
        if abs(datetime.datetime.now(datetime.UTC) - when) > _MAX_SKEW:
            return aws_error(403, "InvalidSignatureException", "Signature expired.")
        if scope != f"{stamp[:8]}/{self.region}/bedrock/aws4_request":
            return aws_error(403, "InvalidSignatureException",
                             f"Credential should be scoped to a valid region and service "
                             f"('{self.region}', 'bedrock'), not '{scope}'.")
        signed = fields["SignedHeaders"].split(";")
        headers = {name: request.headers.get(name, "") for name in signed}
        url = f"http://{request.headers.get('Host', '')}{request.rel_url.raw_path}"
        aws = AWSRequest(method=request.method, url=url, data=body, headers=headers)
        aws.context["timestamp"] = stamp
        signer = SigV4Auth(
            Credentials(self.access_key, self.secret_key, self.session_token), "bedrock",
            self.region,
        )
        canonical = signer.canonical_request(aws)
        expected = signer.signature(signer.string_to_sign(aws, canonical), aws)
        if expected != fields["Signature"]:
            return aws_error(403, "InvalidSignatureException",
                             "The request signature we calculated does not match the signature "
                             "you provided. Check your AWS Secret Access Key and signing method. "
                             "Consult the service documentation for details.")
        return None


def _check_body(body: bytes) -> web.Response | None:
    """Bedrock's ValidationExceptions for the mistakes a translator can make."""
    try:
        req = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return aws_error(400, "SerializationException",
                         "Start of structure or map found where not expected.")
    unknown = set(req) - _REQUEST_FIELDS if isinstance(req, dict) else {"?"}
    if unknown:
        return aws_error(400, "ValidationException",
                         f"Unknown parameter(s) in the request body: {sorted(unknown)}")
    messages = req.get("messages") or []
    if not messages or messages[0].get("role") != "user":
        return aws_error(400, "ValidationException",
                         "A conversation must start with a user message. Try again with a "
                         "conversation that starts with a user message.")
    tool_blocks = False
    for i, m in enumerate(messages):
        if i and m.get("role") == messages[i - 1].get("role"):
            return aws_error(400, "ValidationException",
                             "A conversation must alternate between user and assistant roles. "
                             "Make sure the conversation alternates between user and assistant "
                             "roles and try again.")
        for block in m.get("content") or ():
            if "text" in block and not str(block["text"]).strip():
                return aws_error(400, "ValidationException",
                                 "The text field in the ContentBlock object at messages."
                                 f"{i}.content is blank. Add text to the text field, "
                                 "and try again.")
            tool_blocks = tool_blocks or "toolUse" in block or "toolResult" in block
    if tool_blocks and not req.get("toolConfig"):
        return aws_error(400, "ValidationException",
                         "The toolConfig field must be defined when using toolUse and toolResult "
                         "content blocks.")
    return None


def aws_error(status: int, kind: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=encode({"message": message}),
        content_type="application/json",
        headers={"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.coral.service/",
                 "x-amzn-RequestId": request_id(0)},
    )
