"""Spaces across the process boundary: described as plain data in the server, rebuilt on the host.

The server describes its env's spaces (:func:`describe`); the host rebuilds equal gymnasium
spaces without importing the env's package (:func:`rebuild`). Every constructor parameter
crosses -- bounds, dtypes, starts, character lists and their order, key order, nested
structure -- and so does each space's random generator once it exists (a space the env
seeded samples on the host exactly as it would in the server). Every gymnasium space is
covered: Box, Discrete, MultiDiscrete, MultiBinary, Text, Dict, Tuple, Graph, Sequence and
OneOf; a custom Space subclass is refused with its name, or crosses as a pickle when both
sides allowed pickling.

Dispatch is per space type (Gymnasium's ``shared_memory.py`` pattern: ``singledispatch``
on the class for describing, a table keyed by the description's type for rebuilding), so
a new space type is one registration away. How values of these spaces sit in shared
memory is :mod:`shmbench.wire.slab`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import singledispatch
from typing import Any

import numpy as np
from gymnasium import spaces

from shmbench.errors import ProtocolError, SpaceNotSupported

__all__ = ["describe", "rebuild", "generator_state", "generator_from_state", "MAX_LEAVES", "MAX_TOTAL_ELEMENTS"]

#: the bit generators a generator state may name (numpy's own, nothing imported by name)
BIT_GENERATORS: dict[str, type[np.random.BitGenerator]] = {
    cls.__name__: cls
    for cls in (np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox, np.random.SFC64)
}


def generator_state(generator: Any) -> dict | None:
    """The bit-generator state of a numpy Generator (plain data), None for anything else."""
    if not isinstance(generator, np.random.Generator):
        return None
    return dict(generator.bit_generator.state)


def generator_from_state(state: Any, into: np.random.Generator | None = None) -> np.random.Generator:
    """A Generator in ``state`` (from a peer: validated). ``into`` is reused when it has the
    same bit generator, so that a reference to it stays live."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    cls = BIT_GENERATORS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ProtocolError(f"not a numpy bit-generator state (bit_generator={name!r})")
    if into is not None and type(into.bit_generator) is cls:
        bitgen = into.bit_generator
    else:
        bitgen, into = cls(), None
    try:
        bitgen.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ProtocolError(f"bad {name} state: {exc}") from None
    return into if into is not None else np.random.Generator(bitgen)


# ----------------------------------------------------------------------------------------
# describe (server side): space -> plain data
# ----------------------------------------------------------------------------------------


def describe(space: spaces.Space, *, allow_pickle: bool = False) -> dict:
    """Plain-data description of ``space``, its generator's state included once it has one.

    A space shmbench does not know raises SpaceNotSupported naming it, unless
    ``allow_pickle``: then it travels as the object (the codec pickles it).
    """
    return _describe(space, allow_pickle)


def _with_rng(space: spaces.Space, desc: dict) -> dict:
    state = generator_state(getattr(space, "_np_random", None))
    if state is not None:
        desc["rng"] = state
    return desc


@singledispatch
def _describe(space: spaces.Space, allow_pickle: bool) -> dict:
    if allow_pickle and isinstance(space, spaces.Space):
        return {"type": "Pickled", "space": space}
    raise SpaceNotSupported(
        f"shmbench cannot describe a {type(space).__module__}.{type(space).__qualname__} "
        f"({space!r}); supported: gymnasium's Box, Discrete, MultiDiscrete, MultiBinary, Text, "
        f"Dict, Tuple, Graph, Sequence and OneOf (a custom space crosses as a pickle when both "
        f"sides pass allow_pickle=True)"
    )


@_describe.register
def _(space: spaces.Box, allow_pickle: bool) -> dict:
    return _with_rng(
        space,
        {
            "type": "Box",
            "low": space.low,
            "high": space.high,
            "dtype": space.dtype.str,
            "bounded_below": space.bounded_below,
            "bounded_above": space.bounded_above,
        },
    )


@_describe.register
def _(space: spaces.Discrete, allow_pickle: bool) -> dict:
    return _with_rng(
        space, {"type": "Discrete", "n": int(space.n), "start": int(space.start), "dtype": space.dtype.str}
    )


@_describe.register
def _(space: spaces.MultiDiscrete, allow_pickle: bool) -> dict:
    return _with_rng(
        space, {"type": "MultiDiscrete", "nvec": space.nvec, "start": space.start, "dtype": space.dtype.str}
    )


@_describe.register
def _(space: spaces.MultiBinary, allow_pickle: bool) -> dict:
    n = space.n
    return _with_rng(
        space, {"type": "MultiBinary", "n": [int(x) for x in n] if isinstance(n, (tuple, list, np.ndarray)) else int(n)}
    )


