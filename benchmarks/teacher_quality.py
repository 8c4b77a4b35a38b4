"""Are the teachers worth distilling from? Each teacher against the multi-task LoRA on held-out instances of
its own tasks (validation-style: training tasks only, never the test tasks).

    python benchmarks/teacher_quality.py [--config configs/bench-sni-smollm2.yaml] [--train-instances 13]
                                         [--held-out 2]
                                         [--sni-dir ../shared/data/sni] [--out runs/teacher-quality]
                                         [--results benchmarks/results/teacher_quality.json] [--set KEY=VALUE ...]

With the config's training tasks (its validation tasks left out, as the training stages do), each task's first
``--train-instances`` instances train and the next ``--held-out`` are held out (most training tasks of the
offline SNI copy have 15 instances, the benchmark's ``data.max_train_instances``: the default trains on 13 so
that almost every task holds 2 out; a 2-step teacher of batch 4 sees 8 of them either way). The script trains
what the benchmark trains, with the benchmark's other settings and seeds: one teacher per group
(``teachers.group_by``) on its tasks' training instances, and the harness's ``multitask-lora`` (one LoRA on all
of them, ``evaluate.multitask_steps`` steps, the teachers' other settings). It then scores each group's held-out
instances by teacher-forced cross-entropy (nats per label token, instruction with ``teachers.num_pos``
examples in the prompt, as both train) for the base model, the group's teacher and the multi-task LoRA.
Finished trainings in ``--out`` are reused. Writes the per-group table and the totals (token-weighted CE
of each model; the groups where the teacher beats the multi-task LoRA, and the base model) with provenance.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
from benchtools import missing_sni_dir, provenance, write_results
from sni_smollm2 import relative_paths

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "bench-sni-smollm2.yaml"
MODELS = ("base", "teacher", "multitask-lora")


def split_instances(cfg, held_out: int):
    """``(training tasks with their training instances, the same tasks with their held-out instances)``."""
    from tagi.train.common import training_tasks

    n = cfg.data.max_train_instances
    wide = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_train_instances=n + held_out))
    train, _ = training_tasks(cfg)
    wide_tasks = {t.name: t for t in training_tasks(wide)[0]}
    held = []
    for t in train:
        more = wide_tasks[t.name].instances
        if [i.id for i in more[:n]] != [i.id for i in t.instances]:
            raise RuntimeError(f"{t.name}: a wider load does not start with the benchmark's instances")
        held.append(dataclasses.replace(t, instances=more[n:]))
    return train, held


def train_lora(bb, examples, cfg, train, folder: Path, seed: int, desc: str):
    """A LoRA with the teachers' rank and alpha (reused when ``folder/DONE.json`` matches)."""
    from tagi.adapters import load_adapter
    from tagi.config import to_dict
    from tagi.files import write_json
    from tagi.train.teachers import fit_lora

    key = {"examples": len(examples), "train": to_dict(train), "seed": seed, "model": to_dict(cfg.model)}
    done = folder / "DONE.json"
    if not (done.is_file() and json.loads(done.read_text()).get("key") == key):
        t0 = time.perf_counter()
        tc = cfg.teachers
        fit_lora(bb, examples, tc.rank, tc.alpha, train, folder / "adapter", "concat", seed, desc)
        write_json(done, {"key": key, "wall_time_s": round(time.perf_counter() - t0, 2)})
    return load_adapter(folder / "adapter")[0].to(bb.device)


@torch.no_grad()
def ce(bb, examples, adapter, batch_size: int = 8) -> tuple[float, int]:
    """``(summed cross-entropy, label tokens)`` of ``examples`` with ``adapter`` (None: the base model)."""
    from tagi.losses import ce_sum

    total, tokens = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = bb.collate(examples[i : i + batch_size], "concat").to(bb.device)
        logits, labels, _ = bb.forward(batch, adapter)
        total, tokens = total + float(ce_sum(logits, labels)), tokens + int(labels.numel())
    return total, tokens


