"""The VectorEnv API around stepping, as gymnasium's own vector envs answer it.

:class:`VectorCalls` is the part of :class:`~shmbench.host.vector.ShmVectorEnv` that is not
stepping: ``call``, ``get_attr``, ``set_attr`` and ``render`` answer as ``SyncVectorEnv``'s
do (``get_attr`` *is* ``call``, so a method is called; ``np_random`` is the tuple of the
sub-envs' generators, live: :mod:`shmbench.host.rng`), and the asynchronous halves
(``reset_async``/``reset_wait``, ``step_async``/``step_wait``, ``call_async``/``call_wait``)
keep ``AsyncVectorEnv``'s state machine and misuse errors: a second ``*_async`` while one
is pending raises ``AlreadyPendingCallError``, a ``*_wait`` without its ``*_async``
``NoAsyncCallError``, anything after ``close()`` ``ClosedEnvironmentError`` -- gymnasium's
classes, which are also shmbench's :class:`~shmbench.errors.RequestPending` and
:class:`~shmbench.errors.ChannelClosed`.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import gymnasium.error as gym_error
import numpy as np

from shmbench.errors import ChannelClosed, RequestPending, ShmbenchError
from shmbench.host.rng import LiveGenerators
from shmbench.host.worker import Worker, emit_all_notes
from shmbench.wire.codec import Codec
from shmbench.wire.protocol import Opcode

__all__ = ["VectorCalls", "AlreadyPendingCallError", "NoAsyncCallError", "ClosedEnvironmentError"]


class AlreadyPendingCallError(RequestPending, gym_error.AlreadyPendingCallError):
    """A ``*_async`` call (or ``set_attr``) while another is pending: gymnasium's error."""

    def __init__(self, message: str, name: str) -> None:
        RequestPending.__init__(self, message)
        self.name = name


class NoAsyncCallError(RequestPending, gym_error.NoAsyncCallError):
    """A ``*_wait`` without its ``*_async``: gymnasium's error."""

    def __init__(self, message: str, name: str) -> None:
        RequestPending.__init__(self, message)
        self.name = name


class ClosedEnvironmentError(ChannelClosed, gym_error.ClosedEnvironmentError):
    """A call on a vector env after ``close()``: gymnasium's error."""


