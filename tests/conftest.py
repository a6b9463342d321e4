"""Suite-wide fixtures: the leak checks every test runs under, and shared test helpers.

Every test must leave the channel base directory as it found it, and no server process of
ours may outlive the suite: a leak fails the test that caused it, not a later one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest_images import *  # noqa: F403  (image fixtures for any test module)
from fake_apptainer import fake_apptainer  # noqa: F401  (the Apptainer test double, for any test module)
from image_helpers import fake_sif
from registry import REGISTRY_BINARY, FileServer, LocalRegistry, sha256_of

from shmbench.transport.session import channel_base

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

# This test run's own channel base (inherited by every process it starts), so that the
# leak checks see only this run's files even when other runs share the machine.
if not os.environ.get("SHMBENCH_CHANNEL_DIR"):
    _shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else os.environ.get("TMPDIR", "/tmp")
    os.environ["SHMBENCH_CHANNEL_DIR"] = f"{_shm}/shmbench-{os.getuid()}-pytest{os.getpid()}"
    _OWN_BASE = Path(os.environ["SHMBENCH_CHANNEL_DIR"])
else:
    _OWN_BASE = None


def _reclaim_killed_runs() -> None:
    """The channel bases of earlier test runs that were killed (kill -9 of pytest, a machine
    restart) before their own sessionfinish: reaped like any dead host's sessions (gc, then
    their semaphores), then removed. A base whose pytest still lives is left alone."""
    from shmbench.transport.semaphore import sweep
    from shmbench.transport.session import gc, pid_alive

    if _OWN_BASE is None:
        return
    prefix = f"shmbench-{os.getuid()}-pytest"
    for base in _OWN_BASE.parent.glob(prefix + "*"):
        pid = base.name[len(prefix) :]
        if base == _OWN_BASE or not pid.isdigit() or pid_alive(int(pid)):
            continue  # that run still goes on
        gc(base, min_age=0)
        sweep(base)
        try:
            base.rmdir()
        except OSError:
            pass  # something gc could not reap: the next run tries again


_reclaim_killed_runs()


def pytest_sessionfinish(session, exitstatus):
    """The run's channel base must be empty at the end; then it goes too."""
    if _OWN_BASE is not None and _OWN_BASE.exists():
        left = sorted(os.listdir(_OWN_BASE))
        if left:
            print(f"\nshmbench: channel entries left behind in {_OWN_BASE}: {left}", file=sys.stderr)
            session.exitstatus = 1
        else:
            _OWN_BASE.rmdir()


def _entries(base: Path) -> set[str]:
    try:
        return set(os.listdir(base))
    except FileNotFoundError:
        return set()


def _children() -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose parent is this test process."""
    me = os.getpid()
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == me and fields[0] != "Z":
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    out.append((int(pid), f.read().replace(b"\0", b" ").decode(errors="replace")))
        except (OSError, IndexError, ValueError):
            continue
    return [c for c in out if "shmbench" in c[1] or "bwrap" in c[1]]


@pytest.fixture(autouse=True)
def no_leaks():
    """Fails a test that leaves a session directory, a server process or a cgroup behind."""
    base = channel_base()
    before = _entries(base)
    yield
    import gc

    gc.collect()
    new = _entries(base) - before
    assert not new, f"test left channel entries in {base}: {sorted(new)}"
    procs = _children()
    assert not procs, f"test left server processes running: {procs}"
    from shmbench.runtimes.limits import server_cgroups

    ours = [str(p) for p, host in server_cgroups().items() if host == os.getpid()]
    assert not ours, f"test left server cgroups: {ours}"


# ------------------------------------------------------------------------------------------
# runtimes the remote-env tests run through
# ------------------------------------------------------------------------------------------


def _bwrap_works() -> tuple[bool, str]:
    from shmbench.runtimes.bwrap import BwrapRuntime

    return BwrapRuntime.probe()


RUNTIMES = ["process", "bwrap"]


def runtime_kwargs(name: str) -> dict:
    """Keyword arguments for make()/make_vec() that run through runtime ``name``.

    bwrap starts from an empty environment: the tests' helper envs (``envs:...``) are
    found through PYTHONPATH, which the sandbox sees read-only through the host root.
    """
    if name == "bwrap":
        ok, why = _bwrap_works()
        if not ok:
            pytest.skip(f"bwrap cannot run here: {why}")
        return {"runtime": "bwrap", "environment": {"PYTHONPATH": str(TESTS)}}
    return {"runtime": name}


@pytest.fixture(params=RUNTIMES)
def runtime(request) -> dict:
    """make() keyword arguments for each runtime that runs here (bwrap, process)."""
    return runtime_kwargs(request.param)


# ------------------------------------------------------------------------------------------
# fixtures shared by several test modules (modules opt in with pytestmark = usefixtures(...))
# ------------------------------------------------------------------------------------------


def share_built_images(cache: Path) -> None:
    """Give a private cache the suite's built images: they are keyed by everything that
    goes into them (the recipe digest), so sharing them cannot mix up two images, and
    a test that runs exp:0.01 in its image (built from recipes/light.def) does not rebuild
    it. Pulled images, unpacked trees and records stay private."""
    from shmbench.images.store import cache_root

    shared = cache_root() / "built"
    shared.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "built").symlink_to(shared)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A private cache and config dir; no record dirs, index or runtime choice from outside."""
    share_built_images(tmp_path / "cache")
    monkeypatch.setenv("SHMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("SHMBENCH_EXPERIMENTS", "SHMBENCH_EXPERIMENT_INDEX", "SHMBENCH_RUNTIME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    share_built_images(cache)
    monkeypatch.setenv("SHMBENCH_CACHE_DIR", str(cache))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return cache


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory):
    if REGISTRY_BINARY is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    reg = LocalRegistry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        process = reg.process
        reg.close()
        assert process is not None and process.poll() is not None  # no registry left running


@pytest.fixture(scope="session")
def light(registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, bytes]:
    """A SIF-like file pushed as shmbench/light:0.1; returns (ref, digest, bytes)."""
    data = fake_sif(300_000, seed=1)
    path = tmp_path_factory.mktemp("push") / "light.sif"
    path.write_bytes(data)
    registry.push_sif(path, "shmbench/light", "0.1")
    return f"oras://{registry.host}/shmbench/light:0.1", sha256_of(data), data


@pytest.fixture
def server():
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture
def sweep_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A record directory with the sweep tests' second experiment, exp:luby-test."""
    directory = tmp_path / "records"
    directory.mkdir()
    from sweep_helpers import LUBY_RECORD

    (directory / "luby.toml").write_text(LUBY_RECORD)
    monkeypatch.setenv("SHMBENCH_EXPERIMENTS", str(directory))
    return directory
