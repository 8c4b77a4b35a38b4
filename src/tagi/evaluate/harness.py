"""The evaluation harness: every method of :mod:`tagi.evaluate.methods` on the unseen test tasks.

``run_evaluation(cfg)`` writes ``<out_dir>/eval/``: ``results.json``, ``predictions.jsonl``,
``report.md`` and plots (see :mod:`tagi.evaluate.report`). For each method it

1. prepares the adapter source (:mod:`tagi.evaluate.prepare`), training what is missing through
   :class:`tagi.pipeline.Pipeline` (each stage skips when its ``DONE.json`` exists): the main run
   (teachers → pretraining → finetuning), the finetuning of a training variant into
   ``<out_dir>/methods/<name>/``, the multi-task LoRA (``methods/multitask-lora/``) or one oracle LoRA
   per test task (``methods/oracle/<task>/``);
2. for each prompt setting (``Def``, ``Def+2Pos``) and test task, builds the task's instruction under the
   method's instruction variant, generates the task's adapter once (hypernetwork methods; timed as the
   adapter-generation latency) and decodes every instance greedily (up to ``model.max_target_tokens``
   new tokens, or the task's budget from its positive examples when ``evaluate.new_tokens_from_examples``
   is set); :mod:`tagi.evaluate.decoding`. With ``evaluate.batching=task`` (default) a batch holds one
   task and one adapter, so decoder-only backbones compute the instruction prefix's key/value cache once
   per batch (with the adapter active) and T5 encodes the instruction once; ``mixed`` batches mix tasks,
   each example carrying its own adapter (per-example LoRA);
3. scores the predictions with the official SNI scorer (overall, per task, per category) and, when
   ``evaluate.rank_classification`` is set, the classification-like test tasks by rank classification.

Finished methods are cached in ``eval/parts/<method>.json`` under a fingerprint of everything that
determines their predictions (:mod:`tagi.evaluate.parts`: config sections, method spec, checkpoint /
adapter checksums), so a rerun only evaluates what changed. Test tasks are never used for tuning; only
the oracle trains on them (on instances beyond the evaluated ones when the task has them), and it is
reported as an upper bound. With ``evaluate.efficiency`` the FLOPs table is measured as well
(:mod:`tagi.evaluate.efficiency`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tagi.backbones import Backbone, load_backbone
from tagi.config import ExperimentConfig, to_dict
from tagi.data.select import load_tasks
from tagi.data.sni import DataError, Task
from tagi.evaluate import report
from tagi.evaluate.compare import paired_comparisons
from tagi.evaluate.decoding import new_token_budget
from tagi.evaluate.efficiency import measure_efficiency
from tagi.evaluate.methods import MethodSpec, other_task_map, resolve_methods, setting_name
from tagi.evaluate.metrics import score_records
from tagi.evaluate.p3 import p3_table
from tagi.evaluate.parts import evaluate_method
from tagi.evaluate.prepare import adapter_specificity, prepare
from tagi.files import package_versions
from tagi.pipeline import Pipeline


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
    methods, timings, specificity = _evaluate_methods(
        specs, cfg, backbone, tasks, eval_dir / "parts", other, budget
    )
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


def _evaluate_methods(
    specs: list[MethodSpec],
    cfg: ExperimentConfig,
    backbone: Backbone,
    tasks: list[Task],
    parts: Path,
    other: dict[str, str] | None,
    budget: dict[str, int],
) -> tuple[dict, dict, dict]:
    """``(methods, timings, adapter specificity)``: every method prepared, then evaluated (or its cached
    part reused), in the order of ``specs``."""
    pipe = Pipeline(cfg, backbone)
    methods, timings, specificity = {}, {"prepare_s": {}, "evaluate_s": {}, "cached": []}, {}
    per_method = len(cfg.evaluate.prompt_settings) * len(tasks)
    bar = tqdm(total=len(specs) * per_method, desc="evaluate", unit="task")
    for spec in specs:
        start = time.perf_counter()
        prep = prepare(spec, pipe, tasks)
        timings["prepare_s"][spec.name] = time.perf_counter() - start
        if prep.unavailable:
            bar.update(per_method)
            methods[spec.name] = {"spec": spec.describe(), "unavailable": prep.unavailable}
            continue
        settings, seconds, cached = evaluate_method(prep, cfg, backbone, tasks, parts, other, bar, budget)
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
    return methods, timings, specificity


def predictions(methods: dict) -> list[dict]:
    """Flat prediction records of every method and setting (for ``predictions.jsonl``)."""
    rows = []
    for name, m in methods.items():
        for setting, part in m.get("settings", {}).items():
            rows += [{"method": name, "setting": setting, **r} for r in part["records"]]
    return rows


def _scores(methods: dict) -> dict:
    """Each method's entry of ``results.json``: its description and, per setting, the scores of its records."""
    table = {}
    for name, m in methods.items():
        entry = {k: v for k, v in m.items() if k != "settings"}
        if "settings" in m:
            entry["scores"] = {
                setting: score_records(part["records"])
                | {"timing": part["timing"], "rank_classification": part["rank"]}
                for setting, part in m["settings"].items()
            }
        table[name] = entry
    return table


def assemble(
    cfg: ExperimentConfig,
    tasks: list[Task],
    methods: dict,
    efficiency: dict | None,
    timings: dict,
    other: dict[str, str] | None,
    budget: dict[str, int] | None = None,
) -> dict:
    """The content of ``results.json`` (scores computed here from the records)."""
    budget = budget or {}
    table = _scores(methods)
    settings = [setting_name(k) for k in cfg.evaluate.prompt_settings]
    test_tasks = [
        {
            "name": t.name,
            "category": t.category,
            "instances": len(t.instances),
            "max_new_tokens": budget.get(t.name),
        }
        for t in tasks
    ]
    return {
        "format": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": cfg.seed,
        "settings": settings,
        "test_tasks": test_tasks,
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
