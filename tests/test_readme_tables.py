"""Every results table of the README shows the numbers of the results file it cites.

Each results table is registered below with its source files and, per row, where each numeric cell comes
from. A cell's numbers are parsed (``−`` is a minus sign) and compared with the source value rounded to the
printed number of decimals, so a hand-edited or stale number fails. A README table that holds numbers but
is not registered fails too: a new table cannot escape the check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"[−+-]?\d+(?:\.\d+)?(?:e[−+-]?\d+)?")


def load(rel: str) -> dict:
    return json.loads((ROOT / rel).read_text())


def score(results: dict, method: str, setting: str) -> list[float]:
    """``Rouge-L / EM`` of a method under a setting."""
    overall = results["methods"][method]["scores"][setting]["overall"]
    return [overall["rougeL"], overall["exact_match"]]


def paired(results: dict, method: str, setting: str) -> list[float]:
    """``mean (low … high), wins/losses/ties`` of the reference method minus ``method``."""
    p = results["paired"]["by_setting"][setting][method]
    return [p["mean"], p["ci_low"], p["ci_high"], p["wins"], p["losses"], p["ties"]]


def validation_ce(results: dict, method: str) -> list[float]:
    """Validation CE at Def of the finetuning that made ``method`` (the main run for ``tagi``)."""
    stage = "finetune" if method == "tagi" else f"methods/{method}"
    return [results["stages"][stage]["validation"]["val_ce_pos0"]]


@dataclass(frozen=True)
class Table:
    """A README table: its source files and ``{row label: [cell -> expected numbers or None]}``."""

    sources: tuple[str, ...]
    rows: Callable[[list[dict]], dict[str, list[list[float] | None]]]


def _methods_table(labels: dict[str, str], settings: tuple[str, ...]) -> Callable:
    def rows(srcs: list[dict]) -> dict:
        return {label: [None, *(score(srcs[0], m, s) for s in settings)] for label, m in labels.items()}

    return rows


DEMO_ROWS = {
    "no-finetune (instruction in context)": "no-finetune",
    "multi-task LoRA (instruction in context)": "multitask-lora",
    "TAGI (generated adapter + fused instruction)": "tagi",
    "TAGI with another task's instruction": "tagi-other-instruction",
    "TAGI with an empty instruction": "tagi-empty-instruction",
}
HEADLINE_ROWS = {
    "no-finetune (instruction in context)": "no-finetune",
    "multi-task LoRA (instruction in context)": "multitask-lora",
    "TAGI (generated adapter + fused instruction)": "tagi",
    "TAGI given another task's instruction": "tagi-other-instruction",
}
ABLATION_ROWS = {
    "HINT-like (CE only, pretrained, fusion)": "hint-like",
    "TAGI without the hypernetwork (one learned adapter)": "tagi-no-hypernet",
    "TAGI without KL": "tagi-no-kl",
    "TAGI without fusion": "tagi-no-fusion",
    "TAGI without pretraining": "tagi-no-pretrain",
    "TAGI without CE": "tagi-no-ce",
    "TAGI without alignment": "tagi-no-align",
    "Hypter-like (no pretraining, no fusion, CE only)": "hypter-like",
    "TAGI given an empty instruction": "tagi-empty-instruction",
    "oracle: LoRA trained on up to 8 other instances of the test task (2 steps; not zero-shot; see below)": "oracle",
}
SPECIFIC = "benchmarks/results/sni-smollm2-specific/results.json"
SPECIFIC_ROWS = {
    "copy-demo (the first demonstration's output; no model)": "copy-demo",
    "majority (the most frequent demonstration output; no model)": "majority",
    "no-finetune (instruction in context)": "no-finetune",
    "multitask-lora (one LoRA for all training tasks, instruction in context)": "multitask-lora",
    "t2l-like (sentence encoder, MLP heads, CE only, no pretraining)": "t2l-like",
    "tagi-no-hypernet (one learned adapter, same training)": "tagi-no-hypernet",
    "TAGI (= hint-like here: CE only)": "tagi",
    "TAGI given another task's instruction": "tagi-other-instruction",
}
NO_VALIDATION = {"tagi-empty-instruction", "oracle"}  # evaluated with another method's checkpoint, or none


def ablation_rows(srcs: list[dict]) -> dict:
    res = srcs[0]
    rows = {"TAGI (reference)": [None, score(res, "tagi", "Def"), None, validation_ce(res, "tagi"), None]}
    for label, m in ABLATION_ROWS.items():
        ce = None if m in NO_VALIDATION else validation_ce(res, m)
        rows[label] = [None, score(res, m, "Def"), paired(res, m, "Def"), ce, None]
    return rows


def _sweep_cells(point: dict) -> list[list[float]]:
    v = point["validation"]
    return [[v["val_ce_pos0"], v["val_ce_pos2"], point["score"]], [point["train_loss_last"]["loss"]]]


def lr_rows(srcs: list[dict]) -> dict:
    sweep, lr_results, headline = srcs
    by_lr = {p["overrides"][0].split("=")[1]: p for p in sweep["points"].values()}
    chosen = next(m for m in lr_results["methods"] if m.startswith("ckpt:"))
    test = {
        "3e-5": [score(lr_results, chosen, s)[0] for s in ("Def", "Def+2Pos")],
        "1e-3": [score(headline, "tagi", s)[0] for s in ("Def", "Def+2Pos")],
    }
    labels = {"3e-5": "3e-5 (chosen)", "1e-3": "1e-3 (headline)"}
    return {labels.get(lr, lr): [None, *_sweep_cells(p), test.get(lr)] for lr, p in by_lr.items()}


def serve_rows(srcs: list[dict]) -> dict:
    rows = {}
    for c in srcs[0]["cells"]:
        run = {r["mode"]: r for r in c["runs"]}
        b, s = run["batched"], run["one_at_a_time"]
        rate = [[run[m]["completions_per_s"]] for m in ("batched", "separate_prefill", "padded_prefill",
                                                          "join_each_step", "one_at_a_time")]  # fmt: skip
        rows[f"{c['adapters']} × {c['clients']}"] = [
            None, *rate, [c["throughput_ratio_batched_vs_one_at_a_time"]],
            [c["throughput_ratio_batched_vs_separate_prefill"]], [b["mean_rows_per_call"]],
            [b["prefill_share"], s["prefill_share"]], [b["p50_ms"], b["p95_ms"]],
            [sum(r["errors"] for r in run.values())], None,
        ]  # fmt: skip
    return rows


def dtype_rows(srcs: list[dict]) -> dict:
    """benchmarks/serve_load.py --dtypes: per cell and dtype, batched and one-at-a-time throughput, their
    ratio, each against float32's, the shares of outputs equal to Tagi.predict, rows per call, latency."""
    d = srcs[0]
    vs = {(r["adapters"], r["clients"], r["dtype"]): r for r in d["dtype_ratios"]}
    rows = {}
    for c in d["cells"]:
        run, key = {r["mode"]: r for r in c["runs"]}, (c["adapters"], c["clients"], c["dtype"])
        b, s = run["batched"], run["one_at_a_time"]
        x = vs.get(key, {"throughput_vs_float32": {"batched": 1.0, "one_at_a_time": 1.0},
                         "predict_equal_float32_share": 1.0})  # fmt: skip
        rows[f"{c['adapters']} × {c['clients']}, {c['dtype']}"] = [
            None, [b["completions_per_s"]], [s["completions_per_s"]],
            [c["throughput_ratio_batched_vs_one_at_a_time"]],
            [x["throughput_vs_float32"]["batched"], x["throughput_vs_float32"]["one_at_a_time"]],
            [b["outputs_equal_predict_share"], s["outputs_equal_predict_share"]],
            [x["predict_equal_float32_share"]], [b["mean_rows_per_call"]], [b["p50_ms"], b["p95_ms"]],
            [b["errors"] + s["errors"]],
        ]  # fmt: skip
    return rows


