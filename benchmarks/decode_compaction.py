"""Greedy decoding that drops finished rows vs. decoding every row to the batch's last step.

    python benchmarks/decode_compaction.py [--sni-dir ../shared/data/sni] [--tasks 8] [--instances 20]
                                           [--factor 1.5] [--repeats 1] [--threads 2]

On the first ``--tasks`` English SNI test tasks (``--instances`` each, Def prompts, one batch per task with
its instruction prefix cached once, the task's decoding budget from its positive examples as in the
benchmark), with SmolLM2-135M-Instruct (the SNI benchmark's model settings) and no adapter, it times side
by side in one process:

- **tagi**: ``CausalBackbone.generate``; a row that emits a stop token leaves the batch (its key/value
  cache, mask and positions are dropped);
- **reference**: the same loop without that (finished rows are padded and keep computing until every
  row has stopped or the budget is spent, as ``transformers``' ``generate`` does).

It checks that both give the same outputs, and counts the row-steps each computed (a machine-independent
measure of the decoding work). Prints a table with ratios and writes
``benchmarks/results/decode_compaction.json`` (with versions and machine load).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from benchtools import median_time, missing_sni_dir, provenance, write_results

from tagi.backbones import PromptExample, load_backbone
from tagi.backbones.base import pad_left
from tagi.config import DataConfig, load_config
from tagi.data import format_instruction, format_source
from tagi.data.select import load_tasks
from tagi.evaluate.decoding import new_token_budget

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def reference_generate(bb, examples: list[PromptExample], limit: int, steps: list[int]) -> list[str]:
    """Greedy decoding with one cached prefix where finished rows stay in the batch (padded)."""
    n, prefix = len(examples), bb.prefix_ids(examples[0].instruction, "concat")
    cache = bb.model(input_ids=torch.tensor([prefix]), use_cache=True, logits_to_keep=1).cache
    cache.batch_repeat_interleave(n)
    ids, mask = pad_left([bb.suffix_ids(e.source) for e in examples], bb.pad_id)
    attn = torch.cat([torch.ones(n, len(prefix), dtype=torch.long), mask], 1)
    pos = (attn.cumsum(-1) - 1).clamp_min(0)[:, len(prefix) :]
    stop, finished, tokens = torch.tensor(sorted(bb.stop_ids)), torch.zeros(n, dtype=torch.bool), []
    for _ in range(limit):
        out = bb.model(input_ids=ids, attention_mask=attn, position_ids=pos, cache=cache, use_cache=True,
                       logits_to_keep=1)  # fmt: skip
        cache = out.cache
        steps.append(n)
        nxt = out.logits[:, -1].argmax(-1).masked_fill(finished, bb.pad_id)  # [N]
        tokens.append(nxt)
        finished |= torch.isin(nxt, stop)
        if bool(finished.all()):
            break
        attn = torch.cat([attn, torch.ones(n, 1, dtype=torch.long)], 1)
        pos, ids = pos[:, -1:] + 1, nxt[:, None]
    return bb._decode(torch.stack(tokens, 1))


def tagi_generate(bb, examples: list[PromptExample], limit: int, steps: list[int]) -> list[str]:
    """``bb.generate``, counting the rows of every decoding forward (a pre-hook on the model)."""
    hook = bb.model.register_forward_pre_hook(
        lambda m, args, kwargs: steps.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        return bb.generate(examples, None, "concat", max_new_tokens=limit)
    finally:
        hook.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sni-dir", default=str(ROOT.parent / "shared" / "data" / "sni"))
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument(
        "--factor", type=float, default=1.5, help="decoding budget (evaluate.new_tokens_from_examples)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decode_compaction.json"))
    args = parser.parse_args(argv)
    if missing_sni_dir(args.sni_dir):
        return 2
    torch.set_num_threads(args.threads)
    bb = load_backbone(
        load_config(ROOT / "configs" / "bench-sni-smollm2.yaml").model
    )  # the benchmark's limits
    data = DataConfig(
        source="sni", sni_dir=args.sni_dir, max_test_instances=args.instances, max_test_tasks=args.tasks
    )
    rows, load_start = [], os.getloadavg()[0]
    for task in load_tasks(data, "test"):
        ins = format_instruction(task, 0)
        examples = [PromptExample(ins, format_source(i.input)) for i in task.instances]
        limit = new_token_budget(task, bb, args.factor)
        steps = {"tagi": [], "reference": []}  # rows of every forward of one call
        outs = {"tagi": tagi_generate(bb, examples, limit, steps["tagi"]),
                "reference": reference_generate(bb, examples, limit, steps["reference"])}  # fmt: skip
        seconds = {name: median_time(lambda f=fn, e=examples, k=limit: f(bb, e, k, []), args.repeats)
                   for name, fn in (("tagi", tagi_generate), ("reference", reference_generate))}  # fmt: skip
        rows.append({"task": task.name, "instances": len(examples), "budget": limit,
                     "same_outputs": outs["tagi"] == outs["reference"],
                     "row_steps": {"tagi": sum(steps["tagi"][1:]),  # [0] is the shared prefix (1 row)
                                   "reference": sum(steps["reference"])},
                     "seconds": seconds})  # fmt: skip
        r = rows[-1]
        print(f"{task.name[:48]:48s} budget {limit:3d}  row-steps {r['row_steps']['tagi']:5d} vs "
              f"{r['row_steps']['reference']:5d}  s {seconds['tagi']:6.2f} vs {seconds['reference']:6.2f}  "
              f"same={r['same_outputs']}")  # fmt: skip
    total = {k: sum(r["seconds"][k] for r in rows) for k in ("tagi", "reference")}
    work = {k: sum(r["row_steps"][k] for r in rows) for k in ("tagi", "reference")}
    summary = {"seconds": total, "row_steps": work, "time_ratio": total["tagi"] / total["reference"],
               "row_step_ratio": work["tagi"] / work["reference"],
               "all_same_outputs": all(r["same_outputs"] for r in rows)}  # fmt: skip
    print(f"\ntotal: tagi {total['tagi']:.1f} s vs reference {total['reference']:.1f} s "
          f"(ratio {summary['time_ratio']:.2f}); row-steps ratio {summary['row_step_ratio']:.2f}; "
          f"same outputs: {summary['all_same_outputs']}")  # fmt: skip
    result = {"args": vars(args), "summary": summary, "tasks": rows,
              **provenance("decode_compaction.py", argv, args.threads, load_start)}  # fmt: skip
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
