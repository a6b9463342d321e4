"""The container side: ``python -m shmbench.server`` serves one worker's env(s) on a channel.

It attaches to the channel it inherited as file descriptor ``$SHMBENCH_CHANNEL_FD`` (sealed
memory; its slab is ``$SHMBENCH_SLAB_FD``), or to a channel file named by its first
argument or ``$SHMBENCH_CHANNEL``. It starts its heartbeat (a thread that needs no GIL, so
that the host can tell a long step from a frozen server), builds the env(s) the host asks
for, and answers requests until the host closes the channel, sends CLOSE, or dies (stdin
EOF; for a file channel also its ``host.lock`` going free). It keeps serving after an
exception in the env: the error goes back to the host as a reply.

In vector mode it steps its envs exactly as ``gymnasium.vector.SyncVectorEnv`` would
(autoreset included) and writes its rows of the shared batch slab in place.

Only numpy, gymnasium, msgpack and shmbench itself are imported here, so a container image
needs nothing else.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shmbench.benchmarks.factory import make_env
from shmbench.errors import ChannelClosed, EncodeError, PeerDied, ProtocolError, ShmbenchError
from shmbench.server.vector import NEXT_STEP, VectorServing, autoreset_code, probe_step_ns
from shmbench.transport.session import Slab, attach, reap_session
from shmbench.wire.codec import Codec
from shmbench.wire.protocol import (
    PROTOCOL_VERSION,
    ActionTag,
    ObsTag,
    Opcode,
    Status,
    reset_reply,
    step_reply,
    with_notes,
)
from shmbench.wire.remote import WarningCollector, error_payload
from shmbench.wire.slab import SlabLayout, flatten_exact, leaf_kind
from shmbench.wire.spaces import describe, generator_from_state
from shmbench.wire.specs import describe_spec

__all__ = ["RemoteEnvironmentServer", "main"]

_OK = bytes([Status.OK])
_CODEC = ObsTag.CODEC
# the opcodes and tags the hot path compares with, as plain ints (an IntEnum member is a
# global plus an attribute lookup per comparison)
_STEP = int(Opcode.STEP)
_CLOSE = int(Opcode.CLOSE)
_SLAB_INT = int(ActionTag.SLAB_INT)


def _np_random_state(env: Any) -> dict:
    return env.np_random.bit_generator.state


def _set_np_random(env: Any, state: dict, *, replace: bool) -> None:
    """The host drew from its live copy of the env's generator (``replace=False``: the same
    generator, moved on; the env's seed stays) or assigned a new one (``replace=True``:
    ``env.np_random = generator``, as natively, which makes the seed -1)."""
    current = env.np_random
    if replace or type(current.bit_generator).__name__ != state.get("bit_generator"):
        env.np_random = generator_from_state(state)
    else:
        generator_from_state(state, into=current)


def _plain_metadata(metadata: Any, codec: Codec) -> dict:
    out = {}
    for k, v in dict(metadata or {}).items():
        try:
            codec.encode([k, v])
        except EncodeError:
            print(f"shmbench server: metadata[{k!r}] cannot be sent; dropped", file=sys.stderr)
            continue
        out[k] = v
    return out


class RemoteEnvironmentServer(VectorServing):
    """Serves one worker's env(s) over one channel (the container side).

    Args:
        channel: the inherited descriptor of a sealed channel, or a channel file's path.
        slab_fd: the inherited descriptor of the slab (None: a ``slab`` file beside a
            channel file).
        semaphores: the names of the posix_ipc backend's semaphores, when the host chose it.
    """

    def __init__(
        self, channel: os.PathLike | str | int, *, slab_fd: int | None = None, semaphores: str | None = None
    ) -> None:
        self.channel_path = None if isinstance(channel, int) else Path(channel)
        self.channel = attach(channel, semaphores=semaphores)
        self.slab_fd = slab_fd
        self.codec = Codec()
        self.envs: list[Any] = []
        self.vector = False
        self.autoreset_mode: Any = None
        self._mode = NEXT_STEP
        self.slab: Slab | None = None
        self.layout: SlabLayout | None = None
        self.host_died = False
        # Set by CONFIGURE. Which of these are None depends on the spaces (a space without
        # slab leaves has none; a Dict action has no single action array), and every use is
        # guarded by that: the leaf kind, the action tag the host chose, vector mode.
        self._obs0: Any = None
        self._act0: Any = None
        self._obs_leaves: Any = None
        self._obs_kind: str | None = None
        self._obs_rows: Any = None
        self._act_rows: Any = None
        self._rewards: Any = None
        self._terms: Any = None
        self._truncs: Any = None
        self._step: Callable[[memoryview], bytes | memoryview] = self._step_single
        # the env's warnings ride back with the reply of the request that raised them
        self.warnings = WarningCollector()
        self.warnings.install()
        self._notes = self.warnings.pending

    # -- main loop -------------------------------------------------------------------------

    def serve(self) -> int:
        """Answer requests until the host closes or dies; returns the exit status."""
        ch = self.channel
        recv, send = ch.recv, ch.send
        handlers: dict[int, Callable[[memoryview], bytes]] = {
            Opcode.RESET: self._reset,
            Opcode.MAKE: self._make,
            Opcode.CONFIGURE: self._configure,
            Opcode.RENDER: self._render,
            Opcode.CALL: self._call,
            Opcode.GET_ATTR: self._get_attr,
            Opcode.SET_ATTR: self._set_attr,
            Opcode.PING: lambda mv: _OK,
            Opcode.ECHO: lambda mv: _OK + bytes(mv[2:]),
        }
        status = 0
        call = ch.call
        notes = self._notes
        try:
            mv = recv()
            while True:
                try:
                    op = mv[0]
                except IndexError:
                    raise ProtocolError("empty request") from None
                if op == _STEP:  # tested first: the hot path
                    try:
                        reply = self._step(mv)
                    except (ChannelClosed, PeerDied):
                        raise
                    except Exception as exc:
                        reply = self._error_reply(exc)
                    # the C fast path already sent the reply and received the next request
                    if type(reply) is memoryview:
                        mv = reply
                    else:
                        mv = call(self._noted(reply) if notes else reply)
                    continue
                if op == _CLOSE:
                    self._close_envs()
                    send(self._noted(_OK) if notes else _OK)
                    break
                else:
                    handler = handlers.get(op)
                    if handler is None:
                        raise ProtocolError(f"unknown opcode {op}")
                try:
                    reply = handler(mv)
                except (ChannelClosed, PeerDied):
                    raise
                except Exception as exc:  # the env's error goes back; we keep serving
                    reply = self._error_reply(exc)
                # send the reply (with the warnings raised meanwhile), then wait for the next request
                mv = call(self._noted(reply) if notes else reply)
        except ChannelClosed:
            pass
        except PeerDied:
            self.host_died = True
        except ProtocolError as exc:
            print(f"shmbench server: protocol error from the host: {exc}", file=sys.stderr)
            status = 3
        finally:
            self.close()
        return status

    def _noted(self, reply: bytes | bytearray | memoryview) -> bytes:
        """``reply`` with the warnings raised since the last one."""
        return with_notes(reply, self.warnings.take(), self.codec)

    def _error_reply(self, exc: BaseException) -> bytes:
        try:
            return bytes([Status.ERROR]) + self.codec.encode(error_payload(exc))
        except EncodeError:
            return bytes([Status.ERROR]) + self.codec.encode(
                {"type": type(exc).__name__, "message": repr(exc), "traceback": ""}
            )

    def _ok(self, value: Any) -> bytes:
        return _OK + self.codec.encode(value)

    def close(self) -> None:
        self._close_envs()
        if self.slab is not None:
            self.slab.close()
        self.channel.close()
        if self.host_died and self.channel_path is not None:
            # a file channel's survivor cleans up: our files, then the session if nobody
            # else holds it (sealed memory needs nothing: the kernel frees it)
            self.channel.unlink()
            if self.slab is not None:
                self.slab.unlink()
            Path(str(self.channel_path)[: -len(".chan")] + ".log").unlink(missing_ok=True)
            reap_session(self.channel_path.parent)

    def _close_envs(self) -> None:
        envs, self.envs = self.envs, []
        for env in envs:
            try:
                env.close()
            except Exception as exc:
                print(f"shmbench server: env.close() failed: {exc!r}", file=sys.stderr)

    # -- handshake -------------------------------------------------------------------------

    def _make(self, mv: memoryview) -> bytes:
        if self.envs:
            raise RuntimeError("MAKE sent twice")
        spec = self.codec.decode(mv[2:])
        if spec.get("allow_pickle"):
            self.codec = Codec(allow_pickle=True)
        count = int(spec.get("num_envs", 1))
        self.vector = bool(spec.get("vector", False))
        if self.vector:
            from gymnasium.vector import AutoresetMode

            self.autoreset_mode = AutoresetMode(spec["autoreset_mode"])
            self._mode = autoreset_code(self.autoreset_mode)
        self.envs = [make_env(spec) for _ in range(count)]
        env = self.envs[0]
        import gymnasium

        obs_space = getattr(env, "observation_space", None)
        act_space = getattr(env, "action_space", None)
        info = {
            # an object that is not an env (a remote agent) has no spaces to describe
            "observation_space": describe(obs_space, allow_pickle=self.codec.allow_pickle)
            if obs_space is not None
            else None,
            "action_space": describe(act_space, allow_pickle=self.codec.allow_pickle)
            if act_space is not None
            else None,
            "metadata": _plain_metadata(getattr(env, "metadata", None), self.codec),
            "render_mode": getattr(env, "render_mode", None),
            "spec": describe_spec(env, self.codec),
            "server": {
                "pid": os.getpid(),
                "python": sys.version.split()[0],
                "numpy": np.__version__,
                "gymnasium": gymnasium.__version__,
                "shmbench": _shmbench_version(),
                "protocol": PROTOCOL_VERSION,
            },
        }
        for other in self.envs[1:]:
            if (
                getattr(other, "observation_space", None) != obs_space
                or getattr(other, "action_space", None) != act_space
            ):
                raise RuntimeError("the envs of one worker have different spaces")
        probe = spec.get("probe_steps")
        if self.vector and type(probe) is int and probe > 0:
            info["probe_ns"] = probe_step_ns(spec, probe, float(spec.get("probe_seconds") or 0.25))
        return self._ok(info)

    def _configure(self, mv: memoryview) -> bytes:
        cfg = self.codec.decode(mv[2:])
        self.layout = layout = SlabLayout.from_wire(cfg["layout"])
        self.rows = slice(*cfg["rows"])
        self.channel.configure_wait(spin_ns=int(cfg["spin_ns"]), adaptive=bool(cfg["adaptive"]))
        if self.vector:
            # the first server of a self-tuning vector env made every env; it keeps its rows
            keep = self.rows.stop - self.rows.start
            if not 0 < keep <= len(self.envs):
                raise ProtocolError(f"CONFIGURE gives {keep} rows to a server of {len(self.envs)} envs")
            extra, self.envs = self.envs[keep:], self.envs[:keep]
            for env in extra:
                env.close()
        if self.slab_fd is not None:
            self.slab = Slab.attach(self.slab_fd, layout.size)
            self.slab_fd = None  # the slab owns the descriptor now
        elif self.channel_path is not None and cfg.get("slab"):
            self.slab = Slab.attach(self.channel_path.parent / Path(cfg["slab"]).name, layout.size)
        else:
            raise ProtocolError("CONFIGURE without a slab: the host passed no SHMBENCH_SLAB_FD")
        buf = self.slab.buffer
        env = self.envs[0]
        obs = layout.arrays(buf, "obs")
        act = layout.arrays(buf, "action")
        if self.vector:
            self._configure_vector(layout, buf)
        else:
            self._obs_leaves = obs
            self._obs_kind = None if obs is None else leaf_kind(env.observation_space)
            self._obs0 = obs[0] if obs else None
            if self._obs_kind == "discrete":
                bounds = np.iinfo(self._obs0.dtype)
                self._obs_int = (int(bounds.min), int(bounds.max) + 1, self._obs0.dtype.type)
            # identity, not equality, of the dtype on the hot path (numpy hands out one
            # dtype object per builtin type); anything else takes _write_obs's full check
            self._act0 = act[0] if act is not None and len(act) == 1 else None
            self._fast = (
                self._act0,
                env.step,
                self.channel.reply_step,
                self._obs0 if self._obs_kind == "array" else None,
                self._notes,
            )
            if self._obs_kind == "array":
                # zero copy for envs that can write their observations where we want them
                setter = _optional_attr(env, "set_observation_buffer")
                if setter is not None:
                    setter(self._obs0)
        return _OK

    # -- single env ------------------------------------------------------------------------

    def _action(self, mv: memoryview) -> Any:
        tag = mv[1]
        if tag == _SLAB_INT:
            return int(self._act0)
        if tag == ActionTag.SLAB_ARRAY:
            return self._act0.copy()
        if tag == ActionTag.SLAB_SCALAR:
            return self._act0[()]
        if tag == ActionTag.CODEC:
            return self.codec.decode(mv[2:])
        raise ProtocolError(f"bad action tag {tag}")

    def _write_obs(self, obs: Any) -> int:
        kind = self._obs_kind
        if kind == "array":
            if type(obs) is np.ndarray:
                dst = self._obs0
                if obs.dtype == dst.dtype and obs.shape == dst.shape:
                    if not (
                        obs.base is dst.base and obs.ctypes.data == dst.ctypes.data and obs.strides == dst.strides
                    ):  # the env wrote into the slab
                        dst[...] = obs
                    return ObsTag.SLAB_ARRAY
        elif kind == "discrete":
            t = type(obs)
            lo, hi, scalar_type = self._obs_int
            if t is int:
                if lo <= obs < hi:
                    self._obs0[()] = obs
                    return ObsTag.SLAB_INT
            elif t is scalar_type:  # a numpy scalar of exactly the space's dtype
                self._obs0[()] = obs
                return ObsTag.SLAB_SCALAR
        elif kind == "tree":
            flat = flatten_exact(self.envs[0].observation_space, obs, self._obs_leaves)
            if flat is not None:
                for dst, src in zip(self._obs_leaves, flat):
                    dst[...] = src
                return ObsTag.SLAB_TREE
        return _CODEC

    def _step_single(self, mv: memoryview) -> bytes | memoryview:
        """One single-env step: the reply, or (C fast path) the next request."""
        # the hot path: its state comes from one tuple, every attribute lookup costs tens of ns
        act0, env_step, reply_step, obs_dst, notes = self._fast
        action = int(act0) if mv[1] == _SLAB_INT else self._action(mv)
        obs, reward, terminated, truncated, info = env_step(action)
        if obs_dst is not None and not notes:  # a step that warned replies with its notes
            # the common case (exact ndarray obs, float reward, bool flags, empty info) is
            # copied, replied and the next request received in C; None: not that case
            nxt = reply_step(obs, reward, terminated, truncated, info, obs_dst)
            if nxt is not None:
                return nxt
        return step_reply(self._write_obs(obs), obs, reward, terminated, truncated, info, self.codec)

    def _reset(self, mv: memoryview) -> bytes:
        args = self.codec.decode(mv[2:])
        if self.vector:
            return self._reset_vector(args)
        obs, info = self.envs[0].reset(seed=args.get("seed"), options=args.get("options"))
        return reset_reply(self._write_obs(obs), obs, info, self.codec)

    # -- slow path: render, call, attributes ------------------------------------------------

    def _render(self, mv: memoryview) -> bytes:
        if self.vector:
            return self._ok([env.render() for env in self.envs])
        return self._ok(self.envs[0].render())

    def _call(self, mv: memoryview) -> bytes:
        name, args, kwargs = self.codec.decode(mv[2:])
        results = []
        for env in self.envs:
            fn = _get(env, name)
            results.append(fn(*args, **kwargs) if callable(fn) else fn)
        return self._ok(results if self.vector else results[0])

    def _get_attr(self, mv: memoryview) -> bytes:
        name = self.codec.decode(mv[2:])
        values = [_np_random_state(env) if name == "np_random" else _get(env, name) for env in self.envs]
        return self._ok(values if self.vector else values[0])

    def _set_attr(self, mv: memoryview) -> bytes:
        name, values = self.codec.decode(mv[2:])
        if not self.vector:
            values = [values]
        if len(values) != len(self.envs):
            raise ValueError(f"{len(values)} values for {len(self.envs)} envs")
        for env, value in zip(self.envs, values):
            if name in ("np_random", "np_random_state"):
                if value is not None:  # None: this env's generator stays as it is
                    _set_np_random(env, value, replace=name == "np_random")
            elif hasattr(env, "set_wrapper_attr"):
                env.set_wrapper_attr(name, value)
            else:
                setattr(env, name, value)
        return self._ok(None)


# ------------------------------------------------------------------------------------------
# attribute access on the served envs
# ------------------------------------------------------------------------------------------


def _optional_attr(env: Any, name: str) -> Any:
    """``env``'s attribute ``name`` through its wrappers, or None."""
    try:
        return env.get_wrapper_attr(name)
    except AttributeError:
        return None


