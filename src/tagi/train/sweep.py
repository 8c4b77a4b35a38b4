"""Choose finetuning settings on the validation split, never on the test tasks (``tagi sweep``).

A sweep finetunes one hypernetwork per point of a grid over ``finetune.*`` keys, each from the run's own
pretraining and teachers (the stages are run first if missing, and skipped when done), and ranks the points
by a validation metric (``metric``), never reading the test tasks:

- ``ce`` (default): ``score(point) = mean over s in finetune.student_num_pos of CE_val(point, s)``, the
  token-mean teacher-forced student cross-entropy on the ``data.validation_tasks`` training tasks held out
  from finetuning, with ``s`` positive examples in the prompt (``val_ce_pos<s>`` in the finetuning's log).
  Lower is better.
- ``rougeL``: the mean over the same prompt settings of the *decoded* Rouge-L on the validation tasks
  (greedy, the evaluation's prompt and decoding budget; ``val_rougeL_pos<s>``), i.e. what the report
  measures. Higher is better. The decoding is given by the caller (``decode``: ``tagi sweep --metric
  rougeL`` passes :func:`tagi.evaluate.validation.decoded_validation`), so training code does not depend
  on the evaluation package.

A grid axis is ``key=v1,v2,...`` (values are YAML scalars or lists; commas inside ``[...]`` belong to the
value); the points are the Cartesian product of the axes. Layout under ``<out_dir>``:

- ``sweep/<label>-<hash>/``: one finetune stage folder per point (resumable; a finished one is reused). The
  hash covers every setting the finetuning depends on, so a point trained under other data or teacher
  settings is never mistaken for this one. A point whose settings equal the config's own finetuning is
  the run's ``finetune/`` folder.
- ``sweep/sweep.json``: every point finetuned so far (earlier sweeps' points are kept), the grid of the
  latest sweep, its best point, the config, seed and versions; ``sweep/sweep.md``: the latest sweep's table.

The chosen point can then be evaluated on the test tasks with ``evaluate.methods=[ckpt:<folder>/final]``.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import logging
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tagi.backbones import Backbone
from tagi.config import ConfigError, ExperimentConfig, apply_overrides, from_dict, to_dict
from tagi.files import package_versions, write_json, write_text
from tagi.train import dist, stages
from tagi.train.common import read_done, stage_settings, with_defaults

log = logging.getLogger("tagi.train")
RESULTS = "sweep.json"


def split_values(raw: str) -> list[str]:
    """``"1e-3,[0,2],x"`` -> ``["1e-3", "[0,2]", "x"]``: commas split values except inside brackets."""
    values, depth, current = [], 0, ""
    for ch in raw:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += ch
    values.append(current.strip())
    return values


def parse_axes(grid: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Validate ``key=v1,v2`` axes: finetune keys only, each once, no empty value."""
    if not grid:
        raise ConfigError("a sweep needs at least one --grid axis, e.g. finetune.train.lr=3e-4,1e-3")
    axes: list[tuple[str, list[str]]] = []
    for item in grid:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not raw.strip():
            raise ConfigError(f"grid axis {item!r} is not of the form key=v1,v2,...")
        if not key.startswith("finetune."):
            raise ConfigError(
                f"grid axis {key!r}: a sweep varies finetune.* settings only (it reuses the run's teachers"
                " and pretraining); use overrides to change anything else"
            )
        if key in (k for k, _ in axes):
            raise ConfigError(f"grid axis {key!r} is given twice")
        values = split_values(raw)
        if any(not v for v in values):
            raise ConfigError(f"grid axis {item!r} has an empty value")
        axes.append((key, list(dict.fromkeys(values))))
    return axes


def grid_points(axes: list[tuple[str, list[str]]]) -> list[tuple[str, ...]]:
    """Every combination of the axes' values, as override lists (first axis varies slowest)."""
    keys = [k for k, _ in axes]
    return [
        tuple(f"{k}={v}" for k, v in zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))
    ]


