"""The text form of one example, shared by the data side (which builds it) and the backbones (which
tokenise it): neither imports the other for it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptExample:
    """One training / evaluation example in text form.

    ``instruction`` is the task text (Definition + k positive examples, Tk-Instruct format), ``source``
    the per-instance part ("Now complete the following example - Input: ... Output: "), ``target`` the
    reference output ("" at inference).
    """

    instruction: str
    source: str
    target: str = ""
