"""AWS Bedrock Runtime's Converse API (`POST /model/{id}/converse[-stream]`) behind the
OpenAI chat shape.

Pure transforms, tested without a network: `build_request` (OpenAI request -> Converse
request), `to_completion` (Converse response -> `chat.completion`), `ConverseTranslator`
(decoded eventstream frames -> `chat.completion.chunk` payloads) and `bedrock_error`
(AWS's exceptions -> the client's errors). `BedrockProvider` is the I/O edge: SigV4
signing (botocore), the eventstream decoding (botocore's `EventStreamBuffer`).
"""

from .faults import bedrock_error, stream_exception
from .provider import BedrockProvider, default_base_url
from .request import build_body, build_request, convert_messages, convert_response_format
from .response import finish_reason, to_completion, to_usage
from .signing import Signer
from .stream import BedrockStream, ConverseTranslator

__all__ = [
    "BedrockProvider",
    "BedrockStream",
    "ConverseTranslator",
    "Signer",
    "bedrock_error",
    "build_body",
    "build_request",
    "convert_messages",
    "convert_response_format",
    "default_base_url",
    "finish_reason",
    "stream_exception",
    "to_completion",
    "to_usage",
]
