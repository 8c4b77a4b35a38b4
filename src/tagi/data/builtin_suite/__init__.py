"""Helpers for :mod:`tagi.data.builtin`: word lists, generators and the specs of the built-in tasks."""

from tagi.data.builtin_suite.number_tasks import NUMBER_SPECS
from tagi.data.builtin_suite.spec import BuiltinSpec
from tagi.data.builtin_suite.text_tasks import TEXT_SPECS

ALL_SPECS: tuple[BuiltinSpec, ...] = TEXT_SPECS + NUMBER_SPECS

__all__ = ["ALL_SPECS", "BuiltinSpec"]
