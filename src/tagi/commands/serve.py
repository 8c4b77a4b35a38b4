"""``tagi serve``: one process loads the base model and the hypernetwork once and serves adapters over HTTP.

See :mod:`tagi.serve` for the design (scheduler, cache, endpoints) and the README's "Serve" section.
Safe by default: it binds 127.0.0.1; any other address needs a bearer token (``--token`` or the
``TAGI_SERVE_TOKEN`` environment variable) and is refused without one, before anything is loaded.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Literal

from tagi.config import Dtype
from tagi.errors import TagiError

log = logging.getLogger("tagi.serve")
DEMO_CHECKPOINT = Path("runs/demo/finetune/final")


class ServeError(TagiError, ValueError):
    """A ``tagi serve`` option that cannot work (no checkpoint, an open bind without a token, ...)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def resolve_checkpoint(checkpoint: str | None) -> Path:
    if checkpoint is not None:
        return Path(checkpoint)
    if (DEMO_CHECKPOINT / "tagi_config.json").is_file():
        return DEMO_CHECKPOINT
    raise ServeError(
        f"no --checkpoint given and no demo checkpoint at {DEMO_CHECKPOINT}: run 'tagi demo' "
        "first, or pass --checkpoint DIR"
    )


LOWEST = {
    "max_batch": 1,
    "max_queue": 1,
    "join_min_rows": 1,
    "join_max_steps": 0,
    "cache_mb": 0,
    "prefix_cache_mb": 0,
}


def check_numbers(timeout: float, **counts: int) -> None:
    """``timeout`` > 0 and every count at least its :data:`LOWEST`: one line naming the option otherwise."""
    if not timeout > 0:
        raise ServeError(f"--timeout must be > 0, got {timeout}")
    for name, value in counts.items():
        if value < LOWEST[name]:
            raise ServeError(f"--{name.replace('_', '-')} must be >= {LOWEST[name]}, got {value}")


def check_bind(host: str, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise ServeError(
            f"refusing to serve on {host} without a token: pass --token (or set TAGI_SERVE_TOKEN), "
            "or bind 127.0.0.1"
        )


def serve(
    checkpoint: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    cors_origin: list[str] | None = None,
    max_batch: int = 16,
    max_queue: int = 256,
    max_tokens: int | None = None,
    max_body_bytes: int = 1_000_000,
    cache_mb: int = 512,
    prefix_cache_mb: int = 256,
    timeout: float = 120.0,
    join_min_rows: int = 4,
    join_max_steps: int = 4,
    prefill: Literal["fused", "packed", "padded"] = "fused",
    device: str = "cpu",
    dtype: Dtype | None = None,
) -> int:
    """Serve instant adapters over HTTP: a web page at /, an OpenAI-compatible API under /v1.

    Args:
        checkpoint: hypernetwork checkpoint folder (default: runs/demo/finetune/final from 'tagi demo').
        host: address to bind; anything but loopback needs --token.
        port: TCP port.
        token: bearer token required on /v1 and /metrics (default: $TAGI_SERVE_TOKEN; none on loopback).
        cors_origin: origins allowed to call the API from a browser (CORS is off by default).
        max_batch: requests (rows) decoded together, whatever their adapters.
        max_queue: rows allowed to wait; more get 429.
        max_tokens: largest max_tokens a request may ask (default: 256, or the model's max_target_tokens if larger).
        max_body_bytes: largest request body.
        cache_mb: memory for generated adapters (least recently used are dropped, and regenerated on use).
        prefix_cache_mb: memory for the key/value caches of adapters' instruction prefixes, computed when
            an adapter is made and reused by its requests (decoder-only models; 0 turns it off).
        timeout: seconds a request may wait for the model before a 408.
        join_min_rows: requests that arrive while a batch of at least this many rows decodes join it in
            groups of this many (one prefill for the group; 1 = each joins at the next step) ...
        join_max_steps: ... or once the oldest has waited this many decode steps.
        prefill: how requests join a running batch (decoder-only models): 'fused' prefills them as one
            sequence without padding in the same model call as the running rows' decode step; 'packed' as
            one sequence without padding, in a call of their own; 'padded' left-padded to the longest.
        device: torch device.
        dtype: run the base model in this dtype (default: the checkpoint's model.dtype); bfloat16 serves
            faster on CPUs with bfloat16 instructions, with outputs rounded differently from float32.
    """
    token = token or os.environ.get("TAGI_SERVE_TOKEN") or None
    check_bind(host, token)
    check_numbers(
        timeout,
        max_batch=max_batch,
        max_queue=max_queue,
        cache_mb=cache_mb,
        prefix_cache_mb=prefix_cache_mb,
        join_min_rows=join_min_rows,
        join_max_steps=join_max_steps,
    )
    path = resolve_checkpoint(checkpoint)
    import uvicorn

    from tagi import Tagi
    from tagi.serve.app import create_app
    from tagi.serve.runner import on_own_thread, uvicorn_config
    from tagi.serve.service import Limits, Service

    limits = Limits(
        max_body_bytes=max_body_bytes,
        max_tokens=max_tokens,
        max_batch=max_batch,
        max_queue=max_queue,
        timeout_s=timeout,
        cache_bytes=cache_mb * 2**20,
        prefix_cache_bytes=prefix_cache_mb * 2**20,
    )
    # loaded on a thread that ends, so that the scheduler's worker owns the only OpenMP pool (runner.py)
    service = Service(
        on_own_thread(Tagi.from_checkpoint, path, device=device, dtype=dtype),
        limits,
        join_min_rows=join_min_rows,
        join_max_steps=join_max_steps,
        prefill=prefill,
    )
    app = create_app(service, token=token, cors_origins=cors_origin or ())
    print(
        f"tagi serve: http://{host}:{port}/  (checkpoint {path}, base model {service.base_name} in "
        f"{service.tagi.backbone.cfg.dtype}"
        f"{', bearer token required' if token else ''}; Ctrl-C stops)",
        flush=True,
    )
    try:
        uvicorn.Server(uvicorn_config(app, host, port)).run()
    finally:
        service.close()
    return 0
