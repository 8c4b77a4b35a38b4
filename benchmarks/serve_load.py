"""Load on ``tagi serve``: mixed-adapter batching vs. one request at a time, side by side in one run.

    python benchmarks/serve_load.py [--checkpoint runs/demo/finetune/final] [--clients 1,4,16]
                                    [--adapters 1,8] [--requests 4] [--rounds 3] [--max-tokens 32]
                                    [--time-limit 1800] [--threads 2] [--prefix-cache-mb 256]
                                    [--dtypes float32,bfloat16] [--modes batched,one_at_a_time]
                                    [--out benchmarks/results/serve_load.json]
    python benchmarks/serve_load.py --smoke --out /tmp/serve_load.json     # tiny random model, seconds

The base model and hypernetwork (SmolLM2-135M-Instruct from ``tagi demo`` by default) are loaded once. For
every cell (A distinct adapters, N concurrent clients) the script serves the same app on a free localhost
port in five modes, one after the other, ``--rounds`` times (each round starting with the next mode):

- **batched**: the server's defaults: continuous batching, up to 16 rows decode together whatever their
  adapters, and requests that arrive meanwhile join the running batch in groups of 4 (or after 4 decode
  steps), prefilled as one packed row without padding in the same model call as the running rows' decode
  step (``prefill="fused"``);
- **separate prefill**: the same, with the packed prefill in a model call of its own before the step
  (``prefill="packed"``);
- **padded prefill**: the same, with joining rows left-padded to the longest (``prefill="padded"``);
- **join each step**: the same as batched, but each arriving request joins at the next decode step
  (``join_min_rows=1``);
- **one at a time**: ``max_batch=1``, each request decoded alone, as a server that merges one adapter into
  the weights per request must.

The model is loaded, and the ``Tagi.predict`` references computed, on threads that end, as ``tagi serve``
loads (``tagi.serve.runner.on_own_thread``): each server's worker thread then owns the process's only
OpenMP pool (``benchmarks/openmp_pools.py`` measures what a second one costs).

N client threads, in a process of their own (as real clients: they share the CPU with the server, not its
interpreter), each send ``--requests`` completions (greedy, ``max_tokens``), client c's i-th request going
to adapter ``(c + i) mod A`` with an input of that adapter's built-in task. It records throughput
(completions/s, generated tokens/s), p50/p95 latency, errors (must be 0), the throughput ratios of batched
to each other mode, whether every output equals ``Tagi.predict`` for the same adapter and input, and the
worker's model calls by kind (from the ``tagi_batch_*`` metrics): rows per call, and the share of model
time in calls that prefill joining requests (alone or fused with a step) against plain decode steps. It
also records the share of the run during which all N clients were sending (``all_clients_share``): after
the first client is done, the last requests drain with fewer rows to batch, an end effect that weighs more
in a short run (``--requests 16`` makes it smaller).

``--dtypes float32,bfloat16`` serves every cell with the base model in each dtype, one after the other
(``tagi serve --dtype``; the hypernetwork stays float32), and records each mode's throughput in a dtype
over float32's (``dtype_ratios``); the ``Tagi.predict`` references run in the cell's dtype. ``--modes``
runs a subset of the modes.

Each mode is reported by its round of median throughput; every round's throughput is kept, with the CPU
time the hypervisor reports as stolen meanwhile (``steal_s``). This 2-core VM has spells of tens of
seconds in which the same model call takes up to 1.6x longer, whatever the load average says, and one
round of a 16-client cell lasts about that long. Bounded: rounds x N x requests per cell, and no new cell
starts after ``--time-limit`` seconds. Writes ``benchmarks/results/serve_load.json`` with provenance.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing.pool import Pool
from pathlib import Path
from typing import get_args

import httpx
import torch
from benchtools import provenance, write_results

from tagi import Tagi
from tagi.config import Dtype
from tagi.data.builtin import BUILTIN_TEST, make_builtin_task
from tagi.serve.app import create_app
from tagi.serve.runner import ServerThread, on_own_thread
from tagi.serve.service import Limits, Service

ROOT = Path(__file__).resolve().parents[1]
# each mode's server settings: Limits.max_batch and the scheduler's join policy (tagi.serve.scheduler)
MODES = {
    "batched": {"max_batch": 16},  # the defaults: arriving rows join a running batch in groups, fused
    "separate_prefill": {"max_batch": 16, "prefill": "packed"},  # ... packed, in a call before the step
    "padded_prefill": {"max_batch": 16, "prefill": "padded"},  # ... prefilled left-padded instead
    "join_each_step": {"max_batch": 16, "join_min_rows": 1},  # ... each at the next decode step
    "one_at_a_time": {"max_batch": 1},
}


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def smoke_checkpoint(folder: Path) -> Path:
    """A tiny random checkpoint (tiny-llama) for ``--smoke``."""
    from tagi.backbones import load_backbone
    from tagi.config import HyperConfig, ModelConfig
    from tagi.model import TagiModel

    torch.manual_seed(0)
    return TagiModel(load_backbone(ModelConfig(name="tiny-llama")), HyperConfig(rank=4, hidden=32)).save(
        folder
    )


def workload(num_adapters: int, clients: int, requests: int) -> list[list[tuple[int, str]]]:
    """Per client, its (adapter index, input) requests; adapter k reads built-in held-out task k."""
    tasks = [
        make_builtin_task(BUILTIN_TEST[k % len(BUILTIN_TEST)], num_instances=64) for k in range(num_adapters)
    ]
    plan = []
    for c in range(clients):
        reqs = []
        for i in range(requests):
            k = (c + i) % num_adapters
            reqs.append((k, tasks[k].instances[(c * requests + i) % len(tasks[k].instances)].input))
        plan.append(reqs)
    return plan


def run_clients(url: str, ids: list[str], plan, max_tokens: int) -> dict:
    """Every client in its own thread; returns outputs, latencies, tokens, errors, wall time and when the
    first client finished (``all_clients``: seconds from the start during which every client was sending)."""
    latencies, outputs, errors, tokens, ends = [], {}, [], [0], []
    lock = threading.Lock()

    def client(reqs) -> None:
        try:
            send(reqs)
        finally:
            with lock:
                ends.append(time.perf_counter())

    def send(reqs) -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            for k, text in reqs:
                t0 = time.perf_counter()
                r = http.post(
                    "/v1/completions", json={"model": ids[k], "prompt": text, "max_tokens": max_tokens}
                )
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code != 200:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                        continue
                    body = r.json()
                    latencies.append(dt)
                    tokens[0] += body["usage"]["completion_tokens"]
                    outputs[k, text] = body["choices"][0]["text"]

    threads = [threading.Thread(target=client, args=(reqs,)) for reqs in plan]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall": time.perf_counter() - t0, "latencies": latencies, "outputs": outputs, "errors": errors,
            "tokens": tokens[0], "all_clients": min(ends) - t0}  # fmt: skip


def measure(
    tagi: Tagi, mode: str, instructions: list[str], plan, max_tokens: int, prefix_mb: int, clients: Pool
) -> dict:
    settings = dict(MODES[mode])
    limits = Limits(
        max_batch=settings.pop("max_batch"), max_queue=4096, max_tokens=max_tokens, timeout_s=3600,
        prefix_cache_bytes=prefix_mb * 2**20,
    )  # fmt: skip
    service = Service(tagi, limits, **settings)
    try:
        with ServerThread(create_app(service)) as srv, httpx.Client(base_url=srv.url, timeout=600) as http:
            ids = [http.post("/v1/adapters", json={"instruction": t}).json()["id"] for t in instructions]
            steal = steal_s()
            run = clients.apply(run_clients, (srv.url, ids, plan, max_tokens))  # in the client process
            steal = None if steal is None else round(steal_s() - steal, 2)
    finally:
        service.close()
    kinds = service.metrics.model_calls()
    count = sum(k["calls"] for k in kinds.values())
    busy = sum(k["seconds"] for k in kinds.values())
    lat, n = sorted(run["latencies"]), len(run["latencies"])
    return {
        "mode": mode,
        "completions": n,
        "errors": len(run["errors"]),
        "error_samples": run["errors"][:3],
        "wall_s": round(run["wall"], 3),
        "completions_per_s": round(n / run["wall"], 3),
        # the share of the run during which all N clients were still sending; the rest drains the last
        # requests with fewer rows to batch (a short run's end effect)
        "all_clients_share": round(run["all_clients"] / run["wall"], 3),
        "tokens_per_s": round(run["tokens"] / run["wall"], 2),
        "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "p95_ms": round(1000 * lat[min(n - 1, int(0.95 * n))], 1) if lat else None,
        # model calls (decode steps and prefills of joining rows) and their mean rows: tagi_batch_size
        "model_calls": int(count),
        "mean_rows_per_call": round(sum(k["rows"] for k in kinds.values()) / count, 2) if count else None,
        # the worker's time in model calls, and the share of it in calls that prefill joining requests (a
        # prefill of their own, or fused with the running rows' step)
        "model_busy_s": round(busy, 3),
        "prefill_share": round(
            sum(kinds.get(k, {}).get("seconds", 0.0) for k in ("prefill", "fused")) / busy, 3
        )
        if busy
        else None,
        "calls_by_kind": {k: {f: round(v, 3) for f, v in d.items()} for k, d in kinds.items()},
        "steal_s": steal,  # CPU seconds other guests of the host took meanwhile (host contention)
        "_outputs": run["outputs"],
    }


def reference(tagi: Tagi, instructions: list[str], plan, max_tokens: int) -> dict:
    """``Tagi.predict`` for every (adapter, input) of the plan."""
    wanted: dict[int, list[str]] = {}
    for reqs in plan:
        for k, text in reqs:
            if text not in wanted.setdefault(k, []):
                wanted[k].append(text)
    out = {}
    for k, texts in wanted.items():
        preds = tagi.predict(texts, tagi.generate_adapter(instructions[k]), max_new_tokens=max_tokens)
        out.update({(k, t): p for t, p in zip(texts, preds)})
    return out


def steal_s() -> float | None:
    """CPU time the hypervisor gave other guests so far (``steal`` in /proc/stat), in seconds; None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else None


