"""Indistinguishable from local: each detail where a proxy could differ from the local env,
checked side by side with the native env (or SyncVectorEnv / AsyncVectorEnv).

The envs are in tests/fidelity_envs.py; every one runs for real in a server (the process
runtime: what is compared is the proxy, not the sandbox).
"""

from __future__ import annotations

import copy
import warnings

import gymnasium
import numpy as np
import pytest
from fidelity_envs import NoisyEnv, SeededSpaceEnv, SlowCall, ZooEnv
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv
from gymnasium.wrappers import StickyAction
from helpers import assert_same
from space_zoo import EVERY_SPACE, assert_same_space

import shmbench
from shmbench.errors import RemoteEnvError

P = {"runtime": "process"}


# ------------------------------------------------------------------------------------------
# 1. every space, every parameter, through make and make_vec
# ------------------------------------------------------------------------------------------

CASES = [(name, "discrete-int32") for name in EVERY_SPACE] + [("discrete-negative", name) for name in EVERY_SPACE]


def _ids(case):
    return f"obs={case[0]}|act={case[1]}"


# a Box of shape () samples numpy scalars, which Box.contains warns about -- natively too
CASTING = "ignore:.*Casting input x to numpy array:UserWarning"


@pytest.mark.filterwarnings(CASTING)
@pytest.mark.parametrize("obs, act", CASES, ids=[_ids(c) for c in CASES])
def test_every_space_crosses_make_exactly(obs, act):
    native = ZooEnv(obs, act)
    with shmbench.make("fidelity_envs:ZooEnv", obs=obs, act=act, **P) as env:
        assert_same_space(env.observation_space, native.observation_space)
        assert_same_space(env.action_space, native.action_space)
        assert_same(env.reset(seed=3), native.reset(seed=3))
        env.action_space.seed(9)
        native.action_space.seed(9)
        for _ in range(4):
            a, b = env.action_space.sample(), native.action_space.sample()
            assert_same(a, b)
            assert_same(env.step(a), native.step(b))


@pytest.mark.filterwarnings(CASTING)
@pytest.mark.parametrize("obs, act", CASES, ids=[_ids(c) for c in CASES])
def test_every_space_crosses_make_vec_exactly(obs, act):
    sync = SyncVectorEnv([lambda: ZooEnv(obs, act)] * 2)
    with shmbench.make_vec("fidelity_envs:ZooEnv", 2, num_workers=2, obs=obs, act=act, **P) as envs:
        assert_same_space(envs.single_observation_space, sync.single_observation_space)
        assert_same_space(envs.single_action_space, sync.single_action_space)
        assert envs.observation_space == sync.observation_space and envs.action_space == sync.action_space
        assert_same(envs.reset(seed=5), sync.reset(seed=5))
        envs.action_space.seed(11)
        sync.action_space.seed(11)
        for _ in range(3):
            a, b = envs.action_space.sample(), sync.action_space.sample()
            assert_same(a, b)
            assert_same(envs.step(a), sync.step(b))
    sync.close()


# ------------------------------------------------------------------------------------------
# 2, 3. live generators; seeded spaces
# ------------------------------------------------------------------------------------------


def test_np_random_is_live_and_the_env_sees_host_draws():
    native = NoisyEnv()
    with shmbench.make("fidelity_envs:NoisyEnv", **P) as env:
        assert_same(env.reset(seed=1), native.reset(seed=1))
        draws = [env.np_random.uniform() for _ in range(3)]
        assert draws == [native.np_random.uniform() for _ in range(3)] and len(set(draws)) == 3
        assert_same(env.step(2), native.step(2))  # the env draws after ours
        assert env.np_random.integers(1000) == native.np_random.integers(1000)
        rng = env.np_random
        assert rng is env.np_random  # one object, read after read
        assert env.np_random_seed == native.np_random_seed == 1
        env.np_random = np.random.default_rng(77)
        native.np_random = np.random.default_rng(77)
        assert env.np_random_seed == native.np_random_seed == -1
        assert_same(env.step(0), native.step(0))  # the env draws from the new one
        assert env.get_wrapper_attr("np_random").uniform() == native.get_wrapper_attr("np_random").uniform()
        assert_same(env.step(1), native.step(1))


