"""RemoteEnvironmentClient: a gymnasium.Env whose env lives in another process or container.

>>> env = shmbench.make("CartPole-v1", runtime="process")     # doctest: +SKIP
>>> obs, info = env.reset(seed=0)                             # doctest: +SKIP
>>> obs, reward, terminated, truncated, info = env.step(0)    # doctest: +SKIP
>>> env.close()                                               # doctest: +SKIP

For the same seeds and actions it returns exactly what the env returns natively: the same
Python and numpy types, dtypes, shapes and values. Observations, actions and the step's
scalars cross through a shared slab and a fixed reply header (no serialisation); whatever
does not fit them (infos, odd observations, render frames) crosses through the codec.
"""

from __future__ import annotations

from typing import Any, cast

import gymnasium
import numpy as np

from shmbench.errors import ProtocolError, ShmbenchError
from shmbench.host.proxy import RemoteBase
from shmbench.host.rng import LiveGenerators
from shmbench.host.worker import STALL_TIMEOUT, START_TIMEOUT, wait_policy
from shmbench.wire.protocol import ActionTag, ObsTag, Opcode, codec_obs, read_step_reply
from shmbench.wire.slab import build_tree, layout
from shmbench.wire.spaces import rebuild
from shmbench.wire.specs import rebuild_spec

__all__ = ["RemoteEnvironmentClient", "RemoteEntryPoint", "make", "merge_env_kwargs"]

_STEP_SLAB = bytes((Opcode.STEP, ActionTag.SLAB_ARRAY))
_STEP_INT = bytes((Opcode.STEP, ActionTag.SLAB_INT))
_STEP_SCALAR = bytes((Opcode.STEP, ActionTag.SLAB_SCALAR))
_STEP_CODEC = bytes((Opcode.STEP, ActionTag.CODEC))


#: attribute names that are the proxy's own, never forwarded to the remote env
_LOCAL = frozenset(
    {
        "_worker",
        "_owned",
        "_fast",
        "_call_step",
        "_rng",
        "_remake",
        "_from_spec",
        "_codec",
        "_obs_leaves",
        "_obs0",
        "_act",
        "observation_space",
        "action_space",
        "metadata",
        "render_mode",
        "spec",
        "server_info",
        "copy",
        "timeout",
        "runtime",
        "wakeup",
        "stall_timeout",
        "closed",
        "unwrapped",
    }
)


class _Never:
    """A type no action has (the fast path's scalar type for a non-Discrete action space)."""