def run(cfg, held_out: int, out: Path) -> dict:
    from tagi.backbones import load_backbone
    from tagi.data.select import task_examples
    from tagi.train.stages import run_teachers
    from tagi.train.teachers import load_teachers, teacher_groups

    tc = cfg.teachers
    train_tasks, held_tasks = split_instances(cfg, held_out)
    bb = load_backbone(cfg.model)
    held_by_name = {t.name: t for t in held_tasks}
    examples = [e for t in train_tasks for e in task_examples(t, tc.num_pos)]
    steps = cfg.evaluate.multitask_steps or cfg.finetune.train.max_steps
    multitask = train_lora(bb, examples, cfg, dataclasses.replace(tc.train, max_steps=steps),
                           out / "multitask-lora", cfg.seed, "multitask-lora")  # fmt: skip
    # the teachers stage itself (its training tasks are train_tasks: the same cfg), reused when finished
    _, teachers = load_teachers(run_teachers(cfg, bb, out_dir=out / "teachers"))
    rows = {}
    for group, members in teacher_groups(train_tasks, tc.group_by).items():
        held = [e for t in members for e in task_examples(held_by_name[t.name], tc.num_pos)]
        if not held:
            continue
        own = sum(len(t.instances) for t in members)
        scores = {name: ce(bb, held, adapter) for name, adapter in
                  (("base", None), ("teacher", teachers[group].to(bb.device)), ("multitask-lora", multitask))}  # fmt: skip
        tokens = scores["base"][1]
        rows[group] = {"tasks": len(members), "train_examples": own, "held_out_examples": len(held),
                       "label_tokens": tokens, "ce": {m: round(s / tokens, 4) for m, (s, _) in scores.items()}}  # fmt: skip
        print(f"{group[:40]:>40} {len(held):>5} " + " ".join(f"{rows[group]['ce'][m]:>9.3f}" for m in MODELS),
              flush=True)  # fmt: skip
    return {"groups": rows, "multitask_steps": steps, "teacher_steps": tc.train.max_steps}


def summary(rows: dict) -> dict:
    tokens = sum(r["label_tokens"] for r in rows.values())
    mean = {m: round(sum(r["ce"][m] * r["label_tokens"] for r in rows.values()) / tokens, 4) for m in MODELS}
    return {"groups": len(rows), "label_tokens": tokens, "ce": mean,
            "teacher_beats_multitask": sum(r["ce"]["teacher"] < r["ce"]["multitask-lora"] for r in rows.values()),
            "teacher_beats_base": sum(r["ce"]["teacher"] < r["ce"]["base"] for r in rows.values()),
            "multitask_beats_base": sum(r["ce"]["multitask-lora"] < r["ce"]["base"] for r in rows.values())}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from tagi.config import load_config, to_dict

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--train-instances", type=int, default=13, help="training instances per task")
    parser.add_argument("--held-out", type=int, default=2, help="held-out instances per task")
    parser.add_argument("--sni-dir", default=str(ROOT.parent / "shared" / "data" / "sni"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "teacher-quality"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "teacher_quality.json"))
    parser.add_argument("--set", nargs="*", default=[], help="config overrides KEY=VALUE")
    args = parser.parse_args(argv)
    if missing_sni_dir(args.sni_dir):
        return 2
    if args.held_out < 1 or args.train_instances < 1:
        print("error: --held-out and --train-instances must be >= 1", file=sys.stderr)
        return 2
    overrides = [f"data.sni_dir={args.sni_dir}", f"data.max_train_instances={args.train_instances}"]
    cfg = load_config(args.config, [*overrides, *args.set])
    torch.manual_seed(cfg.seed)
    load_start, t0 = os.getloadavg()[0], time.perf_counter()
    print(f"{'group':>40} {'held':>5} " + " ".join(f"{m[:9]:>9}" for m in MODELS))
    result = run(cfg, args.held_out, Path(args.out))
    if not result["groups"]:
        print("error: no task has instances beyond data.max_train_instances to hold out", file=sys.stderr)
        return 2
    result["summary"] = summary(result["groups"])
    result |= {"train_instances_per_task": args.train_instances, "held_out_per_task": args.held_out, "config": to_dict(cfg), "seed": cfg.seed,
               "wall_time_s": round(time.perf_counter() - t0, 1),
               **provenance("teacher_quality.py", argv, 2, load_start)}  # fmt: skip
    print(json.dumps(result["summary"]))
    write_results(args.results, relative_paths(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
