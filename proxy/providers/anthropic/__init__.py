"""Anthropic's Messages API (`POST /v1/messages`) behind the OpenAI chat shape.

Three pure transforms do the work and are tested without a network:
`build_request` (OpenAI request -> Anthropic request), `to_completion` (Anthropic
message -> OpenAI `chat.completion`) and `StreamTranslator` (Anthropic SSE events ->
OpenAI `chat.completion.chunk` payloads). `AnthropicProvider` is the I/O edge around them.
"""

from .provider import API_VERSION, AnthropicProvider
from .request import (
    OUTPUT_TOOL,
    MAX_CACHE_BREAKPOINTS,
    apply_auto_cache,
    build_body,
    build_request,
    convert_messages,
    convert_tool_choice,
    convert_tools,
    structured_tool,
)
from .response import finish_reason, to_completion, to_usage, usage_payload
from .stream import AnthropicStream, StreamTranslator

__all__ = [
    "API_VERSION",
    "MAX_CACHE_BREAKPOINTS",
    "OUTPUT_TOOL",
    "AnthropicProvider",
    "AnthropicStream",
    "StreamTranslator",
    "apply_auto_cache",
    "build_body",
    "build_request",
    "convert_messages",
    "convert_tool_choice",
    "convert_tools",
    "finish_reason",
    "structured_tool",
    "to_completion",
    "to_usage",
    "usage_payload",
]