def test_sticky_action_matches_native_bit_for_bit():
    native = StickyAction(NoisyEnv(), repeat_action_probability=0.25)
    remote = StickyAction(shmbench.make("fidelity_envs:NoisyEnv", **P), repeat_action_probability=0.25)
    try:
        actions = np.random.default_rng(0).integers(3, size=300)
        assert_same(remote.reset(seed=0), native.reset(seed=0))
        for a in actions:
            out_r, out_n = remote.step(int(a)), native.step(int(a))
            assert_same(out_r, out_n)
            if out_n[2] or out_n[3]:
                assert_same(remote.reset(), native.reset())  # unseeded: the env's stream
    finally:
        remote.close()


def test_a_space_the_env_seeded_samples_as_natively():
    native = SeededSpaceEnv()
    with shmbench.make("fidelity_envs:SeededSpaceEnv", **P) as env:
        for _ in range(5):
            assert_same(env.action_space.sample(), native.action_space.sample())
    sync = SyncVectorEnv([SeededSpaceEnv] * 3)
    with shmbench.make_vec("fidelity_envs:SeededSpaceEnv", 3, **P) as envs:
        for _ in range(5):
            assert_same(envs.action_space.sample(), sync.action_space.sample())
            assert_same(envs.single_action_space.sample(), sync.single_action_space.sample())


def test_vector_np_random_is_the_tuple_of_live_generators():
    sync = SyncVectorEnv([NoisyEnv] * 3)
    with shmbench.make_vec("fidelity_envs:NoisyEnv", 3, num_workers=2, **P) as envs:
        assert_same(envs.reset(seed=4), sync.reset(seed=4))
        gens, ref = envs.np_random, sync.np_random
        assert type(gens) is tuple and all(isinstance(g, np.random.Generator) for g in gens)
        assert [g.uniform() for g in gens] == [g.uniform() for g in ref]
        assert_same(envs.step(np.array([0, 1, 2])), sync.step(np.array([0, 1, 2])))
        assert [g.uniform() for g in envs.get_attr("np_random")] == [g.uniform() for g in sync.get_attr("np_random")]
        assert envs.np_random_seed == sync.np_random_seed == (4, 5, 6)
        assert_same(envs.step(np.array([2, 2, 2])), sync.step(np.array([2, 2, 2])))
    sync.close()


# ------------------------------------------------------------------------------------------
# 5. the vector attribute API of SyncVectorEnv
# ------------------------------------------------------------------------------------------


def test_vector_get_attr_call_and_render_answer_as_sync_vector_env():
    make = lambda: gymnasium.make("CartPole-v1", render_mode="rgb_array")  # noqa: E731
    sync = SyncVectorEnv([make] * 2)
    with shmbench.make_vec("CartPole-v1", 2, render_mode="rgb_array", **P) as envs:
        envs.reset(seed=0)
        sync.reset(seed=0)
        assert_same(envs.get_attr("render"), sync.get_attr("render"))  # called, as Sync calls it
        assert_same(envs.render(), sync.render())
        assert_same(envs.call("gravity"), sync.call("gravity"))
        envs.set_attr("gravity", [1.0, 2.0])
        sync.set_attr("gravity", [1.0, 2.0])
        assert_same(envs.get_attr("gravity"), sync.get_attr("gravity"))
    sync.close()


# ------------------------------------------------------------------------------------------
# 6. exceptions and warnings
# ------------------------------------------------------------------------------------------


