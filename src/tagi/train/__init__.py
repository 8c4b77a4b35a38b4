"""Training: the three stages of TAGI and the one loop they share.

- :mod:`tagi.train.loop` — optimiser, schedule, token-normalised accumulation, clipping, autocast,
  progress bar, JSONL/TensorBoard log, atomic checkpoints, exact resume, data parallelism;
- :mod:`tagi.train.teachers` — stage 0, ordinary LoRA teachers (and ``train_lora_adapter`` for baselines);
- :mod:`tagi.train.pretrain` — stage 1, a/b/c pretraining on plain text;
- :mod:`tagi.train.finetune` / :mod:`tagi.train.distill` — stage 2, CE + KL + alignment distillation;
- :mod:`tagi.train.stages` — runners that skip finished stages (the CLI: :mod:`tagi.commands.train`).
"""

from tagi.train.stages import run_all, run_finetune, run_pretrain, run_teachers
from tagi.train.teachers import load_teachers, train_lora_adapter

__all__ = ["load_teachers", "run_all", "run_finetune", "run_pretrain", "run_teachers", "train_lora_adapter"]
