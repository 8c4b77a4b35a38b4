"""The official ``openai`` package, pointed at the server with ``base_url``, works unchanged against an adapter
id: completions and chat completions, streaming too, and its error type for a 4xx."""

from __future__ import annotations

import openai
import pytest
from serve_testing import INPUTS

MT = 6


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def adapter(server):
    return server.client.post("/v1/adapters", json={"instruction": "Reverse the words"}).json()["id"]


@pytest.fixture(scope="module")
def case(server):
    """An input whose expected output (``Tagi.predict``) is not empty, so equality means something."""
    tagi = server.service.tagi
    outs = tagi.predict(INPUTS, tagi.generate_adapter("Reverse the words"), max_new_tokens=MT)
    return next((x, y) for x, y in zip(INPUTS, outs) if y)


def test_completions(client, adapter, case):
    text, expected = case
    out = client.completions.create(model=adapter, prompt=text, max_tokens=MT)
    assert out.choices[0].text == expected and out.model == adapter
    assert out.usage.completion_tokens > 0


def test_completions_streaming(client, adapter, case):
    text, expected = case
    stream = client.completions.create(model=adapter, prompt=text, max_tokens=MT, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_chat_completions(client, adapter, case):
    text, expected = case
    messages = [{"role": "user", "content": text}]
    out = client.chat.completions.create(model=adapter, messages=messages, max_tokens=MT)
    assert out.choices[0].message.content == expected and out.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model=adapter, messages=messages, max_tokens=MT, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == expected


def test_sampling_with_a_seed_is_reproducible(client, adapter, server):
    kw = {"model": adapter, "prompt": "hello world", "max_tokens": MT, "temperature": 1.5, "top_p": 0.9}
    first = client.completions.create(seed=5, **kw).choices[0].text
    assert client.completions.create(seed=5, **kw).choices[0].text == first
    tagi = server.service.tagi
    want = tagi.predict(["hello world"], tagi.generate_adapter("Reverse the words"), max_new_tokens=MT,
                        temperature=1.5, top_p=0.9, seed=5)  # fmt: skip
    assert first == want[0]


def test_errors_raise_the_clients_error_types(client):
    with pytest.raises(openai.NotFoundError, match="unknown adapter"):
        client.completions.create(model="0" * 32, prompt="x", max_tokens=MT)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="base", prompt="x", max_tokens=10**6)
