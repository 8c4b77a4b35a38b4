"""The per-method cache of an evaluation: ``<report_dir>/parts/<method>.json``.

A finished method's records are stored under a fingerprint of everything that determines its predictions
(the method spec and prompt mode, checksums of its weights, the ``model`` and ``data`` sections, the seed,
the evaluation settings that change outputs, the test tasks and their sizes), so a rerun only evaluates
what changed.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from tagi.backbones import Backbone
from tagi.config import ExperimentConfig, to_dict
from tagi.data.sni import Task
from tagi.evaluate.decoding import evaluate_setting, task_jobs
from tagi.evaluate.methods import setting_name
from tagi.evaluate.prepare import Prepared
from tagi.files import write_json

PARTS_FORMAT = 2  # 2: records carry prompt_tokens and max_new_tokens
OUTPUT_SETTINGS = ("batching", "batch_size", "rank_classification", "new_tokens_from_examples")


ADDED_DATA_DEFAULTS = {"validation_by": "task"}  # data fields added after PARTS_FORMAT 2


def _data_key(cfg: ExperimentConfig) -> dict:
    """``cfg.data`` without the fields added since format 2 while they hold their defaults (the settings
    earlier parts were made with), so adding a field does not invalidate every cached part."""
    data = to_dict(cfg.data)
    return {k: v for k, v in data.items() if ADDED_DATA_DEFAULTS.get(k, object()) != v}


def fingerprint(prep: Prepared, cfg: ExperimentConfig, tasks: list[Task]) -> str:
    """sha256 of what determines a method's predictions (its part is reused while this is unchanged)."""
    ev = to_dict(cfg.evaluate)
    key = {
        "format": PARTS_FORMAT,
        "spec": prep.spec.describe(),
        "mode": prep.mode,
        "identity": prep.identity,
        "model": to_dict(cfg.model),
        "data": _data_key(cfg),
        "seed": cfg.seed,
        "evaluate": {k: ev[k] for k in OUTPUT_SETTINGS},
        "tasks": [[t.name, len(t.instances)] for t in tasks],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def evaluate_method(
    prep: Prepared,
    cfg: ExperimentConfig,
    backbone: Backbone,
    tasks: list[Task],
    parts: Path,
    other: dict[str, str] | None,
    bar: tqdm | None = None,
    budget: dict[str, int] | None = None,
) -> tuple[dict, float, bool]:
    """``({setting: {"records", "timing", "rank"}}, seconds, cached)`` for one method.

    A part cached by an earlier run with the same fingerprint is reused setting by setting: only the prompt
    settings it lacks are decoded, and added to it. ``cached`` is True when nothing was decoded; ``seconds``
    is the decoding time of the requested settings, as recorded when each was computed (a part written
    before per-setting times were kept gives its total for the settings it held). ``budget`` maps a task to
    its decoding budget (:func:`~tagi.evaluate.decoding.new_token_budget`; missing =
    ``model.max_target_tokens``).
    """
    budget = budget or {}
    path = parts / f"{prep.spec.name.replace('/', '_').replace(':', '_')}.json"
    fp = fingerprint(prep, cfg, tasks)
    kept, kept_s, total = {}, {}, 0.0
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("fingerprint") == fp:
            kept, total = cached["settings"], float(cached.get("seconds", 0.0))
            kept_s = cached.get("setting_seconds", {})
    names = [setting_name(k) for k in cfg.evaluate.prompt_settings]
    reused = [s for s in names if s in kept]
    seconds = sum(kept_s[s] for s in reused) if all(s in kept_s for s in reused) else total
    if bar is not None and reused:
        bar.update(len(tasks) * len(reused))
    todo = [k for k in cfg.evaluate.prompt_settings if setting_name(k) not in kept]
    for k in todo:
        if bar is not None:
            bar.set_postfix_str(f"{prep.spec.name} {setting_name(k)}")
        start = time.perf_counter()
        jobs = task_jobs(prep, tasks, k, other, budget)
        kept[setting_name(k)] = evaluate_setting(prep, cfg, backbone, jobs, bar)
        kept_s[setting_name(k)] = time.perf_counter() - start
        seconds, total = seconds + kept_s[setting_name(k)], total + kept_s[setting_name(k)]
    if todo:
        write_json(path, {"fingerprint": fp, "seconds": total, "setting_seconds": kept_s, "settings": kept})
    return {s: kept[s] for s in names}, seconds, not todo
