"""The cache key of an evaluated method's part: data fields added later keep earlier parts valid."""

from __future__ import annotations

from pathlib import Path

from tagi.config import load_config, to_dict
from tagi.evaluate.parts import ADDED_DATA_DEFAULTS, _data_key

TINY = Path(__file__).parents[2] / "configs" / "tiny.yaml"


def test_data_key_leaves_out_added_fields_at_their_defaults() -> None:
    cfg = load_config(TINY)
    data = to_dict(cfg.data)
    # what a part written before the field existed holds: the data section without it
    before = {k: v for k, v in data.items() if k not in ADDED_DATA_DEFAULTS}
    assert data["validation_by"] == "task" and _data_key(cfg) == before
    moved = load_config(TINY, ["data.validation_by=category"])
    assert _data_key(moved) == before | {"validation_by": "category"}  # a changed field is part of the key
