"""Greedy outputs through the service equal ``tagi predict`` on the downloaded PEFT folders: one client, and
8 concurrent clients on 4 different adapters, including when all 8 requests are decoded in one batch."""

from __future__ import annotations

import pytest
from serve_testing import (
    INPUTS,
    INSTRUCTIONS,
    complete,
    decode_queued,
    predict_downloaded,
    run_clients,
)

MT = 6


@pytest.fixture(scope="module")
def adapters(server):
    return [server.client.post("/v1/adapters", json={"instruction": t}).json()["id"] for t in INSTRUCTIONS]


@pytest.fixture(scope="module")
def predicted(server, adapters, tmp_path_factory):
    return predict_downloaded(server.client, adapters, tmp_path_factory.mktemp("peft"), MT)


def test_one_client_equals_tagi_predict(server, adapters, predicted):
    assert sum(bool(y) for y in predicted.values()) > len(predicted) // 2  # equality means something
    for key in adapters:
        for text in INPUTS:
            assert complete(server.client, key, text, MT) == predicted[key, text]


def test_eight_concurrent_clients_on_four_adapters_equal_tagi_predict(server, adapters, predicted):
    results = run_clients(server.url, adapters, 8, MT)
    assert len(results) == 8 * len(INPUTS)
    for (i, text), output in results.items():
        assert output == predicted[adapters[i % 4], text]


@pytest.mark.parametrize("prefill", ["fused", "packed", "padded"])
def test_requests_for_different_adapters_decode_in_one_batch(server, adapters, predicted, prefill):
    """8 queued rows over 4 adapters: one prefill (packed into one row, or left-padded; nothing runs yet to
    fuse it with), then decode steps; every output equals ``tagi predict``."""
    scheduler = server.service.scheduler
    assert scheduler.prefill == "fused"  # the server's default
    scheduler.prefill = prefill
    jobs = [(adapters[i % 4], INPUTS[i % len(INPUTS)]) for i in range(8)]
    try:
        calls, outputs = decode_queued(server, jobs, MT)
    finally:
        scheduler.prefill = "fused"
    assert calls[0] == ("prefill", 8)  # one prefill of all 8 rows, then decode steps of those left
    steps = [rows for kind, rows in calls[1:]]
    assert all(kind == "decode" for kind, _ in calls[1:]) and max(steps, default=8) <= 8
    assert steps == sorted(steps, reverse=True)  # nothing else joined: rows only leave
    assert outputs == [predicted[job] for job in jobs]
