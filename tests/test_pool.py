"""The async pool (host/pool.py): ``send``/``recv`` by group of envs, against SyncVectorEnv
stepping the same envs on the same actions; misuse, death and timeouts on real servers."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from helpers import assert_same
from test_vector import server_pid_of, sync

import shmbench
from shmbench.errors import ChannelTimeout, PeerDied
from shmbench.host.vector_calls import AlreadyPendingCallError, NoAsyncCallError

N, K, T = 6, 2, 40  # envs, envs per group, steps per env


def per_env_reference(env_id: str, actions: np.ndarray, mode: AutoresetMode, **kwargs) -> list[list]:
    """What each env's t-th step gives when every env steps on its column of actions."""
    ref = sync(env_id, N, mode, **kwargs)
    ref.reset(seed=11)
    out: list[list] = [[] for _ in range(N)]
    for t in range(T):
        obs, rew, term, trunc, info = ref.step(actions[t])
        for i in range(N):
            out[i].append((obs[i], rew[i], term[i], trunc[i], info["t"][i] if "t" in info and info["_t"][i] else None))
    ref.close()
    return out


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP], ids=["next", "same"])
@pytest.mark.parametrize("copy", [True, False])
def test_per_env_trajectories_do_not_depend_on_the_order_of_arrival(mode, copy):
    rng = np.random.default_rng(3)
    actions = rng.integers(0, 3, size=(T, N))
    want = per_env_reference("envs:JitterEnv", actions, mode, max_delay=0.002)
    got: list[list] = [[] for _ in range(N)]
    arrivals = []
    with shmbench.make_vec(
        "envs:JitterEnv", N, batch_size=K, runtime="process", autoreset_mode=mode, copy=copy, max_delay=0.002
    ) as envs:
        assert len(envs._workers) == N // K and envs.batch_size == K
        envs.reset(seed=11)
        envs.send(actions[0])  # every env, in env order
        steps = [1] * (N // K)  # actions sent to each group so far
        while any(len(g) < T for g in got):
            obs, rew, term, trunc, info, ids = envs.recv()
            assert ids.tolist() == list(range(ids[0], ids[0] + K)) and obs.shape == (K, 3)
            assert np.shares_memory(obs, envs._observations) is (not copy)
            arrivals.append(int(ids[0]) // K)
            for j, i in enumerate(ids):  # copied: copy=False rows are valid until the next send
                got[i].append(
                    (obs[j].copy(), rew[j], term[j], trunc[j], info["t"][j] if "t" in info and info["_t"][j] else None)
                )
            g = int(ids[0]) // K
            if steps[g] < T:
                # the ids in reverse: actions go with their ids, whatever the order
                envs.send(actions[steps[g], ids][::-1], ids[::-1])
                steps[g] += 1
    for i in range(N):
        assert_same(got[i], want[i], f"env {i}")
    assert sorted(set(arrivals)) == list(range(N // K))


def test_the_fastest_group_is_returned_first():
    """Group 1 sleeps 0.2 s a step, group 0 not at all: recv() hands group 0 out first."""
    with shmbench.make_vec("envs:SlowEnv", 4, batch_size=2, runtime="process", delay=0.0) as envs:
        envs.reset(seed=0)
        envs.set_attr("delay", [0.0, 0.0, 0.2, 0.2])
        envs.send(np.zeros(4, np.int64))
        first = envs.recv()[-1]
        assert first.tolist() == [0, 1]
        envs.send(np.zeros(2, np.int64), first)
        assert envs.recv()[-1].tolist() == [0, 1]  # again: the slow group is still stepping
        assert envs.recv()[-1].tolist() == [2, 3]
        obs, *_ = envs.step(np.zeros(4, np.int64))  # nothing in flight: step() works
        assert obs.shape == (4, 1)


def test_codec_actions_and_observations_travel_by_group():
    """Text observations (never in the slab) and actions given as a list (not an array):
    both through the codec, group by group."""
    ref = sync("envs:TextEnv", 4, AutoresetMode.NEXT_STEP)
    with shmbench.make_vec("envs:TextEnv", 4, batch_size=2, runtime="process") as envs:
        assert_same(envs.reset(seed=1)[0], ref.reset(seed=1)[0])
        want = ref.step(np.array([1, 0, 1, 1]))
        envs.send([1, 1, 0, 1], [3, 2, 1, 0])  # ids in any order, actions with them
        seen = []
        for _ in range(2):
            obs, rew, _, trunc, _, ids = envs.recv()
            assert obs == tuple(want[0][i] for i in ids)
            assert rew.tolist() == want[1][ids].tolist() and trunc.tolist() == want[3][ids].tolist()
            seen += ids.tolist()
        assert sorted(seen) == [0, 1, 2, 3]
    ref.close()


def test_misuse_is_refused_clearly():
    with pytest.raises(ValueError, match="batch_size must divide"):
        shmbench.make_vec("CartPole-v1", 5, batch_size=2, runtime="process")
    with pytest.raises(ValueError, match="give one of them"):
        shmbench.make_vec("CartPole-v1", 4, batch_size=2, num_workers=1, runtime="process")
    with shmbench.make_vec("CartPole-v1", 4, batch_size=2, runtime="process") as envs:
        envs.reset(seed=0)
        with pytest.raises(NoAsyncCallError):
            envs.recv()
        with pytest.raises(ValueError, match="whole groups"):
            envs.send(np.zeros(1, np.int64), [1])
        with pytest.raises(ValueError, match="repeats"):
            envs.send(np.zeros(2, np.int64), [0, 0])
        with pytest.raises(ValueError, match="range"):
            envs.send(np.zeros(2, np.int64), [4, 5])
        with pytest.raises(ValueError, match="expected 2 actions"):
            envs.send(np.zeros(3, np.int64), [0, 1])
        envs.send(np.zeros(2, np.int64), [0, 1])
        assert envs.in_flight.tolist() == [0, 1]
        with pytest.raises(ValueError, match="still stepping"):
            envs.send(np.zeros(2, np.int64), [0, 1])
        # the ids exactly as recv() hands them out (send's shortcut for one whole group)
        # are refused the same way
        with pytest.raises(ValueError, match="still stepping"):
            envs.send(np.zeros(2, np.int64), np.arange(0, 2))
        with pytest.raises(ValueError, match="expected 2 actions"):
            envs.send(np.zeros(3, np.int64), np.arange(2, 4))
        with pytest.raises(AlreadyPendingCallError):
            envs.step(np.zeros(4, np.int64))
        with pytest.raises(AlreadyPendingCallError):
            envs.reset()
        assert envs.recv()[-1].tolist() == [0, 1]
        assert envs.in_flight.tolist() == []
        with pytest.raises(NoAsyncCallError):
            envs.recv()
        envs.reset()  # all back: everything works again


def test_a_killed_server_is_peer_died_from_recv():
    with shmbench.make_vec("envs:SlowEnv", 4, batch_size=2, runtime="process", delay=10.0) as envs:
        envs.reset(seed=0)
        envs.send(np.zeros(4, np.int64))
        os.kill(server_pid_of(envs, 1), signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(PeerDied):
            envs.recv(timeout=30)
        assert time.monotonic() - t0 < 5
        # the other group is still stepping, as AsyncVectorEnv would say on close
        with pytest.warns(UserWarning, match="pending call to `send`"):
            envs.close()


def test_recv_times_out_and_breaks_the_late_groups():
    with shmbench.make_vec("envs:SlowEnv", 4, batch_size=2, runtime="process", delay=5.0) as envs:
        envs.reset(seed=0)
        envs.send(np.zeros(4, np.int64))
        t0 = time.monotonic()
        with pytest.raises(ChannelTimeout, match="did not answer within 0.2 s"):
            envs.recv(timeout=0.2)
        assert time.monotonic() - t0 < 2
        with pytest.raises(NoAsyncCallError):  # the late groups are no longer in flight...
            envs.recv(timeout=0.2)
        with pytest.raises(ChannelTimeout, match="broken"):  # ...but broken
            envs.send(np.zeros(4, np.int64))
