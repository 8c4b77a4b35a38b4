"""FLOPs to process one task of N instances (paper: 100), for in-context prompting and for TAGI.

An analytic count, in :class:`torch.utils.flop_counter.FlopCounterMode`'s convention (a matmul of
``[m, k] @ [k, n]`` costs ``2·m·k·n``; element-wise ops, norms and softmax are free), cross-checked against
``FlopCounterMode`` itself on a real forward pass (:func:`check_flops`; attention switched to the eager
implementation for the check, because the counter does not see CPU fused attention kernels).

Per token, every ``nn.Linear`` of ``[out, in]`` costs ``2·in·out``, plus ``2·r·(in + out)`` when it
carries a rank-``r`` LoRA. Attention over ``n`` new query tokens and ``k`` key positions costs
``4·W·n·k`` where ``W = Σ_layers heads·head_dim`` (``QKᵀ`` and ``AV``; the full rectangle, as kernels
compute it). The LM head costs ``2·H·V`` per position whose logits are kept.

Scenarios for one task (token counts from the backbone's own tokenisation; ``g_i`` = tokens generated
for instance ``i``, taken as its reference length + EOS so that every method is charged the same):

- **in-context, naive**: every instance runs its full prompt (instruction + input), then ``g_i - 1``
  single-token decoding steps over the KV cache.
- **in-context, prefix-cached**: decoder-only models compute the instruction prefix once and every
  instance reads it from the cache. (T5's encoder is bidirectional, so a shared prefix cannot be cached:
  there this equals naive.)
- **TAGI**: the frozen base encodes the instruction once, the hypernetwork runs once (counted with
  ``FlopCounterMode``), then every instance runs with the generated LoRA: decoder-only with the
  instruction prefix computed once (adapted) and cached; T5 with the instruction encoding fused into
  the decoder's cross-attention (FiD). **TAGI without fusion**: instances see only their input.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tagi.backbones.base import Backbone, PromptExample
from tagi.config import ExperimentConfig
from tagi.data.prompts import format_instruction, format_source
from tagi.data.select import load_tasks
from tagi.data.sni import Task
from tagi.evaluate.methods import setting_name
from tagi.hypernet import HyperNetwork
from tagi.model import TagiModel

_T5_CROSS_KV = re.compile(r"^decoder\..*\.EncDecAttention\.[kv]$")


@dataclass(frozen=True)
class FlopModel:
    """Per-token forward FLOPs of a backbone, optionally with a LoRA of rank ``lora_rank`` on its targets.

    Decoder-only: ``token`` covers every token. T5: ``token`` is per decoder token, ``enc_token`` per
    encoder token, ``cross_kv`` per encoder state read by the decoder (cross-attention k, v projections).
    ``*_width`` are ``Σ heads·head_dim`` of the self (decoder / causal), encoder and cross attentions.
    """

    family: str
    token: int
    head: int
    self_width: int
    enc_token: int = 0
    cross_kv: int = 0
    enc_width: int = 0
    cross_width: int = 0

    @classmethod
    def of(cls, backbone: Backbone, lora_rank: int = 0) -> FlopModel:
        model = backbone.model
        head_mod = model.get_output_embeddings()
        targets = {t.name for t in backbone.targets} if lora_rank else set()
        c = {"token": 0, "enc_token": 0, "cross_kv": 0, "self_width": 0, "enc_width": 0, "cross_width": 0}
        head = 0
        for name, mod in model.named_modules():
            if not isinstance(mod, nn.Linear):
                continue
            cost = 2 * mod.in_features * mod.out_features
            cost += 2 * lora_rank * (mod.in_features + mod.out_features) if name in targets else 0
            if mod is head_mod:
                head = cost
            elif backbone.family == "causal":
                c["token"] += cost
                c["self_width"] += mod.out_features if name.endswith("self_attn.q_proj") else 0
            else:
                part = "enc_token" if name.startswith("encoder.") else "token"
                c["cross_kv" if _T5_CROSS_KV.match(name) else part] += cost
                if name.endswith("Attention.q"):
                    own = "enc_width" if name.startswith("encoder.") else "self_width"
                    key = "cross_width" if "EncDecAttention" in name else own
                    c[key] += mod.out_features
        return cls(backbone.family, head=head, **c)


# ---------------------------------------------------------------------------------------- decoder-only


def causal_forward(fm: FlopModel, n: int, past: int = 0, logits: int = 1) -> int:
    """One forward over ``n`` new tokens after ``past`` cached ones, keeping ``logits`` positions."""
    return n * fm.token + 4 * fm.self_width * n * (past + n) + logits * fm.head


def causal_generate(fm: FlopModel, prompt: int, past: int, gen: int) -> int:
    """Prefill ``prompt`` tokens over a cache of ``past``, then ``gen - 1`` single-token steps."""
    flops = causal_forward(fm, prompt, past, 1)
    for j in range(1, gen):
        flops += causal_forward(fm, 1, past + prompt + j - 1, 1)
    return flops


# ---------------------------------------------------------------------------------------- encoder-decoder


def t5_encode(fm: FlopModel, n: int) -> int:
    return n * fm.enc_token + 4 * fm.enc_width * n * n


def t5_decode(fm: FlopModel, enc_len: int, gen: int) -> int:
    """``gen`` decoder steps with a self-attention cache, cross-attending over ``enc_len`` states."""
    flops = enc_len * fm.cross_kv  # cross k, v computed once per sequence
    for j in range(1, gen + 1):
        flops += fm.token + fm.head + 4 * fm.self_width * j + 4 * fm.cross_width * enc_len
    return flops


def t5_forward(fm: FlopModel, enc: int, dec: int) -> int:
    """One teacher-forced forward: ``enc`` encoder tokens, ``dec`` decoder tokens, logits everywhere."""
    return (
        t5_encode(fm, enc)
        + enc * fm.cross_kv
        + dec * (fm.token + fm.head)
        + 4 * fm.self_width * dec * dec
        + 4 * fm.cross_width * dec * enc
    )


# ---------------------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class TaskTokens:
    """Token counts of one task under one prompt setting.

    ``instruction``: tokens the hypernetwork reads; ``prefix``: per-task part of the in-context prompt
    (decoder-only: chat head + instruction; T5: instruction tokens of the encoder input); ``bare``: the
    per-task part without instruction (decoder-only chat head); ``sources``/``gens``: per instance.
    """

    instruction: int
    prefix: int
    bare: int
    sources: tuple[int, ...]
    gens: tuple[int, ...]


def task_tokens(backbone: Backbone, task: Task, num_pos: int, n: int) -> TaskTokens:
    """Token counts for the first ``n`` instances of ``task`` (cycled when the task has fewer)."""
    ins = format_instruction(task, num_pos)
    insts = [task.instances[i % len(task.instances)] for i in range(n)]
    refs = backbone.tokenizer([i.outputs[0] for i in insts], add_special_tokens=False)["input_ids"]
    gens = tuple(min(len(ids) + 1, backbone.cfg.max_target_tokens) for ids in refs)  # reference + EOS
    if backbone.family == "causal":
        sources = tuple(len(backbone.suffix_ids(format_source(i.input))) for i in insts)
        prefix, bare = len(backbone.prefix_ids(ins, "concat")), len(backbone.prefix_ids(ins, "none"))
    else:
        ex = PromptExample(ins, format_source(insts[0].input))
        sources = tuple(
            len(backbone.encoder_ids(PromptExample("", format_source(i.input)), "none")) for i in insts
        )
        prefix, bare = len(backbone.encoder_ids(ex, "concat")) - sources[0], 0
    return TaskTokens(len(backbone.instruction_ids(ins)), prefix, bare, sources, gens)


def in_context_flops(fm: FlopModel, tt: TaskTokens, cached: bool) -> int:
    """All instances of a task with the instruction in context (prefix cached once, or per instance)."""
    pairs = zip(tt.sources, tt.gens)
    if fm.family != "causal":
        return sum(t5_encode(fm, tt.prefix + s) + t5_decode(fm, tt.prefix + s, g) for s, g in pairs)
    if not cached:
        return sum(causal_generate(fm, tt.prefix + s, 0, g) for s, g in pairs)
    return causal_forward(fm, tt.prefix, 0, 1) + sum(causal_generate(fm, s, tt.prefix, g) for s, g in pairs)


def tagi_flops(base: FlopModel, lora: FlopModel, tt: TaskTokens, hyper: int, fused: bool) -> int:
    """Instruction encoded once + hypernetwork once + every instance with the generated adapter."""
    pairs = list(zip(tt.sources, tt.gens))
    if base.family != "causal":
        fuse = tt.instruction if fused else 0
        per = sum(t5_encode(lora, s) + t5_decode(lora, fuse + s, g) for s, g in pairs)
        return t5_encode(base, tt.instruction) + hyper + per
    encode = causal_forward(base, tt.instruction, 0, logits=0)  # hidden states only, no LM head
    prefix = tt.prefix if fused else tt.bare
    cache = causal_forward(lora, prefix, 0, 1) if prefix else 0
    return encode + hyper + cache + sum(causal_generate(lora, s, prefix, g) for s, g in pairs)


def hypernet_flops(hypernet: HyperNetwork, num_tokens: int, hidden: int) -> int:
    """FLOPs of one hypernetwork call on ``num_tokens`` instruction states (``FlopCounterMode``)."""
    param = next(hypernet.parameters())
    states = torch.zeros(1, num_tokens, hidden, dtype=param.dtype, device=param.device)
    mask = torch.ones(1, num_tokens, dtype=torch.long, device=param.device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        hypernet(states, mask)
    return int(counter.get_total_flops())


def flops_table(
    backbone: Backbone,
    tasks: Sequence[Task],
    settings: Sequence[int],
    hypernet: HyperNetwork,
    instances: int = 100,
) -> dict:
    """FLOPs per task (mean over ``tasks``) of every scenario, relative to in-context naive prompting
    at the largest prompt setting (``Def+2Pos`` by default)."""
    base, lora = FlopModel.of(backbone), FlopModel.of(backbone, hypernet.cfg.rank)
    totals: dict[tuple[str, int], int] = {}
    for k in sorted(settings):
        for task in tasks:
            tt = task_tokens(backbone, task, k, instances)
            hyper = hypernet_flops(hypernet, tt.instruction, backbone.hidden_size)
            rows = {
                "in-context, naive": in_context_flops(base, tt, cached=False),
                "in-context, prefix-cached": in_context_flops(base, tt, cached=True),
                "TAGI (fusion)": tagi_flops(base, lora, tt, hyper, fused=True),
                "TAGI without fusion": tagi_flops(base, lora, tt, hyper, fused=False),
            }
            for name, f in rows.items():
                totals[(name, k)] = totals.get((name, k), 0) + f
    ref_k = max(settings)
    ref = totals[("in-context, naive", ref_k)]
    scenarios = [
        {
            "scenario": name,
            "setting": setting_name(k),
            "gflops_per_task": f / len(tasks) / 1e9,
            "relative": f / ref,
        }
        for (name, k), f in totals.items()
    ]
    return {
        "instances_per_task": instances,
        "baseline": f"in-context, naive ({setting_name(ref_k)})",
        "scenarios": scenarios,
        "check": check_flops(backbone),
    }


def check_flops(backbone: Backbone, enc: int = 12, dec: int = 5) -> dict:
    """Analytic count vs ``FlopCounterMode`` for one forward (eager attention, so attention is visible)."""
    model = backbone.model
    before = model.config._attn_implementation
    fm = FlopModel.of(backbone)
    ids = torch.full((1, enc), backbone.pad_id + 1, dtype=torch.long, device=backbone.device)
    counter = FlopCounterMode(display=False)
    try:
        model.set_attn_implementation("eager")
        with torch.no_grad(), counter:
            if backbone.family == "causal":
                model(input_ids=ids)
                analytic = causal_forward(fm, enc, 0, logits=enc)
            else:
                model(input_ids=ids, decoder_input_ids=ids[:, :dec])
                analytic = t5_forward(fm, enc, dec)
    finally:
        model.set_attn_implementation(before)
    measured = int(counter.get_total_flops())
    return {
        "analytic": analytic,
        "flop_counter": measured,
        "relative_error": abs(analytic - measured) / measured,
    }


def measure_efficiency(cfg: ExperimentConfig, backbone: Backbone, tasks: list[Task]) -> dict:
    """The FLOPs table on the test tasks (with ``evaluate.efficiency_instances`` instances each)."""
    n = cfg.evaluate.efficiency_instances
    wide = dataclasses.replace(
        cfg.data, max_test_instances=n, builtin_instances=max(n, cfg.data.builtin_instances)
    )
    names = {t.name for t in tasks}
    eff_tasks = [t for t in load_tasks(wide, "test") if t.name in names]
    hypernet = TagiModel(backbone, cfg.hyper).hypernet  # FLOPs depend on the shapes only
    return flops_table(backbone, eff_tasks, cfg.evaluate.prompt_settings, hypernet, n)