def point_config(cfg: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """The config with a point's overrides applied (validated like any config)."""
    return from_dict(ExperimentConfig, apply_overrides(to_dict(cfg), list(overrides)))


def point_folder(cfg: ExperimentConfig, point: ExperimentConfig, overrides: Sequence[str]) -> Path:
    """``<out_dir>/finetune`` when the point's finetuning equals the config's, else ``sweep/<label>-<hash>``.

    A finished ``sweep/<label>-*`` folder trained with the point's settings is reused even if its hash
    differs (it was written before a config field was added: the field's default is what it used).
    """
    settings = stage_settings(to_dict(point), "finetune")
    if settings == stage_settings(to_dict(cfg), "finetune"):
        return Path(cfg.out_dir) / "finetune"
    label = ",".join(o.removeprefix("finetune.") for o in overrides)
    label = re.sub(r"[^A-Za-z0-9._=,+-]", "", label)[:80] or "point"
    root = Path(cfg.out_dir) / "sweep"
    for done in sorted(root.glob(f"{glob.escape(label)}-*/DONE.json")):
        saved = with_defaults(read_done(done.parent).get("config"))
        if saved is not None and stage_settings(saved, "finetune") == settings:
            return done.parent
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return root / f"{label}-{digest}"


METRICS = {"ce": "lowest mean validation CE", "rougeL": "highest mean decoded validation Rouge-L"}
Decode = Callable[[ExperimentConfig, Path, Backbone], dict[str, float]]


def score(validation: dict[str, float]) -> float:
    """Mean of the validation values over the prompt settings."""
    return sum(validation.values()) / len(validation)


def _finetune_point(cfg: ExperimentConfig, point: ExperimentConfig, folder: Path, bb: Backbone) -> Path:
    """Finetune one point (or reuse it) from the run's pretraining and teachers."""
    out = Path(cfg.out_dir)
    if folder == out / "finetune":
        return stages.run_finetune(cfg, bb)
    main_cache, own_cache = out / "finetune" / "teacher_cache", folder / "teacher_cache"
    fresh = not own_cache.exists() and not (folder / "DONE.json").exists()
    if main_cache.is_dir() and fresh and dist.current().is_main:
        shutil.copytree(main_cache, own_cache)  # reused as is when the point draws the same examples
    pretrained = point.finetune.use_pretrained and cfg.pretrain.enabled
    return stages.run_finetune(
        point, bb, out_dir=folder, teachers_dir=out / "teachers",
        init_ckpt=out / "pretrain" / "final" if pretrained else None,
    )  # fmt: skip


def _row(overrides: Sequence[str], folder: Path, decoded: dict[str, float] | None = None) -> dict[str, Any]:
    done = read_done(folder)
    val = done.get("validation") or {}
    if not val:
        raise ConfigError(f"{folder} has no validation CE (was it finetuned with data.validation_tasks=0?)")
    return {
        "overrides": list(overrides),
        "folder": str(folder),
        "validation": val | (decoded or {}),
        "score": score(decoded) if decoded else score(val),
        "steps": done.get("steps"),
        "wall_time_s": done.get("wall_time_s"),
        "train_loss_last": (done.get("losses") or {}).get("last", {}),
    }


def run_sweep(
    cfg: ExperimentConfig,
    grid: Sequence[str],
    backbone: Backbone | None = None,
    metric: str = "ce",
    decode: Decode | None = None,
) -> dict[str, Any]:
    """Finetune every grid point (finished points are reused) and rank them by ``metric``; returns the sweep
    record. ``metric="rougeL"`` needs ``decode`` (see the module docstring)."""
    if cfg.data.validation_tasks <= 0:
        raise ConfigError("a sweep ranks points on the validation split: set data.validation_tasks > 0")
    if metric not in METRICS:
        raise ConfigError(f"unknown sweep metric '{metric}' (known: {', '.join(METRICS)})")
    if metric == "rougeL" and decode is None:
        raise ConfigError("the rougeL sweep metric needs a decoder of the validation tasks")
    axes = parse_axes(grid)
    points = [(o, point_config(cfg, o)) for o in grid_points(axes)]  # validate every point before training
    bb = stages.get_backbone(cfg, backbone)
    for _, run in stages.prerequisites(cfg, [p for _, p in points]):  # the stage plan's teachers, pretraining
        run(cfg, bb)
    rows = []
    for i, (overrides, point) in enumerate(points, 1):
        folder = point_folder(cfg, point, overrides)
        log.info("sweep: point %d/%d %s -> %s", i, len(points), " ".join(overrides), folder)
        folder = _finetune_point(cfg, point, folder, bb)
        decoded = decode(point, folder, bb) if metric == "rougeL" else None
        rows.append(_row(overrides, folder, decoded))
    best = (min if metric == "ce" else max)(rows, key=lambda r: r["score"])
    path = Path(cfg.out_dir) / "sweep" / RESULTS
    old = json.loads(path.read_text()) if path.is_file() else {}
    record = {
        "select": f"{METRICS[metric]} over finetune.student_num_pos (held-out training tasks)",
        "metric": metric,
        "grid": list(grid),
        "best": best,
        "points": {**old.get("points", {}), **{Path(r["folder"]).name: r for r in rows}},
        "latest": rows,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "versions": package_versions(),
    }
    if dist.current().is_main:  # under torchrun every rank trains; one writes
        write_json(path, record)
        table = format_table(rows, best)
        write_text(path.parent / "sweep.md", f"# Validation sweep\n\n`{' '.join(grid)}`\n\n{table}\n")
    return record


def format_table(rows: Sequence[dict[str, Any]], best: dict[str, Any]) -> str:
    """The points as a Markdown table, best marked."""
    keys = sorted({k for r in rows for k in r["validation"]})
    head = ["point", *keys, "mean", "train loss (last)", "steps", "time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mark = " **(best)**" if r["folder"] == best["folder"] else ""
        vals = [f"{r['validation'][k]:.4f}" if k in r["validation"] else "–" for k in keys]
        loss = r["train_loss_last"].get("loss")
        wall = r["wall_time_s"]
        cells = [" ".join(r["overrides"]) + mark, *vals, f"{r['score']:.4f}",
                 f"{loss:.3f}" if loss is not None else "–", str(r["steps"]),
                 f"{wall:.0f}" if wall is not None else "–"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
