"""One worker thread owns the model; concurrent requests for *different* adapters are decoded as one batch.

**Why one thread.** Adapters are applied through forward hooks on the shared base model
(:func:`tagi.lora.apply_lora`), and generating an adapter runs the same frozen model to read the
instruction. Two threads using the model at once would see each other's hooks, so every piece of model
work — adapter generation and decoding — goes through this scheduler's queue and runs on its worker.

**Batching different adapters, continuously.** :class:`~tagi.lora.LoraWeights` holds one adapter *per
row* (``A [N, r, in]``, ``B [N, out, r]``), applied with two batched matmuls, so rows of different adapters
decode in one model call (the base model is a row of zeros: adding an exact zero changes nothing). On a
decoder-only model the worker keeps one :class:`~tagi.backbones.running.RunningBatch` going: between two
decode steps, the rows that arrived meanwhile and decode under the same settings (:func:`batch_key`:
``max_tokens``, temperature, top_p), *whatever their adapter*, are prefilled and join it, up to
``max_batch`` rows; a finished row leaves at once and its request gets its text. A new request therefore
does not wait for the longest row of the batch ahead of it (iteration-level scheduling).

**Prefilling in groups, fused with a step.** Joining costs a prefill, and rows prefilled in one call share
the cost of reading the model's weights. They are packed into one row without padding
(:mod:`tagi.backbones.packing`): a joining row costs its own tokens, not the longest joining row's. With
``prefill="fused"`` (the default) that packed prefill and the running rows' decode step are one model call
(``RunningBatch.join(..., prefill="fused")``, :mod:`tagi.backbones.fused`): a call of a few
tokens costs nearly what one of a hundred does on a CPU, so the step comes almost free. ``"packed"``
prefills in a call of its own, then steps; ``"padded"`` left-pads the joining rows instead of packing them.
A server that prefills every arriving row at the next step spends most of its time on one-row prefills when
clients keep sending short requests (``benchmarks/serve_load.py`` measures it).
So rows join a running batch when at least ``join_min_rows`` of them wait (or as many as there is room
for), when fewer than ``join_min_rows`` rows are decoding (few requests in flight, few more to wait for),
or when the oldest has waited ``join_max_steps`` decode steps; a new batch (nothing running) takes
every waiting row at once. ``join_min_rows=1`` joins at every step. Decode steps, not seconds, bound the
wait, so the order of events does not depend on the machine's speed.

:func:`stack_rows` passes each distinct adapter of the joining rows once with every row's index, so rows
of one adapter share its instruction's key/value cache. If the oldest waiting row has other
settings, nothing more joins until the batch drains, so it cannot be starved. A row's output does not
depend on which rows share its batch (greedy; tested against ``tagi predict``). A serving stack that merges
one adapter into the weights can only batch requests of the same adapter.

Seq2seq (T5) rows, which decode through transformers' ``generate``, and rows that ask for a ``seed`` are
decoded as one batch from start to end instead: the worker gathers the oldest waiting row and up to
``max_batch - 1`` more of its key and runs one ``backbone.generate``. A seeded request decodes alone,
seeded as ``Tagi.predict`` seeds, so a seeded sample is reproducible and equals ``tagi predict --seed``.

A row may carry a ``stream`` listener: decoder-only rows report every token as it is decoded and
:class:`TextStream` turns them into text pieces (server-sent events); T5 rows get their text when the
batch ends.

**Back-pressure.** At most ``max_queue`` rows wait; :meth:`Scheduler.submit_rows` raises
:class:`QueueFull` beyond that (the app answers 429). A caller that gives up cancels its futures; the
worker skips cancelled rows.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from tagi.backbones import PromptExample
from tagi.backbones.prefix_store import PrefixStore
from tagi.backbones.running import PREFILLS
from tagi.lora import LoraWeights
from tagi.serve.streams import TextStream, push_tokens

log = logging.getLogger("tagi.serve")


class QueueFull(Exception):
    """More rows are waiting than the server accepts (``max_queue``)."""


@dataclass
class Row:
    """One prompt to decode: its adapter (``None`` = the base model), prompt parts and decoding settings."""

    weights: LoraWeights | None
    instruction: str  # the instruction in the prompt ("" for none)
    source: str  # the formatted per-instance part
    mode: str  # "fuse", "concat" or "none"
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    group: int = 0  # request number: seeded rows batch only with their own request
    adapter_key: str = "base"  # the adapter's server id: names its instruction prefix in the prefix store
    stream: Callable[[str], None] | None = None  # gets the text as it is decoded (see TextStream)
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class Task:
    """Other model work (adapter generation): runs alone, in queue order."""

    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)


def batch_key(row: Row, family: str) -> tuple:
    """Rows with equal keys decode in one batch. Decoder-only prompts are ``head + instruction + source +
    tail`` in every mode (``none`` just has no instruction), so the mode only splits T5 batches."""
    mode = "any" if family == "causal" else row.mode
    sampling = (row.temperature, row.top_p) if row.temperature > 0 else (0.0, 1.0)
    return (mode, row.max_tokens, *sampling, row.group if row.seed is not None else None)


def stack_rows(rows: Sequence[Row]) -> tuple[LoraWeights | None, list[int] | None, list[str]]:
    """``(adapters, adapter_rows, keys)``: the batch's distinct adapters stacked ``[U]`` (the base model is
    an adapter of zeros), each row's index into them and each distinct adapter's key; ``(adapter, None,
    [key])`` when every row has the same one (or ``(None, None, ["base"])``: none has any). Rows of one
    adapter then share its instruction's prefix cache (``CausalBackbone.generate(adapter_rows=...)``)."""
    present = [r for r in rows if r.weights is not None]
    if not present:
        return None, None, ["base"]
    if len(present) == len(rows) and all(r.weights is present[0].weights for r in present):
        return present[0].weights, None, [present[0].adapter_key]
    like = present[0].weights
    zero = like.zeros()
    weights = [r.weights if r.weights is not None else zero for r in rows]
    distinct: dict[int, tuple[LoraWeights, str]] = {}  # by object: the cache hands every request the same
    for r, w in zip(rows, weights, strict=True):
        distinct.setdefault(id(w), (w, r.adapter_key if r.weights is not None else "base"))
    order = {key: u for u, key in enumerate(distinct)}
    stacked = LoraWeights.stack([w for w, _ in distinct.values()])
    return stacked, [order[id(w)] for w in weights], [k for _, k in distinct.values()]


