"""The evaluation harness: every method of :mod:`tagi.evaluate.methods` on the unseen test tasks.

``run_evaluation(cfg)`` writes ``<out_dir>/eval/``: ``results.json``, ``predictions.jsonl``,
``report.md`` and plots (see :mod:`tagi.evaluate.report`). For each method it

1. prepares the adapter source, training what is missing through :class:`tagi.pipeline.Pipeline` (each
   stage skips when its ``DONE.json`` exists): the main run (teachers → pretraining → finetuning), the finetuning of a
   training variant into ``<out_dir>/methods/<name>/``, the multi-task LoRA
   (``methods/multitask-lora/``) or one oracle LoRA per test task (``methods/oracle/<task>/``);
2. for each prompt setting (``Def``, ``Def+2Pos``) and test task, builds the task's instruction under the
   method's instruction variant, generates the task's adapter once (hypernetwork methods; timed as the
   adapter-generation latency) and decodes every instance greedily (up to ``model.max_target_tokens``
   new tokens, or the task's budget from its positive examples when ``evaluate.new_tokens_from_examples``
   is set). With ``evaluate.batching=task`` (default) a batch holds one task and one adapter, so
   decoder-only backbones compute the instruction prefix's key/value cache once per batch (with the
   adapter active) and T5 encodes the instruction once; ``mixed`` batches mix tasks, each example
   carrying its own adapter (per-example LoRA);
3. scores the predictions with the official SNI scorer (overall, per task, per category) and, when
   ``evaluate.rank_classification`` is set, the classification-like test tasks by rank classification.

Finished methods are cached in ``eval/parts/<method>.json`` under a fingerprint of everything that
determines their predictions (config sections, method spec, checkpoint / adapter checksums), so a rerun
only evaluates what changed. Test tasks are never used for tuning; only the oracle trains on them (on
instances beyond the evaluated ones when the task has them), and it is reported as an upper bound.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tagi.adapters import ADAPTER_WEIGHTS, load_adapter
from tagi.backbones import Backbone, PromptExample, load_backbone
from tagi.backbones.base import IGNORE, PromptMode
from tagi.config import ConfigError, EvalConfig, ExperimentConfig, to_dict
from tagi.data.options import from_sni_task
from tagi.data.prompts import format_source
from tagi.data.select import load_tasks
from tagi.data.sni import DataError, Task
from tagi.evaluate import report
from tagi.evaluate.compare import adapter_spread, paired_comparisons
from tagi.evaluate.methods import (
    MethodSpec,
    instructions_for,
    other_task_map,
    prompt_mode,
    resolve_methods,
    setting_name,
    variant_config,
)
from tagi.evaluate.metrics import score_records
from tagi.evaluate.p3 import p3_table
from tagi.evaluate.ranking import rank_classify
from tagi.files import file_sha256, package_versions, write_json
from tagi.lora import LoraWeights
from tagi.model import TagiModel, read_checkpoint_config
from tagi.pipeline import Pipeline

log = logging.getLogger("tagi.evaluate")
PARTS_FORMAT = 2  # 2: records carry prompt_tokens and max_new_tokens


@dataclass
class Prepared:
    """A method ready to run: its prompt mode and adapter source (or why it is unavailable)."""

    spec: MethodSpec
    mode: PromptMode = "concat"
    model: TagiModel | None = None  # hypernetwork methods
    adapter: LoraWeights | None = None  # one adapter for every task (multi-task LoRA, fixed)
    per_task: dict[str, LoraWeights] = field(default_factory=dict)  # oracle
    info: dict[str, Any] = field(default_factory=dict)
    unavailable: str = ""
    identity: str = ""  # checksum(s) of the weights: part of the cache fingerprint

    def adapter_for(self, task: str, hyper_instruction: str) -> tuple[LoraWeights | None, float]:
        """The task's adapter and the seconds it took to generate (0 unless a hypernetwork ran)."""
        if self.model is None:
            return self.per_task.get(task, self.adapter), 0.0
        start = time.perf_counter()
        with torch.no_grad():
            weights = self.model.adapters([hyper_instruction])  # [1]: encode once + one hypernet call
        return weights, time.perf_counter() - start


# ---------------------------------------------------------------------------------------- preparation


