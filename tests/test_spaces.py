"""shmbench.wire.spaces: spaces described, rebuilt, flattened into slab leaves and laid out.

The description comes from the untrusted container: malformed ones must be a ProtocolError,
never a crash or a huge allocation. Through a real env these are exercised in test_env.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from envs import Parity
from gymnasium import spaces
from helpers import assert_same
from space_zoo import EVERY_SPACE, assert_same_space

from shmbench.errors import ProtocolError, SpaceNotSupported
from shmbench.wire.codec import Codec
from shmbench.wire.slab import build_tree, flatten_exact, layout, leaf_kind, leaves
from shmbench.wire.spaces import describe, rebuild

SPACES = [
    spaces.Box(low=-1.5, high=np.array([1.0, 2.0, 3.0], dtype=np.float32), dtype=np.float32),
    spaces.Box(low=0, high=255, shape=(4, 3), dtype=np.uint8),
    spaces.Discrete(5, start=-2),
    spaces.MultiDiscrete([[2, 3], [4, 5]], start=[[0, 1], [2, 3]], dtype=np.int32),
    spaces.MultiBinary([2, 3]),
    spaces.Text(12, min_length=2, charset="abc"),
    spaces.Dict({"b": spaces.Discrete(3), "a": spaces.Box(0, 1, (2,))}),
    spaces.Tuple([spaces.Box(0, 1, (2,), np.float64), spaces.Dict({"x": spaces.MultiBinary(4)})]),
]


@pytest.mark.parametrize("name", EVERY_SPACE)
def test_every_space_and_parameter_survives_the_trip(name):
    space = EVERY_SPACE[name]
    codec = Codec()
    assert_same_space(rebuild(codec.decode(codec.encode(describe(space)))), space)


@pytest.mark.parametrize("name", EVERY_SPACE)
def test_a_seeded_space_samples_the_same_after_the_trip(name):
    space = copy.deepcopy(EVERY_SPACE[name])
    space.seed(123)
    space.sample()  # the generator has moved on: its state crosses, not the seed
    codec = Codec()
    rebuilt = rebuild(codec.decode(codec.encode(describe(space))))
    for _ in range(5):
        assert_same(rebuilt.sample(), space.sample())


def test_an_unseeded_space_crosses_without_a_generator():
    space = spaces.Discrete(3)
    assert "rng" not in describe(space) and rebuild(describe(space))._np_random is None


def test_a_custom_space_crosses_as_a_pickle_only_when_allowed():
    with pytest.raises(SpaceNotSupported, match="Parity.*allow_pickle=True"):
        describe(Parity())
    codec = Codec(allow_pickle=True)
    back = rebuild(codec.decode(codec.encode(describe(Parity(), allow_pickle=True))))
    assert type(back).__name__ == "Parity"
    with pytest.raises(ProtocolError):
        Codec().decode(codec.encode(describe(Parity(), allow_pickle=True)))


@pytest.mark.parametrize("space", SPACES, ids=lambda s: type(s).__name__)
def test_describe_rebuild_round_trip_through_the_codec(space):
    codec = Codec()
    rebuilt = rebuild(codec.decode(codec.encode(describe(space))))
    assert type(rebuilt) is type(space) and rebuilt == space
    if isinstance(space, spaces.Dict):
        assert list(rebuilt.spaces) == list(space.spaces)  # key order is the leaf order


def test_an_unsupported_space_is_named():
    class Odd(spaces.Space):
        pass

    with pytest.raises(SpaceNotSupported, match="Odd"):
        describe(Odd())


@pytest.mark.parametrize(
    "desc, match",
    [
        ("Box", "malformed"),
        ({"type": "Nope"}, "unknown space type"),
        ({"type": "Box", "low": [0], "high": [1], "dtype": "<f4"}, "bad Box bounds"),
        ({"type": "Box", "low": np.zeros(2), "high": np.zeros(3), "dtype": "<f4"}, "bad Box bounds"),
        ({"type": "MultiBinary", "n": [1 << 20, 1 << 20]}, "too large"),
        ({"type": "MultiBinary", "n": [-1]}, "bad space shape"),
        ({"type": "Discrete", "n": "x", "start": 0}, "bad Discrete space description"),
        ({"type": "Dict", "spaces": {"a": 1}}, "bad Dict space"),
    ],
)
def test_malformed_descriptions_are_protocol_errors(desc, match):
    with pytest.raises(ProtocolError, match=match):
        rebuild(desc)


def test_deep_nesting_is_refused():
    desc: dict = {"type": "Discrete", "n": 2, "start": 0}
    for _ in range(40):
        desc = {"type": "Tuple", "spaces": [desc]}
    with pytest.raises(ProtocolError, match="malformed"):
        rebuild(desc)


def test_leaves_and_kinds():
    space = SPACES[7]
    assert [(leaf.path, leaf.dtype, leaf.shape) for leaf in leaves(space)] == [
        ((0,), np.dtype(np.float64), (2,)),
        ((1, "x"), np.dtype(np.int8), (4,)),
    ]
    assert leaves(spaces.Text(4)) is None
    assert [leaf_kind(s) for s in (SPACES[0], SPACES[2], SPACES[6], SPACES[7])] == ["array", "discrete", "tree", "tree"]


def test_flatten_exact_and_build_tree_are_inverses():
    space = spaces.Dict({"img": spaces.Box(0, 255, (2, 2), np.uint8), "v": spaces.Box(-1, 1, (3,))})
    lay = layout(space, spaces.Discrete(2))
    buf = bytearray(lay.size)
    dst = lay.arrays(buf, "obs")
    value = space.sample()
    flat = flatten_exact(space, value, dst)
    assert [a is value[k] for a, k in zip(flat, ("img", "v"))] == [True, True]
    tree = build_tree(space, flat)
    assert list(tree) == ["img", "v"] and all(tree[k] is value[k] for k in tree)
    # anything that is not exactly the space's structure, dtypes and shapes stays None
    assert flatten_exact(space, {"v": value["v"], "img": value["img"]}, dst) is None
    assert flatten_exact(space, {"img": value["img"], "v": value["v"].astype(np.float64)}, dst) is None
    assert flatten_exact(space, [value["img"], value["v"]], dst) is None


def test_layout_aligns_every_array_and_lays_out_the_batch():
    lay = layout(spaces.Box(0, 1, (3,), np.float32), spaces.MultiDiscrete([2, 2]), batch=5)
    offsets = [off for _, off in lay.obs + lay.action] + [lay.rewards, lay.terminations, lay.truncations]
    assert all(off % 64 == 0 for off in offsets) and len(set(offsets)) == len(offsets)
    buf = bytearray(lay.size)
    assert lay.arrays(buf, "obs")[0].shape == (5, 3) and lay.arrays(buf, "action")[0].shape == (5, 2)
    assert lay.vector(buf, "rewards", np.float64).shape == (5,)
    again = type(lay).from_wire(Codec().decode(Codec().encode(lay.to_wire())))
    assert again == lay
