"""The cache's locks (shmbench.images.locks): lock files where flock cannot be trusted
(NFS with nolock, Lustre), broken when their owner is dead, and the choice between the two.

No NFS or Lustre mount can be made on this machine, so the lock-file path is chosen by
``SHMBENCH_LOCK=file`` (what ``auto`` picks on those filesystems), and one test replaces
``fcntl.flock`` with a test double that fails as Lustre's does."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shmbench.errors import ImageError
from shmbench.images import locks
from shmbench.images.locks import LockTimeout, cache_lock, filesystem_type, is_network_filesystem
from shmbench.images.store import make_once

RACER = """
import sys, time
from pathlib import Path
from shmbench.images.store import make_once
out, lock = Path(sys.argv[1]), Path(sys.argv[2])
def make():
    with open(out.with_suffix(".makes"), "a") as f:
        f.write("x")
    time.sleep(0.3)
    out.with_suffix(".tmp").write_text("made")
    out.with_suffix(".tmp").rename(out)
    return out
make_once(lock, lambda: out if out.exists() else None, make, timeout=60, what="make the entry")
"""


def test_lock_files_make_an_entry_once_among_racing_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("SHMBENCH_LOCK", "file")
    out = tmp_path / "entry"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(out), str(tmp_path / "entry.lock")]) for _ in range(6)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 6
    assert out.read_text() == "made" and (tmp_path / "entry.makes").read_text() == "x"
    assert not (tmp_path / "entry.lock.held").exists()  # released
    assert not (tmp_path / "entry.lock").exists()  # no flock file: the lock-file kind was used


HOLDER = """
import sys, time
from shmbench.images.locks import cache_lock
with cache_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_lock_file_whose_owner_was_killed_is_broken(tmp_path, monkeypatch):
    monkeypatch.setenv("SHMBENCH_LOCK", "file")
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(LockTimeout):
            with cache_lock(lock, timeout=0.5):
                pass  # held by a live process: not taken
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert (tmp_path / "x.lock.held").exists()  # left behind by the kill
    start = time.monotonic()
    with cache_lock(lock, timeout=10):
        owner = json.loads((tmp_path / "x.lock.held").read_text())
        assert owner["pid"] == os.getpid()
    assert time.monotonic() - start < 5
    assert not (tmp_path / "x.lock.held").exists()


def test_another_nodes_lock_file_is_waited_for_until_it_goes_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("SHMBENCH_LOCK", "file")
    held = tmp_path / "y.lock.held"
    held.write_text(json.dumps({"host": "some-other-node", "pid": 1, "pid_started": "1"}))
    with pytest.raises(ImageError, match="timed out after 0.5 s waiting for another process to pull it"):
        make_once(tmp_path / "y.lock", lambda: None, lambda: "made", timeout=0.5, what="pull it")
    old = time.time() - locks.STALE_AFTER - 5
    os.utime(held, (old, old))  # its node stopped refreshing it: abandoned
    assert make_once(tmp_path / "y.lock", lambda: None, lambda: "made", timeout=5, what="pull it") == "made"


def test_a_held_lock_file_is_refreshed(tmp_path, monkeypatch):
    monkeypatch.setenv("SHMBENCH_LOCK", "file")
    monkeypatch.setattr(locks, "_REFRESH", 0.1)
    held = tmp_path / "z.lock.held"
    with cache_lock(tmp_path / "z.lock"):
        first = held.stat().st_mtime_ns
        time.sleep(0.5)
        assert held.stat().st_mtime_ns > first


def test_where_flock_fails_the_lock_falls_back_to_lock_files(tmp_path, monkeypatch):
    """Test double: fcntl.flock failing with ENOSYS, as on Lustre mounted without flock."""
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.delenv("SHMBENCH_LOCK", raising=False)
    monkeypatch.setattr(fcntl, "flock", no_flock)
    with cache_lock(tmp_path / "w.lock", timeout=5):
        assert (tmp_path / "w.lock.held").exists()
    assert not (tmp_path / "w.lock.held").exists()


def test_the_filesystem_type_comes_from_mountinfo(tmp_path):
    assert filesystem_type("/proc/self") == "proc"
    assert filesystem_type(tmp_path / "does" / "not" / "exist") == filesystem_type(tmp_path)
    assert not is_network_filesystem(tmp_path)
    mounts = Path("/proc/self/mountinfo").read_text()
    if " - nfs" not in mounts:  # this machine has no network mount: the table decides for them
        assert locks.NETWORK_FILESYSTEMS >= {"nfs", "nfs4", "lustre"}


def test_unpacked_trees_stay_node_local_when_the_cache_is_on_a_network_filesystem(tmp_path, monkeypatch):
    from shmbench.images.store import local_subdir

    monkeypatch.setenv("SHMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SHMBENCH_LOCAL_DIR", raising=False)
    assert local_subdir("unpacked") == tmp_path / "cache" / "unpacked"  # a local cache keeps them
    monkeypatch.setenv("SHMBENCH_LOCAL_DIR", str(tmp_path / "node"))
    assert local_subdir("unpacked") == tmp_path / "node" / "unpacked"
    monkeypatch.delenv("SHMBENCH_LOCAL_DIR")
    monkeypatch.setattr(locks, "is_network_filesystem", lambda path: True)  # the cache "on NFS"
    assert local_subdir("unpacked") == Path(f"/var/tmp/shmbench-{os.getuid()}/unpacked")
