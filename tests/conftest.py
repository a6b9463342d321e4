"""Suite-wide fixtures: the leak checks every test runs under, and shared test helpers.

Every test must leave the channel base directory as it found it, and no server process of
ours may outlive the suite: a leak fails the test that caused it, not a later one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from conftest_images import *  # noqa: F401,F403  (image fixtures for any test module)
from shmbench.channel import channel_base

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
    """Fails a test that leaves a channel directory or a server process behind."""
    base = channel_base()
    before = _entries(base)
    yield
    import gc

    gc.collect()
    new = _entries(base) - before
    assert not new, f"test left channel entries in {base}: {sorted(new)}"
    procs = _children()
    assert not procs, f"test left server processes running: {procs}"


# ------------------------------------------------------------------------------------------
# runtimes the remote-env tests run through
# ------------------------------------------------------------------------------------------

def _bwrap_works() -> tuple[bool, str]:
    from shmbench.container.bwrap import BwrapRuntime

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
