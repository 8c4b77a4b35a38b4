"""The evaluation harness on a tiny T5 (encoder-decoder): FiD fusion, input-only and in-context methods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from evalkit import single_thread, tiny_config  # noqa: F401

from tagi.evaluate.harness import run_evaluation


@pytest.mark.slow
def test_tiny_t5_evaluation(tmp_path: Path) -> None:
    methods = "[no-finetune,multitask-lora,tagi,tagi-no-fusion,oracle,tagi-other-instruction]"
    cfg = tiny_config(
        tmp_path, ["model.name=tiny-t5", f"evaluate.methods={methods}", "data.max_test_tasks=2"]
    )
    results = json.loads((run_evaluation(cfg) / "results.json").read_text())
    assert all("scores" in m for m in results["methods"].values())
    assert (
        results["methods"]["tagi"]["mode"] == "fuse"
        and results["methods"]["tagi-no-fusion"]["mode"] == "none"
    )
    scen = {(r["scenario"], r["setting"]): r["relative"] for r in results["efficiency"]["scenarios"]}
    assert scen[("in-context, prefix-cached", "Def+2Pos")] == 1.0  # T5 cannot cache a prompt prefix
