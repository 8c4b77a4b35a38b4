"""The teacher side of distillation: stacked teacher adapters and the on-disk top-k logit cache.

The teacher of a task is the frozen base plus the task's teacher LoRA (its category's, or its own) reading
the full instruction in context (prompt mode ``concat``). Its label tokens are the student's — the same
reference output tokenised the same way — so the KL pairs the flat ``[M, V]`` logits of both in order
(checked: any mismatch raises instead of silently comparing wrong positions).

**Top-k cache** (``finetune.teacher_cache`` with ``loss.kl_topk = k``): the teacher's ``k`` largest logits
per label token are computed once for every training example the run will draw (no gradient, batched by
length; the sampler is a pure function of the seed, so the examples of all ``max_steps`` steps are known
in advance and a short run does not pay for the whole dataset) and stored with safetensors under
``<stage>/teacher_cache/``::

    topk.safetensors   idx [M, k] int32, vals [M, k] float32 (raw logits), labels [M], offsets [N + 1],
                       ids [N] (the dataset index of each cached example)
    meta.json          {"fingerprint": ...}   (base model, teacher files, examples, k, precision)

Cached example ``j`` (dataset index ``ids[j]``) owns rows ``offsets[j]:offsets[j+1]``. At a step the teacher distribution is
``log_softmax(vals / tau)`` over its top-k — exactly what :func:`tagi.losses.teacher_topk` computes on
the fly — so the cached and the on-the-fly KL agree up to the float noise of different batch padding
during the teacher's forward pass (measured: 6e-8 relative per micro-batch; the test checks 1e-5). A cache
whose fingerprint does not match is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tagi.backbones import Backbone, PromptExample
from tagi.errors import TagiError
from tagi.files import atomic_dir, file_sha256
from tagi.lora import LoraWeights
from tagi.train import dist
from tagi.train.teachers import INDEX

CACHE_FILE = "topk.safetensors"
CACHE_META = "meta.json"


class TeacherSet:
    """All teacher adapters stacked into one ``[G]`` batch, with the task -> group map of the index."""

    def __init__(self, index: dict, adapters: dict[str, LoraWeights], device: torch.device) -> None:
        self.groups = sorted(adapters)
        self.row = {g: i for i, g in enumerate(self.groups)}
        self.task_group: dict[str, str] = index["tasks"]
        self.num_pos: int = int(index.get("num_pos", 2))
        self.stacked = LoraWeights.stack([adapters[g] for g in self.groups]).to(device)
        self.rank = self.stacked.rank

    def rows(self, task_names: Sequence[str]) -> list[int]:
        out = []
        for name in task_names:
            group = self.task_group.get(name)
            if group is None or group not in self.row:
                raise TagiError(
                    f"no teacher for task {name!r} in the teachers folder; re-run `tagi train-teachers` "
                    "with the same data settings"
                )
            out.append(self.row[group])
        return out

    def adapters(self, task_names: Sequence[str]) -> LoraWeights:
        """One teacher adapter per example: ``[N]``."""
        return self.stacked.index(self.rows(task_names))


def teacher_logits(
    backbone: Backbone, teachers: TeacherSet, examples: Sequence[PromptExample], task_names: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher logits ``[M, V]``, labels ``[M]`` and rows ``[M]`` (no gradient; instruction in context)."""
    batch = backbone.collate(examples, "concat").to(backbone.device)
    with torch.no_grad():
        return backbone.forward(batch, teachers.adapters(task_names))


