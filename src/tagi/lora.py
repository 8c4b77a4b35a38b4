"""Batched per-example LoRA on the target modules of a frozen model, plus merge and PEFT key mapping.

For a target linear layer ``y = W x`` (``W: [out, in]``) and example ``n`` of a batch carrying its own
factors ``A_n: [r, in]`` and ``B_n: [out, r]``::

    y_n = W x_n + s * B_n (A_n x_n),      s = alpha / r        (standard LoRA semantics, dW_n = s * B_n A_n)

computed for the whole batch with two batched matmuls on ``x: [N, T, in]``::

    h = x @ A^T      # [N, T, r]     (A: [N, r, in], or [1, r, in] broadcast over the batch)
    y = y + s * (h @ B^T)            # [N, T, out]   (B: [N, out, r])

Packed rows (several sequences concatenated into one row ``x: [1, T, in]``, token ``t`` belonging to row
``k_t``; see ``tagi.backbones.packing``) use the ``N`` adapters side by side: with ``A_cat = [A_1; ...; A_N]``
(``[N r, in]``), ``B_cat = [B_1 ... B_N]`` (``[out, N r]``) and ``M[t, n r + j] = 1[k_t = n]`` (``[T, N r]``)::

    y = y + s * (((x @ A_cat^T) * M) @ B_cat^T)    # token t sees only its own row's A_k and B_k

A fused call (``tagi.backbones.fused``: a decode step and a packed prefill in one row ``[1, A + T]``) uses
both: its first ``A`` tokens are one running row each, ``[A, 1, in]`` through the batched form with the
running rows' own ``[A]`` adapters, and its last ``T`` tokens are packed rows (:func:`apply_fused_lora`).

Adapters are applied by :func:`apply_lora`, a context manager that registers forward hooks on the target
modules and removes them on exit, so no state survives the call (exceptions included). For one-task
inference :func:`merged` adds ``s * B A`` into the weights and restores the exact original weights on exit.

PEFT stores the same adapter as ``base_model.model.<module>.lora_A.weight`` (``[r, in]``) and
``...lora_B.weight`` (``[out, r]``) with ``scaling = lora_alpha / r``; :func:`to_peft_state_dict` and
:func:`from_peft_state_dict` convert between the two.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from tagi.errors import TagiError

PEFT_PREFIX = "base_model.model."


class AdapterError(TagiError, ValueError):
    """An adapter does not fit the model (other base model, other rank, other target modules)."""


@dataclass
class LoraWeights:
    """LoRA factors for a set of target modules, batched over examples.

    ``A[name]: [N, r, in]``, ``B[name]: [N, out, r]`` keyed by the full module path in the base model;
    ``N`` is the number of examples (1 = one adapter shared by the whole batch). ``scaling = alpha / r``.
    """

    A: dict[str, torch.Tensor]
    B: dict[str, torch.Tensor]
    scaling: float

    def __post_init__(self) -> None:
        if set(self.A) != set(self.B):
            raise AdapterError("LoRA A and B factors name different modules")
        for name in self.A:
            a, b = self.A[name], self.B[name]
            if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[1] != b.shape[2]:
                raise AdapterError(
                    f"bad LoRA shapes for {name}: A {tuple(a.shape)}, B {tuple(b.shape)} "
                    "(expected A [N, r, in], B [N, out, r])"
                )

    @property
    def names(self) -> list[str]:
        return list(self.A)

    @property
    def rank(self) -> int:
        return next(iter(self.A.values())).shape[1]

    @property
    def batch_size(self) -> int:
        return next(iter(self.A.values())).shape[0]

    def index(self, idx: torch.Tensor | list[int] | slice) -> LoraWeights:
        """Select examples (rows) of the batch: ``weights.index([0, 0, 1])`` repeats adapters per example."""
        if isinstance(idx, list):
            idx = torch.tensor(idx, dtype=torch.long)
        return LoraWeights(
            {k: v[idx] for k, v in self.A.items()}, {k: v[idx] for k, v in self.B.items()}, self.scaling
        )

    def zeros(self, n: int = 1) -> LoraWeights:
        """``n`` adapters of zeros shaped like these (the base model as rows of a per-row batch)."""
        return LoraWeights(
            {k: v.new_zeros((n, *v.shape[1:])) for k, v in self.A.items()},
            {k: v.new_zeros((n, *v.shape[1:])) for k, v in self.B.items()},
            self.scaling,
        )

    def detach(self) -> LoraWeights:
        return LoraWeights(
            {k: v.detach() for k, v in self.A.items()},
            {k: v.detach() for k, v in self.B.items()},
            self.scaling,
        )

    def to(self, *args, **kwargs) -> LoraWeights:
        return LoraWeights(
            {k: v.to(*args, **kwargs) for k, v in self.A.items()},
            {k: v.to(*args, **kwargs) for k, v in self.B.items()},
            self.scaling,
        )

    def gram(self) -> torch.Tensor:
        """Inner products of the batch's adapters, summed over modules: ``G[i, j] = Σ_m <dW_i^m, dW_j^m>_F``.

        ``[N, N]``, from the factors without forming any ``dW``:
        ``<B_i A_i, B_j A_j>_F = Σ_{r,s} (B_i^T B_j)[r, s] · (A_i A_j^T)[r, s]`` (times ``s^2``).
        """
        total = torch.zeros(self.batch_size, self.batch_size)
        for name in self.names:
            a, b = self.A[name].float().cpu(), self.B[name].float().cpu()  # [N, r, in], [N, out, r]
            bb = torch.einsum("nor,mos->nmrs", b, b)  # [N, N, r, r]
            aa = torch.einsum("nri,msi->nmrs", a, a)  # [N, N, r, r]
            total += (bb * aa).sum((2, 3))
        return self.scaling**2 * total

    def delta(self, name: str) -> torch.Tensor:
        """The weight update ``s * B @ A`` of one module: ``[N, out, in]``."""
        return self.scaling * self.B[name] @ self.A[name]

    @staticmethod
    def stack(items: list[LoraWeights]) -> LoraWeights:
        """Concatenate several adapters along the example dimension (all must share names and scaling)."""
        first = items[0]
        for w in items[1:]:
            if set(w.A) != set(first.A):
                raise AdapterError("cannot stack adapters with different target modules")
        # per-adapter scaling is folded into B so that adapters with different alpha/r can be mixed
        return LoraWeights(
            {k: torch.cat([w.A[k] for w in items]) for k in first.A},
            {k: torch.cat([w.B[k] * (w.scaling / first.scaling) for w in items]) for k in first.A},
            first.scaling,
        )


def _lora_hook(a: torch.Tensor, b: torch.Tensor, scaling: float):
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]  # [N, T, in]
        if x.dim() != 3 or a.shape[0] not in (1, x.shape[0]):
            raise AdapterError(
                f"LoRA batch mismatch: input {tuple(x.shape)} vs adapter batch {a.shape[0]} "
                "(expected input [N, T, in] with N equal to the adapter batch or an adapter batch of 1)"
            )
        h = x @ a.transpose(1, 2).to(x.dtype)  # [N, T, r]
        return output + scaling * (h @ b.transpose(1, 2).to(x.dtype))  # [N, T, out]

    return hook


def _token_select(token_rows: torch.Tensor, n: int, r: int) -> torch.Tensor:
    """``M [T, N r]``: 1 where column block ``n`` is token ``t``'s own adapter (module docstring)."""
    owner = torch.arange(n, device=token_rows.device).repeat_interleave(r)  # [N r]
    return (token_rows[:, None] == owner[None, :]).float()


