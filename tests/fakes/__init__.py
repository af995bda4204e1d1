"""Fake upstream providers: real HTTP servers speaking OpenAI's and Anthropic's wire formats."""

from .anthropic_server import FakeAnthropic
from .azure_server import FakeAzure
from .bedrock_server import FakeBedrock
from .behaviour import (
    Behaviour,
    Cut,
    ErrorEvent,
    Fail,
    FakeServer,
    Gate,
    Hang,
    Recorded,
    Reply,
    Reset,
)
from .openai_server import FakeOpenAI, embedding_for

__all__ = [
    "Behaviour",
    "Cut",
    "ErrorEvent",
    "Fail",
    "FakeAnthropic",
    "FakeAzure",
    "FakeBedrock",
    "FakeOpenAI",
    "FakeServer",
    "Gate",
    "Hang",
    "Recorded",
    "Reply",
    "Reset",
    "embedding_for",
]