@_describe.register
def _(space: spaces.Text, allow_pickle: bool) -> dict:
    return _with_rng(
        space,
        {
            "type": "Text",
            "max_length": int(space.max_length),
            "min_length": int(space.min_length),
            "charset": "".join(space.character_list),  # in its order: sampling indexes it
        },
    )


@_describe.register
def _(space: spaces.Dict, allow_pickle: bool) -> dict:
    return _with_rng(
        space,
        {
            "type": "Dict",
            "spaces": [[k, _describe(s, allow_pickle)] for k, s in space.spaces.items()],
            "sort_keys": bool(getattr(space, "sort_keys", True)),
        },
    )


@_describe.register
def _(space: spaces.Tuple, allow_pickle: bool) -> dict:
    return _with_rng(space, {"type": "Tuple", "spaces": [_describe(s, allow_pickle) for s in space.spaces]})


@_describe.register
def _(space: spaces.Graph, allow_pickle: bool) -> dict:
    edge = space.edge_space
    return _with_rng(
        space,
        {
            "type": "Graph",
            "node_space": _describe(space.node_space, allow_pickle),
            "edge_space": None if edge is None else _describe(edge, allow_pickle),
        },
    )


@_describe.register
def _(space: spaces.Sequence, allow_pickle: bool) -> dict:
    return _with_rng(
        space, {"type": "Sequence", "space": _describe(space.feature_space, allow_pickle), "stack": bool(space.stack)}
    )


@_describe.register
def _(space: spaces.OneOf, allow_pickle: bool) -> dict:
    return _with_rng(space, {"type": "OneOf", "spaces": [_describe(s, allow_pickle) for s in space.spaces]})


# ----------------------------------------------------------------------------------------
# rebuild (host side): plain data -> space. The description comes from the container, so
# it is validated: a bad one is a ProtocolError, never a crash or a huge allocation.
# ----------------------------------------------------------------------------------------

#: a space from the container may have at most this many leaves, and elements over all of them
MAX_LEAVES = 4096
MAX_TOTAL_ELEMENTS = 1 << 28
_MAX_DEPTH = 16


def _check_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > 32 or not all(type(d) is int and 0 <= d for d in shape):
        raise ProtocolError(f"bad space shape {shape!r}")
    if math.prod(shape) > MAX_TOTAL_ELEMENTS:
        raise ProtocolError(f"space shape {shape!r} is too large")
    return tuple(shape)


def _elements(desc: dict) -> int:
    kind = desc.get("type")
    if kind == "Box" and isinstance(desc.get("low"), np.ndarray):
        return int(desc["low"].size)
    if kind == "MultiDiscrete" and isinstance(desc.get("nvec"), np.ndarray):
        return int(desc["nvec"].size)
    if kind == "MultiBinary":
        n = desc.get("n")
        dims: list = n if isinstance(n, list) else [n]
        if all(type(d) is int and d >= 0 for d in dims):
            return math.prod(dims)
    return 1


def _children(desc: dict) -> list | None:
    """The sub-descriptions of a composite description, None for a leaf."""
    kind = desc.get("type")
    if kind == "Dict" and isinstance(desc.get("spaces"), list):
        return [pair[1] if isinstance(pair, list) and len(pair) == 2 else None for pair in desc["spaces"]]
    if kind in ("Tuple", "OneOf") and isinstance(desc.get("spaces"), list):
        return list(desc["spaces"])
    if kind == "Sequence":
        return [desc.get("space")]
    if kind == "Graph":
        return [desc.get("node_space")] + ([desc["edge_space"]] if desc.get("edge_space") is not None else [])
    return None


def _check_description(desc: Any) -> None:
    """Before anything is built from a description (it comes from the container): its
    nesting, its number of leaves and their total size are bounded."""
    todo = [(desc, 0)]
    leaves = elements = 0
    while todo:
        d, depth = todo.pop()
        if depth > _MAX_DEPTH or not isinstance(d, dict):
            raise ProtocolError("malformed space description")
        items = _children(d)
        if items is not None:
            if leaves + len(items) > MAX_LEAVES:
                raise ProtocolError(f"space description too large: more than {MAX_LEAVES} leaves")
            todo += [(sub, depth + 1) for sub in items]
            continue
        leaves += 1
        elements += _elements(d)
        if leaves > MAX_LEAVES or elements > MAX_TOTAL_ELEMENTS:
            raise ProtocolError(
                f"space description too large: more than {MAX_LEAVES} leaves or {MAX_TOTAL_ELEMENTS} elements in all"
            )


#: rebuilders by the description's "type": one per space, as describe() has one per class
_REBUILDERS: dict[str, Callable[[dict, int], spaces.Space]] = {}


def _rebuilds(kind: str) -> Callable[[Callable[[dict, int], spaces.Space]], Callable[[dict, int], spaces.Space]]:
    def register(fn: Callable[[dict, int], spaces.Space]) -> Callable[[dict, int], spaces.Space]:
        _REBUILDERS[kind] = fn
        return fn

    return register


