"""Which requests use the response cache, and the key of a request.

A request is cached when it opts in (`requesty.cache = true`, or the header
`x-cache: true`), when its API key opts in, or when its model is listed in
`[cache] models`. `x-cache: false` opts a request out of the last two.

The key is exact-match on the normalized request, scoped to the key's owner (tenants never
share answers): sha256 over the owner, the requested model id (a policy name stays a
policy name: any of its models may have answered), the request's own fallback list
(`models`: any of them may have answered, so a plain request to the first model must not
be served another model's answer) and every body field that changes the output. Fields
that do not (`stream`, `stream_options`, `user`, and the gateway's own `requesty`) are
left out, so a streamed and a plain request share an entry.
Each field is decoded and re-encoded with sorted keys, so neither key order nor
whitespace changes the key; a whole-number float (`"temperature": 1.0`) keys as the
integer, and an explicit `null` keys as an absent field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec
from msgspec import Raw

from ..config import CacheConfig

# Body fields that never change the answer. `model` and `models` are keyed separately.
IGNORED_FIELDS: Final = frozenset(
    {"model", "stream", "stream_options", "user", "requesty", "models"}
)
# Bump when the normalization or the stored format changes: old entries then just miss.
KEY_VERSION: Final = "v1"
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


def cache_requested(
    model_id: str,
    config: CacheConfig,
    *,
    request_flag: bool = False,
    header: str | None = None,
    key_flag: bool = False,
) -> bool:
    """Should this request be looked up in (and its answer stored to) the cache?

    `request_flag` is `requesty.cache`, `header` the `x-cache` request header (or None),
    `key_flag` the API key's own setting.
    """
    if header is not None:
        value = header.strip().lower()
        if value in _FALSE:
            return False
        if value in _TRUE:
            return True
    return request_flag or key_flag or model_id in config.models


def _normal(value: Any) -> Any:
    # Only top-level numbers (temperature, top_p, ...) are worth it: they are where
    # clients write 1 and 1.0 for the same thing.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _effective_fallbacks(model_id: str, fallbacks: Sequence[str]) -> list[str]:
    """The fallbacks as the router tries them: in order, without repeats or `model_id`."""
    seen = {model_id}
    kept: list[str] = []
    for name in fallbacks:
        if name not in seen:
            seen.add(name)
            kept.append(name)
    return kept


def cache_key(
    owner: str, model_id: str, fields: Mapping[str, Raw], fallbacks: Sequence[str] | None = None
) -> str:
    """The hex sha256 that names this request's answer for this owner.

    `fallbacks` is the request's `models` list. Without any (the common case) the key
    material is what it was before fallbacks were keyed, so existing entries stay valid.
    """
    normalized: dict[str, Any] = {}
    for name, raw in fields.items():
        if name in IGNORED_FIELDS:
            continue
        value = msgspec.json.decode(raw)
        if value is not None:  # an explicit null is the default, as if absent
            normalized[name] = _normal(value)
    parts: list[Any] = [KEY_VERSION, owner, model_id, normalized]
    if fallbacks:
        tried = _effective_fallbacks(model_id, fallbacks)
        if tried:
            parts.append(tried)  # order matters: the first healthy one answers
    material = msgspec.json.encode(parts, order="sorted")
    return hashlib.sha256(material).hexdigest()
