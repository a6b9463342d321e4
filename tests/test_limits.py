"""Resource limits and the guard: parsing, how each limit binds here, real cgroups, real rlimits.

The cgroup tests run where this machine lets the host make cgroups (root on cgroup v1, as
CI's machines are, or a delegated v2 subtree) and skip with the reason elsewhere; the
rlimit path is exercised everywhere by asking the guard for it explicitly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import shmbench
from shmbench.runtimes.guard import guard_command
from shmbench.runtimes.limits import CgroupSet, Limits, enforcement, parse_size, sweep_cgroups


@pytest.mark.parametrize(
    "text, size",
    [("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("4096", 4096), ("64k", 64 << 10), (100, 100)],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "-1", "2X", 0, -5])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_limits_from_dicts_strings_and_themselves():
    lim = Limits.of("memory=2G, pids=256,cpus=1.5,tmp=64M")
    assert lim == Limits(memory=2 << 30, pids=256, cpus=1.5, tmp=64 << 20)
    assert Limits.of({"memory": "2G", "pids": 256, "cpus": 1.5, "tmp": "64M"}) == lim
    assert Limits.of(lim) is lim and Limits.of(None) is None
    assert lim.describe() == "memory 2 GiB, pids 256, cpus 1.5, /tmp 64 MiB"
    assert not Limits() and Limits(pids=1)
    with pytest.raises(ValueError, match="unknown limit"):
        Limits.of({"disk": "1G"})
    with pytest.raises(ValueError, match="NAME=VALUE"):
        Limits.of("memory")
    with pytest.raises(ValueError, match="pids must be an int"):
        Limits(pids=0)
    with pytest.raises(ValueError, match="cpus must be a number"):
        Limits(cpus=-1)


def test_enforcement_names_every_limit():
    how = enforcement()
    assert set(how) == {"memory", "pids", "cpus", "tmp"}
    assert all(isinstance(v, str) and v for v in how.values())


# ------------------------------------------------------------------------------ the guard


def _guarded(code: str, **kwargs) -> subprocess.CompletedProcess:
    argv = guard_command([sys.executable, "-c", textwrap.dedent(code)], **kwargs)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "code, status",
    [
        ("raise SystemExit(3)", 3),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM),
        ("pass", 0),
    ],
)
def test_the_guard_exits_as_the_server_did(code, status):
    assert _guarded(code, reap=True).returncode == status
    assert _guarded(code, reap=False).returncode == status


def test_the_guard_reaps_what_the_server_left(tmp_path):
    pids = tmp_path / "pids"
    out = _guarded(
        f"""
        import subprocess, sys
        a = subprocess.Popen(["sleep", "300"], start_new_session=True)
        b = subprocess.Popen([sys.executable, "-c", "import os, time\\nif os.fork(): os._exit(0)\\ntime.sleep(300)"])
        b.wait()
        open({str(pids)!r}, "w").write(str(a.pid))
    """,
        reap=True,
    )
    assert out.returncode == 0, out.stderr
    pid = int(pids.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{pid}").exists()
    left = subprocess.run(["pgrep", "-f", "time.sleep\\(300\\)"], capture_output=True, text=True).stdout.split()
    assert left == [], left


def test_rlimits_where_there_is_no_cgroup():
    out = _guarded(
        "print(open('/proc/self/limits').read())",
        reap=False,
        limits=Limits(memory=1 << 30, pids=77, cpus=1),
        cgroups=None,
    )
    assert out.returncode == 0, out.stderr
    assert "Max address space         1073741824           1073741824" in out.stdout
    assert "Max processes             77                   77" in out.stdout
    out = _guarded("import os; print(len(os.sched_getaffinity(0)))", reap=False, limits=Limits(cpus=1))
    assert out.stdout.strip() == "1"


# ------------------------------------------------------------------------------- cgroups


@pytest.fixture
def cgroups_here():
    if not enforcement()["pids"].startswith("cgroup"):
        pytest.skip(f"this machine lets the host make no cgroup: {enforcement()['pids']}")


@pytest.mark.usefixtures("cgroups_here")
def test_a_cgroup_binds_the_guard_and_everything_below_it():
    cg = CgroupSet.create(f"{os.getpid()}-0badcafe-t0", Limits(memory=256 << 20, pids=20, cpus=0.5))
    assert cg is not None
    try:
        out = _guarded(
            """
            import os, errno
            made = 0
            try:
                for _ in range(100):
                    if os.fork() == 0:
                        import time; time.sleep(30); os._exit(0)
                    made += 1
            except OSError as e:
                print("made", made, errno.errorcode[e.errno])
            print(open('/proc/self/cgroup').read())
        """,
            reap=True,
            limits=Limits(pids=20),
            cgroups=cg,
        )
        assert out.returncode == 0, out.stderr
        made = int(out.stdout.split()[1])
        assert made < 20 and "EAGAIN" in out.stdout
        assert all(d.name in out.stdout for d in cg.dirs)
    finally:
        cg.remove()
    assert not any(d.exists() for d in cg.dirs)


@pytest.mark.usefixtures("cgroups_here")
def test_cgroups_of_a_host_killed_by_sigkill_are_swept():
    script = textwrap.dedent("""
        import os, signal, shmbench
        env = shmbench.make("CartPole-v1", runtime="process", limits={"pids": 50})
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    dead = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    host = dead.stdout.strip()
    assert host.isdigit(), dead.stderr

    def leftovers() -> list[Path]:
        parents = [Path("/sys/fs/cgroup/pids/shmbench")] if enforcement()["pids"].startswith("cgroup v1") else []
        return [
            p
            for parent in parents
            if parent.exists()
            for p in parent.iterdir()
            if p.name.startswith(f"shmbench-{host}-")
        ]

    deadline = time.monotonic() + 10  # the server sees its stdin close and exits
    while time.monotonic() < deadline and any((p / "cgroup.procs").read_text().strip() for p in leftovers()):
        time.sleep(0.05)
    if enforcement()["pids"].startswith("cgroup v1"):
        assert leftovers(), "the killed host's server cgroup should still be there"
    removed = sweep_cgroups()
    assert not leftovers()
    assert all(f"shmbench-{host}-" in str(p) for p in removed)
    with shmbench.make("CartPole-v1", runtime="process", limits={"pids": 50}) as env:  # and a new one works
        env.reset(seed=0)
