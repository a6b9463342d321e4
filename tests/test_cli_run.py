"""shmbench.cli.run: ``shmbench run``, its options, messages and exit statuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from run_helpers import (
    parse,
    user_record,
)

from shmbench.agents import RandomAgent
from shmbench.benchmarks import SigmoidBenchmark
from shmbench.cli.run import run_command, runner_from_args
from shmbench.errors import ExperimentError
from shmbench.experiments.runner import (
    LocalRunner,
    RemoteRunner,
)
from shmbench.logs import read_log, strip_volatile

pytestmark = pytest.mark.usefixtures("isolated")


def test_run_command_runs_logs_and_summarises(tmp_path, capsys):
    out = tmp_path / "out"
    status = run_command(
        parse(
            "--experiment",
            "exp:0.01",
            "--benchmark",
            "shmbench/Sigmoid-v0",
            "--config",
            "cutoff=4",
            "--agent",
            "random",
            "--episodes",
            "3",
            "--seed",
            "42",
            "--out",
            str(out),
            "--runtime",
            "process",
        )
    )
    printed = capsys.readouterr()
    assert status == 0, printed.err
    (path,) = out.iterdir()
    log = read_log(path)
    assert log.complete and log.header["overrides"] == {"seed": 42, "config": {"cutoff": 4}}
    assert len(log.rows) == 12
    lines = printed.out.splitlines()
    assert lines[0].split() == ["episode", "seed", "instance", "steps", "reward"]
    assert [line.split()[:4] for line in lines[2:5]] == [
        ["0", "42", "0", "4"],
        ["1", "-", "1", "4"],
        ["2", "-", "2", "4"],
    ]
    assert f"log {path}" in printed.out and "mean reward" in printed.out
    for e, line in enumerate(lines[2:5]):
        assert float(line.split()[4]) == pytest.approx(log.end["episode_rewards"][e], rel=1e-5)

    # the agent is the one RandomAgent(env) would be on the seeded env; local runs agree
    status = run_command(
        parse(
            "--experiment",
            "exp:0.01",
            "--config",
            "cutoff=4",
            "--episodes",
            "3",
            "--seed",
            "42",
            "--out",
            str(tmp_path / "local"),
            "--runtime",
            "local",
            "--quiet",
        )
    )
    assert status == 0
    (local_path,) = (tmp_path / "local").iterdir()
    local_log = read_log(local_path)
    assert strip_volatile(local_log.rows) == strip_volatile(log.rows)
    assert (
        local_log.runs[0]["agent"]["seed"] == RandomAgent(SigmoidBenchmark(config={"seed": 42}).get_environment()).seed
    )


def test_run_command_static_and_remote_agents(tmp_path, capsys):
    status = run_command(
        parse(
            "--experiment",
            "exp:0.01",
            "--agent",
            "static",
            "--action",
            "[1, 2]",
            "--episodes",
            "2",
            "--out",
            str(tmp_path / "s"),
            "--runtime",
            "process",
            "--remote-agent",
            "--quiet",
        )
    )
    assert status == 0, capsys.readouterr().err
    (path,) = (tmp_path / "s").iterdir()
    log = read_log(path)
    assert {json.dumps(r["action"]["values"]) for r in log.rows} == {"[[1, 2]]"}
    assert log.runs[0]["agent"]["class"] == "shmbench.host.agent.RemoteAgent"


@pytest.mark.parametrize(
    "argv, status, message",
    [
        (("--experiment", "exp:0.01", "--benchmark", "shmbench/Luby"), 2, "does not match"),
        (("--benchmark", "shmbench/Sigmoid", "--config", "cutoff"), 2, "KEY=VALUE"),
        (("--experiment", "exp:0.01", "--agent", "static"), 2, "--action"),
        (
            (
                "--experiment",
                "nope:1",
            ),
            2,
            "unknown experiment",
        ),
        ((), 2, "--experiment, --benchmark"),
        (("--experiment", "exp:0.01", "--limit", "disk=1G"), 2, "--limit: unknown limit(s) disk"),
        (("--experiment", "exp:0.01", "--limit", "memory=lots"), 2, "is not a size"),
    ],
)
def test_run_command_reports_bad_arguments(tmp_path, capsys, argv, status, message):
    assert (
        run_command(parse(*argv, "--runtime", "process", "--out", str(tmp_path), "--quiet", "--episodes", "1"))
        == status
    )
    assert message in capsys.readouterr().err


def test_runner_from_args_picks_the_runner(tmp_path):
    args = parse("--benchmark", "shmbench/Luby", "--seed", "3", "--runtime", "local", "--out", str(tmp_path))
    with runner_from_args(args) as runner:
        assert type(runner) is LocalRunner
        assert runner.experiment.record.benchmark == "shmbench/Luby-v0" and runner.experiment.seed_policy.base == 3
    with pytest.raises(ExperimentError, match="LocalRunner"):
        runner_from_args(args, RemoteRunner)


def test_run_limits_bind_the_server(tmp_path):
    """--limit reaches the server: it runs in a pids-limited cgroup (or under RLIMIT_NPROC)."""
    from shmbench.runtimes.limits import Limits, enforcement

    args = parse(
        "--experiment",
        "exp:0.01",
        "--runtime",
        "process",
        "--limit",
        "pids=64",
        "--limit",
        "memory=1G",
        "--out",
        str(tmp_path),
    )
    with runner_from_args(args) as runner:
        assert runner.client.runtime.limits == Limits(memory=1 << 30, pids=64)
        pid = runner.client.server_info["pid"]
        if enforcement()["pids"].startswith("cgroup v1"):
            line = next(ln for ln in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ":pids:" in ln)
            assert Path(f"/sys/fs/cgroup/pids{line.split(':', 2)[2]}/pids.max").read_text().strip() == "64"
        else:
            assert "Max processes             64" in Path(f"/proc/{pid}/limits").read_text()
    local = parse("--experiment", "exp:0.01", "--runtime", "local", "--limit", "pids=64", "--out", str(tmp_path))
    with pytest.raises(ExperimentError, match="--runtime local runs none"):
        runner_from_args(local)


def test_ctrl_c_in_run_names_the_log_and_marks_its_end(tmp_path):
    """SIGINT mid-run: exit 130, the finished episodes and the log's path on stderr, and
    the log closed with an end record that says it was interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shmbench",
            "run",
            "--benchmark",
            "CartPole-v1",
            "--runtime",
            "process",
            "--episodes",
            "100000",
            "--seed",
            "1",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SHMBENCH_CACHE_DIR": str(tmp_path / "cache")},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # a few episodes in: the log has their last rows
            logs = list(out.glob("*.jsonl")) if out.exists() else []
            text = logs[0].read_text() if logs else ""
            if text.count('"terminated":true') + text.count('"truncated":true') >= 3:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the run logged no finished episodes within 60 s")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    (path,) = logs
    assert f"log {path}" in err and "interrupted after " in err, err
    assert "Traceback" not in err
    done = int(err.split("interrupted after ")[1].split()[0])
    log = read_log(path)
    assert log.complete and log.end["interrupted"] is True
    assert log.end["episodes"] == done >= 3


def test_warnings_are_one_clean_line_and_progress_bars_draw_no_frames_into_a_pipe(tmp_path, monkeypatch):
    """The process runtime with a pinned image warns, as one line with no source line; the
    image's pull and hashing draw no tqdm frames when stderr is not a terminal."""
    import os
    import subprocess
    import sys

    records, _digest = user_record(tmp_path, b"not really a SIF, but pinned\n" * 50_000)
    monkeypatch.setenv("SHMBENCH_EXPERIMENTS", str(records))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmbench",
            "run",
            "--experiment",
            "exp:0.01",
            "--runtime",
            "process",
            "--episodes",
            "1",
            "--out",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr
    warning = [line for line in out.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1, out.stderr
    assert warning[0].startswith("shmbench: warning: image ") and "process runtime runs the env" in warning[0]
    assert "RuntimeWarning" not in out.stderr and "warnings.warn" not in out.stderr
    assert "\r" not in out.stderr and "%|" not in out.stderr, out.stderr  # no progress frames