class VectorCalls:
    """Calls, attributes, render, generators and the async state of a ShmVectorEnv (a mixin)."""

    num_envs: int
    timeout: float | None
    _workers: list[Worker]
    _rows: list[range]
    _codec: Codec
    #: what is pending, as AsyncVectorEnv names it ("reset", "step", "call"); None: nothing
    _pending: str | None = None

    # -- the async state machine -------------------------------------------------------------

    def _assert_is_running(self) -> None:
        if self.closed:  # type: ignore[attr-defined]
            raise ClosedEnvironmentError(f"Trying to operate on `{type(self).__name__}`, after a call to `close()`.")

    def _begin(self, what: str, method: str) -> None:
        self._assert_is_running()
        if self._pending is not None:
            end = "" if method == "reset_async" else "."  # AsyncVectorEnv's words, to the letter
            raise AlreadyPendingCallError(
                f"Calling `{method}` while waiting for a pending call to `{self._pending}` to complete{end}",
                self._pending,
            )

    def _end(self, what: str, method: str, pair: str) -> None:
        self._assert_is_running()
        if self._pending != what:
            raise NoAsyncCallError(f"Calling `{method}` without any prior call to `{pair}`.", what)
        self._pending = None

    def close(self, **kwargs: Any) -> None:
        if self._pending is not None and not self.closed:  # type: ignore[attr-defined]
            gymnasium.logger.warn(f"Calling `close` while waiting for a pending call to `{self._pending}` to complete.")
        super().close(**kwargs)  # type: ignore[misc]

    # -- one request per worker --------------------------------------------------------------

    def _send_each(self, op: int, per_worker: list) -> None:
        for w, value in zip(self._workers, per_worker):
            w.send(op, self._codec.encode(value))

    def _gather(self, timeout: float | None = None) -> list:
        """Every worker's reply (per-env results, in env order); the first error raised once
        every reply is in."""
        out: list = []
        error = None
        for w in self._workers:
            try:
                result = self._codec.decode(w.receive(self.timeout if timeout is None else timeout)[1:])
                if result is not None:
                    out.extend(result)
            except ShmbenchError as exc:
                error = error or exc
            except BaseException:
                for later in self._workers[self._workers.index(w) + 1 :]:
                    later.interrupted()
                raise
        emit_all_notes(self._workers)
        if error is not None:
            raise error
        return out

    def _each(self, op: int, per_worker: list) -> list:
        self._send_each(op, per_worker)
        return self._gather()

    # -- SyncVectorEnv's API -----------------------------------------------------------------

    def render(self) -> tuple | None:
        """Every sub-env's ``render()``, as a tuple."""
        self._begin("call", "render")
        return tuple(self._each(Opcode.RENDER, [None] * len(self._workers)))

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple:
        """Call every sub-env's method ``name`` (or read it, when not callable)."""
        self.call_async(name, *args, **kwargs)
        return self.call_wait()

    def call_async(self, name: str, /, *args: Any, **kwargs: Any) -> None:
        self._begin("call", "call_async")
        if name == "np_random":
            self._local_call: tuple | None = tuple(self.np_random)
        else:
            self._local_call = None
            self._send_each(Opcode.CALL, [(name, list(args), kwargs)] * len(self._workers))
        self._pending = "call"

    def call_wait(self, timeout: float | None = None) -> tuple:
        self._end("call", "call_wait", "call_async")
        local = getattr(self, "_local_call", None)
        if local is not None:
            self._local_call = None
            return local
        return tuple(self._gather(timeout))

    def get_attr(self, name: str) -> tuple:
        """Every sub-env's attribute ``name`` -- ``call(name)``, as SyncVectorEnv has it."""
        return self.call(name)

    def set_attr(self, name: str, values: list | tuple | Any) -> None:
        self._begin("call", "set_attr")
        if not isinstance(values, (list, tuple)):
            values = [values for _ in range(self.num_envs)]
        if len(values) != self.num_envs:
            raise ValueError(
                "Values must be a list or tuple with length equal to the number of environments. "
                f"Got `{len(values)}` values for {self.num_envs} environments."
            )
        if name == "np_random":
            for i, g in enumerate(values):
                self._live().set(i, g)
            return
        self._each(Opcode.SET_ATTR, [(name, list(values[r.start : r.stop])) for r in self._rows])

    @property
    def np_random(self) -> tuple[np.random.Generator, ...]:
        """The sub-envs' generators, live (a tuple, as SyncVectorEnv's)."""
        return tuple(self._live().get())

    @property
    def np_random_seed(self) -> tuple:  # a tuple of the envs' seeds, as SyncVectorEnv's
        return self.get_attr("np_random_seed")

    def _push_states(self, name: str, states: list) -> None:
        """Set the generators of the workers whose envs have a state in ``states``."""
        picked = [
            (w, r) for w, r in zip(self._workers, self._rows) if any(s is not None for s in states[r.start : r.stop])
        ]
        for w, r in picked:
            w.send(Opcode.SET_ATTR, self._codec.encode((name, list(states[r.start : r.stop]))))
        saved, self._workers = self._workers, [w for w, _ in picked]
        try:
            self._gather()
        finally:
            self._workers = saved

    def _live(self) -> LiveGenerators:
        live = self.__dict__.get("_rng")
        if live is None:
            live = self._rng = LiveGenerators(
                self._workers,
                fetch=lambda: self._each(Opcode.GET_ATTR, ["np_random"] * len(self._workers)),
                push=self._push_states,
                n=self.num_envs,
            )
        return live
