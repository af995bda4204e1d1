"""The lean Redis connection under the limits' scripts (`resp.py`, through `AutoPipeline`).

Its callers (`RedisLimits`) tell an outage from a refusal by the exception's class, so every
reply and every failure must reach the caller it belongs to, as redis-py would have raised
it. Real Redis where Redis answers; a fake server of the test's own where it must not
(silent, hanging up, refusing).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis.asyncio as aredis
import uvloop
from redis import exceptions
from redis.commands.core import AsyncScript

from proxy.limits.autopipeline import AutoPipeline
from proxy.limits.resp import Address, RespConnection

# Echoes its argument, or answers with it as an error reply when it starts with "!".
ECHO = """
if string.sub(ARGV[1], 1, 1) == '!' then return redis.error_reply(string.sub(ARGV[1], 2)) end
redis.call('SET', KEYS[1], ARGV[1])
return {tonumber(ARGV[2]), redis.call('GET', KEYS[1])}
"""


def unique(script: str) -> str:
    """The script with a comment of its own: not yet in Redis's script cache."""
    return f"-- {uuid.uuid4().hex}\n{script}"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aredis.Redis]:
    made = aredis.Redis.from_url(redis_url)
    yield made
    await made.aclose()


@pytest.fixture
async def pipeline(client: aredis.Redis) -> AsyncIterator[AutoPipeline]:
    made = AutoPipeline(client, timeout_s=2.0)
    yield made
    await made.close()


def echo(pipeline: AutoPipeline, script: AsyncScript, ns: str, i: int, value: str
         ) -> asyncio.Future[Any]:
    return pipeline.call(script, [f"{ns}:{i % 7}"], [value, i])


def expected(i: int, value: str) -> list[Any]:
    return [i, value.encode()]


# --- replies reach their callers --------------------------------------------------------


async def fifo_scenario(pipeline: AutoPipeline, script: AsyncScript, ns: str) -> None:
    """100 callers, 10 calls each, in flight together: every reply lands on its own caller."""

    async def caller(c: int) -> list[Any]:
        got = []
        for n in range(10):
            i = c * 10 + n
            value = f"!ERR refused {i}" if i % 3 == 0 else f"v{i}"
            try:
                got.append(await echo(pipeline, script, ns, i, value))
            except exceptions.ResponseError as e:
                got.append(str(e))
        return got

    results = await asyncio.gather(*(caller(c) for c in range(100)))
    for c, got in enumerate(results):
        for n, reply in enumerate(got):
            i = c * 10 + n
            assert reply == (f"refused {i}" if i % 3 == 0 else expected(i, f"v{i}")), i


async def test_concurrent_calls_each_get_their_own_reply_or_error(
    pipeline: AutoPipeline, client: aredis.Redis, redis_namespace: str,
) -> None:
    await fifo_scenario(pipeline, client.register_script(ECHO), redis_namespace)


def test_concurrent_calls_each_get_their_own_reply_on_uvloop(
    redis_url: str, redis_namespace: str,
) -> None:
    async def scenario() -> None:
        client = aredis.Redis.from_url(redis_url)
        pipeline = AutoPipeline(client, timeout_s=2.0)
        try:
            await fifo_scenario(pipeline, client.register_script(ECHO), redis_namespace)
        finally:
            await pipeline.close()
            await client.aclose()

    uvloop.run(scenario())


async def test_first_call_of_an_iteration_goes_at_once_and_the_rest_are_gathered(
    pipeline: AutoPipeline, client: aredis.Redis, redis_namespace: str,
) -> None:
    script = client.register_script(ECHO)
    assert await echo(pipeline, script, redis_namespace, 0, "open") == expected(0, "open")
    connection = pipeline._connection  # written-and-unanswered calls are what this test reads
    assert connection is not None
    first, second, third = (echo(pipeline, script, redis_namespace, i, f"v{i}") for i in (1, 2, 3))
    assert list(connection.waiting()) == [first]  # written before anything else ran
    await asyncio.sleep(0)  # one loop iteration: the gathered calls go out together
    assert list(connection.waiting()) == [first, second, third]
    assert list(await asyncio.gather(first, second, third)) == [
        expected(i, f"v{i}") for i in (1, 2, 3)]


