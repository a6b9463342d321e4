"""Channels: one side of a channel, created by the host or attached by a server.

A channel is one piece of shared memory (``shmbench/_ring/ring.h`` is its layout) that both
sides map: the request ring, the reply ring and their futex words. This module owns how it
is made and opened and the descriptors around it; the rings themselves are the C
extension's (:class:`shmbench._ring.Channel`).

Two kinds, one layout:

* **sealed** (:meth:`Channel.create` without a path; what every runtime hands its server):
  an anonymous ``memfd`` whose size is sealed (``F_SEAL_SHRINK | F_SEAL_GROW |
  F_SEAL_SEAL``), passed to the server as an inherited file descriptor. Nothing of it is
  in any directory, so a container can neither plant, swap, chmod nor fill a file the host
  will open; and it cannot truncate the memory under the host's mapping, which is what
  would kill the host with SIGBUS. The kernel frees it with the last descriptor or mapping:
  after a kill -9 of both sides nothing remains.
* **file** (:meth:`Channel.create` with a path): a regular file, for peers that find it by
  name (the tests' peer processes, the benchmarks' raw round trips, ``python -m
  shmbench.server PATH``). Its peer could truncate it: use it only with peers you trust.

Space is reserved with ``posix_fallocate`` before mapping: when memory or a tmpfs is full
that fails (a clear :class:`~shmbench.errors.ChannelFull`) instead of a SIGBUS at the first
touch of an unbacked page.

A server watches its host through its stdin, a pipe whose other end the host holds (EOF:
the host is gone), and, for a file channel, the host's ``host.lock`` beside it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from shmbench import _ring
from shmbench.errors import ChannelFull, ChannelMismatch

__all__ = [
    "HOST",
    "SERVER",
    "HOST_LOCK",
    "LOCK_SUFFIX",
    "REQUEST_CAPACITY",
    "REPLY_CAPACITY",
    "Channel",
    "reserve",
    "sealed_memory",
    "wait_any",
]

HOST = _ring.HOST
#: wait for the first of several channels to have a message (futex_waitv; the async pool)
wait_any = _ring.wait_any
SERVER = _ring.SERVER

#: the lock a host holds for its session's lifetime (in the session directory)
HOST_LOCK = "host.lock"
#: a server of a file channel holds ``<channel>.lock`` while it lives
LOCK_SUFFIX = ".lock"

#: Default ring sizes: requests are small (actions travel in the slab), replies may carry
#: info dicts and render frames. Larger messages are fragmented, never refused.
REQUEST_CAPACITY = 1 << 20
REPLY_CAPACITY = 1 << 22

# the seals of a channel: its size can never change again, nor its seals
_FIXED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
# the seals of a slab, sized only after the handshake: it may grow, never shrink
_GROWABLE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


def reserve(fd: int, size: int, what: os.PathLike | str) -> None:
    """posix_fallocate ``size`` bytes, turning full memory or a full file system into ChannelFull."""
    if size <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOMEM):
            where = (
                f"free space in {Path(what).parent}; set SHMBENCH_CHANNEL_DIR elsewhere"
                if os.sep in str(what)
                else "free memory"
            )
            raise ChannelFull(
                exc.errno,
                f"cannot reserve {size} bytes for {what}: {os.strerror(exc.errno)} ({where}, or use smaller rings)",
            ) from None
        raise


def sealed_memory(name: str, size: int, *, growable: bool = False) -> int:
    """A new anonymous memfd of ``size`` bytes, reserved and sealed; returns its descriptor.

    Sealed so that nobody holding it -- the server it is passed to included -- can shrink
    it (or, unless ``growable``, grow it) or change its seals. The descriptor is
    close-on-exec; a runtime passes it on explicitly.
    """
    fd = os.memfd_create(f"shmbench-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        reserve(fd, size, f"shared memory {name!r}")
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _GROWABLE_SEALS if growable else _FIXED_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _watch_stdin() -> list[int]:
    """A dup of stdin when it is a pipe: its EOF tells a server that the host is gone."""
    try:
        if stat.S_ISFIFO(os.fstat(0).st_mode):
            return [os.dup(0)]
    except OSError:
        pass
    return []


class Channel(_ring.Channel):
    """One side of a channel (see :class:`shmbench._ring.Channel` for the ring API).

    Create with :meth:`create` (host) and :meth:`attach` (server). ``close()`` closes this
    side; for a file channel the host's :meth:`unlink` removes the files.

    Attributes:
        path: the channel file, or None for a sealed channel.
        fd: the descriptor of the channel's memory while this side is open (the host passes
            a sealed channel's to its server).
    """

    path: Path | None
    #: its replies wake a futex sleeper, so :func:`wait_any` can wait for it
    wait_any_ok = True

    @classmethod
    def create(
        cls,
        path: os.PathLike | str | None = None,
        *,
        name: str = "channel",
        request_capacity: int = REQUEST_CAPACITY,
        reply_capacity: int = REPLY_CAPACITY,
        max_message: int = 256 << 20,
    ) -> Channel:
        """Create a new channel and map it as the host: in sealed anonymous memory (no
        ``path``; ``name`` shows in ``/proc/PID/fd``), or in a new file (mode 0600) at ``path``."""
        size = _ring.layout_size(request_capacity, reply_capacity)
        if path is None:
            fd = sealed_memory(name, size)
        else:
            path = Path(path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if path is not None:
                reserve(fd, size, path)
            self = cls(
                fd,
                HOST,
                create=True,
                request_capacity=request_capacity,
                reply_capacity=reply_capacity,
                max_message=max_message,
            )
        except BaseException:
            os.close(fd)
            if path is not None:
                Path(path).unlink(missing_ok=True)
            raise
        self._init_side(None if path is None else Path(path), fd)
        return self

    @classmethod
    def attach(
        cls, target: os.PathLike | str | int, *, max_message: int = 256 << 20, watch_stdin: bool = True
    ) -> Channel:
        """Attach to an existing channel as the server: an inherited descriptor (an int), or
        a channel file's path.

        Watches the host through stdin when it is a pipe (the host holds the other end; EOF
        means it is gone). A file channel's server also takes ``<path>.lock`` (a second
        server is refused) and watches the host's ``host.lock`` beside the channel.
        """
        if isinstance(target, int):
            self = cls(target, SERVER, max_message=max_message)
            self._init_side(None, target)
            self.set_peer(death_fds=_watch_stdin() if watch_stdin else [])
            return self
        path = Path(target)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self = cls(fd, SERVER, max_message=max_message)
        except BaseException:
            os.close(fd)
            raise
        self._init_side(path, fd)
        lock_fd = os.open(str(path) + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            self.close()
            raise ChannelMismatch(f"another server already serves {path}") from None
        self._own_lock_fd = lock_fd
        try:
            host_fd = os.open(path.parent / HOST_LOCK, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            host_fd = -1
        self.set_peer(death_fds=_watch_stdin() if watch_stdin else [], lock_fd=host_fd)
        return self

    def _init_side(self, path: Path | None, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._own_lock_fd = -1

    @property
    def fd(self) -> int:
        return self._fd

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Close this side (idempotent); views and slab arrays stay readable."""
        super().close()
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)
        lock_fd, self._own_lock_fd = getattr(self, "_own_lock_fd", -1), -1
        if lock_fd >= 0:
            os.close(lock_fd)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc) -> None:
        # the C type's __exit__ would close only the C side, not this class's descriptors
        # (nor a subclass's resources): route ``with`` through close()
        self.close()

    def __del__(self) -> None:
        if not self.closed:
            self.close()

    def unlink(self) -> None:
        """Remove a file channel's file and its server lock (the creator's job); a sealed
        channel has no name to remove."""
        if self.path is None:
            return
        for p in (self.path, Path(str(self.path) + LOCK_SUFFIX)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def __repr__(self) -> str:
        side = "host" if self.role == HOST else "server"
        state = "closed" if self.closed else "open"
        where = "sealed memory" if getattr(self, "path", None) is None else self.path
        return f"<shmbench Channel {side} {where} {state}>"
