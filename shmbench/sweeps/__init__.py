"""Sweeps: experiments x seeds as independent, resumable tasks, on this machine or Slurm.

    from shmbench.sweeps import sweep, status, resume, collect

    sweep(["exp:0.01"], range(10), episodes=20, out="runs/sig")       # local pool
    sweep(["exp:0.01"], range(100), episodes=20, out="/shared/sig",
          executor="slurm", slurm=SlurmOptions(time="00:10:00", max_parallel=50))
    status("/shared/sig")     # {"done": 93, "running": 5, "failed": 1, "pending": 1}
    resume("/shared/sig")     # submits the 2 that are neither done nor running
    collect("/shared/sig")    # one row per run (a DataFrame with as_dataframe=True)

The output directory holds everything: ``plan.json`` (:mod:`~shmbench.sweeps.plan`), the
published logs in ``logs/``, the markers in ``state/`` (:mod:`~shmbench.sweeps.state`), the
tasks' output in ``output/`` (local) or ``slurm/`` (the array scripts, ``jobs.jsonl`` and
Slurm's output files). Each task is one ``python -m shmbench.sweeps.task`` process
(:mod:`~shmbench.sweeps.task`); :mod:`~shmbench.sweeps.local` and
:mod:`~shmbench.sweeps.slurm` only decide where those processes start.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from shmbench.errors import ExperimentError
from shmbench.sweeps.plan import Plan, make_plan, parse_seeds, read_plan
from shmbench.sweeps.slurm import SlurmOptions, array_scripts, max_array_size, scheduler_view, submit
from shmbench.sweeps.state import STATES, TaskStatus, done_record, sweep_status

__all__ = [
    "Plan",
    "SlurmOptions",
    "SweepResult",
    "TaskStatus",
    "sweep",
    "resume",
    "status",
    "task_statuses",
    "collect",
    "parse_seeds",
    "read_plan",
]

EXECUTORS = ("local", "slurm")


class SweepResult(dict):
    """What :func:`sweep` and :func:`resume` did: ``plan``, ``submitted`` (task ids),
    ``skipped`` (done or running), and ``exit_codes`` (local) or ``jobs`` (Slurm) or
    ``scripts`` (print-only)."""


def sweep(
    experiments: Sequence[str],
    seeds: Iterable[int] | str,
    *,
    episodes: int,
    out: str | os.PathLike[str],
    agent: dict[str, Any] | None = None,
    runtime: str = "auto",
    config: dict[str, Any] | None = None,
    image: str | None = None,
    image_digest: str | None = None,
    executor: str = "local",
    max_parallel: int | None = None,
    slurm: SlurmOptions | None = None,
    offline: bool = False,
    print_only: bool = False,
    progress: bool = False,
) -> SweepResult:
    """Plan a sweep into ``out`` and run (local) or submit (Slurm) every task not done.

    Running the same sweep into the same directory again is a rerun: done tasks are
    skipped. A different sweep into a directory that holds one is refused.
    """
    if executor not in EXECUTORS:
        raise ExperimentError(f"executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    if isinstance(seeds, str):
        seeds = parse_seeds(seeds)
    plan = make_plan(
        out,
        experiments,
        seeds,
        episodes=episodes,
        agent=agent,
        runtime=runtime,
        config=config,
        image=image,
        image_digest=image_digest,
        offline=offline,
        pull=not print_only,
        progress=progress,
    )
    if plan.path.exists():
        existing = read_plan(plan.directory)
        if not existing.same_sweep(plan):
            raise ExperimentError(
                f"{plan.directory} holds a different sweep (its plan.json); choose another --out, "
                "or continue that one with shmbench resume"
            )
        plan = existing
    elif not print_only:
        plan.write()
    return _execute(plan, executor, max_parallel=max_parallel, slurm=slurm, print_only=print_only)


def resume(
    out: str | os.PathLike[str],
    *,
    executor: str | None = None,
    max_parallel: int | None = None,
    slurm: SlurmOptions | None = None,
    print_only: bool = False,
) -> SweepResult:
    """Run or submit every task of the sweep in ``out`` that is neither done nor running
    (failed, pending, partial ones). ``executor``: by default Slurm if the sweep was ever
    submitted there, else local."""
    plan = read_plan(out)
    if executor is None:
        executor = "slurm" if (plan.directory / "slurm" / "jobs.jsonl").exists() else "local"
    return _execute(plan, executor, max_parallel=max_parallel, slurm=slurm, print_only=print_only)


def _execute(
    plan: Plan, executor: str, *, max_parallel: int | None, slurm: SlurmOptions | None, print_only: bool
) -> SweepResult:
    if executor not in EXECUTORS:
        raise ExperimentError(f"executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    scheduler = scheduler_view(plan) if executor == "slurm" or (plan.directory / "slurm").exists() else None
    statuses = sweep_status(plan, scheduler) if plan.path.exists() else []
    busy = {s.task.id for s in statuses if s.state in ("done", "running") or (s.state == "pending" and s.detail)}
    todo = [t.id for t in plan.tasks if t.id not in busy]
    result = SweepResult(plan=plan, submitted=todo, skipped=sorted(busy))
    if executor == "slurm":
        options = slurm or SlurmOptions()
        if max_parallel is not None:
            options.max_parallel = max_parallel
        if print_only:
            result["scripts"] = array_scripts(plan, todo, options, max_array_size()) if todo else []
        else:
            result["jobs"] = submit(plan, todo, options)
        return result
    if print_only:
        import shlex
        import sys

        result["scripts"] = [
            f"{shlex.quote(sys.executable)} -m shmbench.sweeps.task {shlex.quote(str(plan.directory))} {t}"
            for t in todo
        ]
        return result
    from shmbench.sweeps.local import run_local

    result["exit_codes"] = run_local(plan, todo, max_parallel=max_parallel)
    return result


def task_statuses(out: str | os.PathLike[str]) -> list[TaskStatus]:
    """Every task's state (done / running / failed / pending) and why."""
    plan = read_plan(out)
    return sweep_status(plan, scheduler_view(plan))


