"""Rank-classification examples (P3 / T0 style): an input, answer options and the correct index.

The scorer elsewhere picks the option with the lowest token-averaged NLL; accuracy is the share of
examples where that index equals ``answer``.

JSONL format read by :func:`read_jsonl`, one object per line::

    {"input": "Premise ... Question ...", "options": ["yes", "no"], "answer": 0, "task": "rte"}

``answer`` is an index into ``options`` or the text of the correct option; ``task`` is optional.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagi.data.sni import DataError, Task
from tagi.files import jsonl_rows


@dataclass(frozen=True)
class OptionExample:
    """One rank-classification example; ``options[answer]`` is the correct option."""

    input: str
    options: tuple[str, ...]
    answer: int
    task: str = ""


def from_sni_task(task: Task, max_options: int = 10) -> list[OptionExample] | None:
    """Turn a classification-like SNI task into option examples, or return ``None``.

    Options are the sorted set of stripped outputs of the instances that have exactly one reference.
    The task counts as classification when there are 2..``max_options`` options, there are at least
    twice as many single-reference instances as options (so a free-text task with few instances is
    not mistaken for classification), and every instance has a reference among the options (its
    first such reference is the answer). This is a heuristic: a few extraction tasks with repeated
    answers pass it, and labels absent from a small task's instances are missing from its options.
    """
    singles = [inst.outputs[0].strip() for inst in task.instances if len(inst.outputs) == 1]
    options = tuple(sorted(set(singles)))
    if not 2 <= len(options) <= max_options or len(singles) < 2 * len(options):
        return None
    index = {option: i for i, option in enumerate(options)}
    examples = []
    for inst in task.instances:
        answer = next((index[o.strip()] for o in inst.outputs if o.strip() in index), None)
        if answer is None:
            return None
        examples.append(OptionExample(input=inst.input, options=options, answer=answer, task=task.name))
    return examples


def _answer_index(answer: Any, options: tuple[str, ...]) -> int | None:
    """Index for an int answer or the (stripped) text of an option; ``None`` when invalid."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        return answer if 0 <= answer < len(options) else None
    if isinstance(answer, str):
        stripped = [o.strip() for o in options]
        return stripped.index(answer.strip()) if answer.strip() in stripped else None
    return None


def _row_to_example(row: Any) -> OptionExample:
    """Validate one JSONL row; raises ``ValueError`` with the problem (no location)."""
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object")
    if not isinstance(row.get("input"), str):
        raise ValueError('missing string field "input"')
    options = row.get("options")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise ValueError('"options" must be a list of at least 2 strings')
    answer = _answer_index(row.get("answer"), tuple(options))
    if answer is None:
        raise ValueError(f'"answer" {row.get("answer")!r} is neither an option index nor an option text')
    task = row.get("task", "")
    return OptionExample(input=row["input"], options=tuple(options), answer=answer, task=str(task))


def read_jsonl(path: str | Path) -> list[OptionExample]:
    """Read option examples from a JSONL file; :class:`DataError` names the line of a bad row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"options file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read as UTF-8 text ({err})") from None
    examples = []
    for lineno, row in jsonl_rows(text, path, DataError):
        try:
            examples.append(_row_to_example(row))
        except ValueError as err:
            raise DataError(f"{path}:{lineno}: {err}") from None
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def from_p3_row(row: Mapping[str, Any], task: str = "") -> OptionExample:
    """Convert a P3 (bigscience/P3) row: ``inputs_pretokenized``, ``targets_pretokenized``, ``answer_choices``.

    The target is stripped and matched against the stripped answer choices (P3 targets usually carry
    a leading space or a trailing newline). Options and the input are stripped. A ``task`` argument
    (or a ``"task"`` field in the row) names the dataset/prompt.
    """
    missing = [k for k in ("inputs_pretokenized", "targets_pretokenized", "answer_choices") if k not in row]
    if missing:
        raise DataError(f"P3 row lacks {', '.join(missing)}")
    choices = row["answer_choices"]
    if (
        not isinstance(choices, list | tuple)
        or len(choices) < 2
        or not all(isinstance(c, str) for c in choices)
    ):
        raise DataError("P3 row: answer_choices must be a list of at least 2 strings")
    options = tuple(c.strip() for c in choices)
    target = str(row["targets_pretokenized"]).strip()
    if target not in options:
        raise DataError(f"P3 row: target {target!r} is not one of the answer choices {list(options)}")
    name = task or str(row.get("task", ""))
    return OptionExample(
        input=str(row["inputs_pretokenized"]).strip(),
        options=options,
        answer=options.index(target),
        task=name,
    )