def rebuild(desc: Any, depth: int = 0) -> spaces.Space:
    """Rebuild a gymnasium space from :func:`describe`'s output (generators included)."""
    if depth == 0:
        _check_description(desc)
    if depth > _MAX_DEPTH or not isinstance(desc, dict) or not isinstance(desc.get("type"), str):
        raise ProtocolError("malformed space description")
    kind = desc["type"]
    rebuilder = _REBUILDERS.get(kind)
    if rebuilder is None:
        raise ProtocolError(f"unknown space type {kind!r} in a space description")
    try:
        space = rebuilder(desc, depth)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"bad {kind} space description: {exc}") from None
    if "rng" in desc and kind != "Pickled":
        space._np_random = generator_from_state(desc["rng"])
    return space


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise ValueError(f"{what} must be an int, got {value!r}")  # rebuild() names the space
    return value


def _flags(value: Any, shape: tuple[int, ...]) -> np.ndarray:
    if type(value) is not np.ndarray or value.dtype != np.bool_ or value.shape != shape:
        raise ProtocolError("bad Box bounded flags")
    return value.copy()


@_rebuilds("Box")
def _(desc: dict, depth: int) -> spaces.Space:
    low, high = desc["low"], desc["high"]
    if not isinstance(low, np.ndarray) or not isinstance(high, np.ndarray) or low.shape != high.shape:
        raise ProtocolError("bad Box bounds")
    shape = _check_shape(low.shape)
    box = spaces.Box(low=low, high=high, shape=shape, dtype=np.dtype(desc["dtype"]))
    if "bounded_below" in desc:
        box.bounded_below = _flags(desc["bounded_below"], shape)
        box.bounded_above = _flags(desc["bounded_above"], shape)
    return box


@_rebuilds("Discrete")
def _(desc: dict, depth: int) -> spaces.Space:
    return spaces.Discrete(
        _int(desc["n"], "n"), start=_int(desc["start"], "start"), dtype=np.dtype(desc.get("dtype", "<i8"))
    )


@_rebuilds("MultiDiscrete")
def _(desc: dict, depth: int) -> spaces.Space:
    nvec = desc["nvec"]
    if not isinstance(nvec, np.ndarray):
        raise ProtocolError("bad MultiDiscrete nvec")
    _check_shape(nvec.shape)
    return spaces.MultiDiscrete(nvec, dtype=np.dtype(desc["dtype"]), start=desc["start"])


@_rebuilds("MultiBinary")
def _(desc: dict, depth: int) -> spaces.Space:
    n = desc["n"]
    _check_shape(n if isinstance(n, list) else [n])
    return spaces.MultiBinary(n)


@_rebuilds("Text")
def _(desc: dict, depth: int) -> spaces.Space:
    charset = desc["charset"]
    if type(charset) is not str:
        raise ProtocolError("bad Text charset")
    return spaces.Text(
        _int(desc["max_length"], "max_length"), min_length=_int(desc["min_length"], "min_length"), charset=charset
    )


@_rebuilds("Dict")
def _(desc: dict, depth: int) -> spaces.Space:
    items = desc["spaces"]
    if not isinstance(items, list) or not all(isinstance(p, list) and len(p) == 2 for p in items):
        raise ProtocolError("bad Dict space")
    # a list of pairs: the keys keep the server's order whatever sort_keys says
    space = spaces.Dict([(k, rebuild(d, depth + 1)) for k, d in items])
    space.sort_keys = bool(desc.get("sort_keys", True))
    return space


@_rebuilds("Tuple")
def _(desc: dict, depth: int) -> spaces.Space:
    items = desc["spaces"]
    if not isinstance(items, list):
        raise ProtocolError("bad Tuple space")
    return spaces.Tuple([rebuild(d, depth + 1) for d in items])


@_rebuilds("Graph")
def _(desc: dict, depth: int) -> spaces.Space:
    edge = desc["edge_space"]
    return spaces.Graph(rebuild(desc["node_space"], depth + 1), None if edge is None else rebuild(edge, depth + 1))


@_rebuilds("Sequence")
def _(desc: dict, depth: int) -> spaces.Space:
    return spaces.Sequence(rebuild(desc["space"], depth + 1), stack=bool(desc["stack"]))


@_rebuilds("OneOf")
def _(desc: dict, depth: int) -> spaces.Space:
    items = desc["spaces"]
    if not isinstance(items, list) or not items:
        raise ProtocolError("bad OneOf space")
    return spaces.OneOf([rebuild(d, depth + 1) for d in items])


@_rebuilds("Pickled")
def _(desc: dict, depth: int) -> spaces.Space:
    # only reachable when the host decoded a pickle, which it does only with allow_pickle
    space = desc["space"]
    if not isinstance(space, spaces.Space):
        raise ProtocolError("a pickled space description that holds no space")
    return space
