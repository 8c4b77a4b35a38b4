"""Built-in counting, arithmetic, sorting and yes/no classification tasks.

Several tasks share an input format on purpose (``"47, 12"`` for add / subtract / multiply /
is-greater, ``"[3, 8, 1]"`` for the list tasks): only the instruction tells them apart, which is
what an instruction-conditioned adapter has to learn.
"""

from __future__ import annotations

import random

from tagi.data.builtin_suite.spec import (
    BuiltinSpec,
    Generator,
    number_list,
    on_sentence,
    on_word,
    sentence,
    show_list,
    yes_no,
)
from tagi.data.builtin_suite.words import PALINDROMES, VOWELS, WORDS


def _pair(rng: random.Random, low: int = 0, high: int = 99) -> tuple[int, int]:
    return rng.randint(low, high), rng.randint(low, high)


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = _pair(rng)
    return f"{a}, {b}", str(a + b)


def _subtract(rng: random.Random) -> tuple[str, str]:
    a, b = sorted(_pair(rng), reverse=True)
    return f"{a}, {b}", str(a - b)


def _multiply(rng: random.Random) -> tuple[str, str]:
    a, b = _pair(rng, 2, 12)
    return f"{a}, {b}", str(a * b)


def _is_greater(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(100), 2)
    return f"{a}, {b}", yes_no(a > b)


def _next_number(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 998)
    return str(n), str(n + 1)


def _is_even(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 999)
    return str(n), yes_no(n % 2 == 0)


def _on_list(kind: str) -> Generator:
    """A generator over a random number list; ``kind`` picks the answer."""

    def generate(rng: random.Random) -> tuple[str, str]:
        values = number_list(rng)
        answers = {
            "count": str(len(values)),
            "sum": str(sum(values)),
            "max": str(max(values)),
            "min": str(min(values)),
            "ascending": show_list(sorted(values)),
            "descending": show_list(sorted(values, reverse=True)),
        }
        return show_list(values), answers[kind]

    return generate


def _sort_words(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 5))
    return ", ".join(words), ", ".join(sorted(words))


