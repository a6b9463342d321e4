"""Sessions: a host's private directory, its slabs, and how a dead owner's leftovers go.

A session is one host-only directory::

    /dev/shm/shmbench-<uid>/<session>/      0700; never bound into a container
        host.lock       flock(LOCK_EX) by the host for the session's lifetime
        w0.log          worker 0's output, written by the host (from a pipe; capped)

The channels and the slab of a session live in sealed anonymous memory
(:mod:`shmbench.transport.channel`), handed to each server as inherited descriptors, so
no container ever sees, let alone writes, this directory: there is nothing in it to plant,
swap or chmod. The session's files are the host's own, opened by the host alone.

Liveness is told by locks, not pids: a pid means nothing across PID namespaces, but the
kernel drops an flock when its holder dies, kill -9 included. So :func:`gc` reaps a
session exactly when nobody holds its ``host.lock``; everything it removes goes through
:func:`shmbench.transport.tree.remove_tree`, which no leftover, however crafted, can stop.

This module also chooses the wake-up backend of a channel (:func:`channel_class`): the
futex channel of :mod:`shmbench.transport.channel` or the named-semaphore one of
:mod:`shmbench.transport.semaphore`, which builds on it.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import secrets
import stat
import tempfile
import time
from pathlib import Path

from shmbench.errors import ChannelMismatch, ShmbenchError
from shmbench.transport.channel import HOST_LOCK, Channel, reserve, sealed_memory
from shmbench.transport.tree import remove_tree

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
    "pid_alive",
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


def open_regular(path: os.PathLike | str, flags: int = os.O_RDONLY) -> int | None:
    """Open ``path`` only if it is a regular file of ours: never a symlink (``O_NOFOLLOW``),
    never blocking on a FIFO or device (``O_NONBLOCK``), checked with ``fstat`` after opening.
    The descriptor, or None when it is missing or something else."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        os.close(fd)
        return None
    return fd


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def try_lock(path: os.PathLike | str) -> int | None:
    """Open the regular file ``path`` and take flock(LOCK_EX|LOCK_NB); the fd on success,
    None if it is held (or missing, or not a regular file of ours)."""
    fd = open_regular(path, os.O_RDWR)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class Slab:
    """The fast-path arrays of one env or vector env: shared memory of fixed size, mapped.

    Separate from the channels because every worker of a vector env writes its rows of the
    SAME batch arrays: the slab is the batch, nothing is concatenated on the host. It is
    made before the servers start (each inherits its descriptor) and sized once the
    handshake told the layout (:meth:`allocate`), so it is sealed only against shrinking:
    a server may grow it (its own memory), never truncate what the host maps.
    """

    def __init__(self, fd: int, path: Path | None = None) -> None:
        self.fd = fd
        self.path = path
        self.size = 0
        self.buffer: mmap.mmap | None = None

    @classmethod
    def create(cls, path: os.PathLike | str | None = None, size: int = 0) -> Slab:
        """A new slab: sealed anonymous memory (no ``path``), or a new file at ``path``;
        allocated at once when ``size`` is given."""
        if path is None:
            slab = cls(sealed_memory("slab", 0, growable=True))
        else:
            path = Path(path)
            slab = cls(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path)
        if size:
            try:
                slab.allocate(size)
            except BaseException:
                slab.close()
                slab.unlink()
                raise
        return slab

    def allocate(self, size: int) -> None:
        """Give the slab ``size`` bytes (reserved: a full memory is ChannelFull, not SIGBUS)
        and map them."""
        if self.buffer is not None:
            raise ShmbenchError("the slab is allocated already")
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)
        reserve(self.fd, size, self.path or "the slab")
        self.buffer = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.size = size

    @classmethod
    def attach(cls, target: os.PathLike | str | int, size: int) -> Slab:
        """Map ``size`` bytes of an existing slab: an inherited descriptor, or a file."""
        path = None if isinstance(target, int) else Path(target)
        fd = target if isinstance(target, int) else os.open(target, os.O_RDWR | os.O_CLOEXEC)
        slab = cls(fd, path)
        if os.fstat(fd).st_size < size:
            slab.close()
            # mapping beyond the end would SIGBUS on first touch
            raise ChannelMismatch(f"the slab is smaller than its layout ({size} bytes)")
        slab.buffer = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        slab.size = size
        return slab

    def close(self) -> None:
        """Close the descriptor; unmap when no array views remain (they keep it alive)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
        if self.buffer is not None:
            try:
                self.buffer.close()
            except BufferError:
                pass  # numpy views still export it; the mapping goes with the last of them

    def unlink(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class Session:
    """A host-only directory, locked for as long as the host lives (see the module docstring).

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
        """A new *file* channel in this session's directory, for a peer that finds it by name
        (tests, tools); runtimes' servers get sealed channels (``Channel.create()``).
        ``wakeup="posix_ipc"`` selects named semaphores (see :mod:`shmbench.transport.semaphore`)."""
        return channel_class(wakeup).create(self.channel_path(name), **kwargs)

    def create_sealed(self, name: str, *, wakeup: str = "futex", **kwargs) -> Channel:
        """A new sealed channel for a server of this session (what runtimes hand over as an
        inherited descriptor; see :mod:`shmbench.transport.channel`)."""
        if wakeup == "posix_ipc":
            from shmbench.transport.semaphore import SemaphoreChannel

            return SemaphoreChannel.create(None, name=name, session_dir=self.path, **kwargs)
        return channel_class(wakeup).create(None, name=name, **kwargs)

    def create_log(self, name: str) -> int:
        """A new log file ``<name>.log`` in this session, opened for appending; its fd."""
        return os.open(
            self.path / f"{name}.log",
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )

    def close(self) -> None:
        """Remove the directory and everything in it, then drop the lock. Idempotent."""
        if self.closed:
            return
        self.closed = True
        remove_tree(self.path)
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


