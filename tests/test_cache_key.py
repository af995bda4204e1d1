"""Cache opt-in and key normalization."""

from __future__ import annotations

import msgspec
from msgspec import Raw

from proxy.cache import cache_key, cache_requested
from proxy.config import CacheConfig
from proxy.wire import decode_body


def fields(body: bytes) -> dict[str, Raw]:
    return decode_body(body)


BASE = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.2}'


def test_same_request_in_another_key_order_and_spacing_has_the_same_key() -> None:
    other = (b'{ "temperature": 0.20,\n "messages": [ {"content": "hi", "role": "user"} ],'
             b' "model": "m" }')
    assert cache_key("org", "m", fields(BASE)) == cache_key("org", "m", fields(other))


def test_owner_scopes_the_key() -> None:
    assert cache_key("org-a", "m", fields(BASE)) != cache_key("org-b", "m", fields(BASE))


def test_model_scopes_the_key() -> None:
    assert cache_key("org", "m", fields(BASE)) != cache_key("org", "policy/p", fields(BASE))


def test_a_parameter_that_changes_the_output_changes_the_key() -> None:
    hotter = BASE.replace(b"0.2", b"0.9")
    seeded = BASE[:-1] + b',"seed":1}'
    tools = BASE[:-1] + b',"tools":[{"type":"function","function":{"name":"f"}}]}'
    keys = {cache_key("org", "m", fields(b)) for b in (BASE, hotter, seeded, tools)}
    assert len(keys) == 4


def test_message_content_changes_the_key() -> None:
    other = BASE.replace(b'"hi"', b'"hello"')
    assert cache_key("org", "m", fields(BASE)) != cache_key("org", "m", fields(other))


def test_fields_that_do_not_change_the_output_are_left_out() -> None:
    extra = BASE[:-1] + (
        b',"stream":true,"stream_options":{"include_usage":true},"user":"u-1",'
        b'"requesty":{"user_id":"x","cache":true},"models":["a","b"]}'
    )
    assert cache_key("org", "m", fields(BASE)) == cache_key("org", "m", fields(extra))


def test_whole_number_floats_and_explicit_nulls_normalize() -> None:
    a = fields(b'{"messages":[],"temperature":1,"top_p":null}')
    b = fields(b'{"messages":[],"temperature":1.0}')
    assert cache_key("org", "m", a) == cache_key("org", "m", b)


def test_key_is_a_sha256_hex() -> None:
    key = cache_key("org", "m", fields(BASE))
    assert len(key) == 64 and int(key, 16) >= 0


def test_opt_in_by_request_header_key_or_model() -> None:
    cfg = CacheConfig(models=("cached/model",))
    assert not cache_requested("m", cfg)
    assert cache_requested("m", cfg, request_flag=True)
    assert cache_requested("m", cfg, header="true")
    assert cache_requested("m", cfg, header=" TRUE ")
    assert cache_requested("m", cfg, key_flag=True)
    assert cache_requested("cached/model", cfg)


def test_header_false_opts_out() -> None:
    cfg = CacheConfig(models=("cached/model",))
    assert not cache_requested("cached/model", cfg, header="false")
    assert not cache_requested("m", cfg, key_flag=True, header="0")


def test_key_input_is_not_mutated() -> None:
    f = fields(BASE)
    before = {k: bytes(v) for k, v in f.items()}
    cache_key("org", "m", f)
    assert {k: bytes(v) for k, v in f.items()} == before
    assert msgspec.json.decode(f["temperature"]) == 0.2


def test_the_fallback_list_scopes_the_key() -> None:
    plain = cache_key("org", "m", fields(BASE))
    with_fallback = cache_key("org", "m", fields(BASE), ["b"])
    reordered = cache_key("org", "m", fields(BASE), ["c", "b"])
    in_order = cache_key("org", "m", fields(BASE), ["b", "c"])
    assert len({plain, with_fallback, reordered, in_order}) == 4


def test_fallbacks_the_router_would_skip_do_not_split_the_key() -> None:
    # The router drops repeats and the model itself: the same models tried in the same order.
    plain = cache_key("org", "m", fields(BASE))
    assert cache_key("org", "m", fields(BASE), []) == plain
    assert cache_key("org", "m", fields(BASE), ["m"]) == plain
    assert (cache_key("org", "m", fields(BASE), ["b", "m", "b"])
            == cache_key("org", "m", fields(BASE), ["b"]))
