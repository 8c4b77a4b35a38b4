"""Built-in word and sentence tasks: Text Modification, Extraction, Word Knowledge, Sentiment."""

from __future__ import annotations

import random

from tagi.data.builtin_suite.spec import BuiltinSpec, on_phrase, on_sentence, on_word
from tagi.data.builtin_suite.words import (
    ANTONYM_PAIRS,
    NAMES,
    NEGATIVE_WORDS,
    PLURALS,
    POSITIVE_WORDS,
    REVIEW_SUBJECTS,
    VOWELS,
    WORDS,
    number_to_words,
)


def _repeat(rng: random.Random) -> tuple[str, str]:
    word, times = rng.choice(WORDS), rng.randint(2, 4)
    return f"word: {word}, times: {times}", " ".join([word] * times)


def _extract_numbers(rng: random.Random) -> tuple[str, str]:
    name, (one, two) = rng.choice(NAMES), rng.sample(sorted(PLURALS), 2)
    many, many2 = PLURALS[one], PLURALS[two]
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 99)
    templates = [
        (f"{name} bought {a} {many}", [a]),
        (f"{name} has {a} {many} and {b} {many2}", [a, b]),
        (f"there were {a} {many} near the {two} at {b} o'clock", [a, b]),
        (f"{name} counted {a} {many}, {b} {many2} and {c} stones", [a, b, c]),
    ]
    text, numbers = rng.choice(templates)
    return text, ", ".join(str(n) for n in numbers)


def _longest_word(rng: random.Random) -> tuple[str, str]:
    by_length: dict[int, str] = {}
    count = rng.randint(3, 5)
    while len(by_length) < count:
        word = rng.choice(WORDS)
        by_length.setdefault(len(word), word)
    words = list(by_length.values())
    rng.shuffle(words)
    return " ".join(words), by_length[max(by_length)]


def _antonym(rng: random.Random) -> tuple[str, str]:
    pair = rng.choice(ANTONYM_PAIRS)
    return pair if rng.random() < 0.5 else (pair[1], pair[0])


def _plural(rng: random.Random) -> tuple[str, str]:
    singular = rng.choice(sorted(PLURALS))
    return singular, PLURALS[singular]


def _to_words(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 999)
    return str(n), number_to_words(n)


def _from_words(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 999)
    return number_to_words(n), str(n)


def _review(rng: random.Random) -> tuple[str, str]:
    subject = rng.choice(REVIEW_SUBJECTS)
    positive = rng.random() < 0.5
    adjective = rng.choice(POSITIVE_WORDS if positive else NEGATIVE_WORDS)
    template = rng.choice(
        ["{s} was {a}", "I think {s} was really {a}", "honestly, {s} was {a} and I told my friends"]
    )
    return template.format(s=subject, a=adjective), "positive" if positive else "negative"


def _experience(rng: random.Random) -> tuple[str, str]:
    positive = rng.random() < 0.5
    adjective = rng.choice(POSITIVE_WORDS if positive else NEGATIVE_WORDS)
    place = rng.choice(["trip", "meal", "visit", "weekend", "flight", "class", "party", "stay"])
    template = rng.choice(["what a {a} {p}", "we had a {a} {p} yesterday", "my {p} last week felt {a}"])
    return template.format(a=adjective, p=place), "good" if positive else "bad"


def _sentiment_word(rng: random.Random) -> tuple[str, str]:
    positive = rng.random() < 0.5
    return rng.choice(POSITIVE_WORDS if positive else NEGATIVE_WORDS), "positive" if positive else "negative"


