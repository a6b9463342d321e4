"""ShmVectorEnv: a gymnasium VectorEnv whose envs run in worker processes or containers.

>>> envs = shmbench.make_vec("CartPole-v1", 8, runtime="process")   # doctest: +SKIP
>>> obs, infos = envs.reset(seed=0)                                  # doctest: +SKIP

Each worker serves a contiguous group of envs and steps them exactly as
``gymnasium.vector.SyncVectorEnv`` would (autoreset included), writing its rows of ONE
shared batch slab: the observations, rewards and done flags the host returns were never
concatenated, only (with ``copy=True``) copied once. Workers step in parallel while the
host waits. Given the same seeds and actions the results equal SyncVectorEnv's, infos
included (merged with the same ``_add_info`` in the same order).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from shmbench.errors import ChannelClosed, ProtocolError, ShmbenchError
from shmbench.host.env import RemoteEntryPoint, merge_env_kwargs
from shmbench.host.pool import PoolCalls, rows_of
from shmbench.host.proxy import RemoteBase
from shmbench.host.tuning import PROBE_SECONDS, PROBE_STEPS, Tuning, choose_workers
from shmbench.host.vector_calls import VectorCalls
from shmbench.host.worker import STALL_TIMEOUT, START_TIMEOUT, Worker, WorkerState, emit_all_notes, wait_policy
from shmbench.wire.protocol import VEC_REPLY_IN_SLAB, ActionTag, Opcode, read_vector_reply
from shmbench.wire.slab import build_tree, layout
from shmbench.wire.spaces import rebuild
from shmbench.wire.specs import rebuild_spec

__all__ = ["ShmVectorEnv", "RemoteVectorEntryPoint", "make_vec"]

_STEP_SLAB = bytes((Opcode.STEP, ActionTag.SLAB_ARRAY))
_READY = WorkerState.READY


def _split(n: int, parts: int) -> list[range]:
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def _copy_tree(x: Any) -> Any:
    if type(x) is np.ndarray:
        return x.copy()
    if type(x) is dict:
        return {k: _copy_tree(v) for k, v in x.items()}
    if type(x) is tuple:
        return tuple(_copy_tree(v) for v in x)
    from copy import deepcopy

    return deepcopy(x)


class ShmVectorEnv(PoolCalls, VectorCalls, RemoteBase, VectorEnv):  # type: ignore[misc]  # np_random: SyncVectorEnv's tuple
    """A VectorEnv over shmbench workers (see :func:`make_vec` for the arguments)."""

    _one_worker = False  # set once the servers are configured: step()'s one-round-trip path

    def __init__(
        self,
        env_id: str | None,
        num_envs: int,
        *,
        num_workers: int | None = None,
        batch_size: int | None = None,
        runtime="auto",
        image=None,
        binds=(),
        environment=None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        copy: bool = True,
        wait="auto",
        timeout: float | None = None,
        factory=None,
        benchmark: dict | None = None,
        allow_pickle: bool = False,
        start_timeout: float = START_TIMEOUT,
        wakeup: str = "futex",
        limits=None,
        stall_timeout: float | None = STALL_TIMEOUT,
        env_kwargs: dict | None = None,
        **kwargs,
    ) -> None:
        if num_envs < 1:
            raise ValueError("num_envs must be at least 1")
        env_kwargs = merge_env_kwargs(env_kwargs, kwargs)
        self._remake = RemoteEntryPoint(
            env_id,
            dict(
                runtime=runtime,
                image=image,
                binds=binds,
                environment=environment,
                copy=copy,
                wait=wait,
                timeout=timeout,
                factory=factory,
                benchmark=benchmark,
                allow_pickle=allow_pickle,
                start_timeout=start_timeout,
                wakeup=wakeup,
                limits=limits,
                stall_timeout=stall_timeout,
            ),
        )
        if num_workers is not None and not 1 <= num_workers <= num_envs:
            raise ValueError(f"num_workers must be between 1 and num_envs={num_envs}")
        if batch_size is not None:
            # the async pool (host/pool.py): one worker per group of batch_size envs
            if not 1 <= batch_size <= num_envs or num_envs % batch_size:
                raise ValueError(f"batch_size must divide num_envs={num_envs}, got {batch_size}")
            if num_workers is not None and num_workers != num_envs // batch_size:
                raise ValueError(
                    f"batch_size={batch_size} means num_envs // batch_size = {num_envs // batch_size} workers, "
                    f"not num_workers={num_workers}: give one of them"
                )
            num_workers = num_envs // batch_size
        self.batch_size = batch_size
        self._in_flight: list[int] = []
        self.num_envs = num_envs
        self.copy = copy
        self.autoreset_mode = (
            autoreset_mode if isinstance(autoreset_mode, AutoresetMode) else AutoresetMode(autoreset_mode)
        )
        # empty: tuned from a measured step (host/tuning.py) once the first server is up
        self._rows: list[range] = [] if num_workers is None else _split(num_envs, num_workers)
        self._open(
            runtime=runtime,
            image=image,
            binds=binds,
            environment=environment,
            allow_pickle=allow_pickle,
            timeout=timeout,
            wakeup=wakeup,
            limits=limits,
            stall_timeout=stall_timeout,
        )
        self._started(self._start, env_id, env_kwargs, factory, benchmark, allow_pickle, wait, start_timeout)

    def _start(self, env_id, env_kwargs, factory, benchmark, allow_pickle, wait, start_timeout) -> None:
        import cloudpickle

        workers = self._owned.workers
        self._workers = workers
        pickled = cloudpickle.dumps(factory) if factory is not None else None
        make_timeout = max(start_timeout, self.timeout or 0)

        def make(count: int, probe: int = 0) -> bytes | bytearray:
            return self._codec.encode(
                {
                    "env_id": env_id,
                    "kwargs": env_kwargs,
                    "num_envs": count,
                    "vector": True,
                    "autoreset_mode": self.autoreset_mode.value,
                    "factory": pickled,
                    "benchmark": benchmark,
                    "allow_pickle": allow_pickle,
                    "probe_steps": probe,
                    "probe_seconds": PROBE_SECONDS,
                }
            )

        infos: list = []
        try:
            if not self._rows:
                # self-tuning: the first server makes every env and times a spare one; the
                # count of servers follows, and the first keeps only its rows (CONFIGURE)
                first = self._new_worker(0)
                first.send(Opcode.MAKE, make(self.num_envs, PROBE_STEPS))
                infos.append(self._codec.decode(first.receive(timeout=make_timeout)[1:]))
                first.make_done(infos[0])
                probe = infos[0].get("probe_ns")
                step_ns = probe if type(probe) is int and probe > 0 else None
                cores = len(os.sched_getaffinity(0))
                k = choose_workers(self.num_envs, step_ns, cores)
                self._rows = _split(self.num_envs, k)
                self.tuning = Tuning(step_ns, k, cores, chosen=True)
            else:
                self.tuning = Tuning(None, len(self._rows), len(os.sched_getaffinity(0)), chosen=False)
            # MAKE everywhere first, then collect: the servers build their envs in parallel
            for i in range(len(workers), len(self._rows)):
                self._new_worker(i).send(Opcode.MAKE, make(len(self._rows[i])))
            for w in workers[len(infos) :]:
                infos.append(self._codec.decode(w.receive(timeout=make_timeout)[1:]))
                w.make_done(infos[-1])
        finally:
            emit_all_notes(workers)
        info = infos[0]
        self.single_observation_space = rebuild(info["observation_space"])
        self.single_action_space = rebuild(info["action_space"])
        for other in infos[1:]:
            if (
                rebuild(other["observation_space"]) != self.single_observation_space
                or rebuild(other["action_space"]) != self.single_action_space
            ):
                raise ProtocolError("the workers' envs have different spaces")
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = dict(info.get("metadata") or {})
        self.metadata["autoreset_mode"] = self.autoreset_mode
        self.render_mode = info.get("render_mode")
        self.spec = rebuild_spec(
            info.get("spec"), self._remake, RemoteVectorEntryPoint(self._remake.env_id, self._remake.options)
        )
        self.server_info = workers[0].server_info

        lay = layout(self.single_observation_space, self.single_action_space, self.num_envs)
        slab = self._owned.slab
        slab.allocate(lay.size)
        obs = lay.arrays(slab.buffer, "obs")
        act = lay.arrays(slab.buffer, "action")
        if obs is not None:
            self._observations = build_tree(self.single_observation_space, obs)
            self._obs_in_slab = True
        else:
            self._observations = create_empty_array(self.single_observation_space, n=self.num_envs, fn=np.zeros)
            self._obs_in_slab = False
        self._act_batch = act[0] if act is not None and len(act) == 1 else None
        self._rewards = lay.vector(slab.buffer, "rewards", np.float64)
        self._terminations = lay.vector(slab.buffer, "terminations", np.uint8)
        self._truncations = lay.vector(slab.buffer, "truncations", np.uint8)
        self._one_worker = len(workers) == 1
        policy = wait_policy(wait, len(workers))
        for w, rows in zip(workers, self._rows):
            policy.configure_host(w.channel)
            w.request(
                Opcode.CONFIGURE,
                self._codec.encode(
                    {"slab": None, "layout": lay.to_wire(), "rows": [rows.start, rows.stop], **policy.for_server()}
                ),
            )

    # -- stepping --------------------------------------------------------------------------

    def step_async(self, actions: Any) -> None:
        """Send the actions to every worker; they step while the host does other work."""
        if self._pending is not None:
            self._begin("step", "step_async")
        batch = self._act_batch
        try:
            if (
                type(actions) is np.ndarray
                and batch is not None
                and actions.dtype == batch.dtype
                and actions.shape == batch.shape
            ):
                batch[...] = actions
                for w in self._workers:
                    w.send(Opcode.STEP, flag=ActionTag.SLAB_ARRAY)
            else:
                # anything else is split exactly as SyncVectorEnv splits it, and sent per env
                items = list(iterate(self.action_space, actions))
                if len(items) != self.num_envs:
                    raise ValueError(f"expected {self.num_envs} actions, got {len(items)}")
                # every payload first: an action the codec refuses must not leave half the workers stepping
                payloads = [self._codec.encode(items[rows.start : rows.stop]) for rows in self._rows]
                for w, payload in zip(self._workers, payloads):
                    w.send(Opcode.STEP, payload, flag=ActionTag.CODEC)
        except ChannelClosed:
            self._assert_is_running()
            raise
        self._pending = "step"

    def step_wait(self, timeout: float | None = None) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Collect the workers' results (each waits at most ``timeout``, default the env's)."""
        if self._pending != "step":
            self._end("step", "step_wait", "step_async")
        self._pending = None
        infos = self._collect(self.timeout if timeout is None else timeout)
        obs = _copy_tree(self._observations) if self.copy else self._observations
        return (obs, self._rewards.copy(), self._terminations.astype(bool), self._truncations.astype(bool), infos)

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        batch = self._act_batch
        if (
            self._one_worker
            and type(actions) is np.ndarray
            and batch is not None
            and actions.dtype == batch.dtype
            and actions.shape == batch.shape
            and self._pending is None
        ):
            w = self._workers[0]
            if w.state is _READY and w.before_request is None:
                # one worker: the step is one round trip, without the per-worker bookkeeping
                batch[...] = actions
                try:
                    mv = w.channel.call(_STEP_SLAB, self.timeout)
                except ShmbenchError as exc:
                    self._assert_is_running()
                    raise w.failure(exc) from None
                except BaseException:
                    w.interrupted()  # Ctrl-C: the reply is drained before the next request
                    raise
                infos: dict = {}
                if mv != VEC_REPLY_IN_SLAB:  # infos, observations by codec, notes or an error
                    env_obs: list | None = [] if not self._obs_in_slab else None
                    try:
                        infos = self._absorb(w, self._rows[0], w.check(mv), infos, env_obs)
                    finally:
                        emit_all_notes(self._workers)
                    if env_obs is not None:
                        self._observations = self._concatenate(env_obs)
                obs = self._observations
                if self.copy:
                    obs = obs.copy() if type(obs) is np.ndarray else _copy_tree(obs)
                return (
                    obs,
                    self._rewards.copy(),
                    self._terminations.astype(bool),
                    self._truncations.astype(bool),
                    infos,
                )
        self.step_async(actions)
        return self.step_wait()

    def _collect(self, timeout: float | None) -> dict:
        infos: dict = {}
        env_obs: list | None = [] if not self._obs_in_slab else None
        error: BaseException | None = None
        for k, (w, rows) in enumerate(zip(self._workers, self._rows)):
            try:
                mv = w.receive(timeout)
            except ShmbenchError as exc:  # keep collecting so no reply is left behind
                error = error or exc
                continue
            except BaseException:
                # Ctrl-C: this worker's reply is owed already; so are the later workers'
                for later in self._workers[k + 1 :]:
                    later.interrupted()
                raise
            infos = self._absorb(w, rows, mv, infos, env_obs)
        emit_all_notes(self._workers)
        if error is not None:
            raise error
        if env_obs is not None:
            self._observations = self._concatenate(env_obs)
        return infos

    def _concatenate(self, env_obs: list) -> Any:
        """The batch from every env's observation (codec path), as SyncVectorEnv builds it;
        observations that do not fit the space came from a server: a ProtocolError (also a
        ValueError, what SyncVectorEnv raises)."""
        try:
            return concatenate(self.single_observation_space, env_obs, self._observations)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"the servers sent observations that do not fit the observation space: {exc}") from exc

    def _absorb(self, w: Worker, rows: range, mv: memoryview, infos: dict, env_obs: list | None) -> dict:
        """Merge one worker's reply: its infos (in env order) and any codec observations."""
        try:
            part, entries = read_vector_reply(mv, self._codec, len(rows))
        except ProtocolError as exc:
            raise w.failure(exc) from None
        for i, info in entries:
            infos = self._add_info(infos, info, rows.start + i)
        if part is not None:
            if env_obs is None:
                # a worker whose obs did not fit the slab: concatenate its rows here,
                # exactly as SyncVectorEnv would (and fail as it would, with a ValueError)
                try:
                    concatenate(self.single_observation_space, part, rows_of(self._observations, rows))
                except (ValueError, TypeError) as exc:
                    raise ProtocolError(
                        f"{w.name} sent observations that do not fit the observation space: {exc}"
                    ) from exc
            else:
                env_obs.extend(part)
        return infos

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict]:
        self.reset_async(seed=seed, options=options)
        return self.reset_wait()

    def reset_async(self, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None) -> None:
        """Send every worker its resets (``options["reset_mask"]``: only those envs)."""
        if seed is None:
            seed = [None for _ in range(self.num_envs)]
        elif isinstance(seed, int):
            seed = [seed + i for i in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(
                f"If seeds are passed as a list the length must match num_envs={self.num_envs} "
                f"but got length={len(seed)}."
            )
        self._begin("reset", "reset_async")
        mask = None
        if options is not None and "reset_mask" in options:
            mask = options.pop("reset_mask")  # popped, as SyncVectorEnv does
            if not isinstance(mask, np.ndarray):
                raise TypeError(f"`options['reset_mask']` must be a numpy array, got {type(mask)}")
            if mask.shape != (self.num_envs,):
                raise ValueError(f"`options['reset_mask']` must have shape `({self.num_envs},)`, got {mask.shape}")
            if mask.dtype != np.bool_:
                raise TypeError(f"`options['reset_mask']` must have `dtype=np.bool_`, got {mask.dtype}")
            if not np.any(mask):
                raise ValueError(
                    f"`options['reset_mask']` must contain a boolean array with at least one True "
                    f"value, got reset_mask={mask}"
                )
        for w, rows in zip(self._workers, self._rows):
            if mask is not None and not mask[rows.start : rows.stop].any():
                continue
            w.send(
                Opcode.RESET,
                self._codec.encode(
                    {
                        "seeds": list(seed[rows.start : rows.stop]),
                        "options": options,
                        "mask": None if mask is None else [bool(m) for m in mask[rows.start : rows.stop]],
                    }
                ),
            )
        self._reset_mask = mask
        self._pending = "reset"

    def reset_wait(self, timeout: float | None = None) -> tuple[Any, dict]:
        """Collect the resets' observations and infos."""
        self._end("reset", "reset_wait", "reset_async")
        mask, self._reset_mask = self._reset_mask, None
        timeout = self.timeout if timeout is None else timeout
        if mask is None:
            infos = self._collect(timeout)
        else:
            infos = self._collect_some(mask, timeout)
        obs = _copy_tree(self._observations) if self.copy else self._observations
        return obs, infos

    def _collect_some(self, mask: np.ndarray, timeout: float | None) -> dict:
        workers, rows = self._workers, self._rows
        try:
            keep = [i for i, r in enumerate(rows) if mask[r.start : r.stop].any()]
            self._workers = [workers[i] for i in keep]
            self._rows = [rows[i] for i in keep]
            return self._collect(timeout)
        finally:
            self._workers, self._rows = workers, rows

    def __repr__(self) -> str:
        env_id = self.spec.id if self.spec is not None else "?"
        return (
            f"<ShmVectorEnv {env_id} x{self.num_envs} in {len(self._rows)} workers via "
            f"{self.runtime.name}{' closed' if self.closed else ''}>"
        )


class RemoteVectorEntryPoint:
    """What ``gymnasium.make_vec(spec, n)`` calls for a shmbench env (``vector_entry_point``):
    a ShmVectorEnv of ``n`` copies, with the spec's kwargs as the env's keyword arguments."""

    def __init__(self, env_id: str | None, options: dict[str, Any]) -> None:
        self.env_id = env_id
        self.options = options

    def __call__(self, num_envs: int = 1, **kwargs: Any) -> ShmVectorEnv:
        return ShmVectorEnv(self.env_id, num_envs, env_kwargs=kwargs, **self.options)

    def __repr__(self) -> str:
        return f"<shmbench remote vector entry point {self.env_id!r} via {self.options.get('runtime')!r}>"


#: gymnasium's vector_kwargs, and what they mean here (None: accepted, nothing to do)
_VECTOR_KWARGS = {"autoreset_mode": "autoreset_mode", "copy": "copy", "shared_memory": None}


def make_vec(
    env_id: str,
    num_envs: int,
    *,
    num_workers: int | None = None,
    runtime="auto",
    image=None,
    autoreset_mode: AutoresetMode = AutoresetMode.NEXT_STEP,
    copy: bool = True,
    vectorization_mode: str | None = None,
    vector_kwargs: dict[str, Any] | None = None,
    wrappers: Any = None,
    **env_kwargs,
) -> ShmVectorEnv:
    """``num_envs`` copies of ``env_id`` in ``num_workers`` servers, as one VectorEnv.

    With no ``num_workers`` the count is chosen from a measured step (``envs.tuning``;
    host/tuning.py). ``batch_size=k`` (dividing ``num_envs``) makes the envs an async pool
    of ``num_envs // k`` servers: ``send(actions, env_ids)`` and ``recv()`` returning the
    group that finished first (host/pool.py, docs/vector.md).

    Keyword arguments of :class:`~shmbench.host.env.RemoteEnvironmentClient` (``binds``,
    ``environment``, ``wait``, ``timeout``, ``factory``, ``benchmark``, ``allow_pickle``,
    ``limits``, ``env_kwargs``) are accepted too; everything else goes to ``gymnasium.make``
    in the servers. gymnasium's own ``make_vec`` arguments mean what they can here:
    ``vectorization_mode="sync"`` steps every env in one server, ``"async"`` (and
    ``"vector_entry_point"``, and None) in parallel servers; ``vector_kwargs`` may hold
    ``autoreset_mode``, ``copy`` and ``shared_memory`` (always so here). Anything else --
    ``wrappers`` (they would run on the host, not around each env in its server), a
    multiprocessing ``context``, ``daemon``, a custom ``worker`` -- is refused, naming it.
    """
    options: dict[str, Any] = {"autoreset_mode": autoreset_mode, "copy": copy}
    for key, value in dict(vector_kwargs or {}).items():
        if key not in _VECTOR_KWARGS:
            raise TypeError(
                f"vector_kwargs[{key!r}] has no meaning for shmbench's vector env (it accepts "
                f"{', '.join(sorted(_VECTOR_KWARGS))}); the servers are shmbench's own processes"
            )
        if key == "shared_memory" and not value:
            raise ValueError("shared_memory=False: shmbench's vector env always shares its memory")
        target = _VECTOR_KWARGS[key]
        if target is not None:
            options[target] = value
    if wrappers:
        raise ValueError(
            "wrappers= would wrap each env on the host, but shmbench's envs run in their servers: wrap the "
            "vector env (gymnasium.wrappers.vector), or register an env id that includes the wrappers"
        )
    mode = getattr(vectorization_mode, "value", vectorization_mode)
    if mode not in (None, "sync", "async", "vector_entry_point"):
        raise ValueError(
            f"Invalid vectorization mode: {vectorization_mode!r}, valid modes: 'sync', 'async', 'vector_entry_point'"
        )
    if mode == "sync" and num_workers is None:
        num_workers = 1
    return ShmVectorEnv(
        env_id, num_envs, num_workers=num_workers, runtime=runtime, image=image, **options, **env_kwargs
    )
