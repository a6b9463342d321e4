"""Benchmark workloads: the envs the suites step, the policies that drive them, and the
correctness checks every benchmark runs before it times anything.

Imported as the top-level module ``envs`` (bench/conftest.py puts bench/ on sys.path), so
that a server -- a plain process, a bwrap sandbox of the host root, or an image with
bench/ bound at /mnt -- can build the same envs from ``"bench_envs:BenchFrames84-v0"``.
Registered ids go through ``gymnasium.make`` on both sides, so the native env and the
served env carry the same wrappers (OrderEnforcing, PassiveEnvChecker, TimeLimit).

The frame envs model "cheap step, big observation": each step returns one of a small pool
of frames drawn from the env's seeded generator at a seeded reset, without copying it. So
the native step costs about a microsecond whatever the frame size, and what a transport
adds (copying the frame into shared memory, pickling it, JSON-encoding it) shows in full.
This module must keep working with the bookworm image's numpy 1.24 and gymnasium 1.4.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

__all__ = [
    "FrameEnv",
    "BusyCartPoleEnv",
    "Workload",
    "WORKLOADS",
    "VECTOR_WORKLOADS",
    "VectorWorkload",
    "cartpole_policy",
    "cartpole_batch_policy",
    "cycle_policy",
    "Driver",
    "VecDriver",
    "PoolDriver",
    "MixedBusyCartPoleEnv",
    "SWEEP_SIZES",
    "record",
    "record_vec",
    "native_trajectory",
    "warm_up",
    "assert_same",
]

#: the module name servers import (bench/ is on their PYTHONPATH)
MODULE = "bench_envs"


class FrameEnv(gymnasium.Env):
    """Observations are frames of ``shape``/``dtype`` from a seeded pool; steps are cheap.

    A seeded ``reset`` draws ``pool`` frames from the env's generator; every reset (seeded
    or not) draws a start offset, and step ``t`` with action ``a`` returns frame
    ``(offset + t + a) % pool`` -- a read-only view, never a copy -- with reward equal to
    that frame's index. Episodes end by truncation (the registered ``max_episode_steps``).
    """

    metadata = {"render_modes": []}

    def __init__(self, shape=(84, 84, 4), dtype="uint8", pool: int = 8) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        if self.dtype == np.uint8:
            self.observation_space = gymnasium.spaces.Box(0, 255, self.shape, np.uint8)
        else:
            self.observation_space = gymnasium.spaces.Box(0.0, 1.0, self.shape, self.dtype)
        self.action_space = gymnasium.spaces.Discrete(4)
        self._pool_size = pool
        self._pool: np.ndarray | None = None
        self._offset = 0
        self._t = 0

    def _draw_pool(self) -> np.ndarray:
        rng = self.np_random
        size = (self._pool_size, *self.shape)
        if self.dtype == np.uint8:
            pool = rng.integers(0, 256, size=size, dtype=np.uint8)
        else:
            pool = rng.random(size=size, dtype=self.dtype)
        pool.flags.writeable = False
        return pool

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or self._pool is None:
            self._pool = self._draw_pool()
        self._offset = int(self.np_random.integers(self._pool_size))
        self._t = 0
        return self._pool[self._offset], {}

    def step(self, action):
        self._t += 1
        index = (self._offset + self._t + int(action)) % self._pool_size
        return self._pool[index], float(index), False, False, {}


class InPlaceEnv(gymnasium.Env):
    """A large observation updated in place: each step rewrites one row of a float32
    ``shape`` array and returns that same array (a map, a canvas, a state vector). It can
    write into a buffer it is given (``set_observation_buffer``): under shmbench the slab,
    so no observation byte is copied on either side with ``copy=False``."""

    metadata = {"render_modes": []}

    def __init__(self, shape=(512, 512)) -> None:
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, tuple(shape), np.float32)
        self.action_space = gymnasium.spaces.Discrete(4)
        self.buf = np.zeros(tuple(shape), dtype=np.float32)
        self._t = 0

    def set_observation_buffer(self, buffer: np.ndarray) -> None:
        buffer[...] = self.buf
        self.buf = buffer

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.buf[...] = 0.0
        self._t = 0
        return self.buf, {}

    def step(self, action):
        self._t += 1
        row = self._t % self.buf.shape[0]
        self.buf[row] = (self._t * 4 + int(action)) % 1000 / 1000.0
        return self.buf, float(row), False, False, {}


class BusyCartPoleEnv(CartPoleEnv):
    """CartPole whose every step first computes for ``step_ms`` milliseconds (a busy loop,
    not a sleep: it models an env that needs a CPU, so parallel speed-ups are bounded by
    the cores, as they would be for a real simulator)."""

    def __init__(self, step_ms: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step_s = step_ms / 1000.0

    def step(self, action):
        end = time.perf_counter() + self.step_s
        while time.perf_counter() < end:
            pass
        return super().step(action)


class MixedBusyCartPoleEnv(CartPoleEnv):
    """CartPole whose steps compute for 0.1 to 2 ms, log-uniformly at random: envs whose
    step times vary (DAC instances of different sizes), where a synchronous vector step
    waits for its slowest env. The durations come from a generator of their own, never the
    env's, so trajectories stay seeded; their spread, not their sequence, is the workload."""

    def __init__(self, lo_ms: float = 0.1, hi_ms: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._durations = np.random.default_rng()
        self._log_range = (np.log(lo_ms / 1000.0), np.log(hi_ms / 1000.0))

    def step(self, action):
        end = time.perf_counter() + float(np.exp(self._durations.uniform(*self._log_range)))
        while time.perf_counter() < end:
            pass
        return super().step(action)


def _register() -> None:
    # idempotent: gymnasium warns when an id is registered twice, and the suite turns
    # warnings into errors
    specs = {
        "BenchFrames84-v0": dict(
            entry_point=f"{MODULE}:FrameEnv",
            max_episode_steps=1000,
            kwargs={"shape": (84, 84, 4), "dtype": "uint8", "pool": 8},
        ),
        "BenchFloat1MiB-v0": dict(
            entry_point=f"{MODULE}:FrameEnv",
            max_episode_steps=1000,
            kwargs={"shape": (512, 512), "dtype": "float32", "pool": 4},
        ),
        # in-place by design: gymnasium's checker would warn that reset and step share an object
        "BenchInPlace1MiB-v0": dict(
            entry_point=f"{MODULE}:InPlaceEnv",
            max_episode_steps=1000,
            disable_env_checker=True,
            kwargs={"shape": (512, 512)},
        ),
        "BenchBusyCartPole-v0": dict(
            entry_point=f"{MODULE}:BusyCartPoleEnv",
            max_episode_steps=500,
            reward_threshold=475.0,
            kwargs={"step_ms": 1.0},
        ),
        "BenchMixedCartPole-v0": dict(
            entry_point=f"{MODULE}:MixedBusyCartPoleEnv",
            max_episode_steps=500,
            reward_threshold=475.0,
            kwargs={"lo_ms": 0.1, "hi_ms": 2.0},
        ),
    }
    for env_id, kwargs in specs.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(env_id, **kwargs)


_register()


# ------------------------------------------------------------------------------ policies


def cartpole_policy(obs) -> int:
    """A proportional controller that keeps the pole up for the full 500 steps, so resets
    are rare and the benchmark times steps, not resets (a plain int: the fast action path)."""
    return 1 if obs[2] + 0.5 * obs[3] > 0 else 0


def cartpole_batch_policy(obs) -> np.ndarray:
    return (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)


class cycle_policy:
    """Actions 0, 1, 2, 3, 0, ... whatever the observation (the frame envs ignore it)."""

    def __init__(self, n: int = 4) -> None:
        self.n = n
        self.t = 0

    def __call__(self, obs) -> int:
        self.t += 1
        return self.t % self.n


@dataclass(frozen=True)
class Workload:
    """One single-env workload: what to make, how to drive it, how much data a step moves."""

    name: str
    env_id: str  # "bench_envs:..." ids make a server import this module first
    policy: Callable[[], Callable[[Any], Any]]  # a factory: policies may hold state
    payload_bytes: int
    check_steps: int


WORKLOADS = {
    w.name: w
    for w in (
        Workload("cartpole", "CartPole-v1", lambda: cartpole_policy, 4 * 4, 300),
        Workload("frames-84x84x4-u8", f"{MODULE}:BenchFrames84-v0", cycle_policy, 84 * 84 * 4, 60),
        Workload("obs-1MiB-f32", f"{MODULE}:BenchFloat1MiB-v0", cycle_policy, 512 * 512 * 4, 20),
        Workload("obs-1MiB-f32-inplace", f"{MODULE}:BenchInPlace1MiB-v0", cycle_policy, 512 * 512 * 4, 20),
    )
}


@dataclass(frozen=True)
class VectorWorkload:
    name: str
    env_id: str
    num_envs: int
    payload_bytes: int  # per env step
    check_steps: int


#: the scaling sweep's sizes (issue 13): cheap envs and 1 ms envs at each
SWEEP_SIZES = (1, 2, 4, 8, 16, 32)

VECTOR_WORKLOADS = {
    w.name: w
    for w in (
        *(VectorWorkload(f"vec{n}-cartpole", "CartPole-v1", n, 16, 600) for n in SWEEP_SIZES),
        *(VectorWorkload(f"vec{n}-busy1ms", f"{MODULE}:BenchBusyCartPole-v0", n, 16, 15) for n in SWEEP_SIZES),
        VectorWorkload("vec8-mixed", f"{MODULE}:BenchMixedCartPole-v0", 8, 16, 15),
    )
}


# ------------------------------------------------------------------------------- drivers


class Driver:
    """Steps a single env with a policy, resetting when an episode ends (the reset is part
    of the timed work, as in any training loop; the policies keep episodes long)."""

    def __init__(self, env, policy, seed: int = 0) -> None:
        self.env = env
        self.policy = policy
        self.obs, _ = env.reset(seed=seed)
        self.steps = 0

    def step(self) -> None:
        obs, _, terminated, truncated, _ = self.env.step(self.policy(self.obs))
        if terminated or truncated:
            obs, _ = self.env.reset()
        self.obs = obs
        self.steps += 1

    def run(self, n: int) -> None:
        for _ in range(n):
            self.step()


def warm_up(driver, steps: int, seconds: float) -> None:
    """Step until ``steps`` steps or ``seconds`` have passed (adaptive waits settle, caches
    warm; slow peers do not take minutes)."""
    deadline = time.perf_counter() + seconds
    for _ in range(steps):
        driver.step()
        if time.perf_counter() > deadline:
            break


class PoolDriver:
    """Drives an async pool (shmbench's ``batch_size=``, EnvPool's async mode): each round
    takes the batch that finished first and sends it its next actions -- ``batch_size``
    env steps a round, the training loop PufferLib's and EnvPool's users write.

    ``recv()`` returns ``(obs, env_ids)``; ``send(actions, env_ids)``; ``start()`` resets
    and leaves every env stepping or ready to be received; ``drain()`` receives what is
    still in flight (so that closing finds nothing pending)."""

    def __init__(self, start, send, recv, drain, policy=cartpole_batch_policy) -> None:
        self._send, self._recv, self._drain, self.policy = send, recv, drain, policy
        start()

    def step(self) -> None:
        obs, ids = self._recv()
        self._send(self.policy(obs), ids)

    def run(self, n: int) -> None:
        for _ in range(n):
            self.step()

    def drain(self) -> None:
        self._drain()


class VecDriver:
    """Steps a VectorEnv with a batch policy (the vector env resets finished envs itself)."""

    def __init__(self, envs, policy=cartpole_batch_policy, seed: int | None = 0) -> None:
        self.envs = envs
        self.policy = policy
        self.obs, _ = envs.reset(seed=seed)  # None: EnvPool, seeded when made

    def step(self) -> None:
        self.obs = self.envs.step(self.policy(self.obs))[0]

    def run(self, n: int) -> None:
        for _ in range(n):
            self.step()


# --------------------------------------------------------------------------- correctness


def record(env, policy, steps: int, seed: int = 0) -> list[tuple]:
    """The first ``steps`` transitions under ``policy`` from ``reset(seed=seed)``, as
    owned copies (a zero-copy view would change under us)."""
    obs, _ = env.reset(seed=seed)
    out = [(np.array(obs, copy=True), None, None, None)]
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(policy(obs))
        out.append((np.array(obs, copy=True), reward, terminated, truncated))
        if terminated or truncated:
            obs, _ = env.reset()
            out.append((np.array(obs, copy=True), None, None, None))
    return out


_native: dict[str, list] = {}


def native_trajectory(workload: Workload) -> list[tuple]:
    """The native env's first ``check_steps`` transitions under the workload's policy
    (recorded once per process)."""
    if workload.name not in _native:
        env = gymnasium.make(workload.env_id)
        try:
            _native[workload.name] = record(env, workload.policy(), workload.check_steps)
        finally:
            env.close()
    return _native[workload.name]


def record_vec(envs, steps: int, seed: int = 0, policy=cartpole_batch_policy) -> list[tuple]:
    obs, _ = envs.reset(seed=seed)
    out = [(np.array(obs, copy=True), None, None, None)]
    for _ in range(steps):
        obs, rewards, terminations, truncations, _ = envs.step(policy(obs))
        out.append(tuple(np.array(x, copy=True) for x in (obs, rewards, terminations, truncations)))
    return out


def assert_same(
    got: list[tuple],
    want: list[tuple],
    *,
    strict_dtype: bool = True,
    rtol: float = 0.0,
    atol: float = 0.0,
    who: str = "",
) -> None:
    """Fails unless two recorded trajectories agree step for step: values always (exactly,
    or for floats within ``rtol``/``atol`` when given), array dtypes and scalar types too
    unless ``strict_dtype`` is off (for peers whose wire format widens them)."""
    if len(got) != len(want):
        raise AssertionError(f"{who}: {len(got)} records, native has {len(want)}")

    def equal(a, b) -> bool:
        if (rtol or atol) and np.issubdtype(np.asarray(b).dtype, np.floating):
            return bool(np.allclose(a, b, rtol=rtol, atol=atol))
        return bool(np.array_equal(a, b))

    for i, (g, w) in enumerate(zip(got, want)):
        for field, a, b in zip(("obs", "reward", "terminated", "truncated"), g, w):
            if isinstance(b, np.ndarray) or isinstance(a, np.ndarray):
                a, b = np.asarray(a), np.asarray(b)
                if strict_dtype and a.dtype != b.dtype:
                    raise AssertionError(f"{who}: record {i} {field} dtype {a.dtype}, native {b.dtype}")
                if a.shape != b.shape or not equal(a, b):
                    raise AssertionError(f"{who}: record {i} {field} differs from the native env's: {a!r} vs {b!r}")
            elif (not equal(a, b) if isinstance(b, float) else a != b) or (strict_dtype and type(a) is not type(b)):
                raise AssertionError(
                    f"{who}: record {i} {field} is {a!r} ({type(a).__name__}), native {b!r} ({type(b).__name__})"
                )
