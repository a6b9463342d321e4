"""shmbench.experiments.runner: LocalRunner and RemoteRunner end to end, logged on the host."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from run_helpers import (
    BWRAP_SKIP,
    RUNTIMES,
    holder,
    records,
    seed_workflow,
    user_record,
    without,
)

from shmbench.agents import RandomAgent, StaticAgent, make_agent
from shmbench.benchmarks import LubyBenchmark, SigmoidBenchmark, make_benchmark_env
from shmbench.errors import DigestMismatch, ExperimentError, ImageError
from shmbench.experiments import resolve
from shmbench.experiments.runner import (
    LocalRunner,
    RemoteRunner,
)
from shmbench.logs import VOLATILE_FIELDS, read_log, strip_volatile

pytestmark = pytest.mark.usefixtures("isolated")


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
    assert header["image"] == {"recipe": "light.def", "lock": "light.lock.json"}  # the record's pin
    assert header["runtime"]["name"] == runtime
    assert set(header["server"]) == {"python", "numpy", "gymnasium", "shmbench"}
    if runtime == "process":  # on the host: no image built, the same interpreter's packages
        assert header["image_digest"] is None and header["runtime"]["image_used"] is False
        assert "recipe was not built" in header["image_build"]["skipped"]
        assert header["server"] == header["host"]
    else:  # in the light image, served by the host's shmbench
        assert header["runtime"]["image_used"] is True and header["image_build"]["how"] == "built"
        assert header["image_digest"] == header["image_build"]["digest"]
        assert header["image_manifest"]["recipe"]["name"] == "light.def"
        assert header["server"]["numpy"] == "2.2.6" and header["server"]["shmbench"] == header["host"]["shmbench"]
    assert "started_at" in header

    assert len(log.runs) == 1 and log.runs[0]["episodes"] == 10
    assert len(log.rows) == 100 and len(result.episodes) == 10
    # seeded once, then the instances go round robin (a seeded reset would rewind them)
    assert [r["seed"] for r in log.rows[::10]] == [42] + [None] * 9
    assert [r["instance"] for r in log.rows[::10]] == list(range(10))
    assert [(r["episode"], r["step"]) for r in log.rows] == [(e, s) for e in range(10) for s in range(10)]
    assert all(r["truncated"] == (r["step"] == 9) and r["terminated"] is False for r in log.rows)
    assert set(log.rows[0]) == {
        "episode",
        "step",
        "instance",
        "seed",
        "terminated",
        "truncated",
        "reward",
        "action",
        "state",
    }
    assert log.end["episode_rewards"] == result.episode_rewards

    # the agent is seeded from the remote env's seed, as it would be from a local one
    local_env = SigmoidBenchmark(config={"seed": 42}).get_environment()
    assert log.runs[0]["agent"] == {"class": "shmbench.agents.RandomAgent", "seed": RandomAgent(local_env).seed}

    # a native loop replaying the logged actions gives the returned rewards and logged states
    env = make_benchmark_env("shmbench/Sigmoid-v0", record.config, seed=42)
    for episode in range(10):
        env.reset(seed=42 if episode == 0 else None)
        total = 0.0
        for row in log.rows[episode * 10 : (episode + 1) * 10]:
            obs, reward, _terminated, _truncated, _ = env.step(np.array(row["action"]["values"][0]))
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
def test_process_and_bwrap_logs_differ_only_in_timestamps_and_where_they_ran(tmp_path):
    """On the host and in the light image (numpy 2.2 there, the host's elsewhere): the same rows."""
    _, process = seed_workflow("process", tmp_path / "p", episodes=4)
    _, bwrap = seed_workflow("bwrap", tmp_path / "b", episodes=4)
    assert process.header["runtime"]["name"] == "process" and bwrap.header["runtime"]["name"] == "bwrap"
    assert bwrap.header["runtime"]["isolated"] is True
    where = ("runtime", "server", "image_digest", "image_build", "image_manifest")
    assert strip_volatile(without(process.header, *where)) == strip_volatile(without(bwrap.header, *where))
    assert strip_volatile(process.rows + process.runs + [process.end]) == strip_volatile(
        bwrap.rows + bwrap.runs + [bwrap.end]
    )


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
    assert differ <= {"started_at", "runner", "runtime", "image_build"}  # image_build: the recipe was not built
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


def test_a_user_record_image_is_pulled_recorded_and_not_run_by_the_process_runtime(tmp_path, monkeypatch):
    records, digest = user_record(tmp_path, b"not really a SIF, but pinned\n")
    monkeypatch.setenv("SHMBENCH_EXPERIMENTS", str(records))
    with pytest.warns(RuntimeWarning, match="process runtime runs the env on the host"):
        runner = RemoteRunner(
            experiment_identifier="exp:0.01", runtime="process", log_dir=tmp_path / "logs", progress=False
        )
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
    records, _ = user_record(tmp_path, b"tampered", digest="sha256:" + "0" * 64)
    monkeypatch.setenv("SHMBENCH_EXPERIMENTS", str(records))
    with pytest.raises(DigestMismatch):
        RemoteRunner(experiment_identifier="exp:0.01", runtime="process", log_dir=tmp_path, progress=False)
    assert not (tmp_path / "cache" / "images").exists() or not any(
        p.name.startswith("sha256-") for p in (tmp_path / "cache" / "images").iterdir()
    )


def test_offline_refuses_an_image_that_is_not_cached(tmp_path, monkeypatch):
    records, _ = user_record(tmp_path, b"tiny")
    monkeypatch.setenv("SHMBENCH_EXPERIMENTS", str(records))
    with pytest.raises(ImageError, match="offline"):
        RemoteRunner(experiment_identifier="exp:0.01", runtime="process", offline=True, progress=False)


def test_an_explicit_local_image_overrides_the_record_and_is_hashed(tmp_path):
    image = tmp_path / "local.sif"
    image.write_bytes(b"local image")
    with pytest.warns(RuntimeWarning, match="process runtime"):
        runner = RemoteRunner(
            experiment_identifier="exp:0.01", runtime="process", image=image, log_dir=tmp_path, progress=False
        )
    with runner:
        assert (
            runner.image_path == image and runner.image_digest == "sha256:" + hashlib.sha256(b"local image").hexdigest()
        )
        assert runner.experiment.overrides == {"image": {"ref": str(image)}}
        header = runner.header()
    assert header["image_digest"] == runner.image_digest


@pytest.mark.skipif(BWRAP_SKIP is not None, reason=str(BWRAP_SKIP))
def test_auto_runtime_never_runs_an_image_in_a_plain_process(tmp_path, monkeypatch):
    # a pinned file that is not a SIF: the container runtime refuses it; auto never falls
    # back to running the env on the host
    records, _ = user_record(tmp_path, b"not a SIF at all")
    monkeypatch.setenv("SHMBENCH_EXPERIMENTS", str(records))
    with pytest.raises(ImageError):
        RemoteRunner(experiment_identifier="exp:0.01", runtime="auto", log_dir=tmp_path, progress=False)


def test_record_wrappers_apply_to_local_and_remote_envs(tmp_path, monkeypatch):
    records = tmp_path / "records"
    records.mkdir()
    (records / "clip.toml").write_text(
        'identifier = "exp:clip"\nbenchmark = "shmbench/Sigmoid-v0"\n'
        '[[wrappers]]\nname = "ClipReward"\nkwargs = { min_reward = 0.0, max_reward = 0.5 }\n'
    )
    monkeypatch.setenv("SHMBENCH_EXPERIMENTS", str(records))
    results = []
    for cls, kwargs in ((LocalRunner, {}), (RemoteRunner, {"runtime": "process"})):
        with cls(experiment_identifier="exp:clip", log_dir=None, **kwargs) as runner:
            results.append(runner.run(RandomAgent(runner.get_environment(), seed=1), 3))
            assert runner.log_path is None
    assert results[0].episode_rewards == results[1].episode_rewards
    assert max(results[0].episode_rewards) <= 10 * 0.5 and min(results[0].episode_rewards) > 0


def test_make_agent_checks_its_description():
    from gymnasium import spaces

    from shmbench.wire.spaces import describe

    space = spaces.Box(-1, 1, (2,), np.float32)
    agent = make_agent({"type": "static", "action_space": describe(space), "action": [0.5, -1]})
    assert agent.act(None, 0).dtype == np.float32
    assert make_agent({"type": "static", "action_space": spaces.Discrete(3), "action": 2}).act(None, 0) == 2
    a = make_agent({"type": "random", "action_space": space, "seed": 1})
    b = RandomAgent(holder(space), seed=1)
    assert [a.act(None, 0).tolist() for _ in range(5)] == [b.act(None, 0).tolist() for _ in range(5)]
    for bad, match in [
        ({"type": "random", "action_space": space, "seed": -1}, "seed"),
        ({"type": "random", "action_space": space, "seed": True}, "seed"),
        ({"type": "random", "action_space": space, "entry_point": "os:system"}, "unknown key"),
        ({"type": "static", "action_space": space}, "'action' is required"),
        ({"type": "random", "action_space": {"type": "Nope"}}, "bad action_space"),
        ({"type": "random"}, "'action_space' is required"),
        (["random"], "must be a dict"),
    ]:
        with pytest.raises(ExperimentError, match=match):
            make_agent(bad)
