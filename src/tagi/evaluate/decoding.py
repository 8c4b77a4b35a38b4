"""Decoding one method on the test tasks: a :class:`TaskJob` per task, greedy outputs, prompt lengths.

For a prompt setting (``Def``, ``Def+2Pos``), :func:`task_jobs` builds each test task's instruction under the
method's instruction variant and generates the task's adapter once (hypernetwork methods; timed as the
adapter-generation latency). :func:`generate_jobs` decodes every instance greedily (up to
``model.max_target_tokens`` new tokens, or the task's budget from its positive examples,
:func:`new_token_budget`). With ``evaluate.batching=task`` (default) a batch holds one task and one
adapter, so decoder-only backbones compute the instruction prefix's key/value cache once per batch (with
the adapter active) and T5 encodes the instruction once; ``mixed`` batches mix tasks, each example
carrying its own adapter (per-example LoRA). :func:`evaluate_setting` turns the outputs into prediction
records (and, with ``evaluate.rank_classification``, scores the classification-like tasks by rank
classification); a floor method (``first-demo`` / ``majority-demo``) answers without a model.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass

from tqdm.auto import tqdm

from tagi.backbones import Backbone, PromptExample
from tagi.backbones.base import IGNORE, PromptMode
from tagi.config import EvalConfig, ExperimentConfig
from tagi.data.options import from_sni_task
from tagi.data.prompts import format_source
from tagi.data.sni import Task
from tagi.evaluate.methods import instructions_for
from tagi.evaluate.prepare import Prepared
from tagi.evaluate.ranking import rank_classify
from tagi.lora import LoraWeights


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class TaskJob:
    """One test task under one method and prompt setting: the prompt instruction and the task's adapter."""

    task: Task
    instruction: str
    adapter: LoraWeights | None
    latency_s: float  # adapter generation (hypernetwork methods), else 0
    max_new_tokens: int = 0  # the task's decoding budget (0 = model.max_target_tokens)

    def examples(self) -> list[PromptExample]:
        return [PromptExample(self.instruction, format_source(i.input)) for i in self.task.instances]


def new_token_budget(task: Task, backbone: Backbone, factor: float) -> int:
    """Decoding budget of a task from its *positive examples*: ``ceil(factor * longest positive output) + 4``.

    Capped at ``model.max_target_tokens``; ``factor == 0`` or a task without positive examples gets the
    cap. The evaluated instances' references are never read, so no test label leaks into decoding.
    """
    cap = backbone.cfg.max_target_tokens
    outputs = [backbone.output_tokens(e.output) for e in task.positive_examples]
    if factor <= 0 or not outputs:
        return cap
    return min(cap, math.ceil(factor * max(outputs)) + 4)


def task_jobs(
    prep: Prepared, tasks: list[Task], num_pos: int, other: dict[str, str] | None, budget: dict[str, int]
) -> list[TaskJob]:
    """Instructions (under the method's instruction variant) and adapters, generated once per task."""
    by_name = {t.name: t for t in tasks}
    jobs = []
    for task in tasks:
        prompt_ins, hyper_ins = instructions_for(prep.spec, task, num_pos, by_name, other)
        adapter, secs = prep.adapter_for(task.name, hyper_ins)
        jobs.append(TaskJob(task, prompt_ins, adapter, secs, budget.get(task.name, 0)))
    return jobs


def generate_jobs(
    jobs: list[TaskJob], backbone: Backbone, mode: PromptMode, ev: EvalConfig, limit: int, bar: tqdm | None
) -> list[str]:
    """Greedy outputs for every instance of every job, in job order (``ev.batching``: task / mixed)."""
    outputs: list[str] = []
    if ev.batching == "task":
        for job in jobs:
            for chunk in _chunks(job.examples(), ev.batch_size):
                outputs += backbone.generate(
                    chunk, job.adapter, mode, max_new_tokens=job.max_new_tokens or limit
                )
            if bar is not None:
                bar.update(1)
        return outputs
    flat = [(e, k) for k, job in enumerate(jobs) for e in job.examples()]
    adapters = [job.adapter for job in jobs]
    shared = all(a is adapters[0] for a in adapters)  # no adapter, or one adapter for every task
    stacked = adapters[0] if shared else LoraWeights.stack(adapters)  # [num_tasks]
    for chunk in _chunks(flat, ev.batch_size):
        rows = None if shared else [k for _, k in chunk]  # each example's task: its adapter and prefix cache
        budget = max(jobs[k].max_new_tokens or limit for _, k in chunk)
        outputs += backbone.generate(
            [e for e, _ in chunk], stacked, mode, max_new_tokens=budget, adapter_rows=rows
        )
    if bar is not None:
        bar.update(len(jobs))
    return outputs


