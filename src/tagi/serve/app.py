"""The HTTP app (FastAPI): the adapter endpoints, health, metrics, the web page, and the safety layers.

Routes (the OpenAI-shaped ones are in :mod:`tagi.serve.openai_api`)::

    GET  /                          the web page (static/index.html + app.js + style.css, no CDN)
    GET  /healthz                   liveness: base model, checkpoint, cached adapters, queue depth
    GET  /metrics                   Prometheus text format
    GET  /v1/tasks                  built-in held-out tasks (name, definition, example inputs) for the page
    POST /v1/adapters               {"instruction", "pos_examples"?: [{"input", "output"}]} -> adapter info
    GET  /v1/adapters/{id}          adapter info (id, rank, bytes, generation time, truncation, ...)
    GET  /v1/adapters/{id}/peft.zip the PEFT folder + tagi.json, the files ``tagi generate`` writes
    GET  /v1/models                 "base" and the cached adapters (OpenAI's list shape)
    POST /v1/completions, /v1/chat/completions

Safety: with a ``token`` every ``/v1`` route and ``/metrics`` need ``Authorization: Bearer <token>``
(compared in constant time); request bodies over ``max_body_bytes`` are refused with 413 while they are
read; CORS is off unless origins are given; every error is a JSON body ``{"error": {"message", "type",
"code"}}`` with a 4xx status (5xx only for a server fault). Clients name adapters only by server-made ids.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from tagi.data.builtin import BUILTIN_TEST, make_builtin_task
from tagi.errors import TagiError
from tagi.serve.openai_api import install_openai_routes
from tagi.serve.service import ApiError, Service

STATIC = Path(str(resources.files("tagi.serve") / "static"))


class PosExample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str
    output: str


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instruction: str
    pos_examples: list[PosExample] = []


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Pure ASGI middleware: refuse bodies over ``max_bytes`` by header, or while they are being read."""

    def __init__(self, app, max_bytes: int, on_refuse: Callable[[str, float], None] | None = None) -> None:
        self.app, self.max_bytes, self.on_refuse = app, max_bytes, on_refuse

    async def _refuse(self, scope, receive, send, t0: float) -> None:
        error = ApiError(413, f"request body over the limit of {self.max_bytes} bytes", code="body_too_large")
        await JSONResponse(error.body(), 413)(scope, receive, send)
        if self.on_refuse is not None:
            self.on_refuse(scope.get("path", ""), time.perf_counter() - t0)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(scope, receive, send, t0)
        seen, started = 0, False

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except _BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send, t0)


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return "request body is not valid JSON"
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return f"invalid request: {where}: {first.get('msg', 'invalid')}"


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(ApiError(400, _validation_message(exc), code="invalid_request").body(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(
            ApiError(exc.status_code, str(exc.detail), kind).body(),
            exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(TagiError)
    async def tagi_error(request: Request, exc: TagiError):
        return JSONResponse(ApiError(400, str(exc)).body(), 400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        return JSONResponse(
            ApiError(500, f"internal error: {type(exc).__name__}", "server_error").body(), 500
        )


def bearer_guard(token: str | None):
    """A dependency refusing requests without ``Authorization: Bearer <token>`` (when a token is set)."""
    expected = token.encode() if token else None

    async def guard(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise ApiError(
                401,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
                "authentication_error",
                "unauthorized",
            )

    return guard


def _install_metrics(app: FastAPI, service: Service) -> None:
    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "other")
        service.metrics.observe_request(endpoint, response.status_code, time.perf_counter() - t0)
        return response


def _builtin_tasks() -> list[dict]:
    out = []
    for name in BUILTIN_TEST:
        task = make_builtin_task(name, num_instances=3)
        out.append(
            {
                "name": name,
                "definition": task.definition,
                "inputs": [i.input for i in task.instances],
                "pos_examples": [{"input": e.input, "output": e.output} for e in task.positive_examples],
            }
        )
    return out


def _install_adapter_routes(app: FastAPI, service: Service, guard) -> None:
    auth = [Depends(guard)]
    tasks = _builtin_tasks()

    @app.post("/v1/adapters", dependencies=auth)
    async def make_adapter(req: AdapterRequest):
        entry, cached = await service.make_adapter(
            req.instruction, [e.model_dump() for e in req.pos_examples]
        )
        return entry.info() | {"cached": cached}

    @app.get("/v1/adapters/{adapter_id}", dependencies=auth)
    async def adapter_info(adapter_id: str):
        return (await service.lookup(adapter_id)).info()

    @app.get("/v1/adapters/{adapter_id}/peft.zip", dependencies=auth)
    async def adapter_zip(adapter_id: str):
        data = await service.peft_zip(adapter_id)  # 404 unless the id is one this server made
        name = f"tagi-{adapter_id}.zip"
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/v1/models", dependencies=auth)
    async def models():
        data = [{"id": "base", "object": "model", "owned_by": "tagi", "created": 0}]
        data += [
            {"id": e.id, "object": "model", "owned_by": "tagi", "created": e.created}
            for e in service.cache.entries()
        ]
        return {"object": "list", "data": data}

    @app.get("/v1/tasks", dependencies=auth)
    async def builtin_tasks():
        return {"tasks": tasks}


def create_app(service: Service, token: str | None = None, cors_origins: list[str] | tuple = ()) -> FastAPI:
    """The FastAPI app around a :class:`Service` (see the module docstring)."""
    app = FastAPI(title="tagi serve", docs_url=None, redoc_url=None, openapi_url=None)
    guard = bearer_guard(token)
    _install_errors(app)
    _install_metrics(app, service)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )

    def refused(path: str, seconds: float) -> None:  # a known route's path, never a client's free text
        known = {getattr(r, "path", None) for r in app.routes}
        service.metrics.observe_request(path if path in known else "other", 413, seconds)

    app.add_middleware(BodyLimit, max_bytes=service.limits.max_body_bytes, on_refuse=refused)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz")
    async def healthz():
        return {
            "status": "ok",
            "base_model": service.base_name,
            "checkpoint_sha256": service.tagi.checkpoint_sha256,
            "auth": token is not None,
            "adapters_cached": len(service.cache),
            "queue_depth": service.scheduler.depth(),
            "max_tokens": service.max_tokens,
            "default_max_tokens": service.default_tokens,
        }

    @app.get("/metrics", dependencies=[Depends(guard)])
    async def metrics():
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    _install_adapter_routes(app, service, guard)
    install_openai_routes(app, service, guard)
    app.state.service = service
    return app
