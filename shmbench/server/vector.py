"""The vector side of a server: its rows of the batch, stepped as SyncVectorEnv steps them.

A vector server (``make_vec``) serves a contiguous group of envs and writes its rows of the
one shared batch slab in place -- observations, rewards, done flags -- so that the host
never concatenates. :class:`VectorServing` is that part of
:class:`~shmbench.server.core.RemoteEnvironmentServer`: autoreset in the three modes of
``gymnasium.vector.AutoresetMode`` (as ints in the hot loop), results gathered in lists and
stored once per step in C (``store_step``), exact observations copied into their rows in C
(``fill_rows``), anything else concatenated the way SyncVectorEnv does it. And
:func:`probe_step_ns`, the timing of a spare env that lets ``make_vec`` tune itself
(host/tuning.py).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from gymnasium import spaces

from shmbench.benchmarks.factory import make_env
from shmbench.errors import ProtocolError
from shmbench.wire.codec import Codec
from shmbench.wire.protocol import ActionTag, vector_reply
from shmbench.wire.slab import SlabLayout, build_tree, fill_rows, store_step

__all__ = ["VectorServing", "NEXT_STEP", "DISABLED", "SAME_STEP", "autoreset_code", "probe_step_ns"]

#: autoreset modes, as ints for the hot loop
NEXT_STEP, DISABLED, SAME_STEP = 0, 1, 2


def autoreset_code(mode: Any) -> int:
    """The hot loop's int for a ``gymnasium.vector.AutoresetMode``."""
    from gymnasium.vector import AutoresetMode

    return {AutoresetMode.NEXT_STEP: NEXT_STEP, AutoresetMode.DISABLED: DISABLED}.get(mode, SAME_STEP)


