"""The one training loop shared by every stage (teachers, pretraining, finetuning).

A stage supplies an :class:`Objective` — how to turn a list of :class:`~tagi.train.batching.Sample` s into
a :class:`MicroBatch` and a micro-batch into loss :class:`Term` s — and the loop does the rest:

- **Token-normalised loss with gradient accumulation.** Terms are *sums* over a micro-batch's label tokens
  (``per="token"``: CE, KL) or examples (``per="example"``: adapter alignment). Before any forward pass the
  loop collates all micro-batches of the optimiser step and counts their label tokens ``N_tok`` and
  examples ``N_ex`` (summed over ranks), then backpropagates, micro-batch by micro-batch::

      L = sum_terms  weight * (sum over the whole step of the term) / N_per

  so the gradient equals that of one big batch however the step is split over micro-batches and ranks.
- **Data parallelism.** Each rank runs its share of the step's micro-batches
  (:class:`~tagi.train.batching.StepSampler`); the gradients of the summed loss are all-reduced (summed),
  so ``P`` processes give the same update as one process with the same global batch.
- AdamW (torch) or Adafactor (transformers), linear warmup then cosine decay to ``lr * min_lr_ratio``
  (``transformers.get_cosine_with_min_lr_schedule_with_warmup``), gradient-norm clipping, bf16 autocast.
- A tqdm bar (each loss term, tokens/s, memory), a JSONL log (``step 1``, every ``log_every`` steps, the
  last step; each record averages the steps since the previous one), optional TensorBoard scalars.
- Atomic checkpoints every ``ckpt_every`` steps and at the end (:mod:`tagi.train.checkpoint`); with
  ``resume=True`` the run continues from the saved state and ends with bitwise the same weights as an
  uninterrupted run (same device, same thread count).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn
from transformers import get_cosine_with_min_lr_schedule_with_warmup
from transformers.optimization import Adafactor

from tagi.config import TrainConfig, to_dict
from tagi.errors import TagiError
from tagi.train import dist
from tagi.train.batching import Sample, StepSampler
from tagi.train.checkpoint import check_fingerprint, find_state, load_state, save_state
from tagi.train.common import RUN_ONLY_TRAIN
from tagi.train.runlog import Progress, StepStats, peak_memory_mb


@dataclass
class Term:
    """One loss term of a micro-batch: a sum, its weight, and what it is normalised by over the step."""

    value: torch.Tensor  # scalar: sum over the micro-batch's label tokens or examples
    weight: float
    per: Literal["token", "example"] = "token"


@dataclass
class MicroBatch:
    """A collated micro-batch plus the counts the loop needs before running it."""

    data: Any
    num_label_tokens: int  # normaliser of per="token" terms
    num_examples: int  # normaliser of per="example" terms
    num_tokens: int  # every token processed (prompt + labels; throughput only)


class Objective(Protocol):
    """What a stage trains: data preparation and loss terms (the loop owns everything else)."""

    def prepare(self, samples: Sequence[Sample]) -> MicroBatch: ...

    def terms(self, batch: MicroBatch) -> dict[str, Term]: ...


@dataclass
class LoopResult:
    """Summary of a finished run (recorded in the stage's DONE.json)."""

    steps: int
    wall_time: float
    tokens: int
    tokens_per_s: float
    peak_memory_mb: float
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "wall_time_s": round(self.wall_time, 3),
            "tokens": self.tokens,
            "tokens_per_s": round(self.tokens_per_s, 1),
            "peak_memory_mb": round(self.peak_memory_mb, 1),
            "losses": {"first": self.first, "last": self.last},
            "resumed_from": self.resumed_from,
            "world_size": self.world_size,
        }


