"""Cost of tagi's batched per-example LoRA against the base model, a merged adapter and PEFT.

    python benchmarks/lora_overhead.py [--model smollm2-135m-instruct] [--batch 8] [--tokens 256] [--repeats 5]

Measured side by side in one process on the same inputs (median of ``--repeats`` timed runs after one
warm-up): forward of the frozen base; forward with per-example adapters (a different adapter per row,
as in training); forward with one shared adapter through the hooks; forward with that adapter merged into
the weights; forward of a PEFT ``LoraModel`` holding it; and forward+backward into the LoRA factors for the
hook path and for PEFT. Prints times and ratios to the base forward and writes
``benchmarks/results/lora_overhead.json`` (with versions and the command).
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
from pathlib import Path

import peft
import torch
import transformers
from benchtools import median_time, write_results
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

from tagi.backbones import load_backbone
from tagi.config import ModelConfig
from tagi.lora import LoraWeights, apply_lora, merged, to_peft_state_dict


def adapters(backbone, n: int, rank: int, requires_grad: bool = False) -> LoraWeights:
    g = torch.Generator().manual_seed(0)
    a = {t.name: torch.randn(n, rank, t.in_features, generator=g) * 0.01 for t in backbone.targets}
    b = {t.name: torch.randn(n, t.out_features, rank, generator=g) * 0.01 for t in backbone.targets}
    for v in (*a.values(), *b.values()):
        v.requires_grad_(requires_grad)
    return LoraWeights(a, b, 2.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "lora_overhead.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    bb = load_backbone(ModelConfig(name=args.model))
    model = bb.model
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.tokens))
    per_example, shared = adapters(bb, args.batch, args.rank), adapters(bb, 1, args.rank)

    def fwd(weights=None):
        with torch.no_grad(), apply_lora(model, weights):
            model.model(input_ids=ids)

    def fwd_merged():
        with torch.no_grad(), merged(model, shared):
            model.model(input_ids=ids)

    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=args.rank, lora_alpha=2.0 * args.rank, target_modules=shared.names)
    )
    set_peft_model_state_dict(peft_model, to_peft_state_dict(shared))
    peft_model.eval()

    def fwd_peft():
        with torch.no_grad():
            peft_model.base_model.model.model(input_ids=ids)

    trainable = adapters(bb, args.batch, args.rank, requires_grad=True)

    def train_hooks():
        with apply_lora(model, trainable):
            model.model(input_ids=ids).last_hidden_state.float().pow(2).mean().backward()

    def train_peft():
        peft_model.base_model.model.model(input_ids=ids).last_hidden_state.float().pow(2).mean().backward()

    rows = {
        "base forward": median_time(fwd, args.repeats),
        "per-example LoRA hooks (forward)": median_time(lambda: fwd(per_example), args.repeats),
        "shared LoRA hooks (forward)": median_time(lambda: fwd(shared), args.repeats),
        "merged adapter (forward, incl. merge+restore)": median_time(fwd_merged, args.repeats),
        "PEFT LoraModel (forward)": median_time(fwd_peft, args.repeats),
        "per-example LoRA hooks (forward+backward)": median_time(train_hooks, args.repeats),
        "PEFT LoraModel (forward+backward)": median_time(train_peft, args.repeats),
    }
    base = rows["base forward"]
    print(
        f"{args.model}: batch {args.batch} x {args.tokens} tokens, rank {args.rank}, {len(bb.targets)} target modules"
    )
    print(f"{'path':<48} {'seconds':>8} {'x base fwd':>10}")
    for k, v in rows.items():
        print(f"{k:<48} {v:>8.3f} {v / base:>10.2f}")
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "args": vars(args),
        "seconds": rows,
        "ratio_to_base_forward": {k: v / base for k, v in rows.items()},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "python": platform.python_version(),
        },
        "threads": torch.get_num_threads(),
    }
    write_results(args.out, result)


if __name__ == "__main__":
    main()
