"""Helpers shared by the benchmark scripts (run them from the repository root: ``python benchmarks/X.py``)."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in seconds of ``repeats`` calls of ``fn``, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_results(path: str | Path, result: dict[str, Any]) -> None:
    """Write a results file (indented JSON, folders made) and say where."""
    import json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {path}")


def missing_sni_dir(path: str) -> bool:
    """Print the one-line error for a missing SNI folder; ``True`` when it is missing (exit with 2)."""
    if Path(path).is_dir():
        return False
    print(f"error: SNI data folder not found: {path} (pass --sni-dir)", file=sys.stderr)
    return True


def provenance(script: str, argv: Sequence[str] | None, threads: int, load_start: float) -> dict[str, Any]:
    """What a results file records besides its numbers: the command, the machine (with its load average at
    the start and the end of the measurement) and the package versions."""
    import torch
    import transformers

    import tagi
    from tagi.files import package_versions

    cpu = {k: v for k, v in package_versions(()).items() if k.startswith("cpu")}
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {
            "cpus": os.cpu_count(),
            "threads": threads,
            "load_start": load_start,
            "load_end": os.getloadavg()[0],
            "platform": platform.platform(),
            **cpu,
        },  # fmt: skip
        "versions": {
            "tagi": tagi.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
