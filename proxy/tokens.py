"""Token estimates for when a provider reports no usage (a cut stream, a client gone).

No tokenizer at run time (tiktoken downloads its vocabularies): about four characters a
token, as DESIGN.md decides; records using these numbers are marked `estimated`.
"""

from __future__ import annotations

from typing import Final

from .wire import Message

CHARS_PER_TOKEN: Final = 4
IMAGE_CHARS: Final = 1024  # an image part counts as a fixed-size prompt chunk
PER_MESSAGE_TOKENS: Final = 3  # role and framing, as OpenAI's own accounting adds


def text_tokens(chars: int) -> int:
    return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def prompt_tokens(messages: list[Message]) -> int:
    chars = 0
    for m in messages:
        if isinstance(m.content, str):
            chars += len(m.content)
        elif m.content:
            for part in m.content:
                text = part.get("text")
                chars += len(text) if isinstance(text, str) else IMAGE_CHARS
    return max(1, text_tokens(chars)) + PER_MESSAGE_TOKENS * len(messages)
