"""Tests for shmbench.agents: DACBench's agent API on the shmbench benchmarks."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from shmbench.agents import RandomAgent, StaticAgent
from shmbench.benchmarks import LubyBenchmark, SigmoidBenchmark
from shmbench.benchmarks.luby import LubyEnv
from shmbench.benchmarks.sigmoid import SigmoidEnv


def run(agent, env, episodes=1):
    """DACBench's runner loop; returns the return of each episode."""
    returns = []
    for _ in range(episodes):
        state, _ = env.reset()
        reward, total = 0.0, 0.0
        while True:
            action = agent.act(state, reward)
            state, reward, terminated, truncated, _ = env.step(action)
            total += reward
            assert agent.train(state, reward) is None
            if terminated or truncated:
                assert agent.end_episode(state, reward) is None
                break
        returns.append(total)
    return returns


def actions_of(agent, n=30):
    return [np.asarray(agent.act(None, 0.0)).tolist() for _ in range(n)]


def test_random_agent_is_reproducible_from_its_seed():
    env = SigmoidEnv()
    a, b, c = RandomAgent(env, seed=1), RandomAgent(env, seed=1), RandomAgent(env, seed=2)
    first = actions_of(a)
    assert first == actions_of(b)
    assert first != actions_of(c)
    assert all(env.action_space.contains(np.array(x)) for x in first)


def test_random_agent_follows_a_seeded_env():
    a = RandomAgent(SigmoidEnv({"seed": 5}))
    b = RandomAgent(SigmoidEnv({"seed": 5}))
    c = RandomAgent(SigmoidEnv({"seed": 6}))
    assert a.seed == b.seed and a.seed != c.seed
    assert actions_of(a) == actions_of(b) != actions_of(c)
    # the agent's stream is not the one a space seeded with the env's own seed would give
    space = spaces.MultiDiscrete([5, 10], seed=5)
    assert actions_of(RandomAgent(SigmoidEnv({"seed": 5})), 10) != [space.sample().tolist() for _ in range(10)]


def test_random_agent_does_not_seed_an_unseeded_env():
    env = SigmoidEnv({"seed": None})
    agent = RandomAgent(env)
    assert agent.seed is None
    assert env._np_random is None  # still unseeded: the agent did not create its RNG


def test_random_agent_leaves_the_env_action_space_alone():
    env = SigmoidEnv()
    env.action_space.seed(123)
    before = env.action_space.np_random.bit_generator.state
    agent = RandomAgent(env, seed=0)
    actions_of(agent)
    assert env.action_space.np_random.bit_generator.state == before


def test_random_agent_returns_the_element_of_a_one_dim_box():
    env = gymnasium.make("MountainCarContinuous-v0")
    action = RandomAgent(env, seed=0).act(None, 0)
    assert np.ndim(action) == 0 and -1.0 <= action <= 1.0

    class TwoDimensional:
        action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    assert np.shape(RandomAgent(TwoDimensional(), seed=0).act(None, 0)) == (2,)


def test_random_agent_runs_full_episodes():
    env = LubyBenchmark().get_environment()
    returns = run(RandomAgent(env, seed=0), env, episodes=3)
    assert len(returns) == 3 and all(-8.0 <= r <= 0.0 for r in returns)


def test_static_agent_on_a_flat_sigmoid_earns_exactly_one_per_step():
    # slope 0: the sigmoid is 0.5 everywhere; action 1 of 3 is the value 0.5.
    bench = SigmoidBenchmark(config={"action_values": [3], "instance_set": [[0, 5.0, 0.0]]})
    env = bench.get_environment()
    agent = StaticAgent(env, np.array([1]))
    assert run(agent, env, episodes=2) == [10.0, 10.0]


def test_static_agent_on_luby_scores_the_matching_steps():
    env = LubyEnv()
    # goals of the first 8 steps are 0,0,1,0,0,1,2,0: action 0 is right 5 times
    assert run(StaticAgent(env, 0), env) == [-3.0]
    assert run(StaticAgent(env, 1), env) == [-6.0]


def test_static_agent_checks_and_protects_its_action():
    env = SigmoidEnv()
    with pytest.raises(ValueError):
        StaticAgent(env, np.array([5, 0]))
    with pytest.raises(ValueError):
        StaticAgent(LubyEnv(), 7)
    agent = StaticAgent(env, np.array([1, 2]))
    first = agent.act(None, 0)
    first[0] = 4
    assert agent.act(None, 0).tolist() == [1, 2]
