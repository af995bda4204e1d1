"""Anthropic Messages (`POST /v1/messages`) in, Chat Completions (the internal model) out.

`parse_request` types a Messages body and `to_chat` turns it into the chat body;
`to_message` turns a completion into a Messages answer; `MessagesStream` turns chat chunks
into Messages SSE events as they come; `errors` renders gateway errors in Anthropic's shape.
"""

from .errors import error_body, error_event, error_type, render
from .request import MessagesRequest, parse_request, to_chat
from .response import stop_reason, to_message, usage
from .stream import MessagesStream

__all__ = [
    "MessagesRequest",
    "MessagesStream",
    "error_body",
    "error_event",
    "error_type",
    "parse_request",
    "render",
    "stop_reason",
    "to_chat",
    "to_message",
    "usage",
]
