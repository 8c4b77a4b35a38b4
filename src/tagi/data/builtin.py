"""The built-in task suite: 39 small synthetic tasks in SNI form, written for this project.

Every task has a natural-language definition, 3 positive examples and instances drawn from a
seeded generator (our own word lists and rules; no third-party data). Outputs are short (1–6 words)
so that a ~135M model can learn them in minutes on a CPU.

Eight categories; the fixed held-out split (:data:`BUILTIN_TEST`) takes one task from each, so every
held-out task's category also has training tasks (for per-category teachers). Held-out definitions
are phrased differently from the training ones ("Does the string read the same from left to right
...", not "In this task, you are given ..."), so a model cannot match them by wording alone.

Determinism: positive examples depend on the task name only (the instruction text of a task is the
same for every seed); instances depend on ``(task name, seed)``. Instance inputs are unique within a
task and never equal a positive example's input. A task whose generator cannot produce
``num_instances`` distinct inputs returns fewer and logs a warning.
"""

from __future__ import annotations

import logging
import random

from tagi.data.builtin_suite import ALL_SPECS, BuiltinSpec
from tagi.data.sni import DataError, Example, Instance, Task

logger = logging.getLogger("tagi.data")

NUM_POSITIVE_EXAMPLES = 3

BUILTIN_TEST: tuple[str, ...] = (
    "builtin_reverse_word_order",
    "builtin_longest_word",
    "builtin_words_to_number",
    "builtin_experience_good_bad",
    "builtin_count_letter_occurrences",
    "builtin_sum_of_list",
    "builtin_sort_words_alphabetically",
    "builtin_is_palindrome",
)
"""Held-out task names, one per category."""

BUILTIN_TRAIN: tuple[str, ...] = tuple(s.name for s in ALL_SPECS if s.name not in BUILTIN_TEST)
"""Training task names (all other built-in tasks), in suite order."""

_SPECS: dict[str, BuiltinSpec] = {s.name: s for s in ALL_SPECS}


def _positive_examples(spec: BuiltinSpec) -> tuple[Example, ...]:
    """Seed-independent demonstrations, with distinct inputs and (where possible) distinct outputs."""
    rng = random.Random(f"{spec.name}/examples")
    examples: list[Example] = []
    for attempt in range(500):
        x, y = spec.generate(rng)
        if any(e.input == x for e in examples):
            continue
        if attempt < 400 and any(e.output == y for e in examples):
            continue
        examples.append(Example(input=x, output=y))
        if len(examples) == NUM_POSITIVE_EXAMPLES:
            break
    return tuple(examples)


def _instances(
    spec: BuiltinSpec, examples: tuple[Example, ...], num_instances: int, seed: int
) -> tuple[Instance, ...]:
    rng = random.Random(f"{spec.name}/instances/{seed}")
    seen = {e.input for e in examples}
    instances: list[Instance] = []
    for _ in range(50 * num_instances + 500):
        x, y = spec.generate(rng)
        if x in seen:
            continue
        seen.add(x)
        instances.append(Instance(id=f"{spec.name}-{len(instances)}", input=x, outputs=(y,)))
        if len(instances) == num_instances:
            break
    if len(instances) < num_instances:
        logger.warning(
            "%s: only %d distinct instances (asked for %d)", spec.name, len(instances), num_instances
        )
    return tuple(instances)


def make_builtin_task(name: str, num_instances: int = 60, seed: int = 0) -> Task:
    """One built-in task by name, with ``num_instances`` generated instances."""
    spec = _SPECS.get(name)
    if spec is None:
        raise DataError(
            f"unknown built-in task {name!r} (see tagi.data.builtin.BUILTIN_TRAIN / BUILTIN_TEST)"
        )
    if num_instances < 1:
        raise DataError(f"num_instances must be at least 1 (got {num_instances})")
    examples = _positive_examples(spec)
    return Task(
        name=spec.name,
        definition=spec.definition,
        positive_examples=examples,
        instances=_instances(spec, examples, num_instances, seed),
        categories=(spec.category,),
        input_language=("English",),
        output_language=("English",),
    )


def builtin_tasks(split: str = "train", num_instances: int = 60, seed: int = 0) -> list[Task]:
    """The built-in tasks of ``split`` ("train", "test" = held-out, or "all"), in suite order.

    Same ``seed`` → identical tasks; another seed → other instances (same definitions and examples).
    """
    names = {"train": BUILTIN_TRAIN, "test": BUILTIN_TEST, "all": tuple(_SPECS)}.get(split)
    if names is None:
        raise DataError(f"unknown built-in split {split!r} (use 'train', 'test' or 'all')")
    wanted = set(names)
    return [make_builtin_task(s.name, num_instances, seed) for s in ALL_SPECS if s.name in wanted]
