"""Checked configuration fields of the shmbench benchmarks, and where their data lives.

A benchmark description crosses a trust boundary: the host writes it, the container turns it
into an environment. Its configuration is strict JSON (:mod:`shmbench.wire.strict_json`) on both
sides; on top of that, each benchmark validates every field up front with the typed getters
here (:func:`get_int`, :func:`get_number`, ...), so that a bad value names its key on the
host -- with the message the container would give -- instead of failing somewhere inside
``step()`` with a bare ``TypeError``.

>>> get_int({"cutoff": 10}, "cutoff", benchmark="shmbench/Sigmoid-v0", minimum=1)
10
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shmbench.errors import ExperimentError
from shmbench.wire.strict_json import strict_json

__all__ = [
    "DATA_DIR",
    "merge_config",
    "get_int",
    "get_number",
    "get_range",
    "get_str",
    "get_choice",
    "get_seed",
    "data_path",
    "is_shipped",
]

#: Where the instance sets shipped with shmbench live.
DATA_DIR = Path(__file__).resolve().parent / "data"


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
        raise ExperimentError(f"{benchmark} config has unknown key(s) {unknown}; known keys: {sorted(merged)}")
    merged.update(checked)
    return merged


def _where(benchmark: str, key: str) -> str:
    return f"{benchmark} config[{key!r}]"


def get_int(
    config: Mapping[str, Any],
    key: str,
    *,
    benchmark: str,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
) -> int | None:
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


def get_range(config: Mapping[str, Any], key: str, *, benchmark: str) -> list[float]:
    """Return ``config[key]`` as ``[low, high]`` floats with ``low <= high`` (a reward range)."""
    value = config[key]
    if (
        not isinstance(value, list)
        or len(value) != 2
        or any(type(v) not in (int, float) for v in value)
        or value[0] > value[1]
    ):
        raise ExperimentError(f"{_where(benchmark, key)} must be [low, high] with low <= high, got {value!r}")
    return [float(value[0]), float(value[1])]


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
