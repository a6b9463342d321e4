"""shmbench.logs: the JSONL run log, written whole, read back tolerantly, never overwritten."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import runner_envs
from run_helpers import (
    TESTS,
)

from shmbench.agents import RandomAgent, StaticAgent
from shmbench.experiments.runner import (
    LocalRunner,
)
from shmbench.logs import read_log, strip_volatile, to_plain

pytestmark = pytest.mark.usefixtures("isolated")


def test_numpy_values_become_strict_json(tmp_path, monkeypatch):
    runner_envs.register()
    records = tmp_path / "records"
    records.mkdir()
    (records / "np.json").write_text(
        json.dumps(
            {
                "identifier": "test:numpy",
                "benchmark": runner_envs.NUMPY_INFO_ID,
                "log": ["reward", "action", "state", "info", "performance", "time"],
                "seed": {"base": 3, "per_episode": "fixed"},
            }
        )
    )
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
    assert row0["info"]["values"] == [
        {"arr": [0, 1, 2], "scalar": 0.5, "pair": [1, 2], "raw": {"base64": "AAE="}, "3": "int key", "inf": "Infinity"}
    ]
    assert [r["instance"] for r in log.rows if r["step"] == 0] == [0, 1]  # inst_id, DACBench's name
    assert last["overall_performance"]["values"] == ["NaN"] and "overall_performance" not in row0
    assert "step_duration" in row0 and "episode_duration" in last and "episode_duration" not in row0
    assert set(strip_volatile(last)) == {
        "episode",
        "step",
        "instance",
        "seed",
        "terminated",
        "truncated",
        "reward",
        "action",
        "state",
        "info",
        "overall_performance",
    }
    assert np.isnan(result.episode_rewards[0])


def test_to_plain():
    value = {
        1: np.float32(0.5),
        "a": (np.int8(3), np.array([[1, 2]], dtype=np.uint64)),
        "b": [np.bool_(True), float("-inf"), None],
        "c": object,
    }
    assert to_plain(value) == {"1": 0.5, "a": [3, [[1, 2]]], "b": [True, "-Infinity", None], "c": repr(object)}
    assert type(to_plain(np.float32(0.1))) is float and type(to_plain(np.int64(2))) is int


def test_a_host_that_dies_mid_run_leaves_a_readable_prefix(tmp_path):
    path = tmp_path / "crash.jsonl"
    proc = subprocess.run(
        [sys.executable, "-c", f"import runner_envs; runner_envs.crash_run({str(path)!r}, 25)"],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=60,
    )
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
    with (
        LocalRunner(experiment_identifier="exp:0.01", log_dir=tmp_path) as a,
        LocalRunner(experiment_identifier="exp:0.01", log_dir=tmp_path) as b,
    ):
        ra = a.run(RandomAgent(a.get_environment()), 1)
        rb = b.run(RandomAgent(b.get_environment()), 1)
    assert ra.log_path != rb.log_path and read_log(ra.log_path).complete and read_log(rb.log_path).complete


def _two_seeded_runs(tmp_path):
    """Two real runs of exp:0.01 (Sigmoid, 10 steps an episode) with base seeds 1 and 2."""
    paths = []
    for seed in (1, 2):
        with LocalRunner(experiment_identifier="exp:0.01", seed=seed, log_dir=tmp_path / "runs") as runner:
            result = runner.run(StaticAgent(runner.get_environment(), np.array([1, 2])), 3)
        paths.append(result.log_path)
    return paths, result


def test_to_dataframe_gives_one_flat_row_per_step(tmp_path):
    from shmbench.logs import ID_COLUMNS, to_dataframe

    paths, _ = _two_seeded_runs(tmp_path)
    frame = to_dataframe(tmp_path / "runs")
    logs = [read_log(p) for p in paths]
    assert len(frame) == sum(len(log.rows) for log in logs) > 0
    assert list(frame.columns[: len(ID_COLUMNS)]) == list(ID_COLUMNS)
    assert set(frame["base_seed"]) == {1, 2} and set(frame["experiment"]) == {"exp:0.01"}
    assert set(frame["benchmark"]) == {"shmbench/Sigmoid-v0"}
    first = logs[0].rows[0]
    row = frame[(frame["log"] == paths[0].name) & (frame["episode"] == 0) & (frame["step"] == 0)].iloc[0]
    assert row["reward"] == first["reward"]["values"][0]  # {"values": [v]} became v
    assert row["action"] == [1, 2]
    assert str(row["reward_time"].tz) == "UTC"
    assert len(to_dataframe(paths[0])) == len(logs[0].rows)  # one file works too
    from shmbench.logs import load_logs

    assert load_logs(tmp_path / "runs") == logs[0].rows + logs[1].rows  # files in name order: seed 1, 2


def test_plot_writes_the_per_episode_returns_by_seed(tmp_path):
    from shmbench.logs import episode_returns

    paths, _ = _two_seeded_runs(tmp_path)
    episodes = episode_returns(tmp_path / "runs")
    assert len(episodes) == 6
    log = read_log(paths[0])
    want = log.end["episode_rewards"]
    got = [e["return"] for e in episodes if e["log"] == paths[0].name]
    assert got == pytest.approx(want)
    out = subprocess.run(
        [sys.executable, "-m", "shmbench", "plot", str(tmp_path / "runs"), "-o", str(tmp_path / "r.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "shmbench", "plot", str(empty)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and out.stderr.startswith("shmbench plot: error: no logged steps")
