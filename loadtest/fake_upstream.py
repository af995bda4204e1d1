"""A fast fake LLM upstream: OpenAI- and Anthropic-shaped, paced streams, embeddings.

    python loadtest/fake_upstream.py --port 9100 --latency-ms 0 --tokens-per-second 20 \
        --stream-tokens 100 [--procs 2] [--stamp]

Routes (any prefix before them is accepted, so `base_url` may end in `/v1` or not):

  POST .../chat/completions   OpenAI chat; `stream: true` gives SSE with a usage chunk when
                              `stream_options.include_usage` is set, then `[DONE]`
  POST .../embeddings         OpenAI embeddings (`--embedding-dim` floats per input)
  POST .../messages           Anthropic Messages, plain or streamed (the documented event flow)
  GET  .../models, /healthz   trivial answers

Behaviour by upstream model name: `fail-<status>` (e.g. `fail-503`) answers that status with
a provider error body, so fallback policies have something to fall back from.

Timing: the first byte (non-streaming: the whole answer) goes out `--latency-ms` after the
request arrived; stream chunks follow one per 1/`--tokens-per-second` on an absolute schedule
(no drift). `--stamp` adds `"x_rx"` (request arrival) and `"x_tx"` (this chunk's send time),
both `time.monotonic_ns()`, to every streamed OpenAI chunk; CLOCK_MONOTONIC is one clock for
every process on the machine, so a client can split a chunk's delay into its legs.

Why not aiohttp.web: this must never be the bottleneck of a gateway benchmark. It is a
bare `asyncio.Protocol` HTTP/1.1 server (keep-alive, Content-Length and chunked request
bodies, `Expect: 100-continue`) writing precomputed bytes: on one core with uvloop it
answers several times what a Python gateway can send it (see loadtest/README.md for the check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, Final

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes

try:
    import msgspec

    _loads: Callable[[bytes], Any] = msgspec.json.decode
except ImportError:  # the fake runs on the standard library too, only slower
    _loads = json.loads

_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
                   500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
                   529: "Overloaded"}
_MAX_HEAD: Final = 64 * 1024


class Options:
    __slots__ = (
        "completion_tokens",
        "embedding_dim",
        "interval_s",
        "latency_s",
        "stamp",
        "stream_tokens",
    )

    def __init__(self, ns: argparse.Namespace) -> None:
        self.latency_s = ns.latency_ms / 1000
        self.interval_s = 1.0 / ns.tokens_per_second if ns.tokens_per_second > 0 else 0.0
        self.stream_tokens = ns.stream_tokens
        self.completion_tokens = ns.completion_tokens
        self.embedding_dim = ns.embedding_dim
        self.stamp = ns.stamp


class Canned:
    """Every byte string the server sends, built once per model name and cached."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self._chat: dict[str, bytes] = {}
        self._events: dict[tuple[str, bool], list[tuple[int, bytes]]] = {}
        self._anthropic: dict[str, bytes] = {}
        self._anthropic_events: dict[str, list[tuple[int, bytes]]] = {}
        self._embeddings: dict[tuple[str, int], bytes] = {}

    def chat(self, model: str) -> bytes:
        body = self._chat.get(model)
        if body is None:
            body = self._chat[model] = shapes.chat_completion(model)
        return body

    def events(self, model: str, include_usage: bool) -> list[tuple[int, bytes]]:
        """OpenAI SSE events, each already framed as `data: ...\\n\\n`."""
        key = (model, include_usage)
        events = self._events.get(key)
        if events is None:
            raw = shapes.stream_events(model, self.opts.stream_tokens, include_usage=include_usage)
            framed = [b"data: " + e + b"\n\n" for e in raw]
            events = self._events[key] = _schedule(framed, lambda e: b'"content"' in e)
        return events

    def anthropic(self, model: str) -> bytes:
        body = self._anthropic.get(model)
        if body is None:
            text = " ".join(shapes.words(self.opts.completion_tokens))
            body = self._anthropic[model] = _json({
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
                "model": model, "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": shapes.PROMPT_TOKENS, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0,
                          "output_tokens": self.opts.completion_tokens},
            })
            self._anthropic[model] = body
        return body

    def anthropic_events(self, model: str) -> list[tuple[int, bytes]]:
        events = self._anthropic_events.get(model)
        if events is None:
            n = self.opts.stream_tokens
            usage = {"input_tokens": shapes.PROMPT_TOKENS, "cache_creation_input_tokens": 0,
                     "cache_read_input_tokens": 0, "output_tokens": 1}
            flow: list[dict[str, Any]] = [
                {"type": "message_start", "message": {
                    "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
                    "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
                    "usage": usage}},
                {"type": "content_block_start", "index": 0,
                 "content_block": {"type": "text", "text": ""}},
                {"type": "ping"},
            ]
            flow += [{"type": "content_block_delta", "index": 0,
                      "delta": {"type": "text_delta", "text": (" " if i else "") + w}}
                     for i, w in enumerate(shapes.words(n))]
            flow += [
                {"type": "content_block_stop", "index": 0},
                {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                    "stop_sequence": None},
                 "usage": {"output_tokens": n}},
                {"type": "message_stop"},
            ]
            framed = [b"event: " + e["type"].encode() + b"\ndata: " + _json(e) + b"\n\n"
                      for e in flow]
            events = _schedule(framed, lambda e: e.startswith(b"event: content_block_delta"))
            self._anthropic_events[model] = events
        return events

    def embeddings(self, model: str, n: int) -> bytes:
        key = (model, n)
        body = self._embeddings.get(key)
        if body is None:
            body = shapes.embedding_response(model, n, self.opts.embedding_dim)
            if len(self._embeddings) < 256:
                self._embeddings[key] = body
        return body


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _head(status: int, content_type: bytes, length: int | None, close: bool) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, "Status").encode()),
             b"Content-Type: " + content_type]
    if length is None:
        lines.append(b"Transfer-Encoding: chunked")
        lines.append(b"Cache-Control: no-cache")
    else:
        lines.append(b"Content-Length: %d" % length)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


