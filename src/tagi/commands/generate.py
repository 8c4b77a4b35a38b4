"""``tagi generate`` and ``tagi predict``: adapters from instructions, and predictions with them.

Both are thin over the Python API (:class:`tagi.Tagi`, :class:`tagi.Adapter`): they check their options
before loading anything, read inputs (text lines or JSONL objects) and write JSONL atomically.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from tagi.adapters import Adapter, check_out_dir
from tagi.api import GenerateError, Tagi
from tagi.config import Dtype
from tagi.data import load_task
from tagi.files import jsonl_rows, write_jsonl

log = logging.getLogger("tagi.generate")


def read_inputs(path: str | Path) -> list[dict[str, Any]]:
    """Rows ``{"input": ...}`` from a text file (one input per non-blank line) or ``.jsonl`` objects.

    JSONL rows need a string ``"input"``; other fields (e.g. ``"id"``) are passed through to the output.
    """
    path = Path(path)
    if not path.is_file():
        raise GenerateError(f"input file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GenerateError(f"input file is not UTF-8 text: {path}") from None
    if path.suffix != ".jsonl":
        rows = [{"input": line} for line in text.splitlines() if line.strip()]
    else:
        rows = []
        for n, row in jsonl_rows(text, path, GenerateError):
            if not isinstance(row, dict) or not isinstance(row.get("input"), str):
                raise GenerateError(f'{path}:{n}: expected an object with a string "input"')
            rows.append(row)
    if not rows:
        raise GenerateError(f"no inputs in {path}")
    return rows


_FUSION = {"auto": None, "on": True, "off": False}


def _make_adapter(
    tagi: Tagi, instruction: str | None, task_file: str | None, pos_examples: int, raw: bool, fusion: str
) -> Adapter:
    task = load_task(task_file) if task_file is not None else None
    fuse = _FUSION[fusion]
    return tagi.generate_adapter(instruction, task=task, pos_examples=pos_examples, raw=raw, fuse=fuse)


def _check_fusion(fusion: str) -> None:
    if fusion not in _FUSION:
        raise GenerateError(f"--fusion must be auto, on or off (got {fusion!r})")


def generate(
    checkpoint: str,
    out: str,
    instruction: str | None = None,
    task_file: str | None = None,
    pos_examples: int = 0,
    raw: bool = False,
    fusion: str = "auto",
    overwrite: bool = False,
    device: str = "cpu",
    dtype: Dtype | None = None,
) -> int:
    """Generate a LoRA adapter from an instruction and save it as a PEFT folder (+ tagi.json).

    Args:
        checkpoint: hypernetwork checkpoint folder (hypernet.safetensors + tagi_config.json).
        out: output folder (adapter_config.json, adapter_model.safetensors, tagi.json).
        instruction: task definition text; wrapped as "Definition: TEXT.\\n\\n" like training.
        task_file: SNI task JSON whose Definition (and positive examples) form the instruction.
        pos_examples: positive examples from --task-file to include (0 = Def, 2 = Def+2Pos).
        raw: use --instruction verbatim (already in Tk-Instruct format).
        fusion: fuse the instruction at inference: auto (as the checkpoint was trained), on or off.
        overwrite: replace an existing adapter folder.
        device: torch device.
        dtype: run the base model in this dtype (default: the checkpoint's model.dtype); tagi.json records it.
    """
    if (instruction is None) == (task_file is None):
        raise GenerateError("give exactly one of --instruction or --task-file")
    _check_fusion(fusion)
    check_out_dir(out, overwrite)  # fail before loading anything
    tagi = Tagi.from_checkpoint(checkpoint, device=device, dtype=dtype)
    adapter = _make_adapter(tagi, instruction, task_file, pos_examples, raw, fusion)
    folder = adapter.save(out, overwrite=overwrite)
    log.info(
        "adapter (rank %d, %s, mode %s) written to %s", adapter.rank, adapter.base_model, adapter.mode, folder
    )
    print(folder)
    return 0


def predict(
    checkpoint: str | None = None,
    instruction: str | None = None,
    task_file: str | None = None,
    pos_examples: int = 0,
    raw: bool = False,
    fusion: str = "auto",
    adapter: str | None = None,
    input: list[str] | None = None,  # noqa: A002 - the flag is --input
    input_file: str | None = None,
    output: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    device: str = "cpu",
    dtype: Dtype | None = None,
) -> int:
    """Run a generated adapter on inputs; prints JSONL rows {"input", "output"} (or writes --output).

    Args:
        checkpoint: hypernetwork checkpoint folder; with --instruction/--task-file generates the adapter.
        instruction: task definition text (with --checkpoint); wrapped as "Definition: TEXT.\\n\\n".
        task_file: SNI task JSON giving the instruction (with --checkpoint).
        pos_examples: positive examples from --task-file to include.
        raw: use --instruction verbatim (already in Tk-Instruct format).
        fusion: with --checkpoint: fuse the instruction: auto (as the checkpoint was trained), on or off.
        adapter: saved adapter folder (from 'tagi generate'); its base model is loaded unless --checkpoint.
        input: one or more input texts.
        input_file: inputs, one per line, or a .jsonl file of {"input": ...} objects (other fields kept).
        output: JSONL file to write (atomically) instead of printing to stdout.
        batch_size: inputs per generation batch (the instruction prefix is computed once per batch).
        max_new_tokens: generation length limit (default: model.max_target_tokens).
        temperature: 0 = greedy; > 0 samples.
        top_p: nucleus sampling threshold (with --temperature > 0).
        seed: random seed for sampling.
        device: torch device.
        dtype: run the base model in this dtype (default: the adapter's or the checkpoint's model.dtype).
    """
    _check_fusion(fusion)
    if (input is None) == (input_file is None):
        raise GenerateError("give exactly one of --input or --input-file")
    has_ins = instruction is not None or task_file is not None
    if adapter is None and (checkpoint is None or not has_ins):
        raise GenerateError("give --adapter DIR, or --checkpoint with --instruction or --task-file")
    if adapter is not None and (has_ins or fusion != "auto"):
        raise GenerateError(
            "--adapter records its own instruction and fusion; drop --instruction/--task-file/--fusion"
        )
    if output is not None and Path(output).is_dir():
        raise GenerateError(f"output path is a folder, not a file: {output}")
    rows = [{"input": x} for x in input] if input is not None else read_inputs(input_file)
    if not rows:
        raise GenerateError("--input needs at least one text")
    saved = Adapter.load(adapter) if adapter is not None else None
    if checkpoint is not None:
        tagi = Tagi.from_checkpoint(checkpoint, device=device, dtype=dtype)
    else:
        tagi = Tagi.for_adapter(saved, device=device, dtype=dtype)
    ad = (
        saved if saved is not None else _make_adapter(tagi, instruction, task_file, pos_examples, raw, fusion)
    )
    outs = tagi.predict(
        [r["input"] for r in rows],
        ad,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    results = [r | {"output": o} for r, o in zip(rows, outs, strict=True)]
    if output is not None:
        log.info("%d outputs written to %s", len(results), write_jsonl(output, results))
    else:
        sys.stdout.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
    return 0
