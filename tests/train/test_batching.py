"""StepSampler: epochs cover the data, rank splits equal accumulation splits, length grouping, determinism,
task-grouped streams."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tagi.errors import TagiError
from tagi.train.batching import StepSampler


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 200) for _ in range(n)]


def test_each_epoch_visits_every_example_once():
    lengths = _lengths(48)
    s = StepSampler(
        lengths, batch_size=4, grad_accum=2, seed=3, length_grouping=3
    )  # 8 per step, 24 per window
    seen = [x for step in range(6) for x in s.step_samples(step)]  # 48 items = one epoch
    assert Counter(x.index for x in seen) == Counter(range(48))
    assert {x.epoch for x in seen} == {0}
    nxt = [x for step in range(6, 12) for x in s.step_samples(step)]
    assert Counter(x.index for x in nxt) == Counter(range(48)) and {x.epoch for x in nxt} == {1}


def test_one_process_with_accumulation_runs_the_same_micro_batches_as_two_ranks():
    lengths = _lengths(50)
    one = StepSampler(lengths, batch_size=3, grad_accum=4, world_size=1, seed=1, length_grouping=4)
    two = StepSampler(lengths, batch_size=3, grad_accum=2, world_size=2, seed=1, length_grouping=4)
    for step in range(7):
        single = one.rank_batches(step, 0)
        rank0, rank1 = two.rank_batches(step, 0), two.rank_batches(step, 1)
        interleaved = [b for pair in zip(rank0, rank1) for b in pair]
        assert single == interleaved


def test_length_grouping_reduces_padding():
    lengths = _lengths(400, seed=5)

    def padded(grouping: int) -> int:
        s = StepSampler(lengths, batch_size=8, grad_accum=1, seed=0, length_grouping=grouping)
        return sum(
            len(b) * max(lengths[x.index] for x in b) for step in range(40) for b in s.rank_batches(step)
        )

    assert padded(16) < 0.75 * padded(1)


def test_deterministic_and_seeded():
    lengths = _lengths(30)
    a = StepSampler(lengths, 4, 1, seed=7)
    b = StepSampler(lengths, 4, 1, seed=7)
    c = StepSampler(lengths, 4, 1, seed=8)
    steps = range(20)
    assert [a.step_samples(s) for s in steps] == [b.step_samples(s) for s in reversed(steps)][::-1]
    assert [a.step_samples(s) for s in steps] != [c.step_samples(s) for s in steps]


def test_dataset_smaller_than_a_step_wraps_into_the_next_epoch():
    s = StepSampler([5, 6, 7], batch_size=4, grad_accum=1, seed=0, length_grouping=2)
    window = s.step_samples(0) + s.step_samples(1)  # 8 stream items: epochs 0, 1 and part of 2
    assert Counter(x.epoch for x in window) == {0: 3, 1: 3, 2: 2}
    assert s.position(3) == (4, 0)  # 12 items consumed = 4 epochs of 3


def _grouped(n: int = 61, tasks: int = 9, **kw) -> tuple[list[int], list[int], StepSampler]:
    rng = random.Random(2)
    groups = [rng.randrange(tasks) for _ in range(n)]
    groups[0] = tasks  # a task with a single example
    lengths = _lengths(n, seed=4)
    args = {"batch_size": 4, "grad_accum": 2, "seed": 1, "length_grouping": 3, "group_size": 2} | kw
    return groups, lengths, StepSampler(lengths, groups=groups, **args)


@pytest.mark.parametrize("k", [2, 4])
def test_grouped_micro_batches_are_whole_chunks_of_one_task(k):
    groups, _, s = _grouped(group_size=k, batch_size=4)
    for step in range(12):
        for batch in s.rank_batches(step):
            assert len(batch) == 4
            for c in range(0, 4, k):
                chunk = batch[c : c + k]
                assert len({groups[x.index] for x in chunk}) == 1  # one task
                assert len({x.chunk for x in chunk}) == 1 and len({x.epoch for x in chunk}) == 1
            assert len({x.chunk for x in batch}) == 4 // k  # chunks do not straddle micro-batches


def test_a_grouped_epoch_covers_every_example_and_fills_short_chunks_from_its_own_task():
    groups, _, s = _grouped(group_size=4, batch_size=4, grad_accum=1)
    sizes = Counter(groups)
    assert s.epoch_size == sum(-(-n // 4) * 4 for n in sizes.values())
    epoch = [x for x in (s._item(p) for p in range(s.epoch_size))]
    assert {x.epoch for x in epoch} == {0} and set(x.index for x in epoch) == set(range(len(groups)))
    per_task = Counter(groups[x.index] for x in epoch)
    assert per_task == {g: -(-n // 4) * 4 for g, n in sizes.items()}  # only the task's own examples repeat
    assert s._item(s.epoch_size).epoch == 1


def test_grouped_streams_are_deterministic_and_split_across_ranks_like_accumulation():
    groups, lengths, one = _grouped(batch_size=4, grad_accum=4)
    two = StepSampler(lengths, 4, 2, 2, seed=1, length_grouping=3, groups=groups, group_size=2)
    again = StepSampler(lengths, 4, 4, 1, seed=1, length_grouping=3, groups=groups, group_size=2)
    for step in reversed(range(9)):
        interleaved = [b for pair in zip(two.rank_batches(step, 0), two.rank_batches(step, 1)) for b in pair]
        assert one.rank_batches(step, 0) == interleaved == again.rank_batches(step, 0)


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"group_size": 3}, "multiple of the group size"), ({"groups": None}, "one group id per example")],
)
def test_grouped_stream_errors(kw, message):
    groups, lengths, _ = _grouped()
    args = {"batch_size": 4, "grad_accum": 1, "groups": groups, "group_size": 2} | kw
    with pytest.raises(TagiError, match=message):
        StepSampler(lengths, **args)