class RemoteEnvironmentClient(RemoteBase, gymnasium.Env):
    """A gymnasium.Env proxy for an env served by ``python -m shmbench.server``.

    Args:
        env_id: a registered gymnasium id, or ``"module:attr"`` (a class or factory
            imported inside the server).
        runtime: ``"auto"``, ``"apptainer"``, ``"bwrap"``, ``"process"`` or a Runtime.
        image: a SIF file or sandbox directory (None: the host's root, read-only).
        binds: extra binds, Apptainer syntax ``src[:dst[:ro|rw]]``.
        environment: extra environment variables inside the server.
        copy: return owned observations (True) or views into the shared slab that are
            valid until the next call (False).
        wait: ``"auto"``, ``"spin"``, ``"block"`` or a spin budget in seconds.
        timeout: seconds any call may take (None: no limit; a dead server is noticed
            either way). A timed-out env is broken and must be closed.
        factory: a callable building the env, shipped with cloudpickle (trusted code only).
        benchmark: a benchmark description ``{"benchmark", "config", "seed"}``.
        allow_pickle: let values the codec cannot carry travel as pickles (both ways).
        start_timeout: seconds the server may take to start and build the env.
        wakeup: ``"futex"`` (default; works across every container boundary) or
            ``"posix_ipc"`` (named semaphores, the measured alternative; process runtime only).
        limits: resource limits for the server (``{"memory": "2G", "pids": 256, "cpus": 1,
            "tmp": "1G"}``; see :mod:`shmbench.runtimes.limits`).
        stall_timeout: seconds a live server may show no heartbeat before a call raises
            PeerStalled (it is stopped or frozen; None: never). A long step keeps beating.
        env_kwargs: keyword arguments for the env, whatever their names (also ``timeout``,
            ``copy``, ``image``... that shmbench's own arguments would take).
        from_spec: build the env from its registered spec, as ``env.spec.make()`` does
            (what ``gymnasium.make(env.spec)`` asks for), not by its id string.
        **kwargs: more keyword arguments for the env (``gymnasium.make`` or the factory in
            the server), merged with ``env_kwargs``.

    Ctrl-C during a call raises KeyboardInterrupt as natively; the interrupted step still
    completes in the server, and its answer is drained (and discarded) before the next call.
    """

    def __init__(
        self,
        env_id: str | None = None,
        *,
        runtime="auto",
        image=None,
        binds=(),
        environment=None,
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
        from_spec: bool = False,
        **kwargs,
    ) -> None:
        if env_id is None and factory is None and benchmark is None:
            raise TypeError("give an env_id, a factory or a benchmark")
        env_kwargs = merge_env_kwargs(env_kwargs, kwargs)
        self.copy = copy
        self._from_spec = from_spec
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
            from_spec=True,
        )
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

        worker = self._worker = self._new_worker(0)
        info = worker.make(
            {
                "env_id": env_id,
                "kwargs": env_kwargs,
                "num_envs": 1,
                "vector": False,
                "factory": cloudpickle.dumps(factory) if factory is not None else None,
                "benchmark": benchmark,
                "allow_pickle": allow_pickle,
                "from_spec": self._from_spec,
            },
            start_timeout,
        )
        self.observation_space = rebuild(info["observation_space"])
        self.action_space = rebuild(info["action_space"])
        self.metadata = dict(info.get("metadata") or {})
        self.render_mode = info.get("render_mode")
        self.spec = rebuild_spec(info.get("spec"), self._remake)
        self.server_info = worker.server_info

        lay = layout(self.observation_space, self.action_space, None)
        slab = self._owned.slab
        slab.allocate(lay.size)
        obs = lay.arrays(slab.buffer, "obs")
        act = lay.arrays(slab.buffer, "action")
        # None when the space has no slab leaf (its values always travel through the codec);
        # every use is guarded by the observation tag or the action's type
        self._obs_leaves: Any = obs
        self._obs0: Any = obs[0] if obs else None
        self._act: Any = act[0] if act is not None and len(act) == 1 else None
        # a Discrete action crosses in its slab as an int within the slab dtype's range, or
        # as a numpy scalar of exactly that dtype; anything else through the codec
        if isinstance(self.action_space, gymnasium.spaces.Discrete) and self._act is not None:
            bounds = np.iinfo(self._act.dtype)
            int_range, scalar_type = (int(bounds.min), int(bounds.max) + 1), self._act.dtype.type
        else:
            int_range, scalar_type = (1, 0), _Never
        policy = wait_policy(wait, 1)
        policy.configure_host(worker.channel)
        worker.request(
            Opcode.CONFIGURE,
            self._codec.encode({"slab": None, "layout": lay.to_wire(), "rows": [0, 1], **policy.for_server()}),
        )
        # a slab array is handed out by the C fast path only for spaces whose obs IS one array
        array_obs = isinstance(
            self.observation_space, (gymnasium.spaces.Box, gymnasium.spaces.MultiDiscrete, gymnasium.spaces.MultiBinary)
        )
        self._call_step = worker.channel.call_step
        self._rng = LiveGenerators(
            [worker],
            fetch=lambda: [self._worker.call(Opcode.GET_ATTR, "np_random")],
            push=lambda name, states: self._worker.call(Opcode.SET_ATTR, (name, states[0])),
            n=1,
        )
        self._fast: tuple[Any, ...] = (
            self._call_step,
            self._act,
            *int_range,
            scalar_type,
            self._obs0 if array_obs else None,
            self.copy,
            self.timeout,
        )

    # -- the fast path -------------------------------------------------------------------

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict]:
        # The hot path. Everything it needs is unpacked from one tuple (each attribute
        # lookup costs tens of ns); a broken or dead worker has its channel closed, so
        # the C call itself refuses and failure() explains why.
        call, act, lo, hi, scalar_type, obs0, copy, timeout = self._fast
        t = type(action)
        if t is int and lo <= action < hi:
            act[()] = action
            req = _STEP_INT
        elif t is np.ndarray and act is not None and action.dtype == act.dtype and action.shape == act.shape:
            act[...] = action
            req = _STEP_SLAB
        elif t is scalar_type:
            act[()] = action
            req = _STEP_SCALAR
        else:
            req = _STEP_CODEC + self._codec.encode(action)
        try:
            # the common reply (array obs in the slab, float reward, bool flags, no info) comes
            # back from C as the finished tuple; anything else as the raw reply to parse here
            out = call(req, obs0, copy, timeout)
            if type(out) is tuple:
                return out
            mv = cast(memoryview, out)
            if not mv or mv[0]:
                # an error reply (the env's exception, raised here) or notes (its warnings,
                # re-emitted here: the step itself is complete)
                worker = self._worker
                try:
                    mv = worker.check(mv)
                finally:
                    if worker.notes:
                        worker.emit_notes()
            otag, reward, terminated, truncated, info, extras = read_step_reply(mv, self._codec)
            return self._read_obs(otag, extras), reward, terminated, truncated, info
        except ShmbenchError as exc:
            raise self._worker.failure(exc) from None
        except BaseException:
            self._interrupted()
            raise

    def _interrupted(self) -> None:
        """A step was interrupted while it waited (Ctrl-C): if its reply is owed, the next
        step drains it first."""
        self._worker.interrupted()
        if self._worker.owed:
            self._detour()

    def _detour(self) -> None:
        """The next step runs what the worker owes first (a drained reply, the live
        generators' draws) -- through a stand-in for the C call, so that the hot path
        itself checks nothing."""
        if self._fast[0] is not self._call_step:
            return  # already on the detour

        def settle_then_call(*args: Any) -> Any:
            self._fast = (self._call_step, *self._fast[1:])
            self._worker.settle()
            self._worker.prepare()
            return self._call_step(*args)

        self._fast = (settle_then_call, *self._fast[1:])

    def _read_obs(self, otag: int, extras: Any) -> Any:
        if otag == ObsTag.SLAB_ARRAY:
            return self._obs0.copy() if self.copy else self._obs0
        if otag == ObsTag.SLAB_INT and self._obs0 is not None and self._obs0.shape == ():
            return int(self._obs0)
        if otag == ObsTag.SLAB_SCALAR and self._obs0 is not None:
            return self._obs0[()]
        if otag == ObsTag.SLAB_TREE and self._obs_leaves is not None:
            arrays = [a.copy() for a in self._obs_leaves] if self.copy else list(self._obs_leaves)
            return build_tree(self.observation_space, arrays)
        if otag == ObsTag.CODEC:
            return codec_obs(extras)
        raise ProtocolError(f"bad observation tag {otag}")

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        mv = self._worker.request(Opcode.RESET, self._codec.encode({"seed": seed, "options": options}))
        try:
            otag, _, _, _, info, extras = read_step_reply(mv, self._codec)
            return self._read_obs(otag, extras), info
        except ShmbenchError as exc:
            raise self._worker.failure(exc) from None

    # -- the slow path -------------------------------------------------------------------

    def render(self) -> Any:
        return self._worker.call(Opcode.RENDER)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the env's method ``name`` in the server (or read it, if not callable)."""
        return self._worker.call(Opcode.CALL, (name, list(args), kwargs))

    def get_attr(self, name: str) -> Any:
        """The remote env's attribute ``name`` (through its wrappers)."""
        if name == "np_random":
            return self.np_random
        return self._worker.call(Opcode.GET_ATTR, name)

    def set_attr(self, name: str, value: Any) -> None:
        """Set the remote env's attribute ``name`` (through its wrappers)."""
        if name == "np_random":
            self.np_random = value
            return
        self._worker.call(Opcode.SET_ATTR, (name, value))

    def get_wrapper_attr(self, name: str) -> Any:
        """As a wrapper stack would: the proxy's own attribute, else the remote env's."""
        if name in _LOCAL or name in type(self).__dict__ or name in self.__dict__:
            return getattr(self, name)
        return self.get_attr(name)

    def set_wrapper_attr(self, name: str, value: Any, *, force: bool = True) -> bool:
        """Set ``name`` on the remote env (where the env keeps it, as natively)."""
        self.set_attr(name, value)
        return True

    def __getattr__(self, name: str) -> Any:
        # only reached for names the proxy does not have: the remote env's attributes
        # (env.unwrapped.state, ...), read through the codec
        if name.startswith("__") or name in _LOCAL or "_worker" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        try:
            return self._worker.call(Opcode.GET_ATTR, name)
        except AttributeError as exc:
            remote = getattr(exc, "remote_message", str(exc))
            raise AttributeError(f"the remote env has no attribute {name!r} ({remote})") from None

    @property
    def np_random(self) -> np.random.Generator:
        """The remote env's generator, live: draws here advance the stream the env draws
        from (see :mod:`shmbench.host.rng`); assigning a Generator replaces it there too."""
        generator = self._rng.get()[0]
        self._detour()  # the next step pushes what is drawn from it meanwhile
        return generator

    @np_random.setter
    def np_random(self, value: np.random.Generator) -> None:
        self._rng.set(0, value)
        self._detour()

    # gymnasium's env checker reads the private attribute: the same live generator
    _np_random = np_random

    @property
    def np_random_seed(self) -> int:
        return self.get_attr("np_random_seed")

    @property
    def unwrapped(self) -> RemoteEnvironmentClient:
        return self

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def log_path(self):
        return self._worker.log_path

    def __repr__(self) -> str:
        env_id = self.spec.id if self.spec is not None else "?"
        return f"<RemoteEnvironmentClient {env_id} via {self.runtime.name}{' closed' if self.closed else ''}>"

    def __str__(self) -> str:
        return repr(self)


