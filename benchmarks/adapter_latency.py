"""Latency of using a hypernetwork: adapter generation per task, saving, and fused-prefix prediction.

    python benchmarks/adapter_latency.py [--model smollm2-135m-instruct] [--num-pos 0 2] [--instances 32]
                                         [--batch-size 16] [--max-new-tokens 16] [--repeats 3] [--threads 0]

On the built-in test tasks, with a randomly initialised hypernetwork (``HyperConfig(rank=8)``; latency
does not depend on training), measures in one process:

- **adapter generation** per task = instruction encoding by the frozen base + one hypernetwork forward
  (``Tagi.generate_adapter``; also split into its two parts), for each ``--num-pos`` (Def, Def+2Pos);
- **save**: ``Adapter.save`` of the PEFT folder + ``tagi.json`` (and its size on disk);
- **checkpoint load**: ``Tagi.from_checkpoint`` with the base model already loaded (hypernet only);
- **prediction per instance**, side by side on the same inputs and adapter: ``Tagi.predict`` (the fused
  instruction's key/value cache computed once per batch with the adapter active) vs. re-encoding the full
  prompt (instruction + input) for every instance (the same adapter given per row, which disables the
  shared prefix). Greedy outputs of both paths are compared.

Prints a table with ratios and writes ``benchmarks/results/adapter_latency.json`` (with versions).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import peft
import torch
import transformers
from benchtools import median_time, write_results

import tagi
from tagi import Tagi
from tagi.backbones import PromptExample, load_backbone
from tagi.config import HyperConfig, ModelConfig
from tagi.data import builtin_tasks, format_instruction, format_source
from tagi.model import TagiModel


def generation_latency(api: Tagi, tasks, num_pos: int, repeats: int) -> dict:
    """Median seconds per task for the whole call and for its two parts (encode, hypernet)."""
    bb, hyper = api.backbone, api.model.hypernet
    total, encode, forward, tokens = [], [], [], []
    for task in tasks:
        text = format_instruction(task, num_pos)
        ids, mask = bb.collate_instructions([text])
        tokens.append(ids.shape[1])
        total.append(median_time(lambda t=task: api.generate_adapter(task=t, pos_examples=num_pos), repeats))
        encode.append(median_time(lambda i=ids, m=mask: bb.encode_instruction(i, m), repeats))
        states = bb.encode_instruction(ids, mask)
        with torch.no_grad():
            forward.append(median_time(lambda s=states, m=mask: hyper(s, m), repeats))
    return {
        "instruction_tokens_median": statistics.median(tokens),
        "generate_adapter_s": statistics.median(total),
        "encode_instruction_s": statistics.median(encode),
        "hypernet_forward_s": statistics.median(forward),
    }


def predict_latency(api: Tagi, task, args) -> dict:
    """Per-instance seconds: cached fused prefix (Tagi.predict) vs. full prompt re-encoded per instance."""
    bb = api.backbone
    adapter = api.generate_adapter(task=task, pos_examples=max(args.num_pos))
    inputs = [inst.input for inst in task.instances[: args.instances]]
    n, bs, new = len(inputs), args.batch_size, args.max_new_tokens
    cached_out: list[str] = []
    full_out: list[str] = []

    def cached() -> None:
        cached_out[:] = api.predict(inputs, adapter, batch_size=bs, max_new_tokens=new)

    def reencode() -> None:
        full_out.clear()
        for i in range(0, n, bs):
            chunk = [PromptExample(adapter.instruction, format_source(x)) for x in inputs[i : i + bs]]
            per_row = adapter.weights.index([0] * len(chunk))  # same adapter per row: no shared prefix
            full_out.extend(bb.generate(chunk, per_row, adapter.mode, max_new_tokens=new))

    t_cached, t_full = median_time(cached, args.repeats), median_time(reencode, args.repeats)
    prefix = len(bb.prefix_ids(adapter.instruction, adapter.mode)) if bb.family == "causal" else None
    return {
        "task": task.name,
        "instances": n,
        "prefix_tokens": prefix,
        "per_instance_cached_prefix_s": t_cached / n,
        "per_instance_reencode_full_prompt_s": t_full / n,
        "reencode_over_cached": t_full / t_cached,
        "greedy_outputs_identical": cached_out == full_out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--num-pos", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--tasks", type=int, default=8, help="built-in test tasks timed for generation")
    ap.add_argument("--instances", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "adapter_latency.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_avg_start = os.getloadavg()
    t0 = time.perf_counter()
    bb = load_backbone(ModelConfig(name=args.model))
    load_base = time.perf_counter() - t0
    api = Tagi(bb, TagiModel(bb, HyperConfig(rank=8)), checkpoint_sha256=None)
    tasks = builtin_tasks("test", num_instances=args.instances, seed=0)[: args.tasks]

    gen = {f"num_pos={k}": generation_latency(api, tasks, k, args.repeats) for k in args.num_pos}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = api.model.save(Path(tmp) / "ckpt")
        load_ckpt = median_time(lambda: Tagi.from_checkpoint(ckpt, backbone=bb), args.repeats)
        adapter = api.generate_adapter(task=tasks[0], pos_examples=max(args.num_pos))
        folders = iter(range(10**6))
        save = median_time(lambda: adapter.save(Path(tmp) / f"ad{next(folders)}"), args.repeats)
        size = sum(p.stat().st_size for p in (Path(tmp) / "ad0").iterdir())
    pred = predict_latency(api, tasks[0], args)

    print(f"{args.model}: {len(bb.targets)} target modules, rank 8, hypernet {api.model.hypernet.num_parameters():,} "
          f"params, {torch.get_num_threads()} threads, load average {load_avg_start[0]:.2f}")  # fmt: skip
    print(
        f"{'adapter generation per task':<34} {'tokens':>7} {'total s':>8} {'encode s':>9} {'hypernet s':>10}"
    )
    for k, g in gen.items():
        print(f"  {k:<32} {g['instruction_tokens_median']:>7} {g['generate_adapter_s']:>8.3f} "
              f"{g['encode_instruction_s']:>9.3f} {g['hypernet_forward_s']:>10.4f}")  # fmt: skip
    print(f"{'save adapter folder':<34} {save:>8.4f} s  ({size / 1e6:.2f} MB)")
    print(f"{'load checkpoint (base loaded)':<34} {load_ckpt:>8.4f} s   (base model load {load_base:.1f} s)")
    print(f"predict per instance ({pred['task']}, {pred['instances']} instances, batch {args.batch_size}, "
          f"{args.max_new_tokens} new tokens, prefix {pred['prefix_tokens']} tokens):")  # fmt: skip
    print(f"  cached fused prefix   {pred['per_instance_cached_prefix_s']:.4f} s   1.00x")
    print(f"  re-encode full prompt {pred['per_instance_reencode_full_prompt_s']:.4f} s   "
          f"{pred['reencode_over_cached']:.2f}x   (greedy outputs identical: {pred['greedy_outputs_identical']})")  # fmt: skip
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "args": vars(args),
        "adapter_generation": gen,
        "save_adapter_s": save,
        "adapter_folder_bytes": size,
        "load_checkpoint_s": load_ckpt,
        "load_base_model_s": load_base,
        "predict": pred,
        "hypernet_parameters": api.model.hypernet.num_parameters(),
        "versions": {
            "tagi": tagi.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "threads": torch.get_num_threads(),
        "load_average_start_end": [load_avg_start[0], os.getloadavg()[0]],
    }
    write_results(args.out, result)


if __name__ == "__main__":
    main()
