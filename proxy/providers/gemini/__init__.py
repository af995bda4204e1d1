"""Google's Gemini API (`models/{model}:generateContent`) behind the OpenAI chat shape.

Pure transforms, tested without a network: `build_request` (OpenAI request -> Gemini
request), `to_completion` (Gemini response -> OpenAI `chat.completion`),
`StreamTranslator` (Gemini SSE events -> OpenAI chunks) and `google_error` (Google's
error body -> the client's error). `GeminiProvider` is the I/O edge; Vertex AI's Google
models reuse all of it with another URL and OAuth (`providers/vertex`).
"""

from .errors import google_error
from .provider import GeminiProvider, method_path
from .request import build_body, build_request
from .response import to_completion, to_usage
from .stream import GeminiStream, StreamTranslator

__all__ = [
    "GeminiProvider",
    "GeminiStream",
    "StreamTranslator",
    "build_body",
    "build_request",
    "google_error",
    "method_path",
    "to_completion",
    "to_usage",
]