def median_run(runs: list[dict]) -> dict:
    """The round with the median throughput (rounds' throughputs, errors and output checks over all of them)."""
    ranked = sorted(runs, key=lambda r: r["completions_per_s"])
    out = dict(ranked[(len(ranked) - 1) // 2])
    out["rounds_completions_per_s"] = [r["completions_per_s"] for r in runs]
    out["errors"] = sum(r["errors"] for r in runs)
    out["outputs_equal_predict"] = all(r["outputs_equal_predict"] for r in runs)
    out["outputs_equal_predict_share"] = min(r["outputs_equal_predict_share"] for r in runs)  # worst round
    return out


def run_cell(tagi: Tagi, num_adapters: int, clients: int, args, pool: Pool) -> tuple[dict, dict]:
    """The cell's results, and its ``Tagi.predict`` references {(adapter index, input): output}."""
    instructions = [
        make_builtin_task(BUILTIN_TEST[k % len(BUILTIN_TEST)], 1).definition for k in range(num_adapters)
    ]
    plan = workload(num_adapters, clients, args.requests)
    # on a thread that ends, as tagi serve loads: each server's worker keeps the only OpenMP pool (runner.py)
    ref = on_own_thread(reference, tagi, instructions, plan, args.max_tokens)
    order = args.modes
    by_mode: dict[str, list[dict]] = {mode: [] for mode in order}
    for i in range(args.rounds):  # each round starts with the next mode: a slow spell hits every mode alike
        for mode in order[i % len(order) :] + order[: i % len(order)]:
            run = measure(tagi, mode, instructions, plan, args.max_tokens, args.prefix_cache_mb, pool)
            outputs = run.pop("_outputs")
            equal = [outputs.get(key) == want for key, want in ref.items()]
            run["outputs_equal_predict"] = all(equal)
            run["outputs_equal_predict_share"] = round(sum(equal) / len(equal), 3)
            by_mode[mode].append(run)
    runs = [median_run(by_mode[mode]) for mode in order]
    rate = {r["mode"]: r["completions_per_s"] for r in runs}

    def ratio(other: str) -> float | None:
        return round(rate["batched"] / rate[other], 2) if rate.get("batched") and rate.get(other) else None

    return {"adapters": num_adapters, "clients": clients, "dtype": tagi.backbone.cfg.dtype,
            "requests": clients * args.requests, "runs": runs,
            "throughput_ratio_batched_vs_one_at_a_time": ratio("one_at_a_time"),
            "throughput_ratio_batched_vs_separate_prefill": ratio("separate_prefill"),
            "throughput_ratio_batched_vs_padded_prefill": ratio("padded_prefill"),
            "throughput_ratio_batched_vs_join_each_step": ratio("join_each_step")}, ref  # fmt: skip


def dtype_ratios(cells: list[dict], refs: list[dict]) -> list[dict]:
    """For every cell served in several dtypes: each mode's throughput in a dtype over float32's, same run,
    and the share of its ``Tagi.predict`` references (``refs[i]`` for ``cells[i]``) equal to float32's."""
    key = {(c["adapters"], c["clients"], c["dtype"]): i for i, c in enumerate(cells)}
    out = []
    for cell, mine in zip(cells, refs, strict=True):
        i = key.get((cell["adapters"], cell["clients"], "float32"))
        if i is None or cells[i] is cell:
            continue
        base = {r["mode"]: r["completions_per_s"] for r in cells[i]["runs"]}
        same = [mine[k] == want for k, want in refs[i].items()]
        out.append({"adapters": cell["adapters"], "clients": cell["clients"], "dtype": cell["dtype"],
                    "throughput_vs_float32": {r["mode"]: round(r["completions_per_s"] / base[r["mode"]], 2)
                                              for r in cell["runs"] if base.get(r["mode"])},
                    # Tagi.predict in this dtype against float32's, same adapters' instructions and inputs
                    "predict_equal_float32_share": round(sum(same) / len(same), 3)})  # fmt: skip
    return out


def print_cell(cell: dict) -> None:
    for r in cell["runs"]:
        print(f"{cell['adapters']:>8} {cell['clients']:>7} {r['mode']:>14} {r['completions_per_s']:>9.2f} "
              f"{r['tokens_per_s']:>8.1f} {r['p50_ms']:>9.0f} {r['p95_ms']:>9.0f} {r['errors']:>6} "
              f"{str(r['outputs_equal_predict']):>6} {r['mean_rows_per_call']!s:>9} {r['prefill_share']!s:>8}",
              flush=True)  # fmt: skip
    print(f"{cell['dtype']:>16} {'ratio':>14} {cell['throughput_ratio_batched_vs_one_at_a_time']!s:>9}x vs one at a "
          f"time, {cell['throughput_ratio_batched_vs_separate_prefill']!s}x vs separate prefill, "
          f"{cell['throughput_ratio_batched_vs_padded_prefill']!s}x vs padded prefill, "
          f"{cell['throughput_ratio_batched_vs_join_each_step']!s}x vs join each step", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "runs" / "demo" / "finetune" / "final"))
    parser.add_argument("--clients", type=ints, default=None, help="default 1,4,16 (--smoke: 1,4)")
    parser.add_argument("--adapters", type=ints, default=None, help="default 1,8 (--smoke: 1,4)")
    parser.add_argument("--requests", type=int, default=4, help="completions per client per cell")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of every mode per cell (the median is reported; --smoke: 1)",
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--time-limit", type=float, default=1800, help="no new cell starts after this (s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--prefix-cache-mb", type=int, default=256, help="the servers' prefix cache (0 = off), every mode"
    )
    parser.add_argument(
        "--dtypes",
        type=lambda t: [x for x in t.split(",") if x],
        default=None,
        help="base-model dtypes to serve, each cell in each one after the other, e.g. float32,bfloat16 "
        "(default: the checkpoint's model.dtype)",
    )
    parser.add_argument(
        "--modes",
        type=lambda t: [x for x in t.split(",") if x],
        default=list(MODES),
        help=f"modes to run, of {','.join(MODES)} (default: all)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 2 requests per client")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.json"))
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modes) - set(MODES)) + sorted(set(args.dtypes or ()) - set(get_args(Dtype)))
    if unknown or not args.modes:
        parser.error(f"unknown or no modes/dtypes: {unknown}")
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="serve-load-")
    if args.smoke:
        args.checkpoint, args.max_tokens = str(smoke_checkpoint(Path(tmp.name) / "ckpt")), 4
        args.requests, args.clients, args.adapters = 2, args.clients or [1, 4], args.adapters or [1, 4]
        args.rounds = 1
    args.clients, args.adapters = args.clients or [1, 4, 16], args.adapters or [1, 8]
    if not Path(args.checkpoint).is_dir():
        print(
            f"error: checkpoint not found: {args.checkpoint} (run 'tagi demo' or pass --checkpoint)",
            file=sys.stderr,
        )
        return 2
    load_start, t_start = os.getloadavg()[0], time.perf_counter()
    # loaded on a thread that ends: see run_cell; one Tagi per dtype (None: the checkpoint's model.dtype)
    tagis = {d: on_own_thread(Tagi.from_checkpoint, args.checkpoint, dtype=d) for d in args.dtypes or [None]}
    print(f"{'adapters':>8} {'clients':>7} {'mode':>14} {'compl/s':>9} {'tok/s':>8} {'p50 ms':>9} {'p95 ms':>9} "
          f"{'errors':>6} {'=pred':>6} {'rows/call':>9} {'prefill':>8}")  # fmt: skip
    cells, refs, skipped = [], [], []
    # the clients run in their own process, as real clients do: they share the CPU with the server, not
    # its interpreter (threads in the server's process would hold its GIL between the worker's model calls)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        for a in args.adapters:
            for n in args.clients:
                for tagi in tagis.values():
                    if time.perf_counter() - t_start > args.time_limit:
                        skipped.append({"adapters": a, "clients": n, "dtype": tagi.backbone.cfg.dtype})
                        continue
                    cell, ref = run_cell(tagi, a, n, args, pool)
                    cells.append(cell)
                    refs.append(ref)
                    print_cell(cell)
    tmp.cleanup()
    shown = Path(args.checkpoint).resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    tagi = next(iter(tagis.values()))
    result = {"checkpoint": str(shown), "base_model": tagi.backbone.cfg.name, "max_tokens": args.max_tokens,
              "requests_per_client": args.requests, "rounds": args.rounds,
              "modes": {m: MODES[m] for m in args.modes}, "dtypes": [t.backbone.cfg.dtype for t in tagis.values()],
              "prefix_cache_mb": args.prefix_cache_mb, "cells": cells, "skipped_cells": skipped,
              "dtype_ratios": dtype_ratios(cells, refs),
              "total_errors": sum(r["errors"] for c in cells for r in c["runs"]),
              **provenance("serve_load.py", argv, args.threads, load_start)}  # fmt: skip
    write_results(args.out, result)
    return 1 if result["total_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
