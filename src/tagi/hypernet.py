"""The hypernetwork: instruction token states -> LoRA factors for every target module, in one call.

Shapes (``N`` instructions, ``T`` tokens, ``H`` base hidden size, ``J`` target modules, ``D`` MLP width,
``E`` module-embedding size, ``r`` rank)::

    states [N, T, H], mask [N, T]
      -> standardise (optional): (states - mu) / sigma              [N, T, H]
      -> pool (padding-masked mean, or learned-query attention)     u [N, H]
      -> LayerNorm + Linear                                          z [N, D]
      -> concat with the learned embedding e_j of each (layer, module) pair
                                                                    [N, J, D + E]
      -> MLP (depth x (Linear, GELU))                                h [N, J, D]
      -> per module kind (modules of equal shape share a head):
             A-head: Linear(D, r * in)  -> A [N, r, in]
             B-head: Linear(D, out * r) -> B [N, out, r]

The generated update is ``dW = (alpha / r) * B @ A``. The B-head starts at zero, so ``dW = 0`` at step 0
(the base model is untouched) while ``dL/dB = s * (dL/dy) (A x)^T`` is non-zero because the A-head starts
like a standard LoRA A (uniform in ±1/sqrt(in) through its bias, small random weights) — the gradient
reaches the hypernetwork from the first step. (Starting both heads at ~0, as the official code does,
makes both gradients vanish.)

Input standardisation (``hyper.input_norm = "standardize"``): ``mu, sigma [H]`` are the per-dimension mean
and std of the mean-pooled states of the training instructions, fitted once (:meth:`fit_input_stats`) and
saved as buffers. Both poolings are convex combinations of the token states, so standardising the tokens
standardises the pooled vector: ``pool((s - mu) / sigma) = (pool(s) - mu) / sigma``. The part every
instruction shares (most of a language model's pooled state) is removed before the network sees it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from tagi.backbones.base import Target
from tagi.config import HyperConfig
from tagi.lora import LoraWeights


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens where ``mask`` is 1: ``[N, T, H], [N, T] -> [N, H]`` (padding excluded)."""
    m = mask.to(states.dtype).unsqueeze(-1)  # [N, T, 1]
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)


class AttentionPool(nn.Module):
    """Learned queries attend over the instruction tokens (padding masked); queries' outputs are averaged."""

    def __init__(self, dim: int, num_queries: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim) / math.sqrt(dim))
        self.key = nn.Linear(dim, dim, bias=False)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keys = self.key(states)  # [N, T, H]
        scores = torch.einsum("qh,nth->nqt", self.queries, keys) / math.sqrt(states.shape[-1])  # [N, Q, T]
        scores = scores.masked_fill(~mask.bool().unsqueeze(1), float("-inf"))
        attn = torch.nan_to_num(scores.softmax(-1))  # an all-padding row gives zeros, not NaN
        return torch.einsum("nqt,nth->nh", attn, states) / self.queries.shape[0]  # [N, H]


class HyperNetwork(nn.Module):
    """Generate a LoRA adapter for every target module of the base model from instruction states."""

    def __init__(self, cfg: HyperConfig, targets: Sequence[Target], input_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.targets = tuple(targets)
        self.input_dim = input_dim
        d, r = cfg.hidden, cfg.rank
        self.pool = AttentionPool(input_dim, cfg.num_queries) if cfg.pooling == "attention" else None
        if cfg.input_norm == "standardize":
            self.register_buffer("input_mean", torch.zeros(input_dim))
            self.register_buffer("input_std", torch.ones(input_dim))
        self.norm = nn.LayerNorm(input_dim)
        self.proj = nn.Linear(input_dim, d)
        self.module_embed = nn.Embedding(len(self.targets), cfg.module_embed_dim)
        layers: list[nn.Module] = []
        width = d + cfg.module_embed_dim
        for _ in range(cfg.depth):
            layers += [nn.Linear(width, d), nn.GELU(), nn.Dropout(cfg.dropout)]
            width = d
        self.mlp = nn.Sequential(*layers)
        # modules of one kind (same role, same shape) share output heads
        kinds: dict[str, list[int]] = {}
        for j, t in enumerate(self.targets):
            kinds.setdefault(t.kind, []).append(j)
        self.kinds = {k: tuple(v) for k, v in kinds.items()}
        self.head_a = nn.ModuleDict()
        self.head_b = nn.ModuleDict()
        for kind, idx in self.kinds.items():
            t = self.targets[idx[0]]
            self.head_a[kind] = nn.Linear(d, r * t.in_features)
            self.head_b[kind] = nn.Linear(d, t.out_features * r)
        self.reset_heads()

    def reset_heads(self) -> None:
        """B-heads at zero (dW = 0), A-heads like a standard LoRA A (see the module docstring)."""
        for kind, idx in self.kinds.items():
            fan_in = self.targets[idx[0]].in_features
            nn.init.normal_(self.head_a[kind].weight, std=self.cfg.a_init_std / math.sqrt(self.cfg.hidden))
            nn.init.uniform_(self.head_a[kind].bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
            nn.init.zeros_(self.head_b[kind].weight)
            nn.init.zeros_(self.head_b[kind].bias)

    @torch.no_grad()
    def fit_input_stats(self, pooled: torch.Tensor) -> None:
        """Fit ``mu, sigma`` from mean-pooled training instructions ``pooled [N, H]`` (``N >= 2``).

        ``sigma`` is floored at 1e-3 of its mean, so a dimension constant over the instructions is not
        amplified into noise.
        """
        if self.cfg.input_norm != "standardize":
            raise ValueError("fit_input_stats needs hyper.input_norm = 'standardize'")
        if pooled.dim() != 2 or pooled.shape[0] < 2 or pooled.shape[1] != self.input_dim:
            raise ValueError(f"need pooled states [N >= 2, {self.input_dim}], got {tuple(pooled.shape)}")
        pooled = pooled.to(torch.float64)
        std = pooled.std(0)
        self.input_mean.copy_(pooled.mean(0))
        self.input_std.copy_(std.clamp_min(1e-3 * float(std.mean())))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> LoraWeights:
        """``states [N, T, H]``, ``mask [N, T]`` -> factors for all target modules (A [N,r,in], B [N,out,r])."""
        n, r = states.shape[0], self.cfg.rank
        states = states.to(self.proj.weight.dtype)
        if self.cfg.input_norm == "standardize":
            states = (states - self.input_mean.to(states.dtype)) / self.input_std.to(states.dtype)
        pooled = self.pool(states, mask) if self.pool is not None else masked_mean(states, mask)  # [N, H]
        z = self.proj(self.norm(pooled))  # [N, D]
        emb = self.module_embed.weight  # [J, E]
        x = torch.cat([z.unsqueeze(1).expand(n, emb.shape[0], -1), emb.unsqueeze(0).expand(n, -1, -1)], -1)
        h = self.mlp(x)  # [N, J, D]
        a_out: dict[str, torch.Tensor] = {}
        b_out: dict[str, torch.Tensor] = {}
        for kind, idx in self.kinds.items():
            t0 = self.targets[idx[0]]
            hk = h[:, list(idx)]  # [N, J_k, D]
            a = self.head_a[kind](hk).view(n, len(idx), r, t0.in_features)  # [N, J_k, r, in]
            b = self.head_b[kind](hk).view(n, len(idx), t0.out_features, r)  # [N, J_k, out, r]
            for i, j in enumerate(idx):
                a_out[self.targets[j].name] = a[:, i]
                b_out[self.targets[j].name] = b[:, i]
        return LoraWeights(a_out, b_out, self.cfg.scaling)
