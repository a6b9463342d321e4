"""The Sigmoid DAC benchmark, numpy only.

From Biedenkapp et al., "Dynamic Algorithm Configuration: Foundation of a New
Meta-Algorithmic Framework", ECAI 2020, and matching DACBench's ``SigmoidEnv``: per action
dimension ``i`` an instance fixes a shift ``s_i`` and a slope ``p_i``; the agent picks
``a_i`` in ``0..n_i-1`` and is rewarded for how closely ``a_i / (n_i - 1)`` traces
``sigmoid(p_i * (t - s_i))`` at each step ``t = 1..T``:

    r_t = prod_i (1 - |sigmoid(p_i (t - s_i)) - a_i / (n_i - 1)|), clipped to reward_range.

Observation (float32): ``[T - t, s_1, p_1, ..., s_k, p_k, a_1, ..., a_k]`` where the actions
are the previous ones (``-1`` right after reset). Episodes are truncated at ``t >= T``; they
never terminate.

Where it deliberately differs from DACBench (each choice keeps a seeded run reproducible or
the observation inside its declared space):

- the first ``reset()`` uses the first instance (DACBench's cursor starts on the second);
- ``reset(seed=...)`` rewinds the instance cursor, so a seeded reset always replays the same
  episode (DACBench's cursor ignores the seed);
- the ``"random"`` instance order draws from the env's own seeded Generator (DACBench uses an
  unseeded one);
- the observation Box is bounded by float32's largest value instead of infinity, and is
  returned as float32 (DACBench returns float64 arrays from a float32 Box);
- ``step()`` before ``reset()`` or after the end of an episode raises ``ResetNeeded``.

>>> env = SigmoidEnv({"action_values": [3], "instance_set": [[0, 5.0, 1.0]]})
>>> obs, info = env.reset()
>>> obs.tolist()
[10.0, 5.0, 1.0, -1.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from shmbench.benchmarks import _instances
from shmbench.benchmarks._config import (
    get_choice,
    get_int,
    get_number,
    get_range,
    get_seed,
    get_str,
    merge_config,
)
from shmbench.errors import ExperimentError

__all__ = [
    "BENCHMARK",
    "DEFAULT_CONFIG",
    "INSTANCE_ORDERS",
    "SigmoidEnv",
    "resolve_config",
    "generate_instances",
    "read_instance_csv",
    "load_instances",
    "sigmoid",
]

BENCHMARK = "shmbench/Sigmoid-v0"

#: How the next instance is chosen at ``reset()`` (DACBench's ``instance_update_func``).
INSTANCE_ORDERS = ("round_robin", "random")

#: Defaults, all strict JSON. ``instance_set`` (inline rows) wins over ``instance_set_path``;
#: with neither, ``n_instances`` instances are generated from ``instance_seed``.
DEFAULT_CONFIG: dict[str, Any] = {
    "cutoff": 10,
    "action_values": [5, 10],
    "slope_multiplier": 2.0,
    "reward_range": [0.0, 1.0],
    "instance_set_path": "sigmoid_2d_default.csv",
    "instance_set": None,
    "n_instances": 100,
    "instance_seed": 0,
    "instance_update_func": "round_robin",
    "seed": 0,
}

_F32_MAX = float(np.finfo(np.float32).max)


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """``1 / (1 + exp(-x))`` as in the paper, silent where ``exp`` overflows (the limit is 0)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def resolve_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``config`` into :data:`DEFAULT_CONFIG` and check every field.

    Runs on the host (to fail early) and in the container (the host is not trusted to have
    checked). Instance files are not read here.

    Raises:
        ExperimentError: for unknown keys or out-of-range values.
    """
    cfg = merge_config(DEFAULT_CONFIG, config, benchmark=BENCHMARK)
    get_int(cfg, "cutoff", benchmark=BENCHMARK, minimum=1, maximum=1_000_000)
    values = cfg["action_values"]
    if not isinstance(values, list) or not values or len(values) > 1024:
        raise ExperimentError(f"{BENCHMARK} config['action_values'] must be a non-empty list of ints, got {values!r}")
    for n in values:
        if type(n) is not int or not 2 <= n <= 2**31 - 1:
            raise ExperimentError(
                f"{BENCHMARK} config['action_values'] entries must be ints >= 2 "
                f"(a dimension needs two values to scale a_i / (n_i - 1)), got {values!r}"
            )
    get_number(cfg, "slope_multiplier", benchmark=BENCHMARK, minimum=0.0)
    cfg["reward_range"] = get_range(cfg, "reward_range", benchmark=BENCHMARK)
    get_str(cfg, "instance_set_path", benchmark=BENCHMARK, allow_none=True)
    get_int(cfg, "n_instances", benchmark=BENCHMARK, minimum=1, maximum=1_000_000)
    get_seed(cfg, "instance_seed", benchmark=BENCHMARK)
    get_choice(cfg, "instance_update_func", INSTANCE_ORDERS, benchmark=BENCHMARK)
    get_seed(cfg, "seed", benchmark=BENCHMARK)
    return cfg


def generate_instances(
    n: int, dimensions: int, *, cutoff: int, slope_multiplier: float, seed: int | None
) -> dict[int, list[float]]:
    """Sample ``n`` instances as DACBench's paper setting does.

    Shifts ~ Normal(T/2, T/4); slopes = (random sign) * Uniform(0, 1) * slope_multiplier.
    The Generator is private to this call, so an instance set depends only on its own seed,
    never on the env's episode seed.
    """
    rng = np.random.default_rng(seed)
    instances = {}
    for index in range(n):
        shifts = rng.normal(cutoff / 2, cutoff / 4, dimensions)
        slopes = rng.choice([-1, 1], dimensions) * rng.uniform(size=dimensions) * slope_multiplier
        instances[index] = [float(v) for v in np.concatenate((shifts, slopes))]
    return instances


def read_instance_csv(path: str | Path) -> dict[int, list[float]]:
    """Read a DACBench-format Sigmoid instance set: ``id, shift_1..shift_k, slope_1..slope_k``.

    Rows whose first cell is not an integer (a header) are skipped, as DACBench does. Unlike
    DACBench, a bad number inside a data row is an error, not a silently dropped cell that
    would shift the remaining values into the wrong dimension.

    Raises:
        ExperimentError: for unreadable files, bad cells or repeated ids.
    """
    return _instances.read_instance_csv(path, benchmark=BENCHMARK)


def load_instances(cfg: Mapping[str, Any]) -> dict[int, np.ndarray]:
    """Return the instance set a resolved config describes, checked against its dimensions.

    Raises:
        ExperimentError: when an instance does not hold ``2 * len(action_values)`` finite
            values representable as float32 (they are observed as float32).
    """
    k = len(cfg["action_values"])

    def generated() -> tuple[dict[int, list[float]], str]:
        return (
            generate_instances(
                cfg["n_instances"],
                k,
                cutoff=cfg["cutoff"],
                slope_multiplier=cfg["slope_multiplier"],
                seed=cfg["instance_seed"],
            ),
            f"instances generated from instance_seed={cfg['instance_seed']}",
        )

    raw, source = _instances.raw_instances(cfg, benchmark=BENCHMARK, fallback=generated)
    instances = {}
    for inst_id in sorted(raw):
        values = np.asarray(raw[inst_id], dtype=np.float64)
        if values.shape != (2 * k,):
            raise ExperimentError(
                f"{BENCHMARK}: instance {inst_id} of {source} has {values.size} values, but "
                f"action_values {cfg['action_values']} has {k} dimension(s): need {2 * k} "
                f"(shifts then slopes)"
            )
        if not np.all(np.isfinite(values)) or np.any(np.abs(values) > _F32_MAX):
            raise ExperimentError(
                f"{BENCHMARK}: instance {inst_id} of {source} has values outside float32: {values.tolist()}"
            )
        values.setflags(write=False)
        instances[inst_id] = values
    return instances


class SigmoidEnv(_instances.InstanceSetEnv[np.ndarray, np.ndarray]):
    """Trace k sigmoids with discrete actions; see the module docstring for the dynamics.

    Configured, seeded and walked through its instance set as
    :class:`~shmbench.benchmarks._instances.InstanceSetEnv` describes, with ``config`` the
    overrides of :data:`DEFAULT_CONFIG` and ``instance_set`` mapping id -> a read-only
    float64 array ``[shifts..., slopes...]``.
    """

    benchmark = BENCHMARK
    _resolve_config = staticmethod(resolve_config)
    _load_instances = staticmethod(load_instances)

    def __init__(self, config: Mapping[str, Any] | None = None, render_mode: str | None = None) -> None:
        super().__init__(config, render_mode)
        self._cutoff: int = self.config["cutoff"]
        self._nvec = np.asarray(self.config["action_values"], dtype=np.int64)
        self._k = len(self._nvec)
        self._reward_low, self._reward_high = self.config["reward_range"]

        self.action_space = spaces.MultiDiscrete(self._nvec)
        low = np.concatenate(([0.0], np.full(2 * self._k, -_F32_MAX), np.full(self._k, -1.0))).astype(np.float32)
        high = np.concatenate(([self._cutoff], np.full(2 * self._k, _F32_MAX), self._nvec - 1)).astype(np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)

        self._shifts = np.zeros(self._k)
        self._slopes = np.zeros(self._k)
        self._t = 0
        self._last_action: np.ndarray | None = None
        self._running = False

    # -- episode ------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode on the next instance.

        Args:
            seed: reseeds the env's Generator and rewinds the instance order.
            options: ``{"instance_id": id}`` to pick an instance of the set, or
                ``{"instance": [shifts..., slopes...]}`` to run an ad-hoc one.
        """
        instance = self._next_instance(seed, options)
        self._shifts = instance[: self._k].copy()
        self._slopes = instance[self._k :].copy()
        self._t = 0
        self._last_action = None
        self._running = True
        return self._observation(), {}

    def _adhoc_instance(self, values: Any) -> np.ndarray:
        instance = np.asarray(values, dtype=np.float64)
        if instance.shape != (2 * self._k,) or not np.all(np.isfinite(instance)) or np.any(np.abs(instance) > _F32_MAX):
            raise ValueError(f"{BENCHMARK}: options['instance'] must be {2 * self._k} finite float32 values")
        return instance

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Advance ``t`` by one and reward how well ``action`` traces the sigmoids at ``t``."""
        if not self._running:
            raise ResetNeeded(f"{BENCHMARK}: call reset() before step() (and after an episode ends)")
        act = np.asarray(action)
        if act.shape != (self._k,) or act.dtype.kind not in "iu" or np.any(act < 0) or np.any(act >= self._nvec):
            raise ValueError(f"{BENCHMARK}: action {action!r} is not in {self.action_space}")
        act = act.astype(np.int64)
        self._t += 1
        truncated = self._t >= self._cutoff
        self._last_action = act
        # exp(-(p * (t - s))) equals DACBench's exp(-p * (t - s)) bit for bit (IEEE negation is
        # exact), so seeded runs of both implementations give identical rewards.
        target = sigmoid(self._slopes * (self._t - self._shifts))
        value = act / (self._nvec - 1)
        reward = float(np.prod(1.0 - np.abs(target - value)))
        reward = max(self._reward_low, min(self._reward_high, reward))
        if truncated:
            self._running = False
        return self._observation(), reward, False, bool(truncated), {}

    def _observation(self) -> np.ndarray:
        obs = np.empty(1 + 3 * self._k, dtype=np.float32)
        obs[0] = self._cutoff - self._t
        obs[1 : 1 + 2 * self._k : 2] = self._shifts
        obs[2 : 2 + 2 * self._k : 2] = self._slopes
        obs[1 + 2 * self._k :] = -1 if self._last_action is None else self._last_action
        return obs
