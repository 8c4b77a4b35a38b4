"""tagi — Task Adapters Generation from Instructions.

A hypernetwork reads a task's natural-language instruction and generates a LoRA adapter for a frozen
base language model (T5 or Llama-family), so an unseen task is solved without training on its examples.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Adapter", "Tagi", "__version__"]


def __getattr__(name: str):
    # the Python API is imported lazily so that `import tagi` (and `tagi --help`) stays fast
    if name == "Tagi":
        from tagi.api import Tagi

        return Tagi
    if name == "Adapter":
        from tagi.adapters import Adapter

        return Adapter
    raise AttributeError(name)
