"""Spaces as slabs: the fixed-size arrays of a space, laid out in shared memory.

A space whose values are fixed-size arrays (Box, Discrete, MultiDiscrete, MultiBinary,
and Dict/Tuple of those) has *leaves*; the fast path lays them out in the slab
(:func:`layout`), writes a value's leaves in place (:func:`flatten_exact`) and builds the
value back from them (:func:`build_tree`). Every operation is dispatched per space type, so
a space without leaves (Text, Graph, Sequence, OneOf, a custom space) simply has none and
its values travel through the codec.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import singledispatch
from typing import Any

import numpy as np
from gymnasium import spaces

from shmbench._ring import fill_rows, store_step
from shmbench.errors import ProtocolError

__all__ = [
    "Leaf",
    "leaves",
    "unflatten",
    "build_tree",
    "flatten_exact",
    "fill_rows",
    "store_step",
    "leaf_kind",
    "SlabLayout",
    "layout",
]

SLAB_ALIGN = 64

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
