"""``shmbench demo``, ``doctor``, ``benchmarks`` and ``gc``: the main job and the machine's state."""

from __future__ import annotations

import argparse
import os
import sys

from shmbench.cli.util import add_command, free_space, human_size, tree_size

__all__ = ["register", "register_demo", "cmd_demo", "cmd_doctor", "cmd_gc", "cmd_benchmarks", "ENVIRONMENT"]


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
        print(
            f"{args.env} runs in a server started by the {env.runtime.name} runtime "
            f"(image: {env.runtime.describe_image()}); server pid {info.get('pid')} "
            f"python {info.get('python')} numpy {info.get('numpy')}"
        )
        try:
            ref = gymnasium.make(args.env)
        except Exception as exc:  # the env needs what only its container has: that is fine
            ref = None
            why = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            print(f"the host cannot build {args.env} ({why}): no native reference, the server alone is timed")
        space = (ref or env).action_space
        space.seed(0)
        actions = [space.sample() for _ in range(max(args.check, args.steps))]
        mismatches = 0
        if ref is not None:
            for e in (env, ref):
                e.reset(seed=0)
            for a in actions[: args.check]:
                got, want = env.step(a), ref.step(a)
                same = all(np.array_equal(x, y) and type(x) is type(y) for x, y in zip(got[:4], want[:4]))
                mismatches += not same
                if got[2] or got[3]:
                    env.reset()
                    ref.reset()
            print(
                f"{args.check} steps compared with the native env: "
                + ("identical" if not mismatches else f"{mismatches} MISMATCHES")
            )
        timings = {}
        for name, e in (("native", ref), ("shmbench", env)):
            if e is None:
                continue
            e.reset(seed=1)
            samples = []
            for a in actions[: args.steps]:
                t0 = time.perf_counter_ns()
                _, _, term, trunc, _ = e.step(a)
                samples.append(time.perf_counter_ns() - t0)
                if term or trunc:
                    e.reset()
            timings[name] = float(np.median(samples)) / 1000
        if ref is not None:
            ref.close()
            print(
                f"median step: native {timings['native']:.2f} us, shmbench {timings['shmbench']:.2f} us "
                f"({timings['shmbench'] / timings['native']:.2f}x)"
            )
        else:
            print(f"median step: shmbench {timings['shmbench']:.2f} us (no native reference)")
    print("closed: server stopped, channel files removed")
    return 0 if not mismatches else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    """Which runtimes work here and why not; where channels and caches live."""
    import gymnasium
    import numpy

    from shmbench import __version__
    from shmbench.images.store import cache_root, local_subdir
    from shmbench.runtimes.selection import AUTO_ORDER, probe_all
    from shmbench.transport.session import channel_base

    print(
        f"shmbench {__version__} (python {sys.version.split()[0]}, numpy {numpy.__version__}, "
        f"gymnasium {gymnasium.__version__})"
    )
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
    from shmbench.runtimes.limits import enforcement

    print("\nlimits (limits= on make/make_vec/RemoteRunner, --limit on shmbench run), as they bind here:")
    for name, how in enforcement().items():
        print(f"  {name:7s} {how}")
    base = channel_base()
    print("\nchannels:")
    print("  sealed shared memory (memfd, F_SEAL_SHRINK|F_SEAL_GROW), inherited by each server as a descriptor")
    print(f"  sessions (host locks, server logs; never visible to a server): {base} ({free_space(base)})")
    try:
        sessions = [e for e in os.listdir(base) if not e.startswith(".")]
    except FileNotFoundError:
        sessions = []
    print(f"  sessions now: {len(sessions)} (stale ones are removed by 'shmbench gc')")
    root = cache_root()
    print("\ncaches:")
    print(f"  cache root: {root} ({free_space(root)})")
    for sub in ("images", "unpacked", "built"):
        d = local_subdir(sub) if sub == "unpacked" else root / sub
        if d.exists():
            size = tree_size(d)
            print(f"  {sub:9s} {d} ({human_size(size)})")
    print("\nenvironment:")
    for name, meaning in ENVIRONMENT:
        value = os.environ.get(name)
        print(f"  {name:26s} {value if value is not None else '(not set)'}")
        print(f"  {'':26s} {meaning}")
    return 0 if chosen is not None else 1


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove session directories (and Apptainer instances, cgroups) whose owner is dead."""
    from shmbench.transport.session import channel_base, gc

    removed = gc(min_age=args.min_age)
    for path in removed:
        print(f"removed {path}")
    from shmbench.transport.semaphore import sweep

    for name in sweep(channel_base()):
        print(f"unlinked semaphore {name}")
    from shmbench.runtimes.apptainer_tools import gc_instances

    stopped = gc_instances()
    for name in stopped:
        print(f"stopped instance {name}")
    from shmbench.runtimes.limits import sweep_cgroups

    for path in sweep_cgroups():
        print(f"removed cgroup {path}")
    print(
        f"{len(removed)} channel director{'y' if len(removed) == 1 else 'ies'} removed from "
        f"{channel_base()}" + (f", {len(stopped)} instance(s) stopped" if stopped else "")
    )
    return 0


#: the environment variables that steer shmbench: name, what it does, where it is read.
#: ``shmbench doctor`` prints their effective values; README's table is checked against it.
ENVIRONMENT: tuple[tuple[str, str], ...] = (
    ("SHMBENCH_RUNTIME", "the runtime runtime='auto' picks (bwrap, apptainer, process), when it works here"),
    ("SHMBENCH_CHANNEL_DIR", "where host-only session directories live (default /dev/shm/shmbench-UID)"),
    ("SHMBENCH_CACHE_DIR", "the cache of images, unpacked trees and built images (default ~/.cache/shmbench)"),
    ("SHMBENCH_EXPERIMENTS", "directories of experiment records searched first (os.pathsep-separated)"),
    ("SHMBENCH_EXPERIMENT_INDEX", "URL of a remote index of experiment records"),
    ("SHMBENCH_BENCH_DIR", "the benchmark suites 'shmbench bench' runs (default: the checkout's bench/)"),
    ("SHMBENCH_BENCH_BUILD", "0: the benchmarks skip the reference image when it is not cached"),
    ("SHMBENCH_LOCK", "the cache's locks: flock, file (lock files, for NFS/Lustre), auto (by filesystem; default)"),
    ("SHMBENCH_LOCAL_DIR", "node-local home of unpacked trees when the cache is on a network filesystem"),
    ("SHMBENCH_SERVE_FROM", "host: an image's server runs the host's shmbench (default); image: the image's own"),
)


def cmd_benchmarks(args: argparse.Namespace) -> int:
    """The benchmark ids a run accepts (``--benchmark``, an experiment record's benchmark)."""
    import gymnasium

    from shmbench.benchmarks import DACBENCH_IDS, SHMBENCH_IDS, register

    register()
    print("shmbench's own (numpy only, in every image):")
    for env_id in SHMBENCH_IDS:
        entry = gymnasium.registry[env_id].entry_point
        module, _, name = str(entry).partition(":")
        import importlib

        doc = (getattr(importlib.import_module(module), name).__doc__ or "").strip().split("\n")[0].split(";")[0]
        print(f"  {env_id:34s} {doc.rstrip('.')}")
    print("\nDACBench's (the image needs DACBench: recipes/dacbench.def):")
    for env_id, (module, cls) in DACBENCH_IDS.items():
        print(f"  {env_id:34s} {module}.{cls}")
    print(
        "\nand any id in gymnasium's registry where the env runs (CartPole-v1, ...), its config\n"
        "passed as keyword arguments to gymnasium.make; module:Env ids are refused (code the\n"
        "host would choose)."
    )
    return 0


def register_demo(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "demo",
        help="step an env in the best runtime here and compare it with native",
        description=(
            "The main job in one command: make an env in a server (a container where one works\n"
            "here), step it from this process, check its trajectory against the native env step\n"
            "for step and time both."
        ),
        examples=("shmbench demo", "shmbench demo --env Acrobot-v1 --runtime bwrap --steps 5000"),
        func=cmd_demo,
    )
    p.add_argument("--env", default="CartPole-v1", help="a gymnasium id")
    p.add_argument("--runtime", default="auto", help="auto, bwrap, apptainer or process")
    p.add_argument("--image", default=None, help="an image for the server (a SIF, a directory, oras://)")
    p.add_argument("--check", type=int, default=2000, help="steps compared with the native env")
    p.add_argument("--steps", type=int, default=2000, help="steps timed per side")


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "doctor",
        help="which runtimes work here, where channels and caches live",
        description=(
            "What shmbench finds on this machine: the runtimes and why one does not work, how\n"
            "resource limits bind, where sessions and caches live, and the environment variables\n"
            "in effect. Exits 1 when no runtime works."
        ),
        examples=("shmbench doctor",),
        func=cmd_doctor,
    )
    add_command(
        sub,
        "benchmarks",
        help="list the benchmark ids a run accepts",
        description="The benchmark ids --benchmark and experiment records may name, one line each.",
        examples=("shmbench benchmarks", "shmbench run --benchmark shmbench/Sigmoid-v0 --episodes 2"),
        func=cmd_benchmarks,
    )
    p = add_command(
        sub,
        "gc",
        help="remove channel directories whose owner is dead",
        description=(
            "Remove what dead hosts left: session directories, semaphores, Apptainer instances\n"
            "and cgroups (shmbench cleans up itself; this is for a host killed with -9)."
        ),
        examples=("shmbench gc", "shmbench gc --min-age 0"),
        func=cmd_gc,
    )
    p.add_argument(
        "--min-age", type=float, default=60.0, help="seconds before a directory without a lock counts as abandoned"
    )
