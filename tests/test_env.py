"""RemoteEnvironmentClient through real servers: bit-exact trajectories, errors, lifecycle."""

from __future__ import annotations

import os
import signal
import time

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from helpers import assert_same

import shmbench
from shmbench.errors import (
    ChannelClosed,
    ChannelTimeout,
    PeerDied,
    RemoteEnvError,
    ShmbenchError,
)
from shmbench.transport.session import channel_base

TRAJECTORY_ENVS = [
    ("CartPole-v1", {}),
    ("Pendulum-v1", {}),
    ("MountainCarContinuous-v0", {}),
    ("FrozenLake-v1", {}),
    ("envs:DictTupleEnv", {}),
    ("envs:DiscreteDictEnv", {}),
    ("envs:WrongDtypeEnv", {}),
    ("envs:InfoEnv", {}),
    ("envs:TextEnv", {}),
    ("envs:StridedObsEnv", {}),
    ("envs:InPlaceEnv", {}),
]


def native(env_id: str, **kwargs) -> gymnasium.Env:
    if ":" in env_id and not env_id.startswith("gymnasium"):
        import importlib

        module, _, attr = env_id.partition(":")
        return getattr(importlib.import_module(module), attr)(**kwargs)
    return gymnasium.make(env_id, **kwargs)


def actions_for(space: gymnasium.Space, n: int, seed: int) -> list:
    """A fixed action list mixing the types users pass (np scalars, Python ints, lists)."""
    space.seed(seed)
    out = []
    for i in range(n):
        a = space.sample()
        if isinstance(space, gymnasium.spaces.Discrete) and i % 3 == 0:
            a = int(a)  # a Python int (travels in the slab, tagged)
        if isinstance(space, gymnasium.spaces.Box) and i % 5 == 0:
            a = a.tolist()  # a list: must reach the env as a list
        out.append(a)
    return out


def run_trajectory(env: gymnasium.Env, actions: list, seed: int) -> list:
    """Every reset and step result, snapshotted (an env may reuse its obs buffer)."""
    from copy import deepcopy

    trace = [deepcopy(env.reset(seed=seed))]
    episode = 0
    for a in actions:
        step = env.step(a)
        trace.append(deepcopy(step))
        if step[2] or step[3]:
            episode += 1
            trace.append(deepcopy(env.reset(seed=seed + episode if episode % 2 else None)))
    return trace


@pytest.mark.parametrize("env_id,kwargs", TRAJECTORY_ENVS, ids=[e for e, _ in TRAJECTORY_ENVS])
def test_trajectory_is_bit_exact(env_id, kwargs, runtime):
    ref = native(env_id, **kwargs)
    actions = actions_for(ref.action_space, 1200, seed=7)
    expected = run_trajectory(ref, actions, seed=3)
    with shmbench.make(env_id, **runtime, **kwargs) as env:
        got = run_trajectory(env, actions, seed=3)
        assert env.observation_space == ref.observation_space
        assert env.action_space == ref.action_space
    assert len(got) == len(expected) > 1200
    assert sum(1 for s in expected if len(s) == 2) >= 2, "the trajectory must cross an episode reset"
    for i, (g, e) in enumerate(zip(got, expected)):
        assert_same(g, e, f"step {i}")


def test_description_matches_native(runtime):
    ref = gymnasium.make("CartPole-v1", render_mode="rgb_array")
    with shmbench.make("CartPole-v1", render_mode="rgb_array", **runtime) as env:
        assert env.metadata == ref.metadata
        assert env.render_mode == "rgb_array"
        assert env.spec.id == ref.spec.id and env.spec.max_episode_steps == ref.spec.max_episode_steps
        assert env.spec.kwargs == ref.spec.kwargs
        assert env.unwrapped is env
        assert env.server_info["numpy"] == np.__version__
        env.reset(seed=5)
        ref.reset(seed=5)
        for a in (0, 1, 1, 0):
            env.step(a)
            ref.step(a)
        assert_same(env.render(), ref.render())


