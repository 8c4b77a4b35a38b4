"""`tagi sweep`: grid parsing, point folders, and a tiny sweep ranked by validation CE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_helpers import CONFIGS

from tagi.cli import main
from tagi.config import ConfigError
from tagi.train.common import read_done
from tagi.train.sweep import (
    format_table,
    grid_points,
    parse_axes,
    point_config,
    point_folder,
    run_sweep,
    split_values,
)


@pytest.mark.parametrize(
    ("raw", "values"),
    [
        ("1e-3", ["1e-3"]),
        ("1e-3, 3e-3", ["1e-3", "3e-3"]),
        ("[0,2],[0]", ["[0,2]", "[0]"]),
        ("true,false", ["true", "false"]),
    ],
)
def test_split_values_keeps_bracketed_commas(raw, values):
    assert split_values(raw) == values


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ([], "at least one --grid axis"),
        (["finetune.train.lr"], "not of the form"),
        (["finetune.train.lr="], "not of the form"),
        (["data.max_train_tasks=2,3"], "finetune.* settings only"),
        (["finetune.train.lr=1,2", "finetune.train.lr=3"], "given twice"),
        (["finetune.train.lr=1,,2"], "empty value"),
    ],
)
def test_parse_axes_rejects_bad_grids(grid, message):
    with pytest.raises(ConfigError, match=message):
        parse_axes(grid)


def test_grid_points_are_the_product_first_axis_slowest():
    axes = parse_axes(["finetune.train.lr=1,2,1", "finetune.loss.kl=0,1"])  # the repeated 1 counts once
    assert grid_points(axes) == [
        ("finetune.train.lr=1", "finetune.loss.kl=0"),
        ("finetune.train.lr=1", "finetune.loss.kl=1"),
        ("finetune.train.lr=2", "finetune.loss.kl=0"),
        ("finetune.train.lr=2", "finetune.loss.kl=1"),
    ]


def test_point_folder_is_the_runs_own_finetuning_or_a_hash_of_its_settings(tiny, tmp_path):
    cfg = tiny()
    same = ("finetune.train.lr=0.003",)  # the tiny config's value
    assert point_folder(cfg, point_config(cfg, same), same) == tmp_path / "run" / "finetune"
    # log/checkpoint settings do not change what is trained
    run_only = ("finetune.train.log_every=1",)
    assert point_folder(cfg, point_config(cfg, run_only), run_only).name == "finetune"
    other = ("finetune.train.lr=0.01",)
    a = point_folder(cfg, point_config(cfg, other), other)
    assert a.parent == tmp_path / "run" / "sweep" and a.name.startswith("train.lr=0.01-")
    # the same point under other data settings is another folder
    cfg2 = tiny("data.builtin_instances=9")
    assert point_folder(cfg2, point_config(cfg2, other), other) != a
    with pytest.raises(ConfigError):
        point_config(cfg, ("finetune.train.lr=-1",))


def test_tiny_sweep_ranks_points_by_validation_ce_and_reuses_finished_points(tiny, tmp_path):
    cfg = tiny("data.validation_tasks=1", "finetune.train.max_steps=6")
    grid = ["finetune.train.lr=0.003,1e-8"]  # the run's own setting; a hypernetwork that barely moves
    record = run_sweep(cfg, grid)
    out = tmp_path / "run"
    rows = record["latest"]
    assert [r["overrides"] for r in rows] == [["finetune.train.lr=0.003"], ["finetune.train.lr=1e-8"]]
    assert rows[0]["folder"] == str(out / "finetune")  # the main point is the run's finetuning
    for r in rows:
        done = read_done(Path(r["folder"]))
        assert r["validation"] == done["validation"] and set(r["validation"]) == {
            "val_ce_pos0",
            "val_ce_pos2",
        }
        assert r["score"] == pytest.approx(sum(r["validation"].values()) / 2)
    assert rows[0]["score"] != rows[1]["score"]  # the two points trained differently
    assert record["best"] == min(rows, key=lambda r: r["score"])
    saved = json.loads((out / "sweep" / "sweep.json").read_text())
    assert saved["best"] == record["best"] and saved["seed"] == 0 and "torch" in saved["versions"]
    assert len(saved["points"]) == 2

    # a second sweep reuses both finished points and keeps the earlier points in sweep.json
    stamps = {r["folder"]: (Path(r["folder"]) / "DONE.json").stat().st_mtime_ns for r in rows}
    again = run_sweep(cfg, ["finetune.train.lr=1e-8"])
    assert (Path(rows[1]["folder"]) / "DONE.json").stat().st_mtime_ns == stamps[rows[1]["folder"]]
    assert again["latest"][0]["validation"] == rows[1]["validation"]
    assert len(json.loads((out / "sweep" / "sweep.json").read_text())["points"]) == 2
    # a finished point written before a config field existed (other hash) is still found by its settings
    old = Path(rows[1]["folder"])
    done = json.loads((old / "DONE.json").read_text())
    del done["config"]["finetune"]["task_group"]
    (old / "DONE.json").write_text(json.dumps(done))
    moved = old.rename(old.with_name("train.lr=1e-8-00000000"))
    point = ("finetune.train.lr=1e-8",)
    assert point_folder(cfg, point_config(cfg, point), point) == moved
    table = format_table(rows, record["best"])
    assert table.count("\n") == 3 and "(best)" in table
    assert format_table(again["latest"], again["best"]) in (out / "sweep" / "sweep.md").read_text()


def test_sweep_cli_errors_are_one_line(tmp_path, capsys):
    base = [str(CONFIGS / "tiny.yaml"), f"out_dir={tmp_path / 'run'}"]
    assert main(["sweep", *base, "data.validation_tasks=0", "--grid", "finetune.train.lr=1e-3"]) == 2
    assert "set data.validation_tasks > 0" in capsys.readouterr().err
    assert main(["sweep", *base, "--grid", "teachers.rank=2,4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # nothing was trained or written


def test_rougeL_sweep_ranks_by_decoded_validation_and_caches_it(tmp_path, capsys):
    """--metric rougeL: every point gets the decoded Rouge-L of the held-out training tasks per setting, the
    highest mean wins, and a rerun reads the stored scores instead of decoding again."""
    base = [str(CONFIGS / "tiny.yaml"), f"out_dir={tmp_path / 'run'}", "data.max_train_tasks=4",
            "data.builtin_instances=8", "data.validation_tasks=2", "teachers.train.max_steps=2",
            "pretrain.train.max_steps=2", "finetune.train.max_steps=4"]  # fmt: skip
    args = ["sweep", *base, "--metric", "rougeL", "--grid", "finetune.train.lr=0.003,1e-8"]
    assert main(args) == 0
    record = json.loads((tmp_path / "run" / "sweep" / "sweep.json").read_text())
    assert record["metric"] == "rougeL" and record["select"].startswith("highest mean decoded")
    for r in record["latest"]:
        decoded = {k: v for k, v in r["validation"].items() if k.startswith("val_rougeL")}
        assert set(decoded) == {"val_rougeL_pos0", "val_rougeL_pos2"}
        assert all(0.0 <= v <= 100.0 for v in decoded.values())
        assert r["score"] == pytest.approx(sum(decoded.values()) / 2)
        assert "val_ce_pos0" in r["validation"]  # CE is still recorded
    assert record["best"]["score"] == max(r["score"] for r in record["latest"])
    caches = [Path(r["folder"]) / "validation_decoded.json" for r in record["latest"]]
    stamps = [c.stat().st_mtime_ns for c in caches]
    assert main(args) == 0
    assert [c.stat().st_mtime_ns for c in caches] == stamps  # read back, not decoded again
    capsys.readouterr()
    assert main(["sweep", *base, "--metric", "bleu", "--grid", "finetune.train.lr=1e-3"]) == 2
    assert "unknown sweep metric 'bleu'" in capsys.readouterr().err
