"""The Slurm executor on a real Slurm cluster on 127.0.0.1 (tests/slurm_cluster.py: munged,
slurmctld, two slurmd nodes, MaxArraySize=5, accounting off), with real bwrap servers in
every task."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import slurm_cluster
from run_helpers import BWRAP_SKIP
from sweep_helpers import EXPERIMENTS, comparable, snapshot

from shmbench.logs import read_log
from shmbench.sweeps import SlurmOptions, resume, status, sweep, task_statuses

pytestmark = [
    pytest.mark.slow,  # about 2 minutes
    pytest.mark.usefixtures("isolated"),
    pytest.mark.skipif(BWRAP_SKIP is not None, reason=str(BWRAP_SKIP)),
    pytest.mark.skipif(
        slurm_cluster.missing() is not None and slurm_cluster.attached() is None, reason=str(slurm_cluster.missing())
    ),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = slurm_cluster.attached()
    if c is not None:  # started by run-tests.sh, stopped by it
        yield c
        return
    c = slurm_cluster.start(tmp_path_factory.mktemp("slurm") / "cluster")
    try:
        yield c
    finally:
        c.stop()
        assert all(p.poll() is not None for p in c.procs)  # no daemon left running


@pytest.fixture
def slurm(cluster, monkeypatch: pytest.MonkeyPatch):
    for key, value in cluster.env.items():
        monkeypatch.setenv(key, value)
    yield cluster
    # a test that failed half-way must not leave its jobs to the next
    cluster.run("scancel", "--full", "--user=root", check=False)
    cluster.wait_idle(60)


def jobs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "slurm" / "jobs.jsonl").read_text().splitlines()]


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def test_a_slurm_sweep_logs_what_the_local_one_logs_in_arrays_under_max_array_size(tmp_path, sweep_records, slurm):
    local, remote = tmp_path / "local", tmp_path / "slurm"
    sweep(EXPERIMENTS, "0-7", episodes=3, out=local, runtime="bwrap")
    shown = sweep(
        EXPERIMENTS, "0-7", episodes=3, out=remote, runtime="bwrap", executor="slurm", print_only=True,
        slurm=SlurmOptions(time="00:05:00", max_parallel=3, extra=["--comment=shmbench-test"]),
    )  # fmt: skip
    assert len(shown["scripts"]) == 4  # 16 tasks, at most MaxArraySize (5) per array
    first = shown["scripts"][0]
    assert "#SBATCH --array=0-4%3" in first and "#SBATCH --time=00:05:00" in first
    assert "#SBATCH --comment=shmbench-test" in first and "'exp-0.01-seed4'" not in first
    assert "  exp-0.01-seed4\n" in first and "#SBATCH --array=0-0%3" in shown["scripts"][3]
    assert not remote.exists()  # print-only submits and writes nothing

    result = sweep(EXPERIMENTS, "0-7", episodes=3, out=remote, runtime="bwrap", executor="slurm")
    assert len(result["jobs"]) == 4 and [len(j["tasks"]) for j in jobs(remote)] == [5, 5, 5, 1]
    slurm.wait_idle(300)
    assert status(remote) == {"done": 16, "running": 0, "failed": 0, "pending": 0}, task_statuses(remote)
    for log in sorted((local / "logs").glob("*.jsonl")):
        theirs = remote / "logs" / log.name
        assert comparable(theirs) == comparable(log), log.name
        assert read_log(theirs).header["sweep"]["final_path"] == str(theirs)
    done = json.loads((remote / "state" / "exp-luby-test-seed7.done").read_text())
    assert done["slurm_job"].split("_")[0] in {j["job"] for j in jobs(remote)}

    before = snapshot(remote)
    again = sweep(EXPERIMENTS, "0-7", episodes=3, out=remote, runtime="bwrap", executor="slurm")
    assert again["jobs"] == [] and len(jobs(remote)) == 4
    assert snapshot(remote) == before

    # one log lost: resume submits that task alone (one array of one)
    (remote / "logs" / "exp-0.01-seed3.jsonl").unlink()
    resumed = resume(remote)
    assert resumed["submitted"] == ["exp-0.01-seed3"] and jobs(remote)[-1]["tasks"] == ["exp-0.01-seed3"]
    slurm.wait_idle(120)
    assert status(remote)["done"] == 16
    after = snapshot(remote)
    assert {k: v for k, v in after.items() if k != "exp-0.01-seed3.jsonl"} == {
        k: v for k, v in before.items() if k != "exp-0.01-seed3.jsonl"
    }


def test_scancel_mid_run_then_resume_does_every_task_exactly_once(tmp_path, sweep_records, slurm):
    out = tmp_path / "sweep"
    # episodes of ~3 s, so that a cancel lands mid-run
    sweep(["exp:0.01"], "0-3", episodes=1, out=out, runtime="bwrap", config={"cutoff": 30000}, executor="slurm")
    victim = out / "state" / "exp-0.01-seed0.running"
    wait_for(victim.exists, 120, "task seed0 never started")
    owner = json.loads(victim.read_text())
    assert status(out)["running"] >= 1
    slurm.run("scancel", owner["slurm_job"])
    slurm.wait_idle(300)
    states = {st.task.id: st for st in task_statuses(out)}
    assert states["exp-0.01-seed0"].state == "failed", states
    assert sum(st.state == "done" for st in states.values()) == 3
    assert not (out / "logs" / "exp-0.01-seed0.jsonl").exists()

    result = resume(out)
    assert result["submitted"] == ["exp-0.01-seed0"]
    slurm.wait_idle(300)
    assert status(out) == {"done": 4, "running": 0, "failed": 0, "pending": 0}
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert logs == [f"exp-0.01-seed{s}.jsonl" for s in range(4)]  # one each, no partial copies
    for name in logs:
        log = read_log(out / "logs" / name)
        assert log.complete and log.end["steps"] == 30000 and "interrupted" not in log.end
    assert read_log(out / "logs" / "exp-0.01-seed0.jsonl").header["sweep"]["attempt"] == 2


def test_a_requeued_task_redoes_itself(tmp_path, sweep_records, slurm):
    out = tmp_path / "sweep"
    sweep(
        ["exp:0.01"], "0-1", episodes=1, out=out, runtime="bwrap", config={"cutoff": 30000}, executor="slurm",
        slurm=SlurmOptions(requeue=True),
    )  # fmt: skip
    victim = out / "state" / "exp-0.01-seed1.running"
    wait_for(victim.exists, 120, "task seed1 never started")
    job = json.loads(victim.read_text())["slurm_job"]
    time.sleep(0.5)
    slurm.run("scontrol", "requeue", job)
    slurm.wait_idle(300)
    assert status(out) == {"done": 2, "running": 0, "failed": 0, "pending": 0}, task_statuses(out)
    log = read_log(out / "logs" / "exp-0.01-seed1.jsonl")
    assert log.complete and log.end["steps"] == 30000 and log.header["sweep"]["attempt"] >= 2
