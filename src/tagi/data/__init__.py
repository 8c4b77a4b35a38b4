"""Task data: the SNI loader, Tk-Instruct prompts, the built-in task suite, pretraining text, options.

Public names are re-exported here; the submodules document the file formats.
"""

from tagi.data.builtin import BUILTIN_TEST, BUILTIN_TRAIN, builtin_tasks, make_builtin_task
from tagi.data.options import OptionExample, from_p3_row, from_sni_task, read_jsonl
from tagi.data.prompts import PromptParts, build_prompt, format_instruction, format_source
from tagi.data.sni import (
    DataError,
    Example,
    Instance,
    Task,
    TaskFileError,
    category_groups,
    find_task,
    load_split,
    load_task,
    read_split_names,
)
from tagi.data.text import read_texts, split_abc, texts_from_tasks

__all__ = [
    "BUILTIN_TEST",
    "BUILTIN_TRAIN",
    "DataError",
    "Example",
    "Instance",
    "OptionExample",
    "PromptParts",
    "Task",
    "TaskFileError",
    "build_prompt",
    "builtin_tasks",
    "category_groups",
    "find_task",
    "format_instruction",
    "format_source",
    "from_p3_row",
    "from_sni_task",
    "load_split",
    "load_task",
    "make_builtin_task",
    "read_jsonl",
    "read_split_names",
    "read_texts",
    "split_abc",
    "texts_from_tasks",
]
