"""An alternative wake-up backend: POSIX named semaphores (posix_ipc), for measurement.

The default channel wakes its peer with futex words inside the mapped channel file, which
work across every namespace a container adds. This module offers the classic alternative --
one named semaphore per direction -- so that the two can be measured side by side
(``bench/test_channel_bench.py``). The rings, their records and the data path are the
same; only the *data* wake-up changes:

- after a send, the producer posts the consumer's semaphore, but only when its value is 0
  (a wake-up already pending covers the new message too, so the value stays at most ~1);
- a receive first tries ``recv(timeout=0)``; when nothing is there it acquires its
  semaphore in short slices (``slice_s``), checking between slices that the peer lives and
  has not closed; once posted, it receives.

A producer waiting for room in a full ring still sleeps on the ring's futex word (the
consumer's release wakes it only if it sleeps), and so does a consumer taking in the
fragments of a message larger than half the ring (the producer posts once before the
first fragment): the semaphores replace the frequent wait, the one for a message.

**Not for containers started with Apptainer's ``--contain`` / ``--containall``** (nor bwrap
with a private /dev): named semaphores are files in /dev/shm (``/dev/shm/sem.<name>``), and
those flags give the container its own, empty /dev/shm, so the two sides would open two
different semaphores and never wake each other (the receiver would still see the data,
one ``slice_s`` late). Use the default futex backend there; it is also the faster one.

Names: the host picks them (``/shmbench-<uid>-<base>-<session>-<channel>-<token>-h2s`` and
``...-s2h``, ``<base>`` a short hash of the channel base directory) and hands them to the
server: in ``$SHMBENCH_SEMAPHORES`` for a sealed channel, in ``<channel>.sem`` beside a
file channel. ``close()`` on the host unlinks both semaphores (and that file);
:func:`sweep` unlinks the semaphores of sessions whose directory is gone (a host killed
with -9 cannot unlink its own).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, cast

import posix_ipc

from shmbench.errors import ChannelMismatch, ChannelTimeout, PeerDied
from shmbench.transport.channel import Channel

__all__ = ["SemaphoreChannel", "SLICE_S", "sweep"]

#: how often a sleeping receive checks that the peer is alive
SLICE_S = 0.05
SEM_SUFFIX = ".sem"
_PREFIX = "shmbench-"
_NAME_RE = re.compile(r"^/shmbench-\d+-[0-9a-f]{8}-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[0-9a-f]{8}-(h2s|s2h)$")


def _clean(text: str, n: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", text)[:n] or "_"


def _base_tag(base: Path) -> str:
    return hashlib.sha256(os.fsencode(os.path.abspath(base))).hexdigest()[:8]


class SemaphoreChannel(Channel):
    """A :class:`~shmbench.transport.channel.Channel` whose data wake-ups go through named semaphores.

    ``SemaphoreChannel.create(path)`` on the host and ``SemaphoreChannel.attach(path)`` on
    the server, exactly like ``Channel``; ``send``/``recv``/``call`` keep their meaning
    and timeout convention (None: forever, still checking liveness; 0: never block;
    seconds).
    """

    wakeup = "posix_ipc"
    wait_any_ok = False  # its peer posts a semaphore: wait_any would not be woken
    slice_s = SLICE_S
    _mine: Any  # posix_ipc.Semaphore: this side sleeps on it
    _theirs: Any  # the peer's, posted after a send
    _sem_names: tuple[str, ...]
    _sem_owner: bool

    @classmethod
    def create(
        cls, path=None, *, name: str = "channel", session_dir: os.PathLike | str | None = None, **kwargs
    ) -> SemaphoreChannel:
        """As :meth:`Channel.create`; the semaphores are named after ``session_dir`` (default:
        the file channel's directory) so that :func:`sweep` can tell their owner."""
        self = cast(SemaphoreChannel, super().create(path, name=name, **kwargs))
        try:
            where = Path(session_dir) if session_dir is not None else Path(path).parent if path else None
            self._sem_open(create=True, session_dir=where, stem=name if path is None else Path(path).stem)
        except BaseException:
            Channel.close(self)
            Channel.unlink(self)
            raise
        return self

    @classmethod
    def attach(cls, target, *, semaphores: str | None = None, **kwargs) -> SemaphoreChannel:
        """As :meth:`Channel.attach`; ``semaphores`` names them (comma-separated, the host's
        ``$SHMBENCH_SEMAPHORES``), else the ``<channel>.sem`` file of a file channel does."""
        self = cast(SemaphoreChannel, super().attach(target, **kwargs))
        try:
            self._sem_open(create=False, given=semaphores)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def semaphore_names(self) -> str:
        """The two semaphores' names, comma-separated: what a server's attach() needs."""
        return ",".join(self._sem_names)

    # -- semaphores -------------------------------------------------------------------

    def _sem_open(
        self, *, create: bool, session_dir: Path | None = None, stem: str = "", given: str | None = None
    ) -> None:
        self._mine = self._theirs = None
        self._sem_names = ()
        self._sem_owner = create
        names_file = None if self.path is None else Path(str(self.path) + SEM_SUFFIX)
        if create:
            if session_dir is None:
                raise ValueError("creating semaphores needs the session directory they are named after")
            base = (
                f"/{_PREFIX}{os.getuid()}-{_base_tag(session_dir.parent)}-"
                f"{_clean(session_dir.name, 60)}-{_clean(stem, 40)}-{secrets.token_hex(4)}"
            )
            names: tuple[str, ...] = (base + "-h2s", base + "-s2h")
            h2s = posix_ipc.Semaphore(names[0], posix_ipc.O_CREX, mode=0o600, initial_value=0)
            try:
                s2h = posix_ipc.Semaphore(names[1], posix_ipc.O_CREX, mode=0o600, initial_value=0)
            except BaseException:
                h2s.unlink()
                h2s.close()
                raise
            self._sem_names = names
            if names_file is not None:
                fd = os.open(names_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write("\n".join(names) + "\n")
            self._mine, self._theirs = s2h, h2s
            return
        # the host named them; the server trusts the host
        source = "$SHMBENCH_SEMAPHORES" if given else str(names_file)
        if given:
            names = tuple(given.split(","))
        elif names_file is not None:
            try:
                names = tuple(names_file.read_text().split())
            except FileNotFoundError:
                raise ChannelMismatch(
                    f"{names_file} is missing: the host did not create {self.path} with the posix_ipc wake-up backend"
                ) from None
        else:
            raise ChannelMismatch("no semaphore names: the host did not choose the posix_ipc wake-up backend")
        if len(names) != 2 or not all(_NAME_RE.match(n) for n in names):
            raise ChannelMismatch(f"{source} does not name two shmbench semaphores")
        try:
            h2s = posix_ipc.Semaphore(names[0])
            s2h = posix_ipc.Semaphore(names[1])
        except posix_ipc.ExistentialError:
            raise ChannelMismatch(
                f"the semaphores named in {source} do not exist here: is /dev/shm "
                f"private to this container (--contain/--containall)? Use the default "
                f"futex wake-ups there"
            ) from None
        self._sem_names = names
        self._mine, self._theirs = h2s, s2h

    def _post(self) -> None:
        # a pending wake-up (value > 0) covers this message too: see the module docstring
        # for why skipping the post then cannot lose a wake-up
        if self._theirs.value == 0:
            self._theirs.release()

    # -- the data path ----------------------------------------------------------------

    def send(self, data, timeout: float | None = None) -> None:
        if memoryview(data).nbytes > self.max_record:
            self._post()  # wake the consumer first: it must drain the fragments
        super().send(data, timeout)
        self._post()

    def commit(self, size: int) -> None:
        super().commit(size)
        self._post()

    def recv(self, timeout: float | None = None) -> memoryview:
        if timeout is not None and not timeout >= 0:
            raise ValueError("timeout must be None or a number >= 0")
        try:
            msg = super().recv(0)
        except ChannelTimeout:
            if timeout == 0:
                raise
        else:
            self._drain()
            return msg
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = self.slice_s if deadline is None else min(self.slice_s, deadline - time.monotonic())
            if left <= 0:
                raise ChannelTimeout("timed out waiting for a message")
            if self.receiving:
                # in the middle of a fragmented message: the producer finishes it only as we
                # drain, publishing each fragment with a futex wake-up -- wait on that
                try:
                    return super().recv(left)
                except ChannelTimeout:
                    continue
            try:
                self._mine.acquire(left)  # releases the GIL; Ctrl-C raises KeyboardInterrupt
            except posix_ipc.BusyError:
                # a slice without a post: is the peer alive (or closed: recv(0) raises)?
                try:
                    return super().recv(0)
                except ChannelTimeout:
                    pass
                if not self.peer_alive():
                    raise PeerDied("the peer died while this side waited for a message") from None
                continue
            # Posted: a message is there -- or, for one larger than half the ring, on its
            # way in fragments (the producer posts before the first one, so the C recv may
            # have to wait for it on the ring's futex word)
            try:
                msg = super().recv(left)
            except ChannelTimeout:
                continue
            self._drain()
            return msg

    def _drain(self) -> None:
        # a post for a message we took without waiting: consume it, or the next wait would
        # wake at once (harmless, but it would then wait on the futex instead)
        if self._mine.value > 0:
            try:
                self._mine.acquire(0)
            except posix_ipc.BusyError:
                pass

    def call(self, data, timeout: float | None = None) -> memoryview:
        deadline = None if timeout is None else time.monotonic() + timeout
        self.send(data, timeout)
        return self.recv(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Close this side and its semaphores; the host also unlinks them (idempotent)."""
        was_closed = self.closed
        super().close()
        if not was_closed and getattr(self, "_theirs", None) is not None:
            # wake a peer sleeping on its semaphore so it notices the close at once
            try:
                self._post()
            except posix_ipc.Error:
                pass
        for sem in (getattr(self, "_mine", None), getattr(self, "_theirs", None)):
            if sem is not None:
                try:
                    sem.close()
                except posix_ipc.Error:
                    pass
        self._mine = self._theirs = None
        if getattr(self, "_sem_owner", False):
            self._sem_unlink()

    def unlink(self) -> None:
        """Remove the channel files and the semaphores. The host's job -- or the survivor's,
        when the server outlives a host killed with -9 and reaps its session."""
        super().unlink()
        self._sem_unlink()

    def _sem_unlink(self) -> None:
        for name in getattr(self, "_sem_names", ()):
            try:
                posix_ipc.unlink_semaphore(name)
            except posix_ipc.ExistentialError:
                pass
        if self.path is not None:
            Path(str(self.path) + SEM_SUFFIX).unlink(missing_ok=True)


def _semaphore_names(shm: Path = Path("/dev/shm")) -> list[str]:
    prefix = f"sem.{_PREFIX}{os.getuid()}-"
    try:
        return ["/" + e[4:] for e in os.listdir(shm) if e.startswith(prefix)]
    except FileNotFoundError:
        return []


def sweep(base: os.PathLike | str) -> list[str]:
    """Unlink the semaphores of sessions under ``base`` whose directory is gone.

    Run after :func:`shmbench.transport.session.gc`: a session directory exists exactly as long as
    its host lives (or until gc reaps it), so a semaphore named after a missing session
    belongs to nobody. Only names made for this ``base`` are considered (they carry its
    hash), so other channel bases' live semaphores are left alone. Returns the names
    unlinked.
    """
    base = Path(base)
    try:
        sessions = {_clean(s, 60) for s in os.listdir(base)}
    except FileNotFoundError:
        sessions = set()
    gone = []
    head = f"/{_PREFIX}{os.getuid()}-{_base_tag(base)}-"
    for name in _semaphore_names():
        if not name.startswith(head) or not _NAME_RE.match(name):
            continue
        if name[len(head) :].split("-", 1)[0] in sessions:
            continue
        try:
            posix_ipc.unlink_semaphore(name)
            gone.append(name)
        except posix_ipc.ExistentialError:
            pass
    return gone
