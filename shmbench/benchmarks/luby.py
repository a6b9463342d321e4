"""The Luby DAC benchmark, numpy only.

From Biedenkapp et al., "Dynamic Algorithm Configuration: Foundation of a New
Meta-Algorithmic Framework", ECAI 2020, following DACBench's ``LubyEnv`` step for step: at
each step the agent predicts ``log2`` of the next element of the Luby sequence
(1, 1, 2, 1, 1, 2, 4, 1, ...) and gets reward 0 when right, -1 otherwise (clipped to
``reward_range``). An episode lasts ``min_steps`` steps (truncated, never terminated); the
sequence is precomputed for ``2 * cutoff + 1`` elements and ``cutoff`` sets the action count,
``Discrete(floor(log2(cutoff)) + 1)`` (7 for the default 64).

An instance is ``(start, sticky)``: the sequence position is shifted by ``start`` and drifts
by ``sticky`` per step. With ``error`` starting at ``sticky`` and ``j`` at 1, the target is
``log2(luby(max(1, round(j + start + error))))``; each step adds 1 to ``j`` and ``sticky``
to ``error`` (``round`` is round-half-to-even, like ``numpy.round``).

Observation (float32, ``hist_length + 1`` values): the last ``hist_length`` actions, oldest
first and ``-1`` where there are none yet, then the index of the last step (``t - 1``); all
``-1`` after reset. As in DACBench, the observation returned with the final step is the one
from before that step (the history does not show the last action): this keeps trajectories
identical to DACBench's.

Deliberate differences from DACBench: the first ``reset()`` uses the first instance,
``reset(seed=...)`` rewinds the instance order, the ``"random"`` order is drawn from the
env's seeded Generator, observations are float32 as declared, an instance that would run off
the precomputed sequence is refused at construction (DACBench raises ``IndexError``
mid-episode), and ``step()`` outside an episode raises ``ResetNeeded``.

>>> [luby(i) for i in range(1, 16)]
[1, 1, 2, 1, 1, 2, 4, 1, 1, 2, 1, 1, 2, 4, 8]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from shmbench.benchmarks import _instances
from shmbench.benchmarks._config import get_choice, get_int, get_range, get_seed, get_str, merge_config
from shmbench.errors import ExperimentError

__all__ = [
    "BENCHMARK",
    "DEFAULT_CONFIG",
    "INSTANCE_ORDERS",
    "INSTANCE_VALUES",
    "LubyEnv",
    "luby",
    "luby_log2_sequence",
    "resolve_config",
    "read_instance_csv",
    "load_instances",
]

BENCHMARK = "shmbench/Luby-v0"

INSTANCE_ORDERS = ("round_robin", "random")

#: What an instance's values are, in order (the columns of an instance-set CSV after ``ID``).
INSTANCE_VALUES = ("start", "sticky")

#: Defaults, all strict JSON; names as in DACBench's ``LUBY_DEFAULTS``.
DEFAULT_CONFIG: dict[str, Any] = {
    "cutoff": 64,
    "min_steps": 8,
    "hist_length": 5,
    "reward_range": [-1.0, 0.0],
    "instance_set_path": "luby_default.csv",
    "instance_set": None,
    "instance_update_func": "round_robin",
    "seed": 0,
}


def luby(i: int) -> int:
    """The ``i``-th element (1-based) of the Luby sequence.

    ``luby(2**k - 1) = 2**(k-1)``; otherwise, for ``2**(k-1) <= i < 2**k - 1``,
    ``luby(i) = luby(i - 2**(k-1) + 1)``. Written as a loop so any ``i`` is safe.
    """
    if i < 1:
        raise ValueError(f"the Luby sequence starts at i = 1, got {i}")
    while True:
        k = i.bit_length()  # 2**(k-1) <= i < 2**k
        if i == (1 << k) - 1:
            return 1 << (k - 1)
        i -= (1 << (k - 1)) - 1


def luby_log2_sequence(length: int) -> np.ndarray:
    """``log2(luby(i))`` for ``i = 1..length`` as float64 (exact: the elements are powers of 2)."""
    return np.array([luby(i).bit_length() - 1 for i in range(1, length + 1)], dtype=np.float64)


def resolve_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``config`` into :data:`DEFAULT_CONFIG` and check every field.

    Raises:
        ExperimentError: for unknown keys or out-of-range values.
    """
    cfg = merge_config(DEFAULT_CONFIG, config, benchmark=BENCHMARK)
    cutoff = get_int(cfg, "cutoff", benchmark=BENCHMARK, minimum=1, maximum=1 << 20)
    get_int(cfg, "min_steps", benchmark=BENCHMARK, minimum=1, maximum=cutoff)
    get_int(cfg, "hist_length", benchmark=BENCHMARK, minimum=1, maximum=4096)
    cfg["reward_range"] = get_range(cfg, "reward_range", benchmark=BENCHMARK)
    get_str(cfg, "instance_set_path", benchmark=BENCHMARK, allow_none=True)
    get_choice(cfg, "instance_update_func", INSTANCE_ORDERS, benchmark=BENCHMARK)
    get_seed(cfg, "seed", benchmark=BENCHMARK)
    return cfg


def read_instance_csv(path: str | Path) -> dict[int, list[float]]:
    """Read a DACBench-format Luby instance set: a header ``ID,start,sticky`` then rows.

    Raises:
        ExperimentError: for unreadable files, missing columns, bad numbers or repeated ids.
    """
    return _instances.read_instance_csv(path, benchmark=BENCHMARK, names=INSTANCE_VALUES)


