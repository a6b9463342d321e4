"""Tests for shmbench.benchmarks: the Sigmoid and Luby envs, host objects, the factory, the
strict-JSON checks and the DACBench config filter (which needs no DACBench installed)."""

from __future__ import annotations

import json
import sys

import gymnasium
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env

import shmbench.benchmarks as benchmarks
from shmbench.benchmarks import (
    LubyBenchmark,
    SigmoidBenchmark,
    _config,
    luby,
    make_benchmark_env,
    sigmoid,
)
from shmbench.benchmarks.dacbench_ids import filter_dacbench_config, make_dacbench_env
from shmbench.benchmarks.luby import LubyEnv
from shmbench.benchmarks.sigmoid import SigmoidEnv
from shmbench.errors import ExperimentError

# 1 / (1 + e^4) and 1 - that, worked out independently of the code under test.
SIG_MINUS_4 = 0.01798620996209156


SIG_PLUS_4 = 0.9820137900379085


def run_episode(env, actions):
    obs, _ = env.reset()
    out = [obs]
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        out.append((obs, reward, terminated, truncated))
    return out


def one_dim(shift=5.0, slope=1.0, **extra):
    return SigmoidEnv({"action_values": [3], "instance_set": [[0, shift, slope]], **extra})


def test_sigmoid_reward_matches_the_paper_formula():
    env = one_dim()
    # t=1: sigmoid(1 * (1 - 5)) = 1/(1+e^4); action 0 means value 0, action 1 means 0.5.
    env.reset()
    assert env.step([0])[1] == pytest.approx(SIG_PLUS_4, abs=1e-15)
    env.reset()
    assert env.step([1])[1] == pytest.approx(1 - (0.5 - SIG_MINUS_4), abs=1e-15)
    # t=5 is the inflection point: sigmoid = 0.5 exactly, so action 1 is perfect.
    env.reset()
    rewards = [env.step([1])[1] for _ in range(5)]
    assert rewards[4] == 1.0
    env.reset()
    for _ in range(4):
        env.step([0])
    assert env.step([2])[1] == 0.5


def test_sigmoid_reward_is_the_product_over_dimensions():
    env = SigmoidEnv({"action_values": [3, 5], "instance_set": [[0, 5.0, 2.0, 1.0, 0.0]]})
    env.reset()
    # dim 1: 1 - 1/(1+e^4); dim 2 has slope 0, so its sigmoid is 0.5 and value 2/4 is exact.
    assert env.step([0, 2])[1] == pytest.approx(SIG_PLUS_4, abs=1e-15)
    env.reset()
    assert env.step([0, 4])[1] == pytest.approx(SIG_PLUS_4 * 0.5, abs=1e-15)


def test_sigmoid_reward_is_clipped_to_reward_range():
    env = one_dim(reward_range=[0.0, 0.5])
    env.reset()
    assert env.step([0])[1] == 0.5


def test_sigmoid_steep_slope_does_not_warn():
    env = one_dim(slope=1000.0)  # exp(4000) overflows; the sigmoid's limit 0 is used
    env.reset()
    assert env.step([0])[1] == 1.0


def test_sigmoid_observation_layout_and_truncation():
    env = SigmoidEnv({"action_values": [3, 5], "cutoff": 3, "instance_set": [[0, 1.5, 2.5, -0.25, 4.0]]})
    obs, info = env.reset()
    assert info == {}
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert obs.tolist() == [3, 1.5, -0.25, 2.5, 4.0, -1, -1]
    obs, _, terminated, truncated, _ = env.step(np.array([2, 4]))
    assert obs.tolist() == [2, 1.5, -0.25, 2.5, 4.0, 2, 4]
    assert (terminated, truncated) == (False, False)
    obs, _, terminated, truncated, _ = env.step([0, 1])
    assert obs.tolist() == [1, 1.5, -0.25, 2.5, 4.0, 0, 1] and not truncated
    obs, _, terminated, truncated, _ = env.step([1, 3])
    assert obs.tolist() == [0, 1.5, -0.25, 2.5, 4.0, 1, 3]
    assert terminated is False and truncated is True
    assert env.observation_space.contains(obs)
    with pytest.raises(ResetNeeded):
        env.step([0, 0])


