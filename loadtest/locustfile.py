"""Mixed-traffic load on a running gateway: the scenarios a real tenant produces.

    PROXY_ADMIN_KEY=... locust -f loadtest/locustfile.py --headless \
        -u 200 -r 20 -t 2m --host http://127.0.0.1:8080 --csv loadtest/results/locust

(loadtest/README.md has the whole sequence: fake upstream, database, gateway, locust.)
Name user classes after the file to run only some, e.g. `... loadtest/locustfile.py StreamUser`.

User classes, weighted as listed:

  ChatUser        non-streaming chat completions (OpenAI- and Anthropic-protocol models)
  StreamUser      streaming chat; time to first token is its own metric ("TTFT" type) and the
                  whole stream another ("STREAM"); a stream without [DONE] is a failure
  EmbeddingsUser  /v1/embeddings
  CacheUser       `requesty.cache = true` on a prompt repeated per user: after the first, hits
                  (counted as "CACHE hit"/"CACHE miss" from the `x-cache` header)
  PolicyUser      model `policy/<name>`, a fallback policy whose first step always fails
  MessagesUser    Anthropic Messages (`/v1/messages`, `x-api-key`), plain and streamed, to
                  every chat model: passed through to Anthropic-protocol ones, translated to
                  the others; a stream without `message_stop` is a failure
  ResponsesUser   OpenAI Responses (`/v1/responses`), plain and streamed, to every chat model
                  (translated); a stream without `response.completed` is a failure
  UsageReader     GET /v1/organization/usage with the admin key (reports while traffic flows)

Keys: at test start each locust process creates its own user key with a spend limit through
the admin API (POST /v1/api-keys with PROXY_ADMIN_KEY). While that endpoint answers 501 (not
implemented yet), the admin key itself is used and a line says so.

Environment: PROXY_ADMIN_KEY (required), LOAD_CHAT_MODELS (comma-separated, default
fake/gpt-4o-mini,fake/claude-3-5-haiku), LOAD_EMBED_MODEL, LOAD_POLICY (default
loadtest-fallback), LOAD_KEY_LIMIT (USD, default 1000000), LOAD_WAIT_MAX (seconds between a
user's requests, default 1.0).
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import requests
from locust import FastHttpUser, HttpUser, between, events, task
from locust.env import Environment

ADMIN_KEY = os.environ.get("PROXY_ADMIN_KEY", "")
CHAT_MODELS = os.environ.get("LOAD_CHAT_MODELS",
                             "fake/gpt-4o-mini,fake/claude-3-5-haiku").split(",")
EMBED_MODEL = os.environ.get("LOAD_EMBED_MODEL", "fake/text-embedding-3-small")
POLICY = os.environ.get("LOAD_POLICY", "loadtest-fallback")
KEY_LIMIT = float(os.environ.get("LOAD_KEY_LIMIT", "1000000"))
WAIT_MAX = float(os.environ.get("LOAD_WAIT_MAX", "1.0"))
TOPICS = ["load testing", "connection pools", "SSE streams", "spend limits", "usage ledgers",
          "fallback policies", "response caches", "event loops", "PostgreSQL COPY", "Redis Lua"]

_key: dict[str, str] = {}


@events.init_command_line_parser.add_listener
def _args(parser: Any) -> None:
    parser.add_argument("--key-name", default="locust", help="name of the user key created")


@events.test_start.add_listener
def _create_key(environment: Environment, **_: Any) -> None:
    """One user key with a spend limit per locust process; the admin key while keys are 501."""
    if not ADMIN_KEY:
        raise SystemExit("set PROXY_ADMIN_KEY to the gateway's admin key")
    host = (environment.host or "").rstrip("/")
    name = getattr(environment.parsed_options, "key_name", "locust")
    body = {"name": f"{name}-{os.getpid()}", "limit": KEY_LIMIT, "labels": ["loadtest"]}
    resp = requests.post(f"{host}/v1/api-keys", json=body, timeout=10,
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    if resp.status_code in (200, 201):
        created = resp.json()
        _key["key"] = created["key"]
        print(f"locust: created user key {created.get('id')} with limit USD {KEY_LIMIT:g}")
    elif resp.status_code == 501:
        _key["key"] = ADMIN_KEY
        print("locust: POST /v1/api-keys answered 501 (not implemented yet): using the admin key")
    else:
        raise SystemExit(f"POST /v1/api-keys answered {resp.status_code}: {resp.text[:300]}")


def _headers(admin: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY if admin else _key['key']}",
            "Content-Type": "application/json"}


def _chat_body(model: str, prompt: str, stream: bool = False, **extra: Any) -> str:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": "You are a concise assistant."},
                     {"role": "user", "content": prompt}],
        "max_tokens": 256,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(extra)
    return json.dumps(body)


def _prompt() -> str:
    return f"Say something short about {random.choice(TOPICS)} ({random.randrange(10**9)})."


def _fire(env: Environment, kind: str, name: str, ms: float, length: int = 0,
          exc: Exception | None = None) -> None:
    env.events.request.fire(request_type=kind, name=name, response_time=ms,
                            response_length=length, exception=exc, context={})


class ChatUser(FastHttpUser):
    weight = 4
    wait_time = between(0, WAIT_MAX)

    @task
    def chat(self) -> None:
        model = random.choice(CHAT_MODELS)
        with self.client.post("/v1/chat/completions", data=_chat_body(model, _prompt()),
                              headers=_headers(), name=f"chat {model}",
                              catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {(resp.text or '')[:200]}")
            elif '"choices"' not in (resp.text or "") or '"cost"' not in (resp.text or ""):
                resp.failure("no choices or no usage.cost in the answer")


class StreamUser(HttpUser):
    """requests' iter_content(None) yields chunks as they arrive, which TTFT needs."""

    weight = 3
    wait_time = between(0, WAIT_MAX)

    @task
    def stream(self) -> None:
        model = random.choice(CHAT_MODELS)
        start = time.perf_counter()
        ttft: float | None = None
        size = 0
        tail = b""
        with self.client.post("/v1/chat/completions", data=_chat_body(model, _prompt(), True),
                              headers=_headers(), name=f"stream {model} (headers)", stream=True,
                              catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            try:
                for chunk in resp.iter_content(chunk_size=None):
                    if ttft is None and b'"content"' in chunk:
                        ttft = (time.perf_counter() - start) * 1000
                    size += len(chunk)
                    tail = (tail + chunk)[-64:]
            except requests.RequestException as e:
                resp.failure(f"stream broke: {e}")
                _fire(self.environment, "STREAM", f"stream {model}",
                      (time.perf_counter() - start) * 1000, size, e)
                return
            total = (time.perf_counter() - start) * 1000
            if b"data: [DONE]" not in tail:
                err = RuntimeError("stream ended without [DONE]")
                resp.failure(str(err))
                _fire(self.environment, "STREAM", f"stream {model}", total, size, err)
                return
            resp.success()
        if ttft is not None:
            _fire(self.environment, "TTFT", f"stream {model} first token", ttft)
        _fire(self.environment, "STREAM", f"stream {model}", total, size)


class EmbeddingsUser(FastHttpUser):
    weight = 1
    wait_time = between(0, WAIT_MAX)

    @task
    def embed(self) -> None:
        body = json.dumps({"model": EMBED_MODEL, "input": [_prompt(), _prompt()]})
        with self.client.post("/v1/embeddings", data=body, headers=_headers(),
                              name="embeddings", catch_response=True) as resp:
            if resp.status_code != 200 or '"embedding"' not in (resp.text or ""):
                resp.failure(f"status {resp.status_code}: {(resp.text or '')[:200]}")


class CacheUser(FastHttpUser):
    """The same prompt again and again: everything after the first answer should be a hit."""

    weight = 1
    wait_time = between(0, WAIT_MAX)

    def on_start(self) -> None:
        self.prompt = f"Cached question number {random.randrange(20)}: what is a gateway?"

    @task
    def cached(self) -> None:
        body = _chat_body(CHAT_MODELS[0], self.prompt, requesty={"cache": True})
        with self.client.post("/v1/chat/completions", data=body, headers=_headers(),
                              name="chat cached prompt", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {(resp.text or '')[:200]}")
                return
        hit = (resp.headers.get("x-cache") or "").upper() == "HIT"
        _fire(self.environment, "CACHE", "hit" if hit else "miss", 0)


class PolicyUser(FastHttpUser):
    weight = 1
    wait_time = between(0, WAIT_MAX)

    @task
    def policy(self) -> None:
        with self.client.post("/v1/chat/completions",
                              data=_chat_body(f"policy/{POLICY}", _prompt()), headers=_headers(),
                              name=f"chat policy/{POLICY}", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {(resp.text or '')[:200]}")


def _messages_body(model: str, stream: bool) -> str:
    return json.dumps({"model": model, "max_tokens": 256, "stream": stream,
                       "system": "You are a concise assistant.",
                       "messages": [{"role": "user", "content": _prompt()}]})


def _responses_body(model: str, stream: bool) -> str:
    return json.dumps({"model": model, "max_output_tokens": 256, "stream": stream,
                       "instructions": "You are a concise assistant.", "input": _prompt()})


class MessagesUser(FastHttpUser):
    weight = 2
    wait_time = between(0, WAIT_MAX)

    @task
    def messages(self) -> None:
        model = random.choice(CHAT_MODELS)
        stream = random.random() < 0.5
        headers = {"x-api-key": _key["key"], "anthropic-version": "2023-06-01",
                   "Content-Type": "application/json"}
        name = f"messages {model}{' stream' if stream else ''}"
        with self.client.post("/v1/messages", data=_messages_body(model, stream),
                              headers=headers, name=name, catch_response=True) as resp:
            text = resp.text or ""
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {text[:200]}")
            elif stream and "event: message_stop" not in text:
                resp.failure("stream ended without message_stop")
            elif not stream and '"type":"message"' not in text.replace(" ", ""):
                resp.failure("not a Messages answer")


class ResponsesUser(FastHttpUser):
    weight = 2
    wait_time = between(0, WAIT_MAX)

    @task
    def responses(self) -> None:
        model = random.choice(CHAT_MODELS)
        stream = random.random() < 0.5
        name = f"responses {model}{' stream' if stream else ''}"
        with self.client.post("/v1/responses", data=_responses_body(model, stream),
                              headers=_headers(), name=name, catch_response=True) as resp:
            text = resp.text or ""
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {text[:200]}")
            elif stream and "event: response.completed" not in text:
                resp.failure("stream ended without response.completed")
            elif not stream and '"status":"completed"' not in text.replace(" ", ""):
                resp.failure("not a completed Responses answer")


class UsageReader(FastHttpUser):
    """A FinOps dashboard: reads the organisation's report every few seconds."""

    weight = 1
    wait_time = between(2, 5)

    @task
    def org_usage(self) -> None:
        group = random.choice(["model", "key", "provider", "status"])
        with self.client.get(f"/v1/organization/usage?group_by={group}&resolution=hour",
                             headers=_headers(admin=True), name="usage report",
                             catch_response=True) as resp:
            if resp.status_code == 501:
                # not implemented yet: counted apart so a run stays readable, not a failure
                resp.request_meta["name"] = "usage report [501 not implemented]"
                resp.success()
            elif resp.status_code != 200 or '"breakdown"' not in (resp.text or ""):
                resp.failure(f"status {resp.status_code}: {(resp.text or '')[:200]}")
