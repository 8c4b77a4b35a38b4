"""The serving core without HTTP: one loaded :class:`~tagi.Tagi`, its adapter cache, scheduler and limits.

:class:`Service` turns API-level requests into model work: ``make_adapter`` (hypernetwork, then, for a
decoder-only model with a prefix store, the adapter's instruction prefix, both on the scheduler's worker),
``lookup`` (an id -> cached adapter, regenerated if it was evicted) and ``complete``
(inputs -> :class:`~tagi.serve.scheduler.Row` s -> outputs, awaited with the request timeout). Every limit
is checked here and reported as :class:`ApiError` (status, message, type), which the app turns into a JSON
error body. The model is only ever used on the scheduler's worker thread. Load the ``Tagi`` on a thread
that ends (``tagi.serve.runner.on_own_thread(Tagi.from_checkpoint, path)``, as ``tagi serve`` does) and do no
other torch work meanwhile, so that the worker's OpenMP pool is the process's only one (``runner.py`` says
why; a second one made every model call 1.3-1.6x slower on the reference machine).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tagi.backbones.prefix_store import PrefixStore, storable
from tagi.data import Example, format_source
from tagi.data import Task as SniTask
from tagi.serve.cache import AdapterCache, Entry, adapter_id, peft_zip
from tagi.serve.metrics import Metrics
from tagi.serve.scheduler import QueueFull, Row, Scheduler

BASE = "base"


@dataclass
class Limits:
    """What one request may ask for (each breach is a 4xx JSON error; the server keeps serving)."""

    max_body_bytes: int = 1_000_000
    max_instruction_chars: int = 20_000  # tokens beyond model.max_instruction_tokens are truncated, reported
    max_input_chars: int = 20_000  # tokens beyond model.max_input_tokens are cut from the left, as predict
    max_tokens: int | None = None  # the largest a request may ask; default max(256, model.max_target_tokens)
    max_prompts: int = 16  # prompts in one completions request
    max_pos_examples: int = 8
    max_batch: int = 16  # rows decoded together
    max_queue: int = 256  # rows waiting; 429 beyond
    timeout_s: float = 120.0  # waiting for model work; 408 beyond
    cache_bytes: int = 512 * 2**20  # generated adapters kept in memory (LRU)
    prefix_cache_bytes: int = 256 * 2**20  # instruction prefixes' key/value caches (LRU; 0 = none)


class ApiError(Exception):
    """A request the server refuses: HTTP status, a one-line message and an OpenAI-style error type."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code, "param": None}}


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass
class Service:
    tagi: Any  # tagi.Tagi with a hypernetwork
    limits: Limits = field(default_factory=Limits)
    batch_wait_s: float = 0.005
    join_min_rows: int = 4  # rows join a running batch in groups of this many (see tagi.serve.scheduler)
    join_max_steps: int = 4  # ... or once the oldest has waited this many decode steps
    prefill: str = (
        "fused"  # how rows join a running batch: "fused", "packed" or "padded" (tagi.serve.scheduler)
    )

    def __post_init__(self) -> None:
        if self.tagi.model is None:
            raise ValueError("serving needs a hypernetwork checkpoint (Tagi.from_checkpoint)")
        bb = self.tagi.backbone
        # a request without max_tokens gets the model's max_target_tokens, as `tagi predict` does
        self.default_tokens = bb.cfg.max_target_tokens
        self.max_tokens = self.limits.max_tokens or max(256, self.default_tokens)
        self.cache = AdapterCache(self.limits.cache_bytes)
        self.metrics = Metrics()
        # decoder-only models whose cache is a plain prefix of keys (checked once, not per request)
        keep = bb.family == "causal" and self.limits.prefix_cache_bytes > 0 and storable(bb.model)
        self.prefixes = PrefixStore(self.limits.prefix_cache_bytes) if keep else None
        self.scheduler = Scheduler(
            bb,
            self.limits.max_batch,
            self.limits.max_queue,
            self.batch_wait_s,
            self.join_min_rows,
            self.join_max_steps,
            on_batch=self.metrics.observe_batch,
            prefix_store=self.prefixes,
            prefill=self.prefill,
        )
        self.metrics.track(self.scheduler.depth, lambda: len(self.cache), lambda: self.cache.nbytes)
        if self.prefixes is not None:
            self.metrics.track_prefixes(self.prefixes)

    @property
    def base_name(self) -> str:
        return self.tagi.backbone.cfg.name

    def close(self) -> None:
        self.scheduler.close()

    # ---- model work, awaited with the timeout
    async def _wait(self, futures: list) -> list:
        wrapped = [asyncio.wrap_future(f) for f in futures]
        try:
            return await asyncio.wait_for(asyncio.gather(*wrapped), self.limits.timeout_s)
        except TimeoutError:
            for f in futures:
                f.cancel()
            raise ApiError(
                408,
                f"request timed out after {self.limits.timeout_s:g} s (server busy)",
                "timeout_error",
                "timeout",
            ) from None

    # ---- adapters
    def _check_instruction(self, instruction: str, pos_examples: list[dict[str, str]]) -> None:
        if not instruction.strip():
            raise ApiError(400, "the instruction is empty", code="empty_instruction")
        size = len(instruction) + sum(len(e["input"]) + len(e["output"]) for e in pos_examples)
        if size > self.limits.max_instruction_chars:
            raise ApiError(
                400,
                f"instruction of {size} characters is over the limit of {self.limits.max_instruction_chars}",
                code="instruction_too_long",
            )
        if len(pos_examples) > self.limits.max_pos_examples:
            raise ApiError(
                400,
                f"{len(pos_examples)} positive examples, the limit is {self.limits.max_pos_examples}",
                code="too_many_examples",
            )

    def _generate(self, instruction: str, pos_examples: list[dict[str, str]]) -> Entry:
        """On the worker: the hypernetwork call (truncating as ``tagi generate`` does), cached by id."""
        t0 = time.perf_counter()
        if pos_examples:
            task = SniTask(
                "request", instruction, tuple(Example(e["input"], e["output"]) for e in pos_examples), ()
            )
            adapter = self.tagi.generate_adapter(task=task, pos_examples=len(pos_examples))
        else:
            adapter = self.tagi.generate_adapter(instruction)
        seconds = time.perf_counter() - t0
        key = adapter_id(
            self.tagi.checkpoint_sha256, adapter.instruction, adapter.fuse, self.tagi.backbone.cfg.dtype
        )
        if self.prefixes is not None and adapter.mode == "fuse":  # its completions will reuse the prefix
            bb = self.tagi.backbone
            bb.store_prefix(adapter.instruction, adapter.weights.to(bb.device), self.prefixes, key)
        entry = Entry(key, adapter, instruction, seconds, int(time.time()))
        self.cache.put(entry, {"instruction": instruction, "pos_examples": pos_examples})
        self.metrics.adapter_seconds.observe(seconds)
        return entry

    async def make_adapter(self, instruction: str, pos_examples: list[dict[str, str]]) -> tuple[Entry, bool]:
        """``(entry, cached)``: an adapter already made from the same instruction and examples (and still
        held) is returned as it is, without running the hypernetwork again."""
        self._check_instruction(instruction, pos_examples)
        held = self.cache.find({"instruction": instruction, "pos_examples": pos_examples})
        if held is not None:
            self.metrics.adapter_cache_hits.inc()
            return held, True
        (entry,) = await self._wait(
            [self.scheduler.submit(lambda: self._generate(instruction, pos_examples))]
        )
        return entry, False

    async def lookup(self, key: str) -> Entry:
        """The adapter of a server-made id; an evicted one is regenerated (same id, same weights)."""
        entry = self.cache.get(key)
        if entry is not None:
            return entry
        recipe = self.cache.recipe(key)
        if recipe is None:
            raise ApiError(
                404,
                f"unknown adapter '{key[:64]}' (make one with POST /v1/adapters)",
                code="adapter_not_found",
            )
        entry, _ = await self.make_adapter(recipe["instruction"], recipe["pos_examples"])
        return entry

    async def peft_zip(self, key: str) -> bytes:
        entry = await self.lookup(key)
        return await asyncio.to_thread(peft_zip, entry.adapter, f"tagi-{entry.id}")  # a server-made name

    # ---- completions
    def _row(
        self, entry: Entry | None, text: str, max_tokens: int, sampling: dict, context: str | None
    ) -> Row:
        bb = self.tagi.backbone
        if entry is not None:
            ad = entry.adapter
            ins = ad.instruction if ad.mode != "none" else ""
            return Row(
                ad.weights, ins, format_source(text), ad.mode, max_tokens, **sampling, adapter_key=entry.id
            )
        if context:  # the base model with the instruction in the prompt (in-context baseline)
            # wrapped as a definition; the backbone truncates it to model.max_instruction_tokens
            ins = self.tagi.instruction_text(context)
            return Row(None, ins, format_source(text), "concat", max_tokens, **sampling)
        mode = "fuse" if bb.family == "causal" else "none"
        return Row(None, "", format_source(text), mode, max_tokens, **sampling)

    def _prompt_tokens(self, row: Row) -> int:
        bb = self.tagi.backbone
        if bb.family == "causal":
            return len(bb.prefix_ids(row.instruction, "fuse") + bb.suffix_ids(row.source))
        return len(bb.tokenizer(row.source)["input_ids"])

    def check_decoding(
        self, inputs: list[str], max_tokens: int | None, temperature: float, top_p: float
    ) -> int:
        if not inputs:
            raise ApiError(400, "no prompt given", code="empty_prompt")
        if len(inputs) > self.limits.max_prompts:
            raise ApiError(
                400,
                f"{len(inputs)} prompts in one request, the limit is {self.limits.max_prompts}",
                code="too_many_prompts",
            )
        longest = max(len(x) for x in inputs)
        if longest > self.limits.max_input_chars:
            raise ApiError(
                400,
                f"prompt of {longest} characters is over the limit of {self.limits.max_input_chars}",
                code="prompt_too_long",
            )
        limit = max_tokens if max_tokens is not None else min(self.default_tokens, self.max_tokens)
        if not 1 <= limit <= self.max_tokens:
            raise ApiError(
                400,
                f"max_tokens must be between 1 and {self.max_tokens} (got {limit})",
                code="max_tokens_out_of_range",
            )
        if temperature < 0 or not 0 < top_p <= 1:
            raise ApiError(400, f"need temperature >= 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")
        return limit

    async def submit(
        self,
        model: str,
        inputs: list[str],
        max_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        instruction: str | None = None,
        stream: bool = False,
    ) -> Pending:
        """Check and queue the rows of one request (every refusal happens here, before any response starts).

        With ``stream``, ``Pending.queue`` receives ``(row index, text piece)`` as the rows are decoded.
        """
        limit = self.check_decoding(inputs, max_tokens, temperature, top_p)
        entry = None if model == BASE else await self.lookup(model)
        if instruction is not None and entry is None:
            self._check_instruction(instruction, [])
        sampling = {"temperature": temperature, "top_p": top_p, "seed": seed}
        rows = [self._row(entry, x, limit, sampling, instruction) for x in inputs]
        queue: asyncio.Queue | None = asyncio.Queue() if stream else None
        if queue is not None:
            loop = asyncio.get_running_loop()
            for i, row in enumerate(rows):
                row.stream = partial(_threadsafe_put, loop, queue, i)
        try:
            futures = self.scheduler.submit_rows(rows)
        except QueueFull as e:
            raise ApiError(429, f"server busy: {e}; retry later", "rate_limit_error", "queue_full") from None
        return Pending(rows, futures, limit, queue)

    async def results(self, pending: Pending) -> list[Completion]:
        """Wait (with the timeout) for a submitted request's outputs."""
        outs = await self._wait(pending.futures)
        bb, done = self.tagi.backbone, []
        for row, text in zip(pending.rows, outs, strict=True):
            n = bb.output_tokens(text)
            done.append(
                Completion(text, self._prompt_tokens(row), n, "length" if n >= pending.limit else "stop")
            )
        self.metrics.tokens.inc(sum(c.completion_tokens for c in done))
        return done

    async def complete(self, model: str, inputs: list[str], **kwargs) -> list[Completion]:
        """Outputs of ``model`` (an adapter id or ``"base"``) for instance inputs, batched with others."""
        return await self.results(await self.submit(model, inputs, **kwargs))


@dataclass
class Pending:
    """A submitted request: its rows, their futures, its ``max_tokens`` and (streaming) its piece queue."""

    rows: list[Row]
    futures: list
    limit: int
    queue: asyncio.Queue | None = None


def _threadsafe_put(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, index: int, piece: str) -> None:
    """Called on the worker thread: hand a text piece to the request's event loop."""
    loop.call_soon_threadsafe(queue.put_nowait, (index, piece))