def _lowercase(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return word.upper(), word


MOD = "Text Modification"
TEXT_MODIFICATION: tuple[BuiltinSpec, ...] = (
    BuiltinSpec(
        "builtin_uppercase_word",
        MOD,
        "In this task, you are given a word. Rewrite the word using only uppercase (capital) letters.",
        on_word(str.upper),
    ),
    BuiltinSpec(
        "builtin_lowercase_word",
        MOD,
        "You are given a word written in capital letters. Write the same word in lowercase letters.",
        _lowercase,
    ),
    BuiltinSpec(
        "builtin_reverse_word",
        MOD,
        "In this task, you are given a word. Reverse the order of its letters, so that the last letter comes first.",
        on_word(lambda w: w[::-1]),
    ),
    BuiltinSpec(
        "builtin_capitalize_words",
        MOD,
        "Given a phrase, capitalize the first letter of every word in it and keep the other letters lowercase.",
        on_phrase(lambda ws: " ".join(w.capitalize() for w in ws)),
    ),
    BuiltinSpec(
        "builtin_remove_vowels",
        MOD,
        "In this task, you are given a word. Remove every vowel (a, e, i, o, u) from the word and write the remaining letters.",
        on_word(lambda w: "".join(c for c in w if c not in VOWELS)),
    ),
    BuiltinSpec(
        "builtin_repeat_word",
        MOD,
        "You are given a word and a number of times. Write the word that many times, separated by single spaces.",
        _repeat,
    ),
    BuiltinSpec(
        "builtin_reverse_word_order",
        MOD,
        "Read the phrase and say it backwards word by word: the last word first, the first word last. Do not change the spelling of any word.",
        on_phrase(lambda ws: " ".join(reversed(ws)), 3, 5),
    ),
)

EXT = "Extraction"
EXTRACTION: tuple[BuiltinSpec, ...] = (
    BuiltinSpec(
        "builtin_first_word",
        EXT,
        "In this task, you are given a sequence of words. Answer with the first word of the sequence.",
        on_phrase(lambda ws: ws[0], 3, 6),
    ),
    BuiltinSpec(
        "builtin_last_word",
        EXT,
        "In this task, you are given a sentence. Answer with the last word of the sentence.",
        on_sentence(lambda ws: ws[-1]),
    ),
    BuiltinSpec(
        "builtin_extract_numbers",
        EXT,
        "Given a sentence, list all the numbers that appear in it, in the order they appear, separated by commas.",
        _extract_numbers,
    ),
    BuiltinSpec(
        "builtin_first_letter",
        EXT,
        "You are given a word. Answer with the first letter of the word.",
        on_word(lambda w: w[0]),
    ),
    BuiltinSpec(
        "builtin_longest_word",
        EXT,
        "Look at the words below and pick out the one that has the most letters. Copy that word exactly.",
        _longest_word,
    ),
)

KNOW = "Word Knowledge"
WORD_KNOWLEDGE: tuple[BuiltinSpec, ...] = (
    BuiltinSpec(
        "builtin_antonym",
        KNOW,
        "In this task, you are given a word. Write its antonym, that is, a word with the opposite meaning.",
        _antonym,
    ),
    BuiltinSpec(
        "builtin_pluralize",
        KNOW,
        "You are given an English noun in singular form. Write its plural form.",
        _plural,
    ),
    BuiltinSpec(
        "builtin_number_to_words",
        KNOW,
        "In this task, you are given a number written with digits. Write the number in English words.",
        _to_words,
    ),
    BuiltinSpec(
        "builtin_words_to_number",
        KNOW,
        "A number is spelled out in English words. Turn it back into digits, for example 'twelve' becomes 12.",
        _from_words,
    ),
)

SENT = "Sentiment"
SENTIMENT: tuple[BuiltinSpec, ...] = (
    BuiltinSpec(
        "builtin_sentiment_review",
        SENT,
        'In this task, you are given a short review. Classify its sentiment as "positive" or "negative".',
        _review,
    ),
    BuiltinSpec(
        "builtin_sentiment_word",
        SENT,
        'You are given an adjective. Decide whether it expresses a positive or a negative feeling. Answer "positive" or "negative".',
        _sentiment_word,
    ),
    BuiltinSpec(
        "builtin_experience_good_bad",
        SENT,
        "Someone describes how something went. Was it a good experience or a bad one? Reply with the single word good or bad.",
        _experience,
    ),
)

TEXT_SPECS: tuple[BuiltinSpec, ...] = TEXT_MODIFICATION + EXTRACTION + WORD_KNOWLEDGE + SENTIMENT
