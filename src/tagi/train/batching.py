"""Which examples each optimiser step sees: a pure function of ``(seed, step)``, so resuming is exact.

The data is an endless *stream*: epoch ``e`` is a seeded permutation of the ``N`` example indices, and
the stream is epoch 0, then epoch 1, ... . One optimiser step consumes ``G = batch_size * grad_accum *
world_size`` consecutive stream items (the global batch). Steps are formed in windows of
``W = G * length_grouping`` items::

    window w = stream[w*W : (w+1)*W]
      -> sort by length (ties: stream order)           similar lengths end up side by side
      -> cut into length_grouping step groups of G     one group = one optimiser step
      -> shuffle the groups' order (seeded by w)       long and short steps alternate at random
    step s -> window s // length_grouping, group order_w[s % length_grouping]

Within a step's group (sorted by length), micro-batch ``j`` is ``group[j*B : (j+1)*B]``; rank ``r`` runs
micro-batches ``m * world_size + r`` for ``m < grad_accum``. One process with ``grad_accum = A * P`` and
``P`` processes with ``grad_accum = A`` therefore run exactly the same micro-batches.

Nothing is stateful: the loader position saved in a checkpoint (``epoch``, ``position``) is derived from
the step counter, and a resumed run recomputes the same batches. A dataset smaller than one step simply
wraps into the next epoch.

**Grouped streams** (``groups`` = a group id per example, e.g. its task, and ``group_size = k > 1``): an
epoch is a seeded shuffle of *chunks* of ``k`` examples of one group. Each group's examples are shuffled
(seeded by epoch and group) and cut into chunks of ``k``; a last, short chunk is filled up with the group's
first examples of that epoch, so a group of ``n`` examples yields ``ceil(n / k)`` chunks and the epoch has
``k * sum_g ceil(n_g / k)`` items. Windows sort whole chunks by their total length, and ``batch_size`` is a
multiple of ``k``, so every micro-batch is made of whole chunks: ``batch_size / k`` groups, ``k`` examples
each. (A task's instruction is then encoded, turned into an adapter and — decoder-only — run as a prompt
prefix once per chunk instead of once per example.) Every :class:`Sample` carries its chunk's stream
number, so per-chunk choices (the number of positive examples in the prompt) can be drawn per chunk.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

from tagi.errors import TagiError


class Sample(NamedTuple):
    """One stream item: the example's index in the dataset, the epoch it is drawn in and, in a grouped
    stream, the number of its chunk in the stream (``-1`` otherwise)."""

    index: int
    epoch: int
    chunk: int = -1


class StepSampler:
    """Length-grouped, seeded, resumable assignment of examples to optimiser steps and ranks."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        grad_accum: int,
        world_size: int = 1,
        seed: int = 0,
        length_grouping: int = 16,
        groups: Sequence[int] | None = None,
        group_size: int = 1,
    ) -> None:
        if not lengths:
            raise TagiError("no training examples")
        if group_size > 1 and (groups is None or len(groups) != len(lengths)):
            raise TagiError(f"group_size={group_size} needs one group id per example")
        if batch_size % group_size:
            raise TagiError(f"batch_size={batch_size} must be a multiple of the group size {group_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.world_size = world_size
        self.seed = seed
        self.length_grouping = length_grouping
        self.group_size = group_size
        self._members: dict[int, list[int]] = {}
        if group_size > 1:
            for i, g in enumerate(groups or []):
                self._members.setdefault(g, []).append(i)
        k = group_size
        self.epoch_size = sum(-(-len(m) // k) * k for m in self._members.values()) if k > 1 else len(lengths)
        self._perm = lru_cache(maxsize=4)(self._make_perm)
        self._window = lru_cache(maxsize=2)(self._make_window)

    @property
    def step_size(self) -> int:
        """Examples per optimiser step over all ranks (the global batch)."""
        return self.batch_size * self.grad_accum * self.world_size

    def _make_perm(self, epoch: int) -> list[int]:
        if self.group_size == 1:
            order = list(range(len(self.lengths)))
            random.Random(f"tagi-perm:{self.seed}:{epoch}").shuffle(order)
            return order
        k, chunks = self.group_size, []
        for g in sorted(self._members):
            members = list(self._members[g])
            random.Random(f"tagi-group:{self.seed}:{epoch}:{g}").shuffle(members)
            filled = members + members * (k - 1)  # enough to fill the last chunk, even of a tiny group
            chunks += [filled[c : c + k] for c in range(0, -(-len(members) // k) * k, k)]
        random.Random(f"tagi-perm:{self.seed}:{epoch}").shuffle(chunks)
        return [i for chunk in chunks for i in chunk]

    def _item(self, pos: int) -> Sample:
        n = self.epoch_size
        chunk = pos // self.group_size if self.group_size > 1 else -1
        return Sample(self._perm(pos // n)[pos % n], pos // n, chunk)

    def _make_window(self, w: int) -> tuple[list[list[Sample]], list[int]]:
        g, size = self.step_size, self.step_size * self.length_grouping
        start = w * size
        items = [self._item(p) for p in range(start, start + size)]
        k = self.group_size
        if k > 1:  # whole chunks move together: sorted by their total length
            total = [sum(self.lengths[s.index] for s in items[c : c + k]) for c in range(0, size, k)]
            order = sorted(range(size), key=lambda i: (total[i // k], i))
        else:
            order = sorted(range(size), key=lambda i: (self.lengths[items[i].index], i))
        groups = [[items[i] for i in order[k * g : (k + 1) * g]] for k in range(self.length_grouping)]
        shuffled = list(range(self.length_grouping))
        random.Random(f"tagi-window:{self.seed}:{w}").shuffle(shuffled)
        return groups, shuffled

    def step_samples(self, step: int) -> list[Sample]:
        """The global batch of optimiser step ``step`` (0-based), sorted by length."""
        groups, order = self._window(step // self.length_grouping)
        return groups[order[step % self.length_grouping]]

    def samples_until(self, num_steps: int) -> list[Sample]:
        """Every sample of steps ``0 .. num_steps-1`` over all ranks (what a whole run will draw)."""
        return [s for step in range(num_steps) for s in self.step_samples(step)]

    def rank_batches(self, step: int, rank: int = 0) -> list[list[Sample]]:
        """The ``grad_accum`` micro-batches that rank ``rank`` runs at step ``step``."""
        group, b = self.step_samples(step), self.batch_size
        chunks = [group[j * b : (j + 1) * b] for j in range(self.grad_accum * self.world_size)]
        return [chunks[m * self.world_size + rank] for m in range(self.grad_accum)]

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, index within the epoch)`` of the stream after ``step`` optimiser steps.

        Exact at window boundaries; inside a window the steps run in shuffled order (informational only:
        resuming needs just the step counter).
        """
        pos = step * self.step_size
        return pos // self.epoch_size, pos % self.epoch_size
