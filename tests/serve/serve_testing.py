"""Helpers for the serve tests (a uniquely named module: `conftest` names collide across folders)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from tagi import Tagi
from tagi.config import HyperConfig
from tagi.model import TagiModel
from tagi.serve.app import create_app
from tagi.serve.runner import ServerThread
from tagi.serve.service import Limits, Service

HYPER = HyperConfig(rank=4, hidden=32, module_embed_dim=8)
INSTRUCTIONS = ["Reverse the words", "Copy the input", "Answer yes or no", "Translate to French"]
INPUTS = ["hello world", "abc def", "The cat sat on the mat!", "one two three"]
WAIT_S = 120  # only turns a hang into a failure; never a speed claim


def make_checkpoint(backbone, out: Path) -> Path:
    """A tiny 'trained' checkpoint (the same whatever ran before): B-heads randomised so every generated dW
    is clearly non-zero."""
    with torch.random.fork_rng():
        torch.manual_seed(7)
        model = TagiModel(backbone, HYPER)
        for head in model.hypernet.head_b.values():
            torch.nn.init.normal_(head.weight, std=0.05)
    return model.save(out)


@dataclass
class Live:
    url: str
    service: Service
    client: httpx.Client


@contextlib.contextmanager
def running_server(ckpt: Path, backbone, token: str | None = None, cors=(), **limits) -> Iterator[Live]:
    limits.setdefault("max_body_bytes", 100_000)
    service = Service(Tagi.from_checkpoint(ckpt, backbone=backbone), Limits(**limits))
    app = create_app(service, token=token, cors_origins=cors)
    try:
        with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=WAIT_S) as client:
            yield Live(srv.url, service, client)
    finally:
        service.close()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def worker_paused(service: Service) -> Iterator[None]:
    """Hold the model's worker thread inside the block, so requests pile up in the queue."""
    release, entered = threading.Event(), threading.Event()

    def hold():
        entered.set()
        release.wait(WAIT_S)

    service.scheduler.submit(hold)
    entered.wait(WAIT_S)
    try:
        yield
    finally:
        release.set()
