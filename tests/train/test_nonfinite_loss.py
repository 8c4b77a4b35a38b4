"""A non-finite loss stops the run before the update, naming the step and the batch; the last checkpoint is
intact, and resuming from it (after fixing the data) ends exactly where a clean run ends."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tagi.config import TrainConfig
from tagi.train.batching import StepSampler
from tagi.train.checkpoint import is_complete
from tagi.train.loop import MicroBatch, NonFiniteLossError, Term, train_loop

D, N = 4, 24


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, D))


class SquaredError:
    """Sum of squared errors of ``x @ w`` against ``y`` over a micro-batch's rows (per-token term)."""

    def __init__(self, model: Linear, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
        self.model, self.xs, self.ys = model, xs, ys

    def prepare(self, samples):
        idx = [s.index for s in samples]
        n = sum(len(self.ys[i]) for i in idx)
        return MicroBatch(idx, n, len(idx), n)

    def terms(self, batch):
        sq = sum(((self.xs[i] @ self.model.w - self.ys[i]) ** 2).sum() for i in batch.data)
        return {"mse": Term(sq, 1.0)}


def data():
    g = torch.Generator().manual_seed(0)
    lengths = [int(torch.randint(1, 6, (1,), generator=g)) for _ in range(N)]
    return (
        lengths,
        [torch.randn(k, D, generator=g) for k in lengths],
        [torch.randn(k, generator=g) for k in lengths],
    )


CFG = TrainConfig(
    max_steps=12, batch_size=2, grad_accum=2, lr=0.05, ckpt_every=3, log_every=1, progress_bar=False
)


def first_step_with(index: int) -> int:
    """The 1-based optimiser step whose batch holds example ``index`` (the loop's own sampler)."""
    lengths, _, _ = data()
    sampler = StepSampler(lengths, CFG.batch_size, CFG.grad_accum, 1, 0, CFG.length_grouping)
    return next(
        s + 1 for s in range(CFG.max_steps) if index in [x.index for b in sampler.rank_batches(s) for x in b]
    )


def test_nan_stops_with_step_and_batch_and_keeps_the_last_checkpoint(tmp_path):
    lengths, xs, ys = data()
    bad = next(i for i in range(N) if first_step_with(i) > 4)  # after at least one checkpoint
    bad_step = first_step_with(bad)
    poisoned = [x.clone() for x in xs]
    poisoned[bad][0, 0] = float("nan")

    model = Linear()
    with pytest.raises(NonFiniteLossError) as err:
        train_loop(model, SquaredError(model, poisoned, ys), lengths, CFG, state_dir=tmp_path / "state")
    message = str(err.value)
    assert "loss became nan" in message and f"at step {bad_step} " in message
    assert str(bad) in message.split("batch of examples")[1].split("]")[0]
    assert "\n" not in message
    assert torch.isfinite(model.w).all()  # the non-finite update was not applied

    state = tmp_path / "state"
    saved_step = json.loads((state / "trainer.json").read_text())["step"]
    assert is_complete(state) and saved_step == (bad_step - 1) // CFG.ckpt_every * CFG.ckpt_every
    assert torch.isfinite(load_file(state / "weights.safetensors")["w"]).all()

    # fix the data, resume from the kept checkpoint: the same weights as a clean run
    resumed = Linear()
    train_loop(resumed, SquaredError(resumed, xs, ys), lengths, CFG, state_dir=state, resume=True)
    clean = Linear()
    train_loop(clean, SquaredError(clean, xs, ys), lengths, CFG, state_dir=tmp_path / "clean")
    assert torch.equal(resumed.w, clean.w)