def test_sigmoid_step_checks_order_and_actions():
    env = SigmoidEnv()
    with pytest.raises(ResetNeeded):
        env.step([0, 0])
    env.reset()
    for bad in ([5, 0], [0, 10], [-1, 0], [0], [0.0, 1.0], 3):
        with pytest.raises(ValueError):
            env.step(bad)


def test_sigmoid_round_robin_starts_at_first_instance_and_seed_rewinds():
    rows = [[7, 1.0, 1.0], [3, 2.0, 1.0], [5, 3.0, 1.0]]
    env = SigmoidEnv({"action_values": [2], "instance_set": rows})
    seen = []
    for _ in range(4):
        obs, _ = env.reset()
        seen.append((env.instance_id, float(obs[1])))
    assert seen == [(3, 2.0), (5, 3.0), (7, 1.0), (3, 2.0)]
    env.reset(seed=11)
    assert env.instance_id == 3
    obs, _ = env.reset(options={"instance_id": 7})
    assert env.instance_id == 7 and obs[1] == 1.0
    env.reset()
    assert env.instance_id == 5
    obs, _ = env.reset(options={"instance": [9.0, -2.0]})
    assert obs.tolist() == [10, 9.0, -2.0, -1]
    for bad in ({"instance_id": 4}, {"instance": [1.0]}, {"scheme": "random"}):
        with pytest.raises(ValueError):
            env.reset(options=bad)


def test_sigmoid_random_order_comes_from_the_seeded_generator():
    rows = [[0, 1.0, 1.0], [1, 2.0, 1.0], [2, 3.0, 1.0]]
    env = SigmoidEnv({"action_values": [2], "instance_set": rows, "instance_update_func": "random"})
    env.reset(seed=5)
    ids = [env.instance_id]
    for _ in range(9):
        env.reset()
        ids.append(env.instance_id)
    expected_rng = np.random.default_rng(5)
    assert ids == [int(expected_rng.integers(3)) for _ in range(10)]
    assert len(set(ids)) > 1


def test_sigmoid_config_seed_seeds_at_construction():
    a = SigmoidEnv({"seed": 42})
    b = SigmoidEnv({"seed": 42})
    assert a.np_random_seed == 42
    assert a.np_random.integers(1 << 30) == b.np_random.integers(1 << 30)


def test_generated_instances_depend_only_on_their_seed():
    a = sigmoid.generate_instances(20, 3, cutoff=10, slope_multiplier=2.0, seed=1)
    b = sigmoid.generate_instances(20, 3, cutoff=10, slope_multiplier=2.0, seed=1)
    c = sigmoid.generate_instances(20, 3, cutoff=10, slope_multiplier=2.0, seed=2)
    assert a == b and a != c
    assert all(len(v) == 6 for v in a.values())
    slopes = np.array([v[3:] for v in a.values()])
    assert np.all(np.abs(slopes) <= 2.0)
    env = SigmoidEnv({"action_values": [3, 3, 3], "instance_set_path": None, "n_instances": 20, "instance_seed": 1})
    assert sorted(env.instance_set) == list(range(20))
    assert env.instance_set[4].tolist() == a[4]


def test_shipped_instance_set_is_the_documented_generator_output():
    shipped = sigmoid.read_instance_csv(_config.DATA_DIR / "sigmoid_2d_default.csv")
    assert shipped == sigmoid.generate_instances(100, 2, cutoff=10, slope_multiplier=2.0, seed=0)
    env = SigmoidEnv()
    assert len(env.instance_set) == 100


