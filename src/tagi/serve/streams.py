"""Streaming: a decoded row's tokens -> text pieces, sent as they are decoded (server-sent events)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger("tagi.serve")


class TextStream:
    """One row's tokens -> text pieces whose concatenation is the row's final output (``backbone._decode``:
    cut at the first stop token, special tokens skipped, stripped). A piece is sent once the decoded text
    extends what was sent; an incomplete UTF-8 character or trailing whitespace waits for the next token."""

    def __init__(self, tokenizer, stop_ids: set[int], emit: Callable[[str], None]) -> None:
        self.tokenizer, self.stop_ids, self.emit = tokenizer, stop_ids, emit
        self.ids: list[int] = []
        self.sent, self.stopped = "", False

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            piece, self.sent = text[len(self.sent) :], text
            try:
                self.emit(piece)
            except Exception:  # noqa: BLE001 - a gone listener never breaks the batch
                log.debug("stream listener failed", exc_info=True)

    def push(self, token: int) -> None:
        if self.stopped or token in self.stop_ids:
            self.stopped = True
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
        if not text.endswith("\ufffd"):
            self._send(text)

    def finish(self, final: str) -> None:
        self._send(final)


def push_tokens(streams: dict[int, TextStream], alive: torch.Tensor, tokens: torch.Tensor) -> None:
    """``on_step`` of the decode loop: each streamed row still decoding gets its new token."""
    for i, t in zip(alive.tolist(), tokens.tolist()):
        if i in streams:
            streams[i].push(t)
