"""Regenerate the demo's published results (``docs/demo/``) with ``tagi demo``, or check them.

Commands (from the repository root)::

    python benchmarks/demo.py                      # tagi demo --out runs/demo, then publish into docs/demo/
    python benchmarks/demo.py --check              # tagi demo --out runs/ci-demo, then compare with docs/demo/

``--check`` (what ``.ci/run`` does on a fresh clone) fails unless every method's Rouge-L and exact match, per
prompt setting, equal the committed ``docs/demo/results.json`` (the demo is deterministic on CPU: same
predictions expected). Publishing copies ``results.json`` (with this invocation's command and wall time),
``report.md``, ``predictions.jsonl`` and the plots, with paths made relative to the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sni_smollm2 import ROOT, publish  # noqa: E402

DOCS = ROOT / "docs" / "demo"


def scores(results: dict) -> dict[tuple[str, str], tuple[float, float]]:
    """``{(method, setting): (Rouge-L, exact match)}`` of a results file."""
    out = {}
    for name, m in results["methods"].items():
        for setting, sc in m.get("scores", {}).items():
            out[(name, setting)] = (sc["overall"]["rougeL"], sc["overall"]["exact_match"])
    return out


def differences(expected: dict, actual: dict, tol: float = 1e-9) -> list[str]:
    """One line per (method, setting) whose scores differ (or that only one side has); empty = the same."""
    want, got = scores(expected), scores(actual)
    lines = []
    for key in sorted(set(want) | set(got)):
        a, b = want.get(key), got.get(key)
        if a is None or b is None or any(abs(x - y) > tol for x, y in zip(a, b)):
            show = lambda v: "missing" if v is None else f"{v[0]:.2f} / {v[1]:.2f}"  # noqa: E731
            lines.append(f"{key[0]} {key[1]}: committed {show(a)}, regenerated {show(b)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with docs/demo instead of publishing")
    parser.add_argument(
        "--out", default="", help="run folder (default runs/demo, or runs/ci-demo with --check)"
    )
    args = parser.parse_args(argv)
    from tagi.cli import main as tagi_main

    out = Path(args.out or ("runs/ci-demo" if args.check else "runs/demo"))
    start = time.perf_counter()
    code = tagi_main(["demo", "--out", str(out)])
    if code != 0:
        return code
    eval_dir = out / "eval"
    if args.check:
        diff = differences(
            json.loads((DOCS / "results.json").read_text()),
            json.loads((eval_dir / "results.json").read_text()),
        )
        if diff:
            print("demo results differ from docs/demo/results.json:\n  " + "\n  ".join(diff), file=sys.stderr)
            return 1
        print(
            f"demo results equal docs/demo/results.json ({len(scores(json.loads((DOCS / 'results.json').read_text())))} method x setting scores)"
        )
        return 0
    publish(eval_dir, DOCS, time.perf_counter() - start, "python benchmarks/demo.py")
    print(f"published into {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
