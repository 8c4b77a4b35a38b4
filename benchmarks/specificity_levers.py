"""Which lever makes the generated adapter carry the task? Measured on the validation split only.

Command (from the repository root; run it with the machine to itself)::

    python benchmarks/specificity_levers.py [--sni-dir ../shared/data/sni] [--steps 128] [--levers base ...]
                                            [--val-instances 5] [--results benchmarks/results/...json]

Every lever is a set of config overrides on top of ``configs/bench-sni-smollm2.yaml`` with CE only (the
setting the validation split chose over distillation, see the README's ablations) and task-grouped batches.
For each lever the hypernetwork is pretrained (shared by levers with the same ``hyper`` settings) and
finetuned for ``--steps`` steps (a run folder per lever and step count, so runs of other lengths are kept);
``no-hypernet`` is the control, one learned adapter (the hypernetwork reads one empty text for every task).
A lever that reads teachers (``distill``, ``align``) first trains the category teachers it reads, on the
same training tasks (``<run>/teachers``, shared by levers with the same teacher settings).
Then, on the first ``--val-instances`` instances of the held-out *training* tasks (never test tasks; 8
single tasks by default, ``--set data.validation_by=category data.validation_tasks=16`` holds out whole
categories instead), it reports:

- ``rougeL``: greedy Rouge-L at Def with the task's own adapter and its instruction in the prompt;
- ``swap_delta``: that score minus the score when the hypernetwork reads a *different* validation task's
  instruction (the prompt keeps the true one): what the instruction-dependent part of the adapter is worth;
- ``alone``: Rouge-L with the task's adapter and *no* instruction in the prompt (the adapter alone);
- ``alone_swap_delta``: ``alone`` minus the same with another validation task's adapter: what the
  instruction-dependent part is worth when nothing else in the prompt says what the task is;
- ``share`` / ``cosine``: task-specific share and mean cosine of the generated dW over the validation
  instructions and (instructions only, no labels) over the test instructions;
- ``drawn``: how much of the training set the finetuning drew (examples, distinct tasks, distinct
  categories, each against the training set's count).

``--set seed=N`` changes the hypernetwork's initialisation, pretraining and the order of the training data;
the validation split and ``data.train_categories`` are drawn with ``data.seed`` and stay the same.

Writes ``benchmarks/results/specificity_levers.json`` (config, seed, versions, load averages) and prints a
table. Stages are resumable: a rerun reuses finished pretraining and finetuning, and a lever's measurement
while its finetuning and ``--val-instances`` are unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from benchtools import missing_sni_dir, provenance, write_results
from sni_smollm2 import relative_paths

from tagi.files import write_json

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "bench-sni-smollm2.yaml"
COMMON = [
    "finetune.loss.kl=0",
    "finetune.loss.align=0",
    "finetune.teacher_cache=false",
    "finetune.task_group=4",
]
LEVERS = {
    "base": [],
    "standardize": ["hyper.input_norm=standardize"],
    "prompt-dropout": ["finetune.prompt_dropout=0.5"],
    "standardize+dropout": ["hyper.input_norm=standardize", "finetune.prompt_dropout=0.5"],
    "sentence-encoder": ["hyper.encoder=sentence", "finetune.use_pretrained=false"],
    # each example's own adapter must beat another training task's by 0.2 nats per label token
    "mismatch": ["finetune.loss.mismatch=1.0", "finetune.loss.mismatch_margin=0.2"],
    # Text-to-LoRA's regulariser on the generated updates' squared norm (541 at the first finetuning step
    # from the pretrained hypernetwork, 1.6 at the last with this weight: see the README)
    "l2": ["finetune.loss.l2=0.02"],
    # the headline's distillation (KL 1.0, alignment 0.1) from category teachers of 8 steps instead of 2:
    # teachers that beat the multi-task LoRA on held-out instances of their own tasks in most groups
    # (benchmarks/teacher_quality.py --set teachers.train.max_steps=8); trained on this split's training tasks
    "distill": ["finetune.loss.kl=1.0", "finetune.loss.align=0.1", "teachers.train.max_steps=8"],
    # alignment alone (no KL) to the same teachers, weighted to act: the distill run logged an alignment of
    # 4.1e-5 at its first step and 4.2e-5 at its last, so 25000 makes the term about 1 nat against a CE of 2-6
    "align": ["finetune.loss.align=25000", "teachers.train.max_steps=8"],
    # learned-query attention over the instruction tokens instead of the padding-masked mean
    "attention": ["hyper.pooling=attention"],
    # the hypernetwork reads SmolLM2's layer 15 of 30 instead of its last: a last layer is shaped by
    # next-token prediction, middle layers are commonly the more semantic
    "middle-layer": ["model.instruction_layer=15"],
    # instruction augmentation, on what the hypernetwork reads only: the Def+2Pos draws show 2 of all the task's
    # positive examples in a random order, and each definition sentence is left out with probability 0.25
    # (the prompt keeps the task's instruction): one task, many instruction texts, the same adapter's job
    "augment": ["finetune.hyper_demos=sampled", "finetune.hyper_definition_dropout=0.25"],
    # the control: the hypernetwork reads one empty text for every task, i.e. one learned adapter
    "no-hypernet": ["finetune.hyper_input=empty", "finetune.loss.mismatch=0"],
    # prompt dropout's control: one learned adapter; dropped examples then see no instruction at all
    "no-hypernet+dropout": [
        "finetune.hyper_input=empty",
        "finetune.loss.mismatch=0",
        "finetune.prompt_dropout=0.5",
    ],
}
VAL_INSTANCES = 5
MEASURE_FORMAT = 2  # bump when measure() changes what it reports


def lever_config(name: str, sni_dir: str, out: Path, steps: int, config: Path = CONFIG, extra=()):
    from tagi.config import load_config

    overrides = LEVERS[name]
    # levers with the same hypernetwork input and settings share the pretraining
    reads = [o.split("=")[1] for o in overrides if o.startswith("hyper.")]
    reads += [f"layer{o.split('=')[1]}" for o in overrides if o.startswith("model.instruction_layer=")]
    run = out / f"hyper-{'-'.join(reads) or 'default'}"
    return load_config(
        config,
        [f"data.sni_dir={sni_dir}", f"out_dir={run}", *COMMON, f"finetune.train.max_steps={steps}", *overrides,
         *extra],
    ), run / (f"finetune-{name}" if steps == 128 else f"finetune-{name}-{steps}steps")  # fmt: skip


def measure(cfg, folder: Path, backbone, instances: int = VAL_INSTANCES) -> dict:
    from tagi.data import format_instruction
    from tagi.data.select import load_tasks
    from tagi.evaluate.compare import generated_spread
    from tagi.evaluate.validation import decoded_rouge
    from tagi.model import TagiModel
    from tagi.train.common import read_done, training_tasks

    model = TagiModel.load(folder / "final", backbone).eval()
    _, val = training_tasks(cfg)
    empty = cfg.finetune.hyper_input == "empty"  # the hypernetwork was trained on one empty text
    own = {t.name: "" if empty else format_instruction(t, 0) for t in val}
    names = sorted(own)
    other = {n: own[names[(i + 1) % len(names)]] for i, n in enumerate(names)}
    true, swapped, alone, alone_swapped = (
        decoded_rouge(model, val, hyper, mode, 0, instances, 1.5)
        for hyper, mode in ((own, "fuse"), (other, "fuse"), (own, "none"), (other, "none"))
    )
    test_texts = ["" if empty else format_instruction(t, 0) for t in load_tasks(cfg.data, "test")]
    done = read_done(folder)
    return {
        "rougeL": true, "swap_delta": true - swapped, "alone": alone, "alone_swap_delta": alone - alone_swapped,
        "val_spread": generated_spread(model, [own[n] for n in names]),
        "test_spread": generated_spread(model, test_texts),
        "val_ce": done.get("validation"), "finetune_s": done.get("wall_time_s"),
    }  # fmt: skip


def coverage(cfg, backbone) -> dict:
    """What the finetuning draws of its training set: examples, distinct tasks and distinct categories
    (:func:`tagi.train.recipes.finetune_stream`, the draw the finetuning makes, on one process)."""
    from tagi.train.common import training_tasks
    from tagi.train.recipes import finetune_stream

    train, _ = training_tasks(cfg)
    data, _, drawn = finetune_stream(cfg, backbone, train, cfg.teachers.num_pos, world_size=1)
    category = {t.name: t.category for t in train}
    tasks = {data.task_name(s.index) for s in drawn}
    return {
        "examples": len(drawn), "training_examples": len(data),
        "tasks": len(tasks), "training_tasks": len(train),
        "categories": len({category[t] for t in tasks}), "training_categories": len(set(category.values())),
    }  # fmt: skip


def cached_measure(cfg, folder: Path, backbone, instances: int, t0: float) -> dict:
    """:func:`measure`, kept next to the lever's checkpoint and reused while its finetuning (``DONE.json``)
    and the number of instances are unchanged; ``stage_s`` is the time of the run that measured it."""
    done = hashlib.sha256((folder / "DONE.json").read_bytes()).hexdigest()
    key = {"format": MEASURE_FORMAT, "instances": instances, "done": done}
    path = folder / f"levers-measure-{instances}.json"
    if path.is_file() and (saved := json.loads(path.read_text()))["key"] == key:
        return saved["row"]
    row = measure(cfg, folder, backbone, instances) | {"stage_s": time.perf_counter() - t0}
    write_json(path, {"key": key, "row": row})
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sni-dir", default=str(ROOT.parent / "shared" / "data" / "sni"))
    parser.add_argument("--steps", type=int, default=128, help="finetuning steps per lever")
    parser.add_argument("--levers", nargs="*", default=list(LEVERS), choices=list(LEVERS))
    parser.add_argument("--out", default="runs/levers")
    parser.add_argument(
        "--config", default=str(CONFIG), help="base config (configs/tiny.yaml for a smoke run)"
    )
    parser.add_argument(
        "--val-instances", type=int, default=VAL_INSTANCES, help="decoded instances per validation task"
    )
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every lever")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "specificity_levers.json"))
    args = parser.parse_args(argv)
    if missing_sni_dir(args.sni_dir):
        return 2
    from tagi.backbones import load_backbone
    from tagi.config import to_dict
    from tagi.train.stages import run_finetune, run_pretrain, run_teachers

    load_start = os.getloadavg()[0]
    rows, configs, backbone = {}, {}, None
    for name in args.levers:
        cfg, folder = lever_config(
            name, args.sni_dir, Path(args.out), args.steps, Path(args.config), args.set
        )
        if backbone is None or backbone.cfg != cfg.model:  # a lever may read another layer of the model
            backbone = load_backbone(cfg.model)
        t0 = time.perf_counter()
        if cfg.finetune.use_pretrained:
            run_pretrain(cfg, backbone)
        if cfg.finetune.loss.uses_teachers:
            run_teachers(cfg, backbone)  # <run>/teachers, shared by levers with the same teachers settings
        run_finetune(cfg, backbone, out_dir=folder)
        rows[name] = cached_measure(cfg, folder, backbone, args.val_instances, t0)
        rows[name]["drawn"] = coverage(cfg, backbone)
        configs[name] = to_dict(cfg)
        r = rows[name]
        print(f"{name:22s} rougeL {r['rougeL']:5.1f}  swap delta {r['swap_delta']:+5.1f}  alone {r['alone']:5.1f}  "
              f"share val {r['val_spread']['task_specific_share']:.3f} test {r['test_spread']['task_specific_share']:.3f}",
              flush=True)  # fmt: skip
    from tagi.train.common import training_tasks

    val_names = [t.name for t in training_tasks(cfg)[1]]  # the split depends on data.* only: same for all
    out = {"levers": rows, "overrides": {n: [*COMMON, *LEVERS[n], *args.set] for n in args.levers},
           "steps": args.steps, "validation_instances": args.val_instances, "validation_tasks": val_names,
           "configs": configs, "seed": cfg.seed, "data_seed": cfg.data.seed,
           **provenance("specificity_levers.py", argv if argv is not None else sys.argv[1:], torch.get_num_threads(), load_start)}  # fmt: skip
    write_results(args.results, relative_paths(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
