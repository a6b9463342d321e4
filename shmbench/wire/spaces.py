"""Spaces across the process boundary: describe, rebuild, flatten, and lay out as shared slabs.

The server describes its env's spaces as plain data (the codec carries it); the host
rebuilds equal gymnasium spaces without importing the env's package, and lays out the
fast-path slabs from them; both sides turn a Dict/Tuple observation into the slab's leaves
and back. Every operation is dispatched per space type (Gymnasium's ``shared_memory.py``
pattern: ``singledispatch`` on the space class, a table keyed by the description's type for
rebuilding), so a new space type is one registration per operation away, and an
unsupported one fails with a message that names it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import singledispatch
from typing import Any

import numpy as np
from gymnasium import spaces

from shmbench.errors import ProtocolError, SpaceNotSupported

__all__ = [
    "describe",
    "rebuild",
    "Leaf",
    "leaves",
    "unflatten",
    "build_tree",
    "flatten_exact",
    "leaf_kind",
    "SlabLayout",
    "layout",
]

SLAB_ALIGN = 64


# ----------------------------------------------------------------------------------------
# describe (server side): space -> plain data
# ----------------------------------------------------------------------------------------


@singledispatch
def describe(space: spaces.Space) -> dict:
    """Plain-data description of ``space`` (raises SpaceNotSupported, naming it)."""
    raise SpaceNotSupported(
        f"shmbench cannot describe a {type(space).__module__}.{type(space).__qualname__} "
        f"({space!r}); supported: Box, Discrete, MultiDiscrete, MultiBinary, Text, and Dict "
        f"or Tuple of those"
    )


@describe.register
def _(space: spaces.Box) -> dict:
    return {"type": "Box", "low": space.low, "high": space.high, "dtype": space.dtype.str}


@describe.register
def _(space: spaces.Discrete) -> dict:
    return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}


@describe.register
def _(space: spaces.MultiDiscrete) -> dict:
    return {"type": "MultiDiscrete", "nvec": space.nvec, "start": space.start, "dtype": space.dtype.str}


@describe.register
def _(space: spaces.MultiBinary) -> dict:
    n = space.n
    return {"type": "MultiBinary", "n": [int(x) for x in n] if isinstance(n, (tuple, list, np.ndarray)) else int(n)}


@describe.register
def _(space: spaces.Text) -> dict:
    return {
        "type": "Text",
        "max_length": int(space.max_length),
        "min_length": int(space.min_length),
        "charset": space.characters,
    }


@describe.register
def _(space: spaces.Dict) -> dict:
    return {"type": "Dict", "spaces": [[k, describe(s)] for k, s in space.spaces.items()]}


@describe.register
def _(space: spaces.Tuple) -> dict:
    return {"type": "Tuple", "spaces": [describe(s) for s in space.spaces]}


# ----------------------------------------------------------------------------------------
# rebuild (host side): plain data -> space. The description comes from the container, so
# it is validated: a bad one is a ProtocolError, never a crash or a huge allocation.
# ----------------------------------------------------------------------------------------

_MAX_ELEMENTS = 1 << 28


def _check_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > 32 or not all(type(d) is int and 0 <= d for d in shape):
        raise ProtocolError(f"bad space shape {shape!r}")
    n = 1
    for d in shape:
        n *= d
    if n > _MAX_ELEMENTS:
        raise ProtocolError(f"space shape {shape!r} is too large")
    return tuple(shape)


#: rebuilders by the description's "type": one per space, as describe() has one per class
_REBUILDERS: dict[str, Callable[[dict, int], spaces.Space]] = {}


def _rebuilds(kind: str) -> Callable[[Callable[[dict, int], spaces.Space]], Callable[[dict, int], spaces.Space]]:
    def register(fn: Callable[[dict, int], spaces.Space]) -> Callable[[dict, int], spaces.Space]:
        _REBUILDERS[kind] = fn
        return fn

    return register


#: a space from the container may have at most this many leaves, and elements over all of them
MAX_LEAVES = 4096
MAX_TOTAL_ELEMENTS = 1 << 28


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


def _check_description(desc: Any) -> None:
    """Before anything is built from a description (it comes from the container): its
    nesting, its number of leaves and their total size are bounded."""
    todo = [(desc, 0)]
    leaves = elements = 0
    while todo:
        d, depth = todo.pop()
        if depth > 16 or not isinstance(d, dict):
            raise ProtocolError("malformed space description")
        items = d.get("spaces")
        if d.get("type") in ("Dict", "Tuple") and isinstance(items, list):
            if d["type"] == "Dict":
                items = [pair[1] if isinstance(pair, list) and len(pair) == 2 else None for pair in items]
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


def rebuild(desc: Any, depth: int = 0) -> spaces.Space:
    """Rebuild a gymnasium space from :func:`describe`'s output."""
    if depth == 0:
        _check_description(desc)
    if depth > 16 or not isinstance(desc, dict) or not isinstance(desc.get("type"), str):
        raise ProtocolError("malformed space description")
    kind = desc["type"]
    rebuilder = _REBUILDERS.get(kind)
    if rebuilder is None:
        raise ProtocolError(f"unknown space type {kind!r} in a space description")
    try:
        return rebuilder(desc, depth)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"bad {kind} space description: {exc}") from None


