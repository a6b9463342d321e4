"""``shmbench bench [--quick]``: run the benchmark suites, then write the report.

>>> from shmbench.perf.bench import run
>>> run(quick=True, out_dir="bench-report")              # doctest: +SKIP
0

The suites are the pytest files of the source checkout's ``bench/`` directory, which a
``pip install 'shmbench[bench]'`` installs as ``shmbench.perf.suites``; they run in a child
``python -m pytest`` (a checkout's pytest configuration applies, and a caller that is
itself a pytest run is not disturbed), which streams its progress -- one line per
benchmark, skips with their reasons -- and writes ``OUT/bench.json``. Then
:func:`shmbench.perf.report.write_report` turns it into ``OUT/report.md`` and plots.

Full mode: every benchmark, at least 20 rounds and up to 2 s each, and the reference image
is built if it is not cached (a few minutes, once per source state). Quick mode
(``SHMBENCH_BENCH_QUICK=1`` for the suites): the benchmarks marked ``quick``, at least 5
rounds and up to 1 s each, no image build -- about a minute on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["run", "find_bench_dir", "pytest_args", "compact", "QUICK_ENV", "BENCH_DIR_ENV", "USER_ENV"]

#: read by bench/conftest.py: keep the quick subset, fewer rounds, build no image
QUICK_ENV = "SHMBENCH_BENCH_QUICK"
#: where the suites are, when not in the checkout this package was imported from
BENCH_DIR_ENV = "SHMBENCH_BENCH_DIR"

_FULL = {"min_rounds": 20, "max_time": 2.0}
_QUICK = {"min_rounds": 5, "max_time": 1.0}


def find_bench_dir() -> Path:
    """The directory of the benchmark suites: ``$SHMBENCH_BENCH_DIR``, else ``bench/`` next
    to this package in a source checkout, else the installed copy (``shmbench.perf.suites``,
    what setup.py installs ``bench/`` as)."""
    override = os.environ.get(BENCH_DIR_ENV)
    candidates = [Path(override)] if override else []
    candidates.append(Path(__file__).resolve().parents[2] / "bench")
    candidates.append(Path(__file__).resolve().parent / "suites")
    for path in candidates:
        if (path / "conftest.py").is_file():
            return path.resolve()
    raise FileNotFoundError(
        "the benchmark suites were not found (looked in "
        f"{', '.join(map(str, candidates))}); install shmbench with its suites "
        f"(pip install 'shmbench[bench]') or set {BENCH_DIR_ENV} to a checkout's bench/"
    )


def pytest_args(bench_dir: Path, json_path: Path, quick: bool, extra_args: Sequence[str] = ()) -> list[str]:
    """The child pytest's command line (``bench_dir``: the suites, or one suite's file)."""
    opts = _QUICK if quick else _FULL
    return [
        sys.executable,
        "-m",
        "pytest",
        str(bench_dir),
        "-v",
        "-rfEs",  # a line per benchmark; failures, errors, skip reasons
        "-p",
        "no:cacheprovider",
        "--benchmark-enable",  # the checkout's addopts disable benchmarks
        f"--benchmark-json={json_path}",
        f"--benchmark-min-rounds={opts['min_rounds']}",
        f"--benchmark-max-time={opts['max_time']}",
        "--benchmark-group-by=group",
        "--benchmark-sort=min",
        "--benchmark-columns=median,iqr,ops,rounds",
        *extra_args,
    ]


#: the user's env for bench/test_user_bench.py (shmbench bench --env ...)
USER_ENV = {
    "env": "SHMBENCH_BENCH_ENV",
    "image": "SHMBENCH_BENCH_IMAGE",
    "runtime": "SHMBENCH_BENCH_RUNTIME",
    "num_envs": "SHMBENCH_BENCH_NUM_ENVS",
}


def run(
    quick: bool,
    out_dir: str | os.PathLike[str],
    extra_args: Sequence[str] = (),
    user: dict | None = None,
    repeats: int = 1,
) -> int:
    """Run the suites (the quick subset if ``quick``) and write the report into ``out_dir``.

    ``repeats`` > 1 runs them that many times, one after the other (``bench-1.json``, ...;
    each run measures every method side by side, so the repeats interleave the methods at
    the scale of a whole suite), and the report adds each target's median over the runs
    and their spread: on a noisy VM one run's ratio can be off by tens of percent.

    ``user`` (keys of :data:`USER_ENV`: ``env``, ``image``, ``runtime``, ``num_envs``) runs
    only the suite that measures the user's own env instead (bench/test_user_bench.py).

    Returns pytest's exit status (0: every benchmark ran or skipped with a reason), or 2
    when the suites cannot be found. A report is written whenever the run produced JSON,
    also after failures, so that what was measured is not lost.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        bench_dir = find_bench_dir()
    except FileNotFoundError as exc:
        print(f"shmbench bench: {exc}", file=sys.stderr)
        return 2
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    names = ["bench.json"] if repeats == 1 else [f"bench-{i}.json" for i in range(1, repeats + 1)]
    json_paths = [(out / name).resolve() for name in names]
    for path in json_paths:
        if path.exists():
            path.unlink()  # a stale file must not be reported as this run
    env = dict(os.environ)
    if quick:
        env[QUICK_ENV] = "1"
    else:
        env.pop(QUICK_ENV, None)
    for key, name in USER_ENV.items():
        env.pop(name, None)
        if user and user.get(key) not in (None, ""):
            env[name] = str(user[key])
    target = bench_dir / "test_user_bench.py" if user and user.get("env") else bench_dir
    mode = "quick subset" if quick else "full suite"
    # a checkout: run from its root (its pytest configuration); installed suites: from the
    # output directory, so that nothing of site-packages lands first on the child's sys.path
    in_checkout = (bench_dir.parent / "shmbench").is_dir() and bench_dir.name == "bench"
    status = 0
    for i, json_path in enumerate(json_paths, 1):
        args = pytest_args(target, json_path, quick, extra_args)
        which = f" (run {i} of {repeats})" if repeats > 1 else ""
        print(f"shmbench bench: running the {mode}{which} from {bench_dir}\n  $ {' '.join(args[1:])}", flush=True)
        start = time.monotonic()
        code = subprocess.run(args, cwd=bench_dir.parent if in_checkout else out.resolve(), env=env).returncode
        status = status or code
        print(f"shmbench bench: pytest exited with status {code} after {time.monotonic() - start:.0f} s", flush=True)
    written = [path for path in json_paths if path.is_file()]
    if not written:
        print("shmbench bench: no benchmark results were written; no report", file=sys.stderr)
        return status or 1
    from shmbench.perf.report import write_report

    for path in written:
        compact(path)
    report = write_report(written, out)
    results = ", ".join(str(path) for path in written)
    print(f"shmbench bench: results {results}\nshmbench bench: report  {report}", flush=True)
    return status


def compact(json_path: Path) -> None:
    """Shrink a pytest-benchmark JSON in place: each benchmark's every-round timings
    (``stats.data``: most of the file, 60 MB for the full suite) become their 101 percentiles
    (``stats.data_percentiles``); the summary statistics the report reads stay as they are."""
    import json

    doc = json.loads(json_path.read_text())
    for bench in doc.get("benchmarks", []):
        stats = bench.get("stats") or {}
        data = stats.pop("data", None)
        if data:
            ordered = sorted(data)
            last = len(ordered) - 1
            stats["data_percentiles"] = [ordered[round(q * last / 100)] for q in range(101)]
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, json_path)
