"""Every gymnasium space, each constructor parameter away from its default (shared by the
space tests, and by the envs of tests/fidelity_envs.py that serve them through a real server)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from gymnasium import spaces

#: every gymnasium space, every constructor parameter away from its default
EVERY_SPACE = {
    "box-f16-inf": spaces.Box(
        low=np.array([-np.inf, 0.0], np.float16), high=np.array([1.0, np.inf], np.float16), dtype=np.float16
    ),
    "box-int-unbounded": spaces.Box(low=-np.inf, high=5, shape=(2, 2), dtype=np.int32),
    "box-bool": spaces.Box(0, 1, (3,), dtype=np.bool_),
    "box-uint8-scalar": spaces.Box(0, 255, (), dtype=np.uint8),
    "discrete-int32": spaces.Discrete(4, start=1, dtype=np.int32),
    "discrete-uint8": spaces.Discrete(3, start=2, dtype=np.uint8),
    "discrete-negative": spaces.Discrete(7, start=-3),
    "multidiscrete-start-int16": spaces.MultiDiscrete([[3, 4], [5, 6]], start=[[1, -1], [0, 2]], dtype=np.int16),
    "multibinary-shape": spaces.MultiBinary([2, 3]),
    "text-ordered-charset": spaces.Text(5, min_length=0, charset="zyx10"),
    "text-set-charset": spaces.Text(3, charset=frozenset("qwe")),
    "dict-ordered": spaces.Dict(OrderedDict([("z", spaces.Discrete(2)), ("a", spaces.Box(0, 1, (1,)))])),
    "dict-unsorted": spaces.Dict({"z": spaces.Discrete(2), "a": spaces.Discrete(3)}, sort_keys=False),
    "tuple-nested": spaces.Tuple([spaces.Discrete(2, dtype=np.int8), spaces.Tuple([spaces.MultiBinary(2)])]),
    "graph-edges": spaces.Graph(spaces.Box(-1, 1, (3,)), spaces.Discrete(4, start=1)),
    "graph-no-edges": spaces.Graph(spaces.Discrete(5), None),
    "sequence": spaces.Sequence(spaces.Box(0, 1, (2,), dtype=np.float32)),
    "sequence-stacked": spaces.Sequence(spaces.Discrete(3), stack=True),
    "oneof": spaces.OneOf([spaces.Discrete(2), spaces.Box(0, 1, (2,)), spaces.Text(3)]),
    "dict-of-everything": spaces.Dict(
        {"g": spaces.Graph(spaces.Box(0, 1, (1,)), None), "s": spaces.Sequence(spaces.Discrete(2)), "t": spaces.Text(2)}
    ),
}


def assert_same_space(a: spaces.Space, b: spaces.Space) -> None:
    """Equal, and equal in what __eq__ leaves out (dtypes, bounded flags, order)."""
    assert type(a) is type(b) and a == b, (a, b)
    assert a.dtype == b.dtype
    if isinstance(a, spaces.Box):
        assert (a.bounded_below == b.bounded_below).all() and (a.bounded_above == b.bounded_above).all()
        assert a.low.tobytes() == b.low.tobytes() and a.high.tobytes() == b.high.tobytes()
    if isinstance(a, spaces.Text):
        assert a.character_list == b.character_list
    if isinstance(a, spaces.Dict):
        assert list(a.spaces) == list(b.spaces) and a.sort_keys == b.sort_keys
    subs = {
        spaces.Dict: lambda s: list(s.spaces.values()),
        spaces.Tuple: lambda s: list(s.spaces),
        spaces.OneOf: lambda s: list(s.spaces),
        spaces.Sequence: lambda s: [s.feature_space],
        spaces.Graph: lambda s: [s.node_space] + ([s.edge_space] if s.edge_space is not None else []),
    }
    for kind, get in subs.items():
        if isinstance(a, kind):
            for x, y in zip(get(a), get(b), strict=True):
                assert_same_space(x, y)
