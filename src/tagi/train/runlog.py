"""What a training run records: its JSONL log (and optional TensorBoard scalars), the averages of the
steps since the last log record, and the process's peak memory. Used by :func:`tagi.train.loop.train_loop`.
"""

from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from tagi.errors import TagiError


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _logged_step(line: str) -> float:
    """The step of a log line; a line torn by a killed process (the last one) counts as after any resume."""
    try:
        return json.loads(line).get("step", 0) if line else math.inf
    except json.JSONDecodeError:
        return math.inf


class RunLog:
    """JSONL log (rank 0) plus optional TensorBoard scalars; a resumed run keeps the records up to its step."""

    def __init__(self, path: Path | None, tensorboard_dir: Path | None, resume_step: int | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if resume_step is not None and path.is_file():
                kept = [r for r in path.read_text().splitlines() if _logged_step(r) <= resume_step]
            path.write_text("".join(r + "\n" for r in kept))
        self.tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise TagiError(
                    "train.tensorboard=true needs the tensorboard package: pip install tensorboard"
                ) from None
            self.tb = SummaryWriter(log_dir=str(tensorboard_dir), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Window:
    """Averages of the per-step values since the last log record, and the window's throughput."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps, self.tokens, self.seconds = 0, 0.0, 0.0

    def add(self, record: dict[str, float], tokens: float, seconds: float) -> None:
        for k, v in record.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps, self.tokens, self.seconds = self.steps + 1, self.tokens + tokens, self.seconds + seconds

    def flush(self) -> tuple[dict[str, float], float]:
        avg = {k: v / self.steps for k, v in self.sums.items()}
        tokens_per_s = self.tokens / max(self.seconds, 1e-9)
        self.sums, self.steps, self.tokens, self.seconds = {}, 0, 0.0, 0.0
        return avg, tokens_per_s
