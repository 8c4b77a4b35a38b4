"""Finetuning step cost with task-grouped micro-batches (``finetune.task_group``) vs. tasks mixed freely.

    python benchmarks/task_grouped_training.py [--sni-dir ../shared/data/sni] [--groups 1 2 4]
                                               [--steps 12] [--batch-size 4] [--threads 2]

With SmolLM2-135M-Instruct and the SNI benchmark's settings (``configs/bench-sni-smollm2.yaml``: fusion,
Def / Def+2Pos instructions, the training tasks of the offline copy), it runs the student's forward and
backward (the CE term; the benchmark's KL comes from a top-k cache and costs no forward) for ``--steps``
micro-batches of ``--batch-size`` examples drawn with each ``task_group`` k (k = 1: tasks mixed freely;
k > 1: chunks of k examples of one task, one instruction per chunk). Every micro-batch runs twice, side by
side, on the same examples:

- **shared**: each distinct prompt prefix (chat head + instruction) runs once and its key/value cache is
  shared by the rows that continue it (what ``finetune.task_group > 1`` does);
- **unshared**: every row runs its whole prompt (what mixed batches do).

It checks that both give the same logits, and prints per k the prompt tokens processed (a machine-independent
measure of the work), the seconds per micro-batch (forward, backward, collation) and their ratios; results
go to ``benchmarks/results/task_grouped_training.json`` (with versions and machine load). Steps alternate
which mode runs first, and all variants interleave step by step, so machine load affects them alike.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from benchtools import missing_sni_dir, provenance, write_results

from tagi.config import load_config
from tagi.losses import ce_sum
from tagi.train.common import batch_tokens
from tagi.train.finetune import DistillObjective, student_forward
from tagi.train.recipes import FinetuneRecipe
from tagi.train.stages import get_backbone

ROOT = Path(__file__).resolve().parents[1]


def run_step(obj: DistillObjective, samples, share: bool) -> tuple[float, int, torch.Tensor]:
    """Forward + backward of one micro-batch's CE: ``(seconds, prompt tokens processed, logits)``."""
    obj.share_prefix = share
    t0 = time.perf_counter()
    data = obj.prepare(samples).data
    batch = data["batch"]
    logits, labels, _, _ = student_forward(obj.model, batch, data["instructions"], obj.cache)
    (ce_sum(logits, labels) / max(int(labels.numel()), 1)).backward()
    seconds = time.perf_counter() - t0
    obj.model.zero_grad(set_to_none=True)
    return seconds, batch_tokens(batch, obj.bb.family), logits.detach()


def recipe_overrides(k: int, args: argparse.Namespace) -> list[str]:
    """The finetuning settings of variant ``task_group=k``: CE only, fresh, one micro-batch per step."""
    return [
        f"finetune.task_group={k}",
        f"finetune.train.batch_size={args.batch_size}",
        "finetune.train.grad_accum=1",
        "finetune.train.length_grouping=1",
        f"finetune.train.max_steps={args.steps + 1}",
        "finetune.loss.ce=1.0",
        "finetune.loss.kl=0.0",
        "finetune.loss.align=0.0",
        "finetune.use_pretrained=false",
        "finetune.teacher_cache=false",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sni-dir", default=str(ROOT.parent / "shared" / "data" / "sni"))
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "task_grouped_training.json"))
    args = parser.parse_args(argv)
    if missing_sni_dir(args.sni_dir):
        return 2
    torch.set_num_threads(args.threads)
    config = ROOT / "configs" / "bench-sni-smollm2.yaml"
    cfg = load_config(config, [f"data.sni_dir={args.sni_dir}"])
    bb = get_backbone(cfg)
    variants = {}
    for k in args.groups:
        # the finetuning recipe of the benchmark's config with task_group k: CE only, a fresh hypernetwork,
        # micro-batches of --batch-size, one per step (length_grouping=1: sorting only orders a batch's rows)
        variant = load_config(config, [f"data.sni_dir={args.sni_dir}", *recipe_overrides(k, args)])
        recipe = FinetuneRecipe.build(variant, bb)  # every instruction the steps draw is encoded here
        recipe.model.train()
        variants[k] = (recipe.objective, [recipe.sampler.rank_batches(s)[0] for s in range(args.steps + 1)])
    for obj, batches in variants.values():  # warm-up: one step each
        run_step(obj, batches[0], share=True)
    stats = {k: {"shared": [0.0, 0], "unshared": [0.0, 0], "max_logit_diff": 0.0} for k in variants}
    load_start = os.getloadavg()[0]
    for step in range(1, args.steps + 1):
        for k, (obj, batches) in variants.items():
            logits = {}
            for share in (step % 2 == 0, step % 2 == 1):  # alternate which mode runs first
                seconds, tokens, logits[share] = run_step(obj, batches[step], share)
                stats[k]["shared" if share else "unshared"][0] += seconds
                stats[k]["shared" if share else "unshared"][1] += tokens
            diff = float((logits[True] - logits[False]).abs().max())
            stats[k]["max_logit_diff"] = max(stats[k]["max_logit_diff"], diff)
    rows, n = {}, args.steps * args.batch_size
    for k, st in stats.items():
        (t_on, tok_on), (t_off, tok_off) = st["shared"], st["unshared"]
        rows[k] = {"seconds_per_micro_batch": {"shared": t_on / args.steps, "unshared": t_off / args.steps},
                   "examples_per_s": {"shared": n / t_on, "unshared": n / t_off},
                   "prompt_tokens": {"shared": tok_on, "unshared": tok_off},
                   "time_ratio": t_on / t_off, "token_ratio": tok_on / tok_off,
                   "max_logit_diff": st["max_logit_diff"]}  # fmt: skip
        print(f"task_group={k}: shared prefix {t_on / args.steps:.2f} s vs unshared {t_off / args.steps:.2f} s "
              f"per micro-batch of {args.batch_size} (x{t_on / t_off:.2f}); tokens {tok_on} vs {tok_off} "
              f"(x{tok_on / tok_off:.2f}); max |logit diff| {st['max_logit_diff']:.1e}")  # fmt: skip
    result = {"args": vars(args), "variants": rows, "seed": cfg.seed,
              **provenance("task_grouped_training.py", argv, args.threads, load_start)}  # fmt: skip
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