def _get(obj: Any, name: str) -> Any:
    """An env's attribute through its wrappers; any other served object's plain attribute."""
    if name.startswith("__"):
        raise AttributeError(f"refusing to expose dunder attribute {name!r}")
    getter = getattr(obj, "get_wrapper_attr", None)
    return getter(name) if getter is not None else getattr(obj, name)


def _shmbench_version() -> str:
    try:
        from importlib.metadata import version

        return version("shmbench")
    except Exception:
        import shmbench

        return shmbench.__version__


def _inherited_fd(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    fd = int(value)
    os.fstat(fd)  # EBADF here, not a confusing error later
    os.set_inheritable(fd, False)
    return fd


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    t0 = time.perf_counter()
    where = "?"
    try:
        channel_fd = _inherited_fd("SHMBENCH_CHANNEL_FD")
        target: int | str | None = (
            channel_fd if channel_fd is not None else (argv[0] if argv else os.environ.get("SHMBENCH_CHANNEL"))
        )
        if target is None:
            print(
                "usage: python -m shmbench.server CHANNEL_FILE (or set SHMBENCH_CHANNEL, or inherit "
                "SHMBENCH_CHANNEL_FD)",
                file=sys.stderr,
            )
            return 2
        where = f"descriptor {target}" if isinstance(target, int) else str(target)
        server = RemoteEnvironmentServer(
            target, slab_fd=_inherited_fd("SHMBENCH_SLAB_FD"), semaphores=os.environ.get("SHMBENCH_SEMAPHORES")
        )
        server.channel.start_heartbeat()
    except (ShmbenchError, OSError, ValueError) as exc:
        print(f"shmbench server: cannot attach to {where}: {exc}", file=sys.stderr)
        return 2
    print(
        f"shmbench server pid {os.getpid()} python {sys.version.split()[0]} numpy {np.__version__} "
        f"attached to {where} in {1e3 * (time.perf_counter() - t0):.1f} ms",
        file=sys.stderr,
        flush=True,
    )
    return server.serve()