@pytest.mark.parametrize("batched", [False, True])
async def test_replies_have_the_types_redis_py_gives(
    client: aredis.Redis, redis_namespace: str, batched: bool,
) -> None:
    script = client.register_script(
        "return {1, -2, 'three', false, {4, 'five'}, redis.status_reply('OK')}")
    lean, old = AutoPipeline(client, 2.0), AutoPipeline(client, 2.0, lean=False)
    try:
        n = 3 if batched else 1
        for pipeline in (lean, old):
            replies = await asyncio.gather(*(pipeline.call(script, [], []) for _ in range(n)))
            assert replies == [[1, -2, b"three", None, [4, b"five"], b"OK"]] * n
    finally:
        await lean.close()
        await old.close()


async def test_a_script_redis_lost_is_sent_again_without_the_caller_noticing(
    pipeline: AutoPipeline, client: aredis.Redis, redis_namespace: str,
) -> None:
    cached, lost = client.register_script(unique(ECHO)), client.register_script(unique(ECHO))
    await echo(pipeline, cached, redis_namespace, 0, "warm")
    await client.script_flush()
    await echo(pipeline, cached, redis_namespace, 0, "warm")  # loaded again, by the lean path
    assert await client.script_exists(cached.sha, lost.sha) == [True, False]
    # One batch: the calls to the lost script go again as EVAL, after the others.
    calls = [echo(pipeline, lost if i % 2 else cached, redis_namespace, i, f"v{i}")
             for i in range(40)]
    assert await asyncio.gather(*calls) == [expected(i, f"v{i}") for i in range(40)]
    assert await client.script_exists(lost.sha) == [True]


@pytest.mark.parametrize(("reply", "error"), [
    ("READONLY You can't write against a read only replica.", exceptions.ReadOnlyError),
    ("OOM command not allowed when used memory > 'maxmemory'.", exceptions.OutOfMemoryError),
    ("BUSY Redis is busy running a script.", exceptions.ResponseError),
    ("TRYAGAIN Multiple keys request during rehashing of slot", exceptions.TryAgainError),
    ("ERR something else", exceptions.ResponseError),
])
async def test_an_error_reply_is_redis_pys_exception_and_spares_its_batch(
    pipeline: AutoPipeline, client: aredis.Redis, redis_namespace: str,
    reply: str, error: type[Exception],
) -> None:
    script = client.register_script(ECHO)
    with pytest.raises(error) as through_redis_py:  # what the callers used to see
        await script(keys=[f"{redis_namespace}:x"], args=["!" + reply, 0])
    assert type(through_redis_py.value) is error

    calls = [echo(pipeline, script, redis_namespace, i, f"v{i}") for i in range(5)]
    calls.insert(2, echo(pipeline, script, redis_namespace, 9, "!" + reply))
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = results.pop(2)
    assert type(refused) is error and str(refused) == str(through_redis_py.value)
    assert results == [expected(i, f"v{i}") for i in range(5)]


async def test_a_failing_script_is_a_response_error_for_its_caller_alone(
    pipeline: AutoPipeline, client: aredis.Redis, redis_namespace: str,
) -> None:
    script = client.register_script(ECHO)
    broken = client.register_script("return redis.call('INCR', KEYS[1])")
    await client.set(f"{redis_namespace}:text", "not a number")
    calls = [echo(pipeline, script, redis_namespace, 1, "a"),
             pipeline.call(broken, [f"{redis_namespace}:text"], []),
             echo(pipeline, script, redis_namespace, 2, "b")]
    first, failed, last = await asyncio.gather(*calls, return_exceptions=True)
    assert type(failed) is exceptions.ResponseError and "not an integer" in str(failed)
    assert (first, last) == (expected(1, "a"), expected(2, "b"))


