"""``shmbench bench`` and ``shmbench report``: the overhead benchmarks and their report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shmbench.cli.util import add_command

__all__ = ["register", "cmd_bench", "cmd_report"]


def cmd_bench(args: argparse.Namespace) -> int:
    from shmbench.perf.bench import run

    return run(quick=args.quick, out_dir=Path(args.out), extra_args=args.pytest_args)


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
            "side by side in one run), keep their JSON and write report.md with plots."
        ),
        examples=("shmbench bench --quick", "shmbench bench -o report/", "shmbench bench -- -k vec8"),
        func=cmd_bench,
    )
    p.add_argument("--quick", action="store_true", help="a subset with few rounds (about a minute)")
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