def requests_rows(srcs: list[dict]) -> dict:
    """benchmarks/serve_load.py at 4 and at 16 completions per client: the 16-client cells' batched and
    one-at-a-time throughput, their ratio, the share of the batched run with every client sending, rows per
    call, latency and errors."""
    rows = {}
    for src in srcs:
        for c in src["cells"]:
            if c["clients"] != 16:
                continue
            run = {r["mode"]: r for r in c["runs"]}
            b, s = run["batched"], run["one_at_a_time"]
            rows[f"{c['adapters']} × {c['clients']}, {src['requests_per_client']} per client"] = [
                None, [b["completions_per_s"]], [s["completions_per_s"]],
                [c["throughput_ratio_batched_vs_one_at_a_time"]], [b["all_clients_share"]],
                [b["mean_rows_per_call"]], [b["p50_ms"], b["p95_ms"]], [b["errors"] + s["errors"]], None,
            ]  # fmt: skip
    return rows


def pool_rows(srcs: list[dict]) -> dict:
    """benchmarks/openmp_pools.py: per shape, ms with the model loaded on the main thread, on a thread that
    ended, and their ratio; then the CPU cores used."""
    main, ended = (
        srcs[0]["median_ms"][s] for s in ("loaded on the main thread", "loaded on a thread that ended")
    )
    rows = {shape: [None, [main[shape]], [ended[shape]], [srcs[0]["ratio_main_vs_ended"][shape]]]
            for shape in srcs[0]["shapes"]}  # fmt: skip
    rows["CPU cores used"] = [None, [main["cpu_cores_used"]], [ended["cpu_cores_used"]], None]
    return rows


