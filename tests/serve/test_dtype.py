"""A server running its base model in bfloat16 (``tagi serve --dtype bfloat16``): requests for different
adapters decoded together still equal ``tagi predict`` on the downloaded PEFT folders, which record the
dtype and reload the base model in it."""

from __future__ import annotations

import io
import json
import threading
import zipfile

import httpx
import pytest
import torch
from serve_testing import (
    INPUTS,
    INSTRUCTIONS,
    WAIT_S,
    complete,
    predict_downloaded,
    run_clients,
    running_server,
    wait_until,
    worker_paused,
)

from tagi.backbones import load_backbone
from tagi.config import ModelConfig

MT = 6


@pytest.fixture(scope="module")
def bf16_server(serve_ckpt):
    backbone = load_backbone(ModelConfig(name="tiny-llama", dtype="bfloat16"))
    with running_server(serve_ckpt, backbone) as srv:
        yield srv


def test_bfloat16_server_equals_tagi_predict_with_eight_clients_on_four_adapters(bf16_server, tmp_path):
    srv = bf16_server
    assert srv.service.tagi.backbone.model.dtype == torch.bfloat16
    adapters = [srv.client.post("/v1/adapters", json={"instruction": t}).json()["id"] for t in INSTRUCTIONS]
    zipped = zipfile.ZipFile(io.BytesIO(srv.client.get(f"/v1/adapters/{adapters[0]}/peft.zip").content))
    assert json.loads(zipped.read(f"tagi-{adapters[0]}/tagi.json"))["model"]["dtype"] == "bfloat16"
    predicted = predict_downloaded(srv.client, adapters, tmp_path, MT)
    assert sum(bool(y) for y in predicted.values()) > len(predicted) // 2  # equality means something
    for (i, text), output in run_clients(srv.url, adapters, 8, MT).items():
        assert output == predicted[adapters[i % 4], text]
    calls, observe, results = [], srv.service.scheduler.on_batch, {}

    def one(i: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=WAIT_S) as c:
            results[i] = complete(c, adapters[i % 4], INPUTS[i % len(INPUTS)], MT)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    with worker_paused(srv.service):  # the 8 requests of 4 adapters wait, then decode as one batch
        srv.service.scheduler.on_batch = lambda kind, n, s: (calls.append((kind, n)), observe(kind, n, s))
        for t in threads:
            t.start()
        wait_until(lambda: srv.service.scheduler.depth() == 8, "8 queued rows")
    try:
        for t in threads:
            t.join(WAIT_S)
    finally:
        srv.service.scheduler.on_batch = observe
    assert calls[0] == ("prefill", 8)
    assert [results[i] for i in range(8)] == [
        predicted[adapters[i % 4], INPUTS[i % len(INPUTS)]] for i in range(8)
    ]
