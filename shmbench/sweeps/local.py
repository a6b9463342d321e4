"""The local executor: a pool of task processes on this machine, sized to its cores.

Each task runs in its own ``python -m shmbench.sweeps.task`` process -- the same entry
point a Slurm array starts -- so a crash, a leak or a signal in one task cannot take the
others (or the submitting process) with it, and local and Slurm sweeps run one code path.
Ctrl-C (or any exception here) stops every running task: SIGTERM to the task,
SIGKILL to its process group after a grace period; the tasks' markers then say they were terminated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from shmbench.sweeps.plan import Plan

__all__ = ["run_local", "default_parallel"]

#: seconds a task gets between SIGTERM and SIGKILL when the pool stops
_GRACE = 10.0


def default_parallel() -> int:
    """One task per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run_local(
    plan: Plan,
    task_ids: Sequence[str],
    *,
    max_parallel: int | None = None,
    on_finish: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Run ``task_ids`` with at most ``max_parallel`` at a time; each task's exit status.

    A task's output (shmbench's messages; the server's own output is in the log header's
    capped server log) goes to ``DIR/output/ID.out``, appended per attempt.
    """
    out_dir = plan.directory / "output"
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    live: dict[str, subprocess.Popen] = {}
    stopping = threading.Event()
    results: dict[str, int] = {}

    def one(task_id: str) -> int:
        if stopping.is_set():
            return 130
        with open(out_dir / f"{task_id}.out", "ab") as out:
            with lock:
                if stopping.is_set():
                    return 130
                proc = subprocess.Popen(
                    [sys.executable, "-m", "shmbench.sweeps.task", str(plan.directory), task_id],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group: a terminal's Ctrl-C reaches us, we stop it
                )
                live[task_id] = proc
            try:
                status = proc.wait()
            finally:
                with lock:
                    live.pop(task_id, None)
        results[task_id] = status
        if on_finish is not None:
            on_finish(task_id, status)
        return status

    pool = ThreadPoolExecutor(max_workers=max_parallel or default_parallel(), thread_name_prefix="shmbench-sweep")
    try:
        futures = [pool.submit(one, t) for t in task_ids]
        for f in futures:
            f.result()
    except BaseException:
        stopping.set()
        _stop(live, lock)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _stop(live: dict[str, subprocess.Popen], lock: threading.Lock) -> None:
    with lock:
        procs = list(live.values())
    for p in procs:
        # the task alone: it closes its env and says so in its marker; its servers die
        # with it (their guard watches it), so the group gets only the SIGKILL below
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=_GRACE)
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait(timeout=_GRACE)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
