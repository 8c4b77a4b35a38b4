"""``tagi.serve.runner.on_own_thread``: the call runs on a thread of its own, which has ended when it returns
(so the OpenMP pool that thread made goes with it), and ``tagi serve`` loads its model that way."""

from __future__ import annotations

import threading

import pytest
import uvicorn

from tagi import Tagi
from tagi.cli import main as cli_main
from tagi.serve.runner import on_own_thread


def test_the_call_runs_on_a_thread_that_has_ended():
    seen = {}

    def add(a, b=0):
        seen["thread"] = threading.current_thread()
        return a + b

    assert on_own_thread(add, 2, b=3) == 5
    assert seen["thread"] is not threading.current_thread()
    assert not seen["thread"].is_alive()


def test_its_error_is_raised_in_the_caller():
    def fail():
        raise ValueError("no such checkpoint")

    with pytest.raises(ValueError, match="no such checkpoint"):
        on_own_thread(fail)


def test_tagi_serve_loads_the_model_on_a_thread_that_ends(serve_ckpt, monkeypatch):
    loaded, served = {}, {}
    load = Tagi.from_checkpoint

    def recording_load(path, device="cpu", backbone=None, dtype=None):
        loaded["thread"], loaded["dtype"] = threading.current_thread(), dtype
        return load(path, device=device, backbone=backbone, dtype=dtype)

    def no_serving(self, *args, **kwargs):  # the server would block; the service is built by now
        served["thread"] = threading.current_thread()

    monkeypatch.setattr(Tagi, "from_checkpoint", staticmethod(recording_load))
    monkeypatch.setattr(uvicorn.Server, "run", no_serving)
    assert cli_main(["serve", "--checkpoint", str(serve_ckpt), "--port", "0"]) == 0
    assert served["thread"] is threading.current_thread()
    assert loaded["thread"] is not threading.current_thread() and not loaded["thread"].is_alive()
    assert loaded["dtype"] is None  # the checkpoint's own model.dtype
    assert cli_main(["serve", "--checkpoint", str(serve_ckpt), "--port", "0", "--dtype", "bfloat16"]) == 0
    assert loaded["dtype"] == "bfloat16"
