"""How task-specific are the generated adapters? Their spread over the test tasks, next to the teachers'.

    python benchmarks/adapter_spread.py [--config configs/bench-sni-smollm2.yaml] [--run runs/bench-sni-smollm2]
        [--sni-dir ../shared/data/sni] [--num-pos 0] [--methods tagi hint-like ...]

For every hypernetwork method whose checkpoint exists in the run folder (``finetune/final`` for TAGI,
``methods/<name>/final`` for a training variant), it generates one adapter per English SNI test task from
the task's instruction (Def with ``--num-pos 0``), exactly as the evaluation does, and reports from the
adapters' Gram matrix (``tagi.evaluate.compare.adapter_spread``): the mean pairwise cosine of their
updates dW, the task-specific share of their squared norm (0 = the same adapter for every task) and their
mean norm. The category teachers of stage 0 (real LoRAs trained on different tasks) are the reference
for how different task adapters can be. Writes ``benchmarks/results/adapter_spread.json`` (with the
config, versions and the command) and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from benchtools import write_results

import tagi
from tagi.backbones import load_backbone
from tagi.config import load_config
from tagi.data import format_instruction
from tagi.data.select import load_tasks
from tagi.evaluate.compare import adapter_spread, generated_spread
from tagi.evaluate.methods import METHODS
from tagi.lora import LoraWeights
from tagi.model import InstructionCache, TagiModel
from tagi.train.teachers import load_teachers

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = ["tagi", "hint-like", "tagi-no-kl", "tagi-no-align", "tagi-no-ce", "tagi-no-pretrain",
                   "tagi-no-fusion", "hypter-like", "tagi-no-hypernet"]  # fmt: skip


def checkpoint(run: Path, name: str) -> Path:
    """The ``final`` checkpoint of a hypernetwork method in the run folder (see tagi.evaluate.harness)."""
    spec = METHODS[name]
    return run / "finetune" / "final" if not spec.variant else run / "methods" / name / "final"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "bench-sni-smollm2.yaml"))
    parser.add_argument("--run", default="runs/bench-sni-smollm2", help="the run folder (config out_dir)")
    parser.add_argument("--sni-dir", default=str(ROOT.parent / "shared" / "data" / "sni"))
    parser.add_argument("--num-pos", type=int, default=0, help="0 = Def, 2 = Def+2Pos")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "adapter_spread.json"))
    args = parser.parse_args(argv)
    run = Path(args.run)
    for path, what in ((Path(args.sni_dir), "SNI data folder"), (run, "run folder")):
        if not path.is_dir():
            print(f"error: {what} not found: {path}", file=sys.stderr)
            return 2
    unknown = [m for m in args.methods if m not in METHODS or METHODS[m].adapter != "hypernet"]
    if unknown:
        print(f"error: not hypernetwork methods: {', '.join(unknown)}", file=sys.stderr)
        return 2
    cfg = load_config(args.config, [f"data.sni_dir={args.sni_dir}", f"out_dir={run}"])
    torch.manual_seed(cfg.seed)
    bb = load_backbone(cfg.model)
    tasks = load_tasks(cfg.data, "test")
    texts = [format_instruction(t, args.num_pos) for t in tasks]
    rows, cache = {}, InstructionCache()
    _, teachers = load_teachers(run / "teachers")
    teacher_set = LoraWeights.stack(list(teachers.values()))
    rows["teachers (stage 0, one per category)"] = adapter_spread(teacher_set.gram())
    for name in args.methods:
        ckpt = checkpoint(run, name)
        if not ckpt.is_dir():
            print(f"{name}: no checkpoint at {ckpt}; skipped")
            continue
        model = TagiModel.load(ckpt, bb)
        hyper_texts = [""] * len(texts) if METHODS[name].hyper_input == "empty" else texts
        rows[name] = generated_spread(model, hyper_texts, cache=cache) | {"checkpoint": str(ckpt)}
    print(
        f"\n{'adapters':40s} {'n':>4s} {'mean cosine':>12s} {'task-specific share':>20s} {'mean norm':>10s}"
    )
    for name, r in rows.items():
        cos = "–" if r["mean_cosine"] is None else f"{r['mean_cosine']:.4f}"
        share, norm = r["task_specific_share"], r["mean_norm"]
        print(f"{name:40s} {r['adapters']:4d} {cos:>12s} {share:20.4f} {norm:10.4f}")
    command = ["python", "benchmarks/adapter_spread.py", *(sys.argv[1:] if argv is None else argv)]
    result = {"command": " ".join(command), "config": args.config, "seed": cfg.seed, "num_pos": args.num_pos,
              "test_tasks": len(tasks), "adapters": rows,
              "versions": {"tagi": tagi.__version__, "torch": torch.__version__}}  # fmt: skip
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
