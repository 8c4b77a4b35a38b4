"""The training an evaluated method needs.

:class:`Pipeline` trains (or skips, each stage being resumable and skipped when its ``DONE.json`` exists)
what an evaluated method needs, taking the stage order from the stage plan
(:func:`tagi.train.stages.prerequisites`):

- the main run, or the finetuning of a training variant into ``<out_dir>/methods/<name>/`` (sharing the
  main run's teachers, pretraining and teacher cache);
- the multi-task LoRA baseline (``methods/multitask-lora/``) and one oracle LoRA per test task
  (``methods/oracle/<task>/``), fitted with the teachers' settings by :func:`tagi.train.teachers.fit_lora`.

The evaluation reaches the training stages only through this module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from tagi.adapters import ADAPTER_WEIGHTS, load_adapter
from tagi.backbones import Backbone, PromptExample
from tagi.config import ExperimentConfig, to_dict
from tagi.data.select import config_split, load_tasks, task_examples
from tagi.data.sni import Task
from tagi.files import file_sha256, write_json
from tagi.lora import LoraWeights
from tagi.train import stages
from tagi.train.teachers import fit_lora

log = logging.getLogger("tagi.pipeline")


class Pipeline:
    """Runs (or skips) the training a method needs; every stage is resumable and skips when done."""

    def __init__(self, cfg: ExperimentConfig, backbone: Backbone) -> None:
        self.cfg, self.backbone = cfg, backbone
        self.out = Path(cfg.out_dir)

    def checkpoint(self, name: str, variant: ExperimentConfig) -> Path:
        """``final`` checkpoint of the training variant ``name`` ("" = the main run; the main run's too when
        their finetuning agree), finetuned into ``<out_dir>/methods/<name>/``.

        Teachers are trained first when the variant's loss uses them, pretraining when it starts from the
        pretrained hypernetwork; both are the main run's (shared by every variant).
        """
        ft = variant.finetune
        for _, run in stages.prerequisites(self.cfg, [variant]):
            run(self.cfg, self.backbone)
        pretrained = ft.use_pretrained and self.cfg.pretrain.enabled
        same = to_dict(ft) == to_dict(self.cfg.finetune) and to_dict(variant.hyper) == to_dict(self.cfg.hyper)
        if not name or same:
            return stages.run_finetune(self.cfg, self.backbone) / "final"
        folder = stages.run_finetune(
            variant,
            self.backbone,
            out_dir=self.out / "methods" / name,
            teachers_dir=self.out / "teachers",
            init_ckpt=self.out / "pretrain" / "final" if pretrained else None,
            teacher_cache_dir=self.out / "finetune" / "teacher_cache",  # shared: same teachers and data
        )
        return folder / "final"

    def lora(
        self, folder: Path, examples: list[PromptExample], steps: int, desc: str
    ) -> tuple[LoraWeights, str]:
        """Train (once) a LoRA on ``examples`` with the teachers' settings into ``folder/adapter``.

        A finished folder (``DONE.json``) is reused; if it was trained with other settings a warning says
        so (delete the folder to retrain), as the training stages do.
        """
        cfg, adapter_dir = self.cfg, folder / "adapter"
        train = dataclasses.replace(cfg.teachers.train, max_steps=steps)
        fingerprint = {
            "model": to_dict(cfg.model),
            "data": to_dict(cfg.data),
            "seed": cfg.seed,
            "rank": cfg.teachers.rank,
            "alpha": cfg.teachers.alpha,
            "train": to_dict(train),
            "examples": len(examples),
        }
        done_path = folder / "DONE.json"
        if done_path.is_file():
            if json.loads(done_path.read_text()).get("fingerprint") != fingerprint:
                log.warning(
                    "%s: %s was trained with other settings; reusing it (delete it to retrain)", desc, folder
                )
        else:
            shutil.rmtree(adapter_dir, ignore_errors=True)  # leftovers of an interrupted run
            start = time.perf_counter()
            _, res = fit_lora(
                self.backbone,
                examples,
                cfg.teachers.rank,
                cfg.teachers.alpha,
                train,
                adapter_dir,
                mode="concat",
                seed=cfg.seed,
                desc=desc,
            )
            stats = {
                k: v for k, v in res.to_dict().items() if k in ("tokens", "tokens_per_s", "peak_memory_mb")
            }
            done = {"wall_time_s": round(time.perf_counter() - start, 3), "examples": len(examples), **stats}
            write_json(done_path, done | {"steps": steps, "fingerprint": fingerprint})
        weights, _, _ = load_adapter(adapter_dir)
        return weights, file_sha256(adapter_dir / ADAPTER_WEIGHTS)

    def multitask(self) -> tuple[LoraWeights, str, dict]:
        cfg = self.cfg
        tasks, _ = config_split(cfg.data, load_tasks(cfg.data, "train"))
        examples = [
            e for t in tasks for e in task_examples(t, cfg.teachers.num_pos, cfg.data.max_train_instances)
        ]
        steps = cfg.evaluate.multitask_steps or cfg.finetune.train.max_steps
        folder = self.out / "methods" / "multitask-lora"
        weights, sha = self.lora(folder, examples, steps, "multitask-lora")
        return weights, sha, {"folder": str(folder), "train_tasks": len(tasks), "steps": steps}

    def oracles(self, tasks: list[Task]) -> tuple[dict[str, LoraWeights], str, dict]:
        """One LoRA per test task, on instances beyond the evaluated ones (else on the evaluated ones)."""
        cfg = self.cfg
        extra = cfg.evaluate.oracle_instances
        wide = dataclasses.replace(
            cfg.data,
            max_test_instances=cfg.data.max_test_instances + extra,
            builtin_instances=cfg.data.builtin_instances + extra,
        )
        more = {t.name: t for t in load_tasks(wide, "test")}
        steps = cfg.evaluate.oracle_steps or cfg.teachers.train.max_steps
        weights, shas, data = {}, [], {}
        for task in tqdm(tasks, desc="oracle LoRAs", unit="task", leave=False):
            seen = {i.id for i in task.instances}
            train = [i for i in more[task.name].instances if i.id not in seen][:extra]
            data[task.name] = f"{len(train)} unseen instances" if train else "the evaluated instances"
            source = dataclasses.replace(task, instances=tuple(train) or task.instances)
            examples = task_examples(source, cfg.teachers.num_pos)
            folder = self.out / "methods" / "oracle" / task.name
            weights[task.name], sha = self.lora(folder, examples, steps, f"oracle {task.name}")
            shas.append(sha)
        return weights, ",".join(shas), {"steps": steps, "trained_on": data}
