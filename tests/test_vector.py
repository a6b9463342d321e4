"""ShmVectorEnv against gymnasium's SyncVectorEnv: same seeds and actions, same results."""

from __future__ import annotations

import os
import signal
import time

import gymnasium
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from helpers import assert_same
from test_env import native, server_pid

import shmbench
from shmbench.errors import ChannelClosed, PeerDied, RemoteEnvError

VECTOR_ENVS = ["CartPole-v1", "envs:DictTupleEnv", "envs:WrongDtypeEnv", "envs:InfoEnv", "envs:TextEnv"]


def sync(env_id: str, n: int, mode: AutoresetMode, **kwargs) -> SyncVectorEnv:
    return SyncVectorEnv([lambda: native(env_id, **kwargs)] * n, autoreset_mode=mode)


def batch_actions(space: gymnasium.Space, n: int, seed: int) -> list:
    space.seed(seed)
    return [space.sample() for _ in range(n)]


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP], ids=["next", "same"])
@pytest.mark.parametrize("num_workers", [1, 3, None])  # None: self-tuned
@pytest.mark.parametrize("env_id", VECTOR_ENVS)
def test_vector_trajectory_equals_sync(env_id, num_workers, mode):
    n = 4
    ref = sync(env_id, n, mode)
    actions = batch_actions(ref.action_space, 400, seed=5)
    with shmbench.make_vec(env_id, n, num_workers=num_workers, runtime="process", autoreset_mode=mode) as envs:
        assert envs.metadata["autoreset_mode"] == mode
        assert envs.single_observation_space == ref.single_observation_space
        assert envs.observation_space == ref.observation_space
        assert envs.action_space == ref.action_space
        assert_same(envs.reset(seed=9), ref.reset(seed=9), "reset")
        dones = 0
        for t, a in enumerate(actions):
            got, want = envs.step(a), ref.step(a)
            assert_same(got, want, f"step {t}")
            dones += int(np.sum(want[2] | want[3]))
        assert dones > 0, "the trajectory must cross autoresets"
    ref.close()


def test_vector_through_bwrap_equals_sync():
    from conftest import runtime_kwargs

    kw = runtime_kwargs("bwrap")
    ref = sync("envs:InfoEnv", 4, AutoresetMode.SAME_STEP)
    actions = batch_actions(ref.action_space, 200, seed=1)
    with shmbench.make_vec("envs:InfoEnv", 4, num_workers=2, autoreset_mode=AutoresetMode.SAME_STEP, **kw) as envs:
        assert_same(envs.reset(seed=2), ref.reset(seed=2))
        for a in actions:
            assert_same(envs.step(a), ref.step(a))


def test_reset_mask_and_options():
    ref = sync("envs:InfoEnv", 4, AutoresetMode.NEXT_STEP)
    with shmbench.make_vec("envs:InfoEnv", 4, num_workers=2, runtime="process") as envs:
        assert_same(envs.reset(seed=1, options={"level": 3}), ref.reset(seed=1, options={"level": 3}))
        for a in batch_actions(ref.action_space, 5, seed=0):
            assert_same(envs.step(a), ref.step(a))
        mask = np.array([False, True, False, True])
        opts_a, opts_b = {"reset_mask": mask.copy(), "x": 1}, {"reset_mask": mask.copy(), "x": 1}
        assert_same(envs.reset(seed=[5, 6, 7, 8], options=opts_a), ref.reset(seed=[5, 6, 7, 8], options=opts_b))
        assert opts_a == opts_b == {"x": 1}, "reset_mask is popped from the caller's options, as SyncVectorEnv does"
        for a in batch_actions(ref.action_space, 30, seed=1):
            assert_same(envs.step(a), ref.step(a))
        with pytest.raises(ValueError):
            envs.reset(options={"reset_mask": np.zeros(4, dtype=np.bool_)})
        with pytest.raises(TypeError):
            envs.reset(options={"reset_mask": [True] * 4})
    ref.close()


def test_step_async_and_wait_let_the_host_work_meanwhile():
    with shmbench.make_vec("envs:SlowEnv", 4, num_workers=2, runtime="process", delay=0.05) as envs:
        envs.reset(seed=0)
        t0 = time.monotonic()
        envs.step_async(np.zeros(4, dtype=np.int64))
        sent = time.monotonic() - t0
        obs, *_ = envs.step_wait()
        total = time.monotonic() - t0
        assert sent < 0.02, "step_async must not wait for the envs"
        # two workers, two envs each, 50 ms per env: about 100 ms, not 200 ms
        assert 0.09 < total < 0.19, total
        assert obs.tolist() == [[1.0]] * 4
        envs.step_async(np.zeros(4, dtype=np.int64))
        with pytest.raises(gymnasium.error.AlreadyPendingCallError, match="pending call to `step`"):
            envs.step_async(np.zeros(4, dtype=np.int64))
        envs.step_wait()


def test_attributes_calls_and_render():
    ref = SyncVectorEnv([lambda: gymnasium.make("CartPole-v1", render_mode="rgb_array")] * 3)
    with shmbench.make_vec("CartPole-v1", 3, num_workers=2, runtime="process", render_mode="rgb_array") as envs:
        assert envs.get_attr("gravity") == ref.get_attr("gravity") == (9.8, 9.8, 9.8)
        envs.set_attr("gravity", [1.0, 2.0, 3.0])
        ref.set_attr("gravity", [1.0, 2.0, 3.0])
        assert envs.get_attr("gravity") == (1.0, 2.0, 3.0)
        envs.set_attr("length", 0.7)
        ref.set_attr("length", 0.7)
        assert envs.call("length") == (0.7, 0.7, 0.7)
        assert_same(envs.reset(seed=4), ref.reset(seed=4))
        for a in batch_actions(ref.action_space, 20, seed=3):
            assert_same(envs.step(a), ref.step(a))
        assert_same(envs.render(), ref.render())
        assert envs.np_random_seed == ref.np_random_seed
        with pytest.raises(ValueError):
            envs.set_attr("gravity", [1.0])
    ref.close()


def test_remote_error_in_one_env_and_worker_death():
    with shmbench.make_vec("envs:FailingEnv", 4, num_workers=2, runtime="process") as envs:
        envs.reset(seed=0)
        with pytest.raises(RemoteEnvError, match="action 0 is not allowed"):
            envs.step(np.array([1, 1, 0, 1]))
        obs, *_ = envs.step(np.array([1, 1, 1, 1]))  # all workers answered: still in step
        assert obs.shape == (4, 2)
        os.kill(server_pid_of(envs, 1), signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(PeerDied, match="worker 1"):
            envs.step(np.array([1, 1, 1, 1]))
        assert time.monotonic() - t0 < 1.5
    with pytest.raises(ChannelClosed):
        envs.step(np.array([1, 1, 1, 1]))


def server_pid_of(envs, index: int) -> int:
    class One:
        _worker = envs._workers[index]

    return server_pid(One)


def test_close_is_idempotent():
    envs = shmbench.make_vec("CartPole-v1", 2, runtime="process")
    path = envs._owned.session.path
    envs.close()
    envs.close()
    assert envs.closed and not path.exists()


def test_argument_errors():
    with pytest.raises(ValueError):
        shmbench.make_vec("CartPole-v1", 2, num_workers=3, runtime="process")
    with pytest.raises(ValueError):
        shmbench.make_vec("CartPole-v1", 0, runtime="process")
