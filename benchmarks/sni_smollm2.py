"""Headline benchmark: TAGI vs baselines with SmolLM2-135M-Instruct on Super-NaturalInstructions (CPU).

Command (from the repository root; at most 100 minutes on 2 CPU cores)::

    python benchmarks/sni_smollm2.py [--sni-dir ../shared/data/sni] [key=value ...]

The ablations (HINT-like, TAGI without each component, Hypter-like, the empty instruction, the oracle;
Def only) reuse that run's stages and write their own report (``evaluate.report_dir``)::

    python benchmarks/sni_smollm2.py --config configs/bench-sni-smollm2-ablations.yaml \
        --results benchmarks/results/sni-smollm2-ablations

It is ``tagi run configs/bench-sni-smollm2.yaml data.sni_dir=...`` (teachers -> hypernetwork pretraining
-> distillation finetuning -> the multi-task LoRA and HINT-like baselines -> evaluation of every
configured method on every test task, Def and Def+2Pos), followed by a copy of the evaluation's
``results.json``, ``report.md`` and plots into ``benchmarks/results/sni-smollm2/`` (the committed
results). The run itself lives in ``runs/bench-sni-smollm2/``; a rerun skips finished stages and cached
methods. ``results.json`` records the config, seed, package versions, machine load and the wall time
of every stage; this script adds each invocation's command and wall time (``benchmark_invocations``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "bench-sni-smollm2.yaml"
DEFAULT_SNI = ROOT.parent / "shared" / "data" / "sni"
RESULTS = ROOT / "benchmarks" / "results" / "sni-smollm2"
COPIED = ("results.json", "report.md", "predictions.jsonl")


def relative_paths(obj, root: Path = ROOT):
    """``obj`` (JSON data) with absolute paths under the repository (or its parent folder, where the shared
    data lives) made relative to the repository, so published results name no machine's folders."""
    if isinstance(obj, dict):
        return {k: relative_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relative_paths(v, root) for v in obj]
    if isinstance(obj, str):
        return relative_text(obj, root)
    return obj


def relative_text(text: str, root: Path = ROOT) -> str:
    return text.replace(f"{root}/", "").replace(f"{root.parent}/", "../")


def same_settings(old: dict, new: dict) -> bool:
    """Whether ``new`` is ``old``, possibly with keys that did not exist when ``old`` was recorded.

    A newer tagi may add config fields (with defaults); a rerun under it still reuses the stages and
    methods of the earlier invocation, whose fingerprints it checks itself, so the history stays.
    """
    for key, value in old.items():
        if key not in new:
            return False
        if isinstance(value, dict) and isinstance(new[key], dict):
            if not same_settings(value, new[key]):
                return False
        elif value != new[key]:
            return False
    return True


def publish(eval_dir: Path, dest: Path, wall_s: float, command: str) -> None:
    """Copy the report (results.json, report.md, PNGs) into ``dest`` and record this invocation.

    ``benchmark_invocations`` lists every invocation that published the same config (:func:`same_settings`),
    with its command and wall time: the first one did the work, a rerun only reuses finished stages and
    cached methods.
    """
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "results.json"
    previous = json.loads(target.read_text()) if target.is_file() else {}
    for old in dest.glob("*.png"):
        old.unlink()
    for path in [*(eval_dir / name for name in COPIED), *sorted(eval_dir.glob("*.png"))]:
        shutil.copy2(path, dest / path.name)
    (dest / "report.md").write_text(relative_text((dest / "report.md").read_text()))
    results = relative_paths(json.loads(target.read_text()))
    same = "config" in previous and same_settings(previous["config"], results["config"])
    history = previous.get("benchmark_invocations", []) if same else []
    run = {"command": relative_text(command), "wall_s": round(wall_s, 1)}
    run["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results["benchmark_invocations"] = [*history, run]
    tmp = dest / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sni-dir", default=str(DEFAULT_SNI), help="a clone of allenai/natural-instructions")
    parser.add_argument("--config", default=str(CONFIG), help="experiment config (YAML)")
    parser.add_argument("--out", default="runs/bench-sni-smollm2", help="run folder (stages and evaluation)")
    parser.add_argument("--results", default=str(RESULTS), help="where the report is copied")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    if not Path(args.sni_dir).is_dir():
        print(f"error: SNI data folder not found: {args.sni_dir} (pass --sni-dir)", file=sys.stderr)
        return 2
    from tagi.cli import main as tagi_main
    from tagi.config import load_config

    config = Path(args.config).resolve()
    overrides = [f"data.sni_dir={args.sni_dir}", f"out_dir={args.out}", *args.overrides]
    shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
    command = " ".join(["tagi", "run", str(shown), *overrides])
    start = time.perf_counter()
    code = tagi_main(["run", str(config), *overrides])
    if code != 0:
        return code
    report_dir = Path(args.out) / load_config(config, overrides).evaluate.report_dir
    publish(report_dir, Path(args.results), time.perf_counter() - start, command)
    print(f"benchmark finished in {(time.perf_counter() - start) / 60:.1f} min; report in {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