def _packed_factors(weights: LoraWeights, name: str, select: torch.Tensor):
    """``(A_cat [N r, in], B_cat [out, N r], M [T, N r])`` of one module for packed rows (module docstring)."""
    a, b = weights.A[name], weights.B[name]
    n, r, d_in = a.shape
    return a.reshape(n * r, d_in), b.permute(1, 0, 2).reshape(b.shape[1], n * r), select


def _packed_delta(x: torch.Tensor, factors, scaling: float) -> torch.Tensor:
    """``s * (((x A_cat^T) * M) B_cat^T)`` for packed tokens ``x [1, T, in]`` -> ``[1, T, out]``."""
    a_cat, b_cat, select = factors
    if x.dim() != 3 or x.shape[0] != 1 or x.shape[1] != select.shape[0]:
        raise AdapterError(
            f"packed LoRA mismatch: input {tuple(x.shape)} for {select.shape[0]} packed tokens "
            "(expected input [1, T, in])"
        )
    h = (x @ a_cat.t().to(x.dtype)) * select.to(x.dtype)  # [1, T, N r]
    return scaling * (h @ b_cat.t().to(x.dtype))


def _packed_lora_hook(factors, scaling: float):
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return output + _packed_delta(inputs[0], factors, scaling)

    return hook


def _fused_lora_hook(rows: int, running: tuple | None, s_run: float, packed: tuple | None, s_pack: float):
    """Tokens ``[0, rows)`` of ``x [1, rows + T, in]`` are one running row each (``running = (A, B)``,
    ``[rows]`` or a shared ``[1]``); the others packed rows (``packed`` factors)."""

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]  # [1, rows + T, in]
        if running is not None:  # added in place: the layer's output is its own, and no copy is made
            a, b = running
            h = x[0, :rows, None] @ a.transpose(1, 2).to(x.dtype)  # [rows, 1, r]
            output[:, :rows] += s_run * (h @ b.transpose(1, 2).to(x.dtype)).transpose(0, 1)  # [1, rows, out]
        if packed is not None:
            output[:, rows:] += _packed_delta(x[:, rows:], packed, s_pack)
        return output

    return hook


