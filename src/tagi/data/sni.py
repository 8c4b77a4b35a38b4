"""Super-NaturalInstructions (SNI) loader for the layout of github allenai/natural-instructions.

Folder layout (a clone of the upstream repository, or the offline copy in ``shared/data/sni``)::

    <sni_dir>/splits/<split_name>/train_tasks.txt   one task name per line (a superset: names
    <sni_dir>/splits/<split_name>/test_tasks.txt    without a task file are skipped)
    <sni_dir>/tasks/<task_name>.json                one JSON object per task

Task file format (fields used here; every other field is ignored)::

    {
      "Definition": ["In this task ..."],          # list of strings (newer releases) or a string
      "Categories": ["Text Modification"],          # optional; list or string; hierarchical names
                                                    #   such as "Classification -> Verification"
      "Input_language": ["English"],                # optional (as is "Output_language")
      "Positive Examples": [{"input": "...", "output": "...", "explanation": "..."}],   # optional
      "Instances": [{"id": "...", "input": "...", "output": ["...", "..."]}]            # non-empty
    }

Decisions (documented because upstream files come from several releases):

- A list-valued ``Definition`` is joined with single spaces (every upstream file has exactly one
  element, so this equals Tk-Instruct's "take the first element").
- A list-valued positive-example ``output`` keeps its first element.
- An instance ``output`` may be a string or a non-empty list of strings; empty strings are valid
  references (upstream task488 answers "" when a list has no letters).
- A missing instance ``id`` becomes ``f"{task_name}-{index}"`` (index in upstream order).
- ``max_instances`` keeps the first instances in upstream order, for training and test alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagi.errors import TagiError

logger = logging.getLogger("tagi.data")

_SMALL_WORDS = frozenset(
    {"a", "an", "and", "as", "at", "by", "for", "from", "in", "of", "on", "or", "the", "to", "with"}
)


class DataError(TagiError, ValueError):
    """Bad or missing data (a folder, a split list, a text file); the message says what to fix."""


class TaskFileError(DataError):
    """A malformed task file; the message names the file and the problem on one line."""


@dataclass(frozen=True)
class Example:
    """A positive (demonstration) example of a task."""

    input: str
    output: str


@dataclass(frozen=True)
class Instance:
    """One instance of a task: an input and one or more reference outputs (any one is correct)."""

    id: str
    input: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    """A task in SNI form: definition, demonstrations, instances and metadata.

    ``categories`` holds the raw category names (possibly hierarchical, possibly empty = unknown);
    the language tuples are empty when the file does not say.
    """

    name: str
    definition: str
    positive_examples: tuple[Example, ...]
    instances: tuple[Instance, ...]
    categories: tuple[str, ...] = ()
    input_language: tuple[str, ...] = ()
    output_language: tuple[str, ...] = ()

    @property
    def category(self) -> str:
        """The grouping key for teachers and per-category scores.

        The top-level part of the first category (text before ``->``), whitespace-collapsed and in
        title case (small words such as "to" stay lower case), so that releases spelling "Answer
        generation" and "Answer Generation" share one group. A task without a category is its own group:
        ``f"task:{name}"``.
        """
        if not self.categories:
            return f"task:{self.name}"
        words = self.categories[0].split("->")[0].split()
        if not words:
            return f"task:{self.name}"
        words = [words[0][:1].upper() + words[0][1:]] + [
            w.lower() if w.lower() in _SMALL_WORDS else w[:1].upper() + w[1:] for w in words[1:]
        ]
        return " ".join(words)

    @property
    def is_english(self) -> bool:
        """True when input and output languages both include English or are unknown."""
        return all(not langs or "English" in langs for langs in (self.input_language, self.output_language))


def _fail(path: Path, problem: str) -> TaskFileError:
    return TaskFileError(f"{path}: {problem}")


def _read_json_object(path: Path) -> dict[str, Any]:
    """Read ``path`` as UTF-8 JSON and check that it holds an object."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _fail(path, "task file not found") from None
    except OSError as err:
        raise _fail(path, f"cannot read task file ({err.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _fail(path, f"not UTF-8 text (bad byte at offset {err.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(path, f"not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    if not isinstance(data, dict):
        raise _fail(path, f"expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _string_tuple(path: Path, data: dict[str, Any], key: str) -> tuple[str, ...]:
    """An optional field that may be absent/null, a string, or a list of strings."""
    value = data.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, f'"{key}" must be a string or a list of strings')
    return tuple(v.strip() for v in value if v.strip())


def _definition(path: Path, data: dict[str, Any]) -> str:
    if "Definition" not in data:
        raise _fail(path, 'missing "Definition"')
    parts = _string_tuple(path, data, "Definition")
    if not parts:
        raise _fail(path, 'empty "Definition"')
    return " ".join(parts)


def _positive_examples(path: Path, data: dict[str, Any]) -> tuple[Example, ...]:
    raw = data.get("Positive Examples") or []
    if not isinstance(raw, list):
        raise _fail(path, '"Positive Examples" must be a list')
    examples = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "input" not in item or "output" not in item:
            raise _fail(path, f'positive example {i} needs "input" and "output"')
        x, y = item["input"], item["output"]
        if isinstance(y, list):
            y = y[0] if y else None
        if not isinstance(x, str) or not isinstance(y, str):
            raise _fail(path, f"positive example {i}: input and output must be strings")
        examples.append(Example(input=x, output=y))
    return tuple(examples)


def _instance(path: Path, name: str, index: int, item: Any) -> Instance:
    if not isinstance(item, dict):
        raise _fail(path, f"instance {index} is not an object")
    if not isinstance(item.get("input"), str):
        raise _fail(path, f'instance {index} has no string "input"')
    if "output" not in item:
        raise _fail(path, f'instance {index} has no "output"')
    outputs = item["output"]
    if isinstance(outputs, str):
        outputs = [outputs]
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise _fail(path, f'instance {index}: "output" must be a string or a list of strings')
    if not outputs:
        raise _fail(path, f'instance {index} has an empty "output" list')
    raw_id = item.get("id")
    inst_id = str(raw_id) if raw_id not in (None, "") else f"{name}-{index}"
    return Instance(id=inst_id, input=item["input"], outputs=tuple(outputs))


def _instances(
    path: Path, name: str, data: dict[str, Any], max_instances: int | None
) -> tuple[Instance, ...]:
    raw = data.get("Instances")
    if not isinstance(raw, list) or not raw:
        raise _fail(path, 'no "Instances" (expected a non-empty list)')
    if max_instances is not None:
        raw = raw[:max_instances]
    return tuple(_instance(path, name, i, item) for i, item in enumerate(raw))


def load_task(path: str | Path, max_instances: int | None = None) -> Task:
    """Load one SNI task file; the task name is the file name without ``.json``.

    ``max_instances`` keeps the first N instances in file order (``None`` keeps all; must be ≥ 1).
    Raises :class:`TaskFileError` naming the file for anything malformed.
    """
    path = Path(path)
    if max_instances is not None and max_instances < 1:
        raise DataError(f"max_instances must be at least 1 (got {max_instances})")
    data = _read_json_object(path)
    name = path.stem
    return Task(
        name=name,
        definition=_definition(path, data),
        positive_examples=_positive_examples(path, data),
        instances=_instances(path, name, data, max_instances),
        categories=_string_tuple(path, data, "Categories"),
        input_language=_string_tuple(path, data, "Input_language"),
        output_language=_string_tuple(path, data, "Output_language"),
    )


def read_split_names(sni_dir: str | Path, split: str = "train", split_name: str = "default") -> list[str]:
    """Task names listed in ``splits/<split_name>/<split>_tasks.txt`` (order kept, duplicates dropped)."""
    root = Path(sni_dir)
    if not root.is_dir():
        raise DataError(f"SNI folder not found: {root} (clone github allenai/natural-instructions)")
    list_file = root / "splits" / split_name / f"{split}_tasks.txt"
    if not list_file.is_file():
        raise DataError(
            f"split list not found: {list_file} (check split={split!r}, split_name={split_name!r})"
        )
    names = [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines()]
    return list(dict.fromkeys(n for n in names if n and not n.startswith("#")))


def load_split(
    sni_dir: str | Path,
    split: str = "train",
    split_name: str = "default",
    max_instances: int | None = None,
    english_only: bool = True,
) -> list[Task]:
    """Load the tasks of one split, in split-list order.

    Names without ``tasks/<name>.json`` are skipped (the count is logged on ``tagi.data``); a folder or
    list that does not exist, or a list none of whose files exist, raises :class:`DataError`.
    ``english_only`` drops tasks whose input or output language is known and excludes English (a
    warning names them). ``max_instances`` keeps the first N instances per task.
    """
    names = read_split_names(sni_dir, split, split_name)
    tasks_dir = Path(sni_dir) / "tasks"
    present = [n for n in names if (tasks_dir / f"{n}.json").is_file()]
    if not present:
        raise DataError(f"none of the {len(names)} tasks of {split_name}/{split} has a file in {tasks_dir}")
    skipped = len(names) - len(present)
    if skipped:
        logger.info(
            "%s/%s: skipped %d of %d listed tasks without a file", split_name, split, skipped, len(names)
        )
    tasks = [load_task(tasks_dir / f"{n}.json", max_instances=max_instances) for n in present]
    if english_only:
        dropped = [t.name for t in tasks if not t.is_english]
        if dropped:
            logger.warning("%s/%s: dropped non-English tasks: %s", split_name, split, ", ".join(dropped))
            tasks = [t for t in tasks if t.is_english]
    return tasks


def category_groups(tasks: Iterable[Task]) -> dict[str, list[str]]:
    """Map each :attr:`Task.category` to the names of its tasks (first-seen order)."""
    groups: dict[str, list[str]] = {}
    for task in tasks:
        groups.setdefault(task.category, []).append(task.name)
    return groups


def find_task(tasks: Sequence[Task], name: str) -> Task:
    """The task called ``name``; :class:`DataError` listing a few known names otherwise."""
    for task in tasks:
        if task.name == name:
            return task
    known = ", ".join(t.name for t in tasks[:5])
    raise DataError(f"unknown task {name!r} (known: {known}{', ...' if len(tasks) > 5 else ''})")
