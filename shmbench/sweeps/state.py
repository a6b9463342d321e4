"""A sweep's task state, kept as marker files on the (possibly shared) output directory.

Nothing about a task's state lives in the scheduler: Slurm's accounting may be off (then
``sacct`` knows nothing) and a SIGKILLed job leaves no trace there. Instead each task
leaves markers in ``DIR/state/``:

- ``ID.running`` -- claimed: host, pid (and its start time, so a reused pid is not taken
  for the owner), the Slurm job and array index when there is one;
- ``ID.done`` -- written last, after the log was published into ``DIR/logs/ID.jsonl`` by
  an atomic rename; it holds the log's size and sha256, so a log changed or truncated
  afterwards does not count as done;
- ``ID.failed`` -- the error, or the signal that stopped the task.

A task's state is derived from these and, for a claimed task, from whether its owner
lives (the scheduler's view for a Slurm job, the pid for a local one). Every marker is
written whole (a temporary file renamed over it), so a crash leaves the old marker or the
new one, never half of one; every read is bounded.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shmbench.images.locks import process_start_time
from shmbench.sweeps.files import read_json
from shmbench.sweeps.plan import Plan, Task
from shmbench.transport.session import pid_alive

__all__ = [
    "STATES",
    "TaskStatus",
    "file_sha256",
    "marker",
    "owner_record",
    "owner_alive",
    "done_record",
    "is_done",
    "task_status",
    "sweep_status",
]

#: the states ``shmbench status`` reports, in its order
STATES = ("done", "running", "failed", "pending")


def marker(plan: Plan, task: Task | str, kind: str) -> Path:
    """``DIR/state/ID.KIND`` (kind: running, done, failed)."""
    task_id = task.id if isinstance(task, Task) else task
    return plan.state_dir() / f"{task_id}.{kind}"


def owner_record(attempt: int) -> dict[str, Any]:
    """Who claims a task: this process, on this host, in this Slurm job (if any)."""
    pid = os.getpid()
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    index = os.environ.get("SLURM_ARRAY_TASK_ID")
    from shmbench.logs import timestamp

    return {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_started": process_start_time(pid),
        "slurm_job": f"{job}_{index}" if job and index is not None else job,
        "started_at": timestamp(),
        "attempt": attempt,
    }


def owner_alive(owner: Mapping[str, Any], scheduler: Mapping[str, str] | None) -> bool | None:
    """Whether a running marker's owner still runs: True, False, or None (cannot tell:
    another host, and no scheduler view covers it).

    ``scheduler`` maps Slurm job ids (``"123_4"``) to their state for the sweep's live
    jobs, or is None when the scheduler was not asked.
    """
    job = owner.get("slurm_job")
    if job and scheduler is not None:
        return str(job) in scheduler
    if owner.get("host") == socket.gethostname():
        pid = owner.get("pid")
        if not isinstance(pid, int) or pid <= 0 or not pid_alive(pid):
            return False
        # a pid reused by another process is not the owner
        return owner.get("pid_started") in (None, process_start_time(pid))
    return None


def file_sha256(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, "sha256:" + h.hexdigest()


def done_record(plan: Plan, task: Task) -> dict[str, Any] | None:
    """The done marker, if it vouches for the published log as it is now."""
    record = read_json(marker(plan, task, "done"))
    if record is None:
        return None
    log = plan.log_path(task)
    try:
        if log.is_symlink() or not log.is_file() or log.stat().st_size != record.get("size"):
            return None
        _, digest = file_sha256(log)
    except OSError:
        return None
    return record if digest == record.get("sha256") else None


def is_done(plan: Plan, task: Task) -> bool:
    return done_record(plan, task) is not None


@dataclass(frozen=True)
class TaskStatus:
    """One task's state and what it rests on."""

    task: Task
    state: str  # one of STATES
    detail: str = ""


def task_status(plan: Plan, task: Task, scheduler: Mapping[str, str] | None = None) -> TaskStatus:
    """The state of one task from its markers and, for a claimed or submitted task, the
    scheduler's view (``scheduler``: live Slurm job id -> state, task id -> job id under
    the key ``"task:" + ID``)."""
    if is_done(plan, task):
        return TaskStatus(task, "done")
    owner = read_json(marker(plan, task, "running"))
    if owner is not None:
        alive = owner_alive(owner, scheduler)
        where = f"{owner.get('host')} pid {owner.get('pid')}" + (
            f", job {owner.get('slurm_job')}" if owner.get("slurm_job") else ""
        )
        if alive is None:
            return TaskStatus(task, "running", f"claimed on {where} (not checkable from here)")
        if alive:
            return TaskStatus(task, "running", where)
        return TaskStatus(task, "failed", f"its process died without a word ({where})")
    failed = read_json(marker(plan, task, "failed"))
    job = scheduler.get("task:" + task.id) if scheduler is not None else None
    if scheduler is not None and job is not None:
        state = scheduler.get(job, "PENDING")
        if state in ("RUNNING", "COMPLETING", "CONFIGURING"):
            return TaskStatus(task, "running", f"job {job} (starting)")
        return TaskStatus(task, "pending", f"job {job} {state.lower()}")
    if failed is not None:
        return TaskStatus(task, "failed", str(failed.get("error", "failed"))[:500])
    return TaskStatus(task, "pending")


def sweep_status(plan: Plan, scheduler: Mapping[str, str] | None = None) -> list[TaskStatus]:
    """Every task's :func:`task_status`, in the plan's order."""
    return [task_status(plan, t, scheduler) for t in plan.tasks]
