"""The bodies every load test sends and every fake upstream answers, in one place.

The throughput benchmark's reference answer is a 712-byte OpenAI chat completion (the size
of a short real gpt-4o-mini answer with its usage block); nginx serves it verbatim and
`fake_upstream.py` serves the same shape. Standard library only: nginx config generation,
wrk scripts, locust and the fake upstream all import it.
"""

from __future__ import annotations

import json
from typing import Any, Final

CHAT_COMPLETION_BYTES: Final = 712
STREAM_TOKENS: Final = 20  # content chunks in the reference stream
PROMPT_TOKENS: Final = 19
_SENTENCE: Final = (
    "Load tests need answers that look like real ones so that every layer of the gateway "
    "does its real work on them while the upstream itself costs next to nothing"
)
_WORDS: Final = _SENTENCE.split()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def words(n: int) -> list[str]:
    return [_WORDS[i % len(_WORDS)] for i in range(n)]


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completion(model: str = "gpt-4o-mini-2024-07-18", size: int = CHAT_COMPLETION_BYTES,
                    cid: str = "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT") -> bytes:
    """An OpenAI `chat.completion`, its content padded so the whole body is `size` bytes."""

    def build(content: str) -> bytes:
        body = {
            "id": cid,
            "object": "chat.completion",
            "created": 1732550400,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }],
            "usage": usage(PROMPT_TOKENS, max(1, len(content) // 5)),
            "system_fingerprint": "fp_0ba0d124f1",
        }
        return _dumps(body).encode()

    text = " ".join(words(200))
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix that fits; the usage digits move a little with it
        mid = (lo + hi + 1) // 2
        if len(build(text[:mid])) <= size:
            lo = mid
        else:
            hi = mid - 1
    body = build(text[:lo])
    body = body.replace(b'"content":"', b'"content":"' + b" " * (size - len(body)), 1)
    assert len(body) == size, len(body)
    return body


def chunk(model: str, cid: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": 1732550400,
        "model": model,
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def stream_events(model: str = "gpt-4o-mini-2024-07-18", n: int = STREAM_TOKENS,
                  cid: str = "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
                  include_usage: bool = True) -> list[bytes]:
    """OpenAI's event flow: role+first token, one token per chunk, a finish chunk, the usage
    chunk (`choices: []`, only when asked for), `[DONE]`. Each item is one `data:` payload."""
    out = []
    for i, word in enumerate(words(n)):
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
        out.append(_dumps(chunk(model, cid, delta, None)).encode())
    out.append(_dumps(chunk(model, cid, {}, "stop")).encode())
    if include_usage:
        last = chunk(model, cid, {}, None)
        last["choices"] = []
        last["usage"] = usage(PROMPT_TOKENS, n)
        out.append(_dumps(last).encode())
    out.append(b"[DONE]")
    return out


def sse_body(model: str = "gpt-4o-mini-2024-07-18", n: int = STREAM_TOKENS) -> bytes:
    return b"".join(b"data: " + e + b"\n\n" for e in stream_events(model, n))


def chat_request(model: str, stream: bool = False, prompt: str | None = None,
                 **extra: Any) -> bytes:
    """A small, typical client request (system + user message)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": prompt or "Say something short about load testing."},
        ],
        "max_tokens": 256,
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(extra)
    return _dumps(body).encode()


def embedding_request(model: str, n: int = 1) -> bytes:
    text = "The quick brown fox jumps over the lazy dog."
    return _dumps({"model": model, "input": text if n == 1 else [text] * n}).encode()


def embedding_response(model: str, n: int, dim: int) -> bytes:
    vec = [round(((i * 7919) % 2001 - 1000) / 1000, 6) for i in range(dim)]
    data = [{"object": "embedding", "index": i, "embedding": vec} for i in range(n)]
    return _dumps({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": 10 * n, "total_tokens": 10 * n},
    }).encode()


if __name__ == "__main__":  # a look at the reference bodies
    print(len(chat_completion()), "bytes:", chat_completion().decode())
    print(len(sse_body()), "bytes of SSE;", len(stream_events()), "events")


# --- Gemini (`generateContent`, `streamGenerateContent?alt=sse`): the same answer in Google's
# format, for the `gemini` bench target (the gateway's gemini protocol against nginx).

def _gemini_usage(completion: int) -> dict[str, Any]:
    return {"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": completion,
            "totalTokenCount": PROMPT_TOKENS + completion,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": PROMPT_TOKENS}]}


def gemini_response(n: int = STREAM_TOKENS) -> bytes:
    text = " ".join(words(n))
    return _dumps({"candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                                   "finishReason": "STOP", "index": 0}],
                   "usageMetadata": _gemini_usage(n), "modelVersion": "gemini-2.5-flash",
                   "responseId": "benchGeminiResp"}).encode()


def gemini_sse_body(n: int = STREAM_TOKENS) -> bytes:
    """One event per word, the last with `finishReason` and the final usage; no end marker."""
    out = []
    for i, word in enumerate(words(n)):
        text = word if i == 0 else " " + word
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"},
                                     "index": 0}
        usage = {"promptTokenCount": PROMPT_TOKENS, "totalTokenCount": PROMPT_TOKENS}
        if i == n - 1:
            candidate["finishReason"] = "STOP"
            usage = _gemini_usage(n)
        event = {"candidates": [candidate], "usageMetadata": usage,
                 "modelVersion": "gemini-2.5-flash", "responseId": "benchGeminiResp"}
        out.append(b"data: " + _dumps(event).encode() + b"\n\n")
    return b"".join(out)
