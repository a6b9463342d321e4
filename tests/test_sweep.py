"""Sweeps (shmbench.sweeps, shmbench sweep/status/resume/collect) with the local executor:
real task processes, real bwrap servers, real kills. The Slurm executor's tests, on a real
cluster on 127.0.0.1, are in test_sweep_slurm.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from run_helpers import BWRAP_SKIP, shmbench
from sweep_helpers import EXPERIMENTS, LUBY_RECORD, comparable, snapshot

from shmbench.errors import ExperimentError
from shmbench.logs import read_log
from shmbench.sweeps import collect, parse_seeds, read_plan, resume, status, sweep, task_statuses
from shmbench.sweeps.plan import make_plan

pytestmark = [
    pytest.mark.usefixtures("isolated"),
    pytest.mark.skipif(BWRAP_SKIP is not None, reason=str(BWRAP_SKIP)),
]


def test_seed_lists():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5, 1-2,5,2") == [5, 1, 2]
    for bad in ("3-1", "x", "1-", "", "0-1000000000"):
        with pytest.raises(ExperimentError):
            parse_seeds(bad)


def test_a_local_sweep_runs_every_task_once_and_a_rerun_does_nothing(tmp_path, sweep_records):
    out = tmp_path / "sweep"
    result = sweep(EXPERIMENTS, "0-7", episodes=3, out=out, runtime="bwrap")
    assert sorted(result["exit_codes"].values()) == [0] * 16
    assert status(out) == {"done": 16, "running": 0, "failed": 0, "pending": 0}
    plan = read_plan(out)
    assert [t.id for t in plan.tasks][:2] == ["exp-0.01-seed0", "exp-0.01-seed1"]
    assert plan.experiments[0].record_hash.startswith("sha256:")
    logs = sorted((out / "logs").glob("*.jsonl"))
    assert len(logs) == 16 and not list((out / "logs").glob(".*"))  # no partial copies left
    log = read_log(out / "logs" / "exp-luby-test-seed5.jsonl")
    assert log.header["sweep"]["final_path"] == str(out / "logs" / "exp-luby-test-seed5.jsonl")
    assert log.header["experiment_identifier"] == "exp:luby-test" and log.header["overrides"] == {"seed": 5}
    assert log.header["runtime"]["name"] == "bwrap"
    assert log.end["episodes"] == 3

    before = snapshot(out)
    again = sweep(EXPERIMENTS, "0-7", episodes=3, out=out, runtime="bwrap")
    assert again["submitted"] == [] and len(again["skipped"]) == 16
    assert snapshot(out) == before

    # the table of runs
    rows = collect(out)
    assert len(rows) == 16 and {r["state"] for r in rows} == {"done"}
    row = next(r for r in rows if r["task"] == "exp-0.01-seed2")
    assert row["episodes"] == 3 and row["steps"] == 30 and row["log"].endswith("exp-0.01-seed2.jsonl")
    assert row["mean_return"] == pytest.approx(sum(read_log(row["log"]).end["episode_rewards"]) / 3)


def test_a_sweep_task_logs_what_shmbench_run_logs(tmp_path, sweep_records):
    out = tmp_path / "sweep"
    sweep(["exp:0.01"], "4", episodes=2, out=out, runtime="bwrap")
    proc = shmbench(
        "run", "--experiment", "exp:0.01", "--seed", "4", "--episodes", "2",
        "--runtime", "bwrap", "--out", str(tmp_path / "run"), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (run_log,) = (tmp_path / "run").glob("*.jsonl")
    assert comparable(out / "logs" / "exp-0.01-seed4.jsonl") == comparable(run_log)


def test_resume_redoes_only_the_task_whose_log_is_gone_or_changed(tmp_path, sweep_records):
    out = tmp_path / "sweep"
    sweep(["exp:0.01"], "0-3", episodes=2, out=out, runtime="process")
    before = snapshot(out)
    (out / "logs" / "exp-0.01-seed1.jsonl").unlink()
    with open(out / "logs" / "exp-0.01-seed2.jsonl", "a") as f:
        f.write("\n")  # changed after publishing: its done marker no longer vouches for it
    assert status(out) == {"done": 2, "running": 0, "failed": 0, "pending": 2}
    result = resume(out)
    assert sorted(result["submitted"]) == ["exp-0.01-seed1", "exp-0.01-seed2"]
    after = snapshot(out)
    assert after["exp-0.01-seed0.jsonl"] == before["exp-0.01-seed0.jsonl"]
    assert after["exp-0.01-seed3.jsonl"] == before["exp-0.01-seed3.jsonl"]
    assert after["exp-0.01-seed2.jsonl"] != before["exp-0.01-seed2.jsonl"]
    assert status(out)["done"] == 4
    done = json.loads((out / "state" / "exp-0.01-seed1.done").read_text())
    assert done["attempt"] == 1 and done["sha256"].startswith("sha256:")


def test_a_task_killed_mid_run_leaves_nothing_that_counts_and_resume_redoes_it(tmp_path, sweep_records):
    out = tmp_path / "long"
    # one long episode (~3 s), so the kill lands mid-run
    plan = make_plan(out, ["exp:0.01"], [0], episodes=1, runtime="bwrap", config={"cutoff": 30000})
    plan.write()
    task = plan.tasks[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmbench.sweeps.task", str(out), task.id],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    running = out / "state" / f"{task.id}.running"
    deadline = time.monotonic() + 60
    while not running.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running.exists()
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    (st,) = task_statuses(out)
    assert st.state == "failed" and "died without a word" in st.detail
    assert not (out / "logs" / f"{task.id}.jsonl").exists()

    # SIGTERM (what scancel sends): the task stops cleanly and says why
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmbench.sweeps.task", str(out), task.id],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not running.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.terminate()
    assert proc.wait(timeout=30) == 143
    failed = json.loads((out / "state" / f"{task.id}.failed").read_text())
    assert "SIGTERM" in failed["error"] and failed["attempt"] == 2
    assert not running.exists() and not (out / "logs" / f"{task.id}.jsonl").exists()

    resumed = resume(out)
    assert resumed["exit_codes"] == {task.id: 0}
    log = read_log(out / "logs" / f"{task.id}.jsonl")
    assert log.complete and log.end["steps"] == 30000 and log.header["sweep"]["attempt"] == 3
    assert not (out / "state" / f"{task.id}.failed").exists()


def test_a_sweep_refuses_another_sweeps_directory_and_a_changed_record(tmp_path, sweep_records):
    out = tmp_path / "sweep"
    sweep(["exp:luby-test"], "0", episodes=1, out=out, runtime="process")
    with pytest.raises(ExperimentError, match="holds a different sweep"):
        sweep(["exp:luby-test"], "0-1", episodes=1, out=out, runtime="process")
    # the record changes under a planned sweep: its tasks refuse instead of logging another experiment
    (out / "logs" / "exp-luby-test-seed0.jsonl").unlink()
    (sweep_records / "luby.toml").write_text(LUBY_RECORD.replace('log = ["reward", "action"]', 'log = ["reward"]'))
    result = resume(out)
    assert result["exit_codes"] == {"exp-luby-test-seed0": 1}
    (st,) = task_statuses(out)
    assert st.state == "failed" and "record changed since the sweep was planned" in st.detail


def test_the_command_line(tmp_path, sweep_records):
    out = tmp_path / "cli"

    p = shmbench(
        "sweep", "--experiment", "exp:0.01", "--seeds", "0-1", "--episodes", "2", "--out", str(out), timeout=300
    )
    assert p.returncode == 0, p.stderr
    assert "2 task(s), 0 done or running, 2 started" in p.stdout
    p = shmbench("status", str(out))
    assert p.returncode == 0 and p.stdout.startswith("2 done, 0 running, 0 failed, 0 pending of 2 task(s)")
    p = shmbench("collect", str(out), "--format", "csv")
    assert p.returncode == 0 and p.stdout.splitlines()[0].startswith("task,experiment,benchmark,seed,state")
    assert len(p.stdout.splitlines()) == 3
    p = shmbench("collect", str(out))
    assert "exp-0.01-seed1  done" in p.stdout
    p = shmbench("resume", str(out))
    assert p.returncode == 0 and "2 done or running, 0 started" in p.stdout
    p = shmbench("status", str(tmp_path / "nothing"))
    assert p.returncode == 1 and "holds no sweep" in p.stderr and "Traceback" not in p.stderr
    p = shmbench(
        "sweep",
        "--experiment",
        "exp:0.01",
        "--seeds",
        "0-6",
        "--out",
        str(tmp_path / "s"),
        "--executor",
        "local",
        "--print-only",
    )
    assert p.returncode == 0 and p.stdout.count("-m shmbench.sweeps.task") == 7


@pytest.mark.slow  # builds (or reuses) the light reference image
def test_eight_tasks_on_one_uncached_image_pull_it_once_on_the_submitting_host(
    tmp_path, sweep_records, light_sif, monkeypatch
):
    import hashlib

    from registry import FileServer

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    data = light_sif.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    server = FileServer({"/light.sif": data})
    try:
        out = tmp_path / "sweep"
        result = sweep(
            ["exp:0.01"], "0-7", episodes=2, out=out, runtime="bwrap", max_parallel=8,
            image=server.url("/light.sif"), image_digest=digest,
        )  # fmt: skip
    finally:
        server.close()
    assert server.gets == {"/light.sif": 1}  # the plan pulled it; the 8 tasks ran offline
    assert sorted(result["exit_codes"].values()) == [0] * 8
    assert read_plan(out).experiments[0].image == {"ref": server.url("/light.sif"), "digest": digest}
    for log in sorted((out / "logs").glob("*.jsonl")):
        header = read_log(log).header
        assert header["image_digest"] == digest and header["runtime"]["image_used"] is True, header["runtime"]
