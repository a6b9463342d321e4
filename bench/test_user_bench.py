"""The user's own env (and image): ``shmbench bench --env ID [--image IMG] [--runtime R]
[--num-envs N]`` runs only this suite, steered by the environment variables below.

Rows: the env stepped natively (when the host can build it: an env that needs its
container's packages cannot be, and then has no native row -- the report says so by its
absence and this suite says so in its skip reason), through the chosen runtime (and image),
and through the process runtime (no container: the container's own cost is the difference;
when the host can build the env). With ``--num-envs N`` also ``make_vec`` against
SyncVectorEnv. Actions are the action space's seeded samples, cycled; every shmbench row's
trajectory is first checked against the native one where there is one.
"""

from __future__ import annotations

import os

import gymnasium
import numpy as np
import pytest
from peers import label

ENV = os.environ.get("SHMBENCH_BENCH_ENV")
IMAGE = os.environ.get("SHMBENCH_BENCH_IMAGE") or None
RUNTIME = os.environ.get("SHMBENCH_BENCH_RUNTIME") or "auto"
NUM_ENVS = int(os.environ.get("SHMBENCH_BENCH_NUM_ENVS") or 0)
CHECK_STEPS = 200

if not ENV:
    pytest.skip("no user env (shmbench bench --env ID measures one)", allow_module_level=True)

pytestmark = pytest.mark.quick  # --quick keeps them: they are what was asked for


def _native():
    try:
        return gymnasium.make(ENV), None
    except Exception as exc:
        return None, " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def _actions(space: gymnasium.Space, n: int = 256) -> list:
    space.seed(0)
    return [space.sample() for _ in range(n)]


def _record(env, actions: list) -> list:
    out = [env.reset(seed=0)[0]]
    for a in actions[:CHECK_STEPS]:
        obs, reward, terminated, truncated, _ = env.step(a)
        out.append((np.array(obs, copy=True), float(reward), bool(terminated), bool(truncated)))
        if terminated or truncated:
            out.append(env.reset()[0])
    return [np.array(x, copy=True) if not isinstance(x, tuple) else x for x in out]


class _Cycle:
    def __init__(self, env, actions: list) -> None:
        self.env, self.actions, self.i = env, actions, 0
        env.reset(seed=1)

    def step(self) -> None:
        a = self.actions[self.i % len(self.actions)]
        self.i += 1
        _, _, terminated, truncated, _ = self.env.step(a)
        if np.any(terminated) or np.any(truncated):
            if not hasattr(self.env, "num_envs"):  # a vector env resets its own
                self.env.reset()


CHOSEN = f"shmbench-{RUNTIME}" + ("-image" if IMAGE else "")


def _methods() -> list[str]:
    return ["native", CHOSEN] + (["shmbench-process"] if CHOSEN != "shmbench-process" else [])


def _open(method: str):
    import shmbench

    if method == CHOSEN:
        return shmbench.make(ENV, runtime=RUNTIME, image=IMAGE)
    if method == "native":
        env, why = _native()
        if env is None:
            pytest.skip(f"the host cannot build {ENV} ({why}): no native row")
        return env
    if method == "shmbench-process":
        if _native()[0] is None:
            pytest.skip(f"the host cannot build {ENV}: the process runtime would run it on the host")
        return shmbench.make(ENV, runtime="process")
    raise ValueError(method)


@pytest.mark.parametrize("method", _methods())
def test_user_env_step(benchmark, method: str) -> None:
    env = _open(method)
    try:
        actions = _actions(env.action_space)
        native, _ = _native()
        if native is not None and method != "native":
            try:
                want = _record(native, actions)
            finally:
                native.close()
            got = _record(env, actions)
            for i, (g, w) in enumerate(zip(got, want, strict=True)):
                same = all(np.array_equal(a, b) for a, b in zip(g, w)) if isinstance(g, tuple) else np.array_equal(g, w)
                assert same, f"{method}: record {i} differs from the native env's"
        driver = _Cycle(env, actions)
        for _ in range(50):
            driver.step()
        label(benchmark, workload=f"user-{ENV}", method=method, payload_bytes=0, native=method == "native", env_id=ENV)
        benchmark(driver.step)
    finally:
        env.close()


@pytest.mark.skipif(NUM_ENVS < 1, reason="no --num-envs")
@pytest.mark.parametrize("method", ["sync-vector", "shmbench-vector"])
def test_user_env_vector_step(benchmark, method: str) -> None:
    import shmbench

    if method == "sync-vector":
        if _native()[0] is None:
            pytest.skip(f"the host cannot build {ENV}: no SyncVectorEnv row")
        envs = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make(ENV)] * NUM_ENVS)
    else:
        envs = shmbench.make_vec(ENV, NUM_ENVS, runtime=RUNTIME, image=IMAGE)
    try:
        actions = _actions(envs.action_space, 64)
        driver = _Cycle(envs, actions)
        for _ in range(20):
            driver.step()
        label(
            benchmark,
            workload=f"user-vec{NUM_ENVS}-{ENV}",
            method=method,
            payload_bytes=0,
            env_steps_per_round=NUM_ENVS,
            native=method == "sync-vector",
            env_id=ENV,
        )
        benchmark(driver.step)
    finally:
        envs.close()
