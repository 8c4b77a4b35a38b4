"""Linear weights as loaded (``[out, in]``, row-major) against the same values stored input-major: forward
passes of the frozen base model, side by side in one process.

    python benchmarks/weight_layout.py [--model smollm2-135m-instruct] [--repeats 9] [--threads 2]
                                       [--out benchmarks/results/weight_layout.json]
    python benchmarks/weight_layout.py --smoke --out /tmp/weight_layout.json     # tiny random model

``nn.Linear`` computes ``x W^T``; with ``W`` stored ``[out, in]`` row-major, torch hands BLAS a transposed
operand, and on the reference machine MKL's kernel for that case is slow for a few rows (about 4 to 48).
Stored input-major (``W.t().contiguous().t()``: the same values and shape, column-major memory), the same
product runs as a plain one. Nothing in tagi does this yet; this script measures what it would change,
per shape: decode steps of 1 to 20 rows (one token each), single prompts of 8 to 256 tokens, and a
training-like batch of 8 rows of 128 tokens (forward only). Every linear layer below the output head is
stored input-major in the second copy (the head shares its weight with the embedding). The two copies
alternate call by call; each shape reports the median of ``--repeats`` calls per copy, their ratio (as
loaded / input-major: above 1 = input-major is faster) and the largest absolute difference between the two
copies' logits (float rounding: the kernels sum in another order). Writes
``benchmarks/results/weight_layout.json`` with provenance; run it with the machine to itself.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from benchtools import provenance, write_results

from tagi.backbones import load_backbone
from tagi.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {f"decode {b} rows": (b, 1) for b in (1, 2, 4, 8, 16, 20)}
SHAPES |= {f"prompt {t} tokens": (1, t) for t in (8, 25, 64, 128, 256)}
SHAPES |= {"batch 8 x 128 tokens": (8, 128)}


def input_major(model: torch.nn.Module) -> int:
    """Store every linear weight except the output head's input-major, in place; returns how many."""
    head = model.get_output_embeddings()
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            module.weight.data = module.weight.data.t().contiguous().t()
            count += 1
    return count


def measure(models: dict[str, torch.nn.Module], shape: tuple[int, int], repeats: int, vocab: int) -> dict:
    ids = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in models}
    logits = {}
    with torch.no_grad():
        for i in range(repeats + 1):  # the first call of each copy warms up
            for name, model in models.items():
                t0 = time.perf_counter()
                out = model(input_ids=ids, logits_to_keep=1).logits
                if i:
                    times[name].append(time.perf_counter() - t0)
                logits[name] = out
    ms = {name: round(1000 * statistics.median(t), 2) for name, t in times.items()}
    a, b = logits.values()
    return {"ms": ms, "ratio": round(ms["as loaded"] / ms["input-major"], 2),
            "max_abs_logit_diff": float((a - b).abs().max())}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per copy and shape")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 2 calls per shape")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "weight_layout.json"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.repeats = "tiny-llama", 2
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    loaded = load_backbone(ModelConfig(name=args.model)).model.eval()
    stored = copy.deepcopy(loaded)
    relaid = input_major(stored)
    models = {"as loaded": loaded, "input-major": stored}
    vocab = loaded.config.vocab_size
    rows = {}
    print(f"{'shape [rows, tokens]':>24} {'as loaded ms':>13} {'input-major ms':>15} {'ratio':>7} "
          f"{'max |dlogit|':>13}")  # fmt: skip
    for name, shape in SHAPES.items():
        r = rows[name] = {"shape": list(shape), **measure(models, shape, args.repeats, vocab)}
        print(f"{name:>24} {r['ms']['as loaded']:>13} {r['ms']['input-major']:>15} {r['ratio']:>6}x "
              f"{r['max_abs_logit_diff']:>13.2e}", flush=True)  # fmt: skip
    result = {"model": args.model, "linear_layers_relaid": relaid, "repeats": args.repeats, "shapes": rows,
              **provenance("weight_layout.py", argv, args.threads, load_start)}  # fmt: skip
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