async def test_an_unsendable_argument_fails_its_caller_alone(
    pipeline: AutoPipeline, client: aredis.Redis, redis_namespace: str,
) -> None:
    script = client.register_script(ECHO)
    calls = [echo(pipeline, script, redis_namespace, 1, "a"),
             pipeline.call(script, [f"{redis_namespace}:x"], [True, 0]),
             echo(pipeline, script, redis_namespace, 2, "b")]
    first, failed, last = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(failed, exceptions.DataError)
    assert (first, last) == (expected(1, "a"), expected(2, "b"))


async def test_callers_gone_before_or_after_sending_leave_the_others_their_replies(
    client: aredis.Redis, redis_url: str, redis_namespace: str,
) -> None:
    script = client.register_script(ECHO)
    await script(keys=[f"{redis_namespace}:x"], args=["load", 0])  # so no EVAL retry
    pool = client.connection_pool
    address = Address.of(pool.connection_class, pool.connection_kwargs)
    assert address is not None
    connection = await RespConnection.open(address, 2.0)
    loop = asyncio.get_running_loop()
    try:
        for round_ in range(3):
            calls: list[tuple[asyncio.Future[Any], AsyncScript | None, Sequence[Any],
                              Sequence[Any]]] = [
                (loop.create_future(), script, [f"{redis_namespace}:{i}"], [f"v{i}", i])
                for i in range(30)]
            for future, *_ in calls[::4]:
                future.cancel()  # gone before the batch is written
            connection.send(calls)
            for future, *_ in calls[1::4]:
                future.cancel()  # gone while its reply is on the way
            for i, (future, *_) in enumerate(calls):
                if i % 4 < 2:
                    assert future.cancelled()
                else:
                    assert await future == expected(i, f"v{i}"), (round_, i)
    finally:
        connection.close()


async def test_close_waits_for_the_calls_in_flight(
    client: aredis.Redis, redis_namespace: str,
) -> None:
    pipeline = AutoPipeline(client, 2.0)
    script = client.register_script(ECHO)
    calls = [echo(pipeline, script, redis_namespace, i, f"v{i}") for i in range(10)]
    await pipeline.close()
    assert [call.result() for call in calls] == [expected(i, f"v{i}") for i in range(10)]


# --- failures, on a server of the test's own ----------------------------------------------

SILENT, HANG_UP = None, b""  # answers of FakeRedis besides a reply


class FakeRedis:
    """A server speaking just enough RESP: it records the commands of each connection and
    answers each with `answer(command)`: bytes to send, `SILENT`, or `HANG_UP`."""

    def __init__(self, answer: Callable[[list[bytes]], bytes | None]) -> None:
        self.answer = answer
        self.connections: list[list[list[bytes]]] = []  # the commands of each connection
        self.client_left = asyncio.Event()  # set when the client closed a connection

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        commands: list[list[bytes]] = []
        self.connections.append(commands)
        parser = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    commands.append(command)
                    reply = self.answer(command)
                    if reply == HANG_UP:
                        return
                    if reply is not SILENT:
                        writer.write(reply)
            self.client_left.set()
        finally:
            writer.close()


@asynccontextmanager
async def fake_redis(
    answer: Callable[[list[bytes]], bytes | None], unix: Path | None = None, login: str = "",
    db: int = 0,
) -> AsyncIterator[tuple[FakeRedis, str]]:
    """A FakeRedis on a free port (or at a unix socket); yields it and its URL."""
    fake = FakeRedis(answer)
    if unix is None:
        server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
        url = f"redis://{login}127.0.0.1:{server.sockets[0].getsockname()[1]}/{db}"
    else:
        server = await asyncio.start_unix_server(fake.serve, unix)
        url = f"unix://{login}{unix}?db={db}"
    try:
        yield fake, url
    finally:
        server.close()