def prompt_tokens(backbone: Backbone, examples: list[PromptExample], mode: PromptMode) -> list[int]:
    """Tokens of each example's prompt as the model reads it (after truncation, without the target):
    T5: encoder input + the fused instruction; decoder-only: the prompt (chat head, instruction, input)."""
    batch = backbone.collate(examples, mode, add_eos=False)
    n = batch.attention_mask.sum(1)
    if batch.fuse_mask is not None:
        n = n + batch.fuse_mask.sum(1)
    if backbone.family != "seq2seq":
        n = n - (batch.labels != IGNORE).sum(1)
    return [int(x) for x in n]


def demo_answer(task: Task, answer: str) -> str:
    """A floor's answer for every instance of ``task``: the first positive example's output
    (``first-demo``) or the most frequent one (``majority-demo``; the earliest on a tie)."""
    outputs = [e.output for e in task.positive_examples]
    if not outputs:
        return ""
    return outputs[0] if answer == "first-demo" else Counter(outputs).most_common(1)[0][0]


def _outputs(
    prep: Prepared, cfg: ExperimentConfig, backbone: Backbone, jobs: list[TaskJob], bar
) -> list[str]:
    """Every instance's answer, in job order: decoded, or a floor's demonstration answer (no model runs)."""
    if prep.spec.answer == "model":
        return generate_jobs(jobs, backbone, prep.mode, cfg.evaluate, cfg.model.max_target_tokens, bar)
    answers = [demo_answer(job.task, prep.spec.answer) for job in jobs for _ in job.task.instances]
    if bar is not None:
        bar.update(len(jobs))
    return answers


def evaluate_setting(
    prep: Prepared, cfg: ExperimentConfig, backbone: Backbone, jobs: list[TaskJob], bar: tqdm | None = None
) -> dict:
    """``{"records", "timing", "rank"}`` of one method under one prompt setting."""
    start = time.perf_counter()
    outputs = iter(_outputs(prep, cfg, backbone, jobs, bar))
    seconds = time.perf_counter() - start
    model_reads = prep.spec.answer == "model"
    records = []
    for job in jobs:
        examples = job.examples()
        lengths = prompt_tokens(backbone, examples, prep.mode) if model_reads else [0] * len(examples)
        budget = (job.max_new_tokens or cfg.model.max_target_tokens) if model_reads else 0
        records += [
            {
                "task": job.task.name,
                "category": job.task.category,
                "id": inst.id,
                "prompt_tokens": n,
                "max_new_tokens": budget,
                "prediction": next(outputs),
                "references": list(inst.outputs),
            }
            for inst, n in zip(job.task.instances, lengths, strict=True)
        ]
    timing = {"generation_s": seconds, "s_per_instance": seconds / max(len(records), 1)}
    if prep.model is not None:
        latency = [job.latency_s for job in jobs]
        timing["adapter_latency_s_mean"] = statistics.fmean(latency)
        timing["adapter_latency_s_median"] = statistics.median(latency)
    rank = (
        rank_jobs(jobs, backbone, prep.mode, cfg.evaluate.batch_size)
        if cfg.evaluate.rank_classification and model_reads
        else {}
    )
    return {"records": records, "timing": timing, "rank": rank}


def rank_jobs(jobs: list[TaskJob], backbone: Backbone, mode: PromptMode, batch_size: int) -> dict:
    """Rank-classification accuracy on the classification-like test tasks (``{}`` if there are none)."""
    per_task, correct, total = {}, 0.0, 0
    for job in jobs:
        options = from_sni_task(job.task)
        if options is None:
            continue
        _, acc = rank_classify(backbone, options, job.instruction, job.adapter, mode, batch_size)
        per_task[job.task.name] = {"accuracy": acc, "n": len(options), "options": len(options[0].options)}
        correct, total = correct + acc * len(options) / 100, total + len(options)
    if not per_task:
        return {}
    return {"accuracy": 100.0 * correct / total, "n": total, "per_task": per_task}
