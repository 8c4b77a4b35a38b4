"""``tagi`` command line: every subcommand is a plain Python function whose signature is the interface.

The parser is built from the function's signature and docstring: a parameter ``config`` becomes the
positional ``CONFIG`` (a YAML file), a parameter ``overrides: list[str]`` takes trailing ``key=value``
overrides, every other parameter becomes ``--name`` (``bool`` parameters are flags; ``--name`` /
``--no-name``). Functions are imported only when their command runs, so ``tagi --help`` is instant.

A :class:`~tagi.errors.TagiError` (bad input) is printed as one line ``error: ...`` with exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
import typing
from collections.abc import Callable

from tagi.errors import TagiError

COMMANDS: dict[str, tuple[str, str]] = {
    "train-teachers": ("tagi.commands.train:train_teachers", "stage 0: train teacher LoRA adapters"),
    "pretrain": ("tagi.commands.train:pretrain", "stage 1: pretrain the hypernetwork on plain text"),
    "finetune": ("tagi.commands.train:finetune", "stage 2: distillation finetuning of the hypernetwork"),
    "sweep": (
        "tagi.commands.train:sweep",
        "choose finetuning settings by validation CE on held-out training tasks",
    ),
    "run": ("tagi.commands.train:run", "run all stages of a config in order (finished stages are skipped)"),
    "generate": ("tagi.commands.generate:generate", "generate a PEFT LoRA adapter from an instruction"),
    "predict": (
        "tagi.commands.generate:predict",
        "run a generated adapter (or a checkpoint + instruction) on inputs",
    ),
    "evaluate": ("tagi.commands.evaluate:evaluate", "evaluate methods and baselines; write a report"),
    "demo": ("tagi.commands.evaluate:demo", "the whole pipeline on the embedded model and built-in tasks"),
    "serve": (
        "tagi.commands.serve:serve",
        "serve instant adapters over HTTP: a web page and an OpenAI-style API",
    ),
}


def _resolve(target: str) -> Callable:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _doc_params(fn: Callable) -> dict[str, str]:
    """``name: help`` from an ``Args:`` section of the docstring."""
    out, active = {}, False
    for line in (inspect.getdoc(fn) or "").splitlines():
        if line.strip() in ("Args:", "Arguments:"):
            active = True
            continue
        if active and line.startswith("    ") and ":" in line:
            key, text = line.strip().split(":", 1)
            out[key.strip()] = text.strip()
        elif active and line.strip() and not line.startswith(" "):
            active = False
    return out


def build_parser(name: str, fn: Callable) -> argparse.ArgumentParser:
    doc = inspect.getdoc(fn) or ""
    p = argparse.ArgumentParser(prog=f"tagi {name}", description=doc.split("\n\nArgs:")[0])
    helps = _doc_params(fn)
    hints = typing.get_type_hints(fn)
    for pname, param in inspect.signature(fn).parameters.items():
        tp, default, help_ = hints.get(pname, str), param.default, helps.get(pname, "")
        if pname == "config":
            p.add_argument("config", metavar="CONFIG", help=help_ or "YAML config file")
        elif pname == "overrides":
            p.add_argument("overrides", nargs="*", metavar="key=value", help=help_ or "config overrides")
        elif tp is bool:
            flag, action = f"--{pname.replace('_', '-')}", argparse.BooleanOptionalAction
            p.add_argument(flag, dest=pname, action=action, default=default, help=help_)
        else:
            args = typing.get_args(tp)
            base = tp if typing.get_origin(tp) is list else next((a for a in args if a is not type(None)), tp)
            kwargs = {"type": base if base in (int, float) else str}
            if typing.get_origin(base) is list:
                kwargs = {"nargs": "*", "type": str}
            literal = next((t for t in (tp, base) if typing.get_origin(t) is typing.Literal), None)
            if literal is not None:  # Literal[...] or Literal[...] | None
                kwargs = {"type": str, "choices": list(typing.get_args(literal))}
            required = default is inspect.Parameter.empty
            kwargs |= {"required": required, "default": None if required else default, "help": help_}
            p.add_argument(f"--{pname.replace('_', '-')}", dest=pname, **kwargs)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def prefer_passive_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose.

    Measured on the 2-core machine with SmolLM2-135M: while another CPU-heavy process ran, spinning threads
    made greedy decoding of 10 instances 83 s instead of 4.7 s; on an idle machine PASSIVE cost ~8% on a
    training step and nothing on decoding. OpenMP reads the setting when torch is first imported, so this
    runs in :func:`main` before any command imports torch (the CLI imports torch lazily).
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: tagi COMMAND [options]\n\nTask adapters generated from instructions.\n\ncommands:")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:<15} {summary}")
        print("\n'tagi COMMAND --help' shows a command's options.")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}' (see 'tagi --help')", file=sys.stderr)
        return 2
    debug = "--debug" in rest
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prefer_passive_openmp()
    try:
        fn = _resolve(COMMANDS[name][0])
    except (ImportError, AttributeError):
        if debug:
            raise
        print(f"error: 'tagi {name}' is not available in this version yet", file=sys.stderr)
        return 2
    args = vars(build_parser(name, fn).parse_args(rest))
    args.pop("debug")
    try:
        result = fn(**args)
    except (TagiError, OSError) as e:  # bad input or an unusable path: one line, no traceback
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
