"""Answers already in the client's own dialect: a passed-through body or event stream, or
one a dialect translated from the internal (chat) model.

The relay sends a `WireStream` as it comes, without the chat tail (`data: [DONE]`, the
usage chunk): its own events end it, and it renders its own mid-stream error event.
"""

from __future__ import annotations

import abc

from ..errors import UpstreamError
from .base import ChatStream, Completion


class WireCompletion(Completion):
    """A non-streamed answer whose `payload` is the client dialect's body, not a chat one."""

    __slots__ = ()


class WireStream(ChatStream):
    """A stream whose events are the client dialect's (passed through or translated)."""

    ends_itself = True

    @abc.abstractmethod
    def error_event(self, error: UpstreamError) -> bytes:
        """The event(s) that tell the client the stream failed after its 200."""