def _count_occurrences(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    letter = rng.choice(word) if rng.random() < 0.8 else rng.choice("bcdfgkmpxz")
    return f"word: {word}, letter: {letter}", str(word.count(letter))


def _contains_word(rng: random.Random) -> tuple[str, str]:
    text = sentence(rng)
    words = text.split()
    if rng.random() < 0.5:
        return f"sentence: {text}, word: {rng.choice(words)}", "yes"
    other = rng.choice([w for w in WORDS if w not in words])
    return f"sentence: {text}, word: {other}", "no"


def _starts_with_vowel(rng: random.Random) -> tuple[str, str]:
    wanted = rng.random() < 0.5
    word = rng.choice([w for w in WORDS if (w[0] in VOWELS) == wanted])
    return word, yes_no(wanted)


def _palindrome(rng: random.Random) -> tuple[str, str]:
    """Half palindromes (real words or synthetic letter strings), half words or near-palindromes."""
    half = "".join(rng.choice("abdegiklmnoprstu") for _ in range(rng.randint(2, 3)))
    mirrored = half + (half[-2::-1] if rng.random() < 0.5 else half[::-1])
    choice = rng.randrange(4)
    if choice == 0:
        text = rng.choice(PALINDROMES)
    elif choice == 1:
        text = mirrored
    elif choice == 2:
        text = rng.choice(WORDS)
    else:
        text = mirrored[:-1] + ("z" if mirrored[-1] != "z" else "y")
    return text, yes_no(text == text[::-1])


CNT = "Counting"
COUNTING: tuple[BuiltinSpec, ...] = (
    BuiltinSpec(
        "builtin_count_words",
        CNT,
        "In this task, you are given a sentence. Count how many words it contains and answer with the number.",
        on_sentence(lambda ws: str(len(ws))),
    ),
    BuiltinSpec(
        "builtin_count_letters",
        CNT,
        "You are given a word. Answer with the number of letters in the word.",
        on_word(lambda w: str(len(w))),
    ),
    BuiltinSpec(
        "builtin_count_vowels",
        CNT,
        "In this task, you are given a word. Count the vowels (a, e, i, o, u) in it and answer with the number.",
        on_word(lambda w: str(sum(c in VOWELS for c in w))),
    ),
    BuiltinSpec(
        "builtin_count_list_items",
        CNT,
        "You are given a list of numbers in brackets. Answer with how many numbers the list contains.",
        _on_list("count"),
    ),
    BuiltinSpec(
        "builtin_count_letter_occurrences",
        CNT,
        "Given a word and a letter, report how often that letter shows up in the word, as a number (0 if it never does).",
        _count_occurrences,
    ),
)

ARI = "Arithmetic"
ARITHMETIC: tuple[BuiltinSpec, ...] = (
    BuiltinSpec(
        "builtin_add_numbers",
        ARI,
        "In this task, you are given two numbers separated by a comma. Add them and answer with the sum.",
        _add,
    ),
    BuiltinSpec(
        "builtin_subtract_numbers",
        ARI,
        "You are given two numbers separated by a comma. Subtract the second number from the first and answer with the result.",
        _subtract,
    ),
    BuiltinSpec(
        "builtin_multiply_numbers",
        ARI,
        "In this task, you are given two numbers separated by a comma. Multiply them and answer with the product.",
        _multiply,
    ),
    BuiltinSpec(
        "builtin_next_number",
        ARI,
        "You are given a number. Answer with the number that comes right after it, that is, the number plus one.",
        _next_number,
    ),
    BuiltinSpec(
        "builtin_sum_of_list",
        ARI,
        "Here is a bracketed list of numbers. What do all of them add up to? Give the total.",
        _on_list("sum"),
    ),
)

SRT = "Sorting"
SORTING: tuple[BuiltinSpec, ...] = (
    BuiltinSpec(
        "builtin_sort_ascending",
        SRT,
        "In this task, you are given a list of numbers. Sort the numbers from smallest to largest and write the sorted list.",
        _on_list("ascending"),
    ),
    BuiltinSpec(
        "builtin_sort_descending",
        SRT,
        "In this task, you are given a list of numbers. Sort the numbers from largest to smallest and write the sorted list.",
        _on_list("descending"),
    ),
    BuiltinSpec(
        "builtin_max_of_list",
        SRT,
        "You are given a list of numbers. Answer with the largest number in the list.",
        _on_list("max"),
    ),
    BuiltinSpec(
        "builtin_min_of_list",
        SRT,
        "You are given a list of numbers. Answer with the smallest number in the list.",
        _on_list("min"),
    ),
    BuiltinSpec(
        "builtin_sort_words_alphabetically",
        SRT,
        "Put the comma-separated words in dictionary order (a before b before c) and write them out, still separated by commas.",
        _sort_words,
    ),
)

CLS = "Classification"
CLASSIFICATION: tuple[BuiltinSpec, ...] = (
    BuiltinSpec(
        "builtin_is_even",
        CLS,
        'In this task, you are given a number. Answer "yes" if the number is even and "no" if it is odd.',
        _is_even,
    ),
    BuiltinSpec(
        "builtin_contains_word",
        CLS,
        'You are given a sentence and a word. Answer "yes" if the word appears in the sentence and "no" otherwise.',
        _contains_word,
    ),
    BuiltinSpec(
        "builtin_is_greater",
        CLS,
        'In this task, you are given two numbers separated by a comma. Answer "yes" if the first number is greater than the second, otherwise answer "no".',
        _is_greater,
    ),
    BuiltinSpec(
        "builtin_starts_with_vowel",
        CLS,
        'You are given a word. Answer "yes" if the word starts with a vowel (a, e, i, o, u) and "no" otherwise.',
        _starts_with_vowel,
    ),
    BuiltinSpec(
        "builtin_is_palindrome",
        CLS,
        "Does the string read the same from left to right as from right to left? Say yes if it does and no if it does not.",
        _palindrome,
    ),
)

NUMBER_SPECS: tuple[BuiltinSpec, ...] = COUNTING + ARITHMETIC + SORTING + CLASSIFICATION
