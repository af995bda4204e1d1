"""Anthropic Messages (`POST /v1/messages`) in, Chat Completions (the internal model) out.

`to_chat` turns a Messages request into the chat body; `to_message` turns a completion
into a Messages answer; `MessagesStream` turns chat chunks into Messages SSE events as
they come; `errors` renders gateway errors in Anthropic's shape.
"""

from .errors import error_body, error_event, error_type, render
from .request import MessagesRequest, to_chat
from .response import stop_reason, to_message, usage
from .stream import MessagesStream

__all__ = [
    "MessagesRequest",
    "MessagesStream",
    "error_body",
    "error_event",
    "error_type",
    "render",
    "stop_reason",
    "to_chat",
    "to_message",
    "usage",
]
