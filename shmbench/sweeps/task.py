"""One sweep task, run by ``python -m shmbench.sweeps.task DIR ID`` (the local pool and
the Slurm array script both start it this way).

A task is idempotent: it skips itself when its done marker vouches for its log, claims
itself with a running marker, works in node-local scratch (``$TMPDIR``, which Slurm's
``job_container/tmpfs`` makes private to the job), and only when the run finished whole
publishes the log into ``DIR/logs/`` (copied next to its final name, fsynced, renamed over
it) and then writes the done marker. Killed anywhere before that, it leaves no log that
counts and the next attempt redoes it; killed after, the next attempt finds it done. So
every (experiment, seed) ends up done exactly once however often it is started.

SIGTERM (``scancel``, preemption, the time limit) stops the run cleanly: the env closes,
the failed marker says why, scratch is removed; a SIGKILL leaves a running marker whose
owner is dead, which ``shmbench status`` reports as failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from shmbench.errors import ExperimentError
from shmbench.experiments.runner import LocalRunner, RemoteRunner
from shmbench.logs import timestamp
from shmbench.sweeps.files import fsync_dir, read_json, write_json_atomic
from shmbench.sweeps.plan import Plan, Task, read_plan
from shmbench.sweeps.state import file_sha256, is_done, marker, owner_alive, owner_record

__all__ = ["run_task", "main"]


class Terminated(BaseException):
    """SIGTERM arrived: stop the run (a BaseException, so no ``except Exception`` in the
    episode loop swallows it)."""


class _SweepHeader:
    """Adds the sweep's task and the log's final path to a runner's log header."""

    sweep_info: dict[str, Any] = {}

    def header(self) -> dict[str, Any]:
        header = super().header()  # type: ignore[misc]  # a mixin ahead of a Runner
        header["sweep"] = self.sweep_info
        return header


class _SweepRemoteRunner(_SweepHeader, RemoteRunner):
    pass


class _SweepLocalRunner(_SweepHeader, LocalRunner):
    pass


def _runner(plan: Plan, task: Task, log_path: Path) -> _SweepLocalRunner | _SweepRemoteRunner:
    exp = plan.experiments[task.experiment]
    image = exp.image or {}
    ref = image.get("ref")  # None for an image built from its recipe: found in the cache
    common: dict[str, Any] = dict(
        config=plan.config or None,
        seed=task.seed,
        image=ref,
        image_digest=image.get("digest") if ref is not None else None,
        log_dir=None,
        log_path=log_path,
    )
    runner: _SweepLocalRunner | _SweepRemoteRunner
    if plan.runtime == "local":
        runner = _SweepLocalRunner(None, exp.identifier, **common)
    else:
        # offline: the submitting host pulled and verified every image into the cache
        runner = _SweepRemoteRunner(None, exp.identifier, runtime=plan.runtime, offline=True, progress=False, **common)
    found = (runner.experiment.base or runner.experiment.record).canonical_hash()
    if found != exp.record_hash:
        runner.close()
        raise ExperimentError(
            f"experiment {exp.identifier}: its record changed since the sweep was planned "
            f"(hash {found[:19]}..., the plan pinned {exp.record_hash[:19]}...); start a new sweep"
        )
    return runner


def _agent(plan: Plan, runner: LocalRunner | RemoteRunner) -> Any:
    """The agent ``shmbench run --agent ...`` builds, for the same seeds the same one."""
    from shmbench.agents import derived_seed, make_agent

    env = runner.get_environment()
    spec = dict(plan.agent)
    if spec["type"] == "random" and spec.get("seed") is None:
        spec["seed"] = derived_seed(runner.experiment.seed_policy.base)
    return make_agent({**spec, "action_space": env.action_space})


def _claim(plan: Plan, task: Task) -> int | None:
    """Write this process's running marker; None when a live owner already holds the task."""
    path = marker(plan, task, "running")
    previous = read_json(path)
    attempt = 1
    if previous is not None:
        if owner_alive(previous, None) and previous.get("pid") != os.getpid():
            return None
        attempt = int(previous.get("attempt", 0) or 0) + 1
    failed = read_json(marker(plan, task, "failed"))
    if failed is not None:
        attempt = max(attempt, int(failed.get("attempt", 0) or 0) + 1)
    write_json_atomic(path, owner_record(attempt))
    return attempt


