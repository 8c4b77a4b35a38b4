"""One worker thread owns the model; concurrent requests for *different* adapters are decoded as one batch.

**Why one thread.** Adapters are applied through forward hooks on the shared base model
(:func:`tagi.lora.apply_lora`), and generating an adapter runs the same frozen model to read the
instruction. Two threads using the model at once would see each other's hooks, so every piece of model
work — adapter generation and decoding — goes through this scheduler's queue and runs on its worker.

**Batching different adapters.** :class:`~tagi.lora.LoraWeights` holds one adapter *per row*
(``A [N, r, in]``, ``B [N, out, r]``), applied with two batched matmuls, and the backbones' decode loop
drops finished rows from the batch (their cache, mask and per-row adapter). So the worker takes the oldest
waiting row and gathers up to ``max_batch - 1`` more waiting rows that decode under the same settings
(:func:`batch_key`: prompt mode, ``max_tokens``, temperature, top_p), *whatever their adapter*, stacks their
adapters row by row (the base model is a row of zeros: adding an exact zero changes nothing) and runs one
``backbone.generate``. A row's output does not depend on which other rows share its batch (greedy; tested
against ``tagi predict``). A serving stack that merges one adapter into the weights can only batch requests
of the same adapter.

A row may carry a ``stream`` listener: decoder-only batches report every step's tokens
(``CausalBackbone.generate(on_step=...)``) and :class:`TextStream` turns them into text pieces as they are
decoded (server-sent events); T5 rows get their text when the batch ends.

Rows that ask for a ``seed`` are decoded on their own, seeded as ``Tagi.predict`` seeds, so a seeded
sample is reproducible and equals ``tagi predict --seed``. The batch passes each distinct adapter once
with every row's index into them (:func:`stack_rows`), so on a decoder-only model the rows of one adapter
share its instruction's key/value cache: a batch over ``U`` adapters encodes ``U`` instructions, not one
per row.

**Back-pressure.** At most ``max_queue`` rows wait; :meth:`Scheduler.submit_rows` raises
:class:`QueueFull` beyond that (the app answers 429). A caller that gives up cancels its futures; the
worker skips cancelled rows.
"""

from __future__ import annotations

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
from tagi.lora import LoraWeights

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
    stream: Callable[[str], None] | None = None  # gets the text as it is decoded (see TextStream)
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class Task:
    """Other model work (adapter generation): runs alone, in queue order."""

    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)


class TextStream:
    """One row's tokens -> text pieces whose concatenation is the row's final output (``backbone._decode``:
    cut at the first stop token, special tokens skipped, stripped). A piece is sent once the decoded text
    extends what was sent; an incomplete UTF-8 character or trailing whitespace waits for the next token."""

    def __init__(self, tokenizer, stop_ids: set[int], emit: Callable[[str], None]) -> None:
        self.tokenizer, self.stop_ids, self.emit = tokenizer, stop_ids, emit
        self.ids: list[int] = []
        self.sent, self.stopped = "", False

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            piece, self.sent = text[len(self.sent) :], text
            try:
                self.emit(piece)
            except Exception:  # noqa: BLE001 - a gone listener never breaks the batch
                log.debug("stream listener failed", exc_info=True)

    def push(self, token: int) -> None:
        if self.stopped or token in self.stop_ids:
            self.stopped = True
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
        if not text.endswith("\ufffd"):
            self._send(text)

    def finish(self, final: str) -> None:
        self._send(final)


def _push_tokens(streams: dict[int, TextStream], alive: torch.Tensor, tokens: torch.Tensor) -> None:
    """``on_step`` of the decode loop: each streamed row still decoding gets its new token."""
    for i, t in zip(alive.tolist(), tokens.tolist()):
        if i in streams:
            streams[i].push(t)


def batch_key(row: Row, family: str) -> tuple:
    """Rows with equal keys decode in one batch. Decoder-only prompts are ``head + instruction + source +
    tail`` in every mode (``none`` just has no instruction), so the mode only splits T5 batches."""
    mode = "any" if family == "causal" else row.mode
    sampling = (row.temperature, row.top_p) if row.temperature > 0 else (0.0, 1.0)
    return (mode, row.max_tokens, *sampling, row.group if row.seed is not None else None)


def stack_rows(rows: Sequence[Row]) -> tuple[LoraWeights | None, list[int] | None]:
    """``(adapters, adapter_rows)``: the batch's distinct adapters stacked ``[U]`` (the base model is an
    adapter of zeros) and each row's index into them; ``(adapter, None)`` when every row has the same one
    (or ``(None, None)``: none has any). Rows of one adapter then share its instruction's prefix cache
    (``CausalBackbone.generate(adapter_rows=...)``)."""
    present = [r.weights for r in rows if r.weights is not None]
    if not present:
        return None, None
    if len(present) == len(rows) and all(w is present[0] for w in present):
        return present[0], None
    zero = LoraWeights(
        {k: torch.zeros_like(v) for k, v in present[0].A.items()},
        {k: torch.zeros_like(v) for k, v in present[0].B.items()},
        present[0].scaling,
    )
    weights = [r.weights if r.weights is not None else zero for r in rows]
    distinct = {id(w): w for w in weights}  # by object: the cache hands every request of an adapter the same
    order = {key: u for u, key in enumerate(distinct)}
    return LoraWeights.stack(list(distinct.values())), [order[id(w)] for w in weights]


class Scheduler:
    """The model's single worker thread and its queue (see the module docstring)."""

    def __init__(
        self,
        backbone,
        max_batch: int = 16,
        max_queue: int = 256,
        batch_wait_s: float = 0.005,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.backbone = backbone
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.on_batch = on_batch  # (rows in the batch, seconds it took)
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
    def _next(self) -> list[Row] | Task | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            head = self._queue[0]
            if isinstance(head, Task):
                return self._queue.popleft()
        if self.batch_wait_s > 0:  # let requests that arrive together meet in one batch
            time.sleep(self.batch_wait_s)
        with self._cond:
            head = self._queue.popleft()
            key = batch_key(head, self.backbone.family)
            batch = [head]
            for job in list(self._queue):
                if len(batch) >= self.max_batch:
                    break
                if isinstance(job, Row) and batch_key(job, self.backbone.family) == key:
                    batch.append(job)
                    self._queue.remove(job)
            return batch

    def _run(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            if isinstance(job, Task):
                if job.future.set_running_or_notify_cancel():
                    self._settle(job.future, job.fn)
                continue
            rows = [r for r in job if r.future.set_running_or_notify_cancel()]
            if rows:
                self._decode(rows)

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
            weights, adapter_rows = stack_rows(rows)
            weights = weights.to(self.backbone.device) if weights is not None else None
            seeded, streams = first.seed is not None, self._streams(rows)
            extra: dict[str, Any] = {"adapter_rows": adapter_rows}
            if streams and self.backbone.family == "causal":  # T5 (transformers' generate): at the end
                extra["on_step"] = partial(_push_tokens, streams)
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
        if self.on_batch is not None:
            self.on_batch(len(rows), time.perf_counter() - t0)
        for r, out in zip(rows, outs, strict=True):
            r.future.set_result(out)