def test_dacbench_format_csv_loads(tmp_path):
    # DACBench's sigmoid sets: no header, "id,shift_1,shift_2,slope_1,slope_2".
    headerless = tmp_path / "sigmoid_2D3M_train.csv"
    headerless.write_text("0,5.847,6.063,5.356,8.473\n1,5.699,0.1799,3.4218,-8.486\n")
    env = SigmoidEnv({"instance_set_path": str(headerless), "action_values": [3, 3]})
    obs, _ = env.reset()
    assert obs.tolist() == pytest.approx([10, 5.847, 5.356, 6.063, 8.473, -1, -1], rel=1e-6)
    assert env.instance_set[1].tolist() == [5.699, 0.1799, 3.4218, -8.486]
    with_header = tmp_path / "with_header.csv"
    with_header.write_text("ID,shift,slope\n\n2,1.0,-3.5\n")
    assert sigmoid.read_instance_csv(with_header) == {2: [1.0, -3.5]}


@pytest.mark.parametrize(
    "text, message",
    [
        ("0,1.0,oops\n", "non-numeric"),
        ("0,1.0,2.0\n0,3.0,4.0\n", "repeats"),
        ("ID,shift,slope\n", "no instances"),
    ],
)
def test_bad_sigmoid_csv_is_refused(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ExperimentError, match=message):
        SigmoidEnv({"instance_set_path": str(path), "action_values": [3]})


def test_sigmoid_instance_dimension_must_match_action_values(tmp_path):
    with pytest.raises(ExperimentError, match="need 4"):
        SigmoidEnv({"action_values": [3, 3], "instance_set": [[0, 1.0, 2.0]]})
    with pytest.raises(ExperimentError, match="float32"):
        SigmoidEnv({"action_values": [3], "instance_set": [[0, 1e39, 2.0]]})
    with pytest.raises(ExperimentError, match="cannot read"):
        SigmoidEnv({"instance_set_path": str(tmp_path / "missing.csv")})


@pytest.mark.parametrize(
    "config",
    [
        {"cuttoff": 10},
        {"cutoff": 0},
        {"cutoff": True},
        {"action_values": [1, 3]},
        {"action_values": []},
        {"slope_multiplier": float("nan")},
        {"reward_range": [1.0, 0.0]},
        {"instance_update_func": "shuffle"},
        {"seed": -1},
        {"seed": 1.5},
        {"instance_set": "rows"},
    ],
)
def test_sigmoid_config_is_checked(config):
    with pytest.raises(ExperimentError):
        SigmoidEnv(config)


def test_envs_refuse_render_modes():
    with pytest.raises(ExperimentError):
        SigmoidEnv(render_mode="human")
    with pytest.raises(ExperimentError):
        LubyEnv(render_mode="rgb_array")


@pytest.mark.parametrize("env_id", ["shmbench/Sigmoid-v0", "shmbench/Luby-v0"])
def test_gymnasium_env_checker_passes(env_id):
    env = gymnasium.make(env_id)
    check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id", ["shmbench/Sigmoid-v0", "shmbench/Luby-v0"])
def test_observations_have_the_declared_dtype_along_random_episodes(env_id):
    env = gymnasium.make(env_id)
    env.action_space.seed(0)
    for episode in range(3):
        obs, _ = env.reset(seed=episode)
        for _ in range(1000):
            assert obs.dtype == env.observation_space.dtype
            assert env.observation_space.contains(obs)
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            assert type(reward) is float and terminated is False
            if truncated:
                assert env.observation_space.contains(obs) and obs.dtype == env.observation_space.dtype
                break
        else:
            pytest.fail("the episode never ended")


def test_luby_sequence():
    assert [luby.luby(i) for i in range(1, 16)] == [1, 1, 2, 1, 1, 2, 4, 1, 1, 2, 1, 1, 2, 4, 8]
    assert luby.luby(127) == 64 and luby.luby(128) == 1
    assert luby.luby_log2_sequence(7).tolist() == [0, 0, 1, 0, 0, 1, 2]
    with pytest.raises(ValueError):
        luby.luby(0)