def test_copy_false_returns_views_valid_until_next_call():
    with shmbench.make("CartPole-v1", runtime="process", copy=False) as env:
        obs0, _ = env.reset(seed=0)
        kept = obs0.copy()
        obs1, *_ = env.step(0)
        assert np.shares_memory(obs0, obs1), "copy=False must hand out the slab itself"
        assert not np.array_equal(kept, obs1)
    with shmbench.make("CartPole-v1", runtime="process") as env:
        obs0, _ = env.reset(seed=0)
        obs1, *_ = env.step(0)
        assert not np.shares_memory(obs0, obs1)
        assert obs0.flags.owndata and obs0.flags.writeable


@pytest.mark.parametrize(
    "env_id", ["CartPole-v1", "Pendulum-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Acrobot-v1"]
)
def test_check_env_passes_on_classic_control(env_id):
    """check_env passes on the proxy, with exactly the warnings it gives the native env
    (CartPole's infinite bounds, for one)."""
    import warnings

    def checked(env) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env, skip_render_check=True)
        return sorted({str(w.message) for w in caught})

    expected = checked(gymnasium.make(env_id).unwrapped)
    with shmbench.make(env_id, runtime="process") as env:
        assert checked(env) == expected


def test_np_random_crosses_as_a_snapshot():
    ref = gymnasium.make("CartPole-v1")
    ref.reset(seed=11)
    with shmbench.make("CartPole-v1", runtime="process") as env:
        env.reset(seed=11)
        assert env.np_random_seed == ref.unwrapped.np_random_seed == 11
        assert env.np_random.bit_generator.state == ref.unwrapped.np_random.bit_generator.state
        # replacing the remote generator changes the remote env's next reset
        env.np_random = np.random.default_rng(99)
        ref.unwrapped.np_random = np.random.default_rng(99)
        assert_same(env.reset()[0], ref.reset()[0])


def test_call_get_and_set_attributes():
    with shmbench.make("CartPole-v1", runtime="process") as env:
        assert env.get_attr("gravity") == 9.8
        env.set_attr("gravity", 20.0)
        assert env.get_wrapper_attr("gravity") == 20.0
        assert env.call("gravity") == 20.0
        env.reset(seed=1)
        # render_mode None: gymnasium warns (in the server, re-emitted here) and returns None
        with pytest.warns(UserWarning, match="without specifying any render mode"):
            assert env.call("render") is None
        with pytest.raises(AttributeError) as info:  # the env's own AttributeError, also a RemoteEnvError
            env.get_attr("no_such_attribute")
        assert isinstance(info.value, RemoteEnvError) and info.value.type_name.endswith("AttributeError")


def test_remote_error_carries_the_traceback_and_the_server_keeps_serving(runtime):
    with shmbench.make("envs:FailingEnv", **runtime) as env:
        env.reset(seed=0)
        env.step(1)
        with pytest.raises(RemoteEnvError) as info:
            env.step(0)
        err = info.value
        assert isinstance(err, ShmbenchError) and isinstance(err, RuntimeError)
        assert err.type_name == "builtins.ValueError"
        assert "action 0 is not allowed at t=1" in err.remote_message
        assert "envs.py" in err.remote_traceback and "in step" in err.remote_traceback
        obs, reward, *_ = env.step(1)  # still serving, state intact
        assert reward == 1.0 and obs[0] == np.float32(0.02)
        env.reset()


def test_a_custom_space_is_named_or_crosses_as_a_pickle_when_allowed():
    with pytest.raises(TypeError, match="Parity.*allow_pickle=True") as info:  # SpaceNotSupported is a TypeError
        shmbench.make("envs:CustomSpaceEnv", runtime="process")
    assert isinstance(info.value, RemoteEnvError)
    with shmbench.make("envs:CustomSpaceEnv", runtime="process", allow_pickle=True) as env:
        assert type(env.observation_space).__name__ == "Parity"
        env.reset(seed=0)
        assert env.step(1)[0] == 1