@asynccontextmanager
async def lean_pipeline(url: str, timeout_s: float = 2.0
                        ) -> AsyncIterator[tuple[AutoPipeline, AsyncScript]]:
    client = aredis.Redis.from_url(url)
    pipeline = AutoPipeline(client, timeout_s)
    try:
        yield pipeline, client.register_script("return 1")
    finally:
        await pipeline.close()
        await client.aclose()


async def outcomes(pipeline: AutoPipeline, script: AsyncScript, n: int) -> list[type]:
    """The classes of what n calls in one batch got."""
    results = await asyncio.gather(*(pipeline.call(script, [], [i]) for i in range(n)),
                                   return_exceptions=True)
    return [type(r) for r in results]


def ok(command: list[bytes]) -> bytes:
    return b"+OK\r\n" if command[0] in (b"AUTH", b"SELECT") else b":1\r\n"


@pytest.mark.parametrize("over", ["tcp", "unix"])
async def test_each_connection_authenticates_and_selects_its_database_first(
    tmp_path: Path, over: str,
) -> None:
    unix = tmp_path / "redis.sock" if over == "unix" else None
    async with (
        fake_redis(ok, unix, login="user:secret@", db=3) as (fake, url),
        lean_pipeline(url) as (pipeline, script),
    ):
        assert list(await asyncio.gather(pipeline.call(script, ["k"], [1]),
                                         pipeline.call(script, [], ["x"]))) == [1, 1]
        pipeline.disconnect()  # as after a Redis restart: the next call opens a new one
        await asyncio.wait_for(fake.client_left.wait(), 5)
        assert await pipeline.call(script, ["k"], [2]) == 1
    handshake = [[b"AUTH", b"user", b"secret"], [b"SELECT", b"3"]]
    sha = script.sha.encode()
    assert fake.connections == [
        [*handshake, [b"EVALSHA", sha, b"1", b"k", b"1"], [b"EVALSHA", sha, b"0", b"x"]],
        [*handshake, [b"EVALSHA", sha, b"1", b"k", b"2"]],
    ]


async def test_a_reply_later_than_the_timeout_fails_every_waiting_caller_and_the_connection(
) -> None:
    async with (
        fake_redis(lambda command: SILENT) as (fake, url),
        lean_pipeline(url, timeout_s=0.1) as (pipeline, script),
    ):
        assert await outcomes(pipeline, script, 3) == [exceptions.TimeoutError] * 3
        # Closed, not reused: a late reply there would be matched to the next caller.
        await asyncio.wait_for(fake.client_left.wait(), 5)
        assert await outcomes(pipeline, script, 1) == [exceptions.TimeoutError]
    assert [len(commands) for commands in fake.connections] == [3, 1]


async def test_a_server_hanging_up_mid_flight_fails_the_calls_with_connection_error() -> None:
    async with (
        fake_redis(lambda command: HANG_UP) as (fake, url),
        lean_pipeline(url) as (pipeline, script),
    ):
        assert await outcomes(pipeline, script, 5) == [exceptions.ConnectionError] * 5
        assert await outcomes(pipeline, script, 2) == [exceptions.ConnectionError] * 2
    assert len(fake.connections) == 2  # the second batch tried a new connection


@pytest.mark.parametrize("over", ["tcp", "unix"])
async def test_no_server_is_a_connection_error_and_the_next_call_tries_again(
    tmp_path: Path, over: str,
) -> None:
    if over == "tcp":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"redis://127.0.0.1:{s.getsockname()[1]}/0"  # nothing listens there
    else:
        url = f"unix://{tmp_path / 'nobody.sock'}"
    async with lean_pipeline(url) as (pipeline, script):
        for batch in (3, 1):
            assert await outcomes(pipeline, script, batch) == [exceptions.ConnectionError] * batch
