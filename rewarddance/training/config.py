"""Reading a trainer's settings dataclass from YAML, with command-line overrides."""

from __future__ import annotations

import os
from dataclasses import fields


def config_from_yaml(cls, path: str | os.PathLike, overrides: dict | None = None):
    """``cls(**settings)`` from a YAML mapping updated by ``overrides``; unknown keys are an error naming them."""
    import yaml

    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    raw.update(overrides or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**raw)
