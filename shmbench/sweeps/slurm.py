"""The Slurm executor: a sweep's tasks as job arrays submitted with ``sbatch``.

Each array element runs ``python -m shmbench.sweeps.task DIR --from-array IDS --index
$SLURM_ARRAY_TASK_ID``: the script lists the task ids itself, so a resumed sweep submits
exactly the tasks that are not done (not a range of the original indices), and the script
``--print-only`` shows is the whole story. ``MaxArraySize`` caps the array *index* (not the
count), so arrays hold at most ``MaxArraySize`` tasks, indexed from 0.

Task state never depends on the scheduler's accounting (``sacct`` answers nothing when
``slurmdbd`` is off, and a SIGKILLed job may stay UNKNOWN): the markers of
:mod:`shmbench.sweeps.state` decide, and ``squeue`` only says which of the sweep's jobs are
still queued or running. The sweep's jobs are found by name (``shmbench-<hash of DIR>``),
so ``squeue`` is never asked about job ids the controller has already forgotten.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from shmbench.errors import ExperimentError
from shmbench.logs import timestamp
from shmbench.sweeps.plan import Plan

__all__ = ["SlurmOptions", "job_name", "max_array_size", "array_scripts", "submit", "scheduler_view"]

#: Slurm's default MaxArraySize
_DEFAULT_MAX_ARRAY = 1001
#: seconds any Slurm command may take
_COMMAND_TIMEOUT = 60.0


@dataclass
class SlurmOptions:
    """What each array job asks for (``None``: the cluster's default)."""

    partition: str | None = None
    time: str | None = None
    mem: str | None = None
    cpus: int | None = None
    max_parallel: int | None = None  # the array's %N
    requeue: bool = False
    extra: list[str] = field(default_factory=list)  # further sbatch options, passed as written
    python: str = sys.executable

    def directives(self) -> list[str]:
        out = []
        if self.partition:
            out.append(f"--partition={self.partition}")
        if self.time:
            out.append(f"--time={self.time}")
        if self.mem:
            out.append(f"--mem={self.mem}")
        if self.cpus:
            out.append(f"--cpus-per-task={self.cpus}")
        # a preempted or failed node's job goes back to the queue; the task redoes itself
        out.append("--requeue" if self.requeue else "--no-requeue")
        out.extend(self.extra)
        return out


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise ExperimentError(f"the Slurm executor needs {argv[0]} on PATH (is this a Slurm login node?)")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ExperimentError(f"{' '.join(argv)} did not answer in {_COMMAND_TIMEOUT:.0f} s") from None


def job_name(plan: Plan) -> str:
    """The name every job of this sweep carries (how squeue finds them)."""
    return "shmbench-" + hashlib.sha256(str(plan.directory).encode()).hexdigest()[:12]


def max_array_size() -> int:
    """The cluster's ``MaxArraySize`` (``scontrol show config``)."""
    proc = _run(["scontrol", "show", "config"])
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.MULTILINE)
    return int(m.group(1)) if m and proc.returncode == 0 else _DEFAULT_MAX_ARRAY


def array_scripts(plan: Plan, task_ids: Sequence[str], options: SlurmOptions, max_array: int) -> list[str]:
    """The ``sbatch`` scripts for ``task_ids``: one array per ``max_array`` tasks."""
    if max_array < 1:
        raise ExperimentError(f"MaxArraySize {max_array}: this cluster runs no job arrays")
    scripts = []
    out = plan.directory / "slurm"
    for start in range(0, len(task_ids), max_array):
        chunk = list(task_ids[start : start + max_array])
        array = f"0-{len(chunk) - 1}" + (f"%{options.max_parallel}" if options.max_parallel else "")
        lines = [
            "#!/bin/bash",
            f"#SBATCH --job-name={job_name(plan)}",
            f"#SBATCH --array={array}",
            f"#SBATCH --output={out}/%A_%a.out",
            "#SBATCH --open-mode=append",
            *(f"#SBATCH {d}" for d in options.directives()),
            "",
            f"# shmbench sweep {plan.directory}: tasks {start}..{start + len(chunk) - 1} of this submission",
            "# each task skips itself when done; the markers in state/ say what happened",
            "ids=(",
            *(f"  {shlex.quote(t)}" for t in chunk),
            ")",
            f"exec {shlex.quote(options.python)} -m shmbench.sweeps.task {shlex.quote(str(plan.directory))} \\",
            '  --from-array "${ids[@]}" --index "$SLURM_ARRAY_TASK_ID"',
            "",
        ]
        scripts.append("\n".join(lines))
    return scripts


def submit(plan: Plan, task_ids: Sequence[str], options: SlurmOptions) -> list[str]:
    """Submit ``task_ids`` as job arrays; their job ids (recorded in ``DIR/slurm/jobs.jsonl``)."""
    if not task_ids:
        return []
    slurm_dir = plan.directory / "slurm"
    slurm_dir.mkdir(parents=True, exist_ok=True)
    max_array = max_array_size()
    jobs = []
    stamp = timestamp().replace(":", "").replace("-", "")[:15]
    for k, script in enumerate(array_scripts(plan, task_ids, options, max_array)):
        path = slurm_dir / f"submit-{stamp}-{k}.sh"
        path.write_text(script)
        proc = _run(["sbatch", "--parsable", str(path)])
        if proc.returncode != 0:
            raise ExperimentError(f"sbatch {path} failed: {(proc.stderr or proc.stdout).strip()[:2000]}")
        job = proc.stdout.strip().split(";")[0]
        chunk = list(task_ids[k * max_array : (k + 1) * max_array])
        with open(slurm_dir / "jobs.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"job": job, "script": str(path), "tasks": chunk, "submitted_at": timestamp()}) + "\n")
        jobs.append(job)
    return jobs


def _submissions(plan: Plan) -> dict[str, list[str]]:
    jobs: dict[str, list[str]] = {}
    path = plan.directory / "slurm" / "jobs.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return jobs
    for line in text.splitlines():
        try:
            record = json.loads(line)
            jobs[str(record["job"])] = [str(t) for t in record["tasks"]]
        except (ValueError, KeyError, TypeError):
            continue
    return jobs


def _indices(spec: str) -> list[int]:
    """``"5-9%2"`` or ``"1,3,7-8"`` -> the indices."""
    out: list[int] = []
    for part in spec.split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            out.extend(range(int(lo), int(hi if hi.isdigit() else lo) + 1))
    return out


def scheduler_view(plan: Plan) -> dict[str, str] | None:
    """The sweep's live jobs: ``"JOB_INDEX" -> state`` and ``"task:ID" -> "JOB_INDEX"``;
    None when this sweep never went to Slurm or squeue cannot be asked."""
    submissions = _submissions(plan)
    if not submissions or shutil.which("squeue") is None:
        return None
    proc = _run(["squeue", "-h", "--array", f"--name={job_name(plan)}", "-o", "%i|%T"])
    if proc.returncode != 0:
        return None
    view: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        ident, _, state = line.strip().partition("|")
        job, _, index = ident.partition("_")
        tasks = submissions.get(job)
        if tasks is None or not index:
            continue
        for i in _indices(index.strip("[]")):
            if 0 <= i < len(tasks):
                view[f"{job}_{i}"] = state
                view["task:" + tasks[i]] = f"{job}_{i}"
    return view