@_rebuilds("Box")
def _(desc: dict, depth: int) -> spaces.Space:
    low, high = desc["low"], desc["high"]
    if not isinstance(low, np.ndarray) or not isinstance(high, np.ndarray) or low.shape != high.shape:
        raise ProtocolError("bad Box bounds")
    _check_shape(low.shape)
    return spaces.Box(low=low, high=high, shape=low.shape, dtype=np.dtype(desc["dtype"]))


@_rebuilds("Discrete")
def _(desc: dict, depth: int) -> spaces.Space:
    return spaces.Discrete(int(desc["n"]), start=int(desc["start"]))


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
    return spaces.Text(int(desc["max_length"]), min_length=int(desc["min_length"]), charset=str(desc["charset"]))


@_rebuilds("Dict")
def _(desc: dict, depth: int) -> spaces.Space:
    items = desc["spaces"]
    if not isinstance(items, list) or len(items) > 4096:
        raise ProtocolError("bad Dict space")
    return spaces.Dict({k: rebuild(d, depth + 1) for k, d in items})


@_rebuilds("Tuple")
def _(desc: dict, depth: int) -> spaces.Space:
    items = desc["spaces"]
    if not isinstance(items, list) or len(items) > 4096:
        raise ProtocolError("bad Tuple space")
    return spaces.Tuple([rebuild(d, depth + 1) for d in items])


# ----------------------------------------------------------------------------------------
# leaves and slab layout
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """One fixed-size array of a space: its path in the structure, dtype and shape."""

    path: tuple
    dtype: np.dtype
    shape: tuple[int, ...]


@singledispatch
def _leaves(space: spaces.Space, path: tuple) -> list[Leaf] | None:
    return None  # not slab-able (Text, or a space only described, never laid out)


@_leaves.register
def _(space: spaces.Box, path: tuple) -> list[Leaf] | None:
    return [Leaf(path, space.dtype, space.shape)]


@_leaves.register
def _(space: spaces.Discrete, path: tuple) -> list[Leaf] | None:
    return [Leaf(path, space.dtype, ())]


@_leaves.register
def _(space: spaces.MultiDiscrete, path: tuple) -> list[Leaf] | None:
    return [Leaf(path, space.dtype, space.shape)]


@_leaves.register
def _(space: spaces.MultiBinary, path: tuple) -> list[Leaf] | None:
    return [Leaf(path, space.dtype, space.shape)]


@_leaves.register
def _(space: spaces.Dict, path: tuple) -> list[Leaf] | None:
    out: list[Leaf] = []
    for key, sub in space.spaces.items():
        part = _leaves(sub, (*path, key))
        if part is None:
            return None
        out += part
    return out


@_leaves.register
def _(space: spaces.Tuple, path: tuple) -> list[Leaf] | None:
    out: list[Leaf] = []
    for i, sub in enumerate(space.spaces):
        part = _leaves(sub, (*path, i))
        if part is None:
            return None
        out += part
    return out


def leaves(space: spaces.Space) -> list[Leaf] | None:
    """The fixed-size arrays of ``space`` in structure order; None if it has none (Text)."""
    return _leaves(space, ())


# ----------------------------------------------------------------------------------------
# observations as slab leaves: the tree of a Dict/Tuple value <-> its leaves in space order
# ----------------------------------------------------------------------------------------


@singledispatch
def unflatten(space: spaces.Space, leaves: Iterator[Any]) -> Any:
    """The value of ``space`` made of ``leaves`` (taken in structure order).

    Dict and Tuple spaces build their dict and tuple; every other space is one leaf.
    """
    return next(leaves)


@unflatten.register
def _(space: spaces.Dict, leaves: Iterator[Any]) -> Any:
    return {k: unflatten(sub, leaves) for k, sub in space.spaces.items()}


@unflatten.register
def _(space: spaces.Tuple, leaves: Iterator[Any]) -> Any:
    return tuple(unflatten(sub, leaves) for sub in space.spaces)


def build_tree(space: spaces.Space, arrays: Iterable[Any]) -> Any:
    """:func:`unflatten` over a list of leaves (the slab's arrays)."""
    return unflatten(space, iter(arrays))


@singledispatch
def _flatten(space: spaces.Space, value: Any, dst: list[np.ndarray], out: list[np.ndarray]) -> bool:
    # an array leaf: exactly the slab's dtype and shape, else the value keeps its own type
    # through the codec
    leaf = dst[len(out)]
    if type(value) is not np.ndarray or value.dtype != leaf.dtype or value.shape != leaf.shape:
        return False
    out.append(value)
    return True


@_flatten.register
def _(space: spaces.Discrete, value: Any, dst: list[np.ndarray], out: list[np.ndarray]) -> bool:
    return False  # scalars inside trees keep their exact Python/numpy type via the codec