class VectorServing:
    """Vector stepping and resetting of a server's rows (a mixin of the server)."""

    envs: list
    codec: Codec
    rows: slice
    _mode: int
    _step: Any  # the server's step handler: this mixin's when vector

    def _configure_vector(self, layout: SlabLayout, buf: Any) -> None:
        """Our rows of the batch slab, and what the hot loop needs at hand."""
        env = self.envs[0]
        obs = layout.arrays(buf, "obs")
        act = layout.arrays(buf, "action")
        r = self.rows
        self._obs_rows = None if obs is None else build_tree(env.observation_space, [a[r] for a in obs])
        self._act_rows = None if act is None else act[0][r] if len(act) == 1 else None
        self._rewards = layout.vector(buf, "rewards", np.float64)[r]
        self._terms = layout.vector(buf, "terminations", np.bool_)[r]
        self._truncs = layout.vector(buf, "truncations", np.bool_)[r]
        n = len(self.envs)
        self._autoreset: list[bool] = [False] * n  # the envs whose next step is a reset
        self._env_obs: list[Any] = [None] * n
        from gymnasium.vector.utils import batch_space, concatenate, iterate

        self._concatenate = concatenate
        self._iterate = iterate
        self._batch_action_space = batch_space(env.action_space, n)
        # the batch's actions as SyncVectorEnv splits them: for Box/MultiDiscrete/MultiBinary
        # batch spaces that is iter(actions) -- numpy's own row iteration, done at once
        self._plain_actions = type(self._batch_action_space) in (
            spaces.Box,
            spaces.MultiDiscrete,
            spaces.MultiBinary,
        )
        # one array leaf: each env's obs is copied into its row in C when it is exact
        self._obs_array = self._obs_rows if type(self._obs_rows) is np.ndarray else None
        self._step = self._step_vector

    def _vector_reply(self, infos: list, obs_in_slab: bool) -> bytes:
        return vector_reply(obs_in_slab, infos, self._env_obs, self.codec)

    def _write_obs_rows(self) -> bool:
        if self._obs_rows is None:
            return False
        if self._obs_array is not None and fill_rows(self._obs_array, self._env_obs):
            return True
        try:
            self._concatenate(self.envs[0].observation_space, self._env_obs, self._obs_rows)
        except (ValueError, TypeError):
            return False  # an obs that does not fit: the host concatenates from the codec
        return True

    def _step_vector(self, mv: memoryview) -> bytes:
        """One vector step of our rows, as SyncVectorEnv steps them (autoreset included).

        The hot loop of a vector server: results are gathered in lists and written to the
        slab once per step (a numpy item assignment costs as much as a CartPole step's
        arithmetic), exact observations are copied into their rows in C."""
        tag = mv[1]
        if tag == ActionTag.SLAB_ARRAY and self._act_rows is not None:
            rows = self._act_rows
            if self._plain_actions:
                # iter(actions) as SyncVectorEnv has it; scalars are copies, rows must be
                actions = list(rows) if rows.ndim == 1 else list(rows.copy())
            else:
                actions = list(self._iterate(self._batch_action_space, rows.copy()))
        elif tag == ActionTag.CODEC:
            actions = self.codec.decode(mv[2:])
            if type(actions) is not list or len(actions) != len(self.envs):
                raise ProtocolError("vector STEP needs one action per env")
        else:
            raise ProtocolError(f"bad action tag {tag}")
        mode = self._mode
        envs, env_obs = self.envs, self._env_obs
        n = len(envs)
        infos: list = []
        rewards: list = [0.0] * n
        terms: list = [False] * n
        truncs: list = [False] * n
        autoreset = self._autoreset
        if mode == NEXT_STEP:
            for i in range(n):
                if autoreset[i]:
                    env_obs[i], info = envs[i].reset()
                else:
                    env_obs[i], rewards[i], terms[i], truncs[i], info = envs[i].step(actions[i])
                if info:
                    infos.append((i, info))
        elif mode == DISABLED:
            for i in range(n):
                if autoreset[i]:
                    raise RuntimeError(f"env {i} needs a reset (autoreset_mode=DISABLED)")
                env_obs[i], rewards[i], terms[i], truncs[i], info = envs[i].step(actions[i])
                if info:
                    infos.append((i, info))
        else:  # SAME_STEP
            for i in range(n):
                env_obs[i], rewards[i], terms[i], truncs[i], info = envs[i].step(actions[i])
                if terms[i] or truncs[i]:
                    infos.append((i, {"final_obs": env_obs[i], "final_info": info}))
                    env_obs[i], info = envs[i].reset()
                if info:
                    infos.append((i, info))
        # into the batch, converted as SyncVectorEnv's item assignments would convert them
        stored = store_step(self._rewards, self._terms, self._truncs, rewards, terms, truncs)
        if stored is None:  # not plain numbers and flags: numpy converts them
            self._rewards[:] = rewards
            self._terms[:] = terms
            self._truncs[:] = truncs
            stored = np.logical_or(self._terms, self._truncs).tolist()
        self._autoreset = stored
        return self._vector_reply(infos, self._write_obs_rows())

    def _reset_vector(self, args: dict) -> bytes:
        seeds = args["seeds"]
        options = args.get("options")
        mask = args.get("mask")
        infos: list = []
        for i, env in enumerate(self.envs):
            if mask is not None and not mask[i]:
                continue
            self._terms[i] = False
            self._truncs[i] = False
            self._autoreset[i] = False
            self._env_obs[i], env_info = env.reset(seed=seeds[i], options=options)
            if env_info:
                infos.append((i, env_info))
        return self._vector_reply(infos, self._write_obs_rows())


def probe_step_ns(spec: dict, steps: int, seconds: float) -> int | None:
    """The median step time (ns) of a spare env made like the served ones: never one of
    them, so their state and generators stay as they are. None when it cannot be timed."""
    import warnings

    deadline = time.perf_counter() + seconds
    times: list[int] = []
    env = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the spare env's warnings are nobody's concern
            env = make_env(spec)
            env.reset(seed=0)
            env.action_space.seed(0)
            for _ in range(steps):
                action = env.action_space.sample()
                t0 = time.perf_counter_ns()
                _, _, terminated, truncated, _ = env.step(action)
                times.append(time.perf_counter_ns() - t0)
                if terminated or truncated:
                    env.reset()
                if len(times) >= 3 and time.perf_counter() > deadline:
                    break
    except Exception as exc:
        print(f"shmbench server: could not time a spare env ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    finally:
        if env is not None:
            try:
                env.close()
            except Exception:
                pass
    times.sort()
    return times[len(times) // 2] if times else None
