"""Resumable training state, written atomically every ``ckpt_every`` steps.

A state folder (``<stage>/state/``) holds everything needed to continue a run bit for bit::

    weights.safetensors   the trained module's state dict (hypernetwork or LoRA factors)
    optim.pt              {"optimizer": ..., "scheduler": ...} state dicts (tensors + plain data;
                          read back with torch.load(weights_only=True))
    rng-<rank>.pt         torch (CPU and CUDA) and Python RNG states of each rank
    trainer.json          step, loader position (epoch, index), tokens seen, elapsed time, the running
                          log-window sums and the fingerprint of the config that wrote it

The folder is first written under a temporary name and then renamed over the previous state
(:func:`tagi.files.replace_dir`), so a run killed at any moment leaves either the old or the new state,
never a half-written one. Under data parallelism every rank writes its RNG file into the temporary folder,
then rank 0 writes the rest and renames.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tagi.errors import TagiError
from tagi.files import replace_dir
from tagi.train.dist import DistInfo, barrier

WEIGHTS = "weights.safetensors"
OPTIM = "optim.pt"
TRAINER = "trainer.json"


class ResumeError(TagiError):
    """A saved training state cannot be resumed (missing files, or written by a different config)."""


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_complete(state_dir: Path) -> bool:
    return all((state_dir / f).is_file() for f in (WEIGHTS, OPTIM, TRAINER))


def find_state(state_dir: Path) -> Path | None:
    """The saved state to resume from: ``state_dir``, or the previous state left by a rename that was cut off."""
    if is_complete(state_dir):
        return state_dir
    leftovers = sorted(state_dir.parent.glob(f".{state_dir.name}.old-*"))
    return next((p for p in leftovers if is_complete(p)), None)


def save_state(
    state_dir: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer: dict[str, Any],
    info: DistInfo,
) -> None:
    """Write the state of every rank to ``state_dir`` atomically (collective: all ranks must call it)."""
    tmp = state_dir.with_name(f".{state_dir.name}.tmp")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    torch.save(_rng_state(), tmp / f"rng-{info.rank}.pt")
    barrier(info)
    if info.is_main:
        weights = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(weights, tmp / WEIGHTS)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / OPTIM)
        (tmp / TRAINER).write_text(json.dumps(trainer, indent=2))  # written last: marks completeness
        replace_dir(tmp, state_dir)
    barrier(info)


def load_state(
    state_dir: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    info: DistInfo,
) -> dict[str, Any]:
    """Restore weights, optimiser, scheduler and this rank's RNG; returns the trainer record."""
    trainer = json.loads((state_dir / TRAINER).read_text())
    if trainer.get("world_size", 1) != info.world_size:
        raise ResumeError(
            f"{state_dir} was written by {trainer.get('world_size', 1)} processes; resume with the same number "
            f"(got {info.world_size})"
        )
    device = next(iter(module.parameters())).device
    module.load_state_dict({k: v.to(device) for k, v in load_file(state_dir / WEIGHTS).items()})
    optim = torch.load(state_dir / OPTIM, map_location=device, weights_only=True)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    rng = state_dir / f"rng-{info.rank}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=True))
    return trainer


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], state_dir: Path) -> None:
    """Refuse to resume a state written under other settings; names the first differing key."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(saved), flat(current)
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if diff:
        k = diff[0]
        raise ResumeError(
            f"the checkpoint in {state_dir} was written with {k}={a.get(k)!r}, the config now says "
            f"{b.get(k)!r}; resume with the same settings or start over (--force)"
        )
