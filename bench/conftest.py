"""Shared fixtures of the benchmark suites (``pytest bench/ --benchmark-enable``).

Quick mode: ``SHMBENCH_BENCH_QUICK=1`` (set by ``shmbench bench --quick``) keeps only the
benchmarks marked ``@pytest.mark.quick`` and makes the fixtures ask for fewer rounds, so
the whole suite finishes in about a minute. Every benchmark checks its results before it
times anything; none asserts a speed -- the report compares.

The section "env-level suites" serves test_env_bench, test_vector_bench and
test_runtime_bench; other suites (channel round trips) may add their own sections.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

# servers started by the process runtime inherit sys.path, so this makes "bench_envs:..."
# ids importable in them
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
# ...and through PYTHONPATH, which they inherit too: the process runtime passes on only
# the sys.path entries outside the interpreter's prefix, and the suites installed with the
# package (shmbench.perf.suites) live inside it
_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if str(BENCH) not in _paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([str(BENCH), *_paths])

QUICK_ENV = "SHMBENCH_BENCH_QUICK"
#: "0" skips building the reference image when it is not cached (default: build it,
#: except in quick mode)
BUILD_ENV = "SHMBENCH_BENCH_BUILD"


def is_quick() -> bool:
    return os.environ.get(QUICK_ENV, "") not in ("", "0")


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


_LOAD_AT_START = _loadavg()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "quick: part of the quick benchmark subset (shmbench bench --quick)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not is_quick():
        return
    keep, drop = [], []
    for item in items:
        (keep if item.get_closest_marker("quick") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    """What the report needs to judge the numbers: usable cores, load, the runtimes."""
    # load averages (1, 5, 15 min) when the suite started and when it ended: other work
    # on a small machine moves the numbers more than many of the effects measured
    info = {
        "usable_cpus": len(os.sched_getaffinity(0)),
        "quick": is_quick(),
        "loadavg_start": _LOAD_AT_START,
        "loadavg_end": _loadavg(),
    }
    try:
        from shmbench.runtimes.selection import probe_all

        info["runtimes"] = {name: {"ok": ok, "detail": why} for name, (ok, why) in probe_all().items()}
    except Exception as exc:  # the report still works without it
        info["runtimes_error"] = repr(exc)
    machine_info["shmbench"] = info


# ===================================================================== env-level suites


@pytest.fixture(scope="session")
def quick() -> bool:
    return is_quick()


@pytest.fixture(scope="session")
def bench_envs():
    """The bench/bench_envs.py module, checked to be the one servers will import."""
    import bench_envs as envs

    if Path(envs.__file__).resolve() != BENCH / "bench_envs.py":
        pytest.fail(f"'bench_envs' resolves to {envs.__file__}, not bench/bench_envs.py")
    return envs


@pytest.fixture(scope="session")
def require_runtime():
    """A function that skips the test unless the named shmbench runtime works here."""
    return runtime_or_skip


def runtime_or_skip(name: str) -> None:
    """Skip unless runtime ``name`` exists in shmbench and works on this machine."""
    try:
        from shmbench.runtimes.selection import RUNTIMES, probe_all
    except ImportError as exc:
        pytest.skip(f"shmbench.runtimes.selection cannot be imported: {exc}")
    if name not in RUNTIMES:
        if name == "bwrap":
            pytest.skip("shmbench.runtimes.bwrap is not available yet (BwrapRuntime missing)")
        if name == "apptainer":
            pytest.skip("shmbench has no apptainer runtime module here")
        pytest.skip(f"shmbench has no {name!r} runtime")
    ok, why = probe_all()[name]
    if not ok:
        pytest.skip(f"runtime {name!r} does not work here: {why}")


def _load_image_helpers():
    """tests/conftest_images.py, loaded under its own name (tests/ is not put on sys.path:
    only its image builders are needed here)."""
    name = "shmbench_tests_conftest_images"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "conftest_images.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bookworm_image(request: pytest.FixtureRequest) -> Path:
    """The reference image (recipes/bookworm-numpy124.def with this tree's shmbench wheel),
    built by the image tests' own builder (tests/conftest_images.py).

    Cached by the sources' digest: a tree whose image is cached reuses it at once; one
    whose image is not is built (debootstrap, a few minutes, needs the network) unless in
    quick mode or with SHMBENCH_BENCH_BUILD=0, where the image benchmarks skip instead.
    """
    if not (REPO / "tests" / "conftest_images.py").is_file():
        pytest.skip("the reference image is built from a shmbench source checkout; these suites are installed ones")
    try:
        helpers = _load_image_helpers()
    except Exception as exc:
        pytest.skip(f"tests/conftest_images.py cannot be loaded: {exc}")
    from shmbench.images.build import recipe_digest
    from shmbench.images.store import cache_subdir
    from shmbench.runtimes.apptainer import find_binary as find_apptainer

    recipe = helpers.RECIPES / "bookworm-numpy124.def"
    wheels = sorted((cache_subdir("wheels") / helpers._source_hash()).glob("shmbench-*.whl"))
    cached = None
    if wheels:
        target = cache_subdir("built") / f"{recipe_digest(recipe, {'wheel': str(wheels[-1])})}.sif"
        cached = target if target.is_file() else None
    if cached is not None:
        return cached
    build = os.environ.get(BUILD_ENV, "0" if is_quick() else "1") not in ("", "0")
    if not build:
        pytest.skip(
            "no reference image is cached for this source tree; set "
            f"{BUILD_ENV}=1 (full runs build it: a few minutes with debootstrap)"
        )
    if find_apptainer() is None:
        if os.geteuid() != 0:
            pytest.skip("building the reference image without Apptainer needs root (debootstrap)")
        for tool in ("debootstrap", "bwrap", "mksquashfs", "siftool"):
            if shutil.which(tool) is None:
                pytest.skip(f"building the reference image needs {tool}")
    wheel = request.getfixturevalue("shmbench_wheel")
    from shmbench.images.build import build_cached

    print(
        f"\n[bench] building the reference image from {recipe.name} (once per source state)...",
        file=sys.stderr,
        flush=True,
    )
    try:
        return build_cached(recipe, build_args={"wheel": str(wheel)})
    except Exception as exc:
        pytest.skip(f"the reference image could not be built: {exc}")


# the image tests' wheel fixture (its skips and its cache come along), in a checkout; the
# suites installed with the package (shmbench.perf.suites) have no tests/ beside them
if (REPO / "tests" / "conftest_images.py").is_file():
    shmbench_wheel = _load_image_helpers().shmbench_wheel
else:

    @pytest.fixture(scope="session")
    def shmbench_wheel():
        pytest.skip("building the reference image needs a shmbench source checkout (tests/conftest_images.py)")


@pytest.fixture(scope="session")
def pingpong_lib(tmp_path_factory):
    """bench/pingpong.c, the C reference, compiled with gcc (c_reference.build_pingpong)."""
    from c_reference import build_pingpong

    lib = build_pingpong(tmp_path_factory.mktemp("pingpong"))
    if lib is None:
        pytest.skip("no C compiler: the C reference needs gcc")
    return lib
