"""One home for file mechanics: atomic writes, JSON / JSONL, checksums and package versions.

**Atomic files.** :func:`write_atomic` writes to a temporary sibling (``.{name}.*.tmp``) and renames it
into place with ``os.replace``, so a reader sees the old file or the new one, never half of one; the
temporary file is removed however the write ends. :func:`write_text`, :func:`write_json` (2-space indent,
UTF-8 kept, trailing newline) and :func:`write_jsonl` (one object per line) build on it.

**Atomic folders.** ``with atomic_dir(final) as tmp:`` yields a temporary sibling folder
(``.{name}.tmp-*``); when the block ends normally :func:`replace_dir` moves it to ``final`` (an old folder
there is renamed aside first and deleted after), and a block that raises leaves ``final`` untouched.

**Reading.** :func:`jsonl_rows` parses JSONL text line by line, naming the line of a bad row;
:func:`read_config_json` reads the JSON config of a folder format (checkpoint, PEFT adapter) that needs a
companion weights file, with one-line errors of the format's own type.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("tagi", "torch", "transformers", "peft", "safetensors", "rouge-score", "numpy", "matplotlib")


# ---------------------------------------------------------------------------------------- files


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------- folders


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder to its final name; an old folder there is replaced, never half-written."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """A temporary folder to fill; it becomes ``final`` when the block ends without an exception."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------- reading


def jsonl_rows(text: str, path: str | Path, error: type[Exception]) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of every non-blank line of JSONL ``text`` read from ``path``.

    A line that is not JSON raises ``error("{path}:{line}: not valid JSON (...)")``.
    """
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{n}: not valid JSON ({e.msg})") from None


def read_config_json(
    folder: str | Path, config: str, weights: str, what: str, error: type[Exception]
) -> dict[str, Any]:
    """The JSON ``folder/config`` of a folder format that also needs ``folder/weights``.

    Raises ``error`` naming the format (``what``) when a file is missing, or the file when it is not JSON.
    """
    path = Path(folder)
    if not (path / config).is_file() or not (path / weights).is_file():
        raise error(f"not a {what} (needs {config} and {weights}): {path}")
    try:
        return json.loads((path / config).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path / config} is not valid JSON: {e}") from None


# ---------------------------------------------------------------------------------------- provenance


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``, else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Python, the platform, the CPU and the installed version of each package ("not installed" when
    missing).

    The CPU is its model name and the vector extension torch's kernels dispatch to
    (``torch.backends.cpu.get_cpu_capability()``, e.g. ``AVX512``): float32 rounding, and so trained weights
    and scores, can differ between CPUs with the same packages and seed.
    """
    import torch

    out = {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model()}
    out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
