"""Sessions: where a host's channel files live, who owns them, how a dead owner's are reclaimed.

A session is one directory of channel files::

    /dev/shm/shmbench-<uid>/<session>/      0700, bind-mounted at /shmbench in containers
        host.lock       flock(LOCK_EX) by the host for the session's lifetime
        w0.chan         0600: header, request ring, reply ring
        w0.chan.lock    flock(LOCK_EX) by the server of w0 while it lives
        w0.log          the server's stdout and stderr
        slab            the fast-path arrays (:class:`Slab`)

Liveness is told by locks, not pids: a pid means nothing across PID namespaces, but an
flock on a file in the shared directory is the same kernel object on both sides of any
container boundary, and the kernel drops it when its holder dies, kill -9 included. So
:func:`gc` reaps a session exactly when nobody holds its ``host.lock``.

This module also chooses the wake-up backend of a channel (:func:`channel_class`): the
futex channel of :mod:`shmbench.transport.channel` or the named-semaphore one of
:mod:`shmbench.transport.semaphore`, which builds on it.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import secrets
import shutil
import stat
import tempfile
import time
from pathlib import Path

from shmbench.errors import ChannelMismatch, ShmbenchError
from shmbench.transport.channel import HOST_LOCK, Channel, reserve

__all__ = [
    "CHANNEL_SUFFIX",
    "Session",
    "Slab",
    "attach",
    "channel_base",
    "channel_class",
    "gc",
    "reap_session",
    "try_lock",
]

CHANNEL_SUFFIX = ".chan"


def _usable_dir(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK) and st.f_bavail > 0


def channel_base() -> Path:
    """The per-user directory that holds every session's channel directory.

    ``$SHMBENCH_CHANNEL_DIR`` wins; else ``/dev/shm/shmbench-<uid>`` when /dev/shm is a
    writable tmpfs (memory-backed: mapping it costs no disk I/O); else node-local
    ``$TMPDIR/shmbench-<uid>``. Never ``$HOME``: on clusters that is NFS, where shared
    mappings and futexes do not work across nodes and are slow on one.
    """
    override = os.environ.get("SHMBENCH_CHANNEL_DIR")
    if override:
        return Path(override)
    name = f"shmbench-{os.getuid()}"
    if _usable_dir("/dev/shm"):
        return Path("/dev/shm") / name
    return Path(tempfile.gettempdir()) / name


def _ensure_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ShmbenchError(f"{path} is not a directory owned by this user; refusing to use it")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def try_lock(path: Path) -> int | None:
    """Open ``path`` and take flock(LOCK_EX|LOCK_NB); the fd on success, None if held."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class Slab:
    """The fast-path arrays of one env or vector env: a file of fixed size, mapped shared.

    Separate from the channel files because every worker of a vector env writes its rows of
    the SAME batch arrays: the slab is the batch, nothing is concatenated on the host.
    """

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self.size = size
        try:
            self.buffer = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    @classmethod
    def create(cls, path: os.PathLike | str, size: int) -> Slab:
        path = Path(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            reserve(fd, size, path)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return cls(path, fd, size)

    @classmethod
    def attach(cls, path: os.PathLike | str, size: int) -> Slab:
        path = Path(path)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        if os.fstat(fd).st_size < size:
            os.close(fd)
            # mapping beyond the end of the file would SIGBUS on first touch
            raise ChannelMismatch(f"slab {path} is smaller than its layout ({size} bytes)")
        return cls(path, fd, size)

    def close(self) -> None:
        """Unmap when no array views remain (the views keep it alive otherwise)."""
        try:
            self.buffer.close()
        except BufferError:
            pass  # numpy views still export it; the mapping goes with the last of them

    def unlink(self) -> None:
        self.path.unlink(missing_ok=True)


class Session:
    """A host-owned channel directory, locked for as long as the host lives.

    The directory is built under a hidden temporary name and renamed into place only once
    its ``host.lock`` is held, so ``gc`` never mistakes a session being born for a dead one.
    """

    def __init__(self, base: os.PathLike | str | None = None) -> None:
        self.base = Path(base) if base is not None else channel_base()
        _ensure_private_dir(self.base)
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}"
        tmp = self.base / f".{self.name}.new"
        tmp.mkdir(mode=0o700)
        lock_path = tmp / HOST_LOCK
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.path = self.base / self.name
        os.rename(tmp, self.path)
        self._lock_fd = fd
        self.closed = False

    def channel_path(self, name: str) -> Path:
        return self.path / f"{name}{CHANNEL_SUFFIX}"

    def create_channel(self, name: str, *, wakeup: str = "futex", **kwargs) -> Channel:
        """A new channel in this session; ``wakeup="posix_ipc"`` selects named semaphores
        (see :mod:`shmbench.transport.semaphore`: not across a private /dev/shm)."""
        return channel_class(wakeup).create(self.channel_path(name), **kwargs)

    def close(self) -> None:
        """Remove the directory and everything in it, then drop the lock. Idempotent."""
        if self.closed:
            return
        self.closed = True
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock_fd)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<shmbench Session {self.path}{' closed' if self.closed else ''}>"


def channel_class(wakeup: str) -> type[Channel]:
    """The Channel class for a wake-up backend: ``"futex"`` (default) or ``"posix_ipc"``."""
    if wakeup == "futex":
        return Channel
    if wakeup == "posix_ipc":
        from shmbench.transport.semaphore import SemaphoreChannel

        return SemaphoreChannel
    raise ValueError(f"wakeup must be 'futex' or 'posix_ipc', got {wakeup!r}")


def attach(path: os.PathLike | str, **kwargs) -> Channel:
    """Attach as the server, with the wake-up backend the host chose for this channel (a
    ``<channel>.sem`` file beside it names its semaphores)."""
    sem = Path(str(path) + ".sem")
    return channel_class("posix_ipc" if sem.exists() else "futex").attach(path, **kwargs)


def reap_session(path: Path) -> bool:
    """Remove a session directory if its host is dead (its ``host.lock`` is free).

    Returns True when the directory is gone afterwards. Safe to race with other reapers.
    """
    fd = try_lock(path / HOST_LOCK)
    if fd is None:
        return not path.exists()
    try:
        shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(fd)
    return not path.exists()


def gc(base: os.PathLike | str | None = None, *, min_age: float = 60.0) -> list[Path]:
    """Reap every session under ``base`` whose host is dead; returns the removed paths.

    A session directory without a ``host.lock`` (a container removed it, or the host died
    between mkdir and lock) is reaped too once older than ``min_age`` seconds, and so are
    half-born ``.*.new`` directories.
    """
    base = Path(base) if base is not None else channel_base()
    removed: list[Path] = []
    try:
        entries = list(base.iterdir())
    except FileNotFoundError:
        return removed
    now = time.time()
    for entry in entries:
        try:
            st = entry.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        old = now - st.st_mtime > min_age
        if entry.name.startswith("."):
            if old:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
            continue
        if (entry / HOST_LOCK).exists():
            if reap_session(entry):
                removed.append(entry)
        elif old:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
