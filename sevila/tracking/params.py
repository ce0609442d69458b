"""Run settings as MLflow params: flattened dotted keys, values within MLflow's limits (part of the
sevila.tracking package, whose __init__ re-exports these names). Pure: no MLflow import."""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

# MLflow's limits (mlflow.utils.validation; a test pins these against the installed MLflow).
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_ENTITY_KEY_LENGTH = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
TRUNCATION_MARK = "...[truncated; full value in params.yaml]"


def _plain(obj: Any) -> Any:
    """A config tree as plain YAML/JSON data: dataclasses -> dicts, enums -> values, tuples -> lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        text = text[: MAX_PARAM_VAL_LENGTH - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return text


def safe_key(key: str) -> str:
    """A name MLflow accepts: characters it rejects become `_`; a name over 250 characters is cut and given a
    hash suffix so two long names cannot collide."""
    key = re.sub(r"[^/\w.\- :]", "_", str(key))
    if len(key) > MAX_ENTITY_KEY_LENGTH:
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]
        key = key[: MAX_ENTITY_KEY_LENGTH - 9] + "~" + digest
    return key


def flatten_params(config: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys -> string values: `{"a": {"b": 1, "c": [1, 2]}}` -> `{"a.b": "1", "a.c": "[1, 2]"}`.

    Lists stay one JSON value (a list is one setting), scalars are JSON-encoded (`true`, `null`, `0.5`) except
    strings, which stay as they are, and an empty section is `{}`; a value longer than MLflow's 6000 characters
    is truncated with a mark (the untruncated config is the run's `params.yaml` artifact)."""
    data = _plain(config)
    if not isinstance(data, dict):
        raise ValueError(f"flatten_params: expected a mapping or dataclass at the top, got {type(config).__name__}")
    out: dict[str, str] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict) and (node or not path):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        else:  # a leaf; an empty section is kept as "{}" so the setting still shows
            out[safe_key(path)] = _param_value(node)

    walk(data, prefix)
    return out


def _parse_int(v: str | None) -> int | None:
    """A tag string read back as an int (None when absent or not a number)."""
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _parse_bool(v: str | None) -> bool | None:
    return {"true": True, "false": False}.get(str(v).lower()) if v is not None else None
