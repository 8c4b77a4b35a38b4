"""The Markdown of an evaluation: ``report.md`` (:func:`render_markdown`) and each of its tables.

Every table is a function of ``results.json``'s content (:func:`tagi.evaluate.harness.assemble`), so a
report can be rendered again from a stored ``results.json``. ``tagi evaluate`` and ``tagi demo`` print the
headline and paired tables.
"""

from __future__ import annotations

from collections.abc import Sequence

from tagi.evaluate.methods import setting_name

PAPER_REFERENCE = """\
| method | Def Base 250M | Def XL 3B | Def XXL 11B | Def+2Pos Base | Def+2Pos XL | Def+2Pos XXL | rel. FLOPs |
|---|---|---|---|---|---|---|---|
| no finetune | 8.8 | 14.3 | 26.2 | 9.4 | 13.6 | 30.5 | 1.0 |
| Tk-Instruct | 35.3 | 48.0 | 53.6 | 42.1 | 54.0 | 62.0 | 1.0 |
| HyperTuning | – | 38.9 | – | – | 48.6 | – | 0.34 |
| HINT | 33.3 | 47.2 | 51.1 | 41.8 | 53.2 | 56.4 | 0.37 |
| TAGI | 35.3 | 48.4 | 52.3 | 42.5 | 56.3 | 58.4 | 0.39 |

Ablation (T5-XL, Def / Def+2Pos): full 48.4 / 56.3; w/o fusion 35.1 / 40.6; w/o KL 45.7 / 53.9;
w/o pretraining 47.1 / 55.6; w/o L_align 47.5 / 55.2; w/o CE 47.6 / 55.4.
"""
_WALL_KEYS = ("wall_time_s", "wall_s", "seconds", "wall_time", "elapsed_s", "time_s")


