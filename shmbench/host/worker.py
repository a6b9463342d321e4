"""The host side of one server: its process, its channel, and the state between them.

Shared by :class:`~shmbench.host.env.RemoteEnvironmentClient` (one worker) and
:class:`~shmbench.host.vector.ShmVectorEnv` (several). It turns low-level outcomes into the
errors a user can act on: a dead server becomes :class:`PeerDied` naming the worker, its
exit status and the tail of its log; a timed-out call marks the worker BROKEN so that a
late reply is never read as the answer to the next request.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Any

from shmbench.errors import (
    ChannelClosed,
    ChannelTimeout,
    PeerDied,
    ProtocolError,
    RequestPending,
    ShmbenchError,
)
from shmbench.runtimes.base import Launch, Runtime, ServerProcess
from shmbench.transport.channel import LOCK_SUFFIX, Channel
from shmbench.transport.session import Session
from shmbench.wire.codec import Codec
from shmbench.wire.protocol import Opcode, Status, raise_remote

__all__ = ["Worker", "WorkerState", "wait_policy", "START_TIMEOUT"]

#: how long a server may take from spawn to a built env (an image's first start can be slow)
START_TIMEOUT = 120.0
#: how long close() waits for a server to answer CLOSE and exit
CLOSE_TIMEOUT = 5.0


class WorkerState(enum.Enum):
    READY = "ready"  # idle: a request may be sent
    PENDING = "pending"  # a request is out, its reply not yet read
    BROKEN = "broken"  # a timeout or protocol error: the stream is out of step
    DEAD = "dead"  # the server is gone
    CLOSED = "closed"


def wait_policy(wait: str | int | float, processes: int) -> tuple[int, bool]:
    """(spin_ns, adaptive) for a wait policy name, given how many processes take turns.

    ``"auto"`` spins adaptively (up to 100 us, learning the typical reply time) while every
    process can have its own core, and blocks at once when they outnumber the cores:
    spinning on a core the peer needs costs a scheduler tick (milliseconds) per step.
    ``"spin"`` spins up to 1 ms before blocking; ``"block"`` never spins; a number is a
    fixed spin budget in seconds.
    """
    cores = len(os.sched_getaffinity(0))
    if wait == "auto":
        return (100_000, True) if processes <= cores else (0, False)
    if wait == "spin":
        return 1_000_000, False
    if wait == "block":
        return 0, False
    if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait >= 0:
        return int(wait * 1e9), False
    raise ValueError(f"wait must be 'auto', 'spin', 'block' or seconds >= 0, got {wait!r}")


class Worker:
    """One server process and its channel, seen from the host."""

    def __init__(
        self,
        session: Session,
        index: int,
        runtime: Runtime,
        *,
        codec: Codec,
        timeout: float | None = None,
        wakeup: str = "futex",
    ) -> None:
        self.index = index
        self.runtime = runtime
        self.codec = codec
        self.timeout = timeout
        self.name = f"worker {index} ({runtime.name} runtime, image {runtime.describe_image()})"
        self.state = WorkerState.CLOSED
        if wakeup != "futex" and runtime.isolated:
            raise ValueError(
                f"wakeup={wakeup!r} needs the host's /dev/shm, which the {runtime.name} "
                f"runtime hides from the server; use the default futex wake-ups"
            )
        self.channel: Channel = session.create_channel(f"w{index}", wakeup=wakeup)
        self.process: ServerProcess | None = None
        try:
            self.process = runtime.start(
                Launch(
                    session_dir=session.path,
                    channel_name=self.channel.path.name,
                    log_path=session.path / f"w{index}.log",
                    name=self.name,
                )
            )
            self.channel.set_peer(death_fds=[self.process.pidfd()])
        except BaseException:
            self.channel.close()
            self.channel.unlink()
            raise
        self.state = WorkerState.READY
        self.server_info: dict = {}

    # -- requests ------------------------------------------------------------------------

    def send(self, op: int, payload: bytes | bytearray | memoryview = b"", flag: int = 0) -> None:
        """Send a request without waiting (the first half of a call)."""
        if self.state is not WorkerState.READY:
            self._refuse()
        try:
            self.channel.send(
                bytes((op, flag)) + bytes(payload) if payload else bytes((op, flag)), timeout=self.timeout
            )
        except ShmbenchError as exc:
            raise self.failure(exc) from None
        self.state = WorkerState.PENDING

    def receive(self, timeout: float | None) -> memoryview:
        """Wait up to ``timeout`` seconds (None: no limit) for the reply to the pending
        request; raises RemoteEnvError on an env error."""
        if self.state is not WorkerState.PENDING:
            self._refuse()
        try:
            reply = self.channel.recv(timeout=timeout)
        except ShmbenchError as exc:
            raise self.failure(exc, timeout) from None
        self.state = WorkerState.READY
        return self.check(reply)

    def request(self, op: int, payload: bytes | bytearray | memoryview = b"", flag: int = 0) -> memoryview:
        """Send a request and wait for its reply, within the worker's timeout."""
        self.send(op, payload, flag)
        return self.receive(self.timeout)

    def call(self, op: int, value: Any = None) -> Any:
        """A slow-path request: the codec both ways."""
        reply = self.request(op, self.codec.encode(value))
        return self.codec.decode(reply[1:])

    def mark_broken(self) -> None:
        """The stream is out of step: refuse every further request (see failure())."""
        self.state = WorkerState.BROKEN
        self.channel.close()

    def check(self, reply: memoryview) -> memoryview:
        if not len(reply):
            self.mark_broken()
            raise ProtocolError(f"{self.name} sent an empty reply")
        status = reply[0]
        if status == Status.OK:
            return reply
        if status == Status.ERROR:
            raise_remote(self.codec.decode(reply[1:]))
        self.mark_broken()
        raise ProtocolError(f"{self.name} sent a reply with status {status}")

    def failure(self, exc: BaseException, timeout: float | None = None) -> BaseException:
        """Turn a low-level error into the one to raise, updating the state (``timeout``:
        the wait that ran out, for the message; default the worker's).

        A worker that failed has its channel closed at once: callers on the hot path do not
        check the state, the closed channel refuses them, and this maps that refusal back to
        the original reason. (Closing also tells the server to stop.)
        """
        if self.state in (WorkerState.BROKEN, WorkerState.DEAD, WorkerState.CLOSED):
            try:
                self._refuse()
            except BaseException as refusal:
                return refusal
        try:
            return self._failure(exc, self.timeout if timeout is None else timeout)
        finally:
            if self.state in (WorkerState.BROKEN, WorkerState.DEAD):
                self.channel.close()

    def _failure(self, exc: BaseException, timeout: float | None) -> BaseException:
        if isinstance(exc, ChannelTimeout):
            self.state = WorkerState.BROKEN
            return ChannelTimeout(
                f"{self.name} did not answer within {timeout} s; the worker is now marked "
                f"broken (a late reply must not be read as the next one): close the env"
            )
        if isinstance(exc, (PeerDied, ChannelClosed)):
            self.state = WorkerState.DEAD
            status = self.process.exit_status(wait=1.0) if self.process else None
            return PeerDied(
                "the env server died"
                if isinstance(exc, PeerDied)
                else "the env server closed the channel unexpectedly",
                peer=self.name,
                exit_status=status,
                log_tail=self.process.log_tail() if self.process else None,
            )
        if isinstance(exc, ProtocolError):
            self.state = WorkerState.BROKEN
        return exc

    def _refuse(self) -> None:
        if self.state is WorkerState.CLOSED:
            raise ChannelClosed(f"{self.name} is closed")
        if self.state is WorkerState.PENDING:
            raise RequestPending(f"{self.name} has a request in flight: wait for it first (step_wait after step_async)")
        if self.state is WorkerState.DEAD:
            raise PeerDied(
                "the env server is gone",
                peer=self.name,
                exit_status=self.process.exit_status() if self.process else None,
                log_tail=self.process.log_tail() if self.process else None,
            )
        raise ChannelTimeout(
            f"{self.name} is broken after an earlier timeout or protocol error; close the env and make a new one"
        )

    # -- handshake -----------------------------------------------------------------------

    def make(self, spec: dict, start_timeout: float = START_TIMEOUT) -> dict:
        """Ask the server to build its env(s); returns its description of them."""
        self.send(Opcode.MAKE, self.codec.encode(spec))
        info = self.codec.decode(self.receive(max(start_timeout, self.timeout or 0))[1:])
        self.make_done(info)
        return info

    def make_done(self, info: Any) -> None:
        """Record the server's MAKE reply and start watching the server's lock."""
        if not isinstance(info, dict):
            raise ProtocolError(f"{self.name} answered MAKE with {type(info).__name__}")
        self.server_info = info.get("server") or {}
        # the server holds its lock from attach on: from now a dead server is noticed
        # through the lock too (the child we spawned may be a wrapper such as apptainer)
        try:
            lock_fd = os.open(str(self.channel.path) + LOCK_SUFFIX, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            lock_fd = -1
        if lock_fd >= 0:
            self.channel.set_peer(lock_fd=lock_fd)

    # -- shutdown --------------------------------------------------------------------------

    def close(self) -> None:
        """CLOSE, wait, terminate, wait, kill; then remove the channel files. Idempotent."""
        if self.state is WorkerState.CLOSED:
            return
        clean = self.state is WorkerState.READY
        self.state = WorkerState.CLOSED
        try:
            if clean:
                try:
                    self.channel.send(bytes((Opcode.CLOSE, 0)), timeout=CLOSE_TIMEOUT)
                    self.channel.recv(timeout=CLOSE_TIMEOUT)
                except ShmbenchError:
                    pass
        finally:
            self.channel.close()
            if self.process is not None:
                self.process.stop(grace=CLOSE_TIMEOUT if clean else 0.5)
            self.channel.unlink()

    @property
    def log_path(self) -> Path | None:
        return self.process.log_path if self.process else None