def check_fits(model: nn.Module, weights: LoraWeights) -> None:
    """Raise :class:`AdapterError` unless every named module exists as a Linear of matching shape."""
    for name in weights.names:
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise AdapterError(f"adapter targets '{name}', which this base model does not have") from None
        if not isinstance(mod, nn.Linear):
            raise AdapterError(f"adapter targets '{name}', which is not a linear layer")
        a, b = weights.A[name], weights.B[name]
        if a.shape[2] != mod.in_features or b.shape[1] != mod.out_features:
            raise AdapterError(
                f"adapter shape for '{name}' is [{b.shape[1]}x{a.shape[2]}] but the base model's layer "
                f"is [{mod.out_features}x{mod.in_features}]: the adapter was made for another base model"
            )


@contextmanager
def apply_lora(
    model: nn.Module, weights: LoraWeights | None, token_rows: torch.Tensor | None = None
) -> Iterator[None]:
    """Apply per-example LoRA factors to ``model`` for the duration of the ``with`` block.

    ``weights=None`` is a no-op, so callers can write one code path for "base" and "adapted". With
    ``token_rows`` (``[T]``, values in ``[0, N)``) the model runs one packed row of ``T`` tokens and token
    ``t`` uses adapter ``token_rows[t]`` of the ``N`` in ``weights``.
    """
    if weights is None:
        yield
        return
    check_fits(model, weights)
    if token_rows is not None:
        n = weights.batch_size
        if token_rows.dim() != 1 or (len(token_rows) and int(token_rows.max()) >= n):
            raise AdapterError(f"token_rows must be [T] indices into {n} adapters")
    s = weights.scaling
    if token_rows is None:
        hooks = {name: _lora_hook(weights.A[name], weights.B[name], s) for name in weights.names}
    else:
        select = _token_select(token_rows, weights.batch_size, weights.rank)  # once for every module
        hooks = {name: _packed_lora_hook(_packed_factors(weights, name, select), s) for name in weights.names}
    with _hooked(model, hooks):
        yield