def merge_env_kwargs(env_kwargs: dict | None, kwargs: dict) -> dict:
    """The env's keyword arguments: ``env_kwargs`` (any names) and the other keywords."""
    if env_kwargs is None:
        return kwargs
    if not isinstance(env_kwargs, dict):
        raise TypeError(f"env_kwargs must be a dict, not {type(env_kwargs).__name__}")
    both = sorted(set(env_kwargs) & set(kwargs))
    if both:
        raise TypeError(f"env keyword argument(s) {', '.join(both)} given twice (in env_kwargs and as keywords)")
    return {**env_kwargs, **kwargs}


class RemoteEntryPoint:
    """What ``gymnasium.make(env.spec)`` calls for a shmbench env: the same remote env
    again, through shmbench, with the spec's kwargs as the env's keyword arguments (never
    as shmbench's options). Everything it holds came from the host."""

    def __init__(self, env_id: str | None, options: dict[str, Any], *, from_spec: bool = False) -> None:
        self.env_id = env_id
        self.options = options
        self.from_spec = from_spec

    def __call__(self, **kwargs: Any) -> RemoteEnvironmentClient:
        return RemoteEnvironmentClient(self.env_id, env_kwargs=kwargs, from_spec=self.from_spec, **self.options)

    def __repr__(self) -> str:
        return f"<shmbench remote entry point {self.env_id!r} via {self.options.get('runtime')!r}>"


def make(
    env_id: str,
    *,
    runtime="auto",
    image=None,
    binds=(),
    environment=None,
    copy: bool = True,
    wait="auto",
    timeout: float | None = None,
    **env_kwargs,
) -> RemoteEnvironmentClient:
    """Start ``env_id`` in a server (a container where one is available) and return its proxy.

    See :class:`RemoteEnvironmentClient` for the arguments.
    """
    return RemoteEnvironmentClient(
        env_id,
        runtime=runtime,
        image=image,
        binds=binds,
        environment=environment,
        copy=copy,
        wait=wait,
        timeout=timeout,
        **env_kwargs,
    )
