"""Evaluation outputs: ``results.json``, ``predictions.jsonl``, ``report.md`` and PNG plots.

Every file is written atomically (:mod:`tagi.files`: a temporary file in the same folder, then
``os.replace``), so a reader never sees a half-written report. The Markdown comes from
:mod:`tagi.evaluate.tables`, the plots from :mod:`tagi.evaluate.plots`.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from tagi.evaluate.plots import plot_categories, plot_methods, plot_paired
from tagi.evaluate.tables import render_markdown
from tagi.files import write_json, write_jsonl, write_text


def stage_times(out_dir: Path) -> dict[str, dict]:
    """The ``DONE.json`` of every finished training stage of a run (main stages, variants, baselines)."""
    found = {}
    paths = [out_dir / s / "DONE.json" for s in ("teachers", "pretrain", "finetune")]
    paths += sorted(out_dir.glob("methods/*/DONE.json")) + sorted(out_dir.glob("methods/oracle/*/DONE.json"))
    for path in paths:
        if path.is_file():
            try:
                found[str(path.parent.relative_to(out_dir))] = json.loads(path.read_text())
            except json.JSONDecodeError:
                found[str(path.parent.relative_to(out_dir))] = {"error": "unreadable DONE.json"}
    return found


def write_all(eval_dir: Path, results: dict, predictions: list[dict]) -> None:
    """Write every output of an evaluation into ``eval_dir``."""
    results.setdefault(
        "command", shlex.join(["tagi" if sys.argv[0].endswith("tagi") else sys.argv[0], *sys.argv[1:]])
    )
    write_jsonl(eval_dir / "predictions.jsonl", predictions)
    write_json(eval_dir / "results.json", results)
    plot_methods(results, eval_dir / "methods.png")
    plot_categories(results, eval_dir / "categories.png")
    files = ["results.json", "predictions.jsonl", "methods.png", "categories.png"]
    if results.get("paired", {}).get("by_setting"):
        plot_paired(results, eval_dir / "paired.png")
        files.append("paired.png")
    write_text(eval_dir / "report.md", render_markdown(results, files))