@contextmanager
def apply_fused_lora(
    model: nn.Module,
    rows: int,
    running: LoraWeights | None,
    packed: LoraWeights | None,
    token_rows: torch.Tensor,
) -> Iterator[None]:
    """LoRA for a fused call (``tagi.backbones.fused``): the model runs one row ``[1, rows + T]`` whose first
    ``rows`` tokens are each a running row's (adapter ``running``: ``[rows]``, or ``[1]`` shared) and whose
    last ``T`` tokens are packed rows, token ``rows + t`` using adapter ``token_rows[t]`` of ``packed``.
    ``None`` is the base model for that part. No adapter is copied or stacked."""
    if running is None and packed is None:
        yield
        return
    names: dict[str, None] = {}
    for w in (running, packed):
        if w is not None:
            check_fits(model, w)
            names.update(dict.fromkeys(w.names))
    if running is not None and running.batch_size not in (1, rows):
        raise AdapterError(f"{running.batch_size} running adapters for {rows} running rows")
    if packed is not None and len(token_rows) and int(token_rows.max()) >= packed.batch_size:
        raise AdapterError(f"token_rows must be [T] indices into {packed.batch_size} adapters")
    s_run = running.scaling if running is not None else 0.0
    s_pack = packed.scaling if packed is not None else 0.0
    select = _token_select(token_rows, packed.batch_size, packed.rank) if packed is not None else None
    hooks = {}
    for name in names:
        run = (running.A[name], running.B[name]) if running is not None and name in running.A else None
        pack = _packed_factors(packed, name, select) if packed is not None and name in packed.A else None
        hooks[name] = _fused_lora_hook(rows, run, s_run, pack, s_pack)
    with _hooked(model, hooks):
        yield


@contextmanager
def _hooked(model: nn.Module, hooks: dict) -> Iterator[None]:
    """Forward hooks on the named modules inside the block, all removed on exit (exceptions included)."""
    handles = []
    try:
        for name, hook in hooks.items():
            handles.append(model.get_submodule(name).register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def merged(model: nn.Module, weights: LoraWeights) -> Iterator[None]:
    """Merge one adapter (batch size 1) into the weights; the exact original weights return on exit."""
    if weights.batch_size != 1:
        raise AdapterError(f"merging needs a single adapter, got a batch of {weights.batch_size}")
    check_fits(model, weights)
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name in weights.names:
                lin = model.get_submodule(name)
                saved[name] = lin.weight.detach().clone()
                lin.weight += weights.delta(name)[0].to(lin.weight.dtype)
        yield
    finally:
        with torch.no_grad():
            for name, w in saved.items():
                model.get_submodule(name).weight.copy_(w)


# ---------------------------------------------------------------------------------------- PEFT mapping

_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<mod>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def to_peft_state_dict(weights: LoraWeights) -> dict[str, torch.Tensor]:
    """PEFT's tensors for one adapter (batch size 1): only ``lora_A`` / ``lora_B`` weights."""
    if weights.batch_size != 1:
        raise AdapterError(f"a PEFT adapter holds one adapter, got a batch of {weights.batch_size}")
    out = {}
    for name in weights.names:
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = weights.A[name][0].detach().contiguous().cpu()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = weights.B[name][0].detach().contiguous().cpu()
    return out


def from_peft_state_dict(state: Mapping[str, torch.Tensor], scaling: float) -> LoraWeights:
    """Parse PEFT LoRA tensors (with or without the adapter-name infix) into a batch-1 :class:`LoraWeights`."""
    a: dict[str, torch.Tensor] = {}
    b: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        m = _PEFT_KEY.match(key)
        if m is None:
            raise AdapterError(
                f"unexpected tensor '{key}' in a LoRA adapter (only lora_A / lora_B are supported)"
            )
        (a if m["ab"] == "A" else b)[m["mod"]] = t.unsqueeze(0)
    if not a:
        raise AdapterError("the adapter holds no LoRA tensors")
    missing = set(a) ^ set(b)
    if missing:
        raise AdapterError(f"adapter is missing lora_A or lora_B for {sorted(missing)[0]}")
    return LoraWeights(a, b, scaling)


def peft_target_modules(names: list[str]) -> list[str]:
    """The ``target_modules`` list for ``adapter_config.json``: the full module paths (exact, unambiguous)."""
    return sorted(names)
