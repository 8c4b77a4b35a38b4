"""Config files: a YAML mapping read with clear errors, and ``extends: base.yaml`` resolved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tagi.config.schema import ConfigError


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with clear errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p} is not UTF-8 text (bad byte at offset {e.start})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping at the top level")
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _deep_merge(out[key], value) if both else value
    return out


def read_config_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping, with ``extends: other.yaml`` resolved.

    ``extends`` names another config (relative to this file's folder); its mapping is read first and this
    file's keys are merged over it, section by section (a list or scalar replaces the base's value).
    """
    p = Path(path).resolve()
    if p in _seen:
        raise ConfigError(f"config {path} extends itself (cycle: {' -> '.join(q.name for q in (*_seen, p))})")
    data = read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: 'extends' must name a config file, got {base!r}")
    return _deep_merge(read_config_yaml(p.parent / base, (*_seen, p)), data)
