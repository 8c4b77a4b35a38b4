"""Kill a training run at a planned point of its own progress, never at a moment chosen by a clock.

Run as ``python crash_child.py PLAN tagi-command args...``: the ``tagi`` command runs in this process,
which counts its own progress and sends itself SIGKILL at the point ``PLAN`` (JSON) names. A SIGKILL is a
SIGKILL whoever sends it: no ``finally`` block, ``atexit`` hook or buffer flush runs. Because the point is
defined by progress, the same plan kills at the same place on a fast idle machine and on a slow loaded one.

Progress is counted by :class:`Progress` (a ``sys.setprofile`` hook, this thread only), from the moment a
stage runner (``tagi.train.stages.run_*``) is entered:

- an **event** is a call made by a function of the ``tagi`` package (to any Python or C function), or a
  call made by the modules that write files for it (``IO_MODULES``: ``pathlib``, ``os``, ``shutil``, ...)
  to a function that opens, writes, moves or deletes files: a C function or a function of those modules
  named in ``FILE_OPS`` (``open``, ``write``, ``replace``, ``rmtree``, torch's ``write_record`` of one
  tensor into a ``torch.save`` zip, ...). A kill at event ``n`` happens just before the ``n``-th such call: between two tensor
  operations of a step, between writing two files of a checkpoint, between ``open`` (which truncates)
  and ``write`` inside ``Path.write_text``, between two tensors of a ``torch.save``, between the renames
  of a folder swap, ... (Counting every call inside ``torch.save`` instead would put most kill points in
  its per-tensor bookkeeping.)
- a **checkpoint** is a return from ``tagi.train.checkpoint.save_state``.

Plans (``k >= 2``, ``0 <= f < 1``):

- ``{"kind": "start", "events": r}`` kills at event ``r``: during start-up (loading, the teacher cache being
  written, ...) or the first step, for ``r`` below the events a run makes before its first checkpoint.
- ``{"kind": "step", "ckpts": k, "fraction": f}`` kills ``floor(f * D)`` events after this process's
  ``k``-th checkpoint, ``D`` being the events between its checkpoints ``k - 1`` and ``k`` (a step and a save):
  anywhere in the next step or save.
- ``{"kind": "save", "ckpts": k, "fraction": f}`` kills inside the save of checkpoint ``k + 1``, after
  ``floor(f * L) + 1`` of its calls, ``L`` being the calls the save of checkpoint ``k`` made: between two
  files of the state, between the renames of the folder swap, ...
- ``{"kind": "after", "ckpts": k}`` (``k >= 1``) kills right after this process's ``k``-th checkpoint
  returns.

Whatever the plan, the kill happens at the latest right after checkpoint ``k + 1`` returns (``k = 0`` for
``start``, ``k - 1`` for ``after``), so a process commits at most ``k + 1`` new checkpoints. Before dying it prints one line
``crash_child: SIGKILL at event ...`` naming the call it was about to make.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from typing import Any

FILE_OPS = frozenset(
    {"open", "write", "writelines", "flush", "close", "truncate", "fsync", "replace", "rename", "unlink"}
    | {"remove", "rmdir", "mkdir", "makedirs", "rmtree", "mkstemp", "mkdtemp", "write_text", "write_bytes"}
    | {"touch", "copyfile", "copy", "copy2", "copytree", "move", "write_record", "serialize_file"}
)


IO_MODULES = ("pathlib", "os", "shutil", "tempfile", "safetensors.torch", "torch.serialization")


class Progress:
    """A profile hook counting events and checkpoints (see the module docstring); kills per ``plan``.

    ``ckpts`` holds the event count at each checkpoint's return, ``saves`` the event count at each call of
    ``save_state`` (the call included) and ``startup_file_ops`` the events before the first checkpoint that
    are file operations, as ``(event, where)``.
    """

    def __init__(self, plan: dict[str, Any] | None = None) -> None:
        import importlib

        import tagi
        from tagi.train import stages
        from tagi.train.checkpoint import save_state

        kind = plan["kind"] if plan else None
        self.plan = plan
        self.target = plan["events"] if kind == "start" else math.inf  # the event to die at
        self.last = 1  # the checkpoint right after which the process dies at the latest
        if kind == "after":
            assert plan["ckpts"] >= 1, plan
            self.last = plan["ckpts"]
        elif kind in ("step", "save"):
            assert plan["ckpts"] >= 2, plan  # k = 1 would measure D over the start-up
            self.last = plan["ckpts"] + 1
        else:
            assert kind in (None, "start"), plan
        self.events = 0
        self.ckpts: list[int] = []
        self.saves: list[int] = []
        self.counting = False
        self._tagi = os.path.dirname(tagi.__file__) + os.sep
        self._runners = {
            stages.run_teachers.__code__,
            stages.run_pretrain.__code__,
            stages.run_finetune.__code__,
        }
        self._save_state = save_state.__code__
        self.startup_file_ops: list[tuple[int, str]] = []
        self._io = {importlib.import_module(m).__file__ for m in IO_MODULES}
        self._kinds: dict[Any, int] = {}

    def _kind(self, code) -> int:
        """2: ``code`` is part of ``tagi``, 1: of an IO module, 0: other (cached per code object)."""
        kind = self._kinds.get(code)
        if kind is None:
            name = code.co_filename
            kind = self._kinds[code] = 2 if name.startswith(self._tagi) else int(name in self._io)
        return kind

    def __call__(self, frame, event: str, arg) -> None:
        if event == "call":
            code = frame.f_code
            if code in self._runners:
                self.counting = True
            if not self.counting or frame.f_back is None:
                return
            callee, frame, callee_io = code.co_name, frame.f_back, self._kind(code) == 1
            if code is self._save_state:
                self._save_called()
        elif event == "c_call":
            if not self.counting:
                return
            callee, callee_io = getattr(arg, "__name__", ""), True
        elif event == "return" and frame.f_code is self._save_state and self.counting:
            self._checkpoint()
            return
        else:
            return
        kind = self._kind(frame.f_code)
        file_op = kind > 0 and callee_io and callee in FILE_OPS  # not, e.g., a hook handle's remove()
        if not (kind == 2 or file_op):
            return
        self.events += 1
        if file_op and not self.ckpts:
            self.startup_file_ops.append((self.events, _where(frame, callee)))
        if self.events >= self.target:
            self._kill(_where(frame, callee))

    def _save_called(self) -> None:
        self.saves.append(self.events + 1)  # this call is the event about to be counted
        plan = self.plan
        if plan and plan["kind"] == "save" and len(self.saves) == plan["ckpts"] + 1:
            length = self.ckpts[-1] - self.saves[-2]  # calls the previous save made
            self.target = self.saves[-1] + math.floor(plan["fraction"] * length) + 1

    def _checkpoint(self) -> None:
        self.ckpts.append(self.events)
        plan, n = self.plan, len(self.ckpts)
        if plan is None:
            return
        if plan["kind"] == "step" and n == plan["ckpts"]:
            self.target = self.events + math.floor(plan["fraction"] * (self.events - self.ckpts[-2]))
        if n >= self.last:
            self._kill("right after save_state returned")

    def _kill(self, where: str) -> None:
        print(
            f"crash_child: SIGKILL at event {self.events}, after {len(self.ckpts)} checkpoints, {where}",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getpid(), signal.SIGKILL)


def _where(frame, callee: str) -> str:
    """``before f() calls g (file.py:line)``: the call about to be made."""
    return f"before {frame.f_code.co_name}() calls {callee} ({os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno})"


def main(argv: list[str]) -> int:
    from tagi.cli import main as cli_main
    from tagi.cli import prefer_passive_openmp

    plan = json.loads(argv[0])
    prefer_passive_openmp()  # what `tagi` does before torch is imported (Progress imports it)
    sys.setprofile(Progress(plan))
    code = cli_main(argv[1:])
    sys.setprofile(None)
    print("crash_child: the run ended before its kill point", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