def check_same_labels(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape or not torch.equal(student, teacher.to(student.device)):
        raise TagiError(
            f"teacher and student label tokens differ ({teacher.numel()} vs {student.numel()} tokens): the KL "
            "would compare different positions (were the teachers made with another base model?)"
        )


def topk_log_probs(vals: torch.Tensor, tau: float) -> torch.Tensor:
    """Teacher log-probabilities at temperature ``tau`` renormalised on its top-k logits ``vals [M, k]``."""
    return F.log_softmax(vals.float() / tau, dim=-1)


class TopkCache:
    """Teacher top-k logits of every training example (see the module docstring for the layout)."""

    def __init__(
        self,
        idx: torch.Tensor,
        vals: torch.Tensor,
        labels: torch.Tensor,
        offsets: torch.Tensor,
        ids: torch.Tensor | None = None,
    ) -> None:
        self.idx, self.vals, self.labels, self.offsets = idx, vals, labels, offsets
        self._off = offsets.tolist()
        self.ids = torch.arange(len(self._off) - 1) if ids is None else ids
        self._pos = {int(i): j for j, i in enumerate(self.ids.tolist())}

    def __len__(self) -> int:
        return len(self._off) - 1

    def _row(self, index: int) -> int:
        if index not in self._pos:
            raise TagiError(f"training example {index} is not in the teacher cache (rebuild it)")
        return self._pos[index]

    def gather(self, indices: Sequence[int], device: torch.device) -> tuple[torch.Tensor, ...]:
        """``(idx [M, k] long, vals [M, k], labels [M])`` of the examples (dataset indices), in order."""
        pos = [self._row(i) for i in indices]
        rows = torch.cat([torch.arange(self._off[j], self._off[j + 1]) for j in pos])
        return self.idx[rows].long().to(device), self.vals[rows].to(device), self.labels[rows].to(device)

    @classmethod
    def build(
        cls,
        backbone: Backbone,
        teachers: TeacherSet,
        examples: Sequence[PromptExample],
        task_names: Sequence[str],
        k: int,
        batch_size: int,
        autocast: Callable[[], AbstractContextManager],
        ids: Sequence[int] | None = None,
    ) -> TopkCache:
        """Run the teacher once over the examples (length-sorted batches) and keep its top-k logits.

        ``ids`` are the dataset indices of ``examples`` (default ``0..N-1``).
        """
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].source) + len(examples[i].target))
        per: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = [None] * len(examples)  # type: ignore[list-item]
        for s in range(0, len(order), batch_size):
            chunk = order[s : s + batch_size]
            with autocast():
                logits, labels, rows = teacher_logits(
                    backbone, teachers, [examples[i] for i in chunk], [task_names[i] for i in chunk]
                )
            vals, idx = logits.float().topk(k, dim=-1)  # as tagi.losses.teacher_topk
            for j, i in enumerate(chunk):
                sel = rows == j
                per[i] = (idx[sel].to(torch.int32).cpu(), vals[sel].cpu(), labels[sel].cpu())
        lengths = torch.tensor([0] + [p[2].numel() for p in per])
        return cls(
            torch.cat([p[0] for p in per]),
            torch.cat([p[1] for p in per]),
            torch.cat([p[2] for p in per]),
            lengths.cumsum(0),
            None if ids is None else torch.tensor(list(ids), dtype=torch.long),
        )

    def save(self, folder: Path, fingerprint: str) -> None:
        tensors = {"idx": self.idx, "vals": self.vals, "labels": self.labels, "offsets": self.offsets}
        tensors["ids"] = self.ids
        with atomic_dir(folder) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / CACHE_FILE)
            (tmp / CACHE_META).write_text(json.dumps({"fingerprint": fingerprint, "examples": len(self)}))

    @staticmethod
    def matches(folder: Path, fingerprint: str) -> bool:
        """True when ``folder`` holds a complete cache made for ``fingerprint``."""
        meta = folder / CACHE_META
        return meta.is_file() and json.loads(meta.read_text()).get("fingerprint") == fingerprint

    @classmethod
    def load(cls, folder: Path, fingerprint: str) -> TopkCache | None:
        """The cache in ``folder`` if it exists and was made for ``fingerprint``, else None."""
        if not cls.matches(folder, fingerprint):
            return None
        t = load_file(folder / CACHE_FILE)
        return cls(t["idx"], t["vals"], t["labels"], t["offsets"], t.get("ids"))


def cache_fingerprint(
    backbone: Backbone,
    teachers_dir: Path,
    examples: Sequence[PromptExample],
    k: int,
    precision: str,
    ids: Sequence[int] | None = None,
) -> str:
    """Hash of everything the cached logits depend on (``ids``: the dataset indices of ``examples``)."""
    index = json.loads((teachers_dir / INDEX).read_text())
    files = {
        g: file_sha256(teachers_dir / f / "adapter_model.safetensors") for g, f in index["groups"].items()
    }
    h = hashlib.sha256()
    h.update(json.dumps([backbone.source, backbone.cfg.dtype, k, precision, files, index["tasks"]]).encode())
    for e in examples:
        h.update(json.dumps([e.instruction, e.source, e.target]).encode())
    if ids is not None:
        h.update(json.dumps(list(ids)).encode())
    return h.hexdigest()


def load_or_build_cache(
    folder: Path,
    fingerprint: str,
    build: Callable[[], TopkCache],
    info: dist.DistInfo,
) -> TopkCache:
    """Rank 0 builds and saves the cache unless a matching one exists; every rank then reads it."""
    if info.is_main and not TopkCache.matches(folder, fingerprint):
        build().save(folder, fingerprint)
    dist.barrier(info)
    cache = TopkCache.load(folder, fingerprint)
    if cache is None:
        raise TagiError(f"teacher cache in {folder} could not be read back")
    return cache
