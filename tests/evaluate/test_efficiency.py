"""FLOPs: the analytic count against torch's FlopCounterMode, and the scenario comparisons."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from evalkit import single_thread  # noqa: F401
from torch.utils.flop_counter import FlopCounterMode

from tagi.config import DataConfig, HyperConfig
from tagi.data import builtin_tasks
from tagi.data.sni import Example, Instance, Task
from tagi.evaluate.efficiency import (
    FlopModel,
    causal_forward,
    causal_generate,
    check_flops,
    flops_table,
    in_context_flops,
    t5_decode,
    t5_encode,
    tagi_flops,
    task_tokens,
)
from tagi.model import TagiModel


@contextmanager
def eager(model):
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")  # FlopCounterMode does not see CPU fused attention
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def count(fn) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return int(counter.get_total_flops())


def test_analytic_forward_equals_flop_counter(backbone) -> None:
    chk = check_flops(backbone)
    assert chk["analytic"] == chk["flop_counter"] > 0


def test_analytic_forward_with_lora_equals_flop_counter(backbone) -> None:
    from tagi.lora import apply_lora
    from tagi_testing import random_adapter

    fm = FlopModel.of(backbone, lora_rank=4)
    ids = torch.full((1, 9), 7)
    with eager(backbone.model), apply_lora(backbone.model, random_adapter(backbone, 1, rank=4)):
        if backbone.family == "causal":
            got = count(lambda: backbone.model(input_ids=ids))
            assert got == causal_forward(fm, 9, 0, logits=9)
        else:
            got = count(lambda: backbone.model(input_ids=ids, decoder_input_ids=ids[:, :3]))
            want = t5_encode(fm, 9) + 9 * fm.cross_kv + 3 * (fm.token + fm.head)
            assert got == want + 4 * fm.self_width * 9 + 4 * fm.cross_width * 3 * 9


def test_cached_causal_generation_equals_flop_counter(backbones) -> None:
    bb = backbones["tiny-llama"]
    fm = FlopModel.of(bb)
    prefix, suffix, gen = torch.full((1, 11), 5), torch.full((1, 4), 6), 5

    def run() -> None:
        out = bb.model(input_ids=prefix, use_cache=True, logits_to_keep=1)
        out = bb.model(input_ids=suffix, cache=out.cache, use_cache=True, logits_to_keep=1)
        for _ in range(gen - 1):
            out = bb.model(input_ids=out.logits[:, -1:].argmax(-1), cache=out.cache, use_cache=True)

    with eager(bb.model):
        got = count(run)
    assert got == causal_forward(fm, 11, 0, 1) + causal_generate(fm, 4, 11, gen)


def test_t5_generation_equals_flop_counter(backbones) -> None:
    bb = backbones["tiny-t5"]
    fm = FlopModel.of(bb)
    ids, gen = torch.full((1, 10), 7), 4
    with eager(bb.model):
        got = count(
            lambda: bb.model.generate(input_ids=ids, max_new_tokens=gen, min_new_tokens=gen, do_sample=False)
        )
    assert got == t5_encode(fm, 10) + t5_decode(fm, 10, gen)


def long_instruction_task() -> Task:
    words = " ".join(f"word{i}" for i in range(120))
    return Task(
        name="long", definition=f"Repeat the first word. {words}",
        positive_examples=(Example("a b c", "a"), Example("d e", "d")),
        instances=tuple(Instance(f"i{i}", f"x{i} y z", f"x{i}") for i in range(10)),
    )  # fmt: skip


def test_tagi_and_prefix_cache_cost_less_than_naive_in_context(backbone) -> None:
    base, lora = FlopModel.of(backbone), FlopModel.of(backbone, lora_rank=4)
    tt = task_tokens(backbone, long_instruction_task(), num_pos=2, n=100)
    assert len(tt.sources) == 100 and tt.prefix > 5 * max(tt.sources)
    naive, cached = in_context_flops(base, tt, cached=False), in_context_flops(base, tt, cached=True)
    fused = tagi_flops(base, lora, tt, hyper=10_000, fused=True)
    plain = tagi_flops(base, lora, tt, hyper=10_000, fused=False)
    assert fused < naive and plain < fused
    if backbone.family == "causal":
        assert cached < naive and fused < 1.2 * cached  # TAGI ~ prefix-cached prompting plus small overheads
    else:
        assert cached == naive  # a bidirectional encoder cannot reuse a prompt prefix


def test_flops_table_is_relative_to_naive_def2pos(backbone) -> None:
    tasks = builtin_tasks("test", num_instances=5)[:2]
    hyper = TagiModel(backbone, HyperConfig(rank=4, hidden=16, module_embed_dim=8)).hypernet
    table = flops_table(backbone, tasks, [0, 2], hyper, instances=20)
    rows = {(r["scenario"], r["setting"]): r for r in table["scenarios"]}
    assert rows[("in-context, naive", "Def+2Pos")]["relative"] == 1.0
    assert rows[("in-context, naive", "Def")]["relative"] < 1.0
    assert rows[("TAGI (fusion)", "Def+2Pos")]["relative"] < 1.0
    assert table["check"]["relative_error"] == 0.0
    assert DataConfig().max_test_instances == 100  # the paper's "one task of 100 instances"


@pytest.mark.parametrize("n", [1, 7])
def test_task_tokens_cycles_instances(backbones, n: int) -> None:
    task = long_instruction_task()
    tt = task_tokens(backbones["tiny-llama"], task, 0, 10 + n)
    assert tt.sources[:n] == tt.sources[10 : 10 + n]
