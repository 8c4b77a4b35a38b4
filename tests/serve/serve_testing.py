"""Helpers for the serve tests (a uniquely named module: `conftest` names collide across folders)."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from tagi import Tagi
from tagi.cli import main as cli_main
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


def predict_downloaded(
    client: httpx.Client, adapters: list[str], root: Path, max_tokens: int, batch_size: int = 16
) -> dict:
    """``tagi predict --adapter DIR`` on each adapter's downloaded PEFT folder (which reloads the base model
    as the adapter records it): {(adapter id, input): output} over :data:`INPUTS`."""
    out = {}
    for key in adapters:
        zipfile.ZipFile(io.BytesIO(client.get(f"/v1/adapters/{key}/peft.zip").content)).extractall(root)
        rows = root / f"{key}.jsonl"
        argv = ["predict", "--adapter", str(root / f"tagi-{key}"), "--input", *INPUTS,
                "--max-new-tokens", str(max_tokens), "--output", str(rows), "--batch-size", str(batch_size)]  # fmt: skip
        assert cli_main(argv) == 0
        for line in rows.read_text().splitlines():
            row = json.loads(line)
            out[key, row["input"]] = row["output"]
    return out


def complete(client: httpx.Client, key: str, text: str, max_tokens: int) -> str:
    r = client.post("/v1/completions", json={"model": key, "prompt": text, "max_tokens": max_tokens})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def run_clients(url: str, adapters: list[str], n: int, max_tokens: int) -> dict[tuple[int, str], str]:
    """``n`` clients in threads, client ``i`` on adapter ``i % len(adapters)``, each over all inputs."""
    results, errors = {}, []

    def client(i: int) -> None:
        try:
            with httpx.Client(base_url=url, timeout=WAIT_S) as c:
                for text in INPUTS:
                    results[i, text] = complete(c, adapters[i % len(adapters)], text, max_tokens)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not errors, errors
    return results


def decode_queued(srv: Live, jobs: list[tuple[str, str]], max_tokens: int) -> tuple[list, list[str]]:
    """Queue one completion per ``(adapter id, input)`` while the worker is held, then let them decode
    together: the worker's model calls ``[(kind, rows)]`` from then on, and each job's output."""
    scheduler, calls, results = srv.service.scheduler, [], {}
    observe = scheduler.on_batch

    def one(i: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=WAIT_S) as c:
            results[i] = complete(c, *jobs[i], max_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    with worker_paused(srv.service):  # the requests wait in the queue together
        scheduler.on_batch = lambda kind, rows, sec: (calls.append((kind, rows)), observe(kind, rows, sec))
        for t in threads:
            t.start()
        wait_until(lambda: scheduler.depth() == len(jobs), f"{len(jobs)} queued rows")
    try:
        for t in threads:
            t.join(WAIT_S)
    finally:
        scheduler.on_batch = observe
    return calls, [results.get(i) for i in range(len(jobs))]