_LAST_CHUNK: Final = b"0\r\n\r\n"
_JSON: Final = b"application/json"
_SSE: Final = b"text/event-stream"


def _parse_chunked(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at `pos`; None until all of it has arrived."""
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)  # no trailers expected: the empty line
            return (bytes(out), end + 4) if end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos:pos + size]
        pos += size + 2


class Http(asyncio.Protocol):
    """One client connection: requests are answered in order, one at a time."""

    __slots__ = ("buf", "busy", "canned", "closed", "continued", "loop", "opts", "transport")

    def __init__(self, canned: Canned) -> None:
        self.canned = canned
        self.opts = canned.opts
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False  # a delayed or streamed answer is still going out
        self.closed = False
        self.continued = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._process()

    def _process(self) -> None:
        buf = self.buf
        while not self.busy and not self.closed:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._close()
                return
            head = bytes(buf[:end]).split(b"\r\n")
            try:
                method, target, version = head[0].split(b" ", 2)
            except ValueError:
                self._close()
                return
            headers: dict[bytes, bytes] = {}
            for line in head[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            start = end + 4
            if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                parsed = _parse_chunked(buf, start)
                if parsed is None:
                    self._continue(headers)
                    return
                body, consumed = parsed
            else:
                length = int(headers.get(b"content-length", b"0"))
                if len(buf) < start + length:
                    self._continue(headers)
                    return
                body, consumed = bytes(buf[start:start + length]), start + length
            del buf[:consumed]
            self.continued = False
            close = (headers.get(b"connection", b"").lower() == b"close"
                     or version == b"HTTP/1.0")
            self._dispatch(method, target.split(b"?", 1)[0], body, close)

    def _continue(self, headers: dict[bytes, bytes]) -> None:
        if not self.continued and headers.get(b"expect", b"").lower() == b"100-continue":
            self.continued = True
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # --- routing -------------------------------------------------------------------------

    def _dispatch(self, method: bytes, path: bytes, body: bytes, close: bool) -> None:
        rx = time.monotonic_ns()
        if method == b"POST":
            try:
                req = _loads(body) if body else {}
            except ValueError:
                req = None
            if not isinstance(req, dict):
                return self._error(400, "The request body is not a JSON object.", close)
            model = str(req.get("model") or "fake-model")
            if model.startswith("fail-"):
                status = int(model[5:]) if model[5:].isdigit() else 503
                return self._error(status, f"Simulated failure {status}.", close)
            if path.endswith(b"/chat/completions"):
                if req.get("stream"):
                    opts = req.get("stream_options") or {}
                    include = bool(isinstance(opts, dict) and opts.get("include_usage"))
                    return self._stream(self.canned.events(model, include), close, rx,
                                        self.opts.stamp)
                return self._answer(200, _JSON, self.canned.chat(model), close)
            if path.endswith(b"/messages"):
                if req.get("stream"):
                    return self._stream(self.canned.anthropic_events(model), close, rx, False)
                return self._answer(200, _JSON, self.canned.anthropic(model), close)
            if path.endswith(b"/embeddings"):
                inp = req.get("input")
                n = len(inp) if isinstance(inp, list) and inp and not isinstance(inp[0], int) else 1
                return self._answer(200, _JSON, self.canned.embeddings(model, n), close)
        elif method == b"GET":
            if path.endswith(b"/models"):
                return self._answer(200, _JSON, b'{"object":"list","data":[]}', close, delay=False)
            if path.endswith(b"/healthz"):
                return self._answer(200, b"text/plain", b"ok", close, delay=False)
        self._error(404, "No such route on the fake upstream.", close, delay=False)

    def _error(self, status: int, message: str, close: bool, delay: bool = True) -> None:
        body = _json({"error": {"message": message, "type": "server_error" if status >= 500
                                else "invalid_request_error", "code": None, "param": None}})
        self._answer(status, _JSON, body, close, delay)

    # --- writing -------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def _answer(self, status: int, ctype: bytes, body: bytes, close: bool,
                delay: bool = True) -> None:
        data = _head(status, ctype, len(body), close) + body
        if delay and self.opts.latency_s > 0:
            self.busy = True
            self.loop.call_later(self.opts.latency_s, self._finish, data, close)
        else:
            self._write(data)
            if close:
                self._close()

    def _finish(self, data: bytes, close: bool) -> None:
        self._write(data)
        self.busy = False
        if close:
            self._close()
        elif self.buf:
            self._process()

    def _stream(self, events: list[tuple[int, bytes]], close: bool, rx: int, stamp: bool) -> None:
        self.busy = True
        self._write(_head(200, _SSE, None, close))
        t0 = self.loop.time() + self.opts.latency_s
        _Pacer(self, events, t0, rx if stamp else 0, close).tick()


class _Pacer:
    """Sends one stream's events on an absolute schedule with loop timers (no task per stream)."""

    __slots__ = ("close", "conn", "events", "i", "rx", "t0")

    def __init__(self, conn: Http, events: list[tuple[int, bytes]], t0: float, rx: int,
                 close: bool) -> None:
        self.conn, self.events, self.t0, self.rx, self.close = conn, events, t0, rx, close
        self.i = 0

    def tick(self) -> None:
        conn = self.conn
        if conn.closed:
            return
        interval = conn.opts.interval_s
        loop = conn.loop
        events = self.events
        n = len(events)
        # Everything due by now goes out in one write (all of it when unpaced), then sleep
        # until the next event is due.
        out = []
        while self.i < n:
            tick, event = events[self.i]
            due = self.t0 + interval * tick
            if due > loop.time() + 0.0005:
                if out:
                    conn._write(b"".join(out))
                loop.call_at(due, self.tick)
                return
            if self.rx and event.startswith(b"data: {"):
                event = b'data: {"x_rx":%d,"x_tx":%d,' % (self.rx, time.monotonic_ns()) + event[7:]
            out.append(_frame(event))
            self.i += 1
        out.append(_LAST_CHUNK)
        conn._write(b"".join(out))
        conn.busy = False
        if self.close:
            conn._close()
        elif conn.buf:
            conn._process()


def _schedule(events: list[bytes], is_token: Callable[[bytes], bool]) -> list[tuple[int, bytes]]:
    """Token k goes out at tick k; events between tokens ride with the token before them
    (the finish, usage and [DONE] events follow the last token at once, as real APIs do)."""
    out = []
    k = -1
    for e in events:
        if is_token(e):
            k += 1
        out.append((max(k, 0), e))
    return out


def _serve(ns: argparse.Namespace, sock: socket.socket) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    canned = Canned(Options(ns))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Http(canned), sock=sock, backlog=4096)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(main())


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--latency-ms", type=float, default=0.0,
                   help="delay before the first byte of every answer (default 0)")
    p.add_argument("--tokens-per-second", type=float, default=0.0,
                   help="stream pacing; 0 sends every chunk at once (default 0)")
    p.add_argument("--stream-tokens", type=int, default=shapes.STREAM_TOKENS,
                   help=f"content chunks per stream (default {shapes.STREAM_TOKENS})")
    p.add_argument("--completion-tokens", type=int, default=32,
                   help="output tokens of a non-streamed Anthropic answer (default 32)")
    p.add_argument("--embedding-dim", type=int, default=256)
    p.add_argument("--stamp", action="store_true",
                   help="put x_rx/x_tx monotonic-ns stamps in streamed OpenAI chunks")
    p.add_argument("--procs", type=int, default=1,
                   help="processes sharing the port (SO_REUSEPORT; default 1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    children: list[int] = []
    for _ in range(ns.procs - 1):
        pid = os.fork()
        if pid == 0:
            _serve(ns, _listen(ns.host, ns.port))
            os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    sock = _listen(ns.host, ns.port)
    print(f"fake upstream: http://{ns.host}:{ns.port} ({ns.procs} process(es), "
          f"latency {ns.latency_ms:g} ms, {ns.tokens_per_second:g} tokens/s, "
          f"{ns.stream_tokens} chunks per stream)", flush=True)
    try:
        _serve(ns, sock)
    finally:
        forward(signal.SIGTERM, None)
        for pid in children:
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