# ------------------------------------------------------------------------------------- building blocks


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adafactor":
        return Adafactor(
            params,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``ceil(warmup_ratio * max_steps)`` steps, then cosine decay to ``lr * min_lr_ratio``."""
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * cfg.max_steps),
        num_training_steps=cfg.max_steps,
        min_lr_rate=cfg.min_lr_ratio,
    )


def fingerprint_train(cfg: TrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share with the saved one (logging and threads may change)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_TRAIN}


# ------------------------------------------------------------------------------------------- the loop


def _step_counts(batches: list[MicroBatch], info: dist.DistInfo, device: torch.device) -> tuple[float, ...]:
    """Label tokens, examples and processed tokens of the whole optimiser step, summed over ranks."""
    local = [sum(b.num_label_tokens for b in batches), sum(b.num_examples for b in batches)]
    local.append(sum(b.num_tokens for b in batches))
    counts = dist.all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=device), info)
    return tuple(float(c) for c in counts.tolist())


def _accumulate(
    objective: Objective, batches: list[MicroBatch], norm: dict[str, float], bf16: bool, device: torch.device
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Forward and backward of this rank's micro-batches of one step (gradients accumulate in ``.grad``).

    Returns each term's normalised, unweighted value summed over the micro-batches, and the terms' weights.
    """
    sums: dict[str, torch.Tensor] = {}
    weights: dict[str, float] = {}
    for batch in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            terms = objective.terms(batch)
        loss = sum(t.weight * t.value.float() / norm[t.per] for t in terms.values())
        loss.backward()
        for name, t in terms.items():
            sums[name] = sums.get(name, 0.0) + t.value.detach().float() / norm[t.per]
            weights[name] = t.weight
    return sums, weights


class NonFiniteLossError(TagiError):
    """The loss or the gradient norm became inf/NaN; the weights were not updated by that step."""


def _check_finite(
    desc: str,
    step: int,
    names: list[str],
    values: list[float],
    weights: dict[str, float],
    grad_norm: float,
    samples: list[list[Sample]],
) -> None:
    """Stop before the optimiser applies a non-finite update, naming the step, the terms and the examples."""
    loss = sum(weights[k] * v for k, v in zip(names, values))
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    terms = ", ".join(f"{k}={v}" for k, v in zip(names, values))
    what = (
        f"the loss became {loss} ({terms})"
        if not math.isfinite(loss)
        else f"the gradient norm became {grad_norm}"
    )
    indices = [s.index for batch in samples for s in batch]
    raise NonFiniteLossError(
        f"{desc}: {what} at step {step} (batch of examples {indices}); not applied, the last checkpoint "
        "is kept: lower the learning rate or check these examples, then resume"
    )


def step_sampler(
    lengths: Sequence[int],
    cfg: TrainConfig,
    seed: int,
    world_size: int = 1,
    groups: Sequence[int] | None = None,
    group_size: int = 1,
) -> StepSampler:
    """The :class:`StepSampler` of a run of ``cfg`` (its batch size, accumulation and length grouping).

    ``lengths[i]`` is a length proxy of example ``i``; ``groups`` (a group id per example) and
    ``group_size`` make a grouped stream (chunks of ``group_size`` examples of one group).
    """
    return StepSampler(
        lengths,
        cfg.batch_size,
        cfg.grad_accum,
        world_size,
        seed,
        cfg.length_grouping,
        groups,
        group_size,
    )


def _check_sampler(sampler: StepSampler, cfg: TrainConfig, seed: int, world_size: int, desc: str) -> None:
    """A given sampler must draw what :func:`step_sampler` would for this run (the checkpoint's settings)."""
    want = (cfg.batch_size, cfg.grad_accum, world_size, seed, cfg.length_grouping)
    have = (sampler.batch_size, sampler.grad_accum, sampler.world_size, sampler.seed, sampler.length_grouping)
    if have != want:
        raise TagiError(
            f"{desc}: the sampler draws (batch_size, grad_accum, world_size, seed, length_grouping) = {have}, "
            f"but the run has {want}"
        )


def _optimizer_step(
    objective: Objective,
    samples: list[list[Sample]],
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    cfg: TrainConfig,
    info: dist.DistInfo,
    desc: str,
    step: int,
) -> StepStats:
    """Forward/backward of this rank's micro-batches, all-reduce, clipping, the finiteness check, the update."""
    device = params[0].device
    batches = [objective.prepare(s) for s in samples]
    n_tok, n_ex, n_all = _step_counts(batches, info, device)
    norm = {"token": max(n_tok, 1.0), "example": max(n_ex, 1.0)}
    sums, weights = _accumulate(objective, batches, norm, cfg.precision == "bf16", device)
    names = sorted(sums)
    values = dist.all_reduce_sum(torch.stack([sums[k] for k in names]), info).tolist()
    dist.all_reduce_grads(params, info)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad if cfg.clip_grad > 0 else math.inf)
    _check_finite(desc, step + 1, names, values, weights, float(grad_norm), samples)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(names, values, weights, float(grad_norm), n_all, lr)


