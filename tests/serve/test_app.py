"""The HTTP API on the tiny models: every endpoint, every error path (a 4xx JSON error, and the server keeps
serving), the PEFT zip byte-identical to ``tagi generate``, auth and CORS."""

from __future__ import annotations

import io
import json
import re
import zipfile

import pytest
from serve_testing import INPUTS, running_server, worker_paused

from tagi.cli import main as cli_main

MT = 6  # max_tokens in these tests: tiny random models never stop early


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "code"}
    return body["error"]["message"]


def make(client, instruction="Reverse the words", **extra):
    r = client.post("/v1/adapters", json={"instruction": instruction, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_health_page_and_static_files(server):
    h = server.client.get("/healthz").json()
    assert h["status"] == "ok" and h["base_model"] == "tiny-llama" and h["auth"] is False
    page = server.client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="/static/app.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN: works offline
    assert server.client.get("/static/app.js").status_code == 200
    assert server.client.get("/static/style.css").status_code == 200
    error_of(server.client.get("/static/../service.py"), 404)
    tasks = server.client.get("/v1/tasks").json()["tasks"]
    assert len(tasks) == 8 and all(t["definition"] and t["inputs"] for t in tasks)


def test_adapter_ids_are_content_hashes_and_metadata(server):
    a = make(server.client)
    assert re.fullmatch(r"[0-9a-f]{32}", a["id"]) and a["rank"] == 4 and a["bytes"] > 0
    assert (
        a["instruction_truncated"] is False and a["instruction_read"] == "Definition: Reverse the words.\n\n"
    )
    assert make(server.client)["id"] == a["id"]  # same checkpoint + instruction -> same id
    assert make(server.client, "Copy the input")["id"] != a["id"]
    with_examples = make(server.client, pos_examples=[{"input": "a b", "output": "b a"}])
    assert with_examples["id"] != a["id"] and "Positive Example 1" in with_examples["instruction_read"]
    info = server.client.get(f"/v1/adapters/{a['id']}").json()
    assert info["id"] == a["id"] and info["rank"] == 4
    models = [m["id"] for m in server.client.get("/v1/models").json()["data"]]
    assert models[0] == "base" and a["id"] in models


def test_long_instruction_is_truncated_as_tagi_generate_does(server):
    tok = server.service.tagi.backbone.tokenizer
    words = " ".join(f"word{i}" for i in range(2000))
    assert len(tok(words)["input_ids"]) > server.service.tagi.backbone.max_instruction_tokens
    a = make(server.client, words)
    assert a["instruction_truncated"] is True
    assert a["instruction_read"] == server.service.tagi.generate_adapter(words).instruction


def test_peft_zip_holds_the_files_tagi_generate_writes(server, serve_ckpt, tmp_path, capsys):
    a = make(server.client, "Sort the words")
    r = server.client.get(f"/v1/adapters/{a['id']}/peft.zip")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    files = zipfile.ZipFile(io.BytesIO(r.content))
    out = tmp_path / "generated"
    assert cli_main(["generate", "--checkpoint", str(serve_ckpt), "--instruction", "Sort the words",
                     "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors", "tagi.json"]
    assert sorted(n.split("/", 1)[1] for n in files.namelist()) == names
    for name in names:
        assert files.read(f"tagi-{a['id']}/{name}") == (out / name).read_bytes(), name


def test_completions_chat_and_base(server):
    a = make(server.client)
    tagi = server.service.tagi
    adapter = tagi.generate_adapter("Reverse the words")
    want = tagi.predict(["hello world", "abc def"], adapter, max_new_tokens=MT)
    r = server.client.post("/v1/completions", json={"model": a["id"], "prompt": ["hello world", "abc def"],
                                                    "max_tokens": MT}).json()  # fmt: skip
    assert r["object"] == "text_completion" and [c["text"] for c in r["choices"]] == want
    assert r["usage"]["completion_tokens"] > 0 and r["usage"]["prompt_tokens"] > 0
    chat = server.client.post("/v1/chat/completions", json={
        "model": a["id"], "max_tokens": MT, "messages": [{"role": "user", "content": "hello world"}]}).json()  # fmt: skip
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["content"] == want[0]
    base = server.client.post("/v1/completions", json={"model": "base", "prompt": "hello world",
                                                       "max_tokens": MT}).json()  # fmt: skip
    assert isinstance(base["choices"][0]["text"], str)
    in_context = server.client.post("/v1/chat/completions", json={"model": "base", "max_tokens": MT, "messages": [
        {"role": "system", "content": "Reverse the words"}, {"role": "user", "content": "hello world"}]}).json()  # fmt: skip
    same = server.client.post("/v1/completions", json={"model": "base", "prompt": "hello world", "max_tokens": MT,
                                                       "instruction": "Reverse the words"}).json()  # fmt: skip
    assert in_context["choices"][0]["message"]["content"] == same["choices"][0]["text"]


def sse_data(response) -> list[str]:
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return events[:-1]


def test_streaming_is_server_sent_events_that_add_up_to_the_output(server):
    a = make(server.client)
    for text in INPUTS:
        body = {"model": a["id"], "prompt": text, "max_tokens": MT}
        full = server.client.post("/v1/completions", json=body).json()["choices"][0]["text"]
        chunks = [
            json.loads(e)
            for e in sse_data(server.client.post("/v1/completions", json=body | {"stream": True}))
        ]
        pieces = [c["choices"][0]["text"] for c in chunks if c["choices"][0]["text"]]
        assert "".join(pieces) == full
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    chat = {
        "model": a["id"],
        "max_tokens": MT,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
    }
    chunks = [json.loads(e) for e in sse_data(server.client.post("/v1/chat/completions", json=chat))]
    assert (
        chunks[0]["choices"][0]["delta"]["role"] == "assistant" and chunks[-1]["choices"][0]["finish_reason"]
    )


def test_streamed_requests_are_refused_before_the_stream_starts(server):
    r = server.client.post("/v1/completions", json={"model": "f" * 32, "prompt": "x", "stream": True})
    assert "unknown adapter" in error_of(r, 404)


def test_metrics_prometheus_text(server):
    make(server.client)
    text = server.client.get("/metrics").text
    for name in ("tagi_requests_total", "tagi_request_latency_seconds_bucket", "tagi_batch_size_bucket",
                 "tagi_queue_depth", "tagi_adapters_cached", "tagi_adapter_generation_seconds_count"):  # fmt: skip
        assert name in text, name
    assert 'endpoint="/v1/adapters"' in text


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_a_repeated_adapter_request_skips_the_hypernetwork(server):
    c = server.client
    runs = sample(c.get("/metrics").text, "tagi_adapter_generation_seconds_count")
    first = make(c, "Sort the letters of every word")
    again = make(c, "Sort the letters of every word")
    assert first["cached"] is False and again["cached"] is True
    assert again["id"] == first["id"] and again["generation_s"] == first["generation_s"]
    other = make(c, "Sort the letters of every word", pos_examples=[{"input": "ba", "output": "ab"}])
    assert other["cached"] is False and other["id"] != first["id"]  # other examples: another recipe
    text = c.get("/metrics").text
    assert sample(text, "tagi_adapter_generation_seconds_count") == runs + 2
    assert sample(text, "tagi_adapter_cache_hits_total") >= 1


def test_a_refused_body_is_counted_under_its_endpoint(server):
    c, limits = server.client, server.service.limits
    label = {"endpoint": "/v1/completions", "status": "413"}
    before = sample(c.get("/metrics").text, "tagi_requests_total", **label)
    error_of(c.post("/v1/completions", content=b"x" * (limits.max_body_bytes + 1)), 413)
    error_of(c.post("/no/such/route", content=b"x" * (limits.max_body_bytes + 1)), 413)
    text = c.get("/metrics").text
    assert sample(text, "tagi_requests_total", **label) == before + 1
    assert sample(text, "tagi_requests_total", endpoint="other", status="413") >= 1
    assert "/no/such/route" not in text  # a client's path never becomes a label


@pytest.mark.parametrize(
    ("path", "content", "status", "message"),
    [
        ("/v1/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/completions", b"{}", 400, "model: Field required"),
        ("/v1/completions", b'{"model": "base"}', 400, "prompt: Field required"),
        ("/v1/chat/completions", b'{"model": "base", "messages": []}', 400, "user message"),
        ("/v1/chat/completions", b'{"model": "base", "messages": [{"role": "wizard"}]}', 400, "role"),
        (
            "/v1/completions",
            b'{"model": "0123456789abcdef0123456789abcdef", "prompt": "x"}',
            404,
            "unknown adapter",
        ),
        ("/v1/completions", b'{"model": "../../etc/passwd", "prompt": "x"}', 404, "unknown adapter"),
        ("/v1/completions", b'{"model": "base", "prompt": "x", "max_tokens": 100000}', 400, "max_tokens"),
        ("/v1/completions", b'{"model": "base", "prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
        ("/v1/completions", b'{"model": "base", "prompt": "x", "n": 2}', 400, "n > 1"),
        ("/v1/completions", b'{"model": "base", "prompt": "x", "temperature": -1}', 400, "temperature"),
        ("/v1/completions", b'{"model": "base", "prompt": []}', 400, "no prompt"),
        ("/v1/adapters", b'{"instruction": "   "}', 400, "empty"),
        ("/v1/adapters", b'{"instructions": "typo"}', 400, "instruction"),
        ("/v1/adapters", b'{"instruction": "x", "pos_examples": [{"input": "a"}]}', 400, "output"),
    ],
)
def test_bad_requests_are_4xx_json_errors(server, path, content, status, message):
    r = server.client.post(path, content=content, headers={"content-type": "application/json"})
    assert message in error_of(r, status)


def test_limits_are_4xx_and_the_server_keeps_serving(server):
    c, limits = server.client, server.service.limits
    error_of(c.post("/v1/completions", content=b"x" * (limits.max_body_bytes + 1)), 413)
    big = "y" * (limits.max_instruction_chars + 1)
    assert "over the limit" in error_of(c.post("/v1/adapters", json={"instruction": big}), 400)
    prompts = ["x"] * (limits.max_prompts + 1)
    error_of(c.post("/v1/completions", json={"model": "base", "prompt": prompts}), 400)
    error_of(c.get("/v1/adapters/nope"), 404)
    error_of(c.get("/v1/adapters/nope/peft.zip"), 404)
    error_of(c.get("/no/such/route"), 404)
    assert c.get("/healthz").json()["status"] == "ok"
    assert (
        c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 2}).status_code == 200
    )


def test_full_queue_is_429_and_a_timeout_is_408(serve_ckpt, backbones):
    with running_server(serve_ckpt, backbones["tiny-llama"], max_queue=2, timeout_s=0.2) as srv:
        body = {"model": "base", "prompt": ["a", "b", "c"], "max_tokens": 2}
        assert "busy" in error_of(srv.client.post("/v1/completions", json=body), 429)
        with worker_paused(srv.service):  # the worker is held, so the request cannot finish in time
            r = srv.client.post("/v1/completions", json={"model": "base", "prompt": "a", "max_tokens": 2})
            assert "timed out" in error_of(r, 408)
        srv.service.limits.timeout_s = 120
        ok = srv.client.post("/v1/completions", json={"model": "base", "prompt": "a", "max_tokens": 2})
        assert ok.status_code == 200


def test_token_required_when_set_and_cors_off_by_default(serve_ckpt, backbones, server):
    origin = {"Origin": "http://example.com"}
    assert "access-control-allow-origin" not in server.client.get("/v1/tasks", headers=origin).headers
    with running_server(
        serve_ckpt, backbones["tiny-llama"], token="s3cret", cors=["http://example.com"]
    ) as srv:
        c = srv.client
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200  # public
        for path in ("/v1/models", "/metrics"):
            assert "bearer token" in error_of(c.get(path), 401)
            error_of(c.get(path, headers={"Authorization": "Bearer wrong"}), 401)
            error_of(c.get(path, headers={"Authorization": "Basic s3cret"}), 401)
        error_of(c.post("/v1/adapters", json={"instruction": "x"}), 401)
        good = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=good).status_code == 200
        assert c.post("/v1/adapters", json={"instruction": "x"}, headers=good).status_code == 200
        r = c.get("/v1/models", headers=good | origin)
        assert r.headers["access-control-allow-origin"] == "http://example.com"


def test_an_adapters_instruction_prefix_is_computed_when_it_is_made(server):
    """Making an adapter runs its instruction's prompt prefix once (a miss, kept in the prefix store); every
    completion for it then takes the prefix from the store (hits, never another miss), and the same input
    answers the same."""
    c = server.client
    before = c.get("/metrics").text
    a = make(c, "Repeat the input twice")
    made = c.get("/metrics").text
    body = {"model": a["id"], "prompt": INPUTS[0], "max_tokens": MT}
    first = c.post("/v1/completions", json=body).json()["choices"][0]["text"]
    second = c.post("/v1/completions", json=body | {"prompt": INPUTS[1]}).json()["choices"][0]["text"]
    again = c.post("/v1/completions", json=body).json()["choices"][0]["text"]
    after = c.get("/metrics").text
    misses, hits = "tagi_prefix_cache_misses_total", "tagi_prefix_cache_hits_total"
    assert sample(made, misses) == sample(before, misses) + 1
    assert sample(after, misses) == sample(made, misses)
    assert sample(after, hits) == sample(made, hits) + 3
    assert again == first and isinstance(second, str)
    # three prefills of one joining row each, as many decode steps as the outputs took, by kind
    calls, rows = "tagi_batch_size_count", "tagi_batch_size_sum"
    assert sample(after, calls, kind="prefill") == sample(made, calls, kind="prefill") + 3
    assert sample(after, rows, kind="prefill") == sample(made, rows, kind="prefill") + 3
    assert sample(after, "tagi_batch_seconds_count", kind="prefill") == sample(after, calls, kind="prefill")
    assert sample(after, "tagi_prefix_cache_entries") >= 1 and sample(after, "tagi_prefix_cache_bytes") > 0
