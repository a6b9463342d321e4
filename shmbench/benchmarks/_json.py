"""Strict JSON values and checked configuration fields for benchmark descriptions.

A benchmark description crosses a trust boundary: the host writes it, the container turns it
into an environment. Only plain data may cross (no callables, no import paths, no pickles), so
every configuration is passed through :func:`strict_json` on both sides. Keeping the check in
one place means the host fails early with the same message the container would give.

The typed getters (:func:`get_int`, :func:`get_number`, ...) exist so that each benchmark can
validate its configuration up front and name the offending key, instead of failing somewhere
inside ``step()`` with a bare ``TypeError``.

>>> strict_json({"cutoff": 10, "action_values": (3, 3)})
{'cutoff': 10, 'action_values': [3, 3]}
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shmbench.errors import ExperimentError

__all__ = [
    "DATA_DIR",
    "MAX_DEPTH",
    "strict_json",
    "dumps",
    "loads",
    "merge_config",
    "get_int",
    "get_number",
    "get_str",
    "get_choice",
    "get_seed",
    "data_path",
    "is_shipped",
]

#: Where the instance sets shipped with shmbench live.
DATA_DIR = Path(__file__).resolve().parent / "data"

#: Deepest nesting accepted; deeper input is refused before it can exhaust the stack.
MAX_DEPTH = 64


def strict_json(value: Any, *, where: str = "config") -> Any:
    """Return a plain copy of ``value`` made only of JSON types, or raise.

    Accepted: ``None``, ``bool``, ``int``, finite ``float``, ``str``, lists and dicts with
    ``str`` keys, recursively. Tuples become lists and numpy numbers/arrays become Python
    numbers/lists, because a host-side config naturally contains them and they carry no code.
    Everything else (callables, classes, bytes, sets, NaN, infinities, non-``str`` keys) is
    refused, since the result is meant to travel into a container as inert data.

    Args:
        value: the candidate value.
        where: a name for ``value`` used in error messages.

    Raises:
        ExperimentError: naming the first offending element by its path.
    """
    return _convert(value, where, 0)


def _convert(value: Any, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ExperimentError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if value is None or type(value) is bool or type(value) is str:
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            raise ExperimentError(f"{path}: {number!r} is not a finite number (JSON has no NaN or infinity)")
        return number
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ExperimentError(f"{path}: key {key!r} is a {type(key).__name__}; JSON object keys must be strings")
            key = str.__str__(key)
            result[key] = _convert(item, f"{path}[{key!r}]", depth + 1)
        return result
    if isinstance(value, (list, tuple)):
        return [_convert(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)]
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise ExperimentError(f"{path}: numpy array of dtype {value.dtype} is not JSON data")
        return _convert(value.tolist(), path, depth)
    raise ExperimentError(
        f"{path}: a {type(value).__name__} is not JSON data (allowed: None, bool, int, "
        "finite float, str, list, dict with str keys)"
    )


def dumps(value: Any, *, where: str = "config") -> str:
    """Serialise ``value`` as strict JSON text (see :func:`strict_json`)."""
    return json.dumps(strict_json(value, where=where), allow_nan=False)


def _refuse_constant(name: str) -> Any:
    raise ExperimentError(f"JSON text contains {name}, which strict JSON does not allow")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ExperimentError(f"JSON text repeats the key {key!r}")
        result[key] = value
    return result


def loads(text: str | bytes, *, where: str = "config") -> Any:
    """Parse strict JSON text: no NaN/Infinity, no repeated keys, bounded nesting.

    Raises:
        ExperimentError: for malformed or non-strict text.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ExperimentError(f"{where}: JSON text is not UTF-8: {exc}") from None
    if not isinstance(text, str):
        raise ExperimentError(f"{where}: expected JSON text, got a {type(text).__name__}")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_refuse_duplicates)
    except json.JSONDecodeError as exc:
        raise ExperimentError(f"{where}: not valid JSON: {exc}") from None
    except RecursionError:
        raise ExperimentError(f"{where}: JSON nested too deeply") from None
    return strict_json(value, where=where)


# ---------------------------------------------------------------------------------------------
# Checked configuration fields
# ---------------------------------------------------------------------------------------------


def merge_config(defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None, *, benchmark: str) -> dict[str, Any]:
    """Return ``defaults`` updated by ``overrides``, both strict JSON; unknown keys are refused.

    Refusing unknown keys turns a typo (``"cuttoff"``) into an error instead of a silently
    ignored setting in a long experiment.
    """
    merged = strict_json(dict(defaults), where=f"{benchmark} defaults")
    if overrides is None:
        return merged
    if not isinstance(overrides, Mapping):
        raise ExperimentError(f"{benchmark} config must be a dict, got a {type(overrides).__name__}")
    checked = strict_json(overrides, where=f"{benchmark} config")
    unknown = sorted(set(checked) - set(merged))
    if unknown:
        raise ExperimentError(
            f"{benchmark} config has unknown key(s) {unknown}; known keys: {sorted(merged)}"
        )
    merged.update(checked)
    return merged


def _where(benchmark: str, key: str) -> str:
    return f"{benchmark} config[{key!r}]"


def get_int(config: Mapping[str, Any], key: str, *, benchmark: str, minimum: int | None = None,
            maximum: int | None = None, allow_none: bool = False) -> int | None:
    """Return ``config[key]`` as an int within bounds (bools are not ints here)."""
    value = config[key]
    if value is None and allow_none:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int:
        raise ExperimentError(f"{_where(benchmark, key)} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ExperimentError(f"{_where(benchmark, key)} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ExperimentError(f"{_where(benchmark, key)} must be <= {maximum}, got {value}")
    return value


def get_number(config: Mapping[str, Any], key: str, *, benchmark: str, minimum: float | None = None) -> float:
    """Return ``config[key]`` as a finite float (ints accepted, bools refused)."""
    value = config[key]
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ExperimentError(f"{_where(benchmark, key)} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ExperimentError(f"{_where(benchmark, key)} must be >= {minimum}, got {value}")
    return float(value)


def get_str(config: Mapping[str, Any], key: str, *, benchmark: str, allow_none: bool = False) -> str | None:
    """Return ``config[key]`` as a non-empty string (or ``None`` when allowed)."""
    value = config[key]
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value:
        raise ExperimentError(f"{_where(benchmark, key)} must be a non-empty string, got {value!r}")
    return value


def get_choice(config: Mapping[str, Any], key: str, choices: Iterable[str], *, benchmark: str) -> str:
    """Return ``config[key]`` if it is one of ``choices``."""
    allowed = tuple(choices)
    value = config[key]
    if value not in allowed:
        raise ExperimentError(f"{_where(benchmark, key)} must be one of {list(allowed)}, got {value!r}")
    return value


def get_seed(config: Mapping[str, Any], key: str = "seed", *, benchmark: str) -> int | None:
    """Return a seed usable by ``numpy.random.default_rng``: ``None`` or an int >= 0."""
    return get_int(config, key, benchmark=benchmark, minimum=0, allow_none=True)


def data_path(name: str) -> Path:
    """Resolve an instance-set name: a bare file name shipped in :data:`DATA_DIR`, else a path.

    A bare name is looked up in the package first so that the same description works on the
    host and inside a container that has the same shmbench installed.
    """
    if "/" not in name and "\\" not in name and name not in (".", ".."):
        shipped = DATA_DIR / name
        if shipped.is_file():
            return shipped
    return Path(name)


def is_shipped(name: str) -> bool:
    """Whether ``name`` names an instance set shipped inside the shmbench package."""
    return data_path(name).parent == DATA_DIR