def test_luby_spaces_follow_cutoff_and_history():
    env = LubyEnv()
    assert env.action_space == gymnasium.spaces.Discrete(7)
    assert env.observation_space == gymnasium.spaces.Box(-1.0, 128.0, (6,), np.float32)
    small = LubyEnv({"cutoff": 16, "min_steps": 4, "hist_length": 2})
    assert small.action_space.n == 5 and small.observation_space.shape == (3,)


def test_luby_rewards_history_and_final_observation():
    env = LubyEnv()
    obs, _ = env.reset()
    assert obs.tolist() == [-1] * 6 and obs.dtype == np.float32
    goals = [0, 0, 1, 0, 0, 1, 2, 0]  # log2 of 1, 1, 2, 1, 1, 2, 4, 1
    expected_obs = [
        [0, -1, -1, -1, -1, 0],
        [0, 0, -1, -1, -1, 1],
        [0, 0, 1, -1, -1, 2],
        [0, 0, 1, 0, -1, 3],
        [0, 0, 1, 0, 0, 4],
        [0, 1, 0, 0, 1, 5],
        [1, 0, 0, 1, 2, 6],
        [1, 0, 0, 1, 2, 6],  # the final step returns the observation from before it (DACBench)
    ]
    for step, (goal, want) in enumerate(zip(goals, expected_obs), start=1):
        obs, reward, terminated, truncated, info = env.step(goal)
        assert (obs.tolist(), reward, terminated, truncated, info) == (want, 0.0, False, step == 8, {})
    with pytest.raises(ResetNeeded):
        env.step(0)
    env.reset()
    assert env.step(3)[1] == -1.0


def goals_of(instance, steps=8, **config):
    env = LubyEnv({"instance_set": [[0, *instance]], **config})
    env.reset()
    goals = []
    for _ in range(steps):
        goals.append(env.next_goal)
        reward = env.step(env.next_goal)[1]
        assert reward == 0.0
    return goals


@pytest.mark.parametrize(
    "instance, goals",
    [
        ((0, 0), [0, 0, 1, 0, 0, 1, 2, 0]),
        ((2, 0), [1, 0, 0, 1, 2, 0, 0, 1]),  # log2 luby(3..10)
        ((0, 0.5), [0, 1, 0, 1, 0, 0, 1, 0]),  # positions 2,3,4,6,8,9,10,12 (half to even)
        ((-5, 0), [0, 0, 0, 0, 0, 0, 0, 1]),  # positions clamp to 1, then 2, 3
    ],
)
def test_luby_start_and_sticky_shift(instance, goals):
    assert goals_of(instance) == goals


def test_luby_instance_must_stay_on_the_sequence():
    # cutoff 64 gives 129 elements; 8 steps reach position 9 + start.
    assert len(LubyEnv({"instance_set": [[0, 120, 0]]}).instance_set) == 1
    with pytest.raises(ExperimentError, match="position 130"):
        LubyEnv({"instance_set": [[0, 121, 0]]})
    with pytest.raises(ExperimentError):
        LubyEnv({"instance_set": [[0, 1.0]]})


def test_luby_reads_dacbench_format_csv(tmp_path):
    path = tmp_path / "luby_train.csv"
    path.write_text("ID,start,sticky\n0,0,0\n1,2,0.5\n")
    env = LubyEnv({"instance_set_path": str(path)})
    assert env.instance_set == {0: (0.0, 0.0), 1: (2.0, 0.5)}
    env.reset()
    env.reset()
    assert env.instance_id == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,begin,sticky\n0,0,0\n")
    with pytest.raises(ExperimentError, match="start"):
        LubyEnv({"instance_set_path": str(bad)})


@pytest.mark.parametrize(
    "config",
    [
        {"min_steps": 65},
        {"hist_length": 0},
        {"cutoff": "64"},
        {"reward_range": [0]},
        {"colour": 1},
    ],
)
def test_luby_config_is_checked(config):
    with pytest.raises(ExperimentError):
        LubyEnv(config)


def test_luby_step_checks_actions():
    env = LubyEnv()
    env.reset()
    for bad in (7, -1, 1.0, [0]):
        with pytest.raises(ValueError):
            env.step(bad)


