"""TAGI's student: a frozen backbone plus the trainable hypernetwork, and its checkpoint format.

``TagiModel.adapters(instructions)`` encodes each *distinct* instruction once with the frozen base
(optionally memoised in an :class:`InstructionCache` the caller owns — the encoding is frozen, so it
never goes stale) and runs the hypernetwork once per distinct instruction; examples of the same task
share one generated adapter (``LoraWeights.index``).

Checkpoint format (a folder, no pickle)::

    hypernet.safetensors   the hypernetwork's weights (only trainable parameters)
    tagi_config.json       {"format": 1, "model": ModelConfig, "hyper": HyperConfig,
                            "targets": [[name, kind, layer, in, out], ...], "family": ..., "sha256": ...}

It is loadable without the training config; loading checks that the base model offers the same target
modules with the same shapes, so a checkpoint for another base model is refused with a clear message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tagi.backbones import Backbone, load_backbone
from tagi.backbones.base import ModelBatch, PromptMode, pad_right
from tagi.config import Dtype, HyperConfig, ModelConfig, from_dict, to_dict
from tagi.encoders import SentenceEncoder
from tagi.errors import TagiError
from tagi.files import atomic_dir, file_sha256, read_config_json
from tagi.hypernet import HyperNetwork
from tagi.lora import LoraWeights

CKPT_WEIGHTS = "hypernet.safetensors"
CKPT_CONFIG = "tagi_config.json"
FORMAT_VERSION = 1


class CheckpointError(TagiError, OSError):
    """A hypernetwork checkpoint is missing, truncated, or made for another base model."""


class InstructionCache:
    """Frozen encodings of instruction texts, keyed by (encoder, text); owned by the caller.

    ``encoder`` is the backbone (its own instruction states: hypernetwork input and T5 FiD) or a
    :class:`~tagi.encoders.SentenceEncoder` (the hypernetwork's input with ``hyper.encoder=sentence``).
    """

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._states)

    def get(
        self, encoder: Backbone | SentenceEncoder, texts: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(states [N, T, H], mask [N, T])`` for the texts, encoding only the ones not seen before."""
        tag = getattr(encoder, "cache_key", "base")
        new = [t for t in dict.fromkeys(texts) if (tag, t) not in self._states]
        if new:
            ids, mask = encoder.collate_instructions(new)
            states = encoder.encode_instruction(ids.to(encoder.device), mask.to(encoder.device))
            for i, t in enumerate(new):
                self._states[(tag, t)] = states[i, : int(mask[i].sum())]
        return pad_states([self._states[(tag, t)] for t in texts])


def pad_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``[T_i, H]`` tensors to ``([N, T, H], [N, T])``."""
    lengths = [s.shape[0] for s in states]
    out = states[0].new_zeros(len(states), max(lengths), states[0].shape[-1])
    for i, s in enumerate(states):
        out[i, : s.shape[0]] = s
    mask = pad_right([[1] * n for n in lengths], 0)[0]
    return out, mask.to(out.device)


class TagiModel(nn.Module):
    """Backbone (frozen, not a submodule: never saved or optimised) + hypernetwork (trainable)."""

    def __init__(self, backbone: Backbone, hyper_cfg: HyperConfig) -> None:
        super().__init__()
        self.backbone = [backbone]  # a list hides it from nn.Module's parameter registry
        self.hyper_cfg = hyper_cfg
        self.reader: list[Backbone | SentenceEncoder] = [backbone]  # what reads the hypernetwork's input
        if hyper_cfg.encoder == "sentence":
            self.reader = [SentenceEncoder(hyper_cfg.sentence_encoder, backbone.device)]
        dim = self.reader[0].hidden_size
        self.hypernet = HyperNetwork(hyper_cfg, backbone.targets, dim).to(backbone.device)

    @property
    def bb(self) -> Backbone:
        return self.backbone[0]

    def adapters(self, instructions: Sequence[str], cache: InstructionCache | None = None) -> LoraWeights:
        """One generated adapter per example (``[N]``), computed once per distinct instruction."""
        unique = list(dict.fromkeys(instructions))
        states, mask = (cache if cache is not None else InstructionCache()).get(self.reader[0], unique)
        weights = self.hypernet(states, mask)  # [U]
        if len(unique) == len(instructions):
            return weights
        pos = {t: i for i, t in enumerate(unique)}
        return weights.index([pos[t] for t in instructions])

    def forward(
        self,
        batch: ModelBatch,
        instructions: Sequence[str],
        cache: InstructionCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, LoraWeights]:
        """Student logits at label positions ``[M, V]``, labels ``[M]``, rows ``[M]`` and the adapters."""
        weights = self.adapters(instructions, cache)
        logits, labels, rows = self.bb.forward(batch, weights, self.fuse_states(batch, instructions, cache))
        return logits, labels, rows, weights

    def fuse_states(
        self, batch: ModelBatch, instructions: Sequence[str], cache: InstructionCache | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached frozen encodings of a fused batch's instructions (``[N, Ti, H]``, ``[N, Ti]``) for the
        backbone's fusion (T5 FiD); None when the batch is not fused or there is no cache."""
        return cache.get(self.bb, instructions) if batch.fused and cache is not None else None

    def generate(self, examples, mode: PromptMode = "fuse", **kwargs) -> list[str]:
        """Generate for examples (any mix of tasks) with their generated adapters."""
        with torch.no_grad():
            weights = self.adapters([e.instruction for e in examples])
        if weights.batch_size > 1 and len({e.instruction for e in examples}) == 1:
            weights = weights.index([0])  # one task: one adapter, shared prefix cache
        return self.bb.generate(examples, weights, mode, **kwargs)

    # ---- checkpoint
    def config_dict(self) -> dict:
        targets = [[t.name, t.kind, t.layer, t.in_features, t.out_features] for t in self.bb.targets]
        return {
            "format": FORMAT_VERSION,
            "family": self.bb.family,
            "model": to_dict(self.bb.cfg),
            "hyper": to_dict(self.hyper_cfg),
            "targets": targets,
        }

    def save(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """Write the checkpoint folder atomically (temporary folder, then rename)."""
        with atomic_dir(out_dir) as tmp:
            state = {k: v.detach().contiguous().cpu() for k, v in self.hypernet.state_dict().items()}
            save_file(state, tmp / CKPT_WEIGHTS)
            cfg = self.config_dict() | {"sha256": file_sha256(tmp / CKPT_WEIGHTS)} | (extra or {})
            (tmp / CKPT_CONFIG).write_text(json.dumps(cfg, indent=2))
        return Path(out_dir)

    @classmethod
    def load(
        cls,
        ckpt_dir: str | Path,
        backbone: Backbone | None = None,
        device: str = "cpu",
        dtype: Dtype | None = None,
    ) -> TagiModel:
        """Load a checkpoint; the base model is loaded from its recorded config unless ``backbone`` is given.

        ``dtype`` runs the base model in another dtype than the one it was trained with (``model.dtype``
        of the checkpoint); the hypernetwork's weights are float32 either way.
        """
        cfg = read_checkpoint_config(ckpt_dir)
        if backbone is None:
            mcfg = from_dict(ModelConfig, cfg["model"] | ({"dtype": dtype} if dtype else {}))
            backbone = load_backbone(mcfg, device=device)
        mine = [[t.name, t.kind, t.layer, t.in_features, t.out_features] for t in backbone.targets]
        if mine != cfg["targets"]:
            raise CheckpointError(
                f"checkpoint {ckpt_dir} was made for base model '{cfg['model']['name']}' whose target modules "
                f"differ from those of '{backbone.cfg.name}'"
            )
        model = cls(backbone, from_dict(HyperConfig, cfg["hyper"]))
        path = Path(ckpt_dir) / CKPT_WEIGHTS
        if cfg.get("sha256") and file_sha256(path) != cfg["sha256"]:
            raise CheckpointError(f"checkpoint weights {path} are corrupt (checksum mismatch)")
        try:
            state = load_file(path)
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise CheckpointError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
        model.hypernet.load_state_dict(state)
        return model


def read_checkpoint_config(ckpt_dir: str | Path) -> dict:
    path = Path(ckpt_dir)
    cfg = read_config_json(path, CKPT_CONFIG, CKPT_WEIGHTS, "tagi checkpoint", CheckpointError)
    if cfg.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {cfg.get('format')}, expected {FORMAT_VERSION}")
    return cfg