def join_now(waiting: int, room: int, running: int, held_steps: int, min_rows: int, max_steps: int) -> bool:
    """Whether the ``waiting`` rows able to join a running batch of ``running`` rows (``room`` more fit) are
    prefilled before its next decode step: when there are ``min_rows`` of them (or enough to fill the room),
    when fewer than ``min_rows`` rows are decoding (few requests are in flight, so few more will come soon
    to share the prefill), or when they have been held back for ``max_steps`` steps already."""
    if waiting == 0 or room == 0:
        return False
    return waiting >= min(min_rows, room) or running < min_rows or held_steps >= max_steps


class _Running:
    """The batch being decoded continuously: its batch key, and the row (and stream) behind each tag."""

    def __init__(self, batch, key: tuple) -> None:
        self.batch, self.key = batch, key
        self.rows: dict[int, Row] = {}
        self.streams: dict[int, TextStream] = {}
        self.held = 0  # decode steps rows able to join have waited (see join_now)
        self._tags = itertools.count()

    def add(self, rows: list[Row], streams: dict[int, TextStream]) -> list[int]:
        """Tags for new rows (``streams`` keyed by their index in ``rows``)."""
        tags = [next(self._tags) for _ in rows]
        self.rows.update(zip(tags, rows, strict=True))
        self.streams.update({tags[i]: stream for i, stream in streams.items()})
        return tags

    def deliver(self, events) -> None:
        """Stream each new token; finished rows get their text."""
        for tag, token in events.tokens:
            if tag in self.streams:
                self.streams[tag].push(token)
        for tag, text in events.finished:
            stream = self.streams.pop(tag, None)
            if stream is not None:
                stream.finish(text)
            self.rows.pop(tag).future.set_result(text)

    def fail(self, error: BaseException) -> None:
        for row in self.rows.values():
            if not row.future.done():
                row.future.set_exception(error)
        self.rows.clear()