def prepare(spec: MethodSpec, pipe: Pipeline, tasks: list[Task]) -> Prepared:
    """Train or load what ``spec`` needs; a variant whose config cannot be built is marked unavailable."""
    if spec.adapter == "none":
        return Prepared(spec, spec.mode or "concat")
    if spec.adapter == "fixed":
        weights, _, _ = load_adapter(spec.path)
        return Prepared(spec, spec.mode or "concat", adapter=weights, info={"path": spec.path},
                        identity=file_sha256(Path(spec.path) / ADAPTER_WEIGHTS))  # fmt: skip
    if spec.adapter == "multitask":
        weights, sha, info = pipe.multitask()
        return Prepared(spec, spec.mode or "concat", adapter=weights, info=info, identity=sha)
    if spec.adapter == "oracle":
        per_task, sha, info = pipe.oracles(tasks)
        return Prepared(spec, spec.mode or "concat", per_task=per_task, info=info, identity=sha)
    try:
        variant = variant_config(pipe.cfg, spec)
    except ConfigError as e:
        reason = f"its training variant ({', '.join(spec.train_overrides)}) does not apply: {e}"
        log.warning("method %s is unavailable: %s", spec.name, reason)
        return Prepared(spec, unavailable=reason)
    ckpt = Path(spec.path) if spec.path else pipe.checkpoint(spec.variant, variant)
    model = TagiModel.load(ckpt, backbone=pipe.backbone)
    model.eval()
    sha = str(read_checkpoint_config(ckpt).get("sha256", ""))
    return Prepared(
        spec, prompt_mode(spec, variant), model=model, info={"checkpoint": str(ckpt)}, identity=sha
    )


# ---------------------------------------------------------------------------------------- evaluation


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class TaskJob:
    """One test task under one method and prompt setting: the prompt instruction and the task's adapter."""

    task: Task
    instruction: str
    adapter: LoraWeights | None
    latency_s: float  # adapter generation (hypernetwork methods), else 0
    max_new_tokens: int = 0  # the task's decoding budget (0 = model.max_target_tokens)

    def examples(self) -> list[PromptExample]:
        return [PromptExample(self.instruction, format_source(i.input)) for i in self.task.instances]


def new_token_budget(task: Task, backbone: Backbone, factor: float) -> int:
    """Decoding budget of a task from its *positive examples*: ``ceil(factor * longest positive output) + 4``.

    Capped at ``model.max_target_tokens``; ``factor == 0`` or a task without positive examples gets the
    cap. The evaluated instances' references are never read, so no test label leaks into decoding.
    """
    cap = backbone.cfg.max_target_tokens
    outputs = [backbone.output_tokens(e.output) for e in task.positive_examples]
    if factor <= 0 or not outputs:
        return cap
    return min(cap, math.ceil(factor * max(outputs)) + 4)


def task_jobs(
    prep: Prepared, tasks: list[Task], num_pos: int, other: dict[str, str] | None, budget: dict[str, int]
) -> list[TaskJob]:
    """Instructions (under the method's instruction variant) and adapters, generated once per task."""
    by_name = {t.name: t for t in tasks}
    jobs = []
    for task in tasks:
        prompt_ins, hyper_ins = instructions_for(prep.spec, task, num_pos, by_name, other)
        adapter, secs = prep.adapter_for(task.name, hyper_ins)
        jobs.append(TaskJob(task, prompt_ins, adapter, secs, budget.get(task.name, 0)))
    return jobs


def generate_jobs(
    jobs: list[TaskJob], backbone: Backbone, mode: PromptMode, ev: EvalConfig, limit: int, bar: tqdm | None
) -> list[str]:
    """Greedy outputs for every instance of every job, in job order (``ev.batching``: task / mixed)."""
    outputs: list[str] = []
    if ev.batching == "task":
        for job in jobs:
            for chunk in _chunks(job.examples(), ev.batch_size):
                outputs += backbone.generate(
                    chunk, job.adapter, mode, max_new_tokens=job.max_new_tokens or limit
                )
            if bar is not None:
                bar.update(1)
        return outputs
    flat = [(e, k) for k, job in enumerate(jobs) for e in job.examples()]
    adapters = [job.adapter for job in jobs]
    shared = all(a is adapters[0] for a in adapters)  # no adapter, or one adapter for every task
    stacked = adapters[0] if shared else LoraWeights.stack(adapters)  # [num_tasks]
    for chunk in _chunks(flat, ev.batch_size):
        weights = stacked if shared else stacked.index([k for _, k in chunk])  # [len(chunk)] per example
        budget = max(jobs[k].max_new_tokens or limit for _, k in chunk)
        outputs += backbone.generate([e for e, _ in chunk], weights, mode, max_new_tokens=budget)
    if bar is not None:
        bar.update(len(jobs))
    return outputs