def teacher_rows(srcs: list[dict]) -> dict:
    """benchmarks/teacher_quality.py: token-weighted held-out CE per model; groups the teacher beats it in."""
    s, steps = srcs[0]["summary"], srcs[0]["teacher_steps"]
    n, ce = s["groups"], s["ce"]
    return {
        "base model": [None, [ce["base"]], [s["teacher_beats_base"], n]],
        "multitask-lora": [None, [ce["multitask-lora"]], [s["teacher_beats_multitask"], n]],
        f"category teacher{'' if steps == 2 else f', {steps} steps'}": [None, [ce["teacher"]], None],
    }


def lever_rows(srcs: list[dict]) -> dict:
    return {
        name: [
            None,
            [x["rougeL"]],
            [x["swap_delta"]],
            [x["alone"]],
            [x["val_spread"]["task_specific_share"], x["test_spread"]["task_specific_share"]],
            [x["val_ce"]["val_ce_pos0"]],
        ]  # fmt: skip
        for name, x in srcs[0]["levers"].items()
    }


def alone_rows(srcs: list[dict]) -> dict:
    """specificity_levers.py: the adapter alone with the task's own and another task's instruction."""
    return {
        name: [None, [x["alone"]], [x["alone"] - x["alone_swap_delta"]], [x["alone_swap_delta"]]]
        for name, x in srcs[0]["levers"].items()
    }


TABLES = {
    "method (Rouge-L / exact match on unseen tasks)": Table(
        ("docs/demo/results.json",), _methods_table(DEMO_ROWS, ("Def", "Def+2Pos"))
    ),
    "method (Rouge-L / exact match, 83 unseen tasks)": Table(
        ("benchmarks/results/sni-smollm2/results.json",), _methods_table(HEADLINE_ROWS, ("Def", "Def+2Pos"))
    ),
    "method (Def, 83 unseen tasks)": Table(
        ("benchmarks/results/sni-smollm2-ablations/results.json",), ablation_rows
    ),
    "finetune lr": Table(
        (
            "benchmarks/results/sni-smollm2-lr/sweep.json",
            "benchmarks/results/sni-smollm2-lr/results.json",
            "benchmarks/results/sni-smollm2/results.json",
        ),
        lr_rows,
    ),
}


LONGER = "benchmarks/results/sni-smollm2-longer/results.json"
LONGER_ROWS = {
    "copy-demo (the first demonstration's output; no model)": "copy-demo",
    "multitask-lora (one LoRA for all training tasks, instruction in context)": "multitask-lora",
    "tagi-no-hypernet (one learned adapter, same training)": "tagi-no-hypernet",
    "TAGI (CE only, 384 steps)": "tagi",
}


def _paired_table(methods: list[str]) -> Callable:
    """Rows ``TAGI − method``: its paired delta at Def and at Def+2Pos."""

    def rows(srcs: list[dict]) -> dict:
        return {f"TAGI − {m}": [None, *(paired(srcs[0], m, s) for s in ("Def", "Def+2Pos"))] for m in methods}

    return rows


CATEGORY = "benchmarks/results/sni-smollm2-category/results.json"
CATEGORY_ROWS = {label: m for label, m in SPECIFIC_ROWS.items() if m != "tagi-other-instruction"}


def specificity_rows(srcs: list[dict]) -> dict:
    spec = srcs[0]["adapter_specificity"]
    return {m: [None, [spec[m]["task_specific_share"]], [spec[m]["mean_cosine"]]] for m in spec}