def server_pid(env) -> int:
    """The host pid of the Python server process (inside bwrap: the sandbox's child)."""
    todo = [env._worker.process.server_pid()]
    while todo:
        pid = todo.pop()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"shmbench.server" in f.read() and not _is_bwrap(pid):
                return pid
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                todo += [int(c) for c in f.read().split()]
    raise AssertionError("no server process found")


def _is_bwrap(pid: int) -> bool:
    return os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("bwrap")


def test_peer_died_on_kill_within_a_second(runtime):
    env = shmbench.make("CartPole-v1", **runtime)
    try:
        env.reset(seed=0)
        pid = server_pid(env)
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(PeerDied) as info:
            env.step(0)
        assert time.monotonic() - t0 < 1.5
        # the process runtime's child is the server; bwrap reports its child's death
        assert info.value.exit_status in (-signal.SIGKILL, 128 + signal.SIGKILL, 1)
        assert "worker 0" in str(info.value)
        with pytest.raises(PeerDied):
            env.step(0)
    finally:
        env.close()
    assert not [p for p in os.listdir(channel_base()) if p.startswith(str(os.getpid()))]


def test_server_death_during_startup_reports_its_log():
    with pytest.raises(RemoteEnvError) as info:
        shmbench.make("no_such_module_xyz:Env", runtime="process")
    assert "ModuleNotFoundError" in info.value.type_name


def test_timeout_marks_the_env_broken():
    env = shmbench.make("envs:SlowEnv", runtime="process", timeout=0.3, delay=1.0)
    try:
        env.reset(seed=0)
        t0 = time.monotonic()
        with pytest.raises(ChannelTimeout) as info:
            env.step(1)
        assert 0.25 < time.monotonic() - t0 < 1.0
        assert isinstance(info.value, TimeoutError)
        # the late reply must never be read as the answer to the next request
        with pytest.raises(ChannelTimeout, match="broken"):
            env.step(1)
    finally:
        t0 = time.monotonic()
        env.close()
        assert time.monotonic() - t0 < 8


def test_close_is_idempotent_and_final():
    env = shmbench.make("CartPole-v1", runtime="process")
    env.reset(seed=0)
    session = env._owned.session.path
    assert session.exists()
    env.close()
    env.close()
    assert env.closed and not session.exists()
    with pytest.raises(ChannelClosed):
        env.step(0)


def test_unclosed_env_is_closed_by_the_garbage_collector():
    import gc

    env = shmbench.make("CartPole-v1", runtime="process")
    session = env._owned.session.path
    pid = env._worker.process.pid
    with pytest.warns(ResourceWarning):
        del env
        gc.collect()
    assert not session.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_posix_ipc_wakeups_are_selectable_and_bit_exact():
    ref = gymnasium.make("CartPole-v1")
    actions = actions_for(ref.action_space, 300, seed=4)
    expected = run_trajectory(ref, actions, seed=2)
    with shmbench.make("CartPole-v1", runtime="process", wakeup="posix_ipc") as env:
        from shmbench.transport.semaphore import SemaphoreChannel

        assert isinstance(env._worker.channel, SemaphoreChannel)
        assert_same(run_trajectory(env, actions, seed=2), expected)
    with pytest.raises(ValueError, match="/dev/shm"):
        shmbench.make("CartPole-v1", runtime="bwrap", wakeup="posix_ipc")


def test_envs_that_write_in_place_get_the_slab_and_nothing_is_copied():
    ref = native("envs:InPlaceEnv")
    with shmbench.make("envs:InPlaceEnv", runtime="process", copy=False) as env:
        assert env.get_attr("received_buffer") is True
        obs0, _ = env.reset(seed=1)
        obs1, *_ = env.step(3)
        assert obs0 is obs1 or np.shares_memory(obs0, obs1), "copy=False hands out the slab itself"
        ref.reset(seed=1)
        assert_same(obs1.copy(), ref.step(3)[0].copy())