def prompt_tokens(backbone: Backbone, examples: list[PromptExample], mode: PromptMode) -> list[int]:
    """Tokens of each example's prompt as the model reads it (after truncation, without the target):
    T5: encoder input + the fused instruction; decoder-only: the prompt (chat head, instruction, input)."""
    batch = backbone.collate(examples, mode, add_eos=False)
    n = batch.attention_mask.sum(1)
    if batch.fuse_mask is not None:
        n = n + batch.fuse_mask.sum(1)
    if backbone.family != "seq2seq":
        n = n - (batch.labels != IGNORE).sum(1)
    return [int(x) for x in n]


def demo_answer(task: Task, answer: str) -> str:
    """A floor's answer for every instance of ``task``: the first positive example's output
    (``first-demo``) or the most frequent one (``majority-demo``; the earliest on a tie)."""
    outputs = [e.output for e in task.positive_examples]
    if not outputs:
        return ""
    return outputs[0] if answer == "first-demo" else Counter(outputs).most_common(1)[0][0]


def evaluate_setting(
    prep: Prepared, cfg: ExperimentConfig, backbone: Backbone, jobs: list[TaskJob], bar: tqdm | None = None
) -> dict:
    """``{"records", "timing", "rank"}`` of one method under one prompt setting."""
    start = time.perf_counter()
    if prep.spec.answer != "model":  # a floor: no model runs
        answers = [demo_answer(job.task, prep.spec.answer) for job in jobs for _ in job.task.instances]
        if bar is not None:
            bar.update(len(jobs))
        outputs = iter(answers)
    else:
        outputs = iter(
            generate_jobs(jobs, backbone, prep.mode, cfg.evaluate, cfg.model.max_target_tokens, bar)
        )
    seconds = time.perf_counter() - start
    model_reads = prep.spec.answer == "model"
    records = []
    for job in jobs:
        lengths = (
            prompt_tokens(backbone, job.examples(), prep.mode) if model_reads else [0] * len(job.examples())
        )
        budget = (job.max_new_tokens or cfg.model.max_target_tokens) if model_reads else 0
        records += [
            {"task": job.task.name, "category": job.task.category, "id": inst.id, "prompt_tokens": n,
             "max_new_tokens": budget, "prediction": next(outputs), "references": list(inst.outputs)}
            for inst, n in zip(job.task.instances, lengths, strict=True)
        ]  # fmt: skip
    timing = {"generation_s": seconds, "s_per_instance": seconds / max(len(records), 1)}
    if prep.model is not None:
        latency = [job.latency_s for job in jobs]
        timing |= {"adapter_latency_s_mean": statistics.fmean(latency),
                   "adapter_latency_s_median": statistics.median(latency)}  # fmt: skip
    rank = (
        rank_jobs(jobs, backbone, prep.mode, cfg.evaluate.batch_size)
        if cfg.evaluate.rank_classification and prep.spec.answer == "model"
        else {}
    )
    return {"records": records, "timing": timing, "rank": rank}


def rank_jobs(jobs: list[TaskJob], backbone: Backbone, mode: PromptMode, batch_size: int) -> dict:
    """Rank-classification accuracy on the classification-like test tasks (``{}`` if there are none)."""
    per_task, correct, total = {}, 0.0, 0
    for job in jobs:
        options = from_sni_task(job.task)
        if options is None:
            continue
        _, acc = rank_classify(backbone, options, job.instruction, job.adapter, mode, batch_size)
        per_task[job.task.name] = {"accuracy": acc, "n": len(options), "options": len(options[0].options)}
        correct, total = correct + acc * len(options) / 100, total + len(options)
    if not per_task:
        return {}
    return {"accuracy": 100.0 * correct / total, "n": total, "per_task": per_task}


