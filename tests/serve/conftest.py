"""Serve fixtures: a tiny random checkpoint (tiny-llama), its service and a live server on a free port."""

from __future__ import annotations

import pytest
from serve_testing import make_checkpoint, running_server


@pytest.fixture(scope="session")
def serve_ckpt(backbones, tmp_path_factory):
    return make_checkpoint(backbones["tiny-llama"], tmp_path_factory.mktemp("serve") / "ckpt")


@pytest.fixture(scope="module")
def server(serve_ckpt, backbones):
    """The default server (no token, default limits except a small body limit) for a test module."""
    with running_server(serve_ckpt, backbones["tiny-llama"]) as srv:
        yield srv
