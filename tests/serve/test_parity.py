"""Greedy outputs through the service equal ``tagi predict`` on the downloaded PEFT folders: one client, and
8 concurrent clients on 4 different adapters, including when all 8 requests are decoded in one batch."""

from __future__ import annotations

import io
import json
import threading
import zipfile

import httpx
import pytest
from serve_testing import INPUTS, INSTRUCTIONS, WAIT_S, wait_until, worker_paused

from tagi.cli import main as cli_main

MT = 6


@pytest.fixture(scope="module")
def adapters(server):
    return [server.client.post("/v1/adapters", json={"instruction": t}).json()["id"] for t in INSTRUCTIONS]


@pytest.fixture(scope="module")
def predicted(server, adapters, tmp_path_factory):
    """``tagi predict --adapter DIR`` on each adapter's downloaded PEFT folder: {(adapter id, input): output}."""
    root, out = tmp_path_factory.mktemp("peft"), {}
    for key in adapters:
        zipfile.ZipFile(io.BytesIO(server.client.get(f"/v1/adapters/{key}/peft.zip").content)).extractall(
            root
        )
        rows = root / f"{key}.jsonl"
        argv = ["predict", "--adapter", str(root / f"tagi-{key}"), "--input", *INPUTS,
                "--max-new-tokens", str(MT), "--output", str(rows)]  # fmt: skip
        assert cli_main(argv) == 0
        for line in rows.read_text().splitlines():
            row = json.loads(line)
            out[key, row["input"]] = row["output"]
    return out


def complete(client: httpx.Client, key: str, text: str) -> str:
    r = client.post("/v1/completions", json={"model": key, "prompt": text, "max_tokens": MT})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_one_client_equals_tagi_predict(server, adapters, predicted):
    assert sum(bool(y) for y in predicted.values()) > len(predicted) // 2  # equality means something
    for key in adapters:
        for text in INPUTS:
            assert complete(server.client, key, text) == predicted[key, text]


def run_clients(url: str, adapters: list[str], n: int) -> dict[tuple[int, str], str]:
    """``n`` clients in threads, client ``i`` on adapter ``i % len(adapters)``, each over all inputs."""
    results, errors = {}, []

    def client(i: int) -> None:
        try:
            with httpx.Client(base_url=url, timeout=WAIT_S) as c:
                for text in INPUTS:
                    results[i, text] = complete(c, adapters[i % len(adapters)], text)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not errors, errors
    return results


def test_eight_concurrent_clients_on_four_adapters_equal_tagi_predict(server, adapters, predicted):
    results = run_clients(server.url, adapters, 8)
    assert len(results) == 8 * len(INPUTS)
    for (i, text), output in results.items():
        assert output == predicted[adapters[i % 4], text]


@pytest.mark.parametrize("prefill", ["fused", "packed", "padded"])
def test_requests_for_different_adapters_decode_in_one_batch(server, adapters, predicted, prefill):
    """8 queued rows over 4 adapters: one prefill (packed into one row, or left-padded; nothing runs yet to
    fuse it with), then decode steps; every output equals ``tagi predict``."""
    scheduler = server.service.scheduler
    calls, observe = [], scheduler.on_batch
    assert scheduler.prefill == "fused"  # the server's default
    scheduler.prefill = prefill
    results, threads = {}, []

    def one(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=WAIT_S) as c:
            results[i] = complete(c, adapters[i % 4], INPUTS[i % len(INPUTS)])

    with worker_paused(server.service):  # the 8 requests wait in the queue together
        scheduler.on_batch = lambda kind, rows, s: (calls.append((kind, rows)), observe(kind, rows, s))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: scheduler.depth() == 8, "8 queued rows")
    try:
        for t in threads:
            t.join(WAIT_S)
    finally:
        scheduler.on_batch, scheduler.prefill = observe, "fused"
    assert calls[0] == ("prefill", 8)  # one prefill of all 8 rows, then decode steps of those left
    steps = [rows for kind, rows in calls[1:]]
    assert all(kind == "decode" for kind, _ in calls[1:]) and max(steps, default=8) <= 8
    assert steps == sorted(steps, reverse=True)  # nothing else joined: rows only leave
    assert [results[i] for i in range(8)] == [
        predicted[adapters[i % 4], INPUTS[i % len(INPUTS)]] for i in range(8)
    ]