TABLES |= {
    "method (Rouge-L / EM, 83 unseen tasks, task-specific settings)": Table(
        (SPECIFIC,), _methods_table(SPECIFIC_ROWS, ("Def", "Def+2Pos"))
    ),
    "paired over the 83 tasks": Table(
        (SPECIFIC,), _paired_table([m for m in SPECIFIC_ROWS.values() if m != "tagi"])
    ),
    "generated adapters (83 test instructions, Def)": Table((SPECIFIC,), specificity_rows),
    "method (Rouge-L / EM, 83 unseen tasks, 384 finetuning steps)": Table(
        (LONGER,), _methods_table(LONGER_ROWS, ("Def", "Def+2Pos"))
    ),
    "paired over the 83 tasks, 384 steps": Table(
        (LONGER,), _paired_table(["copy-demo", "multitask-lora", "tagi-no-hypernet"])
    ),
    "method (Rouge-L / EM, 83 unseen tasks, category-split training)": Table(
        (CATEGORY,), _methods_table(CATEGORY_ROWS, ("Def", "Def+2Pos"))
    ),
    "paired over the 83 tasks, category-split training": Table(
        (CATEGORY,), _paired_table([m for m in CATEGORY_ROWS.values() if m != "tagi"])
    ),
}
TABLES |= {
    "adapters × clients": Table(("benchmarks/results/serve_load.json",), serve_rows),
    "prefix cache off: adapters × clients": Table(
        ("benchmarks/results/serve_load_no_prefix_cache.json",), serve_rows
    ),
    "held-out instances of the training tasks": Table(
        ("benchmarks/results/teacher_quality.json",), teacher_rows
    ),
    "held-out instances of the training tasks, teachers of 8 steps": Table(
        ("benchmarks/results/teacher_quality_8steps.json",), teacher_rows
    ),
    "model call on the worker thread": Table(("benchmarks/results/openmp_pools.json",), pool_rows),
    "adapters × clients, dtype": Table(("benchmarks/results/serve_load_dtype.json",), dtype_rows),
    "adapters × clients, completions per client": Table(
        ("benchmarks/results/serve_load.json", "benchmarks/results/serve_load_16requests.json"), requests_rows
    ),
    "lever (CE only, 128 steps, task_group 4)": Table(
        ("benchmarks/results/specificity_levers.json",), lever_rows
    ),
    "lever (CE only, 384 steps, task_group 4, 8 tasks × 20 instances)": Table(
        ("benchmarks/results/specificity_levers_384steps.json",), lever_rows
    ),
    "lever (CE only, 128 steps, task_group 4, 8 tasks × 20 instances)": Table(
        ("benchmarks/results/specificity_levers_val20.json",), lever_rows
    ),
    "lever (CE only, 128 steps, task_group 4, 16 tasks of held-out categories × 10 instances)": Table(
        ("benchmarks/results/specificity_levers_category.json",), lever_rows
    ),
    "lever (CE only, 128 steps, task_group 4, held-out categories, with the L2 penalty)": Table(
        ("benchmarks/results/specificity_levers_l2.json",), lever_rows
    ),
    "lever (128 steps, task_group 4, held-out categories, distilling from 8-step teachers)": Table(
        ("benchmarks/results/specificity_levers_distill.json",), lever_rows
    ),
    "lever (CE + alignment to 8-step teachers, weight 25000, 128 steps, task_group 4, held-out categories)": Table(
        ("benchmarks/results/specificity_levers_align.json",), lever_rows
    ),
    "lever (CE only, 128 steps, task_group 4, held-out categories, what the hypernetwork reads)": Table(
        ("benchmarks/results/specificity_levers_input.json",), lever_rows
    ),
    "adapter alone on held-out categories (no instruction in the prompt)": Table(
        ("benchmarks/results/specificity_levers_input.json",), alone_rows
    ),
    "adapter alone on held-out single tasks (no instruction in the prompt, 8 tasks × 20 instances)": Table(
        ("benchmarks/results/specificity_levers_alone_task_split.json",), alone_rows
    ),
    "lever (CE only, 128 steps, task_group 4, held-out categories, 26 training categories)": Table(
        ("benchmarks/results/specificity_levers_26categories.json",), lever_rows
    ),
    "lever (CE only, 384 steps, task_group 4, held-out categories, seed 1)": Table(
        ("benchmarks/results/specificity_levers_category_384steps_seed1.json",), lever_rows
    ),
    "lever (CE only, 384 steps, task_group 4, held-out categories)": Table(
        ("benchmarks/results/specificity_levers_category_384steps.json",), lever_rows
    ),
    "lever (CE only, 128 steps, task_group 4, held-out categories, instruction augmentation)": Table(
        ("benchmarks/results/specificity_levers_augment.json",), lever_rows
    ),
}
SEED_RUNS = {  # row label -> the levers run (base and no-hypernet) it reads
    "52 (232 tasks), seed 0": "benchmarks/results/specificity_levers_category.json",
    "52 (232 tasks), seed 1": "benchmarks/results/specificity_levers_category_seed1.json",
    "26 (100 tasks), seed 0": "benchmarks/results/specificity_levers_26categories.json",
    "26 (100 tasks), seed 1": "benchmarks/results/specificity_levers_26categories_seed1.json",
}


