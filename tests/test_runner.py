"""Tests for shmbench.runner, shmbench.logs, shmbench.remote_agent and agents.make_agent.

Everything runs for real: servers are real processes (the ``process`` runtime, and bwrap
sandboxes where bubblewrap works), logs are real files read back from disk, and images are
pulled through the real cache from ``file://`` references. Every test gets its own cache
directory, user config directory and log directory, so only the records it writes (plus the
shipped ones) are visible.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runner_envs
from shmbench.agents import RandomAgent, StaticAgent, make_agent
from shmbench.benchmarks import LubyBenchmark, SigmoidBenchmark, make_benchmark_env
from shmbench.errors import DigestMismatch, ExperimentError, ImageError
from shmbench.experiments import resolve
from shmbench.logs import VOLATILE_FIELDS, read_log, strip_volatile, to_plain
from shmbench.remote_agent import RemoteAgent
from shmbench.runcli import add_run_arguments, run_command
from shmbench.runner import (
    LocalRunner,
    RemoteRunner,
    Runner,
    resolve_experiment,
)

TESTS = Path(__file__).resolve().parent


def _bwrap_skip_reason() -> str | None:
    try:
        import shmbench.container.bwrap  # noqa: F401
    except ImportError:
        return "shmbench.container.bwrap cannot be imported"
    from shmbench.container.select import probe_all

    ok, why = probe_all().get("bwrap", (False, "not registered"))
    return None if ok else f"bwrap does not work here: {why}"


BWRAP_SKIP = _bwrap_skip_reason()
RUNTIMES = ["process", pytest.param("bwrap", marks=pytest.mark.skipif(BWRAP_SKIP is not None, reason=str(BWRAP_SKIP)))]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private cache and config dir; no record dirs, index or runtime choice from outside."""
    monkeypatch.setenv("SHMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("SHMBENCH_EXPERIMENTS", "SHMBENCH_EXPERIMENT_INDEX", "SHMBENCH_RUNTIME"):
        monkeypatch.delenv(name, raising=False)


def seed_workflow(runtime: str, log_dir: Path, seed: int = 42, episodes: int = 10):
    """The seed workflow, verbatim but for the runtime and the log directory."""
    benchmark = SigmoidBenchmark()
    benchmark.set_seed(seed)
    with RemoteRunner(benchmark, experiment_identifier="exp:0.01", runtime=runtime, log_dir=log_dir) as remote_runner:
        agent = RandomAgent(remote_runner.get_environment())
        result = remote_runner.run(agent, number_of_episodes=episodes)
    return result, read_log(result.log_path)


def records(log) -> list:
    return [log.header, *log.runs, *log.rows, log.end]


def without(record: dict, *keys: str) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


# ------------------------------------------------------------------------------------------
# the seed workflow, end to end
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("runtime", RUNTIMES)
def test_seed_workflow_logs_every_step_and_matches_a_native_loop(runtime, tmp_path):
    result, log = seed_workflow(runtime, tmp_path / "logs")

    assert log.complete and result.log_path.parent == tmp_path / "logs"
    header = log.header
    record = resolve("exp:0.01")
    assert header["experiment_identifier"] == "exp:0.01"
    assert header["record_hash"] == record.canonical_hash()
    assert header["overrides"] == {"seed": 42}
    assert header["experiment"]["seed"] == {"base": 42, "per_episode": "once"}
    assert header["experiment"]["config"] == record.config
    assert header["experiment_hash"] != header["record_hash"]
    assert header["image"] is None and header["image_digest"] is None
    assert header["runtime"]["name"] == runtime and header["runtime"]["image_used"] is False
    assert set(header["server"]) == {"python", "numpy", "gymnasium", "shmbench"}
    assert header["server"] == header["host"]    # host root: the same interpreter's packages
    assert "started_at" in header

    assert len(log.runs) == 1 and log.runs[0]["episodes"] == 10
    assert len(log.rows) == 100 and len(result.episodes) == 10
    # seeded once, then the instances go round robin (a seeded reset would rewind them)
    assert [r["seed"] for r in log.rows[::10]] == [42] + [None] * 9
    assert [r["instance"] for r in log.rows[::10]] == list(range(10))
    assert [(r["episode"], r["step"]) for r in log.rows] == [(e, s) for e in range(10) for s in range(10)]
    assert all(r["truncated"] == (r["step"] == 9) and r["terminated"] is False for r in log.rows)
    assert set(log.rows[0]) == {"episode", "step", "instance", "seed", "terminated", "truncated",
                                "reward", "action", "state"}
    assert log.end["episode_rewards"] == result.episode_rewards

    # the agent is seeded from the remote env's seed, as it would be from a local one
    local_env = SigmoidBenchmark(config={"seed": 42}).get_environment()
    assert log.runs[0]["agent"] == {"class": "shmbench.agents.RandomAgent", "seed": RandomAgent(local_env).seed}

    # a native loop replaying the logged actions gives the returned rewards and logged states
    env = make_benchmark_env("shmbench/Sigmoid-v0", record.config, seed=42)
    for episode in range(10):
        env.reset(seed=42 if episode == 0 else None)
        total = 0.0
        for row in log.rows[episode * 10:(episode + 1) * 10]:
            obs, reward, terminated, truncated, _ = env.step(np.array(row["action"]["values"][0]))
            assert row["state"]["values"][0] == obs.tolist()
            assert row["reward"]["values"][0] == reward
            assert row["instance"] == env.unwrapped.instance_id
            total += reward
        assert total == result.episode_rewards[episode]
        assert result.episodes[episode].final_reward == reward


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_two_runs_of_one_experiment_and_seed_differ_only_in_timestamps(runtime, tmp_path):
    _, first = seed_workflow(runtime, tmp_path / "a", episodes=5)
    _, second = seed_workflow(runtime, tmp_path / "b", episodes=5)
    _, other_seed = seed_workflow(runtime, tmp_path / "c", seed=43, episodes=5)

    assert strip_volatile(records(first)) == strip_volatile(records(second))
    # the comparison can fail: another seed gives other rows
    assert strip_volatile(first.rows) != strip_volatile(other_seed.rows)
    # and only the declared fields were dropped
    assert {k for r in first.rows for k in r if k in VOLATILE_FIELDS} == set()
    assert all(set(r["reward"]) == {"values", "times"} for r in first.rows)


@pytest.mark.skipif(BWRAP_SKIP is not None, reason=str(BWRAP_SKIP))
def test_process_and_bwrap_logs_differ_only_in_timestamps_and_runtime(tmp_path):
    _, process = seed_workflow("process", tmp_path / "p", episodes=4)
    _, bwrap = seed_workflow("bwrap", tmp_path / "b", episodes=4)
    assert process.header["runtime"]["name"] == "process" and bwrap.header["runtime"]["name"] == "bwrap"
    assert bwrap.header["runtime"]["isolated"] is True
    assert strip_volatile(without(process.header, "runtime")) == strip_volatile(without(bwrap.header, "runtime"))
    assert strip_volatile(process.rows + process.runs + [process.end]) == strip_volatile(bwrap.rows + bwrap.runs + [bwrap.end])


def test_local_runner_rows_equal_remote_runner_rows(tmp_path):
    benchmark = SigmoidBenchmark()
    benchmark.set_seed(7)
    with LocalRunner(benchmark, "exp:0.01", log_dir=tmp_path / "local") as local:
        local_result = local.run(RandomAgent(local.get_environment()), 6)
    with RemoteRunner(benchmark, "exp:0.01", runtime="process", log_dir=tmp_path / "remote") as remote:
        remote_result = remote.run(RandomAgent(remote.get_environment()), 6)
    local_log, remote_log = read_log(local_result.log_path), read_log(remote_result.log_path)

    assert local_result.episode_rewards == remote_result.episode_rewards
    assert strip_volatile(local_log.rows) == strip_volatile(remote_log.rows)
    assert strip_volatile(local_log.runs) == strip_volatile(remote_log.runs)
    differ = {k for k in local_log.header if local_log.header[k] != remote_log.header[k]}
    assert differ <= {"started_at", "runner", "runtime"}
    assert local_log.header["runner"] == "local" and local_log.header["runtime"]["name"] == "local"


def test_ad_hoc_runs_follow_dacbench_seeding_and_match_a_native_loop(tmp_path):
    benchmark = LubyBenchmark()
    benchmark.set_seed(5)
    with LocalRunner(benchmark, log_dir=tmp_path) as runner:
        env = runner.get_environment()
        result = runner.run(RandomAgent(env, seed=11), 4)
    log = read_log(result.log_path)
    assert log.header["experiment_identifier"] is None and log.header["record_hash"] is None
    assert log.header["experiment"]["identifier"] == "adhoc:shmbench.Luby-v0"
    assert log.header["experiment"]["seed"] == {"base": 5, "per_episode": "once"}
    assert [e.seed for e in result.episodes] == [5, None, None, None]

    # DACBench's loop on the env the benchmark object builds: seeded at construction only
    native = benchmark.get_environment()
    agent = RandomAgent(native, seed=11)
    returns = []
    for _ in range(4):
        state, _ = native.reset()
        reward, total, done = 0, 0.0, False
        while not done:
            action = agent.act(state, reward)
            state, reward, terminated, truncated, _ = native.step(action)
            total += reward
            done = terminated or truncated
        returns.append(total)
    assert returns == result.episode_rewards
    assert [r["seed"] for r in log.rows if r["step"] == 0] == [5, None, None, None]


def test_runs_continue_episode_numbering_and_seeds_across_calls(tmp_path):
    with LocalRunner(experiment_identifier="exp:0.01", log_dir=tmp_path) as runner:
        agent = StaticAgent(runner.get_environment(), np.array([2, 5]))
        first = runner.run(agent, 2)
        second = runner.run(agent, 3)
    log = read_log(first.log_path)
    assert [e.episode for e in second.episodes] == [2, 3, 4] and [e.seed for e in second.episodes] == [None] * 3
    assert [e.seed for e in first.episodes] == [0, None]
    assert [e.instance for e in first.episodes + second.episodes] == [0, 1, 2, 3, 4]
    assert [r["first_episode"] for r in log.runs] == [0, 2]
    assert log.end["episodes"] == 5 and len(log.rows) == 50
    assert all(r["action"]["values"] == [[2, 5]] for r in log.rows)


# ------------------------------------------------------------------------------------------
# combining benchmark objects, records and explicit arguments
# ------------------------------------------------------------------------------------------

def test_an_untouched_benchmark_object_changes_nothing():
    exp = resolve_experiment(SigmoidBenchmark(), "exp:0.01")
    assert exp.overrides == {}
    assert exp.record.canonical_hash() == resolve("exp:0.01").canonical_hash()
    assert exp.benchmark_spec() == {"benchmark": "shmbench/Sigmoid-v0", "config": resolve("exp:0.01").config, "seed": 0}


def test_edited_config_keys_override_the_record_and_change_the_hash():
    bench = SigmoidBenchmark()
    bench.config.cutoff = 5
    bench.config.instance_update_func = "random"
    exp = resolve_experiment(bench, "exp:0.01", config={"slope_multiplier": 1.5})
    assert exp.overrides == {"config": {"cutoff": 5, "instance_update_func": "random", "slope_multiplier": 1.5}}
    assert exp.record.config["cutoff"] == 5 and exp.record.config["action_values"] == [5, 10]
    assert exp.record.canonical_hash() != exp.base.canonical_hash()


def test_seed_precedence_explicit_then_benchmark_then_record():
    bench = SigmoidBenchmark()
    assert resolve_experiment(bench, "exp:0.01").seed_policy.base == 0
    bench.set_seed(42)
    assert resolve_experiment(bench, "exp:0.01").seed_policy.base == 42
    exp = resolve_experiment(bench, "exp:0.01", seed=9)
    assert exp.seed_policy.base == 9 and exp.seed_policy.per_episode == "once"
    assert exp.overrides == {"seed": 9}
    bench.set_seed(None)   # None does not unseed a record
    assert resolve_experiment(bench, "exp:0.01").seed_policy.base == 0
    with pytest.raises(ExperimentError, match="integer seed"):
        resolve_experiment(bench)


def test_mismatched_benchmark_and_bad_config_are_refused():
    with pytest.raises(ExperimentError, match="does not match"):
        resolve_experiment(LubyBenchmark(), "exp:0.01")
    with pytest.raises(ExperimentError, match="does not match"):
        resolve_experiment("shmbench/Luby", "exp:0.01")
    assert resolve_experiment("shmbench/Sigmoid", "exp:0.01").overrides == {}
    with pytest.raises(ExperimentError, match="cutof"):
        resolve_experiment(None, "exp:0.01", config={"cutof": 3})
    with pytest.raises(ExperimentError, match="unknown experiment"):
        resolve_experiment(None, "exp:9.99")
    with pytest.raises(TypeError):
        resolve_experiment()


# ------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------

def _user_record(tmp_path: Path, image_bytes: bytes, digest: str | None = None) -> tuple[Path, str]:
    image = tmp_path / "share" / "tiny.sif"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(image_bytes)
    digest = digest or "sha256:" + hashlib.sha256(image_bytes).hexdigest()
    records = tmp_path / "records"
    records.mkdir(exist_ok=True)
    (records / "mine.toml").write_text(
        'identifier = "exp:0.01"\nbenchmark = "shmbench/Sigmoid-v0"\nlog = ["reward"]\n'
        f'[image]\nref = "{image.as_uri()}"\ndigest = "{digest}"\n'
        '[config]\ncutoff = 3\n[seed]\nbase = 1\nper_episode = "fixed"\n')
    return records, digest


def test_a_user_record_image_is_pulled_recorded_and_not_run_by_the_process_runtime(tmp_path, monkeypatch):
    records, digest = _user_record(tmp_path, b"not really a SIF, but pinned\n")
    monkeypatch.setenv("SHMBENCH_EXPERIMENTS", str(records))
    with pytest.warns(RuntimeWarning, match="process runtime runs the env on the host"):
        runner = RemoteRunner(experiment_identifier="exp:0.01", runtime="process", log_dir=tmp_path / "logs",
                              progress=False)
    with runner:
        cached = tmp_path / "cache" / "images" / ("sha256-" + digest.split(":")[1])
        assert runner.image_path == cached and cached.read_bytes() == b"not really a SIF, but pinned\n"
        result = runner.run(RandomAgent(runner.get_environment()), 2)
    log = read_log(result.log_path)
    assert log.header["image"] == {"ref": (tmp_path / "share" / "tiny.sif").as_uri(), "digest": digest}
    assert log.header["image_digest"] == digest
    assert log.header["runtime"] == {"name": "process", "isolated": False, "image_used": False}
    # the user's record (cutoff 3, fixed seed 1) is what ran
    assert [e.steps for e in result.episodes] == [3, 3] and [e.seed for e in result.episodes] == [1, 1]
    assert set(log.rows[0]) == {"episode", "step", "instance", "seed", "terminated", "truncated", "reward"}


def test_an_image_with_the_wrong_digest_starts_nothing(tmp_path, monkeypatch):
    records, _ = _user_record(tmp_path, b"tampered", digest="sha256:" + "0" * 64)
    monkeypatch.setenv("SHMBENCH_EXPERIMENTS", str(records))
    with pytest.raises(DigestMismatch):
        RemoteRunner(experiment_identifier="exp:0.01", runtime="process", log_dir=tmp_path, progress=False)
    assert not (tmp_path / "cache" / "images").exists() or not any(
        p.name.startswith("sha256-") for p in (tmp_path / "cache" / "images").iterdir())


def test_offline_refuses_an_image_that_is_not_cached(tmp_path, monkeypatch):
    records, _ = _user_record(tmp_path, b"tiny")
    monkeypatch.setenv("SHMBENCH_EXPERIMENTS", str(records))
    with pytest.raises(ImageError, match="offline"):
        RemoteRunner(experiment_identifier="exp:0.01", runtime="process", offline=True, progress=False)


def test_an_explicit_local_image_overrides_the_record_and_is_hashed(tmp_path):
    image = tmp_path / "local.sif"
    image.write_bytes(b"local image")
    with pytest.warns(RuntimeWarning, match="process runtime"):
        runner = RemoteRunner(experiment_identifier="exp:0.01", runtime="process", image=image,
                              log_dir=tmp_path, progress=False)
    with runner:
        assert runner.image_path == image and runner.image_digest == "sha256:" + hashlib.sha256(b"local image").hexdigest()
        assert runner.experiment.overrides == {"image": {"ref": str(image)}}
        header = runner.header()
    assert header["image_digest"] == runner.image_digest


@pytest.mark.skipif(BWRAP_SKIP is not None, reason=str(BWRAP_SKIP))
def test_auto_runtime_never_runs_an_image_in_a_plain_process(tmp_path, monkeypatch):
    # a pinned file that is not a SIF: the container runtime refuses it; auto never falls
    # back to running the env on the host
    records, _ = _user_record(tmp_path, b"not a SIF at all")
    monkeypatch.setenv("SHMBENCH_EXPERIMENTS", str(records))
    with pytest.raises(ImageError):
        RemoteRunner(experiment_identifier="exp:0.01", runtime="auto", log_dir=tmp_path, progress=False)


# ------------------------------------------------------------------------------------------
# logs
# ------------------------------------------------------------------------------------------

def test_numpy_values_become_strict_json(tmp_path, monkeypatch):
    runner_envs.register()
    records = tmp_path / "records"
    records.mkdir()
    (records / "np.json").write_text(json.dumps({
        "identifier": "test:numpy", "benchmark": runner_envs.NUMPY_INFO_ID,
        "log": ["reward", "action", "state", "info", "performance", "time"],
        "seed": {"base": 3, "per_episode": "fixed"}}))
    monkeypatch.setenv("SHMBENCH_EXPERIMENTS", str(records))
    with LocalRunner(experiment_identifier="test:numpy", log_dir=tmp_path / "logs") as runner:
        result = runner.run(StaticAgent(runner.get_environment(), np.int64(1)), 2)

    def no_constants(name):
        raise AssertionError(f"{name} in a log: not strict JSON")

    lines = result.log_path.read_text().splitlines()
    for line in lines:
        json.loads(line, parse_constant=no_constants)
    log = read_log(result.log_path)
    row0, row1, last = log.rows[0], log.rows[1], log.rows[3]
    assert row0["reward"]["values"] == [1.25] and row1["reward"]["values"] == ["NaN"]
    assert row0["action"]["values"] == [1] and row0["state"]["values"] == [[1.0, 1.0]]
    assert row0["info"]["values"] == [{"arr": [0, 1, 2], "scalar": 0.5, "pair": [1, 2],
                                       "raw": {"base64": "AAE="}, "3": "int key", "inf": "Infinity"}]
    assert [r["instance"] for r in log.rows if r["step"] == 0] == [0, 1]   # inst_id, DACBench's name
    assert last["overall_performance"]["values"] == ["NaN"] and "overall_performance" not in row0
    assert "step_duration" in row0 and "episode_duration" in last and "episode_duration" not in row0
    assert set(strip_volatile(last)) == {"episode", "step", "instance", "seed", "terminated", "truncated",
                                         "reward", "action", "state", "info", "overall_performance"}
    assert np.isnan(result.episode_rewards[0])


def test_to_plain():
    value = {1: np.float32(0.5), "a": (np.int8(3), np.array([[1, 2]], dtype=np.uint64)),
             "b": [np.bool_(True), float("-inf"), None], "c": object}
    assert to_plain(value) == {"1": 0.5, "a": [3, [[1, 2]]], "b": [True, "-Infinity", None], "c": repr(object)}
    assert type(to_plain(np.float32(0.1))) is float and type(to_plain(np.int64(2))) is int


def test_a_host_that_dies_mid_run_leaves_a_readable_prefix(tmp_path):
    path = tmp_path / "crash.jsonl"
    proc = subprocess.run([sys.executable, "-c", f"import runner_envs; runner_envs.crash_run({str(path)!r}, 25)"],
                          cwd=TESTS, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 17, proc.stderr
    log = read_log(path)
    assert log.header["experiment_identifier"] == "exp:0.01" and log.end is None and not log.complete
    assert len(log.rows) == 25 and log.rows[-1] == {**log.rows[-1], "episode": 2, "step": 4}

    # a line cut short by a crash during a write is left out, and said to be
    text = path.read_text()
    path.write_text(text + text.splitlines()[-1][:40])
    cut = read_log(path)
    assert cut.rows == log.rows and not cut.complete
    path.write_text(text.replace("\n", "\n{oops\n", 1))
    with pytest.raises(ValueError, match=":2: not a JSON line"):
        read_log(path)


def test_a_log_is_never_overwritten(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text("precious\n")
    with LocalRunner(experiment_identifier="exp:0.01", log_path=path) as runner:
        with pytest.raises(FileExistsError):
            runner.run(RandomAgent(runner.get_environment()), 1)
    assert path.read_text() == "precious\n"
    with LocalRunner(experiment_identifier="exp:0.01", log_dir=tmp_path) as a, \
            LocalRunner(experiment_identifier="exp:0.01", log_dir=tmp_path) as b:
        ra = a.run(RandomAgent(a.get_environment()), 1)
        rb = b.run(RandomAgent(b.get_environment()), 1)
    assert ra.log_path != rb.log_path and read_log(ra.log_path).complete and read_log(rb.log_path).complete


def test_record_wrappers_apply_to_local_and_remote_envs(tmp_path, monkeypatch):
    records = tmp_path / "records"
    records.mkdir()
    (records / "clip.toml").write_text(
        'identifier = "exp:clip"\nbenchmark = "shmbench/Sigmoid-v0"\n'
        '[[wrappers]]\nname = "ClipReward"\nkwargs = { min_reward = 0.0, max_reward = 0.5 }\n')
    monkeypatch.setenv("SHMBENCH_EXPERIMENTS", str(records))
    results = []
    for cls, kwargs in ((LocalRunner, {}), (RemoteRunner, {"runtime": "process"})):
        with cls(experiment_identifier="exp:clip", log_dir=None, **kwargs) as runner:
            results.append(runner.run(RandomAgent(runner.get_environment(), seed=1), 3))
            assert runner.log_path is None
    assert results[0].episode_rewards == results[1].episode_rewards
    assert max(results[0].episode_rewards) <= 10 * 0.5 and min(results[0].episode_rewards) > 0


# ------------------------------------------------------------------------------------------
# remote agents
# ------------------------------------------------------------------------------------------

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
            assert [other.act(state, 0).tolist() for _ in range(10)] != [remote.act(state, 0).tolist() for _ in range(10)]
    assert remote.closed


def test_a_remote_agent_drives_a_runner_like_a_local_one(tmp_path):
    rewards = []
    for remote_agent in (False, True):
        with RemoteRunner(experiment_identifier="exp:0.01", runtime="process", log_dir=tmp_path / str(remote_agent)) as runner:
            env = runner.get_environment()
            if remote_agent:
                with RemoteAgent({"type": "random", "seed": 3}, action_space=env.action_space, runtime="process") as agent:
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


def test_make_agent_checks_its_description():
    from gymnasium import spaces

    from shmbench.spaces import describe

    space = spaces.Box(-1, 1, (2,), np.float32)
    agent = make_agent({"type": "static", "action_space": describe(space), "action": [0.5, -1]})
    assert agent.act(None, 0).dtype == np.float32
    assert make_agent({"type": "static", "action_space": spaces.Discrete(3), "action": 2}).act(None, 0) == 2
    a = make_agent({"type": "random", "action_space": space, "seed": 1})
    b = RandomAgent(holder(space), seed=1)
    assert [a.act(None, 0).tolist() for _ in range(5)] == [b.act(None, 0).tolist() for _ in range(5)]
    for bad, match in [({"type": "random", "action_space": space, "seed": -1}, "seed"),
                       ({"type": "random", "action_space": space, "seed": True}, "seed"),
                       ({"type": "random", "action_space": space, "entry_point": "os:system"}, "unknown key"),
                       ({"type": "static", "action_space": space}, "'action' is required"),
                       ({"type": "random", "action_space": {"type": "Nope"}}, "bad action_space"),
                       ({"type": "random"}, "'action_space' is required"),
                       (["random"], "must be a dict")]:
        with pytest.raises(ExperimentError, match=match):
            make_agent(bad)


def holder(space):
    from shmbench.agents import ActionSpaceHolder

    return ActionSpaceHolder(space)


# ------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------

def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="shmbench run")
    add_run_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_command_runs_logs_and_summarises(tmp_path, capsys):
    out = tmp_path / "out"
    status = run_command(parse("--experiment", "exp:0.01", "--benchmark", "shmbench/Sigmoid-v0",
                               "--config", "cutoff=4", "--agent", "random", "--episodes", "3",
                               "--seed", "42", "--out", str(out), "--runtime", "process"))
    printed = capsys.readouterr()
    assert status == 0, printed.err
    (path,) = out.iterdir()
    log = read_log(path)
    assert log.complete and log.header["overrides"] == {"seed": 42, "config": {"cutoff": 4}}
    assert len(log.rows) == 12
    lines = printed.out.splitlines()
    assert lines[0].split() == ["episode", "seed", "instance", "steps", "reward"]
    assert [line.split()[:4] for line in lines[2:5]] == [["0", "42", "0", "4"], ["1", "-", "1", "4"],
                                                         ["2", "-", "2", "4"]]
    assert f"log {path}" in printed.out and "mean reward" in printed.out
    for e, line in enumerate(lines[2:5]):
        assert float(line.split()[4]) == pytest.approx(log.end["episode_rewards"][e], rel=1e-5)

    # the agent is the one RandomAgent(env) would be on the seeded env; local runs agree
    status = run_command(parse("--experiment", "exp:0.01", "--config", "cutoff=4", "--episodes", "3",
                               "--seed", "42", "--out", str(tmp_path / "local"), "--runtime", "local", "--quiet"))
    assert status == 0
    (local_path,) = (tmp_path / "local").iterdir()
    local_log = read_log(local_path)
    assert strip_volatile(local_log.rows) == strip_volatile(log.rows)
    assert local_log.runs[0]["agent"]["seed"] == RandomAgent(
        SigmoidBenchmark(config={"seed": 42}).get_environment()).seed


def test_run_command_static_and_remote_agents(tmp_path, capsys):
    status = run_command(parse("--experiment", "exp:0.01", "--agent", "static", "--action", "[1, 2]",
                               "--episodes", "2", "--out", str(tmp_path / "s"), "--runtime", "process",
                               "--remote-agent", "--quiet"))
    assert status == 0, capsys.readouterr().err
    (path,) = (tmp_path / "s").iterdir()
    log = read_log(path)
    assert {json.dumps(r["action"]["values"]) for r in log.rows} == {"[[1, 2]]"}
    assert log.runs[0]["agent"]["class"] == "shmbench.remote_agent.RemoteAgent"


@pytest.mark.parametrize("argv, status, message", [
    (("--experiment", "exp:0.01", "--benchmark", "shmbench/Luby"), 2, "does not match"),
    (("--benchmark", "shmbench/Sigmoid", "--config", "cutoff"), 2, "KEY=VALUE"),
    (("--experiment", "exp:0.01", "--agent", "static"), 2, "--action"),
    (("--experiment", "nope:1",), 2, "unknown experiment"),
    ((), 2, "--experiment, --benchmark"),
])
def test_run_command_reports_bad_arguments(tmp_path, capsys, argv, status, message):
    assert run_command(parse(*argv, "--runtime", "process", "--out", str(tmp_path), "--quiet", "--episodes", "1")) == status
    assert message in capsys.readouterr().err


def test_runner_from_args_picks_the_runner(tmp_path):
    args = parse("--benchmark", "shmbench/Luby", "--seed", "3", "--runtime", "local", "--out", str(tmp_path))
    with Runner.from_args(args) as runner:
        assert type(runner) is LocalRunner
        assert runner.experiment.record.benchmark == "shmbench/Luby-v0" and runner.experiment.seed_policy.base == 3
    with pytest.raises(ExperimentError, match="LocalRunner"):
        RemoteRunner.from_args(args)
