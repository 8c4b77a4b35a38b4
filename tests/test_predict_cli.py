"""`tagi generate` / `tagi predict`: in-process through tagi.cli.main, plus one smoke test of the entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tagi import Adapter, Tagi
from tagi.cli import main
from tagi.config import HyperConfig
from tagi.data import format_instruction, load_task
from tagi.files import write_jsonl
from tagi.model import CheckpointError, TagiModel

INPUTS = ["hello world", "abc"]
TASK = {
    "Definition": ["Copy the input"],
    "Positive Examples": [{"input": "ab", "output": "ab"}, {"input": "cd", "output": "cd"}],
    "Instances": [{"id": "1", "input": "xy", "output": ["xy"]}],
}


@pytest.fixture(scope="module")
def ckpt(backbones, tmp_path_factory):
    """A tiny 'trained' tiny-llama checkpoint (B-heads randomised so the adapter is non-zero)."""
    model = TagiModel(backbones["tiny-llama"], HyperConfig(rank=4, hidden=32, module_embed_dim=8))
    with torch.random.fork_rng():
        torch.manual_seed(7)
        for head in model.hypernet.head_b.values():
            torch.nn.init.normal_(head.weight, std=0.05)
    return str(model.save(tmp_path_factory.mktemp("cli") / "ckpt"))


@pytest.fixture(scope="module")
def tagi(ckpt, backbones):
    return Tagi.from_checkpoint(ckpt, backbone=backbones["tiny-llama"])


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows(text):
    return [json.loads(line) for line in text.splitlines()]


def test_generate_writes_peft_folder_and_refuses_overwrite(ckpt, tagi, tmp_path, capsys):
    out = tmp_path / "ad"
    code, stdout, _ = run(
        capsys, "generate", "--checkpoint", ckpt, "--instruction", "Copy the input", "--out", out
    )
    assert code == 0 and stdout.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tagi.json",
    ]
    expected = tagi.generate_adapter("Copy the input")
    got = Adapter.load(out)
    assert got.instruction == "Definition: Copy the input.\n\n"
    assert all(torch.equal(got.weights.B[n], expected.weights.B[n]) for n in got.weights.names)
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run(capsys, "generate", "--checkpoint", ckpt, "--instruction", "Other", "--out", out)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: output folder exists")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot
    code, _, _ = run(
        capsys, "generate", "--checkpoint", ckpt, "--instruction", "Other", "--out", out, "--overwrite"
    )
    assert code == 0 and Adapter.load(out).instruction == "Definition: Other.\n\n"


def test_generate_from_task_file_with_positive_examples(ckpt, tmp_path, capsys):
    task_file = tmp_path / "copy_task.json"
    task_file.write_text(json.dumps(TASK))
    code, _, _ = run(capsys, "generate", "--checkpoint", ckpt, "--task-file", task_file, "--pos-examples", 2,
                     "--out", tmp_path / "ad")  # fmt: skip
    assert code == 0
    assert Adapter.load(tmp_path / "ad").instruction == format_instruction(load_task(task_file), 2)
    code, _, _ = run(capsys, "generate", "--checkpoint", ckpt, "--task-file", task_file, "--fusion", "off",
                     "--out", tmp_path / "ad0")  # fmt: skip
    meta = json.loads((tmp_path / "ad0" / "tagi.json").read_text())
    assert code == 0 and meta["fuse"] is False and meta["mode"] == "none"
    code, _, err = run(capsys, "generate", "--checkpoint", ckpt, "--task-file", task_file, "--fusion", "maybe",
                       "--out", tmp_path / "ad1")  # fmt: skip
    assert code == 2 and "--fusion must be" in err and not (tmp_path / "ad1").exists()


def test_predict_with_adapter_and_with_checkpoint(ckpt, tagi, tmp_path, capsys):
    ad = tagi.generate_adapter("Copy the input")
    expected = tagi.predict(INPUTS, ad, max_new_tokens=5)
    ad.save(tmp_path / "ad")
    code, stdout, _ = run(
        capsys, "predict", "--adapter", tmp_path / "ad", "--input", *INPUTS, "--max-new-tokens", 5
    )
    assert code == 0 and rows(stdout) == [{"input": x, "output": y} for x, y in zip(INPUTS, expected)]
    lines = tmp_path / "inputs.txt"
    lines.write_text("hello world\n\nabc\n")  # blank lines are skipped
    out = tmp_path / "res" / "out.jsonl"
    code, stdout, _ = run(capsys, "predict", "--checkpoint", ckpt, "--instruction", "Copy the input",
                          "--input-file", lines, "--output", out, "--max-new-tokens", 5, "--batch-size", 1)  # fmt: skip
    assert code == 0 and stdout == ""
    assert rows(out.read_text()) == [{"input": x, "output": y} for x, y in zip(INPUTS, expected)]
    jsonl = tmp_path / "inputs.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "input": x}) + "\n" for i, x in enumerate(INPUTS)))
    code, stdout, _ = run(capsys, "predict", "--adapter", tmp_path / "ad", "--input-file", jsonl,
                          "--max-new-tokens", 5)  # fmt: skip
    assert code == 0 and [(r["id"], r["output"]) for r in rows(stdout)] == list(enumerate(expected))


def test_predict_errors_are_one_line(ckpt, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    cases = [
        (["--checkpoint", ckpt, "--instruction", "x", "--input-file", bad], f"not UTF-8 text: {bad}"),
        (["--checkpoint", tmp_path / "nope", "--instruction", "x", "--input", "a"], "checkpoint not found"),
        (["--checkpoint", ckpt, "--instruction", "  ", "--input", "a"], "instruction is empty"),
        (["--checkpoint", ckpt, "--input", "a"], "--adapter DIR, or --checkpoint with"),
        (["--checkpoint", ckpt, "--instruction", "x", "--input", "a", "--output", tmp_path], "is a folder"),
        (["--adapter", tmp_path, "--input", "a"], "not a PEFT LoRA folder"),
    ]
    for args, message in cases:
        code, _, err = run(capsys, "predict", *args)
        assert code == 2 and err.count("\n") == 1 and message in err, err


def test_output_written_atomically(tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("tagi.files.json.dumps", boom)
    with pytest.raises(RuntimeError):
        write_jsonl(out, [{"input": "a", "output": "b"}])
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


@pytest.mark.slow
def test_entry_point_smoke(ckpt):
    exe = Path(sys.executable).with_name("tagi")
    cmd = [
        str(exe),
        "predict",
        "--checkpoint",
        ckpt,
        "--instruction",
        "Copy",
        "--input",
        "hi",
        "--max-new-tokens",
        "3",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert [r["input"] for r in rows(res.stdout)] == ["hi"]


def test_dtype_runs_the_base_model_in_it_and_the_adapter_records_it(ckpt, tmp_path, capsys):
    """--dtype bfloat16: the adapter is made with the base model in bfloat16 and says so; predict --adapter
    then reloads that base model in bfloat16 by itself and equals predict --checkpoint --dtype bfloat16."""
    bf16 = Tagi.from_checkpoint(ckpt, dtype="bfloat16")
    assert bf16.backbone.model.dtype == torch.bfloat16
    assert {p.dtype for p in bf16.model.hypernet.parameters()} == {torch.float32}
    out = tmp_path / "ad"
    code, _, _ = run(capsys, "generate", "--checkpoint", ckpt, "--instruction", "Copy the input", "--out", out,
                     "--dtype", "bfloat16")  # fmt: skip
    saved = Adapter.load(out)
    assert code == 0 and saved.model["dtype"] == "bfloat16"
    made = bf16.generate_adapter("Copy the input")
    assert all(torch.equal(saved.weights.A[n], made.weights.A[n]) for n in saved.weights.names)
    expected = bf16.predict(INPUTS, made, max_new_tokens=5)
    code, stdout, _ = run(capsys, "predict", "--adapter", out, "--input", *INPUTS, "--max-new-tokens", 5)
    assert code == 0 and [r["output"] for r in rows(stdout)] == expected
    code, stdout, _ = run(capsys, "predict", "--checkpoint", ckpt, "--instruction", "Copy the input",
                          "--input", *INPUTS, "--max-new-tokens", 5, "--dtype", "bfloat16")  # fmt: skip
    assert code == 0 and [r["output"] for r in rows(stdout)] == expected
    assert Tagi.for_adapter(saved, dtype="float32").backbone.model.dtype == torch.float32  # override


def test_dtype_errors(ckpt, backbones, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it before anything is loaded
        run(capsys, "generate", "--checkpoint", ckpt, "--instruction", "x", "--out", tmp_path / "a",
            "--dtype", "float64")  # fmt: skip
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'float64'" in err and not (tmp_path / "a").exists()
    with pytest.raises(CheckpointError, match="dtype=bfloat16 but the given base model is loaded as float32"):
        Tagi.from_checkpoint(ckpt, backbone=backbones["tiny-llama"], dtype="bfloat16")