class Scheduler:
    """The model's single worker thread and its queue (see the module docstring)."""

    def __init__(
        self,
        backbone,
        max_batch: int = 16,
        max_queue: int = 256,
        batch_wait_s: float = 0.005,
        join_min_rows: int = 4,
        join_max_steps: int = 4,
        on_batch: Callable[[str, int, float], None] | None = None,
        prefix_store: PrefixStore | None = None,
        prefill: str = "fused",
    ) -> None:
        self.backbone = backbone
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        if join_min_rows < 1 or join_max_steps < 0:
            raise ValueError(
                f"join_min_rows must be >= 1 and join_max_steps >= 0, got {join_min_rows}, {join_max_steps}"
            )
        if prefill not in PREFILLS:
            raise ValueError(f"prefill must be one of {', '.join(PREFILLS)}, got {prefill!r}")
        self.join_min_rows, self.join_max_steps = join_min_rows, join_max_steps
        # (kind, rows in one model call, seconds it took); kind: "prefill" (rows joining the running batch),
        # "decode" (one step of it), "fused" (both in one call: running + joining rows) or "batch" (a
        # start-to-end batch: T5, seeded rows)
        self.on_batch = on_batch
        self.prefix_store = prefix_store  # instruction prefixes' caches kept across requests (decoder-only)
        self.prefill = prefill  # how rows join a running batch (see the module docstring)
        # decoder-only backbones decode continuously: waiting rows join the running batch between steps
        self.continuous = callable(getattr(backbone, "running_batch", None))
        self._queue: deque[Row | Task] = deque()
        self._cond = threading.Condition()
        self._groups = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tagi-serve-worker", daemon=True)
        self._thread.start()

    # ---- submitting
    def depth(self) -> int:
        """Rows waiting (not yet decoding)."""
        with self._cond:
            return sum(isinstance(j, Row) for j in self._queue)

    def submit(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the worker (between batches); its result or exception lands in the future."""
        task = Task(fn)
        with self._cond:
            self._queue.append(task)
            self._cond.notify()
        return task.future

    def submit_rows(self, rows: Sequence[Row]) -> list[Future]:
        """Queue the rows of one request (all or none); raises :class:`QueueFull`."""
        with self._cond:
            waiting = sum(isinstance(j, Row) for j in self._queue)
            if waiting + len(rows) > self.max_queue:
                raise QueueFull(f"{waiting} rows are waiting (limit {self.max_queue})")
            self._groups += 1
            for r in rows:
                r.group = self._groups
                self._queue.append(r)
            self._cond.notify()
        return [r.future for r in rows]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # ---- the worker
    def _next(self, running: _Running | None) -> list[Row] | Task | None:
        """The next job: a task at the head of the queue, rows to start a batch with (waiting for work when
        none runs), or rows to join the running batch (possibly none, without waiting). ``None``: closed."""
        with self._cond:
            while not self._queue and not self._closed and running is None:
                self._cond.wait()
            if self._closed:
                return None
            if self._queue and isinstance(self._queue[0], Task):
                return self._queue.popleft()
            if running is not None:
                room = self.max_batch - len(running.batch) if running.batch.can_join else 0
                rows = self._pick(running.key, room, joining=True)
                size = len(running.batch)
                if not join_now(len(rows), room, size, running.held, self.join_min_rows, self.join_max_steps):
                    running.held = running.held + 1 if rows else 0
                    return []
                running.held = 0
                return self._claim(rows)
        if self.batch_wait_s > 0:  # let requests that arrive together meet in one batch
            time.sleep(self.batch_wait_s)
        with self._cond:
            head = self._queue[0]
            return self._claim(
                self._pick(batch_key(head, self.backbone.family), self.max_batch, joining=False)
            )

    def _pick(self, key: tuple, room: int, joining: bool) -> list[Row]:
        """Up to ``room`` waiting rows of batch key ``key``, in queue order (caller holds the lock).

        Starting a batch (``joining=False``) gathers every waiting row of the key. Joining a running batch
        takes only the oldest waiting rows up to the first of another key: a row with other settings then
        waits just for the running batch to drain, and no later row joins ahead of it. The rows stay queued
        until :meth:`_claim` takes them."""
        waiting = [j for j in self._queue if isinstance(j, Row)]
        batch = []
        for row in waiting:
            if len(batch) >= room:
                break
            if batch_key(row, self.backbone.family) == key:
                batch.append(row)
            elif joining:
                break
        return batch

    def _claim(self, rows: list[Row]) -> list[Row]:
        """Take ``rows`` off the queue (caller holds the lock)."""
        for r in rows:
            self._queue.remove(r)
        return rows

    def _run(self) -> None:
        running: _Running | None = None
        while True:
            job = self._next(running)
            if job is None:
                if running is not None:
                    running.fail(RuntimeError("the server is shutting down"))
                return
            if isinstance(job, Task):
                if job.future.set_running_or_notify_cancel():
                    self._settle(job.future, job.fn)
                continue
            rows = [r for r in job if r.future.set_running_or_notify_cancel()]
            if rows and (not self.continuous or rows[0].seed is not None):
                self._decode(rows)  # seeded rows (and seq2seq models) decode as one batch, start to end
            elif rows:
                fuse = self.prefill == "fused" and running is not None and running.batch.can_join
                running = self._join(running, rows, fuse)
                if fuse:
                    continue  # the running rows took their step in the same call
            if running is not None:
                running = self._step(running)

    def _join(self, running: _Running | None, rows: list[Row], fuse: bool = False) -> _Running | None:
        """Prefill ``rows`` into the running batch (a new one when none runs); ``fuse``: in the same model
        call as the running rows' next step (``RunningBatch.join(..., prefill="fused")``)."""
        first = rows[0]
        if running is None:
            batch = self.backbone.running_batch(first.temperature, first.top_p)
            running = _Running(batch, batch_key(first, self.backbone.family))
        size, tags = len(running.batch), running.add(rows, self._streams(rows))
        t0 = time.perf_counter()
        try:
            weights, adapter_rows, keys = stack_rows(rows)
            weights = weights.to(self.backbone.device) if weights is not None else None
            examples = [PromptExample(r.instruction, r.source, "") for r in rows]
            events = running.batch.join(
                examples, weights, "fuse", first.max_tokens, adapter_rows, tags, self.prefix_store, keys,
                prefill=self.prefill,  # "fused" with no row running is "packed"
            )  # fmt: skip
        except BaseException as e:  # noqa: BLE001 - every row of the batch gets the error
            log.exception("prefilling %d rows failed", len(rows))
            running.fail(e)
            return None
        self._observe("fused" if fuse else "prefill", size + len(rows) if fuse else len(rows), t0)
        running.deliver(events)
        return running if len(running.batch) else None

    def _step(self, running: _Running) -> _Running | None:
        """One decode step of the running batch; finished rows get their text."""
        size, t0 = len(running.batch), time.perf_counter()
        try:
            events = running.batch.step()
        except BaseException as e:  # noqa: BLE001 - every row of the batch gets the error
            log.exception("a decode step of %d rows failed", size)
            running.fail(e)
            return None
        self._observe("decode", size, t0)
        running.deliver(events)
        return running if len(running.batch) else None

    def _observe(self, kind: str, rows: int, t0: float) -> None:
        """Report a model call to ``on_batch``; an observer that fails is logged, never stops the worker."""
        if self.on_batch is None:
            return
        try:
            self.on_batch(kind, rows, time.perf_counter() - t0)
        except Exception:  # noqa: BLE001 - metrics must not take the server down
            log.exception("the model-call observer failed")

    @staticmethod
    def _settle(future: Future, fn: Callable[[], Any]) -> None:
        try:
            future.set_result(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the waiting request
            future.set_exception(e)

    def _streams(self, rows: list[Row]) -> dict[int, TextStream]:
        stop = getattr(self.backbone, "stop_ids", set())
        tok = self.backbone.tokenizer
        return {i: TextStream(tok, stop, r.stream) for i, r in enumerate(rows) if r.stream is not None}

    def _decode(self, rows: list[Row]) -> None:
        first, t0 = rows[0], time.perf_counter()
        examples = [PromptExample(r.instruction, r.source, "") for r in rows]
        mode = "fuse" if self.backbone.family == "causal" else first.mode
        try:
            weights, adapter_rows, _ = stack_rows(rows)
            weights = weights.to(self.backbone.device) if weights is not None else None
            seeded, streams = first.seed is not None, self._streams(rows)
            extra: dict[str, Any] = {"adapter_rows": adapter_rows}
            if streams and self.backbone.family == "causal":  # T5 (transformers' generate): at the end
                extra["on_step"] = partial(push_tokens, streams)
            with torch.random.fork_rng() if seeded else nullcontext():
                if seeded:
                    torch.manual_seed(first.seed)
                outs = self.backbone.generate(
                    examples, weights, mode, first.max_tokens, first.temperature, first.top_p, **extra
                )
            for i, stream in streams.items():
                stream.finish(outs[i])
        except BaseException as e:  # noqa: BLE001 - every waiting request gets the error
            log.exception("decoding a batch of %d rows failed", len(rows))
            for r in rows:
                r.future.set_exception(e)
            return
        self._observe("batch", len(rows), t0)
        for r, out in zip(rows, outs, strict=True):
            r.future.set_result(out)