def _fingerprint(prep: Prepared, cfg: ExperimentConfig, tasks: list[Task]) -> str:
    ev = to_dict(cfg.evaluate)
    key = {
        "format": PARTS_FORMAT,
        "spec": prep.spec.describe(),
        "mode": prep.mode,
        "identity": prep.identity,
        "model": to_dict(cfg.model),
        "data": to_dict(cfg.data),
        "seed": cfg.seed,
        "evaluate": {
            k: ev[k] for k in ("batching", "batch_size", "rank_classification", "new_tokens_from_examples")
        },
        "tasks": [[t.name, len(t.instances)] for t in tasks],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def evaluate_method(
    prep: Prepared, cfg: ExperimentConfig, backbone: Backbone, tasks: list[Task], parts: Path,
    other: dict[str, str] | None, bar: tqdm | None = None, budget: dict[str, int] | None = None,
) -> tuple[dict, float, bool]:  # fmt: skip
    """``({setting: {"records", "timing", "rank"}}, seconds, cached)`` for one method.

    A part cached by an earlier run with the same fingerprint is reused (``cached=True``; ``seconds`` is
    then the wall time recorded when it was computed). ``budget`` maps a task to its decoding budget
    (:func:`new_token_budget`; missing = ``model.max_target_tokens``).
    """
    budget = budget or {}
    path = parts / f"{prep.spec.name.replace('/', '_').replace(':', '_')}.json"
    fp = _fingerprint(prep, cfg, tasks)
    settings = [setting_name(k) for k in cfg.evaluate.prompt_settings]
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("fingerprint") == fp and all(s in cached["settings"] for s in settings):
            if bar is not None:
                bar.update(len(tasks) * len(settings))
            return {s: cached["settings"][s] for s in settings}, float(cached.get("seconds", 0.0)), True
    start, out = time.perf_counter(), {}
    for k in cfg.evaluate.prompt_settings:
        if bar is not None:
            bar.set_postfix_str(f"{prep.spec.name} {setting_name(k)}")
        jobs = task_jobs(prep, tasks, k, other, budget)
        out[setting_name(k)] = evaluate_setting(prep, cfg, backbone, jobs, bar)
    seconds = time.perf_counter() - start
    write_json(path, {"fingerprint": fp, "seconds": seconds, "settings": out})
    return out, seconds, False


def run_evaluation(cfg: ExperimentConfig, backbone: Backbone | None = None) -> Path:
    """Evaluate every method of ``cfg.evaluate.methods``; writes and returns ``<out_dir>/<report_dir>/``."""
    wall = {"start": time.perf_counter(), "load_start": os.getloadavg()[0]}
    specs = resolve_methods(cfg.evaluate.methods)
    tasks = load_tasks(cfg.data, "test")
    if not tasks:
        raise DataError("no test tasks to evaluate (check data.source / data.sni_dir / data.max_test_tasks)")
    if backbone is None:
        backbone = load_backbone(cfg.model)
    wall["load_s"] = time.perf_counter() - wall["start"]
    need_other = any(s.instruction == "other" for s in specs)
    other = other_task_map([t.name for t in tasks], cfg.seed) if need_other else None
    eval_dir = Path(cfg.out_dir) / cfg.evaluate.report_dir
    factor = cfg.evaluate.new_tokens_from_examples
    budget = {t.name: new_token_budget(t, backbone, factor) for t in tasks}
    pipe = Pipeline(cfg, backbone)
    methods, timings, specificity = {}, {"prepare_s": {}, "evaluate_s": {}, "cached": []}, {}
    bar = tqdm(
        total=len(specs) * len(cfg.evaluate.prompt_settings) * len(tasks), desc="evaluate", unit="task"
    )
    for spec in specs:
        start = time.perf_counter()
        prep = prepare(spec, pipe, tasks)
        timings["prepare_s"][spec.name] = time.perf_counter() - start
        if prep.unavailable:
            bar.update(len(tasks) * len(cfg.evaluate.prompt_settings))
            methods[spec.name] = {"spec": spec.describe(), "unavailable": prep.unavailable}
            continue
        settings, seconds, cached = evaluate_method(
            prep, cfg, backbone, tasks, eval_dir / "parts", other, bar, budget
        )
        timings["evaluate_s"][spec.name] = seconds
        if cached:
            timings["cached"].append(spec.name)
        methods[spec.name] = {
            "spec": spec.describe(),
            "mode": prep.mode,
            "info": prep.info,
            "settings": settings,
        }
        if prep.model is not None and spec.instruction == "true":
            specificity[spec.name] = adapter_specificity(prep, tasks, min(cfg.evaluate.prompt_settings))
    bar.close()
    efficiency = None
    if cfg.evaluate.efficiency:
        start = time.perf_counter()
        efficiency = measure_efficiency(cfg, backbone, tasks)
        timings["efficiency_s"] = time.perf_counter() - start
    timings["total_s"] = time.perf_counter() - wall["start"]
    timings["load_backbone_s"] = wall["load_s"]
    timings["machine"] = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": wall["load_start"],
        "load_average_end": os.getloadavg()[0],
    }
    results = assemble(cfg, tasks, methods, efficiency, timings, other, budget)
    results["adapter_specificity"] = specificity
    report.write_all(eval_dir, results, predictions(methods))
    return eval_dir


