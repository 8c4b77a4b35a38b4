"""A server running its base model in bfloat16 (``tagi serve --dtype bfloat16``).

What holds in bfloat16: the downloaded PEFT folders record the dtype and ``tagi predict --adapter`` reloads the
base model in it; a request decoded alone equals ``tagi predict --batch-size 1`` (the same computation, row for
row); requests for different adapters decode together without error. What does not: equality with other batch
shapes. bfloat16 products round differently for different numbers of rows, enough to change some greedy
outputs of SmolLM2 (``benchmarks/serve_load.py --dtypes float32,bfloat16`` counts them), so no test asserts it.
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from serve_testing import (
    INPUTS,
    INSTRUCTIONS,
    complete,
    decode_queued,
    predict_downloaded,
    running_server,
)

from tagi.backbones import load_backbone
from tagi.config import ModelConfig

MT = 6


@pytest.fixture(scope="module")
def bf16_server(serve_ckpt):
    backbone = load_backbone(ModelConfig(name="tiny-llama", dtype="bfloat16"))
    with running_server(serve_ckpt, backbone) as srv:
        yield srv


@pytest.fixture(scope="module")
def adapters(bf16_server):
    return [
        bf16_server.client.post("/v1/adapters", json={"instruction": t}).json()["id"] for t in INSTRUCTIONS
    ]


def test_adapters_record_the_dtype_and_one_client_equals_tagi_predict(bf16_server, adapters, tmp_path):
    srv = bf16_server
    assert srv.service.tagi.backbone.model.dtype == torch.bfloat16
    zipped = zipfile.ZipFile(io.BytesIO(srv.client.get(f"/v1/adapters/{adapters[0]}/peft.zip").content))
    assert json.loads(zipped.read(f"tagi-{adapters[0]}/tagi.json"))["model"]["dtype"] == "bfloat16"
    predicted = predict_downloaded(srv.client, adapters, tmp_path, MT, batch_size=1)
    assert sum(bool(y) for y in predicted.values()) > len(predicted) // 2  # equality means something
    for key in adapters:
        for text in INPUTS:
            assert complete(srv.client, key, text, MT) == predicted[key, text]


def test_requests_for_four_adapters_decode_in_one_bfloat16_batch(bf16_server, adapters):
    jobs = [(adapters[i % 4], INPUTS[i % len(INPUTS)]) for i in range(8)]
    calls, outputs = decode_queued(bf16_server, jobs, MT)
    assert calls[0] == ("prefill", 8) and all(isinstance(y, str) for y in outputs)
