"""The host side of one server: its process, its channel, and the state between them.

Shared by :class:`~shmbench.host.env.RemoteEnvironmentClient` (one worker) and
:class:`~shmbench.host.vector.ShmVectorEnv` (several). It turns low-level outcomes into the
errors a user can act on: a dead server becomes :class:`PeerDied` naming the worker, its
exit status (and the limit that killed it, when one did) and the tail of its output; a
timed-out call or a frozen server marks the worker BROKEN, so that a late reply is never
read as the answer to the next request.

A call interrupted while it waited (Ctrl-C, another exception from a signal handler) leaves
its reply owed: the request was sent, the server computes the answer. :meth:`interrupted`
records that, and the next request first drains the owed reply (within the timeout, with
the usual liveness checks) and discards it -- the stream never slips one step behind.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shmbench.errors import (
    ChannelClosed,
    ChannelTimeout,
    PeerDied,
    PeerStalled,
    ProtocolError,
    RequestPending,
    ShmbenchError,
)
from shmbench.runtimes.base import Launch, Runtime, ServerProcess
from shmbench.transport.channel import Channel
from shmbench.transport.session import Session, Slab
from shmbench.wire.codec import Codec
from shmbench.wire.protocol import PROTOCOL_VERSION, Opcode, Status, split_notes
from shmbench.wire.remote import emit_warnings, raise_remote

__all__ = [
    "Worker",
    "WorkerState",
    "WaitPolicy",
    "wait_policy",
    "emit_all_notes",
    "START_TIMEOUT",
    "CLOSE_TIMEOUT",
    "STALL_TIMEOUT",
]

#: how long a server may take from spawn to a built env (an image's first start can be slow)
START_TIMEOUT = 120.0
#: how long close() waits, for all of a proxy's servers together, for them to answer CLOSE and exit
CLOSE_TIMEOUT = 5.0
#: how long a server may show no heartbeat before a wait calls it frozen (None: never)
STALL_TIMEOUT = 10.0
_CLOSE = bytes((Opcode.CLOSE, 0))


class WorkerState(enum.Enum):
    READY = "ready"  # idle: a request may be sent
    PENDING = "pending"  # a request is out, its reply not yet read
    BROKEN = "broken"  # a timeout or protocol error: the stream is out of step
    DEAD = "dead"  # the server is gone
    CLOSED = "closed"


@dataclass(frozen=True)
class WaitPolicy:
    """How the host and its servers wait for each other (``Channel.configure_wait``).

    ``host_*`` for the host waiting for replies, ``server_*`` for a server waiting for the
    next request (sent to it in CONFIGURE).
    """

    host_spin_ns: int
    host_adaptive: bool
    host_track: bool
    server_spin_ns: int
    server_adaptive: bool

    def configure_host(self, channel: Channel) -> None:
        channel.configure_wait(spin_ns=self.host_spin_ns, adaptive=self.host_adaptive, track=self.host_track)

    def for_server(self) -> dict[str, Any]:
        return {"spin_ns": self.server_spin_ns, "adaptive": self.server_adaptive}


#: the longest a host that owns a core spins for a reply before it sleeps
HOST_SPIN_CAP_NS = 20_000_000


def wait_policy(wait: str | int | float, workers: int) -> WaitPolicy:
    """The wait policy for a wait name, given how many servers share the machine with the host.

    ``"auto"``: when the host and every server can each have a core, the host *tracks* its
    replies -- it spins about twice its longest recent reply time, whatever that is (up to
    20 ms), and so is woken by no futex for a step of any length: waking a halted vCPU
    costs tens of microseconds here, and a synchronous step has nothing else to do meanwhile.
    When they outnumber the cores the host sleeps at once (spinning on a core a server
    needs costs it a scheduler tick per step). Servers spin adaptively for the next
    request (up to 100 us, pausing when spins keep failing). ``"spin"`` spins up to 1 ms on
    both sides; ``"block"`` never spins; a number is a fixed spin budget in seconds, both sides.
    """
    cores = len(os.sched_getaffinity(0))
    if wait == "auto":
        if workers + 1 <= cores:
            return WaitPolicy(HOST_SPIN_CAP_NS, False, True, 100_000, True)
        return WaitPolicy(0, False, False, 100_000, True)
    if wait == "spin":
        return WaitPolicy(1_000_000, False, False, 1_000_000, False)
    if wait == "block":
        return WaitPolicy(0, False, False, 0, False)
    if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait >= 0:
        ns = int(wait * 1e9)
        return WaitPolicy(ns, False, False, ns, False)
    raise ValueError(f"wait must be 'auto', 'spin', 'block' or seconds >= 0, got {wait!r}")


class Worker:
    """One server process and its channel, seen from the host.

    Args:
        session: the host-only session directory (the server's log goes there).
        index: the worker's number (``w<index>``).
        runtime: what starts the server.
        codec: the slow-path codec.
        slab: the session's slab, inherited by the server (None: it needs none).
        timeout: seconds any call may take (None: no limit; liveness is checked anyway).
        stall_timeout: seconds without a heartbeat after which a live server is frozen.
        wakeup: ``"futex"`` or ``"posix_ipc"`` (the process runtime only).
    """

    def __init__(
        self,
        session: Session,
        index: int,
        runtime: Runtime,
        *,
        codec: Codec,
        slab: Slab | None = None,
        timeout: float | None = None,
        stall_timeout: float | None = STALL_TIMEOUT,
        wakeup: str = "futex",
    ) -> None:
        self.index = index
        self.runtime = runtime
        self.codec = codec
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self.name = f"worker {index} ({runtime.name} runtime, image {runtime.describe_image()})"
        self.state = WorkerState.CLOSED
        self.owed = False  # an interrupted call's reply is still to come
        self.notes: list = []  # notes of replies received but not yet re-emitted
        #: run (once) before the next request: what the host must tell the server first
        #: (the live generators' draws, host/rng.py)
        self.before_request: Callable[[], None] | None = None
        if wakeup != "futex" and runtime.isolated:
            raise ValueError(
                f"wakeup={wakeup!r} needs the host's /dev/shm, which the {runtime.name} "
                f"runtime hides from the server; use the default futex wake-ups"
            )
        self.channel: Channel = session.create_sealed(f"w{index}", wakeup=wakeup)
        self.process: ServerProcess | None = None
        fds = {"SHMBENCH_CHANNEL_FD": self.channel.fd}
        if slab is not None:
            fds["SHMBENCH_SLAB_FD"] = slab.fd
        environment = {}
        if wakeup == "posix_ipc":
            environment["SHMBENCH_SEMAPHORES"] = self.channel.semaphore_names  # type: ignore[attr-defined]
        try:
            log_fd = session.create_log(f"w{index}")
            self.process = runtime.start(
                Launch(
                    name=self.name,
                    fds=fds,
                    log_fd=log_fd,
                    log_path=session.path / f"w{index}.log",
                    environment=environment,
                    tag=f"{session.name}-w{index}",
                )
            )
            self.channel.set_peer(death_fds=[self.process.pidfd()])
            self.channel.configure_wait(stall_ns=0 if stall_timeout is None else int(stall_timeout * 1e9))
        except BaseException:
            self.channel.close()
            if self.process is not None:
                self.process.stop(grace=0)
            raise
        self.state = WorkerState.READY
        self.server_info: dict = {}

    # -- requests ------------------------------------------------------------------------

    def send(self, op: int, payload: bytes | bytearray | memoryview = b"", flag: int = 0) -> None:
        """Send a request without waiting (the first half of a call)."""
        self.settle()
        if self.before_request is not None:
            self.prepare()
        if self.state is not WorkerState.READY:
            self._refuse()
        try:
            self.channel.send(
                bytes((op, flag)) + bytes(payload) if payload else bytes((op, flag)), timeout=self.timeout
            )
        except ShmbenchError as exc:
            raise self.failure(exc) from None
        except BaseException:
            self.interrupted()
            raise
        self.state = WorkerState.PENDING

    def receive(self, timeout: float | None) -> memoryview:
        """Wait up to ``timeout`` seconds (None: no limit) for the reply to the pending
        request; raises RemoteEnvError on an env error."""
        if self.state is not WorkerState.PENDING or self.owed:
            self._refuse(receiving=True)
        try:
            reply = self.channel.recv(timeout=timeout)
        except ShmbenchError as exc:
            raise self.failure(exc, timeout) from None
        except BaseException:
            self.interrupted()
            raise
        self.state = WorkerState.READY
        return self.check(reply)

    def request(self, op: int, payload: bytes | bytearray | memoryview = b"", flag: int = 0) -> memoryview:
        """Send a request and wait for its reply, within the worker's timeout; the env's
        warnings on the way are re-emitted here."""
        self.send(op, payload, flag)
        try:
            return self.receive(self.timeout)
        finally:
            if self.notes:
                self.emit_notes()

    def emit_notes(self) -> None:
        """Re-emit the warnings the replies so far carried (the host's filters decide)."""
        notes, self.notes = self.notes, []
        for n in notes:
            emit_warnings(n)

    def call(self, op: int, value: Any = None) -> Any:
        """A slow-path request: the codec both ways."""
        reply = self.request(op, self.codec.encode(value))
        return self.codec.decode(reply[1:])

    def interrupted(self) -> None:
        """A call on this worker's channel was interrupted (Ctrl-C while it waited): if its
        request went out, the reply is owed and the next request drains it first."""
        if self.state in (WorkerState.BROKEN, WorkerState.DEAD, WorkerState.CLOSED):
            return
        if self.channel.closed or self.channel.receiving:
            self.mark_broken()  # half a reply in hand: the stream cannot be resumed
            return
        owed = self.channel.sent - self.channel.received
        if owed == 1:
            self.state, self.owed = WorkerState.PENDING, True
        elif owed == 0:
            self.state, self.owed = WorkerState.READY, False
        else:
            self.mark_broken()

    def prepare(self) -> None:
        """Run :attr:`before_request` (once); the proxies' fast paths call it too."""
        hook, self.before_request = self.before_request, None
        if hook is not None:
            hook()

    def settle(self) -> None:
        """Drain the reply an interrupted call left owed (see :meth:`interrupted`)."""
        if not self.owed:
            return
        self.owed = False
        try:
            reply = self.channel.recv(timeout=self.timeout)
        except ShmbenchError as exc:
            raise self.failure(exc) from None
        except BaseException:
            self.owed = True  # interrupted again: still owed
            raise
        del reply  # the interrupted call's answer: nobody asks for it any more
        self.channel.release()
        self.state = WorkerState.READY

    def mark_broken(self) -> None:
        """The stream is out of step: refuse every further request (see failure())."""
        self.state = WorkerState.BROKEN
        self.owed = False
        self.channel.close()

    def check(self, reply: memoryview) -> memoryview:
        """The reply itself, or the env's exception raised; its notes (the env's warnings)
        are kept for :meth:`emit_notes`, which the caller runs once the call is complete."""
        if not len(reply):
            self.mark_broken()
            raise ProtocolError(f"{self.name} sent an empty reply")
        status = reply[0]
        if status == Status.NOTES:
            try:
                notes, reply = split_notes(reply, self.codec)
            except ProtocolError:
                self.mark_broken()
                raise
            self.notes.append(notes)
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
                self.owed = False
                self.channel.close()

    def _failure(self, exc: BaseException, timeout: float | None) -> BaseException:
        if isinstance(exc, PeerStalled):
            self.state = WorkerState.BROKEN
            state = self.process.state() if self.process else None
            return PeerStalled(
                f"{self.name} has shown no heartbeat for {self.stall_timeout} s"
                + (f": {state}" if state else " (stopped or frozen)")
                + "; the worker is now marked broken: close the env"
            )
        if isinstance(exc, ChannelTimeout):
            self.state = WorkerState.BROKEN
            return ChannelTimeout(
                f"{self.name} did not answer within {timeout} s; the worker is now marked "
                f"broken (a late reply must not be read as the next one): close the env"
            )
        if isinstance(exc, (PeerDied, ChannelClosed)):
            self.state = WorkerState.DEAD
            return self._dead(
                "the env server died"
                if isinstance(exc, PeerDied)
                else "the env server closed the channel unexpectedly",
                wait=1.0,
            )
        if isinstance(exc, ProtocolError):
            self.state = WorkerState.BROKEN
        return exc

    def _dead(self, message: str, wait: float = 0.0) -> PeerDied:
        status = self.process.exit_status(wait=wait) if self.process else None
        why = self.process.why_dead() if self.process else None
        return PeerDied(
            message + (f" ({why})" if why else ""),
            peer=self.name,
            exit_status=status,
            log_tail=self.process.log_tail() if self.process else None,
        )

    def _refuse(self, receiving: bool = False) -> None:
        if self.state is WorkerState.CLOSED:
            raise ChannelClosed(f"{self.name} is closed")
        if self.state is WorkerState.PENDING and not receiving:
            raise RequestPending(f"{self.name} has a request in flight: wait for it first (step_wait after step_async)")
        if self.state is WorkerState.DEAD:
            raise self._dead("the env server is gone")
        if self.state is WorkerState.READY or (self.state is WorkerState.PENDING and self.owed):
            raise RequestPending(f"{self.name} has no request in flight to wait for (step_async first)")
        raise ChannelTimeout(
            f"{self.name} is broken after an earlier timeout, stall or protocol error; close the env and make a new one"
        )

    # -- handshake -----------------------------------------------------------------------

    def make(self, spec: dict, start_timeout: float = START_TIMEOUT) -> dict:
        """Ask the server to build its env(s); returns its description of them."""
        self.send(Opcode.MAKE, self.codec.encode(spec))
        try:
            info = self.codec.decode(self.receive(max(start_timeout, self.timeout or 0))[1:])
        finally:
            if self.notes:
                self.emit_notes()
        self.make_done(info)
        return info

    def make_done(self, info: Any) -> None:
        """Record the server's MAKE reply."""
        if not isinstance(info, dict):
            raise ProtocolError(f"{self.name} answered MAKE with {type(info).__name__}")
        server = info.get("server")
        self.server_info = server if isinstance(server, dict) else {}
        theirs = self.server_info.get("protocol", 1)
        if theirs != PROTOCOL_VERSION:
            from shmbench import __version__

            self.mark_broken()
            raise ProtocolError(
                f"{self.name} speaks shmbench protocol {theirs!r} (its shmbench "
                f"{self.server_info.get('shmbench', '?')}), this host protocol {PROTOCOL_VERSION} (shmbench "
                f"{__version__}): rebuild the image with this host's shmbench (shmbench build "
                "RECIPE), or run it from a host with the image's shmbench version"
            )

    # -- shutdown: begin for every worker, then finish for every worker ---------------------

    def begin_close(self) -> None:
        """Ask the server to CLOSE (when it is idle), without waiting for it."""
        if self.state is WorkerState.CLOSED:
            return
        self._clean = self.state is WorkerState.READY and not self.owed
        self.state = WorkerState.CLOSED
        if self._clean:
            try:
                self.channel.send(_CLOSE, timeout=0)
            except ShmbenchError:
                self._clean = False

    def finish_close(self, deadline: float) -> None:
        """Wait until ``deadline`` (monotonic) for the server's answer to CLOSE, then close
        this side (the process itself is stopped by the caller, with the others)."""
        if getattr(self, "_clean", False):
            self._clean = False
            try:
                self.channel.recv(timeout=max(0.0, deadline - time.monotonic()))
            except ShmbenchError:
                pass
        self.channel.close()
        self.channel.unlink()

    def close(self) -> None:
        """CLOSE, wait, terminate, wait, kill (this worker alone). Idempotent."""
        from shmbench.runtimes.base import stop_all

        if self.state is WorkerState.CLOSED and self.channel.closed:
            return
        self.begin_close()
        deadline = time.monotonic() + CLOSE_TIMEOUT
        self.finish_close(deadline)
        if self.process is not None:
            stop_all([self.process], deadline)

    @property
    def log_path(self) -> Path | None:
        return self.process.log_path if self.process else None


def emit_all_notes(workers: list[Worker]) -> None:
    """Re-emit the warnings the workers' replies carried, in worker (so env) order: once
    every reply is in, so that a warning turned into an error leaves no reply behind."""
    for w in workers:
        if w.notes:
            w.emit_notes()