def test_config_has_attribute_access():
    bench = SigmoidBenchmark()
    assert bench.config.cutoff == 10
    bench.config.cutoff = 20
    assert bench.config["cutoff"] == 20 and bench.get_config() is bench.config
    with pytest.raises(AttributeError):
        _ = bench.config.no_such_key
    copied = bench.config.copy()
    copied.cutoff = 5
    assert bench.config.cutoff == 20


@pytest.mark.parametrize("cls", [SigmoidBenchmark, LubyBenchmark])
def test_json_round_trip_is_strict(cls):
    bench = cls()
    bench.set_seed(7)
    text = bench.to_json()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict {name}"))
    again = cls.from_json(text)
    assert again == bench and again.config.seed == 7


def test_from_json_refuses_bad_text():
    for text in (
        "[1, 2]",
        '{"cutoff": NaN}',
        '{"cutoff": 1, "cutoff": 2}',
        '{"steps": 3}',
        '{"action_values": ["function", "os", "system"]}',
    ):
        with pytest.raises(ExperimentError):
            SigmoidBenchmark.from_json(text)


def test_save_and_read_config_file(tmp_path):
    bench = LubyBenchmark()
    bench.set_cutoff(32)
    bench.set_history_length(3)
    path = tmp_path / "luby.json"
    bench.save_config(path)
    loaded = LubyBenchmark(config_path=path)
    assert loaded == bench
    env = loaded.get_environment()
    assert env.action_space.n == 6 and env.observation_space.shape == (4,)
    with pytest.raises(ExperimentError):
        LubyBenchmark(config_path=path, config={})


def test_set_seed_checks_its_argument():
    bench = SigmoidBenchmark()
    bench.set_seed(None)
    assert bench.spec()["seed"] is None
    for bad in (-1, 1.0, "3", True):
        with pytest.raises(ExperimentError):
            bench.set_seed(bad)


def test_edits_are_checked_when_used():
    bench = SigmoidBenchmark()
    bench.config.cutoff = -3
    with pytest.raises(ExperimentError, match="cutoff"):
        bench.to_json()
    bench.config.cutoff = 10
    bench.config.rogue = 1
    with pytest.raises(ExperimentError, match="rogue"):
        bench.spec()


def test_spec_rebuilds_the_same_trajectory_in_the_factory():
    bench = SigmoidBenchmark()
    bench.set_seed(3)
    bench.config.instance_update_func = "random"
    spec = bench.spec()
    assert spec["benchmark"] == "shmbench/Sigmoid-v0" and spec["seed"] == 3
    json.dumps(spec, allow_nan=False)
    local = bench.get_environment()
    remote = make_benchmark_env(spec["benchmark"], spec["config"], spec["seed"])
    local.action_space.seed(9)
    actions = [local.action_space.sample() for _ in range(25)]
    for env in (local, remote):
        env.reset()
    for action in actions:
        a, b = local.step(action), remote.step(action)
        assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
        if a[3]:
            assert np.array_equal(local.reset()[0], remote.reset()[0])


