"""Tests for the Tk-Instruct prompt format: literal expected strings."""

from __future__ import annotations

import pytest

from tagi.data.prompts import PromptParts, build_prompt, format_instruction, format_source
from tagi.data.sni import Example, Instance, Task


def _task(definition: str = "Reverse the word") -> Task:
    return Task(
        name="t",
        definition=definition,
        positive_examples=(
            Example(input="cat", output="tac"),
            Example(input=" dog. ", output="god!"),
            Example(input="owl", output="lwo"),
        ),
        instances=(Instance(id="t-0", input="bird", outputs=("drib",)),),
    )


def test_def_only_prompt() -> None:
    parts = build_prompt(_task(), "bird")
    assert parts.instruction == "Definition: Reverse the word.\n\n"
    assert parts.source == "Now complete the following example -\nInput: bird.\nOutput: "
    assert parts.text == (
        "Definition: Reverse the word.\n\nNow complete the following example -\nInput: bird.\nOutput: "
    )


def test_def_plus_two_positive_examples_prompt() -> None:
    parts = build_prompt(_task(), "bird?", num_pos=2)
    expected = (
        "Definition: Reverse the word.\n\n"
        " Positive Example 1 -\nInput: cat.\n Output: tac.\n\n"
        " Positive Example 2 -\nInput: dog.\n Output: god!\n\n"
        "Now complete the following example -\nInput: bird?\nOutput: "
    )
    assert parts.text == expected
    assert parts.instruction + parts.source == expected


def test_no_extra_period_after_punctuation_and_fields_are_stripped() -> None:
    assert format_instruction(_task("  Say it!  ")) == "Definition: Say it!\n\n"
    assert format_instruction(_task("Use (parentheses)")) == "Definition: Use (parentheses)\n\n"
    assert (
        format_source("  hello world  ")
        == "Now complete the following example -\nInput: hello world.\nOutput: "
    )
    assert (
        format_source('He said "hi"') == 'Now complete the following example -\nInput: He said "hi"\nOutput: '
    )


def test_empty_input_gets_a_period_like_tk_instruct() -> None:
    assert format_source("") == "Now complete the following example -\nInput: .\nOutput: "


def test_num_pos_beyond_available_and_negative() -> None:
    few = Task(name="t", definition="D.", positive_examples=(Example("a", "b"),), instances=())
    assert (
        format_instruction(few, num_pos=2)
        == "Definition: D.\n\n Positive Example 1 -\nInput: a.\n Output: b.\n\n"
    )
    with pytest.raises(ValueError, match="num_pos"):
        format_instruction(few, num_pos=-1)


def test_instruction_is_the_same_for_every_instance() -> None:
    task = _task()
    first, second = build_prompt(task, "x", 2), build_prompt(task, "y", 2)
    assert first.instruction == second.instruction
    assert first.source != second.source
    assert isinstance(first, PromptParts)


def test_definition_sentences_cut_after_sentence_ends() -> None:
    from tagi.data.prompts import definition_sentences

    text = "Read the text.  Answer yes or no!\nIs 3.5 > 2? Output only the label"
    assert definition_sentences(text) == [
        "Read the text.",
        "Answer yes or no!",
        "Is 3.5 > 2?",
        "Output only the label",
    ]  # "3.5" is no sentence end: no white space follows its "."
    assert definition_sentences("   ") == []


def test_instruction_text_is_format_instruction_with_explicit_examples() -> None:
    from tagi.data.prompts import instruction_text

    task = Task(
        name="t",
        definition="Copy it",
        positive_examples=(Example("a", "b"), Example("c", "d")),
        instances=(),
    )
    assert instruction_text(task.definition, task.positive_examples[:1]) == format_instruction(task, 1)
    swapped = instruction_text(task.definition, task.positive_examples[::-1])
    assert swapped.index("Input: c.") < swapped.index("Input: a.")  # in the order given
    assert swapped.count("Positive Example 1 -") == 1 and "Positive Example 2 -" in swapped
