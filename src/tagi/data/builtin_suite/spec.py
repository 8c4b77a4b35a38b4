"""The description of one built-in task and shared random helpers for the generators."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tagi.data.builtin_suite.words import ADJECTIVES, NAMES, NOUNS, VERBS_PAST, WORDS

Generator = Callable[[random.Random], tuple[str, str]]
"""Draws one ``(input, output)`` pair from a seeded ``random.Random``."""


@dataclass(frozen=True)
class BuiltinSpec:
    """A built-in task: its name, its category, its definition and its instance generator."""

    name: str
    category: str
    definition: str
    generate: Generator


_SENTENCE_TEMPLATES: tuple[str, ...] = (
    "{name} {verb} {name2}",
    "{name} {verb} the {noun}",
    "the {noun} {verb} the {noun2}",
    "the {adj} {noun} {verb} the {noun2}",
    "the {adj} {adj2} {noun} {verb} {name}",
    "{name} and {name2} {verb} the {adj} {noun}",
    "{name} {verb} the {adj} {noun} near the {noun2}",
    "the {adj} {noun} {verb} the {adj2} {noun2} in the {noun3}",
)


def sentence(rng: random.Random) -> str:
    """A short sentence (3–10 words, no final punctuation) built from the word lists."""
    template = rng.choice(_SENTENCE_TEMPLATES)
    name, name2 = rng.sample(NAMES, 2)
    noun, noun2, noun3 = rng.sample(NOUNS, 3)
    adj, adj2 = rng.sample(ADJECTIVES, 2)
    return template.format(
        name=name,
        name2=name2,
        noun=noun,
        noun2=noun2,
        noun3=noun3,
        adj=adj,
        adj2=adj2,
        verb=rng.choice(VERBS_PAST),
    )


def on_word(transform: Callable[[str], str]) -> Generator:
    """A generator whose input is a random word and whose output is ``transform(word)``."""

    def generate(rng: random.Random) -> tuple[str, str]:
        word = rng.choice(WORDS)
        return word, transform(word)

    return generate


def on_phrase(transform: Callable[[list[str]], str], low: int = 2, high: int = 4) -> Generator:
    """Input: ``low``–``high`` distinct random words; output: ``transform(words)``."""

    def generate(rng: random.Random) -> tuple[str, str]:
        words = rng.sample(WORDS, rng.randint(low, high))
        return " ".join(words), transform(words)

    return generate


def on_sentence(transform: Callable[[list[str]], str]) -> Generator:
    """Input: a random sentence; output: ``transform(its words)``."""

    def generate(rng: random.Random) -> tuple[str, str]:
        text = sentence(rng)
        return text, transform(text.split())

    return generate


def number_list(
    rng: random.Random, low: int = 0, high: int = 99, min_len: int = 3, max_len: int = 7
) -> list[int]:
    """Distinct random integers in ``[low, high]``, between ``min_len`` and ``max_len`` of them."""
    return rng.sample(range(low, high + 1), rng.randint(min_len, max_len))


def show_list(values: list[int] | list[str]) -> str:
    """Python-style list text as in SNI list tasks: ``[3, 8, 1]``."""
    return "[" + ", ".join(str(v) for v in values) + "]"


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"
