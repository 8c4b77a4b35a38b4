"""The SNI benchmark script's own logic: publishing a report and recording each invocation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "sni_smollm2.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sni_smollm2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eval_dir(path: Path, config: dict, plots: list[str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"config": config, "methods": {}}))
    (path / "report.md").write_text("# report\n")
    (path / "predictions.jsonl").write_text('{"task": "t", "prediction": "x"}\n')
    for name in plots:
        (path / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    return path


def test_publish_copies_the_report_and_keeps_the_invocations(bench, tmp_path):
    dest = tmp_path / "results"
    bench.publish(_eval_dir(tmp_path / "e1", {"seed": 0}, ["a.png", "b.png"]), dest, 61.23, "tagi run x")
    bench.publish(_eval_dir(tmp_path / "e2", {"seed": 0}, ["a.png"]), dest, 5.0, "tagi run x")
    results = json.loads((dest / "results.json").read_text())
    assert [r["wall_s"] for r in results["benchmark_invocations"]] == [61.2, 5.0]
    assert sorted(p.name for p in dest.glob("*.png")) == ["a.png"]  # stale plots do not survive
    assert (dest / "report.md").read_text() == "# report\n"
    assert (dest / "predictions.jsonl").read_text() == '{"task": "t", "prediction": "x"}\n'
    bench.publish(_eval_dir(tmp_path / "e3", {"seed": 1}, []), dest, 7.0, "tagi run y")
    results = json.loads((dest / "results.json").read_text())
    assert [r["command"] for r in results["benchmark_invocations"]] == [
        "tagi run y"
    ]  # new config: new history


def test_a_newer_config_field_keeps_the_history(bench):
    old = {"seed": 0, "evaluate": {"methods": ["tagi"]}}
    assert bench.same_settings(old, {"seed": 0, "evaluate": {"methods": ["tagi"], "report_dir": "eval"}})
    assert not bench.same_settings(old, {"seed": 1, "evaluate": {"methods": ["tagi"]}})
    assert not bench.same_settings(old, {"seed": 0, "evaluate": {"methods": ["tagi", "oracle"]}})
    assert not bench.same_settings(old, {"seed": 0})


def test_missing_data_folder_is_one_error_line(bench, tmp_path, capsys):
    assert bench.main(["--sni-dir", str(tmp_path / "nope"), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: SNI data folder not found")
    assert not (tmp_path / "r").exists()


def test_main_runs_the_given_config_and_publishes_its_report_dir(bench, tmp_path, monkeypatch):
    import tagi.cli

    calls = []
    config = Path(__file__).parents[1] / "configs" / "bench-sni-smollm2-ablations.yaml"

    def fake_run(argv):  # stands in for the real pipeline: writes the report where the config says
        calls.append(argv)
        _eval_dir(tmp_path / "run" / "eval-ablations", {"seed": 0}, ["methods.png"])
        return 0

    monkeypatch.setattr(tagi.cli, "main", fake_run)
    code = bench.main(["--config", str(config), "--sni-dir", str(tmp_path), "--out", str(tmp_path / "run"),
                       "--results", str(tmp_path / "r")])  # fmt: skip
    assert code == 0
    assert calls[0][:2] == ["run", str(config)] and f"out_dir={tmp_path / 'run'}" in calls[0]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    command = results["benchmark_invocations"][0]["command"]
    assert command.startswith("tagi run configs/bench-sni-smollm2-ablations.yaml ")
    assert (tmp_path / "r" / "methods.png").is_file()


def test_published_results_name_no_absolute_paths(bench, tmp_path):
    root = bench.ROOT
    config = {"out_dir": f"{root}/runs/x", "data": {"sni_dir": f"{root.parent}/shared/data/sni"}, "seed": 0}
    src = _eval_dir(tmp_path / "e", config, [])
    (src / "report.md").write_text(f"data ({root.parent}/shared/data/sni)\n")
    bench.publish(src, tmp_path / "dest", 1.0, "tagi run x")
    results = json.loads((tmp_path / "dest" / "results.json").read_text())
    assert results["config"]["out_dir"] == "runs/x"
    assert results["config"]["data"]["sni_dir"] == "../shared/data/sni"
    assert (tmp_path / "dest" / "report.md").read_text() == "data (../shared/data/sni)\n"


def test_demo_check_reports_every_changed_score():
    spec = importlib.util.spec_from_file_location("demo_script", SCRIPT.parent / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)

    def results(**methods):
        return {
            "methods": {
                n: {"scores": {"Def": {"overall": {"rougeL": r, "exact_match": e}}}}
                for n, (r, e) in methods.items()
            }
        }

    same = results(tagi=(26.5, 15.6), base=(8.5, 0.0))
    assert demo.differences(same, results(tagi=(26.5, 15.6), base=(8.5, 0.0))) == []
    diff = demo.differences(same, results(tagi=(26.5, 15.7), extra=(1.0, 0.0)))
    assert diff == [
        "base Def: committed 8.50 / 0.00, regenerated missing",
        "extra Def: committed missing, regenerated 1.00 / 0.00",
        "tagi Def: committed 26.50 / 15.60, regenerated 26.50 / 15.70",
    ]


def test_specificity_levers_smoke_run(tmp_path, monkeypatch):
    """The lever benchmark end to end on the tiny model: every lever gets its validation numbers,
    standardising the hypernetwork's input makes its adapters more task-specific than the base setting, and
    the no-hypernet control is one adapter (nothing to swap, no task-specific part)."""
    levers = script("specificity_levers", monkeypatch)
    out = tmp_path / "levers.json"
    common = ["--config", str(SCRIPT.parents[1] / "configs" / "tiny.yaml"), "--steps", "4", "--out",
              str(tmp_path / "run"), "--results", str(out), "--val-instances", "2", "--set",
              "data.validation_tasks=3", "data.max_train_tasks=8", "pretrain.train.max_steps=2"]  # fmt: skip
    assert levers.main([*common, "--levers", "base", "standardize", "no-hypernet"]) == 0
    rows = json.loads(out.read_text())["levers"]
    assert set(rows) == {"base", "standardize", "no-hypernet"}
    for r in rows.values():
        assert (
            0 <= r["rougeL"] <= 100 and r["val_spread"]["adapters"] == 3 and r["test_spread"]["adapters"] > 0
        )
    share = {n: r["val_spread"]["task_specific_share"] for n, r in rows.items()}
    assert share["standardize"] > 10 * share["base"]
    assert rows["no-hypernet"]["swap_delta"] == 0 and abs(share["no-hypernet"]) < 1e-6
    assert rows["no-hypernet"]["alone_swap_delta"] == 0  # one adapter: another task's is the same one
    assert json.loads(out.read_text())["validation_instances"] == 2
    for r in rows.values():  # 4 steps x batch 4 x accumulation 2, in chunks of 4 examples of one task
        drawn = r["drawn"]
        assert drawn["examples"] == 32 and drawn["training_tasks"] == 5 and drawn["training_examples"] > 32
        assert 1 <= drawn["categories"] <= drawn["tasks"] <= 5 and drawn["training_categories"] >= 1
    # a rerun reuses each lever's measurement (kept next to its checkpoint) and reports the same rows
    kept = sorted((tmp_path / "run").glob("*/finetune-*/levers-measure-2.json"))
    assert len(kept) == 3
    stamps = [k.stat().st_mtime_ns for k in kept]
    assert levers.main([*common, "--levers", "base", "no-hypernet"]) == 0
    again = json.loads(out.read_text())["levers"]
    assert again == {n: rows[n] for n in ("base", "no-hypernet")}
    assert [k.stat().st_mtime_ns for k in kept] == stamps


def test_specificity_levers_distill_trains_its_teachers(tmp_path, monkeypatch):
    """The ``distill`` lever trains the category teachers it distils from (with its own step count, in the
    run folder) and finetunes with the KL and alignment terms switched on; CE-only levers train none."""
    levers = script("specificity_levers", monkeypatch)
    out, run = tmp_path / "levers.json", tmp_path / "run"
    common = ["--config", str(SCRIPT.parents[1] / "configs" / "tiny.yaml"), "--steps", "4", "--out", str(run),
              "--results", str(out), "--val-instances", "2", "--set", "data.validation_tasks=3",
              "data.max_train_tasks=8", "pretrain.train.max_steps=2"]  # fmt: skip
    assert levers.main([*common, "--levers", "base"]) == 0
    assert not (run / "hyper-default" / "teachers").exists()
    assert levers.main([*common, "--levers", "distill"]) == 0
    index = json.loads((run / "hyper-default" / "teachers" / "index.json").read_text())
    metas = [
        json.loads((run / "hyper-default" / "teachers" / f / "tagi.json").read_text())
        for f in index["groups"].values()
    ]
    assert metas and all(m["train"]["steps"] == 8 for m in metas)
    log = [
        json.loads(line) for line in (run / "hyper-default" / "finetune-distill-4steps" / "log.jsonl").open()
    ]
    train = [row for row in log if "split" not in row]  # the finetuning's own rows, not its validation
    assert train and all(row["kl"] > 0 and row["align"] > 0 for row in train)
    assert set(json.loads(out.read_text())["levers"]) == {"distill"}


def test_specificity_levers_input_levers_get_their_own_pretraining(tmp_path, monkeypatch):
    """A lever that changes what the hypernetwork reads (its pooling, or the base model's layer) is pretrained
    in its own folder, and the layer lever's model really is loaded with that layer: its adapters differ."""
    levers = script("specificity_levers", monkeypatch)
    monkeypatch.setitem(levers.LEVERS, "middle-layer", ["model.instruction_layer=1"])  # the tiny model has 2
    out, run = tmp_path / "levers.json", tmp_path / "run"
    args = ["--config", str(SCRIPT.parents[1] / "configs" / "tiny.yaml"), "--steps", "4", "--out", str(run),
            "--results", str(out), "--val-instances", "2", "--levers", "base", "middle-layer", "attention",
            "--set", "data.validation_tasks=3", "data.max_train_tasks=8", "pretrain.train.max_steps=2",
            "seed=3"]  # fmt: skip
    assert levers.main(args) == 0
    results = json.loads(out.read_text())
    assert (results["seed"], results["data_seed"]) == (3, 0)  # the seed the run used, not a constant
    for folder in ("hyper-default", "hyper-layer1", "hyper-attention"):
        assert (run / folder / "pretrain" / "DONE.json").is_file()
    layers = {n: c["model"]["instruction_layer"] for n, c in results["configs"].items()}
    assert layers == {"base": -1, "middle-layer": 1, "attention": -1}
    assert results["configs"]["attention"]["hyper"]["pooling"] == "attention"
    share = {n: r["test_spread"]["task_specific_share"] for n, r in results["levers"].items()}
    assert len({round(v, 6) for v in share.values()}) == 3  # three different inputs, three different spreads


def script(name: str, monkeypatch):
    """``benchmarks/<name>.py`` as a module (its siblings importable by name, as when it runs)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def layout(monkeypatch):
    return script("weight_layout", monkeypatch)


def test_weight_layout_smoke_run(layout, tmp_path):
    """``benchmarks/weight_layout.py --smoke``: every shape measured for both copies, every linear layer
    but the output head stored input-major, and both copies give the same logits up to float rounding
    (the same weights in another memory order; speed is not checked)."""
    from tagi.backbones import load_backbone
    from tagi.config import ModelConfig

    out = tmp_path / "layout.json"
    assert layout.main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["shapes"]) == set(layout.SHAPES)
    for row in result["shapes"].values():
        assert row["ms"]["as loaded"] > 0 and row["ms"]["input-major"] > 0
        assert row["max_abs_logit_diff"] < 1e-4
    model = load_backbone(ModelConfig(name="tiny-llama")).model
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    assert result["linear_layers_relaid"] == len(linears) > 0


def test_input_major_keeps_values_and_shapes(layout):
    """The relayout changes memory order only: each weight keeps its shape and values, and is now
    column-major (its transpose is contiguous)."""
    lin = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 3))
    before = [m.weight.detach().clone() for m in lin]
    lin.get_output_embeddings = lambda: None  # a stand-in: no output head to skip
    assert layout.input_major(lin) == 2
    for m, w in zip(lin, before, strict=True):
        assert m.weight.shape == w.shape and torch.equal(m.weight, w)
        assert not m.weight.is_contiguous() and m.weight.t().is_contiguous()


@pytest.fixture
def teachers_bench(monkeypatch):
    return script("teacher_quality", monkeypatch)


TINY_TEACHERS = ["teachers.train.max_steps=2", "evaluate.multitask_steps=2"]


def test_teacher_quality_holds_out_unseen_instances(teachers_bench):
    from tagi.config import load_config

    cfg = load_config(
        SCRIPT.parents[1] / "configs" / "tiny.yaml", [*TINY_TEACHERS, "data.max_train_instances=12"]
    )
    train, held = teachers_bench.split_instances(cfg, 2)
    assert [t.name for t in train] == [t.name for t in held]
    for t, h in zip(train, held, strict=True):
        assert len(t.instances) == 12 and len(h.instances) == 2
        assert not {i.id for i in t.instances} & {i.id for i in h.instances}


def test_teacher_quality_smoke_run_and_reuse(teachers_bench, tmp_path):
    """The tiny config end to end: every group scored for the three models, totals that follow from the
    rows, and a second run that reuses the trained adapters and gives the same numbers."""
    out = tmp_path / "tq.json"
    args = ["--config", str(SCRIPT.parents[1] / "configs" / "tiny.yaml"), "--sni-dir", str(tmp_path),
            "--out", str(tmp_path / "run"), "--results", str(out), "--train-instances", "12", "--set",
            *TINY_TEACHERS]  # fmt: skip
    assert teachers_bench.main(args) == 0
    first = json.loads(out.read_text())
    rows = first["groups"]
    assert rows and all(set(r["ce"]) == set(teachers_bench.MODELS) for r in rows.values())
    assert all(r["label_tokens"] > 0 and r["held_out_examples"] == 2 * r["tasks"] for r in rows.values())
    wins = sum(r["ce"]["teacher"] < r["ce"]["multitask-lora"] for r in rows.values())
    assert first["summary"]["teacher_beats_multitask"] == wins and first["summary"]["groups"] == len(rows)
    weights = sorted((tmp_path / "run").rglob("adapter_model.safetensors"))
    assert len(weights) == len(rows) + 1  # one teacher per group and the multi-task LoRA
    stamps = [w.stat().st_mtime_ns for w in weights]
    assert teachers_bench.main(args) == 0
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    assert json.loads(out.read_text())["groups"] == rows


def test_teacher_quality_refuses_nothing_to_hold_out(teachers_bench, tmp_path, capsys):
    out = tmp_path / "tq.json"
    args = ["--config", str(SCRIPT.parents[1] / "configs" / "tiny.yaml"), "--sni-dir", str(tmp_path),
            "--out", str(tmp_path / "run"), "--results", str(out), "--held-out", "0"]  # fmt: skip
    assert teachers_bench.main(args) == 2
    assert "--held-out and --train-instances must be >= 1" in capsys.readouterr().err and not out.exists()