def train_loop(
    module: nn.Module,
    objective: Objective,
    sampler: StepSampler | Sequence[int],
    cfg: TrainConfig,
    *,
    seed: int = 0,
    state_dir: Path | None = None,
    log_path: Path | None = None,
    resume: bool = False,
    fingerprint: dict[str, Any] | None = None,
    desc: str = "train",
    info: dist.DistInfo | None = None,
) -> LoopResult:
    """Train the trainable parameters of ``module`` on ``objective`` for ``cfg.max_steps`` optimiser steps.

    ``sampler`` assigns examples to steps and ranks: a :class:`StepSampler` built for this run (same batch
    settings, seed and world size; e.g. a grouped stream, see :mod:`tagi.train.batching`), or the examples'
    length proxies, from which :func:`step_sampler` builds one. ``state_dir`` receives checkpoints; with
    ``resume=True`` a state found there is restored first (its ``fingerprint`` — the settings that define
    the run — must equal ``fingerprint``). Every rank of a data-parallel group calls this with the same
    arguments; rank 0 writes the files.
    """
    info = info or dist.current()
    if not isinstance(sampler, StepSampler):
        sampler = step_sampler(sampler, cfg, seed, info.world_size)
    _check_sampler(sampler, cfg, seed, info.world_size, desc)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise TagiError(f"{desc}: nothing to train (no parameter requires a gradient)")
    device = params[0].device
    torch.manual_seed(seed + info.rank)
    optimizer = build_optimizer(params, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    fingerprint = {"train": fingerprint_train(cfg), "seed": seed, **(fingerprint or {})}

    trainer: dict[str, Any] = {"step": 0, "tokens": 0, "elapsed": 0.0, "first": {}, "last": {}}
    saved = find_state(state_dir) if (state_dir is not None and resume) else None
    if saved is not None:
        check_fingerprint(json.loads((saved / "trainer.json").read_text())["fingerprint"], fingerprint, saved)
        trainer = load_state(saved, module, optimizer, scheduler, info)
    dist.broadcast_module(module, info)
    start = int(trainer["step"])
    progress = Progress(cfg, desc, info, log_path, start, saved is not None)
    module.train()
    t_run = time.perf_counter()
    for step in range(start, cfg.max_steps):
        t0 = time.perf_counter()
        samples = sampler.rank_batches(step, info.rank)
        out = _optimizer_step(objective, samples, params, optimizer, scheduler, cfg, info, desc, step)
        done = step + 1
        epoch = done * sampler.step_size / len(sampler.lengths)
        progress.update(out, done, time.perf_counter() - t0, peak_memory_mb(device), epoch, trainer)
        if state_dir is not None and (
            done == cfg.max_steps or (cfg.ckpt_every and done % cfg.ckpt_every == 0)
        ):
            epoch_at, position = sampler.position(done)
            now = time.perf_counter()
            trainer |= {"step": done, "epoch": epoch_at, "position": position, "world_size": info.world_size}
            trainer |= {"elapsed": trainer["elapsed"] + now - t_run, "fingerprint": fingerprint}
            t_run = now
            save_state(state_dir, module, optimizer, scheduler, trainer, info)
    progress.close()
    elapsed = trainer["elapsed"] + (time.perf_counter() - t_run)
    tokens = int(trainer["tokens"])
    return LoopResult(
        steps=cfg.max_steps,
        wall_time=elapsed,
        tokens=tokens,
        tokens_per_s=tokens / max(elapsed, 1e-9),
        peak_memory_mb=peak_memory_mb(device),
        first=dict(trainer["first"]),
        last=dict(trainer["last"]),
        resumed_from=start,
        world_size=info.world_size,
    )