@_flatten.register
def _(space: spaces.Dict, value: Any, dst: list[np.ndarray], out: list[np.ndarray]) -> bool:
    if type(value) is not dict or list(value) != list(space.spaces):
        return False
    return all(_flatten(sub, value[k], dst, out) for k, sub in space.spaces.items())


@_flatten.register
def _(space: spaces.Tuple, value: Any, dst: list[np.ndarray], out: list[np.ndarray]) -> bool:
    if type(value) is not tuple or len(value) != len(space.spaces):
        return False
    return all(_flatten(sub, v, dst, out) for v, sub in zip(value, space.spaces))


def flatten_exact(space: spaces.Space, value: Any, dst: list[np.ndarray]) -> list[np.ndarray] | None:
    """The leaves of ``value`` when it matches ``space`` and the slab arrays ``dst`` exactly
    (dict keys in space order, ndarrays of exactly the leaves' dtypes and shapes); else None."""
    out: list[np.ndarray] = []
    return out if _flatten(space, value, dst, out) else None


@singledispatch
def leaf_kind(space: spaces.Space) -> str:
    """How a single env's observation of ``space`` sits in the slab: ``"array"`` (one
    ndarray leaf), ``"discrete"`` (an int in a 0-d slab), ``"tree"`` (Dict/Tuple leaves)."""
    return "array"


@leaf_kind.register
def _(space: spaces.Discrete) -> str:
    return "discrete"


@leaf_kind.register(spaces.Dict)
@leaf_kind.register(spaces.Tuple)
def _(space: spaces.Space) -> str:
    return "tree"


@dataclass(frozen=True)
class SlabLayout:
    """Where each fast-path array lives in the slab region, relative to its start.

    ``batch`` is None for a single env (arrays exactly of the space's shape) or the number
    of envs (the slab IS the batch: shape ``(batch, *shape)``). ``obs``/``action`` are None
    when that space cannot be laid out (its values then always travel through the codec).
    """

    batch: int | None
    obs: tuple[tuple[Leaf, int], ...] | None
    action: tuple[tuple[Leaf, int], ...] | None
    rewards: int | None
    terminations: int | None
    truncations: int | None
    size: int

    def to_wire(self) -> dict:
        def enc(entries):
            if entries is None:
                return None
            return [[list(leaf.path), leaf.dtype.str, list(leaf.shape), off] for leaf, off in entries]

        return {
            "batch": self.batch,
            "obs": enc(self.obs),
            "action": enc(self.action),
            "rewards": self.rewards,
            "terminations": self.terminations,
            "truncations": self.truncations,
            "size": self.size,
        }

    @classmethod
    def from_wire(cls, d: dict) -> SlabLayout:
        def dec(entries):
            if entries is None:
                return None
            return tuple((Leaf(tuple(p), np.dtype(dt), tuple(shape)), off) for p, dt, shape, off in entries)

        return cls(
            d["batch"], dec(d["obs"]), dec(d["action"]), d["rewards"], d["terminations"], d["truncations"], d["size"]
        )

    def arrays(self, buf, which: str) -> list[np.ndarray] | None:
        """numpy views of ``which`` ('obs' or 'action') over ``buf``, one per leaf."""
        entries = getattr(self, which)
        if entries is None:
            return None
        out = []
        for leaf, off in entries:
            shape = leaf.shape if self.batch is None else (self.batch, *leaf.shape)
            count = int(np.prod(shape, dtype=np.int64))
            out.append(np.frombuffer(buf, dtype=leaf.dtype, count=count, offset=off).reshape(shape))
        return out

    def vector(self, buf: Any, which: str, dtype: Any) -> np.ndarray:
        """The batch vector ``which`` (``rewards``, ``terminations``, ``truncations``) over
        ``buf``; only a vector layout has them."""
        off = getattr(self, which)
        if off is None or self.batch is None:
            raise ProtocolError(f"a layout without a batch has no {which}")
        return np.frombuffer(buf, dtype=dtype, count=self.batch, offset=off)


def layout(observation_space: spaces.Space, action_space: spaces.Space, batch: int | None = None) -> SlabLayout:
    """Lay out the fast-path arrays for one worker's envs, each SLAB_ALIGN-aligned."""
    pos = 0

    def place(nbytes: int) -> int:
        nonlocal pos
        off = pos
        pos += (max(nbytes, 1) + SLAB_ALIGN - 1) // SLAB_ALIGN * SLAB_ALIGN
        return off

    def place_leaves(ls):
        if ls is None:
            return None
        out = []
        for leaf in ls:
            n = int(np.prod(leaf.shape, dtype=np.int64)) * leaf.dtype.itemsize * (batch or 1)
            out.append((leaf, place(n)))
        return tuple(out)

    obs = place_leaves(leaves(observation_space))
    act = place_leaves(leaves(action_space))
    rewards = terminations = truncations = None
    if batch is not None:
        rewards = place(8 * batch)
        terminations = place(batch)
        truncations = place(batch)
    return SlabLayout(batch, obs, act, rewards, terminations, truncations, max(pos, SLAB_ALIGN))
