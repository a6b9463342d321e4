"""``shmbench bench`` and ``shmbench report``: the overhead benchmarks and their report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shmbench.cli.util import add_command

__all__ = ["register", "cmd_bench", "cmd_report"]


def cmd_bench(args: argparse.Namespace) -> int:
    from shmbench.perf.bench import run

    user = {"env": args.env, "image": args.image, "runtime": args.runtime, "num_envs": args.num_envs}
    if args.env is None and (args.image or args.num_envs):
        print("shmbench bench: --image and --num-envs measure the env of --env; give --env", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("shmbench bench: --repeats must be at least 1", file=sys.stderr)
        return 2
    return run(
        quick=args.quick,
        out_dir=Path(args.out),
        extra_args=args.pytest_args,
        user=user if args.env else None,
        repeats=args.repeats,
    )


def cmd_report(args: argparse.Namespace) -> int:
    from shmbench.perf.report import write_report

    try:
        path = write_report([Path(p) for p in args.json], Path(args.out))
    except (OSError, ValueError) as exc:
        print(f"shmbench report: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "bench",
        help="run the overhead benchmarks, then write the report",
        description=(
            "Run the benchmark suites (pytest-benchmark: shmbench against native and its peers,\n"
            "side by side in one run), keep their JSON and write report.md with plots. With --env,\n"
            "measure that env instead: natively where the host can build it, through the runtime\n"
            "(and image), and through the process runtime (the container's own cost)."
        ),
        examples=(
            "shmbench bench --quick",
            "shmbench bench -o report/",
            "shmbench bench -- -k vec8",
            "shmbench bench --repeats 3 -o report/ -- -k 'vec8 or cartpole'",
            "shmbench bench --env mybench.envs:MyEnv --image mybench.sif --num-envs 8 -o mine/",
        ),
        func=cmd_bench,
    )
    p.add_argument("--env", metavar="ID", help="measure this env instead of shmbench's workloads")
    p.add_argument("--image", metavar="IMG", help="the image --env runs in (a SIF, a directory, oras://)")
    p.add_argument("--runtime", default="auto", help="the runtime --env runs through")
    p.add_argument("--num-envs", type=int, metavar="N", help="also measure make_vec(--env, N) against SyncVectorEnv")
    p.add_argument("--quick", action="store_true", help="a subset with few rounds (about a minute)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="N",
        help="run the suites N times; the report adds each goal's median and spread over the runs",
    )
    p.add_argument("-o", "--out", default="shmbench-report", help="directory for the JSON and the report")
    p.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")

    p = add_command(
        sub,
        "report",
        help="turn pytest-benchmark JSON into report.md and plots",
        description="Write report.md and plots from one or more pytest-benchmark JSON files.",
        examples=("shmbench report shmbench-report/bench.json -o report/",),
        func=cmd_report,
    )
    p.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    p.add_argument("-o", "--out", default="shmbench-report", help="output directory")