def test_spec_inlines_instance_sets_from_host_files(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("4,2.0,0.5\n9,7.0,-1.0\n")
    bench = SigmoidBenchmark(config={"action_values": [3], "instance_set_path": str(path)})
    spec = bench.spec()
    assert spec["config"]["instance_set_path"] is None
    assert spec["config"]["instance_set"] == [[4, 2.0, 0.5], [9, 7.0, -1.0]]
    env = make_benchmark_env(spec["benchmark"], spec["config"])
    assert env.unwrapped.instance_set[9].tolist() == [7.0, -1.0]
    assert bench.to_json().count(str(path)) == 1  # to_json keeps the path itself
    assert SigmoidBenchmark().spec()["config"]["instance_set_path"] == "sigmoid_2d_default.csv"
    elsewhere = SigmoidBenchmark(config={"instance_set_path": "/inside/the/image.csv"})
    assert elsewhere.spec()["config"]["instance_set_path"] == "/inside/the/image.csv"


def test_dacbench_style_int_keyed_instance_sets_serialise():
    bench = SigmoidBenchmark()
    bench.config.action_values = (3,)
    bench.config.instance_set = {0: [5.0, 1.0]}
    assert json.loads(bench.to_json())["instance_set"] == {"0": [5.0, 1.0]}
    env = bench.get_environment()
    env.reset()
    assert env.step(np.array([0]))[1] == pytest.approx(SIG_PLUS_4, abs=1e-15)


def test_set_action_values_switches_to_generated_instances():
    bench = SigmoidBenchmark()
    bench.set_action_values([3, 3, 3])
    env = bench.get_environment()
    assert env.action_space == gymnasium.spaces.MultiDiscrete([3, 3, 3])
    assert len(env.instance_set) == 100 and env.instance_set[0].shape == (6,)
    bench.set_action_values([2, 2, 2])  # same dimensions: the instance source is kept
    assert bench.config.instance_set_path is None


def test_register_is_idempotent_and_uses_string_entry_points():
    benchmarks.register()
    benchmarks.register()
    assert gymnasium.spec("shmbench/Sigmoid-v0").entry_point == "shmbench.benchmarks.sigmoid:SigmoidEnv"
    assert gymnasium.spec("shmbench/Luby-v0").entry_point == "shmbench.benchmarks.luby:LubyEnv"


def test_register_refuses_a_conflicting_registration(monkeypatch):
    monkeypatch.setitem(
        gymnasium.registry, "shmbench/Luby-v0", EnvSpec(id="shmbench/Luby-v0", entry_point="elsewhere:Env")
    )
    with pytest.raises(ExperimentError, match="elsewhere"):
        benchmarks.register()


@pytest.mark.parametrize("env_id", ["shmbench/Luby", "shmbench/Luby-v0"])
def test_factory_accepts_short_and_full_ids(env_id):
    env = make_benchmark_env(env_id, {"min_steps": 4}, seed=5)
    assert isinstance(env.unwrapped, LubyEnv) and env.spec.id == "shmbench/Luby-v0"
    assert env.unwrapped.config["min_steps"] == 4 and env.unwrapped.np_random_seed == 5


def test_factory_seed_replaces_config_seed():
    env = make_benchmark_env("shmbench/Sigmoid", {"seed": 1}, seed=2)
    assert env.unwrapped.np_random_seed == 2
    assert make_benchmark_env("shmbench/Sigmoid", {"seed": 1}).unwrapped.np_random_seed == 1


def test_factory_builds_gymnasium_ids_with_kwargs_and_seed():
    a = make_benchmark_env("CartPole-v1", {"sutton_barto_reward": True}, seed=3)
    b = make_benchmark_env("CartPole-v1", None, seed=3)
    c = make_benchmark_env("CartPole-v1", None, seed=4)
    assert a.unwrapped._sutton_barto_reward is True
    first = a.reset()[0]
    assert np.array_equal(first, b.reset()[0]) and not np.array_equal(first, c.reset()[0])
    with pytest.raises(ExperimentError, match="gymnasium.make"):
        make_benchmark_env("CartPole-v1", {"no_such_argument": 1})


@pytest.mark.parametrize("env_id", ["NoSuchEnv-v0", "shmbench/Nope", "dacbench/Sigmoid", "", None])
def test_factory_refuses_unknown_ids(env_id):
    with pytest.raises(ExperimentError):
        make_benchmark_env(env_id)


def test_factory_never_imports_a_module_named_in_the_id(tmp_path, monkeypatch):
    (tmp_path / "shmbench_probe_module.py").write_text("raise SystemExit('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ExperimentError, match="module:Env"):
        make_benchmark_env("shmbench_probe_module:Probe-v0")
    assert "shmbench_probe_module" not in sys.modules


@pytest.mark.parametrize(
    "config, seed",
    [
        ({"cutoff": object()}, None),
        ([1, 2], None),
        ({"cutoff": float("inf")}, None),
        ({}, -1),
        ({}, True),
        ({}, "7"),
        ({}, 2.0),
    ],
)
def test_factory_checks_config_and_seed(config, seed):
    with pytest.raises(ExperimentError):
        make_benchmark_env("shmbench/Sigmoid", config, seed)


def test_dacbench_filter_passes_plain_overrides():
    config = {
        "cutoff": 32,
        "min_steps": 16,
        "instance_set_path": "luby_default.csv",
        "observation_space_type": "<class 'numpy.float32'>",
        "action_space_class": "Discrete",
        "config_space": {"hyperparameters": [], "conditions": [], "forbiddens": []},
        "benchmark_info": {"name": "Luby"},
        "wrappers": [],
    }
    out = filter_dacbench_config("dacbench/Luby", config)
    assert "wrappers" not in out and out["cutoff"] == 32 and out is not config
    assert filter_dacbench_config("dacbench/Theory", {"problem": "LeadingOne"}) == {"problem": "LeadingOne"}
    assert filter_dacbench_config("dacbench/ToySGD", None) == {}


@pytest.mark.parametrize(
    "benchmark_id, config, message",
    [
        ("dacbench/Luby", {"reward": ["function", "os", "system"]}, "function"),
        ("dacbench/Luby", {"benchmark_info": {"x": [1, ["function", "os", "system"]]}}, "function"),
        (
            "dacbench/Luby",
            {"wrappers": [["RewardNoiseWrapper", [["function", "f"]], {"f": ["os", "system"]}]]},
            "wrappers",
        ),
        ("dacbench/Luby", {"wrappers": [["PerformanceTrackingWrapper", []]]}, "wrappers"),
        ("dacbench/ToySGD", {"reward_function": "os.system"}, "reward_function"),
        ("dacbench/ToySGD", {"state_method": None}, "state_method"),
        ("dacbench/Luby", {"action_space": ["utils", [1]]}, "space class"),
        ("dacbench/Luby", {"observation_space": ["Box", [[0], [1]], "numpy.ctypeslib"]}, "dtype"),
        ("dacbench/Luby", {"action_space": "Discrete"}, "space must be"),
        ("dacbench/Luby", {"action_space_class": "flatten"}, "action_space_class"),
        ("dacbench/Luby", {"observation_space_class": "Tuple"}, "observation_space_class"),
        ("dacbench/Luby", {"observation_space_type": "<class 'numpy.lib'>"}, "observation_space_type"),
        ("dacbench/Luby", {"config_space": "{}"}, "config_space"),
        ("dacbench/Theory", {"problem": "np"}, "problem"),
        ("dacbench/Theory", {"env_class": "TheoryEnv"}, "env_class"),
        ("dacbench/Theory", {"outdir": "/tmp"}, "outdir"),
        ("dacbench/Luby", {"cutoff": float("nan")}, "finite"),
        ("dacbench/Sigmoid", {}, "whitelisted"),
    ],
)
def test_dacbench_filter_refuses_code(benchmark_id, config, message):
    with pytest.raises(ExperimentError, match=message):
        filter_dacbench_config(benchmark_id, config)


def test_dacbench_space_lists_on_the_whitelist_pass():
    config = {"observation_space": ["Box", [[0.0], [1.0]], "numpy.float32"], "action_space": ["Discrete", [7]]}
    assert filter_dacbench_config("dacbench/Luby", config) == config


def test_missing_dacbench_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dacbench", None)
    with pytest.raises(ExperimentError, match=r"shmbench\[dacbench\]"):
        make_dacbench_env("dacbench/Luby", {"cutoff": 32})
    with pytest.raises(ExperimentError, match=r"shmbench\[dacbench\]"):
        make_benchmark_env("dacbench/FunctionApproximation")
    # the filter runs first: refused code is reported as such even without DACBench
    with pytest.raises(ExperimentError, match="function"):
        make_benchmark_env("dacbench/Luby", {"f": ["function", "os", "system"]})