def status(out: str | os.PathLike[str]) -> dict[str, int]:
    """How many tasks are in each state: ``{"done": ..., "running": ..., "failed": ...,
    "pending": ...}``."""
    counts = Counter(s.state for s in task_statuses(out))
    return {state: counts.get(state, 0) for state in STATES}


def collect(out: str | os.PathLike[str], *, as_dataframe: bool = False) -> Any:
    """One row per task: its experiment, seed, state, and for done tasks the episodes,
    steps, mean and standard deviation of the episode return and the log's path.

    ``as_dataframe=True`` returns a pandas DataFrame (``pip install 'shmbench[analysis]'``);
    ``shmbench.logs.to_dataframe(DIR / "logs")`` gives every step of every run.
    """
    import numpy as np

    from shmbench.logs import read_log

    plan = read_plan(out)
    rows: list[dict[str, Any]] = []
    for st in task_statuses(out):
        task = st.task
        exp = plan.experiments[task.experiment]
        row: dict[str, Any] = {
            "task": task.id,
            "experiment": exp.identifier,
            "benchmark": exp.benchmark,
            "seed": task.seed,
            "state": st.state,
            "episodes": None,
            "steps": None,
            "mean_return": None,
            "std_return": None,
            "log": None,
        }
        if st.state == "done" and done_record(plan, task) is not None:
            path: Path = plan.log_path(task)
            log = read_log(path)
            end = log.end or {}
            returns = [float(r) for r in end.get("episode_rewards", [])]
            row.update(
                episodes=end.get("episodes"),
                steps=end.get("steps"),
                mean_return=float(np.mean(returns)) if returns else None,
                std_return=float(np.std(returns)) if returns else None,
                log=str(path),
            )
        rows.append(row)
    if as_dataframe:
        try:
            import pandas as pd  # type: ignore[import-untyped,import-not-found,unused-ignore]  # optional
        except ImportError:
            raise ImportError("collect(as_dataframe=True) needs pandas: pip install 'shmbench[analysis]'") from None
        return pd.DataFrame(rows)
    return rows
