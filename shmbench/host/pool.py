"""The async pool: take whichever envs finished first, as EnvPool and PufferLib hand them out.

A synchronous vector step waits for its slowest worker. When step times vary (a DAC
benchmark whose instances differ, envs with 0.1 to 2 ms steps), the faster workers idle
meanwhile. The pool keeps every worker busy instead: ``make_vec(..., batch_size=k)``
groups the envs ``k`` to a worker, :meth:`PoolCalls.send` gives groups their actions, and
:meth:`PoolCalls.recv` returns the group that finished first, with its env ids::

    envs = shmbench.make_vec("MyEnv-v0", 8, batch_size=4)   # two workers of four envs
    envs.reset(seed=0)
    envs.send(policy(first_obs))                             # every env: actions in env order
    while training:
        obs, rewards, terminated, truncated, infos, env_ids = envs.recv()
        envs.send(policy(obs), env_ids)                      # only these envs step next

Each env steps only on its own actions, in the order they were sent to it, so the same
seeds, actions and env ids give the same per-env trajectories however the groups' replies
interleave (autoreset too: it is each env's own). ``copy=False`` returns views of the
group's rows of the shared slab, valid until that group's next ``send``. ``step()`` keeps
working while no group is in flight (it steps every group).

Waiting for any of several servers sleeps on all their channels' futex words at once
(``futex_waitv``, the C extension's ``wait_any``), so the first reply wakes the host and
nothing polls. It sleeps in slices of 50 ms, between which a server that died is noticed;
one that stops answering but lives is waited for by the channel's own stall check once
``recv`` has waited ``stall_timeout``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from shmbench.errors import ChannelClosed, ChannelTimeout
from shmbench.host.worker import Worker, WorkerState, emit_all_notes
from shmbench.transport.channel import wait_any
from shmbench.wire.codec import Codec
from shmbench.wire.protocol import ActionTag, Opcode

__all__ = ["PoolCalls", "POLL_SLEEP", "rows_of"]

#: seconds between polls where a channel cannot be waited for by futex (semaphore backend)
POLL_SLEEP = 20e-6
#: seconds between liveness checks of the servers a recv waits for
_LIVENESS_PERIOD = 0.05


class PoolCalls:
    """``send``/``recv`` of a ShmVectorEnv (a mixin; see the module docstring)."""

    num_envs: int
    timeout: float | None
    stall_timeout: float | None
    copy: bool
    _workers: list[Worker]
    _rows: list[range]
    _codec: Codec
    _pending: str | None
    _act_batch: np.ndarray | None
    _observations: Any
    _obs_in_slab: bool
    _rewards: np.ndarray
    _terminations: np.ndarray
    _truncations: np.ndarray
    #: the groups (worker indices) sent actions and not yet received, oldest first
    _in_flight: list[int]
    #: each group's first env id -> (the group, its env ids as int64 bytes), made on first use
    _exact_ids: dict[int, tuple[int, bytes]] | None = None

    @property
    def in_flight(self) -> np.ndarray:
        """The ids of the envs sent actions and not yet received (in env order)."""
        groups = sorted(getattr(self, "_in_flight", None) or [])
        return np.array([i for g in groups for i in self._rows[g]], dtype=np.int64)

    def send(self, actions: Any, env_ids: Any = None) -> None:
        """Step the groups of ``env_ids`` (default: every env) on ``actions``, one per id
        in that order, without waiting. The ids must make up whole groups (as :meth:`recv`
        returns them) none of which is in flight."""
        in_flight = getattr(self, "_in_flight", None)
        if self._pending not in (None, "send"):
            self._begin("send", "send")  # type: ignore[attr-defined]  # raises: something else pending
        self._assert_is_running()  # type: ignore[attr-defined]
        ids = np.arange(self.num_envs) if env_ids is None else np.asarray(env_ids)
        g = self._exact_group(ids)
        if (
            g is not None
            and g not in (in_flight or [])
            and isinstance(actions, np.ndarray)
            and len(actions) == len(ids)
        ):
            # the training loop's case: the ids recv() returned, in their order -- one group,
            # already in env order (what _groups_of and _in_env_order would find, at a
            # twentieth of their cost: the host's time is the servers' on a full machine)
            groups, actions_in_env_order = [g], actions
        else:
            groups = self._groups_of(ids, in_flight or [])
            actions_in_env_order = self._in_env_order(actions, ids)
        batch = self._act_batch
        try:
            if (
                type(actions_in_env_order) is np.ndarray
                and batch is not None
                and actions_in_env_order.dtype == batch.dtype
                and actions_in_env_order.shape[1:] == batch.shape[1:]
            ):
                for g in groups:
                    rows = self._rows[g]
                    start = sum(len(self._rows[j]) for j in groups if j < g)
                    batch[rows.start : rows.stop] = actions_in_env_order[start : start + len(rows)]
                for g in groups:
                    self._workers[g].send(Opcode.STEP, flag=ActionTag.SLAB_ARRAY)
            else:
                payloads = []
                start = 0
                for g in groups:  # every payload first: a refused action must not leave some groups stepping
                    size = len(self._rows[g])
                    payloads.append(self._codec.encode(actions_in_env_order[start : start + size]))
                    start += size
                for g, payload in zip(groups, payloads):
                    self._workers[g].send(Opcode.STEP, payload, flag=ActionTag.CODEC)
        except ChannelClosed:
            self._assert_is_running()  # type: ignore[attr-defined]
            raise
        self._in_flight = (in_flight or []) + groups
        self._pending = "send"

    def recv(self, timeout: float | None = None) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict, np.ndarray]:
        """The group that finished first: ``(obs, rewards, terminated, truncated, infos,
        env_ids)``, each with one row per env of the group (waits at most ``timeout``,
        default the env's)."""
        if self._pending != "send" or not getattr(self, "_in_flight", None):
            self._end("send", "recv", "send")  # type: ignore[attr-defined]  # raises: nothing sent
        timeout = self.timeout if timeout is None else timeout
        env_obs: list | None = None if self._obs_in_slab else []
        try:
            g = self._first_ready(timeout)
            w, rows = self._workers[g], self._rows[g]
            self._in_flight.remove(g)
            try:
                mv = w.receive(timeout)  # it is there: this does not wait
                infos = self._absorb(w, rows, mv, {}, env_obs)  # type: ignore[attr-defined]
            finally:
                emit_all_notes([w])
        finally:
            # a group whose worker failed (dead, broken) is no longer in flight
            self._in_flight = [j for j in self._in_flight if self._workers[j].state is WorkerState.PENDING]
            if not self._in_flight:
                self._pending = None
        sl = slice(rows.start, rows.stop)
        if env_obs is not None:  # the codec's observations: a new batch of the group's rows
            space = self.single_observation_space  # type: ignore[attr-defined]
            obs = concatenate(space, env_obs, create_empty_array(space, n=len(rows), fn=np.zeros))  # type: ignore[arg-type]
        else:
            obs = rows_of(self._observations, sl, copy=self.copy)
        return (
            obs,
            self._rewards[sl].copy(),
            self._terminations[sl].astype(bool),
            self._truncations[sl].astype(bool),
            _info_rows(infos, sl),
            np.arange(rows.start, rows.stop),
        )

    # -- helpers ----------------------------------------------------------------------------

    def _exact_group(self, ids: np.ndarray) -> int | None:
        """The group whose env ids ``ids`` are exactly, in order (as recv() returns them), or None."""
        if type(ids) is not np.ndarray or ids.dtype != np.int64 or ids.ndim != 1 or len(ids) == 0:
            return None
        table = self._exact_ids
        if table is None:  # each group's first id -> (group, its ids' bytes); the rows never change
            table = self._exact_ids = {
                rows.start: (g, np.arange(rows.start, rows.stop, dtype=np.int64).tobytes())
                for g, rows in enumerate(self._rows)
            }
        entry = table.get(int(ids[0]))
        return entry[0] if entry is not None and ids.tobytes() == entry[1] else None

    def _groups_of(self, ids: np.ndarray, in_flight: list[int]) -> list[int]:
        """The groups that ``ids`` make up, in env order; a ValueError unless they are whole
        groups, each once, none in flight."""
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or len(ids) == 0:
            raise ValueError(f"env_ids must be a non-empty 1-d sequence of env indices, got {ids!r}")
        if ids.min() < 0 or ids.max() >= self.num_envs:
            raise ValueError(f"env_ids must be in range({self.num_envs}), got {ids.tolist()}")
        wanted = np.sort(ids)
        if np.any(wanted[1:] == wanted[:-1]):
            raise ValueError(f"env_ids has repeats: {ids.tolist()}")
        groups = []
        for g, rows in enumerate(self._rows):
            inside = wanted[(wanted >= rows.start) & (wanted < rows.stop)]
            if len(inside) == 0:
                continue
            if len(inside) != len(rows):
                raise ValueError(
                    f"env_ids must be whole groups of envs (as recv() returns them: {self._group_names()}), "
                    f"got {ids.tolist()}"
                )
            if g in in_flight:
                raise ValueError(f"envs {rows.start}..{rows.stop - 1} are still stepping: recv() them first")
            groups.append(g)
        return groups

    def _group_names(self) -> str:
        return ", ".join(f"{r.start}..{r.stop - 1}" for r in self._rows)

    def _in_env_order(self, actions: Any, ids: np.ndarray) -> Any:
        """``actions`` (one per id, in the ids' order) reordered to env order: an array
        where they are one, else a list of per-env actions."""
        order = np.argsort(ids, kind="stable")
        if isinstance(actions, np.ndarray) and actions.ndim >= 1:
            if len(actions) != len(ids):
                raise ValueError(f"expected {len(ids)} actions for env_ids {ids.tolist()}, got {len(actions)}")
            return actions if np.all(order == np.arange(len(ids))) else actions[order]
        space = self.single_action_space  # type: ignore[attr-defined]
        items = list(iterate(batch_space(space, len(ids)), actions))
        if len(items) != len(ids):
            raise ValueError(f"expected {len(ids)} actions for env_ids {ids.tolist()}, got {len(items)}")
        return [items[i] for i in order]

    def _first_ready(self, timeout: float | None) -> int:
        """The in-flight group whose reply came first: one sleep on every group's futex
        word (``wait_any``), in slices between which the servers' liveness is checked."""
        groups = self._in_flight
        channels = [self._workers[g].channel for g in groups]
        start = time.monotonic()
        give_up = None if timeout is None else start + timeout
        stall = self.stall_timeout
        while True:
            now = time.monotonic()
            left = _LIVENESS_PERIOD if give_up is None else max(0.0, min(_LIVENESS_PERIOD, give_up - now))
            i = self._wait_any(channels, left)
            if i >= 0:
                return groups[i]  # a reply, or a closed channel whose receive() says why
            for g, ch in zip(groups, channels):
                if not ch.peer_alive():
                    return g  # receive() turns the death into PeerDied
            now = time.monotonic()
            if give_up is not None and now >= give_up:
                # every group in flight is late: each is broken, as a late step_wait's worker is
                late = ChannelTimeout("no reply")
                errors = [self._workers[g].failure(late, timeout) for g in groups]
                raise errors[0]
            if stall is not None and now - start >= stall:
                return groups[0]  # frozen? the channel's stall check decides while receive() waits

    @staticmethod
    def _wait_any(channels: list, timeout: float) -> int:
        """wait_any, or polling where a channel is not the C type (the semaphore backend's
        Python channel wakes its peer by semaphore, not by futex)."""
        if all(type(ch).wait_any_ok for ch in channels):
            return wait_any(channels, timeout)
        end = time.monotonic() + timeout
        while True:
            for i, ch in enumerate(channels):
                if ch.closed or ch.poll():
                    return i
            if time.monotonic() >= end:
                return -1
            time.sleep(POLL_SLEEP)


def rows_of(tree: Any, rows: range | slice, copy: bool = False) -> Any:
    """Rows ``rows`` of a batch in the slab (dicts and tuples of arrays): views, or copies."""
    sl = slice(rows.start, rows.stop) if isinstance(rows, range) else rows
    if type(tree) is dict:
        return {k: rows_of(v, sl, copy) for k, v in tree.items()}
    if type(tree) is tuple:
        return tuple(rows_of(v, sl, copy) for v in tree)
    part = tree[sl]
    return part.copy() if copy else part


def _info_rows(infos: dict, rows: slice) -> dict:
    """The group's part of infos merged for all envs (``_add_info`` sizes them num_envs)."""
    out: dict = {}
    for k, v in infos.items():
        if isinstance(v, dict):
            out[k] = _info_rows(v, rows)
        elif isinstance(v, np.ndarray):
            out[k] = v[rows]
        else:
            out[k] = v
    return out