def _publish(plan: Plan, task: Task, scratch_log: Path, attempt: int) -> None:
    """Copy the finished log next to its final name, fsync, rename it over the final name,
    then write the done marker (in this order: a done marker always has its log)."""
    final = plan.log_path(task)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.{socket.gethostname()}.{os.getpid()}.partial")
    with open(scratch_log, "rb") as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(partial, final)
    fsync_dir(final.parent)
    size, digest = file_sha256(final)
    write_json_atomic(
        marker(plan, task, "done"),
        {
            "task": task.id,
            "log": str(final),
            "size": size,
            "sha256": digest,
            "finished_at": timestamp(),
            "attempt": attempt,
            **{k: v for k, v in owner_record(attempt).items() if k in ("host", "slurm_job")},
        },
    )


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def run_task(plan: Plan, task_id: str) -> int:
    """Run one task to its done marker; the exit status (0 done or skipped, 1 failed,
    143 terminated)."""
    task = plan.task(task_id)
    if is_done(plan, task):
        print(f"shmbench task {task.id}: already done, skipped", file=sys.stderr)
        return 0
    attempt = _claim(plan, task)
    if attempt is None:
        print(f"shmbench task {task.id}: running elsewhere, skipped", file=sys.stderr)
        return 0

    def on_term(signum: int, frame: object) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    scratch = Path(tempfile.mkdtemp(prefix=f"shmbench-{task.id}-", dir=os.environ.get("TMPDIR") or None))
    status = 1
    try:
        log = scratch / f"{task.id}.jsonl"
        runner = _runner(plan, task, log)
        runner.sweep_info = {
            "directory": str(plan.directory),
            "task": task.id,
            "attempt": attempt,
            "final_path": str(plan.log_path(task)),
        }
        with runner:
            agent = _agent(plan, runner)
            runner.run(agent, plan.episodes)
        _publish(plan, task, log, attempt)
        _unlink(marker(plan, task, "failed"))
        status = 0
    except Terminated:
        _fail(plan, task, attempt, "terminated by SIGTERM (scancel, preemption or the time limit)")
        status = 143
    except KeyboardInterrupt:
        _fail(plan, task, attempt, "interrupted (Ctrl-C)")
        status = 130
    except Exception as exc:  # a task reports every failure in its marker
        _fail(plan, task, attempt, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        print(f"shmbench task {task.id}: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        _unlink(marker(plan, task, "running"))
        shutil.rmtree(scratch, ignore_errors=True)
    return status


def _fail(plan: Plan, task: Task, attempt: int, error: str, trace: str = "") -> None:
    record = {"task": task.id, "error": error, "attempt": attempt, "failed_at": timestamp(), **owner_record(attempt)}
    if trace:
        record["traceback"] = trace[-8000:]
    write_json_atomic(marker(plan, task, "failed"), record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shmbench.sweeps.task", description="Run sweep tasks.")
    parser.add_argument("directory", help="the sweep's output directory (holds plan.json)")
    parser.add_argument("tasks", nargs="*", help="task ids to run, one after another")
    parser.add_argument("--from-array", nargs="+", metavar="ID", help="task ids, of which --index picks one")
    parser.add_argument("--index", type=int, help="the index into --from-array ($SLURM_ARRAY_TASK_ID)")
    args = parser.parse_args(argv)
    try:
        plan = read_plan(args.directory)
        ids = list(args.tasks)
        if args.from_array:
            if args.index is None or not 0 <= args.index < len(args.from_array):
                parser.error(f"--index {args.index} is outside the {len(args.from_array)} ids of --from-array")
            ids.append(args.from_array[args.index])
        status = 0
        for task_id in ids:
            status = max(status, run_task(plan, task_id))
        return status
    except ExperimentError as exc:
        print(f"shmbench task: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