def attach(target: os.PathLike | str | int, *, semaphores: str | None = None, **kwargs) -> Channel:
    """Attach as the server, with the wake-up backend the host chose for this channel: named
    semaphores when ``semaphores`` names them (``$SHMBENCH_SEMAPHORES``) or a ``<channel>.sem``
    file beside a file channel does, else futexes (posix_ipc is imported only for the former:
    an image need not have it)."""
    if semaphores or (not isinstance(target, int) and Path(str(target) + ".sem").exists()):
        from shmbench.transport.semaphore import SemaphoreChannel

        return SemaphoreChannel.attach(target, semaphores=semaphores, **kwargs)
    return Channel.attach(target, **kwargs)


def reap_session(path: Path) -> bool:
    """Remove a session directory if its host is dead (its ``host.lock`` is free).

    Returns True when the directory is gone afterwards. Safe to race with other reapers.
    """
    fd = try_lock(path / HOST_LOCK)
    if fd is None:
        return not os.path.lexists(path)
    try:
        remove_tree(path)
    finally:
        os.close(fd)
    return not os.path.lexists(path)


def _is_regular(path: Path) -> bool:
    """Whether ``path`` is a regular file (not followed): what a live host's lock always is."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def gc(base: os.PathLike | str | None = None, *, min_age: float = 60.0) -> list[Path]:
    """Reap every session under ``base`` whose host is dead; returns the removed paths.

    A session directory without a live ``host.lock`` is reaped once older than ``min_age``
    seconds (the host may be between mkdir and lock), and so are half-born ``.*.new``
    directories and anything else that is not a live session. Never raises for what it
    finds: a leftover that cannot be removed is left, and the next gc tries again.
    """
    base = Path(base) if base is not None else channel_base()
    removed: list[Path] = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        entry = base / name
        try:
            st = os.lstat(entry)
        except OSError:
            continue
        old = now - st.st_mtime > min_age
        if stat.S_ISDIR(st.st_mode) and not name.startswith(".") and _is_regular(entry / HOST_LOCK):
            if reap_session(entry):
                removed.append(entry)
        elif old and remove_tree(entry):
            removed.append(entry)
    return removed