def wall_seconds(done: dict) -> float | None:
    """The wall time recorded in a stage's ``DONE.json`` (whichever key the stage used)."""
    for key in _WALL_KEYS:
        if isinstance(done.get(key), int | float):
            return float(done[key])
    nested = [wall_seconds(v) for v in done.values() if isinstance(v, dict) and v is not done.get("config")]
    found = [w for w in nested if w is not None]
    return sum(found) if found else None


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _f(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def headline_table(results: dict) -> str:
    """Methods × settings: Rouge-L and exact match (×100) on the unseen test tasks."""
    settings = results["settings"]
    header = ["method"] + [f"{s} {m}" for s in settings for m in ("Rouge-L", "EM")] + ["note"]
    rows = []
    for name, m in results["methods"].items():
        if "unavailable" in m:
            rows.append([name] + ["n/a"] * (2 * len(settings)) + [f"unavailable: {m['unavailable']}"])
            continue
        cells = []
        for s in settings:
            o = m["scores"][s]["overall"]
            cells += [_f(o["rougeL"]), _f(o["exact_match"])]
        rows.append(
            [name, *cells, "" if m["spec"]["zero_shot"] else "upper bound (trained on the test task)"]
        )
    return _table(header, rows)


def specificity_table(results: dict) -> str:
    """How task-specific each hypernetwork method's generated adapters are (``adapter_specificity``)."""
    spec = results.get("adapter_specificity") or {}
    if not spec:
        return ""
    rows = []
    for name, s in spec.items():
        share, cosine = _f(s["task_specific_share"], 3), _f(s["mean_cosine"], 3)
        rows.append([name, s["setting"], str(s["adapters"]), share, cosine, f"{s['mean_norm']:.3g}"])
    header = [
        "method",
        "instructions",
        "adapters",
        "task-specific share",
        "mean pairwise cosine",
        "mean ||dW||",
    ]
    note = (
        "\n\nOne adapter per test task from its instruction. Task-specific share = 1 − ‖mean dW‖² / mean ‖dW‖² "
        "(0: the same adapter for every task; 1: adapters with nothing in common); cosine between the tasks' "
        "updates dW, summed over the target modules. The paired table above gives TAGI − tagi-no-hypernet "
        "(what the instruction-dependent part of the adapter is worth) and TAGI − tagi-other-instruction."
    )
    return _table(header, rows) + note


def paired_table(results: dict) -> str:
    """TAGI minus every other method, per setting: mean per-task Δ, its interval, wins/losses/ties."""
    paired = results.get("paired") or {}
    by_setting = paired.get("by_setting", {})
    if not by_setting:
        return ""
    settings = list(by_setting)
    names = list(dict.fromkeys(n for s in settings for n in by_setting[s]))
    header = [f"{paired['reference']} minus"]
    for s in settings:
        header += [f"{s} Δ Rouge-L", f"{s} {paired['confidence']:.0%} CI", f"{s} W/L/T"]
    rows = []
    for name in names:
        row = [name]
        for s in settings:
            d = by_setting[s].get(name)
            if d is None or d["mean"] is None:
                row += ["–"] * 3
                continue
            ci = "–" if d["ci_low"] is None else f"{d['ci_low']:+.1f} … {d['ci_high']:+.1f}"
            row += [f"{d['mean']:+.1f}", ci, f"{d['wins']}/{d['losses']}/{d['ties']}"]
        rows.append(row)
    intro = (
        f"Per task t: d_t = Rouge-L of {paired['reference']} − Rouge-L of the method (each the mean over "
        f"the task's instances); the mean over tasks, its {paired['confidence']:.0%} {paired['method']} "
        f"({paired['n_resamples']} resamples, seed {paired['seed']}) and the tasks won/lost/tied. For an "
        "ablation, Δ is the effect of the removed component (positive: it helps).\n\n"
    )
    return intro + _table(header, rows)


def category_tables(results: dict) -> str:
    parts = []
    for s in results["settings"]:
        avail = {n: m for n, m in results["methods"].items() if "scores" in m}
        if not avail:
            break
        cats = list(next(iter(avail.values()))["scores"][s]["per_category"])
        rows = [
            [n] + [_f(m["scores"][s]["per_category"][c]["rougeL"]) for c in cats] for n, m in avail.items()
        ]
        parts.append(f"**{s}** (Rouge-L)\n\n" + _table(["method", *cats], rows))
    return "\n\n".join(parts)


def rank_table(results: dict) -> str:
    """Rank-classification accuracy per method and setting ("" when no test task was scored that way)."""
    settings, rows, tasks = results["settings"], [], set()
    for name, m in results["methods"].items():
        ranks = [m["scores"][s]["rank_classification"] if "scores" in m else {} for s in settings]
        tasks.update(t for r in ranks for t in r.get("per_task", {}))
        rows.append([name, *[_f(r.get("accuracy")) for r in ranks]])
    if not tasks:
        return ""
    note = f"Tasks scored (options = the task's label set): {', '.join(sorted(tasks))}.\n\n"
    return note + _table(["method", *[f"{s} accuracy" for s in settings]], rows)


def p3_section(results: dict) -> str:
    """P3-style held-out accuracy (SNI versions of T0's held-out datasets), "" when none was scored."""
    p3 = results.get("p3_heldout") or {}
    if not p3:
        return ""
    settings = results["settings"]
    names = sorted({d for m in p3.values() for r in m.values() for d in r["datasets"]})
    rows = []
    for method, by_setting in p3.items():
        for s in settings:
            r = by_setting.get(s)
            if r:
                rows.append([method, s, *[_f(r["datasets"].get(d)) for d in names], _f(r["average"])])
    note = (
        f"Rank-classification accuracy on the SNI versions of T0's held-out datasets present here ({len(names)} "
        "of the paper's 11), each dataset weighing the same in the average, as the paper's MTest11.\n\n"
    )
    return note + _table(["method", "setting", *names, "average"], rows)


def efficiency_tables(results: dict) -> str:
    eff, parts = results.get("efficiency"), []
    if eff:
        chk = eff["check"]
        rows = [
            [r["scenario"], r["setting"], _f(r["gflops_per_task"], 2), _f(r["relative"], 3)]
            for r in eff["scenarios"]
        ]
        parts.append(
            f"FLOPs to process one task of {eff['instances_per_task']} instances (mean over the test tasks), "
            f"relative to {eff['baseline']}; every method is charged the reference output length + EOS as "
            "generated tokens. Analytic count, checked against torch's FlopCounterMode on one forward pass: "
            f"{chk['analytic']} vs {chk['flop_counter']} FLOPs "
            f"(relative error {chk['relative_error']:.1e}).\n\n"
            + _table(["scenario", "instruction", "GFLOPs / task", "relative"], rows)
        )
    rows, ref = [], _task_seconds(results["methods"].get("no-finetune", {}).get("scores", {}).get("Def+2Pos"))
    for name, m in results["methods"].items():
        for s, sc in m.get("scores", {}).items():
            t, task_s = sc["timing"], _task_seconds(sc)
            latency = t.get("adapter_latency_s_mean")
            rel = task_s / ref if task_s is not None and ref else None
            per_instance = _f(1000 * t["s_per_instance"], 0)
            rows.append([name, s, per_instance, _f(latency and 1000 * latency, 1), _f(task_s, 1), _f(rel, 2)])
    if rows:
        parts.append(
            "Measured wall-clock on this machine (batched greedy generation, the instruction prefix cached "
            "once per task; adapter generation = instruction encoding + one hypernetwork call). 's / task "
            "of 100' = 100 x the measured time per instance + one adapter generation, relative to the "
            "in-context Def+2Pos baseline (no-finetune, prefix-cached):\n\n"
            + _table(
                [
                    "method",
                    "setting",
                    "ms / instance",
                    "adapter generation ms / task",
                    "s / task of 100",
                    "relative",
                ],
                rows,
            )
        )
    return "\n\n".join(parts)


def _task_seconds(score: dict | None) -> float | None:
    """Seconds for one task of 100 instances from a setting's measured timing (None if not measured)."""
    if not score or "timing" not in score:
        return None
    t = score["timing"]
    return 100 * t["s_per_instance"] + (t.get("adapter_latency_s_mean") or 0.0)


def _validation(done: dict) -> str:
    """A finetuning's CE on the validation tasks per prompt setting (``val_ce_pos2`` -> ``Def+2Pos``)."""
    parts = []
    for key, value in (done.get("validation") or {}).items():
        k = key.removeprefix("val_ce_pos")
        parts.append(f"{setting_name(int(k)) if k.isdigit() else key} {value:.3f}")
    return ", ".join(parts)


def stage_table(results: dict) -> str:
    """Training stages (from their DONE.json) and the evaluation's own steps."""
    rows = [
        [
            f"train: {name}",
            _f(wall_seconds(done), 1),
            _f(done.get("tokens_per_s"), 0),
            _f(done.get("peak_memory_mb"), 0),
            _validation(done),
        ]
        for name, done in results["stages"].items()
    ]
    timing = results["evaluation_timing"]
    cached = set(timing.get("cached", []))
    rows += [
        [f"evaluate: {k}" + (" (cached from an earlier run)" if k in cached else ""), _f(v, 1), "", "", ""]
        for k, v in timing["evaluate_s"].items()
    ]
    rows += [
        ["evaluate: efficiency (FLOPs)", _f(timing.get("efficiency_s"), 1), "", "", ""],
        ["evaluation total in this run (incl. training it triggered)", _f(timing["total_s"], 1), "", "", ""],
    ]
    m = timing.get("machine", {})
    note = (
        f"\n\nMachine: {m.get('cpus')} CPUs, {m.get('torch_threads')} torch threads, load average "
        f"{_f(m.get('load_average_start'))} at the start and {_f(m.get('load_average_end'))} at the end "
        "of the evaluation (other processes slow every wall-clock number here down)."
    )
    header = [
        "step",
        "wall time (s)",
        "training tokens / s",
        "peak memory (MB)",
        "validation CE (held-out training tasks)",
    ]
    return _table(header, rows) + (note if m else "")


def methods_table(results: dict) -> str:
    rows = []
    for name, m in results["methods"].items():
        spec = m["spec"]
        notes = m.get("unavailable", "")
        if "trained_on" in m.get("info", {}):
            notes = "oracle trained on: " + "; ".join(f"{t}: {d}" for t, d in m["info"]["trained_on"].items())
        overrides = ", ".join(spec["train_overrides"]) or "–"
        mode = m.get("mode", spec["mode"])
        rows.append([name, spec["summary"], spec["adapter"], mode, spec["instruction"], overrides, notes])
    return _table(
        ["method", "what it is", "adapter", "prompt mode", "instruction", "training overrides", "notes"], rows
    )


def render_markdown(results: dict, files: Sequence[str] = ("results.json",)) -> str:
    cfg = results["config"]
    tasks = results["test_tasks"]
    n_inst = sorted({t["instances"] for t in tasks})
    data = cfg["data"]["source"] + (f" ({cfg['data']['sni_dir']})" if cfg["data"]["source"] == "sni" else "")
    sections = [
        "# TAGI evaluation report",
        f"Base model **{cfg['model']['name']}** · data **{data}**: {len(tasks)} unseen test tasks, "
        f"{'/'.join(map(str, n_inst))} instances each · seed {results['seed']} · {results['created']}.\n"
        f"Produced by: `{results.get('command', '')}`. Greedy decoding; metric = the official SNI scorer "
        "(Rouge-L F and exact match, ×100). Files: " + ", ".join(f"`{f}`" for f in files),
        "## Headline: unseen tasks\n\n" + headline_table(results),
    ]
    paired = paired_table(results)
    if paired:
        sections.append("## Paired over tasks\n\n" + paired + "\n\n![paired](paired.png)")
    specificity = specificity_table(results)
    if specificity:
        sections.append("## Adapter specificity\n\n" + specificity)
    sections += [
        "## Per category\n\n" + category_tables(results),
    ]
    rank = rank_table(results)
    if rank:
        sections.append("## Rank classification (token-averaged NLL of each option)\n\n" + rank)
    p3 = p3_section(results)
    if p3:
        sections.append("## P3-style held-out accuracy\n\n" + p3)
    sections += [
        "## Efficiency\n\n" + efficiency_tables(results),
        "## Wall time per stage\n\n" + stage_table(results),
        "## Methods\n\n" + methods_table(results),
        "## For context: the paper's numbers (different base models and data)\n\n"
        "Liao et al. 2024, Rouge-L on the 119 SNI test tasks with T5-LM / T0 backbones of 250M–11B "
        "parameters; **not comparable** to the numbers above (other model, other tasks).\n\n"
        + PAPER_REFERENCE,
    ]
    return "\n\n".join(sections) + "\n"
