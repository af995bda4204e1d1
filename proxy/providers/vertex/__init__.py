"""Vertex AI (`protocol = "vertex"`): Gemini and Claude models in a Google Cloud project.

Google's models speak the Gemini formats (`providers/gemini`), Anthropic's the Messages
formats (`providers/anthropic`) through `rawPredict`; `auth.AccessTokens` keeps the
OAuth token that both carry.
"""

from .auth import AccessTokens, TokenError
from .provider import ANTHROPIC_VERSION, VertexProvider, anthropic_body, default_base_url, publisher

__all__ = [
    "ANTHROPIC_VERSION",
    "AccessTokens",
    "TokenError",
    "VertexProvider",
    "anthropic_body",
    "default_base_url",
    "publisher",
]
