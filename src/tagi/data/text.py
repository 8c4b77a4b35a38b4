"""Plain text for hypernetwork pretraining (SPEC §2 stage 1) and the a/b/c segment cut.

Sources accepted by :func:`read_texts` (mix freely):

- ``*.txt`` / ``*.md`` / ``*.text``: UTF-8 text. ``txt_mode="paragraph"`` (default) makes one
  document per blank-line-separated paragraph (inner newlines kept); ``txt_mode="line"`` makes one
  document per non-empty line.
- ``*.jsonl``: one JSON object per line; the document is the string field ``text_field``
  (default ``"text"``). Blank lines are skipped.
- a folder: every ``*.txt``, ``*.md``, ``*.text`` and ``*.jsonl`` file directly inside it, sorted by name.
- ``hf:<dataset>[:<config>[:<split>]]`` (e.g. ``hf:allenai/c4:en``): the first ``max_docs`` records
  of a Hugging Face dataset, streamed (needs the optional ``datasets`` package and network).

Documents are stripped; empty ones are dropped.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from tagi.data.sni import DataError, Task
from tagi.files import jsonl_rows

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl",)


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


def _read_txt(path: Path, txt_mode: str) -> list[str]:
    text = _read_utf8(path).replace("\r\n", "\n")
    if txt_mode == "line":
        return [line.strip() for line in text.split("\n")]
    paragraphs: list[str] = []
    current: list[str] = []
    for line in text.split("\n") + [""]:
        if line.strip():
            current.append(line.rstrip())
        elif current:
            paragraphs.append("\n".join(current).strip())
            current = []
    return paragraphs


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    for lineno, row in jsonl_rows(_read_utf8(path), path, DataError):
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise DataError(f"{path}:{lineno}: expected an object with a string field {text_field!r}")
        docs.append(row[text_field])
    return docs


def _read_hf(spec: str, text_field: str, max_docs: int) -> list[str]:
    """Stream the first ``max_docs`` records of ``hf:<name>[:<config>[:<split>]]``."""
    try:
        import datasets  # type: ignore[import-not-found]  # optional dependency
    except ImportError:
        raise DataError(f"{spec}: reading a Hugging Face dataset needs `pip install datasets`") from None
    parts = spec[len("hf:") :].split(":")
    if not parts[0] or len(parts) > 3:
        raise DataError(f"{spec}: expected hf:<dataset>[:<config>[:<split>]]")
    name, config, split = (
        parts[0],
        parts[1] if len(parts) > 1 else None,
        parts[2] if len(parts) > 2 else "train",
    )
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
        docs = []
        for row in stream:
            docs.append(str(row[text_field]))
            if len(docs) >= max_docs:
                break
    except Exception as err:  # network, unknown name, missing field: report on one line
        raise DataError(f"{spec}: cannot read the dataset ({type(err).__name__}: {err})") from None
    return docs


def _expand(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.suffix in TEXT_SUFFIXES + JSONL_SUFFIXES and p.is_file()
        )
        if not files:
            raise DataError(f"{path}: folder holds no .txt/.md/.text/.jsonl files")
        return files
    if not path.exists():
        raise DataError(f"text file not found: {path}")
    if path.suffix not in TEXT_SUFFIXES + JSONL_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .txt, .md, .text or .jsonl)")
    return [path]


def read_texts(
    paths: Sequence[str | Path],
    text_field: str = "text",
    txt_mode: str = "paragraph",
    max_docs: int = 10_000,
) -> list[str]:
    """Read documents from text/JSONL files, folders or ``hf:`` names (see the module docstring).

    ``max_docs`` caps only the ``hf:`` sources. Raises :class:`DataError` for a missing path, a bad
    JSONL row (with its line number), or when nothing non-empty was read.
    """
    if txt_mode not in ("paragraph", "line"):
        raise DataError(f"txt_mode must be 'paragraph' or 'line' (got {txt_mode!r})")
    if isinstance(paths, str | Path):
        paths = [paths]
    docs: list[str] = []
    for source in paths:
        if isinstance(source, str) and source.startswith("hf:"):
            docs.extend(_read_hf(source, text_field, max_docs))
            continue
        for path in _expand(Path(source)):
            if path.suffix in JSONL_SUFFIXES:
                docs.extend(_read_jsonl(path, text_field))
            else:
                docs.extend(_read_txt(path, txt_mode))
    docs = [d.strip() for d in docs if d.strip()]
    if not docs:
        raise DataError(f"no text found in {', '.join(str(p) for p in paths) or 'an empty list of paths'}")
    return docs


def split_abc(
    ids: Sequence[int], rng: random.Random, min_len: int = 4
) -> tuple[list[int], list[int], list[int]]:
    """Cut a token sequence at two random points into consecutive, non-empty segments a, b, c.

    Each segment gets at least ``min_len`` tokens, or ``len(ids) // 3`` when the sequence is shorter
    than ``3 * min_len``; the extra tokens are shared out uniformly at random over all valid cuts.
    (Pretraining: the hypernetwork reads a, the adapted model reads b and predicts c.)
    Raises ``ValueError`` for fewer than 3 tokens.
    """
    n = len(ids)
    if n < 3:
        raise ValueError(f"need at least 3 tokens to cut into a, b, c (got {n})")
    if min_len < 1:
        raise ValueError(f"min_len must be at least 1 (got {min_len})")
    floor = min(min_len, n // 3)
    slack = n - 3 * floor
    # Stars and bars: two distinct positions among slack + 2 split the slack into three parts.
    p, q = sorted(rng.sample(range(slack + 2), 2))
    len_a = floor + p
    len_b = floor + (q - p - 1)
    a, b, c = list(ids[:len_a]), list(ids[len_a : len_a + len_b]), list(ids[len_a + len_b :])
    return a, b, c


def texts_from_tasks(tasks: Iterable[Task]) -> list[str]:
    """Offline pretraining text: each task's definition, then its instance inputs (duplicates dropped)."""
    docs: dict[str, None] = {}
    for task in tasks:
        for text in (task.definition, *(inst.input for inst in task.instances)):
            text = text.strip()
            if text:
                docs.setdefault(text, None)
    return list(docs)
