"""shmbench.host.agent: a baseline agent in its own server behaves like a local one."""

from __future__ import annotations

import pytest
from run_helpers import (
    RUNTIMES,
)

from shmbench.agents import RandomAgent
from shmbench.benchmarks import SigmoidBenchmark
from shmbench.errors import ExperimentError
from shmbench.experiments.runner import (
    RemoteRunner,
)
from shmbench.host.agent import RemoteAgent
from shmbench.logs import read_log, strip_volatile

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_remote_random_agent_acts_like_a_local_one(runtime):
    env = SigmoidBenchmark().get_environment()
    local = RandomAgent(env, seed=5)
    with RemoteAgent({"type": "random", "seed": 5}, action_space=env.action_space, runtime=runtime) as remote:
        state, _ = env.reset(seed=0)
        for _ in range(30):
            a, b = remote.act(state, 0.5), local.act(state, 0.5)
            assert type(a) is type(b) and a.dtype == b.dtype and a.tolist() == b.tolist()
            assert remote.train(state, 0.5) is None and remote.end_episode(state, 0.5) is None
        other = RemoteAgent({"type": "random", "seed": 6}, action_space=env.action_space, runtime=runtime)
        with other:
            assert [other.act(state, 0).tolist() for _ in range(10)] != [
                remote.act(state, 0).tolist() for _ in range(10)
            ]
    assert remote.closed


def test_a_remote_agent_drives_a_runner_like_a_local_one(tmp_path):
    rewards = []
    for remote_agent in (False, True):
        with RemoteRunner(
            experiment_identifier="exp:0.01", runtime="process", log_dir=tmp_path / str(remote_agent)
        ) as runner:
            env = runner.get_environment()
            if remote_agent:
                with RemoteAgent(
                    {"type": "random", "seed": 3}, action_space=env.action_space, runtime="process"
                ) as agent:
                    result = runner.run(agent, 3)
                assert read_log(result.log_path).runs[0]["agent"]["spec"] == {"type": "random", "seed": 3}
            else:
                result = runner.run(RandomAgent(env, seed=3), 3)
            rewards.append((result.episode_rewards, strip_volatile(read_log(result.log_path).rows)))
    assert rewards[0] == rewards[1]


def test_remote_static_agent_and_refused_descriptions():
    env = SigmoidBenchmark().get_environment()
    with RemoteAgent({"type": "static", "action": [4, 9]}, action_space=env.action_space, runtime="process") as agent:
        action = agent.act(env.observation_space.sample(), 0.0)
        assert action.tolist() == [4, 9] and action.dtype == env.action_space.dtype
    with pytest.raises(ExperimentError, match="not in the action space"):
        RemoteAgent({"type": "static", "action": [5, 0]}, action_space=env.action_space, runtime="process")
    with pytest.raises(ExperimentError, match="unknown agent type"):
        RemoteAgent({"type": "shmbench.agents:RandomAgent"}, action_space=env.action_space, runtime="process")
    with pytest.raises(ExperimentError, match="action space"):
        RemoteAgent("random", runtime="process")