def seed_rows(srcs: list[dict]) -> dict:
    """Per run: base, no-hypernet, their difference, base's swap delta, both validation CEs (Def)."""
    rows = {}
    for label, src in zip(SEED_RUNS, srcs):
        b, n = src["levers"]["base"], src["levers"]["no-hypernet"]
        rows[label] = [
            None,
            [b["rougeL"]],
            [n["rougeL"]],
            [b["rougeL"] - n["rougeL"]],
            [b["swap_delta"]],
            [b["val_ce"]["val_ce_pos0"], n["val_ce"]["val_ce_pos0"]],
        ]  # fmt: skip
    return rows


TABLES["training categories, seed (CE only, 128 steps, task_group 4, held-out categories)"] = Table(
    tuple(SEED_RUNS.values()), seed_rows
)
P3 = "benchmarks/results/sni-smollm2-p3/results.json"
P3_DATASETS = ("ANLI R1", "CB", "RTE", "WSC", "WinoGrande", "COPA")


def p3_rows(srcs: list[dict]) -> dict:
    """Rank-classification accuracy (%) per P3 dataset at Def, then their average."""
    rows = {}
    for method, by_setting in srcs[0]["p3_heldout"].items():
        r = by_setting["Def"]
        rows[method] = [None, *([r["datasets"][d]] for d in P3_DATASETS), [r["average"]]]
    return rows


TABLES["rank-classification accuracy, Def (category-split training)"] = Table((P3,), p3_rows)
UNCHECKED = {"module"}  # tables without results (the design table)


def readme_tables(text: str) -> dict[str, list[list[str]]]:
    """``{first header cell: body rows as lists of cells}`` of every Markdown table in ``text``."""
    tables, block = {}, []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if block:
            tables[block[0][0]] = block[2:]
            block = []
    return tables


def numbers(cell: str) -> list[str]:
    return NUMBER.findall(cell.replace("*", ""))


def same(printed: str, value: float) -> bool:
    """``printed`` is ``value`` rounded to the printed number of decimals."""
    p = printed.replace("−", "-")
    decimals = len(p.split(".")[1]) if "." in p and "e" not in p else 0
    return float(p) == float(f"{value:.{decimals}f}")


def check_cell(cell: str, expected: list[float] | None) -> str | None:
    """An error message, or None when the cell shows ``expected`` (``None``: text, not checked)."""
    if expected is None:
        return None
    got = numbers(cell)
    if len(got) != len(expected) or not all(same(g, e) for g, e in zip(got, expected)):
        shown = ", ".join(f"{e:.4g}" for e in expected)
        return f"cell '{cell}' should show [{shown}]"
    return None


README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("header", sorted(TABLES))
def test_readme_table_matches_its_results_file(header):
    tables = readme_tables(README)
    assert header in tables, f"the README has no table headed '{header}'"
    spec = TABLES[header]
    expected = spec.rows([load(s) for s in spec.sources])
    body = {row[0].replace("*", ""): row for row in tables[header]}
    assert set(body) == set(expected), f"rows differ: README {sorted(body)} vs checked {sorted(expected)}"
    errors = [
        f"{label}: {msg}"
        for label, cells in expected.items()
        for cell, want in zip(body[label], cells)
        if (msg := check_cell(cell, want))
    ]
    assert not errors, "\n".join(errors)


def test_every_results_table_is_checked():
    unregistered = set(readme_tables(README)) - set(TABLES) - UNCHECKED
    assert not unregistered, f"README tables with numbers but no registered source: {unregistered}"


@pytest.mark.parametrize(
    ("cell", "expected", "ok"),
    [
        ("**38.4 / 23.2**", [38.44, 23.2], True),
        ("38.4 / 23.2", [38.46, 23.2], False),
        ("−1.7 (−5.1 … +1.6), 25/34/24", [-1.69, -5.109, 1.649, 25, 34, 24], True),
        ("−1.7 (−5.1 … +1.6), 25/34/24", [-1.69, -5.109, 1.649, 25, 33, 24], False),
        ("3.86 / 3.69 (**3.77**)", [3.8597, 3.685, 3.7724], True),
        ("8.14", [8.1449], True),
        ("8.15", [8.1449], False),
        ("–", None, True),
    ],
)
def test_cell_check_catches_a_changed_number(cell, expected, ok):
    assert (check_cell(cell, expected) is None) is ok
