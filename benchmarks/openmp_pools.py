"""One OpenMP pool or two in a serving process: the model calls of ``tagi serve``'s worker thread when the model
was loaded on the main thread (which keeps its OpenMP pool) against loaded on a thread that has ended (what
``tagi serve`` and ``benchmarks/serve_load.py`` do, ``tagi.serve.runner.on_own_thread``), side by side.

    python benchmarks/openmp_pools.py [--checkpoint runs/demo/finetune/final] [--rounds 3] [--calls 15]
                                      [--out benchmarks/results/openmp_pools.json]
    python benchmarks/openmp_pools.py --smoke --out /tmp/openmp_pools.json     # tiny random model, seconds

Each round runs both settings, each in a fresh process (the order alternates between rounds). A process
loads the checkpoint (on its main thread, or on a thread that ends), starts a ``Service`` and times, on the
service's worker thread, bare forward passes of the base model: one row of 1 token (a decode step alone),
8 rows of 1 token (a batched step), one row of 25 tokens and one of 128 (prefills); ``--calls`` of each,
median per call. It also records the CPU the process used per second of those calls (2.0 = both cores of
the reference machine busy). Reported: per shape, the median over rounds of each setting and the ratio
(loaded on the main thread / loaded on a thread that ended). Writes ``benchmarks/results/openmp_pools.json``
with provenance; run it with the machine to itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchtools import provenance, write_results

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"decode 1 row": (1, 1), "decode 8 rows": (8, 1), "prefill 25 tokens": (1, 25),
          "prefill 128 tokens": (1, 128)}  # fmt: skip
SETTINGS = ("loaded on the main thread", "loaded on a thread that ended")


def child(checkpoint: str, on_thread: bool, calls: int, threads: int) -> dict:
    """In a fresh process: load, start a service, time the shapes on its worker thread."""
    import torch

    from tagi import Tagi
    from tagi.serve.runner import on_own_thread
    from tagi.serve.service import Limits, Service

    torch.set_num_threads(threads)
    tagi = on_own_thread(Tagi.from_checkpoint, checkpoint) if on_thread else Tagi.from_checkpoint(checkpoint)
    model, vocab = tagi.backbone.model, tagi.backbone.model.config.vocab_size
    if not on_thread:  # the main thread runs parallel work, as loading plus a first prediction would
        with torch.no_grad():
            model(input_ids=torch.randint(0, vocab, (1, 128)))

    def timed() -> dict:
        out, gen = {}, torch.Generator().manual_seed(0)
        t_cpu, t_wall, busy = os.times(), time.perf_counter(), 0.0
        for name, shape in SHAPES.items():
            ids, times = torch.randint(0, vocab, shape, generator=gen), []
            for _ in range(calls + 1):  # the first call warms up
                t0 = time.perf_counter()
                with torch.no_grad():
                    model(input_ids=ids, logits_to_keep=1)
                times.append(time.perf_counter() - t0)
            out[name] = round(1000 * statistics.median(times[1:]), 2)
            busy += sum(times)
        cpu = os.times()
        used = cpu.user + cpu.system - t_cpu.user - t_cpu.system
        out["cpu_cores_used"] = round(used / (time.perf_counter() - t_wall), 2)
        return out

    service = Service(tagi, Limits(max_batch=16, max_queue=16, max_tokens=8, timeout_s=600))
    try:
        return service.scheduler.submit(timed).result()
    finally:
        service.close()


def run_child(checkpoint: str, on_thread: bool, calls: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--checkpoint", checkpoint, "--calls", str(calls),
           "--threads", str(threads)] + (["--on-thread"] if on_thread else [])  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "runs" / "demo" / "finetune" / "final"))
    parser.add_argument("--rounds", type=int, default=3, help="runs of both settings (medians reported)")
    parser.add_argument("--calls", type=int, default=15, help="timed calls per shape in a run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 1 round of 2 calls")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "openmp_pools.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--on-thread", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.checkpoint, args.on_thread, args.calls, args.threads)))
        return 0
    tmp = tempfile.TemporaryDirectory(prefix="openmp-pools-")
    if args.smoke:
        from serve_load import smoke_checkpoint

        args.checkpoint = str(smoke_checkpoint(Path(tmp.name) / "ckpt"))
        args.rounds, args.calls = 1, 2
    if not Path(args.checkpoint).is_dir():
        print(f"error: checkpoint not found: {args.checkpoint} (run 'tagi demo' or pass --checkpoint)",
              file=sys.stderr)  # fmt: skip
        return 2
    load_start = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for i in range(args.rounds):
        for s in SETTINGS[i % 2 :] + SETTINGS[: i % 2]:  # alternate which setting runs first
            runs[s].append(run_child(args.checkpoint, s == SETTINGS[1], args.calls, args.threads))
    tmp.cleanup()
    keys = [*SHAPES, "cpu_cores_used"]
    table = {s: {k: statistics.median(r[k] for r in runs[s]) for k in keys} for s in SETTINGS}
    ratios = {k: round(table[SETTINGS[0]][k] / table[SETTINGS[1]][k], 2) for k in SHAPES}
    print(f"{'':>32}" + "".join(f"{k:>20}" for k in keys))
    for s in SETTINGS:
        print(f"{s:>32}" + "".join(f"{table[s][k]:>20}" for k in keys))
    print(f"{'ratio (main / ended), ms':>32}" + "".join(f"{ratios[k]:>19}x" for k in SHAPES))
    shown = Path(args.checkpoint).resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    result = {"checkpoint": str(shown) if not args.smoke else "tiny-llama (smoke)", "calls": args.calls,
              "rounds": args.rounds, "shapes": {k: list(v) for k, v in SHAPES.items()}, "median_ms": table,
              "ratio_main_vs_ended": ratios, "runs": runs,
              **provenance("openmp_pools.py", argv, args.threads, load_start)}  # fmt: skip
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