def test_remote_exceptions_are_the_native_types_too():
    with shmbench.make("fidelity_envs:PickyEnv", **P) as env:
        env.reset(seed=0)
        with pytest.raises(ValueError, match="action 1 is not allowed") as info:
            env.step(1)
        assert isinstance(info.value, RemoteEnvError) and "fidelity_envs.py" in info.value.remote_traceback
        with pytest.raises(KeyError):
            env.step(2)
        env.step(0)  # still serving
    with pytest.raises(gymnasium.error.NameNotFound) as info:
        shmbench.make("NoSuchEnv-v0", **P)
    assert isinstance(info.value, RemoteEnvError) and isinstance(info.value, gymnasium.error.Error)
    with pytest.raises(gymnasium.error.VersionNotFound):
        shmbench.make("CartPole-v99", **P)


def test_remote_warnings_reach_the_host_with_their_category():
    with shmbench.make("fidelity_envs:PickyEnv", **P) as env:
        env.reset(seed=0)
        with (
            pytest.warns(DeprecationWarning, match="action 3 is deprecated"),
            pytest.warns(UserWarning, match="careful with action 3"),
        ):
            env.step(3)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("default")  # the default action: once per location
            env.step(3)
            env.step(3)
        assert [str(w.message) for w in seen if w.category is UserWarning] == ["careful with action 3"]


def test_a_deprecated_id_warns_on_the_host_as_natively():
    with pytest.warns(DeprecationWarning, match="CartPole-v0 is out of date") as native:
        gymnasium.make("CartPole-v0").close()
    with pytest.warns(DeprecationWarning, match="CartPole-v0 is out of date") as remote:
        shmbench.make("CartPole-v0", **P).close()
    first = lambda rec: next(w for w in rec if "out of date" in str(w.message))  # noqa: E731
    assert str(first(remote).message) == str(first(native).message)
    assert first(remote).filename == first(native).filename and first(remote).lineno == first(native).lineno


# ------------------------------------------------------------------------------------------
# 7, 8. attributes are forwarded; env keywords with shmbench's names
# ------------------------------------------------------------------------------------------


def test_attribute_reads_reach_the_remote_env():
    native = gymnasium.make("CartPole-v1")
    with shmbench.make("CartPole-v1", **P) as env:
        env.reset(seed=2)
        native.reset(seed=2)
        env.step(1)
        native.step(1)
        assert_same(env.unwrapped.state, native.unwrapped.state)
        assert env.unwrapped.gravity == native.unwrapped.gravity
        assert env.get_wrapper_attr("x_threshold") == native.get_wrapper_attr("x_threshold")
        env.set_wrapper_attr("gravity", 3.0)
        assert env.unwrapped.gravity == 3.0
        with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
            _ = env.unwrapped.no_such_thing
        assert not hasattr(env, "no_such_thing")


def test_env_kwargs_reach_the_env_whatever_their_names():
    kw = {"timeout": 5, "copy": "yes", "image": "mine", "wait": 1}
    with shmbench.make("fidelity_envs:PickyEnv", env_kwargs=kw, **P) as env:
        assert env.unwrapped.got == kw
    with shmbench.make_vec("fidelity_envs:PickyEnv", 2, env_kwargs=kw, **P) as envs:
        assert envs.get_attr("got") == (kw, kw)


# ------------------------------------------------------------------------------------------
# 9. gymnasium's factories and modes
# ------------------------------------------------------------------------------------------


def test_gymnasium_make_and_make_vec_reach_shmbench_through_register():
    shmbench.register("shmbench-test/Remote-CartPole-v1", "CartPole-v1", runtime="process")
    env = gymnasium.make("shmbench-test/Remote-CartPole-v1")
    try:
        assert type(env) is shmbench.RemoteEnvironmentClient
        assert_same(env.reset(seed=0), gymnasium.make("CartPole-v1").reset(seed=0))
    finally:
        env.close()
    envs = gymnasium.make_vec("shmbench-test/Remote-CartPole-v1", 3, vectorization_mode="vector_entry_point")
    try:
        assert type(envs) is shmbench.ShmVectorEnv and envs.num_envs == 3
        ref = gymnasium.make_vec("CartPole-v1", 3, vectorization_mode="sync")
        assert_same(envs.reset(seed=1), ref.reset(seed=1))
        assert_same(envs.step(np.array([0, 1, 0])), ref.step(np.array([0, 1, 0])))
        ref.close()
    finally:
        envs.close()
    default = gymnasium.make_vec("shmbench-test/Remote-CartPole-v1", 2)  # the vector entry point by default
    default.close()
    assert type(default) is shmbench.ShmVectorEnv


