"""``POST /v1/completions`` and ``POST /v1/chat/completions`` in OpenAI's request and response shapes.

``"model"`` is an adapter id from ``POST /v1/adapters`` or ``"base"`` (the base model, no adapter). The
prompt of a completion (each string of ``prompt``; for chat, the last user message) is the task *input*:
the server wraps it as tagi does (``"Now complete the following example - Input: ...  Output: "``, after the
adapter's instruction when the adapter fuses it), so outputs equal ``tagi predict`` for the same adapter
and inputs. ``"base"`` takes an optional tagi extension ``"instruction"`` (for chat, a system message) to
put a task definition in the prompt — the in-context baseline the web page shows next to the adapter.

Greedy by default (OpenAI's default temperature is 1; tagi's is 0); ``temperature``, ``top_p``, ``seed``
and ``max_tokens`` are honoured. ``stream: true`` answers with server-sent events in OpenAI's chunk shape,
ending with ``data: [DONE]``: decoder-only models send the text piece by piece as the batched decode loop
produces it (:class:`~tagi.serve.streams.TextStream`), T5 when its batch ends; an error after the stream
has started is sent as an ``{"error": ...}`` event. ``n`` > 1 and ``stop`` sequences are refused with 400.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import Depends, FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from tagi.serve.service import ApiError, Completion, Pending, Service


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send more fields than tagi uses
    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stream: bool = False
    n: int | None = None
    stop: str | list[str] | None = None
    instruction: str | None = None  # tagi extension for "model": "base"

    def decoding(self) -> dict[str, Any]:
        if self.n not in (None, 1):
            raise ApiError(
                400, "n > 1 is not supported (send the prompt again with a seed)", code="unsupported"
            )
        if self.stop:
            raise ApiError(400, "stop sequences are not supported", code="unsupported")
        return {
            "max_tokens": self.max_tokens if self.max_tokens is not None else self.max_completion_tokens,
            "temperature": self.temperature or 0.0,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "seed": self.seed,
        }


class CompletionRequest(_Common):
    prompt: str | list[str]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(_Common):
    messages: list[ChatMessage]

    def input_text(self) -> str:
        users = [m for m in self.messages if m.role == "user"]
        if not users:
            raise ApiError(
                400, "messages need a user message (its text is the task input)", code="no_user_message"
            )
        return users[-1].text()

    def context(self) -> str | None:
        system = [m.text() for m in self.messages if m.role in ("system", "developer") and m.text().strip()]
        return self.instruction if self.instruction is not None else (system[-1] if system else None)


def _usage(done: list[Completion]) -> dict[str, int]:
    p, c = sum(d.prompt_tokens for d in done), sum(d.completion_tokens for d in done)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def dumps_event(payload: dict | str) -> str:
    """One server-sent event line (``data: <json>``)."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


async def _events(service: Service, pending: Pending, first: list[dict], piece, final) -> AsyncIterator[str]:
    """Server-sent events: ``first``, a chunk per decoded text piece (``piece(row, text)``) as the worker
    produces it, the closing chunks (``final(completions)``) or an error object, then ``[DONE]``."""
    queue = pending.queue

    async def finish() -> None:
        try:
            queue.put_nowait(("end", await service.results(pending)))
        except ApiError as e:
            queue.put_nowait(("error", e))
        except Exception as e:  # noqa: BLE001 - reported in the stream, which has already started
            queue.put_nowait(("error", ApiError(500, f"internal error: {type(e).__name__}", "server_error")))

    task = asyncio.create_task(finish())
    try:
        for event in first:
            yield dumps_event(event)
        while True:
            kind, payload = await queue.get()
            if kind == "error":
                yield dumps_event(payload.body())
                break
            for event in final(payload) if kind == "end" else [piece(kind, payload)]:
                yield dumps_event(event)
            if kind == "end":
                break
        yield dumps_event("[DONE]")
    finally:
        task.cancel()  # a client that went away: its rows still waiting are dropped


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _completion_head(req: CompletionRequest) -> dict:
    """The fields every text-completion response (or stream chunk) of one request starts with."""
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": req.model,
    }


def _completion_body(req: CompletionRequest, done: list[Completion]) -> dict:
    head = _completion_head(req)
    choices = [
        {"index": i, "text": d.text, "finish_reason": d.finish_reason, "logprobs": None}
        for i, d in enumerate(done)
    ]
    return head | {"choices": choices, "usage": _usage(done)}


def _completion_stream(service: Service, req: CompletionRequest, pending: Pending) -> StreamingResponse:
    head = _completion_head(req)

    def choice(i: int, text: str, why: str | None) -> dict:
        return head | {"choices": [{"index": i, "text": text, "finish_reason": why, "logprobs": None}]}

    return _sse(
        _events(
            service,
            pending,
            [],
            lambda i, text: choice(i, text, None),
            lambda done: [choice(i, "", d.finish_reason) for i, d in enumerate(done)],
        )
    )


def _chat_body(req: ChatRequest, d: Completion) -> dict:
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model}
    message = {"role": "assistant", "content": d.text}
    return head | {
        "object": "chat.completion",
        "usage": _usage([d]),
        "choices": [{"index": 0, "message": message, "finish_reason": d.finish_reason}],
    }


def _chat_stream(service: Service, req: ChatRequest, pending: Pending) -> StreamingResponse:
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": req.model,
    }

    def chunk(delta: dict, why: str | None) -> dict:
        return head | {"choices": [{"index": 0, "delta": delta, "finish_reason": why}]}

    first = [chunk({"role": "assistant", "content": ""}, None)]
    return _sse(
        _events(
            service,
            pending,
            first,
            lambda i, text: chunk({"content": text}, None),
            lambda done: [chunk({}, done[0].finish_reason)],
        )
    )


def install_openai_routes(app: FastAPI, service: Service, guard) -> None:
    auth = [Depends(guard)]

    @app.post("/v1/completions", dependencies=auth)
    async def completions(req: CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        pending = await service.submit(
            req.model, prompts, instruction=req.instruction, stream=req.stream, **req.decoding()
        )
        if req.stream:
            return _completion_stream(service, req, pending)
        return _completion_body(req, await service.results(pending))

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat(req: ChatRequest):
        context = req.context() if req.model == "base" else None
        pending = await service.submit(
            req.model, [req.input_text()], instruction=context, stream=req.stream, **req.decoding()
        )
        if req.stream:
            return _chat_stream(service, req, pending)
        (done,) = await service.results(pending)
        return _chat_body(req, done)
