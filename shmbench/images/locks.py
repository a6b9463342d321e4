"""Locks for the cache that hold on shared filesystems too, and where node-local parts go.

The cache may live on NFS or Lustre, shared by every node of a cluster. ``flock`` is not
reliable there: on NFS mounted with ``nolock`` it locks only on this node (a no-op for the
others), on Lustre without ``flock`` it fails with ``ENOSYS``/``EINVAL``. So the lock
(:func:`cache_lock`) is chosen per directory:

- a kernel ``flock`` on local filesystems;
- a lock *file* on network filesystems (found in ``/proc/self/mountinfo``) and wherever
  ``flock`` fails: created with ``O_CREAT|O_EXCL`` (atomic on NFSv3+ and Lustre), holding
  its owner's host, pid and the pid's start time, its mtime refreshed every few seconds
  while held. A waiter breaks it when its owner is provably dead (same host, pid gone) or
  when it has not been refreshed for :data:`STALE_AFTER` seconds (another node that died);
  breaking renames it aside first and checks it broke the lock it judged, not a new one.

``$SHMBENCH_LOCK`` = ``flock`` or ``file`` forces one kind (``auto`` is the default).

Parts of the cache that are big, derived and written at run time -- SIF trees unpacked for
bubblewrap -- stay node-local when the cache root is on a network filesystem
(:func:`node_local_dir`): ``$SHMBENCH_LOCAL_DIR``, else ``/var/tmp/shmbench-<uid>``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "LOCK_ENV",
    "LOCAL_DIR_ENV",
    "NETWORK_FILESYSTEMS",
    "STALE_AFTER",
    "LockTimeout",
    "cache_lock",
    "filesystem_type",
    "is_network_filesystem",
    "node_local_dir",
    "process_start_time",
]

LOCK_ENV = "SHMBENCH_LOCK"
LOCAL_DIR_ENV = "SHMBENCH_LOCAL_DIR"
#: filesystem types (mountinfo's) on which flock cannot be trusted across nodes
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "fuse.sshfs", "9p"}
)
#: seconds after which an unrefreshed lock file counts as abandoned
STALE_AFTER = 60.0
#: seconds between a held lock file's refreshes
_REFRESH = 5.0
_POLL = 0.1
_FLOCK_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class LockTimeout(TimeoutError):
    """The lock stayed held by another process for longer than the timeout."""


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def filesystem_type(path: str | os.PathLike[str]) -> str | None:
    """The type of the filesystem ``path`` (or its nearest existing parent) is on, from
    ``/proc/self/mountinfo`` (the longest mount point that contains it); None if unknown."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        real = os.path.realpath(p)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read(4 << 20).splitlines()
    except OSError:
        return None
    best, best_type = -1, None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        mount = _unescape(fields[4])
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best:
            best, best_type = len(mount), right.split()[0]
    return best_type


def is_network_filesystem(path: str | os.PathLike[str]) -> bool:
    fstype = filesystem_type(path)
    return fstype is not None and (fstype in NETWORK_FILESYSTEMS or fstype.split(".")[0] in NETWORK_FILESYSTEMS)


def node_local_dir(name: str, cache_root: Path) -> Path | None:
    """Where the cache part ``name`` goes instead of ``cache_root / name`` when the cache is
    on a network filesystem (created, 0700); None when the cache is local."""
    override = os.environ.get(LOCAL_DIR_ENV)
    if not override and not is_network_filesystem(cache_root):
        return None
    base = Path(override).expanduser().absolute() if override else Path(f"/var/tmp/shmbench-{os.getuid()}")
    path = base / name
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _lock_kind(lock_path: Path) -> str:
    choice = os.environ.get(LOCK_ENV, "auto").strip().lower() or "auto"
    if choice in ("flock", "file"):
        return choice
    return "file" if is_network_filesystem(lock_path.parent) else "flock"


@contextlib.contextmanager
def cache_lock(lock_path: str | os.PathLike[str], timeout: float | None = None) -> Iterator[None]:
    """Hold the lock ``lock_path`` (see the module's docstring for which kind).

    ``timeout``: seconds to wait (None: for ever, 0: one try). Raises :class:`LockTimeout`.
    """
    path = Path(lock_path)
    if _lock_kind(path) == "flock":
        fd = _flock(path, timeout)
        if fd is not None:
            try:
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the lock
            return
        # this filesystem has no working flock (Lustre without -o flock, NFS without lockd)
    with _file_lock(path.with_name(path.name + ".held"), timeout):
        yield


def _flock(path: Path, timeout: float | None) -> int | None:
    """The descriptor of ``path`` holding ``flock(LOCK_EX)``; None when the filesystem does
    not support flock. The file stays (empty): removing it would race the next locker."""
    import fcntl

    deadline = None if timeout is None else time.monotonic() + timeout
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeout(f"lock {path} is held by another process") from None
                time.sleep(_POLL)
            except OSError as exc:
                if exc.errno in _FLOCK_UNSUPPORTED:
                    os.close(fd)
                    return None
                raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def _owner() -> dict[str, object]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_started": process_start_time(pid)}


def process_start_time(pid: int) -> str | None:
    """Process ``pid``'s start time in clock ticks since boot (field 22 of /proc/PID/stat):
    with the pid, it names one process, never a later one that reused the pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read(4096).rpartition(b")")[2].split()
    except OSError:
        return None
    return fields[19].decode() if len(fields) > 19 else None


def _read(path: Path) -> tuple[bytes, float] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.read(fd, 4096), os.fstat(fd).st_mtime
    finally:
        os.close(fd)


def _abandoned(data: bytes, mtime: float) -> bool:
    """Whether a lock file's owner is gone: dead on this host, or silent for too long."""
    try:
        owner = json.loads(data)
    except ValueError:
        owner = None
    if isinstance(owner, dict) and owner.get("host") == socket.gethostname():
        pid = owner.get("pid")
        if isinstance(pid, int) and pid > 0:
            started = process_start_time(pid)
            return started is None or owner.get("pid_started") not in (None, started)
    return time.time() - mtime > STALE_AFTER


def _break(path: Path, judged: bytes) -> None:
    """Remove the abandoned lock ``path`` -- only if it is still the one judged."""
    aside = path.with_name(f"{path.name}.broken-{socket.gethostname()}-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    seen = _read(aside)
    if seen is not None and seen[0] != judged:
        # a new holder took it between our look and the rename: give it back
        with contextlib.suppress(OSError):
            os.link(aside, path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(aside)


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float | None) -> Iterator[None]:
    deadline = None if timeout is None else time.monotonic() + timeout
    body = json.dumps(_owner()).encode()
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            seen = _read(path)
            if seen is not None and _abandoned(*seen):
                _break(path, seen[0])
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeout(f"lock {path} is held by another process") from None
            time.sleep(_POLL)
            continue
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        break
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(_REFRESH):
            with contextlib.suppress(OSError):
                os.utime(path)

    keeper = threading.Thread(target=refresh, name="shmbench-lock-refresh", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
        seen = _read(path)
        if seen is not None and seen[0] == body:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
