"""What every host-side proxy of servers shares: a session, its workers and slabs, one owner.

:class:`~shmbench.host.env.RemoteEnvironmentClient`, :class:`~shmbench.host.vector.ShmVectorEnv`
and :class:`~shmbench.host.agent.RemoteAgent` each own a channel session and the servers
in it. :class:`Owned` closes them exactly once -- from ``close()``, from the garbage
collector (with a ResourceWarning: an unclosed env is a bug in the caller) or at interpreter
exit -- and :class:`RemoteBase` gives the proxies the same constructor preamble and
lifecycle methods.
"""

from __future__ import annotations

import time
import warnings
import weakref
from typing import Any, Literal

from shmbench.host.worker import CLOSE_TIMEOUT, STALL_TIMEOUT, Worker
from shmbench.runtimes.base import stop_all
from shmbench.runtimes.limits import sweep_cgroups
from shmbench.runtimes.selection import get_runtime
from shmbench.transport.session import Session, Slab, gc
from shmbench.wire.codec import Codec

__all__ = ["Owned", "RemoteBase"]


def _finalize(workers: list[Worker], session: Session, slab: list, warn: bool) -> None:
    # every worker at once: CLOSE to all, one deadline for all the answers, then the
    # processes stopped together (stop_all) -- a bounded time however many workers there are
    try:
        deadline = time.monotonic() + CLOSE_TIMEOUT
        for w in workers:
            try:
                w.begin_close()
            except Exception:
                pass
        for w in workers:
            try:
                w.finish_close(deadline)
            except Exception:
                pass
        stop_all([w.process for w in workers if w.process is not None], deadline)
        for s in slab:
            s.close()
    finally:
        session.close()
    if warn:  # after the cleanup: a warning turned into an error must not stop it
        warnings.warn("shmbench env was not closed; closed it now", ResourceWarning, stacklevel=2)


class Owned:
    """Session, workers and slab of a remote env, closed exactly once (close, GC or exit).

    The slab exists from the start (empty, sealed): every worker inherits its descriptor,
    and the proxy sizes it once the handshake told the layout (``slab.allocate``).
    """

    def __init__(self, owner: object) -> None:
        gc()  # reclaim session directories of hosts that died (kill -9) since the last run
        sweep_cgroups()  # and the cgroups of their servers
        self.session = Session()
        self.workers: list[Worker] = []
        try:
            self.slab = Slab.create()
        except BaseException:
            self.session.close()
            raise
        self.slabs: list[Slab] = [self.slab]
        self._finalizer = weakref.finalize(owner, _finalize, self.workers, self.session, self.slabs, True)
        self._finalizer.atexit = True

    def close(self) -> None:
        if self._finalizer.alive:
            self._finalizer.detach()
            _finalize(self.workers, self.session, self.slabs, False)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


class RemoteBase:
    """Constructor preamble and lifecycle shared by the proxies (a mixin).

    ``_open()`` picks the runtime and creates the owned session; ``_started()`` wraps the
    subclass's start-up so that a failure leaves nothing behind.
    """

    timeout: float | None
    runtime: Any
    _owned: Owned

    def _open(
        self,
        *,
        runtime,
        image,
        binds,
        environment,
        allow_pickle: bool,
        timeout: float | None,
        wakeup: str = "futex",
        limits: Any = None,
        stall_timeout: float | None = STALL_TIMEOUT,
    ) -> None:
        self.timeout = timeout
        self.wakeup = wakeup
        self.stall_timeout = stall_timeout
        self._codec = Codec(allow_pickle=allow_pickle)
        if limits is not None and not isinstance(runtime, str):
            raise ValueError("limits= goes with a runtime name; a Runtime instance carries its own limits")
        self.runtime = get_runtime(
            runtime,
            image=image,
            binds=binds,
            environment=environment,
            **({"limits": limits} if limits is not None else {}),
        )
        self._owned = Owned(self)

    def _new_worker(self, index: int) -> Worker:
        """Start worker ``index`` (its server inherits the session's slab); owned from now on."""
        worker = Worker(
            self._owned.session,
            index,
            self.runtime,
            codec=self._codec,
            slab=self._owned.slab,
            timeout=self.timeout,
            stall_timeout=self.stall_timeout,
            wakeup=self.wakeup,
        )
        self._owned.workers.append(worker)
        return worker

    def _started(self, start, *args: Any) -> None:
        try:
            start(*args)
        except BaseException:
            self._owned.close()
            raise

    def close(self, **kwargs: Any) -> None:
        """Stop the server(s) and remove their files. Idempotent.

        (Keyword arguments are accepted and ignored: gymnasium's vector wrappers pass theirs
        on to ``close``.)
        """
        owned = getattr(self, "_owned", None)
        if owned is not None:
            owned.close()

    @property
    def closed(self) -> bool:
        owned = getattr(self, "_owned", None)
        return owned is None or owned.closed

    @closed.setter
    def closed(self, value: bool) -> None:
        # gymnasium's VectorEnv.close() marks itself closed by assignment; here closing is
        # what makes it so, and an env cannot be reopened
        if not value:
            raise AttributeError("a closed shmbench env cannot be reopened")
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> Literal[False]:
        self.close()
        return False  # exceptions propagate
