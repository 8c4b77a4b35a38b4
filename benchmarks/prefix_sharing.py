"""Mixed-adapter decoding: rows of one adapter sharing its instruction's prefix cache, vs. every row its own.

Command (from the repository root; needs the demo's checkpoint, ``tagi demo``; about 1 minute)::

    python benchmarks/prefix_sharing.py [--checkpoint runs/demo/finetune/final] [--repeats 5]

One batch of 16 rows over 8 adapters (2 inputs of each of the 8 built-in held-out tasks, the adapter
generated from the task's definition), decoded greedily for at most 32 new tokens in two ways, alternated
``--repeats`` times in one process: ``CausalBackbone.generate(adapters [8], adapter_rows=...)`` (each
adapter's prefix runs once; what ``tagi serve`` does) and ``generate(adapters gathered per row [16])``
(every row runs its own prefix). It prints the median seconds of each and their ratio, checks that both
give the same outputs, and writes ``benchmarks/results/prefix_sharing.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from benchtools import provenance, write_results

ROOT = Path(__file__).resolve().parents[1]


def batch(tagi, per_task: int = 2):
    """The 16 rows: prompt examples, the 8 stacked adapters and each row's adapter index."""
    from tagi.backbones import PromptExample
    from tagi.data import format_source
    from tagi.data.builtin import BUILTIN_TEST, make_builtin_task
    from tagi.lora import LoraWeights

    tasks = [make_builtin_task(name, num_instances=per_task) for name in BUILTIN_TEST[:8]]
    adapters = [tagi.generate_adapter(task.definition) for task in tasks]
    examples, rows = [], []
    for k, (task, adapter) in enumerate(zip(tasks, adapters, strict=True)):
        for inst in task.instances[:per_task]:
            examples.append(PromptExample(adapter.instruction, format_source(inst.input), ""))
            rows.append(k)
    return examples, LoraWeights.stack([a.weights for a in adapters]), rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "runs" / "demo" / "finetune" / "final"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prefix_sharing.json"))
    args = parser.parse_args(argv)
    if not Path(args.checkpoint).is_dir():
        print(f"error: no checkpoint at {args.checkpoint} (run `tagi demo` first)", file=sys.stderr)
        return 2
    from tagi import Tagi

    load_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    tagi = Tagi.from_checkpoint(args.checkpoint)
    examples, adapters, rows = batch(tagi)
    bb, per_row = tagi.backbone, adapters.index(rows)
    runs = {
        "shared_prefix": lambda: bb.generate(examples, adapters, "fuse", 32, adapter_rows=rows),
        "prefix_per_row": lambda: bb.generate(examples, per_row, "fuse", 32),
    }
    seconds, outputs = {k: [] for k in runs}, {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            outputs[name] = run()
            seconds[name].append(time.perf_counter() - t0)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    ratio = median["prefix_per_row"] / median["shared_prefix"]
    same = outputs["shared_prefix"] == outputs["prefix_per_row"]
    for name, s in median.items():
        print(f"{name:15s} median {s:.3f} s  runs {[round(x, 3) for x in seconds[name]]}")
    print(f"speed-up of sharing: {ratio:.2f}x; same outputs: {same}")
    result = {"rows": len(examples), "adapters": adapters.batch_size, "max_new_tokens": 32,
              "repeats": args.repeats, "seconds": seconds, "median_s": median,
              "speedup_shared_vs_per_row": round(ratio, 3), "same_outputs": same,
              "checkpoint": os.path.relpath(args.checkpoint, ROOT),
              **provenance("prefix_sharing.py", argv, args.threads, load_start)}  # fmt: skip
    write_results(args.out, result)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
