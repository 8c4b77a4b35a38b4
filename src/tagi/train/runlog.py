"""What a training run records: its JSONL log (and optional TensorBoard scalars), the averages of the
steps since the last log record, the process's peak memory, and the progress shown while it runs
(:class:`Progress`: a tqdm bar or log lines). Used by :func:`tagi.train.loop.train_loop`.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tagi.config import TrainConfig
from tagi.errors import TagiError
from tagi.train import dist

logger = logging.getLogger("tagi.train")


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


@dataclass
class StepStats:
    """What one optimiser step measured: each term's value over the step (normalised, unweighted, summed
    over ranks), the weights, the gradient norm before clipping, the tokens processed and the lr used."""

    names: list[str]
    values: list[float]
    weights: dict[str, float]
    grad_norm: float
    tokens: float
    lr: float

    def record(self) -> dict[str, float]:
        record = dict(zip(self.names, self.values))
        return record | {"loss": sum(self.weights[k] * record[k] for k in self.names)}


class Progress:
    """The loop's reporting: a tqdm bar on a terminal (log lines at the log steps otherwise: CI logs,
    nohup), the JSONL/TensorBoard log of averaged windows, and the first and last logged losses."""

    def __init__(
        self,
        cfg: TrainConfig,
        desc: str,
        info: dist.DistInfo,
        log_path: Path | None,
        start: int,
        resumed: bool,
    ) -> None:
        self.cfg, self.desc, self.info = cfg, desc, info
        tb_dir = log_path.parent / "tensorboard" / log_path.stem if (cfg.tensorboard and log_path) else None
        main = info.is_main
        self.log = RunLog(log_path if main else None, tb_dir if main else None, start if resumed else None)
        self.use_bar = cfg.progress_bar and main and sys.stderr.isatty()
        self.bar = tqdm(
            total=cfg.max_steps, initial=start, desc=desc, disable=not self.use_bar, dynamic_ncols=True
        )
        self.window = Window()

    def update(
        self, out: StepStats, done: int, seconds: float, mem: float, epoch: float, trainer: dict
    ) -> None:
        """Report step ``done``; at a log step, write the window's averages and keep them in ``trainer``."""
        record, names = out.record(), out.names
        self.window.add(record | {"grad_norm": out.grad_norm}, out.tokens, seconds)
        trainer["tokens"] += int(out.tokens)
        self.bar.update(1)
        shown = {k: f"{record[k]:.3f}" for k in names}
        self.bar.set_postfix(shown | {"tok/s": f"{out.tokens / seconds:.0f}", "mem": f"{mem:.0f}MB"})
        if not (done == 1 or done % self.cfg.log_every == 0 or done == self.cfg.max_steps):
            return
        avg, tok_s = self.window.flush()
        entry = {"step": done, "epoch": round(epoch, 4), "lr": out.lr}
        entry |= {k: round(v, 6) for k, v in avg.items()}
        self.log.write(entry | {"tokens_per_s": round(tok_s, 1), "mem_mb": round(mem, 1)})
        if self.info.is_main and self.cfg.progress_bar and not self.use_bar:
            terms = " ".join(f"{k}={avg[k]:.4f}" for k in names)
            logger.info(
                "%s step %d/%d: %s tok/s=%.0f mem=%.0fMB",
                self.desc,
                done,
                self.cfg.max_steps,
                terms,
                tok_s,
                mem,
            )
        trainer["first"] = trainer["first"] or {k: avg[k] for k in [*names, "loss"]}
        trainer["last"] = {k: avg[k] for k in [*names, "loss"]}

    def close(self) -> None:
        self.bar.close()
        self.log.close()
