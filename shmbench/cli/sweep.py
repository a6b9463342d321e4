"""``shmbench sweep``, ``status``, ``resume``, ``collect``: experiments x seeds as tasks,
on this machine or Slurm (the work is done by :mod:`shmbench.sweeps`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shmbench.cli.util import add_command
from shmbench.errors import ShmbenchError

__all__ = ["register"]


def _add_executor_arguments(p: argparse.ArgumentParser, default: str | None) -> None:
    g = p.add_argument_group("where tasks run")
    g.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default=default,
        help="local: a pool of task processes here; slurm: job arrays through sbatch"
        + ("" if default else " (default: slurm if the sweep was submitted there, else local)"),
    )
    g.add_argument(
        "--max-parallel",
        type=int,
        metavar="N",
        help="tasks at once (local default: one per core; slurm: the array's %%N, default unlimited)",
    )
    g.add_argument("--slurm-partition", metavar="NAME", help="sbatch --partition")
    g.add_argument("--slurm-time", metavar="TIME", help="sbatch --time per task, e.g. 00:30:00")
    g.add_argument("--slurm-mem", metavar="SIZE", help="sbatch --mem per task, e.g. 4G")
    g.add_argument("--slurm-cpus", type=int, metavar="N", help="sbatch --cpus-per-task")
    g.add_argument("--requeue", action="store_true", help="let Slurm requeue preempted tasks (they redo themselves)")
    g.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="a further sbatch option, passed as written (repeatable), e.g. --sbatch=--account=rl",
    )
    g.add_argument("--print-only", action="store_true", help="show the task commands or sbatch scripts, run nothing")


def _slurm_options(args: argparse.Namespace) -> Any:
    from shmbench.sweeps import SlurmOptions

    return SlurmOptions(
        partition=args.slurm_partition,
        time=args.slurm_time,
        mem=args.slurm_mem,
        cpus=args.slurm_cpus,
        max_parallel=args.max_parallel,
        requeue=args.requeue,
        extra=list(args.sbatch),
    )


def _report(result: dict, executor: str) -> None:
    plan = result["plan"]
    if "scripts" in result:
        print(
            "\n\n".join(result["scripts"]) if result["scripts"] else "# nothing to run: every task is done or running"
        )
        return
    todo, skipped = result["submitted"], result["skipped"]
    print(f"sweep {plan.directory}: {len(plan.tasks)} task(s), {len(skipped)} done or running, {len(todo)} started")
    if result.get("jobs"):
        print(f"submitted job array(s) {', '.join(result['jobs'])}; follow with: shmbench status {plan.directory}")
    if "exit_codes" in result:
        failed = [t for t, rc in result["exit_codes"].items() if rc != 0]
        if failed:
            print(f"{len(failed)} task(s) failed: {', '.join(failed[:10])}{' ...' if len(failed) > 10 else ''}")
            print(f"see shmbench status {plan.directory}; shmbench resume {plan.directory} retries them")


def sweep_command(args: argparse.Namespace) -> int:
    from shmbench.cli.run import parse_config_items
    from shmbench.sweeps import sweep

    agent: dict[str, Any] = {"type": args.agent}
    if args.agent == "static":
        if args.action is None:
            print("shmbench sweep: error: --agent static needs --action JSON", file=sys.stderr)
            return 2
        agent["action"] = json.loads(args.action)
    result = sweep(
        args.experiment,
        args.seeds,
        episodes=args.episodes,
        out=args.out,
        agent=agent,
        runtime=args.runtime,
        config=parse_config_items(args.config) or None,
        image=args.image,
        image_digest=args.image_digest,
        executor=args.executor,
        max_parallel=args.max_parallel,
        slurm=_slurm_options(args),
        offline=args.offline,
        print_only=args.print_only,
        progress=sys.stderr.isatty(),
    )
    _report(result, args.executor)
    return 1 if any(rc != 0 for rc in result.get("exit_codes", {}).values()) else 0


def resume_command(args: argparse.Namespace) -> int:
    from shmbench.sweeps import resume

    result = resume(
        args.directory,
        executor=args.executor,
        max_parallel=args.max_parallel,
        slurm=_slurm_options(args),
        print_only=args.print_only,
    )
    _report(result, args.executor or "")
    return 1 if any(rc != 0 for rc in result.get("exit_codes", {}).values()) else 0


def status_command(args: argparse.Namespace) -> int:
    from shmbench.sweeps import task_statuses
    from shmbench.sweeps.state import STATES as STATES_ORDER

    statuses = task_statuses(args.directory)
    counts = {s: sum(1 for t in statuses if t.state == s) for s in STATES_ORDER}
    print(", ".join(f"{n} {state}" for state, n in counts.items()) + f" of {len(statuses)} task(s)")
    for st in statuses:
        if args.all or st.state in ("running", "failed"):
            print(f"  {st.state:8} {st.task.id}" + (f"  {st.detail}" if st.detail else ""))
    return 0 if counts["failed"] == 0 else 1


def collect_command(args: argparse.Namespace) -> int:
    from shmbench.sweeps import collect

    rows = collect(args.directory)
    if args.format == "json":
        print(json.dumps(rows, indent=1))
        return 0
    if args.format == "csv":
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["task"])
        writer.writeheader()
        writer.writerows(rows)
        return 0
    cols = ("task", "state", "episodes", "steps", "mean_return", "std_return")
    table = [cols] + [
        tuple("-" if r[c] is None else f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in cols)
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for n, row in enumerate(table):
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def _guarded(func: Any, name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except (ShmbenchError, OSError) as exc:
            print(f"shmbench {name}: error: {exc}", file=sys.stderr)
            return 1

    return run


def register(sub: argparse._SubParsersAction) -> None:
    from shmbench.cli.run import RUNTIME_CHOICES

    p = add_command(
        sub,
        "sweep",
        help="run experiments x seeds as resumable tasks, here or on Slurm",
        description=(
            "Plan a sweep into --out (plan.json: experiments, seeds, image digests, agent, shmbench\n"
            "version), pull and verify every image once here, then run each (experiment, seed) as\n"
            "one task: a local pool, or Slurm job arrays. Each task works in node-local $TMPDIR and\n"
            "publishes its log into OUT/logs/ by atomic rename before its done marker; running the\n"
            "same sweep again skips what is done. Docs: docs/scale-out.md"
        ),
        examples=(
            "shmbench sweep --experiment exp:0.01 --seeds 0-9 --episodes 20 --out runs/sig",
            "shmbench sweep --experiment exp:0.01 --seeds 0-99 --episodes 20 --out /shared/sig \\\n"
            "      --executor slurm --slurm-time 00:10:00 --max-parallel 50 --requeue",
            "shmbench sweep --experiment exp:0.01 --seeds 0-3 --episodes 5 --out x --executor slurm --print-only",
        ),
        func=_guarded(sweep_command, "sweep"),
    )
    g = p.add_argument_group("the sweep")
    g.add_argument("--experiment", action="append", required=True, metavar="ID", help="an experiment id (repeatable)")
    g.add_argument("--seeds", required=True, metavar="LIST", help="seeds: N, N-M, or a comma-separated list of them")
    g.add_argument("--episodes", type=int, default=10, metavar="N", help="episodes per task")
    g.add_argument("--agent", choices=("random", "static"), default="random", help="baseline agent")
    g.add_argument("--action", metavar="JSON", help="the static agent's action, as JSON")
    g.add_argument("--config", action="append", default=[], metavar="KEY=VALUE", help="a config override (repeatable)")
    g.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto", help="where each task's env runs")
    g.add_argument("--image", metavar="REF", help="an image overriding the records'")
    g.add_argument("--image-digest", metavar="sha256:HEX", help="the image's pinned digest")
    g.add_argument("--offline", action="store_true", help="use cached images only (tasks always do)")
    g.add_argument("--out", required=True, metavar="DIR", help="the sweep's directory (shared by all nodes)")
    _add_executor_arguments(p, "local")

    p = add_command(
        sub,
        "resume",
        help="run what a sweep has not done (failed, partial, never run)",
        description=(
            "Start every task of the sweep in DIR that is neither done nor running: failed ones,\n"
            "partial ones (killed before publishing) and ones never started. Done tasks stay."
        ),
        examples=("shmbench resume runs/sig", "shmbench resume /shared/sig --executor slurm --slurm-time 00:20:00"),
        func=_guarded(resume_command, "resume"),
    )
    p.add_argument("directory", help="the sweep's directory")
    _add_executor_arguments(p, None)

    p = add_command(
        sub,
        "status",
        help="how many of a sweep's tasks are done, running, failed, pending",
        description=(
            "Count a sweep's tasks by state, from its markers (state/) and, for Slurm, squeue.\n"
            "Lists the running and failed ones with why; exit status 1 when any failed."
        ),
        examples=("shmbench status runs/sig", "shmbench status runs/sig --all"),
        func=_guarded(status_command, "status"),
    )
    p.add_argument("directory", help="the sweep's directory")
    p.add_argument("--all", action="store_true", help="list every task, not only running and failed ones")

    p = add_command(
        sub,
        "collect",
        help="one table of a sweep's runs",
        description=(
            "One row per task: state, episodes, steps, mean and std of the episode return, log.\n"
            "In Python: shmbench.sweeps.collect(DIR, as_dataframe=True)."
        ),
        examples=("shmbench collect runs/sig", "shmbench collect runs/sig --format csv > sig.csv"),
        func=_guarded(collect_command, "collect"),
    )
    p.add_argument("directory", help="the sweep's directory")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
