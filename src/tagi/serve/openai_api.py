"""``POST /v1/completions`` and ``POST /v1/chat/completions`` in OpenAI's request and response shapes.

``"model"`` is an adapter id from ``POST /v1/adapters`` or ``"base"`` (the base model, no adapter). The
prompt of a completion (each string of ``prompt``; for chat, the last user message) is the task *input*:
the server wraps it as tagi does (``"Now complete the following example - Input: ...  Output: "``, after the
adapter's instruction when the adapter fuses it), so outputs equal ``tagi predict`` for the same adapter
and inputs. ``"base"`` takes an optional tagi extension ``"instruction"`` (for chat, a system message) to
put a task definition in the prompt — the in-context baseline the web page shows next to the adapter.

Greedy by default (OpenAI's default temperature is 1; tagi's is 0); ``temperature``, ``top_p``, ``seed``
and ``max_tokens`` are honoured. ``stream: true`` answers with server-sent events in OpenAI's chunk shape,
ending with ``data: [DONE]``; the text arrives in one chunk when its batch row finishes (the batched decode
loop does not yet hand out tokens step by step). ``n`` > 1 and ``stop`` sequences are refused with 400.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from fastapi import Depends, FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from tagi.serve.service import ApiError, Completion, Service


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
        return {"max_tokens": self.max_tokens if self.max_tokens is not None else self.max_completion_tokens,
                "temperature": self.temperature or 0.0, "top_p": 1.0 if self.top_p is None else self.top_p,
                "seed": self.seed}  # fmt: skip


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


def _sse(events: list[dict]) -> StreamingResponse:
    from tagi.serve.app import dumps_event

    async def stream():
        for e in events:
            yield dumps_event(e)
        yield dumps_event("[DONE]")

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _completion_body(req: CompletionRequest, done: list[Completion]) -> dict | StreamingResponse:
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": req.model}  # fmt: skip
    if not req.stream:
        choices = [{"index": i, "text": d.text, "finish_reason": d.finish_reason, "logprobs": None}
                   for i, d in enumerate(done)]  # fmt: skip
        return head | {"choices": choices, "usage": _usage(done)}
    events = [head | {"choices": [{"index": i, "text": d.text, "finish_reason": None, "logprobs": None}]}
              for i, d in enumerate(done)]  # fmt: skip
    events += [head | {"choices": [{"index": i, "text": "", "finish_reason": d.finish_reason, "logprobs": None}]}
               for i, d in enumerate(done)]  # fmt: skip
    return _sse(events)


def _chat_body(req: ChatRequest, d: Completion) -> dict | StreamingResponse:
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model}
    if not req.stream:
        message = {"role": "assistant", "content": d.text}
        return head | {"object": "chat.completion", "usage": _usage([d]),
                       "choices": [{"index": 0, "message": message, "finish_reason": d.finish_reason}]}  # fmt: skip
    chunk = head | {"object": "chat.completion.chunk"}
    deltas = [
        ({"role": "assistant", "content": ""}, None),
        ({"content": d.text}, None),
        ({}, d.finish_reason),
    ]
    return _sse([chunk | {"choices": [{"index": 0, "delta": delta, "finish_reason": why}]}
                 for delta, why in deltas])  # fmt: skip


def install_openai_routes(app: FastAPI, service: Service, guard) -> None:
    auth = [Depends(guard)]

    @app.post("/v1/completions", dependencies=auth)
    async def completions(req: CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        done = await service.complete(req.model, prompts, instruction=req.instruction, **req.decoding())
        return _completion_body(req, done)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat(req: ChatRequest):
        context = req.context() if req.model == "base" else None
        (done,) = await service.complete(req.model, [req.input_text()], instruction=context, **req.decoding())
        return _chat_body(req, done)
