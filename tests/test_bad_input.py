"""Bad input, everywhere a user can give it: one table of cases run through ``tagi.cli.main`` in-process.

Each case builds its inputs under ``tmp_path`` and returns the argv; the test snapshots every file under
``tmp_path`` (bytes and mtime), runs the command and asserts: a non-zero exit, stderr is exactly one line
``error: ...`` naming the problem (a keyword per case, a regular expression), no traceback, and nothing on disk changed (no file
modified, created or deleted). A few cases that only the Python API can express assert the exception type
(a :class:`~tagi.errors.TagiError` subclass) and its message instead.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tagi import Adapter, Tagi
from tagi.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tagi.cli import main
from tagi.config import HyperConfig, ModelConfig
from tagi.errors import TagiError
from tagi.model import TagiModel

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
HYPER = HyperConfig(rank=4, hidden=32, module_embed_dim=8)
TASK = {
    "Definition": ["Copy the input"],
    "Positive Examples": [{"input": "ab", "output": "ab"}],
    "Instances": [{"id": "1", "input": "xy", "output": ["xy"]}],
}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def assets(backbones, tmp_path_factory) -> dict[str, Path]:
    """A tiny-llama checkpoint, a tiny-t5 checkpoint and an adapter from the first (copied into each case)."""
    root = tmp_path_factory.mktemp("assets")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        llama = TagiModel(backbones["tiny-llama"], HYPER)
        t5 = TagiModel(backbones["tiny-t5"], HYPER)
    llama.save(root / "ckpt")
    t5.save(root / "ckpt_t5")
    tagi = Tagi(backbones["tiny-llama"], llama)
    tagi.generate_adapter("Copy the input").save(root / "adapter")
    return {"ckpt": root / "ckpt", "ckpt_t5": root / "ckpt_t5", "adapter": root / "adapter"}


def _copy(assets: dict[str, Path], name: str, tmp: Path) -> Path:
    dst = tmp / name
    shutil.copytree(assets[name], dst)
    return dst


def _task_file(tmp: Path, content: bytes | dict, name: str = "task.json") -> Path:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


def _sni(tmp: Path, tasks: dict[str, bytes | dict], listed: list[str] | None = None) -> Path:
    """An SNI folder: ``tasks/<name>.json`` for each entry and a train list naming ``listed`` (default all)."""
    root = tmp / "sni"
    (root / "tasks").mkdir(parents=True)
    (root / "splits" / "default").mkdir(parents=True)
    for name, content in tasks.items():
        _task_file(root / "tasks", content, f"{name}.json")
    names = list(tasks) if listed is None else listed
    (root / "splits" / "default" / "train_tasks.txt").write_text("".join(n + "\n" for n in names))
    (root / "splits" / "default" / "test_tasks.txt").write_text("".join(n + "\n" for n in names))
    return root


def _train_sni(tmp: Path, sni: Path) -> list[str]:
    return ["train-teachers", TINY, f"out_dir={tmp / 'run'}", "data.source=sni", f"data.sni_dir={sni}"]


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _predict_adapter(tmp: Path, adapter: Path) -> list[str]:
    return ["predict", "--adapter", str(adapter), "--input", "hello"]


IMMUTABLE: list[Path] = []  # folders made immutable with chattr +i (undone after the case)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").touch()
    except PermissionError:
        return False
    (folder / ".probe").unlink()
    return True


# ---------------------------------------------------------------------------------------------- cases
# each case: (tmp_path, assets) -> argv; the keyword must appear in the one-line error


def c_empty_instruction(tmp, a):
    return ["generate", "--checkpoint", _copy(a, "ckpt", tmp), "--instruction", "", "--out", tmp / "ad"]


def c_whitespace_instruction(tmp, a):
    ck = _copy(a, "ckpt", tmp)
    return ["generate", "--checkpoint", ck, "--instruction", " \n\t ", "--out", tmp / "ad"]


def c_instruction_beyond_context(tmp, a):
    # instructions longer than model.max_instruction_tokens are truncated (with a warning, recorded in
    # tagi.json); a limit beyond what the base model can attend to is refused
    return ["train-teachers", TINY, f"out_dir={tmp / 'run'}", "model.max_instruction_tokens=100000"]


def c_input_beyond_context(tmp, a):
    return ["train-teachers", TINY, f"out_dir={tmp / 'run'}", "model.max_input_tokens=100000"]


def c_task_file_not_utf8(tmp, a):
    task = _task_file(tmp, b'{"Definition": ["caf\xe9 \xff"]}')
    return ["generate", "--checkpoint", _copy(a, "ckpt", tmp), "--task-file", task, "--out", tmp / "ad"]


def c_input_file_not_utf8(tmp, a):
    (tmp / "in.txt").write_bytes(b"hello \xff\xfe world\n")
    return ["predict", "--adapter", _copy(a, "adapter", tmp), "--input-file", tmp / "in.txt"]


def c_config_not_utf8(tmp, a):
    (tmp / "c.yaml").write_bytes(b"out_dir: \xff\xfe\n")
    return ["train-teachers", tmp / "c.yaml"]


def c_task_file_not_json(tmp, a):
    task = _task_file(tmp, b"Definition: copy the input\n")
    return ["generate", "--checkpoint", _copy(a, "ckpt", tmp), "--task-file", task, "--out", tmp / "ad"]


def c_task_file_without_definition(tmp, a):
    task = _task_file(tmp, {k: v for k, v in TASK.items() if k != "Definition"})
    return ["generate", "--checkpoint", _copy(a, "ckpt", tmp), "--task-file", task, "--out", tmp / "ad"]


def c_task_without_instances(tmp, a):
    return _train_sni(tmp, _sni(tmp, {"task1_copy": TASK | {"Instances": []}}))


def c_instances_without_outputs(tmp, a):
    return _train_sni(tmp, _sni(tmp, {"task1_copy": TASK | {"Instances": [{"id": "1", "input": "xy"}]}}))


def c_split_names_only_missing_tasks(tmp, a):
    return _train_sni(tmp, _sni(tmp, {"task1_copy": TASK}, listed=["task9_missing", "task8_missing"]))


def c_data_folder_missing(tmp, a):
    return _train_sni(tmp, tmp / "no_such_sni")


def c_config_unknown_key(tmp, a):
    (tmp / "c.yaml").write_text(f"out_dir: {tmp / 'run'}\nhyper:\n  rnak: 4\n")
    return ["train-teachers", tmp / "c.yaml"]


def c_config_wrong_type(tmp, a):
    return ["pretrain", TINY, f"out_dir={tmp / 'run'}", "pretrain.train.max_steps=many"]


def c_config_negative_lr(tmp, a):
    return ["finetune", TINY, f"out_dir={tmp / 'run'}", "finetune.train.lr=-0.001"]


def c_config_rank_zero(tmp, a):
    return ["run", TINY, f"out_dir={tmp / 'run'}", "hyper.rank=0", "--skip-eval"]


def c_config_file_missing(tmp, a):
    return ["run", tmp / "nope.yaml"]


def c_config_not_yaml(tmp, a):
    (tmp / "c.yaml").write_text("out_dir: [unclosed\n")
    return ["run", tmp / "c.yaml"]


def c_override_not_key_value(tmp, a):
    return ["run", TINY, f"out_dir={tmp / 'run'}", "hyper.rank"]


def c_checkpoint_missing(tmp, a):
    return ["generate", "--checkpoint", tmp / "nope", "--instruction", "Copy", "--out", tmp / "ad"]


def c_checkpoint_truncated(tmp, a):
    ck = _copy(a, "ckpt", tmp)
    weights = ck / "hypernet.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return ["generate", "--checkpoint", ck, "--instruction", "Copy", "--out", tmp / "ad"]


def c_checkpoint_config_missing(tmp, a):
    ck = _copy(a, "ckpt", tmp)
    (ck / "tagi_config.json").unlink()
    return ["generate", "--checkpoint", ck, "--instruction", "Copy", "--out", tmp / "ad"]


def c_checkpoint_other_base(tmp, a):
    # finetuning a tiny-llama config starts from <out_dir>/pretrain/final, a hypernetwork made for tiny-t5
    pre = tmp / "run" / "pretrain"
    pre.mkdir(parents=True)
    shutil.copytree(a["ckpt_t5"], pre / "final")
    (pre / "DONE.json").write_text("{}")
    return ["finetune", TINY, f"out_dir={tmp / 'run'}", "finetune.loss.kl=0", "finetune.loss.align=0"]


def c_adapter_other_rank(tmp, a):
    ad = _copy(a, "adapter", tmp)
    _edit_json(ad / ADAPTER_CONFIG, r=8)
    return _predict_adapter(tmp, ad)


def c_adapter_other_targets(tmp, a):
    ad = _copy(a, "adapter", tmp)
    tensors = load_file(ad / ADAPTER_WEIGHTS)
    save_file({k.replace("q_proj", "qq_proj"): v for k, v in tensors.items()}, ad / ADAPTER_WEIGHTS)
    return _predict_adapter(tmp, ad)


def c_adapter_not_a_folder(tmp, a):
    (tmp / "adapter.bin").write_bytes(b"\0" * 10)
    return _predict_adapter(tmp, tmp / "adapter.bin")


def c_output_exists(tmp, a):
    (tmp / "ad").mkdir()
    (tmp / "ad" / "notes.txt").write_text("mine")
    ck = _copy(a, "ckpt", tmp)
    return ["generate", "--checkpoint", ck, "--instruction", "Copy", "--out", tmp / "ad"]


def c_output_is_a_file(tmp, a):
    (tmp / "ad").write_text("a file")
    ck = _copy(a, "ckpt", tmp)
    return ["generate", "--checkpoint", ck, "--instruction", "Copy", "--out", tmp / "ad"]


def c_output_read_only(tmp, a):
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if _writable(ro):  # root ignores permission bits: make the folder immutable instead (ext4, xfs, ...)
        ro.chmod(0o755)
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(ro)]).returncode != 0:
            pytest.skip("running as root and chattr +i is unavailable: a read-only folder is still writable")
        IMMUTABLE.append(ro)
    ck = _copy(a, "ckpt", tmp)
    return ["generate", "--checkpoint", ck, "--instruction", "Copy", "--out", ro / "ad"]


def c_predict_output_is_a_folder(tmp, a):
    (tmp / "out").mkdir()
    return ["predict", "--adapter", _copy(a, "adapter", tmp), "--input", "hi", "--output", tmp / "out"]


def c_unfinished_run_without_resume(tmp, a):
    state = tmp / "run" / "pretrain" / "state"
    state.mkdir(parents=True)
    for f in ("weights.safetensors", "optim.pt", "trainer.json"):
        (state / f).write_text("{}")
    return ["pretrain", TINY, f"out_dir={tmp / 'run'}"]


CASES: dict[str, tuple[Callable, str]] = {
    "empty instruction": (c_empty_instruction, "instruction is empty"),
    "whitespace-only instruction": (c_whitespace_instruction, "instruction is empty"),
    "instruction limit beyond the model's context": (c_instruction_beyond_context, "max_instruction_tokens"),
    "input limit beyond the model's context": (c_input_beyond_context, "context"),
    "task file not UTF-8": (c_task_file_not_utf8, "not UTF-8"),
    "input file not UTF-8": (c_input_file_not_utf8, "not UTF-8"),
    "config file not UTF-8": (c_config_not_utf8, "not UTF-8"),
    "task file not JSON": (c_task_file_not_json, "not valid JSON"),
    "task file without Definition": (c_task_file_without_definition, 'missing "Definition"'),
    "task without instances": (c_task_without_instances, "Instances"),
    "instances without outputs": (c_instances_without_outputs, '"output"'),
    "split list naming only missing tasks": (c_split_names_only_missing_tasks, "none of the 2 tasks"),
    "data folder missing": (c_data_folder_missing, "not found"),
    "config unknown key": (c_config_unknown_key, "unknown config key 'hyper.rnak'"),
    "config wrong type": (c_config_wrong_type, "max_steps"),
    "config negative learning rate": (c_config_negative_lr, "lr"),
    "config rank 0": (c_config_rank_zero, "rank"),
    "config file missing": (c_config_file_missing, "not found"),
    "config not YAML": (c_config_not_yaml, "not valid YAML"),
    "override not key=value": (c_override_not_key_value, "key=value"),
    "checkpoint missing": (c_checkpoint_missing, "checkpoint not found"),
    "checkpoint truncated": (c_checkpoint_truncated, "corrupt"),
    "checkpoint without config": (c_checkpoint_config_missing, "not a tagi checkpoint"),
    "checkpoint for another base model": (c_checkpoint_other_base, "made for base model 'tiny-t5'"),
    "adapter with another rank": (c_adapter_other_rank, "rank"),
    "adapter with other target modules": (c_adapter_other_targets, "qq_proj"),
    "adapter path is a file": (c_adapter_not_a_folder, "not a PEFT LoRA folder"),
    "output folder exists": (c_output_exists, "exists"),
    "output path is a file": (c_output_is_a_file, "is a file"),
    "output folder read-only": (c_output_read_only, "Permission denied|Operation not permitted"),
    "predict output is a folder": (c_predict_output_is_a_folder, "is a folder"),
    "unfinished run without --resume": (c_unfinished_run_without_resume, "--resume"),
}


def snapshot(root: Path) -> dict[str, tuple[bytes | None, int]]:
    """Bytes and mtime (ns) of every file, and every folder, under ``root``."""
    out: dict[str, tuple[bytes | None, int]] = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line_and_changes_nothing(case, assets, tmp_path, capsys):
    build, keyword = CASES[case]
    argv = [str(x) for x in build(tmp_path, assets)]
    before = snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    finally:
        while IMMUTABLE:
            subprocess.run(["chattr", "-i", str(IMMUTABLE.pop())], check=True)
    _, err = capsys.readouterr()
    lines = err.strip("\n").splitlines()
    assert code != 0
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) > len("error: "), err
    assert re.search(keyword, lines[0]), lines[0]
    assert snapshot(tmp_path) == before, "the command changed files on disk"


def test_debug_shows_the_traceback(assets, tmp_path):
    with pytest.raises(TagiError, match="instruction is empty"):
        main([str(x) for x in c_empty_instruction(tmp_path, assets)] + ["--debug"])


# ------------------------------------------------------------------------------ Python-API-only cases


def test_api_empty_and_whitespace_instructions(assets, backbones):
    tagi = Tagi.from_checkpoint(assets["ckpt"], backbone=backbones["tiny-llama"])
    for text in ("", "   \n"):
        with pytest.raises(TagiError, match="instruction is empty"):
            tagi.generate_adapter(text)


def test_api_instruction_beyond_the_context_is_truncated_and_recorded(assets, backbones):
    """An instruction longer than ``model.max_instruction_tokens`` is not an error: it is truncated (a
    warning) and the adapter records it; the limit itself cannot exceed the model's context (table above)."""
    tagi = Tagi.from_checkpoint(assets["ckpt"], backbone=backbones["tiny-llama"])
    adapter = tagi.generate_adapter("copy the input " * 5000)
    assert adapter.instruction_truncated
    assert len(adapter.instruction) < len("copy the input " * 5000)


def test_api_adapter_for_another_base_model(assets, backbones):
    adapter = Adapter.load(assets["adapter"])
    t5 = Tagi(backbones["tiny-t5"])
    with pytest.raises(TagiError, match="base model"):
        t5.check_adapter(adapter)


def test_api_checkpoint_loaded_on_another_base_model(assets, backbones):
    with pytest.raises(TagiError, match="tiny-t5"):
        TagiModel.load(assets["ckpt_t5"], backbones["tiny-llama"])


def test_api_model_config_rejects_non_positive_limits():
    with pytest.raises(TagiError, match="max_input_tokens"):
        ModelConfig(name="tiny-llama", max_input_tokens=0)
