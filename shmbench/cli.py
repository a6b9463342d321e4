"""The ``shmbench`` command line.

    shmbench run --experiment exp:0.01 --agent random --episodes 10 --seed 42 --out DIR
    shmbench experiments | pull ID | images | build RECIPE -o IMAGE.sif
    shmbench doctor | gc
    shmbench bench [--quick] | report BENCH.json ... -o DIR

Each subcommand imports what it needs only when it runs, so ``shmbench gc`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

__all__ = ["main"]


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _free(path: Path) -> str:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError as exc:
        return f"unknown ({exc.strerror})"
    return f"{_human(usage.free)} free of {_human(usage.total)}"


def _tree_size(root: Path) -> int:
    """Bytes of regular files under ``root``; skips hidden (in-progress) entries and
    anything unreadable."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if not name.startswith(".") and (st.st_mode & 0o170000) == 0o100000:
                total += st.st_size
    return total


# ------------------------------------------------------------------------------------------
# doctor, gc
# ------------------------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace) -> int:
    """Which runtimes work here and why not; where channels and caches live."""
    import numpy
    import gymnasium

    from shmbench import __version__
    from shmbench.cache import cache_root
    from shmbench.channel import channel_base
    from shmbench.container.select import AUTO_ORDER, probe_all

    print(f"shmbench {__version__} (python {sys.version.split()[0]}, numpy {numpy.__version__}, "
          f"gymnasium {gymnasium.__version__})")
    print(f"cores usable: {len(os.sched_getaffinity(0))}")
    print("\nruntimes:")
    probes = probe_all()
    chosen = None
    for name in AUTO_ORDER:
        if name in probes:
            ok, why = probes[name]
            print(f"  {'ok ' if ok else 'no '} {name:10s} {why}")
            if ok and chosen is None:
                chosen = name
    print(f"  runtime='auto' picks: {chosen}")
    base = channel_base()
    print("\nchannels:")
    print(f"  base directory: {base} ({_free(base)})")
    if str(base).startswith("/dev/shm"):
        print("  on /dev/shm (tmpfs): memory-backed")
    else:
        print("  not on /dev/shm: /dev/shm is missing or not writable here")
    try:
        sessions = [e for e in os.listdir(base) if not e.startswith(".")]
    except FileNotFoundError:
        sessions = []
    print(f"  sessions now: {len(sessions)} (stale ones are removed by 'shmbench gc')")
    root = cache_root()
    print("\ncaches:")
    print(f"  cache root: {root} ({_free(root)})")
    for sub in ("images", "unpacked", "built"):
        d = root / sub
        if d.exists():
            size = _tree_size(d)
            print(f"  {sub:9s} {d} ({_human(size)})")
    return 0 if chosen is not None else 1


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove channel directories (and Apptainer instances) whose owner is dead."""
    from shmbench.channel import channel_base, gc

    removed = gc(min_age=args.min_age)
    for path in removed:
        print(f"removed {path}")
    from shmbench.semaphore import sweep

    for name in sweep():
        print(f"unlinked semaphore {name}")
    stopped: list = []
    try:
        from shmbench.container import apptainer
    except ImportError:
        apptainer = None
    if apptainer is not None:
        stopped = apptainer.gc_instances()
        for name in stopped:
            print(f"stopped instance {name}")
    print(f"{len(removed)} channel director{'y' if len(removed) == 1 else 'ies'} removed from "
          f"{channel_base()}" + (f", {len(stopped)} instance(s) stopped" if stopped else ""))
    return 0


# ------------------------------------------------------------------------------------------
# images and experiments
# ------------------------------------------------------------------------------------------

def _build_args(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"shmbench: --build-arg needs KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def cmd_build(args: argparse.Namespace) -> int:
    from shmbench.container.build import build

    out = build(args.recipe, args.output, build_args=_build_args(args.build_arg), builder=args.builder)
    print(f"built {out}")
    return 0


def cmd_experiments(args: argparse.Namespace) -> int:
    from shmbench.experiments import list_experiments

    records = list_experiments()
    if not records:
        print("no experiments found")
        return 0
    width = max(len(r.identifier) for r in records)
    for r in records:
        image = r.image.ref if r.image is not None else "(host / any runtime)"
        print(f"{r.identifier:{width}s}  {r.benchmark:28s} {image}")
        if args.verbose:
            print(f"{'':{width}s}  hash {r.canonical_hash()}  source {r.source}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from shmbench.images import pull

    if args.digest or "://" in args.target or os.path.exists(args.target):
        path = pull(args.target, args.digest, offline=args.offline)
    else:
        from shmbench.experiments import resolve

        record = resolve(args.target)
        if record.image is None:
            print(f"{record.identifier} names no image: it runs on the host's software")
            return 0
        path = record.image.pull(offline=args.offline)
    print(path)
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from shmbench.images import list_images, remove_image

    if args.remove:
        for digest in args.remove:
            print(("removed " if remove_image(digest) else "not cached: ") + digest)
        return 0
    images = list_images()
    total = 0
    for img in images:
        total += img.size
        print(f"{img.digest}  {_human(img.size):>10s}  {img.last_used:%Y-%m-%d %H:%M}  {img.path}")
    print(f"{len(images)} image(s), {_human(total)}")
    return 0


# ------------------------------------------------------------------------------------------
# demo: the main job
# ------------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    """Step an env in the best runtime here, check it against the native env, time both."""
    import time
    import warnings

    import gymnasium
    import numpy as np

    import shmbench

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        env = shmbench.make(args.env, runtime=args.runtime, image=args.image)
    for w in caught:
        print(f"note: {w.message}")
    with env:
        info = env.server_info
        print(f"{args.env} runs in a server started by the {env.runtime.name} runtime "
              f"(image: {env.runtime.describe_image()}); server pid {info.get('pid')} "
              f"python {info.get('python')} numpy {info.get('numpy')}")
        ref = gymnasium.make(args.env)
        ref.action_space.seed(0)
        actions = [ref.action_space.sample() for _ in range(args.check)]
        mismatches = 0
        for e in (env, ref):
            e.reset(seed=0)
        for a in actions:
            got, want = env.step(a), ref.step(a)
            same = all(np.array_equal(x, y) and type(x) is type(y) for x, y in zip(got[:4], want[:4]))
            mismatches += not same
            if got[2] or got[3]:
                env.reset()
                ref.reset()
        print(f"{args.check} steps compared with the native env: "
              + ("identical" if not mismatches else f"{mismatches} MISMATCHES"))
        timings = {}
        for name, e in (("native", ref), ("shmbench", env)):
            e.reset(seed=1)
            samples = []
            for a in actions[: args.steps]:
                t0 = time.perf_counter_ns()
                _, _, term, trunc, _ = e.step(a)
                samples.append(time.perf_counter_ns() - t0)
                if term or trunc:
                    e.reset()
            timings[name] = float(np.median(samples)) / 1000
        print(f"median step: native {timings['native']:.2f} us, shmbench {timings['shmbench']:.2f} us "
              f"({timings['shmbench'] / timings['native']:.2f}x)")
    print("closed: server stopped, channel files removed")
    return 0 if not mismatches else 1


# ------------------------------------------------------------------------------------------
# run, bench, report
# ------------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from shmbench.runcli import run_command

    return run_command(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from shmbench.benchrun import run

    return run(quick=args.quick, out_dir=Path(args.out), extra_args=args.pytest_args)


def cmd_report(args: argparse.Namespace) -> int:
    from shmbench.report import write_report

    path = write_report([Path(p) for p in args.json], Path(args.out))
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from shmbench import __version__

    parser = argparse.ArgumentParser(prog="shmbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"shmbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="step an env in the best runtime here and compare it with native")
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--runtime", default="auto")
    p.add_argument("--image", default=None)
    p.add_argument("--check", type=int, default=2000, help="steps compared with the native env")
    p.add_argument("--steps", type=int, default=2000, help="steps timed per side")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run an agent on an experiment, logging on the host")
    try:
        from shmbench.runcli import add_run_arguments
    except ImportError:  # the runner is optional at import time only for a partial install
        add_run_arguments = None
    if add_run_arguments is not None:
        add_run_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("experiments", help="list known experiment records")
    p.add_argument("-v", "--verbose", action="store_true", help="show hashes and sources")
    p.set_defaults(func=cmd_experiments)

    p = sub.add_parser("pull", help="download an experiment's image (or an image reference) into the cache")
    p.add_argument("target", help="an experiment id (exp:0.01) or an image reference")
    p.add_argument("--digest", help="sha256 digest to verify an image reference against")
    p.add_argument("--offline", action="store_true", help="use the cache only")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("images", help="list (or remove) cached images")
    p.add_argument("--remove", nargs="+", metavar="DIGEST")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("build", help="build a SIF image from a Singularity definition file")
    p.add_argument("recipe")
    p.add_argument("-o", "--output", required=True, help="the SIF file to write")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--builder", choices=["auto", "apptainer", "native"], default="auto",
                   help="native: debootstrap + bwrap + siftool, no Apptainer (root only)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("doctor", help="which runtimes work here, where channels and caches live")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("gc", help="remove channel directories whose owner is dead")
    p.add_argument("--min-age", type=float, default=60.0,
                   help="seconds before a directory without a lock counts as abandoned")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("bench", help="run the overhead benchmarks, then write the report")
    p.add_argument("--quick", action="store_true", help="a subset with few rounds (about a minute)")
    p.add_argument("-o", "--out", default="shmbench-report", help="directory for the JSON and the report")
    p.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="turn pytest-benchmark JSON into report.md and plots")
    p.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    p.add_argument("-o", "--out", default="shmbench-report", help="output directory")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    from shmbench.errors import ShmbenchError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ShmbenchError as exc:
        print(f"shmbench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("shmbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
