"""The evaluation harness end to end on tiny models with real (very short) training.

One run of every method is made per module; the other tests copy that run folder (its training stages are
then skipped) and evaluate again with other settings.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from evalkit import single_thread, tiny_config  # noqa: F401

from tagi.backbones import load_backbone
from tagi.evaluate.harness import run_evaluation
from tagi.evaluate.methods import METHODS

PNG = b"\x89PNG\r\n\x1a\n"
N_TASKS, N_INST = 3, 3


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    """(out_dir, backbone, results) of a full tiny-llama evaluation of every method."""
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("llama")
    cfg = tiny_config(out)
    backbone = load_backbone(cfg.model)
    eval_dir = run_evaluation(cfg, backbone)
    return out, backbone, json.loads((eval_dir / "results.json").read_text())


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("eval"))
    return dst


def test_every_method_gets_a_row_and_the_files_exist(llama_run) -> None:
    out, _, results = llama_run
    eval_dir = out / "eval"
    assert list(results["methods"]) == list(METHODS)
    headline = (eval_dir / "report.md").read_text().split("## Headline")[1].split("##")[0]
    for name in METHODS:
        assert f"| {name} |" in headline
    for png in ("methods.png", "categories.png", "paired.png"):
        assert (eval_dir / png).read_bytes().startswith(PNG)
    paired = (eval_dir / "report.md").read_text().split("## Paired over tasks")[1].split("##")[0]
    evaluated_others = [n for n, m in results["methods"].items() if "scores" in m and n != "tagi"]
    for name in evaluated_others:  # every other evaluated method is compared with TAGI, in both settings
        assert f"| {name} |" in paired
        for s in ("Def", "Def+2Pos"):
            d = results["paired"]["by_setting"][s][name]
            ref, other = results["methods"]["tagi"]["scores"][s], results["methods"][name]["scores"][s]
            diffs = [ref["per_task"][t]["rougeL"] - other["per_task"][t]["rougeL"] for t in ref["per_task"]]
            assert d["tasks"] == N_TASKS and d["mean"] == pytest.approx(sum(diffs) / len(diffs))
    evaluated = [m for m in results["methods"].values() if "scores" in m]
    rows = (eval_dir / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == len(evaluated) * 2 * N_TASKS * N_INST
    for m in evaluated:
        for s in ("Def", "Def+2Pos"):
            sc = m["scores"][s]
            assert sc["overall"]["n"] == N_TASKS * N_INST and len(sc["per_task"]) == N_TASKS
            assert 0.0 <= sc["overall"]["rougeL"] <= 100.0 and sc["timing"]["s_per_instance"] > 0
    for m in results["methods"].values():  # a method that cannot run says why
        assert "scores" in m or m["unavailable"]
    assert set(results["methods"]["oracle"]["info"]["trained_on"].values()) == {"2 unseen instances"}
    assert results["efficiency"]["scenarios"] and results["config"]["out_dir"] == str(out)
    assert {"teachers", "pretrain", "finetune", "methods/hint-like", "methods/multitask-lora"} <= set(
        results["stages"]
    )
    assert results["versions"]["torch"] and results["seed"] == 0
    stage_rows = (eval_dir / "report.md").read_text().split("## Wall time per stage")[1].split("##")[0]
    finetune_row = next(r for r in stage_rows.splitlines() if r.startswith("| train: finetune |"))
    val = results["stages"]["finetune"]["validation"]  # the held-out training tasks' CE, per setting
    assert f"Def {val['val_ce_pos0']:.3f}, Def+2Pos {val['val_ce_pos2']:.3f}" in finetune_row


def test_floors_answer_from_the_demonstrations_and_records_say_what_the_model_read(llama_run) -> None:
    """copy-demo / majority read no model; every other record carries its prompt length and budget."""
    out, backbone, results = llama_run
    from tagi.data.select import load_tasks
    from tagi.evaluate.decoding import demo_answer, new_token_budget

    cfg = tiny_config(out)
    tasks = {t.name: t for t in load_tasks(cfg.data, "test")}
    rows = [json.loads(x) for x in (out / "eval" / "predictions.jsonl").read_text().splitlines()]
    for r in rows:
        task = tasks[r["task"]]
        first = task.positive_examples[0].output
        if r["method"] == "copy-demo":
            assert r["prediction"] == first and r["prompt_tokens"] == r["max_new_tokens"] == 0
        elif r["method"] != "majority":
            assert r["prompt_tokens"] > 0
            factor = cfg.evaluate.new_tokens_from_examples
            assert r["max_new_tokens"] == new_token_budget(task, backbone, factor)
    assert results["methods"]["copy-demo"]["spec"]["answer"] == "first-demo"
    task = next(iter(tasks.values()))
    outputs = [e.output for e in task.positive_examples]
    assert demo_answer(task, "majority-demo") == max(outputs, key=outputs.count)  # earliest on a tie


def test_demo_answer_majority_breaks_ties_by_order() -> None:
    from tagi.data.sni import Example, Task
    from tagi.evaluate.decoding import demo_answer

    def task(*outs: str) -> Task:
        return Task("t", "d", tuple(Example("x", o) for o in outs), ())

    assert demo_answer(task("b", "a", "a"), "majority-demo") == "a"
    assert demo_answer(task("b", "a"), "majority-demo") == "b"
    assert demo_answer(task("b", "a", "a"), "first-demo") == "b"
    assert demo_answer(task(), "first-demo") == ""


def test_t2l_like_reads_the_instruction_with_a_sentence_encoder(llama_run) -> None:
    out, _, results = llama_run
    done = json.loads((out / "methods" / "t2l-like" / "DONE.json").read_text())["config"]
    assert done["hyper"]["encoder"] == "sentence" and done["finetune"]["loss"]["kl"] == 0.0
    assert not done["finetune"]["use_pretrained"] and results["methods"]["t2l-like"]["mode"] == "fuse"


def test_methods_use_their_training_variant(llama_run) -> None:
    out, _, results = llama_run
    info = {name: m.get("info", {}) for name, m in results["methods"].items()}
    assert info["tagi"]["checkpoint"] == str(out / "finetune" / "final")
    assert info["tagi-empty-instruction"] == info["tagi-other-instruction"] == info["tagi"]
    for name in ("hint-like", "hypter-like", "tagi-no-kl", "tagi-no-pretrain"):
        assert info[name]["checkpoint"] == str(out / "methods" / name / "final")
    hint = json.loads((out / "methods" / "hint-like" / "DONE.json").read_text())["config"]["finetune"]["loss"]
    assert (hint["kl"], hint["align"]) == (0.0, 0.0)
    assert (
        results["methods"]["hypter-like"]["mode"] == "none" and results["methods"]["tagi"]["mode"] == "fuse"
    )
    preds = {}
    for line in (out / "eval" / "predictions.jsonl").read_text().splitlines():
        r = json.loads(line)
        preds.setdefault(r["method"], []).append(r["prediction"])
    assert (
        preds["tagi"] != preds["tagi-no-kl"] or preds["tagi"] != preds["hint-like"]
    )  # different checkpoints


def test_rerun_reuses_finished_methods(llama_run, tmp_path: Path, monkeypatch) -> None:
    src, backbone, results = llama_run
    out = copy_run(src, tmp_path / "run")
    cfg = tiny_config(out, ["evaluate.methods=[no-finetune,tagi]", "evaluate.efficiency=false"])
    first = json.loads((run_evaluation(cfg, backbone) / "results.json").read_text())
    for name in ("no-finetune", "tagi"):  # same checkpoints, same predictions as the full run
        assert (
            first["methods"][name]["scores"]["Def"]["overall"]
            == results["methods"][name]["scores"]["Def"]["overall"]
        )

    def boom(*args, **kwargs):
        raise AssertionError("a finished method was evaluated again")

    monkeypatch.setattr(backbone, "generate", boom)
    second = json.loads((run_evaluation(cfg, backbone) / "results.json").read_text())
    assert second["methods"]["tagi"]["scores"] == first["methods"]["tagi"]["scores"]
    assert second["evaluation_timing"]["cached"] == ["no-finetune", "tagi"]
    assert (
        second["evaluation_timing"]["evaluate_s"] == first["evaluation_timing"]["evaluate_s"]
    )  # as computed


def test_a_new_prompt_setting_decodes_only_that_setting(llama_run, tmp_path: Path, monkeypatch) -> None:
    """A method evaluated at Def, then asked for Def and Def+2Pos, decodes Def+2Pos only and keeps its Def."""
    import tagi.evaluate.parts as parts

    src, backbone, _ = llama_run
    out = copy_run(src, tmp_path / "run")
    over = ["evaluate.methods=[tagi]", "evaluate.efficiency=false"]
    first = json.loads(
        (
            run_evaluation(tiny_config(out, [*over, "evaluate.prompt_settings=[0]"]), backbone)
            / "results.json"
        ).read_text()
    )
    decoded, real = [], parts.task_jobs
    monkeypatch.setattr(
        parts, "task_jobs", lambda prep, tasks, k, *a: decoded.append(k) or real(prep, tasks, k, *a)
    )
    cfg = tiny_config(out, [*over, "evaluate.prompt_settings=[0,2]"])
    second = json.loads((run_evaluation(cfg, backbone) / "results.json").read_text())
    assert decoded == [2]
    scores = second["methods"]["tagi"]["scores"]
    assert scores["Def"] == first["methods"]["tagi"]["scores"]["Def"] and "Def+2Pos" in scores
    assert second["evaluation_timing"]["cached"] == []  # something was decoded
    decoded.clear()
    third = json.loads((run_evaluation(cfg, backbone) / "results.json").read_text())
    assert decoded == [] and third["methods"]["tagi"]["scores"] == scores
    assert third["evaluation_timing"]["evaluate_s"] == second["evaluation_timing"]["evaluate_s"]


def test_a_second_method_list_keeps_its_own_report(llama_run, tmp_path: Path) -> None:
    src, backbone, _ = llama_run
    out = copy_run(src, tmp_path / "run")
    shutil.copytree(src / "eval", out / "eval")  # the headline report of the run
    main = (out / "eval" / "results.json").read_bytes()
    cfg = tiny_config(out, ["evaluate.methods=[no-finetune]", "evaluate.efficiency=false",
                            "evaluate.report_dir=eval-ablations"])  # fmt: skip
    eval_dir = run_evaluation(cfg, backbone)
    assert eval_dir == out / "eval-ablations"
    assert list(json.loads((eval_dir / "results.json").read_text())["methods"]) == ["no-finetune"]
    assert (eval_dir / "parts" / "no-finetune.json").is_file()
    assert (out / "eval" / "results.json").read_bytes() == main  # the first report is untouched


def test_mixed_batches_give_the_same_predictions(llama_run, tmp_path: Path) -> None:
    src, backbone, _ = llama_run
    preds = {}
    for batching in ("task", "mixed"):
        out = copy_run(src, tmp_path / batching)
        cfg = tiny_config(out, ["evaluate.methods=[tagi,oracle]", "evaluate.efficiency=false",
                                f"evaluate.batching={batching}", "evaluate.batch_size=5"])  # fmt: skip
        lines = (run_evaluation(cfg, backbone) / "predictions.jsonl").read_text().splitlines()
        preds[batching] = [json.loads(r)["prediction"] for r in lines]
    assert preds["task"] == preds["mixed"]


def test_rank_classification_section(llama_run, tmp_path: Path) -> None:
    src, backbone, _ = llama_run
    out = copy_run(src, tmp_path / "rank")
    cfg = tiny_config(out, ["evaluate.methods=[no-finetune,tagi]", "evaluate.efficiency=false",
                            "data.max_test_tasks=0", "data.max_test_instances=6"])  # fmt: skip
    eval_dir = run_evaluation(cfg, backbone)
    results = json.loads((eval_dir / "results.json").read_text())
    rank = results["methods"]["tagi"]["scores"]["Def"]["rank_classification"]
    assert "builtin_experience_good_bad" in rank["per_task"] and 0.0 <= rank["accuracy"] <= 100.0
    assert "## Rank classification" in (eval_dir / "report.md").read_text()


def test_token_budget_comes_from_the_positive_examples(backbone) -> None:
    from tagi.data.sni import Example, Instance, Task
    from tagi.evaluate.decoding import new_token_budget

    bb = backbone
    outs = ("a b c", "a b c d e f g h")
    lengths = [len(bb.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outs]
    leaky = Instance("i0", "x", (" ".join(["word"] * 200),))  # a long reference must not matter
    task = Task("t", "Do it.", tuple(Example("x", o) for o in outs), (leaky,))
    cap = bb.cfg.max_target_tokens
    assert new_token_budget(task, bb, 1.5) == min(cap, -(-3 * max(lengths) // 2) + 4)
    assert new_token_budget(task, bb, 0.0) == cap
    assert new_token_budget(Task("u", "Do it.", (), (leaky,)), bb, 1.5) == cap
    assert new_token_budget(task, bb, 1000.0) == cap


def test_generation_uses_each_tasks_budget(llama_run, tmp_path: Path, monkeypatch) -> None:
    from tagi.evaluate.decoding import new_token_budget

    src, backbone, _ = llama_run
    out = copy_run(src, tmp_path / "budget")
    cfg = tiny_config(out, ["evaluate.methods=[no-finetune]", "evaluate.efficiency=false",
                            "evaluate.rank_classification=false", "evaluate.new_tokens_from_examples=1.0"])  # fmt: skip
    seen, real = [], backbone.generate

    def spy(examples, adapter=None, mode="concat", max_new_tokens=None, **kw):
        seen.append((examples[0].instruction, max_new_tokens))
        return real(examples, adapter, mode, max_new_tokens=max_new_tokens, **kw)

    monkeypatch.setattr(backbone, "generate", spy)
    results = json.loads((run_evaluation(cfg, backbone) / "results.json").read_text())
    from tagi.data.select import load_tasks

    tasks = {t.name: t for t in load_tasks(cfg.data, "test")}
    budgets = {t["name"]: t["max_new_tokens"] for t in results["test_tasks"]}
    assert budgets == {n: new_token_budget(t, backbone, 1.0) for n, t in tasks.items()}
    assert len(set(budgets.values())) > 1 or min(budgets.values()) < cfg.model.max_target_tokens
    assert {b for _, b in seen} == set(budgets.values())


def test_adapter_specificity_is_reported_for_every_hypernetwork_method(llama_run) -> None:
    """results.json: share and cosine per hypernetwork method that reads the true instruction; one learned
    adapter (tagi-no-hypernet) has share 0 and cosine 1; the report has the section and lists real files."""
    out, _, results = llama_run
    spec = results["adapter_specificity"]
    hyper = {n for n, m in results["methods"].items() if m["spec"]["adapter"] == "hypernet"}
    assert set(spec) == hyper - {"tagi-other-instruction", "tagi-empty-instruction"}
    for s in spec.values():
        assert s["adapters"] == N_TASKS and s["setting"] == "Def" and 0.0 <= s["task_specific_share"] <= 1.0
    assert spec["tagi-no-hypernet"]["task_specific_share"] == pytest.approx(0.0, abs=1e-6)
    assert spec["tagi-no-hypernet"]["mean_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert spec["tagi"]["task_specific_share"] > 1e-6  # different instructions, different adapters
    report = (out / "eval" / "report.md").read_text()
    assert "## Adapter specificity" in report and "| tagi-no-hypernet | Def |" in report
    listed = report.split("Files: ")[1].split("\n")[0]
    for name in re.findall(r"`([^`]+)`", listed):
        assert (out / "eval" / name).is_file(), name
