"""Channels: one side of a channel file, created by the host or attached by a server.

A channel is ONE regular file (see ``shmbench/_ring/ring.h`` for its layout) that both
sides map shared: the request ring, the reply ring and their futex words. This module
owns opening it and the descriptors around it; the rings themselves are the C
extension's (:class:`shmbench._ring.Channel`). Where channel files live, who owns them
and how a dead owner's files are reclaimed is :mod:`shmbench.transport.session`'s
business.

Space is reserved with ``posix_fallocate`` before mapping: on a full tmpfs that fails
with ENOSPC (a clear :class:`~shmbench.errors.ChannelFull`) instead of a SIGBUS at the
first touch of an unbacked page.
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
]

HOST = _ring.HOST
SERVER = _ring.SERVER

#: the lock a host holds for its session's lifetime (in the session directory)
HOST_LOCK = "host.lock"
#: a server holds ``<channel>.lock`` while it lives
LOCK_SUFFIX = ".lock"

#: Default ring sizes: requests are small (actions travel in the slab), replies may carry
#: info dicts and render frames. Larger messages are fragmented, never refused.
REQUEST_CAPACITY = 1 << 20
REPLY_CAPACITY = 1 << 22


def reserve(fd: int, size: int, path: os.PathLike | str) -> None:
    """posix_fallocate ``size`` bytes, turning a full file system into ChannelFull."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise ChannelFull(
                exc.errno,
                f"cannot reserve {size} bytes for channel {path}: {os.strerror(exc.errno)} "
                f"(free space in {Path(path).parent}; set SHMBENCH_CHANNEL_DIR elsewhere "
                f"or use smaller rings)",
            ) from None
        raise


class Channel(_ring.Channel):
    """One side of a channel file (see :class:`shmbench._ring.Channel` for the ring API).

    Create with :meth:`create` (host) or :meth:`attach` (server). ``close()`` closes this
    side; the host's :meth:`unlink` removes the files.
    """

    path: Path

    @classmethod
    def create(
        cls,
        path: os.PathLike | str,
        *,
        request_capacity: int = REQUEST_CAPACITY,
        reply_capacity: int = REPLY_CAPACITY,
        max_message: int = 256 << 20,
    ) -> Channel:
        """Create a new channel file (mode 0600) and map it as the host."""
        path = Path(path)
        size = _ring.layout_size(request_capacity, reply_capacity)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
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
            path.unlink(missing_ok=True)
            raise
        self._init_side(path, fd)
        return self

    @classmethod
    def attach(cls, path: os.PathLike | str, *, max_message: int = 256 << 20, watch_stdin: bool = True) -> Channel:
        """Attach to an existing channel as the server.

        Takes the server lock (``<path>.lock``) that tells the host this side lives, and
        watches the host: its ``host.lock`` beside the channel, and stdin when it is a
        pipe (the host holds the other end; EOF means it is gone).
        """
        path = Path(path)
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
        death_fds = []
        if watch_stdin:
            try:
                if stat.S_ISFIFO(os.fstat(0).st_mode):
                    death_fds.append(os.dup(0))
            except OSError:
                pass
        host_lock = path.parent / HOST_LOCK
        try:
            host_fd = os.open(host_lock, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            host_fd = -1
        self.set_peer(death_fds=death_fds, lock_fd=host_fd)
        return self

    def _init_side(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._own_lock_fd = -1

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
        """Remove the channel file and its server lock (the creator's job)."""
        for p in (self.path, Path(str(self.path) + LOCK_SUFFIX)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def __repr__(self) -> str:
        side = "host" if self.role == HOST else "server"
        state = "closed" if self.closed else "open"
        return f"<shmbench Channel {side} {getattr(self, 'path', '?')} {state}>"