@torch.no_grad()
def adapter_specificity(prep: Prepared, tasks: list[Task], num_pos: int, batch: int = 8) -> dict:
    """How task-specific a hypernetwork method's adapters are over the test instructions.

    One adapter per test task from its instruction (``num_pos`` demonstrations, what the method's
    hypernetwork reads), then :func:`~tagi.evaluate.compare.adapter_spread` of their Gram matrix:
    ``task_specific_share = 1 - ||mean dW||^2 / mean ||dW||^2`` (0 = one adapter for every task) and the
    mean pairwise cosine of the updates dW.
    """
    texts = [instructions_for(prep.spec, t, num_pos, {}, None)[1] for t in tasks]
    parts = [prep.model.adapters(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    spread = adapter_spread(LoraWeights.stack(parts).gram())
    return spread | {"setting": setting_name(num_pos)}


def measure_efficiency(cfg: ExperimentConfig, backbone: Backbone, tasks: list[Task]) -> dict:
    """The FLOPs table on the test tasks (with ``evaluate.efficiency_instances`` instances each)."""
    from tagi.evaluate.efficiency import flops_table

    n = cfg.evaluate.efficiency_instances
    wide = dataclasses.replace(
        cfg.data, max_test_instances=n, builtin_instances=max(n, cfg.data.builtin_instances)
    )
    names = {t.name for t in tasks}
    eff_tasks = [t for t in load_tasks(wide, "test") if t.name in names]
    hypernet = TagiModel(backbone, cfg.hyper).hypernet  # FLOPs depend on the shapes only
    return flops_table(backbone, eff_tasks, cfg.evaluate.prompt_settings, hypernet, n)


def predictions(methods: dict) -> list[dict]:
    """Flat prediction records of every method and setting (for ``predictions.jsonl``)."""
    rows = []
    for name, m in methods.items():
        for setting, part in m.get("settings", {}).items():
            rows += [{"method": name, "setting": setting, **r} for r in part["records"]]
    return rows


def assemble(
    cfg: ExperimentConfig, tasks: list[Task], methods: dict, efficiency: dict | None, timings: dict,
    other: dict[str, str] | None, budget: dict[str, int] | None = None,
) -> dict:  # fmt: skip
    """The content of ``results.json`` (scores computed here from the records)."""
    budget = budget or {}
    table = {}
    for name, m in methods.items():
        entry = {k: v for k, v in m.items() if k != "settings"}
        entry["scores"] = {}
        for setting, part in m.get("settings", {}).items():
            entry["scores"][setting] = score_records(part["records"]) | {
                "timing": part["timing"], "rank_classification": part["rank"]}  # fmt: skip
        if "settings" not in m:
            del entry["scores"]
        table[name] = entry
    settings = [setting_name(k) for k in cfg.evaluate.prompt_settings]
    return {
        "format": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": cfg.seed,
        "settings": settings,
        "test_tasks": [
            {
                "name": t.name,
                "category": t.category,
                "instances": len(t.instances),
                "max_new_tokens": budget.get(t.name),
            }
            for t in tasks
        ],  # fmt: skip
        "other_instruction_map": other,
        "methods": table,
        "paired": paired_comparisons(table, settings, cfg.seed),
        "p3_heldout": p3_table(table, settings),
        "efficiency": efficiency,
        "stages": report.stage_times(Path(cfg.out_dir)),
        "evaluation_timing": timings,
        "versions": package_versions(),
        "config": to_dict(cfg),
    }
