"""Running the app with uvicorn: in the foreground (``tagi serve``) or in a background thread (tests,
benchmarks), on a port the OS picks when none is given; and :func:`on_own_thread` for the model work a
serving process does outside the scheduler's worker (loading the model, say).

Why that matters on a CPU: with torch's OpenMP build, every thread that runs parallel torch work keeps its
own OpenMP thread pool for as long as it lives. Once two pools exist (the loading thread's and the worker's)
libgomp manages more threads than there are cores and switches every barrier to a short, throttled spin,
so each parallel region waits on a sleeping thread: on the 2-core reference machine a model call on the
worker then uses about 1.5 of the 2 cores and takes 1.3-1.6x longer (``benchmarks/openmp_pools.py``). A
thread that ends takes its pool with it, so loading on one leaves the worker's pool the only one.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import uvicorn

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def on_own_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on a thread that ends when it returns (the module docstring says why): its
    result, or its exception re-raised here."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    thread = threading.Thread(target=run, name="tagi-load", daemon=True)  # Ctrl-C while loading still exits
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def uvicorn_config(app, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )


class ServerThread:
    """``with ServerThread(app) as server:`` serves ``app`` on ``server.url`` until the block ends."""

    def __init__(
        self, app, host: str = "127.0.0.1", port: int | None = None, start_timeout: float = 120
    ) -> None:
        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn_config(app, self.host, self.port))
        self.thread = threading.Thread(target=self.server.run, name="tagi-serve-http", daemon=True)
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout  # only turns a hang into an error
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
