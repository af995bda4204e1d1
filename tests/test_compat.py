"""The fences around libraries' private API (`proxy/compat`): the start-up self-check passes on
the installed libraries, and a library that changed under a fence stops the gateway at start
(or, where a public path exists, is logged and the public path taken). A changed library is
a fake module object put in the fence module's place, never the real library patched.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import prometheus_client
import pytest
import redis.asyncio as aredis
from aiohttp import web, web_protocol
from harness import gateway_settings
from redis import exceptions

from proxy import compat
from proxy.app import build_app
from proxy.compat import aiohttp_edge, aiohttp_stream, prometheus
from proxy.compat import redis as redis_fence
from proxy.compat.fence import Fence, run
from proxy.limits.autopipeline import AutoPipeline
from proxy.migrate import migrate


def test_the_self_check_passes_on_the_installed_libraries_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="proxy.compat"):
        assert compat.check() == []
    assert caplog.records == []


class _HandlerWithoutWaiter:
    """aiohttp's RequestHandler as a release that renamed `_waiter` would have it."""

    __slots__ = tuple(name for c in web_protocol.RequestHandler.__mro__
                      for name in vars(c).get("__slots__", ()) if name != "_waiter")


async def test_a_renamed_private_name_stops_the_gateway_at_start_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aiohttp_edge, "web_protocol",
                        SimpleNamespace(RequestHandler=_HandlerWithoutWaiter))
    settings = gateway_settings(tmp_path)
    await migrate(settings.database_url)
    runner = web.AppRunner(build_app(settings))
    with pytest.raises(compat.CompatError) as failed:
        await runner.setup()  # the app's start: its cleanup contexts run
    await runner.cleanup()
    assert "RequestHandler._waiter" in str(failed.value)
    assert "proxy/compat/aiohttp_edge.py" in str(failed.value)


class _WriterFramingInUppercase:
    """A StreamWriter of a release that writes chunk sizes in uppercase hex."""

    def __init__(self, protocol: Any, loop: Any) -> None:
        self._transport = protocol.transport

    def enable_chunking(self) -> None:
        pass

    async def write_headers(self, status_line: str, headers: Any) -> None:
        pass

    async def write(self, chunk: bytes) -> None:
        self._transport.write(b"%X\r\n%b\r\n" % (len(chunk), chunk))


def test_a_stream_writer_that_frames_chunks_otherwise_fails_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aiohttp_stream, "http_writer",
                        SimpleNamespace(StreamWriter=_WriterFramingInUppercase))
    with pytest.raises(compat.CompatError, match="chunk framing"):
        compat.check()


def test_a_stream_writer_whose_constructor_changed_fails_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def writer(protocol: Any) -> None:  # one argument fewer than the fence passes
        raise AssertionError("not reached")

    monkeypatch.setattr(aiohttp_stream, "http_writer", SimpleNamespace(StreamWriter=writer))
    with pytest.raises(compat.CompatError, match="its probe failed"):
        compat.check()


class _HistogramObservingElsewhere:
    def observe(self, amount: float) -> None:
        self.total = amount  # a release that keeps its observations under new names


def test_a_changed_histogram_falls_back_to_observing_at_once_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(prometheus, "prometheus_client",
                        SimpleNamespace(Histogram=_HistogramObservingElsewhere))
    with caplog.at_level(logging.WARNING, logger="proxy.compat"):
        warnings = compat.check()  # not refused: there is a public path
    assert len(warnings) == 1 and "Histogram._buckets in observe" in warnings[0]
    assert "observed one value at a time" in caplog.text
    assert prometheus.histogram_bounds(_HistogramObservingElsewhere()) is None


def test_a_histogram_fold_reads_back_through_the_public_collect() -> None:
    registry = prometheus_client.CollectorRegistry()
    histogram = prometheus_client.Histogram("folded", "f", buckets=(1.0, 2.0),
                                            registry=registry)
    assert prometheus.histogram_bounds(histogram) == [1.0, 2.0, float("inf")]
    prometheus.histogram_add_bucket(histogram, 1, 3)  # three observations in (1, 2]
    prometheus.histogram_add_sum(histogram, 4.5)
    samples = {(s.name, s.labels.get("le")): s.value
               for metric in registry.collect() for s in metric.samples}
    assert samples[("folded_bucket", "1.0")] == 0
    assert samples[("folded_bucket", "2.0")] == samples[("folded_bucket", "+Inf")] == 3
    assert (samples[("folded_count", None)], samples[("folded_sum", None)]) == (3, 4.5)


class _PoolWithoutKwargs:
    connection_class = object


class _ClientOfAChangedRelease:
    connection_pool = _PoolWithoutKwargs()

    @classmethod
    def from_url(cls, url: str) -> _ClientOfAChangedRelease:
        return cls()


def test_a_redis_pool_that_no_longer_says_how_it_connects_falls_back_to_redis_py(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_fence, "redis",
                        SimpleNamespace(asyncio=SimpleNamespace(Redis=_ClientOfAChangedRelease)))
    warnings = compat.check()
    assert len(warnings) == 1 and "connection_kwargs" in warnings[0]
    assert "redis-py's pipelines" in warnings[0]
    assert redis_fence.connection_settings(_ClientOfAChangedRelease()) is None  # type: ignore[arg-type]


async def test_the_lean_connection_is_off_where_redis_py_does_not_say_how_it_connects(
    redis_url: str,
) -> None:
    client = aredis.Redis.from_url(redis_url)
    try:
        assert AutoPipeline(client, 1.0).lean
        client.connection_pool = _PoolWithoutKwargs()  # type: ignore[assignment]
        assert not AutoPipeline(client, 1.0).lean
    finally:
        client.connection_pool = aredis.Redis.from_url(redis_url).connection_pool
        await client.aclose()


def test_a_version_outside_the_checked_range_is_a_warning_not_a_refusal() -> None:
    fence = Fence(name="edge", module="m.py", distribution="aiohttp",
                  checked=((2, 0), (3, 0)), probe=list)
    (warning,) = run(fence)
    assert "was not checked against m.py" in warning and "2.0 to before 3.0" in warning


_REPLIES = [
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "BUSY Redis is busy running a script.",
    "NOSCRIPT No matching script. Please use EVAL.",
    "READONLY You can't write against a read only replica.",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "CLUSTERDOWN The cluster is down",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "LOADING Redis is loading the dataset in memory",
    "MOVED 3999 127.0.0.1:6381",
    "NOAUTH Authentication required.",
    "ERR max number of clients reached",
    "ERR unknown command 'FOO'",
    "user_script:1: Script attempted to access nonexistent global variable",
]


@pytest.mark.parametrize("reply", _REPLIES)
def test_an_error_reply_raises_what_redis_py_raises_for_it(reply: str) -> None:
    from redis._parsers.base import BaseParser  # redis-py's private map: read by tests only

    theirs = BaseParser.parse_error(reply)  # type: ignore[no-untyped-call]
    ours = redis_fence.reply_error(reply)
    assert (type(ours), str(ours)) == (type(theirs), str(theirs))


def test_a_malformed_redirect_reply_is_a_response_error_not_a_crash() -> None:
    error = redis_fence.reply_error("MOVED garbage")  # redis-py's own map raises ValueError
    assert type(error) is exceptions.ResponseError and str(error) == "MOVED garbage"
