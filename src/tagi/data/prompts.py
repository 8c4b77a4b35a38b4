"""Tk-Instruct prompt format (SPEC §4), split into a per-task part and a per-instance part.

The full prompt for ``num_pos=2`` reads (``⏎`` = newline)::

    Definition: {definition}.⏎
    ⏎
     Positive Example 1 -⏎
    Input: {x1}.⏎
     Output: {y1}.⏎
    ⏎
     Positive Example 2 -⏎
    Input: {x2}.⏎
     Output: {y2}.⏎
    ⏎
    Now complete the following example -⏎
    Input: {x}.⏎
    Output: ␣

Every field is stripped, and a "." is appended only when the field does not already end in a
punctuation character (``string.punctuation``), exactly as Tk-Instruct does. ``num_pos=0`` is the
"Def" setting and ``num_pos=2`` the "Def+2Pos" setting. Chat-template wrapping is the backbone's job.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from tagi.data.sni import Example, Task


@dataclass(frozen=True)
class PromptParts:
    """A prompt split where the per-task part ends.

    ``instruction`` (definition + demonstrations) is the same for every instance of a task: the
    hypernetwork reads it and decoder-only backbones cache it as a prefix. ``source`` is the
    per-instance part. ``text`` is the whole in-context prompt.
    """

    instruction: str
    source: str

    @property
    def text(self) -> str:
        return self.instruction + self.source


def _with_period(text: str) -> str:
    """Append "." unless ``text`` already ends in punctuation (Tk-Instruct rule)."""
    if text and text[-1] in string.punctuation:
        return text
    return text + "."


def format_instruction(task: Task, num_pos: int = 0) -> str:
    """Definition plus the first ``num_pos`` positive examples (fewer if the task has fewer)."""
    if num_pos < 0:
        raise ValueError(f"num_pos must be non-negative (got {num_pos})")
    return instruction_text(task.definition, task.positive_examples[:num_pos])


def instruction_text(definition: str, examples: Sequence[Example]) -> str:
    """The instruction part of the prompt from a definition and the demonstrations to show, in order."""
    parts = [_with_period("Definition: " + definition.strip()) + "\n\n"]
    for i, example in enumerate(examples, start=1):
        parts.append(
            f" Positive Example {i} -\n"
            + _with_period("Input: " + example.input.strip())
            + "\n"
            + _with_period(" Output: " + example.output.strip())
            + "\n\n"
        )
    return "".join(parts)


def definition_sentences(definition: str) -> list[str]:
    """A definition cut into sentences after ``.``, ``!`` or ``?`` followed by white space (non-empty,
    stripped); joining them with single spaces gives the definition back up to white space."""
    return [s for s in (part.strip() for part in _SENTENCE_END.split(definition)) if s]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


_SOURCE_HEAD, _SOURCE_TAIL = "Now complete the following example -\n", "\nOutput: "
SOURCE_TEMPLATE = _SOURCE_HEAD + "Input: {input}." + _SOURCE_TAIL
""":func:`format_source` as a template (the "." is left out when the input ends in punctuation)."""


def format_source(instance_input: str) -> str:
    """The per-instance part: ``"Now complete the following example -\\nInput: {x}.\\nOutput: "``."""
    return _SOURCE_HEAD + _with_period("Input: " + instance_input.strip()) + _SOURCE_TAIL


def build_prompt(task: Task, instance_input: str, num_pos: int = 0) -> PromptParts:
    """Both parts of the Tk-Instruct prompt for one instance of ``task``."""
    return PromptParts(instruction=format_instruction(task, num_pos), source=format_source(instance_input))
