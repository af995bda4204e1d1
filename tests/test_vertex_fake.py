"""The fake Vertex AI and the fake token endpoint are faithful: Google's SDK
(`google-genai` with `vertexai=True`) and Anthropic's (`AnthropicVertex`), each with a
service account's credentials from a key file, talk to them as to Google's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from anthropic import AsyncAnthropicVertex
from fakes import Reply
from fakes.gemini_server import FakeGemini, GeminiReply
from fakes.google_token_server import FakeGoogleToken
from google import genai
from google.genai import types
from google.oauth2 import service_account

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


@pytest.fixture
async def token_server() -> AsyncIterator[FakeGoogleToken]:
    async with FakeGoogleToken() as server:
        yield server


@pytest.fixture
async def vertex(token_server: FakeGoogleToken) -> AsyncIterator[FakeGemini]:
    async with FakeGemini(tokens=token_server.issued) as server:
        yield server


def credentials(token_server: FakeGoogleToken, tmp_path: Path) -> service_account.Credentials:
    path = token_server.key_file(tmp_path)
    # google-auth leaves this classmethod unannotated (no parameter or return types).
    creds: service_account.Credentials = (
        service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            str(path), scopes=SCOPES))
    return creds


async def test_genai_on_vertex_gets_a_token_from_the_key_files_token_uri(
    token_server: FakeGoogleToken, vertex: FakeGemini, tmp_path: Path
) -> None:
    client = genai.Client(
        vertexai=True, project="fake-project", location="europe-west4",
        credentials=credentials(token_server, tmp_path),
        http_options=types.HttpOptions(base_url=vertex.root_url),
    )
    vertex.script(GeminiReply(text="Hallo.", prompt_tokens=5, completion_tokens=2))
    resp = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert resp.text == "Hallo."
    assert token_server.hits == 1
    sent = vertex.last
    assert sent.path.endswith(
        "/projects/fake-project/locations/europe-west4/publishers/google/models/"
        "gemini-2.5-flash:generateContent")
    assert sent.headers["authorization"] == "Bearer " + token_server.last_issued
    vertex.script(GeminiReply(text="Ein zwei drei"))
    chunks = [c async for c in await client.aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents="Count")]
    assert "".join(c.text or "" for c in chunks) == "Ein zwei drei"


async def test_anthropic_vertex_uses_raw_predict_and_stream_raw_predict(
    token_server: FakeGoogleToken, vertex: FakeGemini, tmp_path: Path
) -> None:
    client = AsyncAnthropicVertex(
        region="europe-west1", project_id="fake-project",
        credentials=credentials(token_server, tmp_path), base_url=vertex.root_url + "/v1",
    )
    vertex.script(Reply(text="Bonjour.", prompt_tokens=9, completion_tokens=2))
    msg = await client.messages.create(
        model="claude-sonnet-4-5@20250929", max_tokens=50,
        messages=[{"role": "user", "content": "Salut"}])
    assert msg.content[0].type == "text" and msg.content[0].text == "Bonjour."
    assert msg.usage.input_tokens == 9 and msg.usage.output_tokens == 2
    sent = vertex.last
    assert sent.path == ("/v1/projects/fake-project/locations/europe-west1/publishers/"
                         "anthropic/models/claude-sonnet-4-5@20250929:rawPredict")
    # The version is in the body (the SDK sends its own; Vertex's docs name
    # "vertex-2023-10-16", which the gateway sends), the model only in the URL.
    assert sent.json["anthropic_version"] and "model" not in sent.json
    vertex.script(Reply(text="un deux trois"))
    async with client.messages.stream(
        model="claude-sonnet-4-5@20250929", max_tokens=50,
        messages=[{"role": "user", "content": "Compte"}],
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == "un deux trois"
    assert vertex.last.path.endswith(":streamRawPredict")


async def test_vertex_refuses_a_token_the_token_server_did_not_issue(
    vertex: FakeGemini
) -> None:
    url = (vertex.root_url + "/v1/projects/p/locations/europe-west4/publishers/google/models/"
           "gemini-2.5-flash:generateContent")
    async with aiohttp.ClientSession() as http:
        resp = await http.post(url, json={"contents": []},
                               headers={"Authorization": "Bearer ya29.forged"})
        assert resp.status == 401
        assert (await resp.json())["error"]["status"] == "UNAUTHENTICATED"
    assert vertex.hits == 0
