"""The shared loop on a toy least-squares objective with examples of different token counts.

References are computed independently: a hand-written full-batch loop (one forward over the whole optimiser
step, loss = sum over tokens / tokens + weight * sum over examples / examples) must give the same weights as
the loop with micro-batches and accumulation.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from torch import nn

from tagi.config import TrainConfig
from tagi.errors import TagiError
from tagi.train.batching import StepSampler
from tagi.train.checkpoint import ResumeError
from tagi.train.loop import MicroBatch, Term, build_optimizer, build_scheduler, train_loop
from tagi_testing import assert_close32

D = 5


def make_data(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = [int(torch.randint(1, 8, (1,), generator=g)) for _ in range(n)]
    xs = [torch.randn(k, D, generator=g) for k in lengths]
    ys = [torch.randn(k, generator=g) for k in lengths]
    return lengths, xs, ys


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, D))


class ToyObjective:
    """Per-token squared error (per="token") and a per-example penalty (per="example")."""

    def __init__(self, model: Toy, xs, ys, reg: float = 0.5, crash_at: int | None = None) -> None:
        self.model, self.xs, self.ys, self.reg = model, xs, ys, reg
        self.calls, self.crash_at = 0, crash_at

    def prepare(self, samples):
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        idx = [s.index for s in samples]
        n_tok = sum(len(self.ys[i]) for i in idx)
        return MicroBatch(idx, n_tok, len(idx), n_tok)

    def terms(self, batch):
        w = self.model.w
        sq = sum(((self.xs[i] @ w - self.ys[i]) ** 2).sum() for i in batch.data)
        pen = sum((self.xs[i] @ w).mean() ** 2 for i in batch.data)
        return {"mse": Term(sq, 1.0), "pen": Term(pen, self.reg, "example")}


def cfg(**kw) -> TrainConfig:
    base = dict(
        max_steps=12, batch_size=2, grad_accum=3, lr=0.05, warmup_ratio=0.2, log_every=5, ckpt_every=0
    )
    return TrainConfig(**(base | {"progress_bar": False} | kw))


def reference(tc: TrainConfig, lengths, xs, ys, reg: float = 0.5) -> torch.Tensor:
    """Hand-written full-batch loop over the same steps."""
    model = Toy()
    opt = build_optimizer([model.w], tc)
    sched = build_scheduler(opt, tc)
    sampler = StepSampler(lengths, tc.batch_size, tc.grad_accum, 1, 0, tc.length_grouping)
    for step in range(tc.max_steps):
        idx = [s.index for s in sampler.step_samples(step)]
        n_tok = sum(len(ys[i]) for i in idx)
        sq = sum(((xs[i] @ model.w - ys[i]) ** 2).sum() for i in idx)
        pen = sum((xs[i] @ model.w).mean() ** 2 for i in idx)
        (sq / n_tok + reg * pen / len(idx)).backward()
        if tc.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_([model.w], tc.clip_grad)
        opt.step()
        sched.step()
        opt.zero_grad()
    return model.w.detach()


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_accumulated_token_normalised_loss_equals_full_batch(optimizer, clip):
    lengths, xs, ys = make_data()
    tc = cfg(optimizer=optimizer, clip_grad=clip)
    model = Toy()
    train_loop(model, ToyObjective(model, xs, ys), lengths, tc)
    ref = reference(tc, lengths, xs, ys)
    # float32, the same sums grouped differently (micro-batches vs one batch): a few ulps per step, and
    # neither optimiser amplifies them here (every coordinate's gradient is of order 1); measured <= 1.3 ulps
    # of max |w| after 12 steps
    assert_close32(model.w.detach(), ref, ulps=64)
    init = torch.linspace(-1, 1, D)
    assert (ref - init).abs().max() > 0.1 * init.abs().max()  # it trained (measured: 0.28 to 0.33)


def test_loss_goes_down_and_log_records(tmp_path):
    lengths, xs, ys = make_data()
    model = Toy()
    log = tmp_path / "log.jsonl"
    res = train_loop(
        model, ToyObjective(model, xs, ys), lengths, cfg(max_steps=40, log_every=10), log_path=log
    )
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 10, 20, 30, 40]
    for r in records:
        assert {"mse", "pen", "loss", "lr", "grad_norm", "tokens_per_s", "mem_mb", "epoch"} <= set(r)
        # the log rounds each value to 6 decimals; the loss is summed in float64 from the same term values,
        # so the three roundings are all that separates them: 0.5e-6 * (1 + 1 + 0.5)
        assert abs(r["loss"] - (r["mse"] + 0.5 * r["pen"])) <= 1.25e-6 * (1 + 1e-9)
    assert res.last["mse"] < res.first["mse"]
    assert res.first["mse"] == pytest.approx(records[0]["mse"], abs=0.5e-6 * (1 + 1e-9))  # rounded in the log
    assert res.tokens == sum(
        len(ys[s.index]) for st in range(40) for s in StepSampler(lengths, 2, 3).step_samples(st)
    )
    assert res.peak_memory_mb > 0 and res.tokens_per_s > 0


def test_resume_after_a_crash_gives_bitwise_equal_weights(tmp_path):
    lengths, xs, ys = make_data()
    tc = cfg(max_steps=12, ckpt_every=4)
    straight = Toy()
    train_loop(straight, ToyObjective(straight, xs, ys), lengths, tc, state_dir=tmp_path / "a" / "state")

    state, log = tmp_path / "b" / "state", tmp_path / "b" / "log.jsonl"
    crashed = Toy()
    with pytest.raises(KeyboardInterrupt):  # 3 micro-batches per step: call 30 is in step 10 (after ckpt 8)
        train_loop(
            crashed, ToyObjective(crashed, xs, ys, crash_at=30), lengths, tc, state_dir=state, log_path=log
        )
    assert json.loads((state / "trainer.json").read_text())["step"] == 8
    resumed = Toy()
    res = train_loop(
        resumed, ToyObjective(resumed, xs, ys), lengths, tc, state_dir=state, log_path=log, resume=True
    )
    assert res.resumed_from == 8
    assert torch.equal(resumed.w, straight.w)
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert steps == [1, 5, 10, 12]  # records written after the checkpoint by the crashed run are dropped


def test_resume_refuses_other_settings(tmp_path):
    lengths, xs, ys = make_data()
    model = Toy()
    train_loop(
        model, ToyObjective(model, xs, ys), lengths, cfg(max_steps=4, ckpt_every=2), state_dir=tmp_path
    )
    with pytest.raises(ResumeError, match="lr"):
        m2 = Toy()
        train_loop(
            m2, ToyObjective(m2, xs, ys), lengths, cfg(max_steps=4, lr=0.1), state_dir=tmp_path, resume=True
        )


def test_bf16_autocast_runs():
    lengths, xs, ys = make_data()
    model = Toy()
    res = train_loop(model, ToyObjective(model, xs, ys), lengths, cfg(max_steps=20, precision="bf16"))
    assert all(math.isfinite(v) for v in res.last.values()) and res.last["mse"] < res.first["mse"]


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path):
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed")
    lengths, xs, ys = make_data()
    model = Toy()
    with pytest.raises(TagiError, match="pip install tensorboard"):
        train_loop(
            model,
            ToyObjective(model, xs, ys),
            lengths,
            cfg(tensorboard=True),
            log_path=tmp_path / "log.jsonl",
        )


def test_a_non_finite_loss_stops_training_with_a_clear_error():
    lengths, xs, ys = make_data()
    xs = [x.clone() for x in xs]
    xs[3][0, 0] = float("nan")
    model = Toy()
    with pytest.raises(TagiError, match="loss became nan"):
        train_loop(model, ToyObjective(model, xs, ys), lengths, cfg(max_steps=20))