def _targets(start: float, sticky: float, steps: int) -> list[int]:
    """Sequence positions (1-based) targeted before step 1 and after each of ``steps`` steps.

    The float operations are DACBench's, in its order, so positions agree exactly.
    """
    error = 0 + sticky
    positions = [max(1, round(1 + start + error))]
    for j in range(2, steps + 2):
        error += sticky
        positions.append(max(1, round(j + start + error)))
    return positions


def load_instances(cfg: Mapping[str, Any]) -> dict[int, tuple[float, float]]:
    """Return the instance set of a resolved config, each checked to stay on the sequence.

    Raises:
        ExperimentError: for malformed instances, or ones whose drift would index past the
            ``2 * cutoff + 1`` precomputed elements within ``min_steps`` steps.
    """
    raw, source = _instances.raw_instances(
        cfg, benchmark=BENCHMARK, names=INSTANCE_VALUES, fallback=lambda: ({0: [0.0, 0.0]}, "the default instance")
    )
    length = 2 * cfg["cutoff"] + 1
    instances = {}
    for inst_id in sorted(raw):
        values = raw[inst_id]
        if len(values) != 2 or not all(np.isfinite(values)) or max(abs(v) for v in values) > 1e9:
            raise ExperimentError(
                f"{BENCHMARK}: instance {inst_id} of {source} must be two finite numbers [start, sticky], got {values}"
            )
        start, sticky = values
        furthest = max(_targets(start, sticky, cfg["min_steps"]))
        if furthest > length:
            raise ExperimentError(
                f"{BENCHMARK}: instance {inst_id} of {source} (start={start}, sticky={sticky}) reaches "
                f"sequence position {furthest} within min_steps={cfg['min_steps']}, past the "
                f"{length} elements that cutoff={cfg['cutoff']} provides"
            )
        instances[inst_id] = (start, sticky)
    return instances


class LubyEnv(_instances.InstanceSetEnv[np.ndarray, np.int64]):
    """Predict the Luby sequence; see the module docstring for the dynamics.

    Configured, seeded and walked through its instance set as
    :class:`~shmbench.benchmarks._instances.InstanceSetEnv` describes, with ``config`` the
    overrides of :data:`DEFAULT_CONFIG` and ``instance_set`` mapping id -> ``(start, sticky)``.
    """

    benchmark = BENCHMARK
    _resolve_config = staticmethod(resolve_config)
    _load_instances = staticmethod(load_instances)

    def __init__(self, config: Mapping[str, Any] | None = None, render_mode: str | None = None) -> None:
        super().__init__(config, render_mode)
        self._min_steps: int = self.config["min_steps"]
        self._hist = self.config["hist_length"]
        self._reward_low, self._reward_high = self.config["reward_range"]
        self._seq = luby_log2_sequence(2 * self.config["cutoff"] + 1)
        self._seq.setflags(write=False)

        self._n_actions = self.config["cutoff"].bit_length()
        self.action_space = spaces.Discrete(self._n_actions)
        high = max(2.0 ** (self._seq.max() + 1), float(self._min_steps))
        self.observation_space = spaces.Box(-1.0, high, shape=(self._hist + 1,), dtype=np.float32)

        self._start = 0.0
        self._sticky = 0.0
        self._error = 0.0
        self._j = 1
        self._t = 0
        self._goal = 0.0
        self._state = [-1] * (self._hist + 1)
        self._running = False

    @property
    def next_goal(self) -> int:
        """The action that would be rewarded 0 at the next step (``log2`` of the next element)."""
        return int(self._goal)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode on the next instance.

        Args:
            seed: reseeds the env's Generator and rewinds the instance order.
            options: ``{"instance_id": id}`` or ``{"instance": [start, sticky]}``.
        """
        self._start, self._sticky = self._next_instance(seed, options)
        self._error = 0 + self._sticky
        self._j = 1
        self._t = 0
        self._goal = self._seq[self._position() - 1]
        self._state = [-1] * (self._hist + 1)
        self._running = True
        return np.array(self._state, dtype=np.float32), {}

    def _adhoc_instance(self, values: Any) -> tuple[float, float]:
        return load_instances({**self.config, "instance_set": {"0": list(values)}})[0]

    def _position(self) -> int:
        # DACBench's int(np.round(j + start + error)): same operand order, same rounding.
        return max(1, round(self._j + self._start + self._error))

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Reward the prediction, advance along the (shifted, drifting) sequence."""
        if not self._running:
            raise ResetNeeded(f"{BENCHMARK}: call reset() before step() (and after an episode ends)")
        given = np.asarray(action)
        if given.shape != () or given.dtype.kind not in "iu" or not 0 <= int(given) < self._n_actions:
            raise ValueError(f"{BENCHMARK}: action {action!r} is not in {self.action_space}")
        act = int(given)
        self._t += 1
        truncated = self._t >= self._min_steps
        previous = list(self._state)
        reward = 0.0 if act == self._goal else -1.0
        reward = max(self._reward_low, min(self._reward_high, reward))
        self._j += 1
        self._error += self._sticky
        self._goal = self._seq[self._position() - 1]
        if self._t - 1 < self._hist:
            self._state[self._t - 1] = act
        else:
            self._state[:-2] = self._state[1:-1]
            self._state[-2] = act
        self._state[-1] = self._t - 1
        if truncated:
            self._running = False
        obs = np.array(previous if truncated else self._state, dtype=np.float32)
        return obs, reward, False, bool(truncated), {}
