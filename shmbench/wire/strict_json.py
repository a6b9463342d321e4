"""Strict JSON: the one check and the one parser for data that crosses a trust boundary.

Two kinds of data travel as inert JSON: a benchmark configuration (the host writes it, the
container turns it into an environment) and an experiment record (its canonical JSON is
hashed, so the same record must hash the same on every machine). Only plain data may cross:
no callables, no import paths, no pickles, no NaN or infinities, no repeated keys. Keeping
the check and the parser here means the host, the container and the record loader refuse
the same things, each with its own context in the message (``where``).

The value check has two modes, because the two callers want different things:

- normalising (the default, benchmark configs): tuples become lists and numpy numbers and
  arrays become Python numbers and lists, because a host-side config naturally holds them
  and they carry no code;
- exact (``exact=True``, experiment records): only ``dict``, ``list``, ``str``, ``int``,
  finite ``float``, ``bool`` and ``None`` pass, because a record is hashed as written and a
  tuple or a numpy scalar would not survive the round trip through TOML/JSON unchanged.

This module depends on numpy and :mod:`shmbench.errors` only, so both the light container
side (:mod:`shmbench.benchmarks`) and the host side (:mod:`shmbench.experiments`) can use it
without importing each other.

>>> strict_json({"cutoff": 10, "action_values": (3, 3)})
{'cutoff': 10, 'action_values': [3, 3]}
>>> loads('{"a": NaN}', where="cfg.json")
Traceback (most recent call last):
    ...
shmbench.errors.ExperimentError: cfg.json: NaN is not JSON (strict JSON has no NaN or infinity)
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from shmbench.errors import ExperimentError

__all__ = ["MAX_DEPTH", "strict_json", "dumps", "loads"]

#: Deepest nesting accepted; deeper input is refused before it can exhaust the stack.
MAX_DEPTH = 64

_ALLOWED = "allowed: None, bool, int, finite float, str, list, dict with str keys"


def _experiment_error(path: str, problem: str) -> Exception:
    return ExperimentError(f"{path}: {problem}")


def strict_json(
    value: Any,
    *,
    where: str = "config",
    exact: bool = False,
    dotted: bool = False,
    error: Callable[[str, str], Exception] = _experiment_error,
) -> Any:
    """Return a plain copy of ``value`` made only of JSON types, or raise.

    Accepted: ``None``, ``bool``, ``int``, finite ``float``, ``str``, lists and dicts with
    ``str`` keys, recursively, at most :data:`MAX_DEPTH` levels deep. Everything else
    (callables, classes, bytes, sets, NaN, infinities, non-``str`` keys) is refused, since
    the result is meant to travel as inert data.

    Args:
        value: the candidate value.
        where: a name for ``value``, the root of the paths in error messages.
        exact: refuse what the default mode would normalise (tuples, numpy values, and
            subclasses of ``int``, ``float``, ``dict`` and ``list``) -- see the module
            docstring.
        dotted: name dict entries ``where.key`` instead of ``where['key']`` (the record
            loader's field names).
        error: builds the exception from the offending element's path and the problem;
            by default an :class:`~shmbench.errors.ExperimentError` reading ``"path: problem"``.

    Raises:
        ExperimentError: (or what ``error`` builds) naming the first offending element by
            its path.
    """
    return _Walk(exact, dotted, error).convert(value, where, 0)


class _Walk:
    """One walk's settings, so that the recursion passes only what changes per element."""

    def __init__(self, exact: bool, dotted: bool, error: Callable[[str, str], Exception]) -> None:
        self.exact = exact
        self.dotted = dotted
        self.error = error

    def convert(self, value: Any, path: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.error(path, f"nested deeper than {MAX_DEPTH} levels")
        if value is None or type(value) is bool or type(value) is int:
            return value
        if isinstance(value, str):
            return str.__str__(value)
        if type(value) is float:
            return self.finite(value, path)
        if type(value) is dict:
            return self.mapping(value, path, depth)
        if type(value) is list:
            return [self.convert(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
        if not self.exact:
            if isinstance(value, np.bool_):
                return bool(value)
            if isinstance(value, (int, np.integer)):
                return int(value)
            if isinstance(value, (float, np.floating)):
                return self.finite(float(value), path)
            if isinstance(value, Mapping):
                return self.mapping(value, path, depth)
            if isinstance(value, (list, tuple)):
                return [self.convert(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
            if isinstance(value, np.ndarray):
                if value.dtype.kind not in "biuf":
                    raise self.error(path, f"a numpy array of dtype {value.dtype} is not a JSON value")
                return self.convert(value.tolist(), path, depth)
        raise self.error(path, f"{type(value).__name__} {reprlib.repr(value)} is not a JSON value ({_ALLOWED})")

    def finite(self, number: float, path: str) -> float:
        if not math.isfinite(number):
            raise self.error(path, f"{number!r} is not a finite number (JSON has no NaN or infinity)")
        return number

    def mapping(self, value: Mapping[Any, Any], path: str, depth: int) -> dict[str, Any]:
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise self.error(path, f"key {key!r} is not a string; JSON object keys must be strings")
            key = str.__str__(key)
            child = f"{path}.{key}" if self.dotted else f"{path}[{key!r}]"
            result[key] = self.convert(item, child, depth + 1)
        return result


def dumps(value: Any, *, where: str = "config") -> str:
    """Serialise ``value`` as strict JSON text (see :func:`strict_json`)."""
    return json.dumps(strict_json(value, where=where), allow_nan=False)


def loads(text: str | bytes, *, where: str = "config") -> Any:
    """Parse strict JSON text: no NaN/Infinity, no repeated keys, bounded nesting.

    Bytes are decoded as :func:`json.loads` would (UTF-8, -16 or -32, detected), so a remote
    document reads the same whether it arrives as bytes or as text. A repeated key is an
    error rather than "the last one wins", because a record or config that says two things
    must not silently mean one of them.

    Args:
        text: the JSON document.
        where: where it came from (a file, a URL, ``"config"``), the prefix of every message.

    Raises:
        ExperimentError: for malformed or non-strict text.
    """

    def refuse_constant(name: str) -> Any:
        raise ExperimentError(f"{where}: {name} is not JSON (strict JSON has no NaN or infinity)")

    def refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ExperimentError(f"{where}: key {key!r} appears twice in one object")
            result[key] = value
        return result

    if isinstance(text, (bytes, bytearray)):
        raw = bytes(text)
        try:
            text = raw.decode(json.detect_encoding(raw))
        except UnicodeDecodeError as exc:
            raise ExperimentError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(text, str):
        raise ExperimentError(f"{where}: expected JSON text, got a {type(text).__name__}")
    try:
        value = json.loads(text, parse_constant=refuse_constant, object_pairs_hook=refuse_duplicates)
    except json.JSONDecodeError as exc:
        raise ExperimentError(f"{where}: not valid JSON: {exc}") from None
    except RecursionError:
        raise ExperimentError(f"{where}: JSON nested too deeply") from None
    # json.loads turns a number too large for a float ("1e999") into inf: refused here.
    return strict_json(value, where=where)
