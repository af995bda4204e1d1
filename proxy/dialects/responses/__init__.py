"""OpenAI Responses (`POST /v1/responses`) in, Chat Completions (the internal model) out.

`parse_request` types a Responses body and `to_chat` turns it into the chat body;
`to_response` turns a completion into a `response` object; `ResponsesStream` turns chat
chunks into Responses SSE events as they come. Errors keep OpenAI's own shape
(`errors.ApiError.body`), which the Responses API shares with Chat Completions.
"""

from .request import ResponsesRequest, parse_request, to_chat
from .response import to_response, usage
from .stream import ResponsesStream

__all__ = [
    "ResponsesRequest",
    "ResponsesStream",
    "parse_request",
    "to_chat",
    "to_response",
    "usage",
]