def test_make_vec_takes_gymnasiums_modes_and_refuses_the_rest():
    with shmbench.make_vec("CartPole-v1", 2, vectorization_mode="sync", **P) as envs:
        assert len(envs._workers) == 1
    with shmbench.make_vec("CartPole-v1", 2, vectorization_mode="async", vector_kwargs={"copy": False}, **P) as envs:
        assert envs.copy is False
    with pytest.raises(TypeError, match=r"vector_kwargs\['context'\]"):
        shmbench.make_vec("CartPole-v1", 2, vector_kwargs={"context": "spawn"}, **P)
    with pytest.raises(ValueError, match="wrappers="):
        shmbench.make_vec("CartPole-v1", 2, wrappers=[lambda e: e], **P)
    with pytest.raises(ValueError, match="Invalid vectorization mode"):
        shmbench.make_vec("CartPole-v1", 2, vectorization_mode="threads", **P)


# ------------------------------------------------------------------------------------------
# 10. the async half of the API, and its misuse errors, as AsyncVectorEnv's
# ------------------------------------------------------------------------------------------


def _error(fn):
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("no error")


def test_async_calls_and_misuse_answer_as_async_vector_env():
    ref = AsyncVectorEnv([SlowCall] * 2)
    envs = shmbench.make_vec("fidelity_envs:SlowCall", 2, **P)
    try:
        for e in (envs, ref):
            e.reset_async(seed=0)
        assert_same(envs.reset_wait(), ref.reset_wait())
        for e in (envs, ref):
            e.step_async(np.array([0, 1]))
        assert_same(envs.step_wait(), ref.step_wait())
        for e in (envs, ref):
            e.call_async("count", plus=10)
        assert envs.call_wait() == ref.call_wait() == (11, 11)
        misuse = [
            lambda e: e.step_wait(),
            lambda e: e.reset_wait(),
            lambda e: e.call_wait(),
            lambda e: (e.step_async(np.array([0, 0])), e.reset_async()),
            lambda e: e.call_async("count"),
            lambda e: e.set_attr("counter", 3),
        ]
        for fn in misuse:
            mine, theirs = _error(lambda fn=fn: fn(envs)), _error(lambda fn=fn: fn(ref))
            assert isinstance(mine, type(theirs)), (mine, theirs)
            assert str(mine) == str(theirs)
        envs.step_wait()
        ref.step_wait()
    finally:
        envs.close()
        ref.close()
    for e in (envs, ref):
        with pytest.raises(gymnasium.error.ClosedEnvironmentError, match="after a call to `close\\(\\)`"):
            e.step_async(np.array([0, 0]))


def test_gymnasium_wrappers_see_the_spec_entry_points():
    with shmbench.make_vec("CartPole-v1", 2, **P) as envs:
        again = gymnasium.make_vec(copy.deepcopy(envs.spec), 2)
        try:
            assert type(again) is shmbench.ShmVectorEnv
        finally:
            again.close()


def test_check_env_sees_what_it_sees_natively():
    """gymnasium's env checker, on the proxy and on the env, raises the same warnings (its
    re-makes from env.spec included: made from the registered spec, as natively)."""
    from gymnasium.utils.env_checker import check_env

    def checked(env) -> list[tuple[str, str]]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            check_env(env, skip_render_check=True)
        env.close()
        return sorted({(w.category.__name__, str(w.message)) for w in seen})

    with pytest.warns(DeprecationWarning):
        native = gymnasium.make("CartPole-v0").unwrapped
        remote = shmbench.make("CartPole-v0", **P)
    assert checked(remote) == checked(native)
