"""OpenAI embeddings request -> Gemini `batchEmbedContents`, and the answer back.

The Gemini API reports no token usage for embeddings: the gateway estimates it (the record
says `estimated`). `encoding_format: "base64"` is served as OpenAI does: little-endian
float32 bytes, base64-encoded.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import msgspec
from msgspec import Raw

from ...errors import InvalidRequest
from ...wire import encode_raw, field


class _Embedding(msgspec.Struct):
    values: list[float] = []


class _Batch(msgspec.Struct):
    embeddings: list[_Embedding] = []


_decode_batch = msgspec.json.Decoder(_Batch).decode


def embed_request(upstream: str, fields: dict[str, Raw]) -> bytes:
    value = field(fields, "input", str | list[Any])
    texts = [value] if isinstance(value, str) else value
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest(
            "Gemini embedding models take text: `input` must be a string or a list of strings.",
            param="input",
        )
    dimensions = field(fields, "dimensions", int | None)
    if dimensions is not None and dimensions < 1:
        raise InvalidRequest("`dimensions` must be at least 1.", param="dimensions")
    fmt = field(fields, "encoding_format", str | None)
    if fmt not in (None, "float", "base64"):
        raise InvalidRequest("`encoding_format` must be `float` or `base64`.",
                             param="encoding_format")
    name = "models/" + upstream
    requests: list[dict[str, Any]] = []
    for text in texts:
        req: dict[str, Any] = {"model": name, "content": {"parts": [{"text": text}]}}
        if dimensions is not None:
            req["outputDimensionality"] = dimensions
        requests.append(req)
    return msgspec.json.encode({"requests": requests})


def to_embeddings(body: bytes, upstream: str, fields: dict[str, Raw]) -> dict[str, Raw] | None:
    """The OpenAI `list` of embeddings; None when the body is not a batch answer."""
    try:
        batch = _decode_batch(body)
    except msgspec.MsgspecError:
        return None
    base64_out = field(fields, "encoding_format", str | None) == "base64"
    data = []
    for i, e in enumerate(batch.embeddings):
        vector: Any = e.values
        if base64_out:
            vector = base64.b64encode(struct.pack(f"<{len(e.values)}f", *e.values)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    return {
        "object": Raw(b'"list"'),
        "data": encode_raw(data),
        "model": encode_raw(upstream),
    }
