"""Live random generators: the host's ``env.np_random`` IS the remote env's stream.

Natively ``env.np_random`` is the env's own Generator: a wrapper that draws from it (say
``StickyAction``) advances the stream the env draws from next, and the env's draws move
what the wrapper sees. The host keeps one Generator per remote env and keeps it in step
lazily, so that a call that touches neither costs nothing:

* reading ``np_random`` after any request to the server (the server may have drawn)
  fetches the remote state into the host's Generator -- the same object each time, so a
  reference stays good across reads;
* once handed out, the Generator may be drawn from; before the next request to that
  server (a step, a reset, anything) its state is pushed back if it moved. The hook is
  :attr:`~shmbench.host.worker.Worker.before_request`, which the proxies run ahead of
  their fast paths too.

Requests are counted by the channels themselves (``Channel.sent``), so "has the server
had a request since?" is a comparison of integers, and an unused generator adds nothing to
any call. A reference kept across a step without reading ``np_random`` again sees the
state of its last read, as the one thing that differs from a local env.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from shmbench.host.worker import Worker
from shmbench.wire.spaces import generator_from_state, generator_state

__all__ = ["LiveGenerators"]


class LiveGenerators:
    """The host's Generators for ``n`` remote envs, served by ``workers``.

    Args:
        workers: the workers whose requests can move the remote generators.
        fetch: returns the remote envs' bit-generator states (one request per worker).
        push: ``push(name, states)`` sets the remote envs' generators (one request per
            worker): ``"np_random_state"`` moves them on to ``states`` (the host drew),
            ``"np_random"`` replaces them (assigned); a None state leaves that one alone.
        n: how many envs (generators).
    """

    def __init__(
        self, workers: Sequence[Worker], fetch: Callable[[], list], push: Callable[[str, list], None], n: int
    ) -> None:
        self.workers = list(workers)
        self.fetch = fetch
        self.push = push
        self.generators: list[np.random.Generator | None] = [None] * n
        self._synced_at: tuple[int, ...] | None = None
        self._remote: list = [None] * n  # the states the remote envs hold (as of _synced_at)
        self._out = False  # handed out since the last flush: the host may have drawn

    def _clock(self) -> tuple[int, ...]:
        return tuple(w.channel.sent for w in self.workers)

    def get(self) -> list[np.random.Generator]:
        """The generators, in step with the remote envs; they are out from now on."""
        if self._synced_at != self._clock():
            self._flush()  # a generator handed out earlier and drawn from: its state first
            states = self.fetch()
            if len(states) != len(self.generators):
                raise ValueError(f"{len(states)} generator states for {len(self.generators)} envs")
            self.generators = [generator_from_state(s, into=g) for s, g in zip(states, self.generators)]
            self._remote = [generator_state(g) for g in self.generators]
            self._synced_at = self._clock()
        self._hand_out()
        return [g for g in self.generators if g is not None]

    def set(self, index: int, generator: np.random.Generator) -> None:
        """Replace one env's generator (``env.np_random = generator``): the remote env gets
        its state now, and ``generator`` is the host's from now on."""
        if not isinstance(generator, np.random.Generator):
            raise TypeError(f"np_random must be a numpy Generator, not {type(generator).__name__}")
        gens = self.get()
        self._flush()
        gens[index] = generator
        self.generators = list(gens)
        state = generator_state(generator)
        self.push("np_random", [state if i == index else None for i in range(len(gens))])
        self._remote[index] = state
        self._synced_at = self._clock()
        self._hand_out()

    def _hand_out(self) -> None:
        self._out = True
        for w in self.workers:
            w.before_request = self._flush

    def _flush(self) -> None:
        """Before a request: what the host drew since the last sync goes to the remote envs."""
        out, self._out = self._out, False
        for w in self.workers:
            if w.before_request == self._flush:
                w.before_request = None
        if not out:
            return
        now = [generator_state(g) for g in self.generators]
        if now != self._remote:
            self.push("np_random_state", [s if s != r else None for s, r in zip(now, self._remote)])
            self._remote = now
            self._synced_at = self._clock()
