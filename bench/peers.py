"""The peers shmbench is measured against, each with the single-env API the drivers use
(``reset(seed=)``, ``step(action)``, ``close()``).

* :class:`PipeEnv` -- the classic worker: the env in a ``multiprocessing`` process, every
  request and reply pickled through a ``Pipe`` (what most hand-written RL workers do).
* :class:`AsyncVectorEnv1` -- ``gymnasium.vector.AsyncVectorEnv`` with one env and
  ``shared_memory=True``: gymnasium's own answer (observations in shared memory, commands
  through pipes), unbatched to single-env results.
* :class:`PyroJsonEnv` -- DACBench's container transport, reimplemented from its published
  design (``dacbench/container/remote_env.py`` and ``container_utils.py``): a Pyro4 proxy
  over a unix socket, each call's arguments and result JSON-encoded, numpy arrays sent as
  ``tolist()`` with a type hint and rebuilt with ``np.array`` (which widens float32 to
  float64 and uint8 to int64 -- so its trajectory check compares values, not dtypes).
  The server runs Pyro4's multiplexing server type, as DACBench's runner does.

* :func:`open_envpool` -- EnvPool (``pip install envpool``): C++ envs stepped by a C++
  thread pool, synchronously or as an async pool. It runs only its own C++ envs, so it
  appears in the CartPole rows alone, and its CartPole is its own implementation with its
  own seeding: its trajectory cannot be compared with gymnasium's, only its speed.

All servers run in processes started with ``spawn`` (no fork of a possibly threaded
pytest process); ``close()`` stops them and never leaves a process or socket behind.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
import time
from typing import Any

import gymnasium
import numpy as np

__all__ = ["PipeEnv", "AsyncVectorEnv1", "PyroJsonEnv", "json_encode", "json_decode", "open_envpool", "ENVPOOL_IDS"]

_START_TIMEOUT = 60.0


def _stop(proc: multiprocessing.process.BaseProcess, timeout: float = 5.0) -> None:
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()


# ------------------------------------------------------------------------ Pipe worker


def _pipe_worker(conn, env_id: str, kwargs: dict) -> None:
    env = gymnasium.make(env_id, **kwargs)
    try:
        while True:
            cmd, data = conn.recv()
            if cmd == "step":
                conn.send(env.step(data))
            elif cmd == "reset":
                conn.send(env.reset(**data))
            elif cmd == "close":
                conn.send(None)
                return
            else:
                conn.send(RuntimeError(f"unknown command {cmd!r}"))
    except EOFError:
        return
    finally:
        env.close()


class PipeEnv:
    """A gymnasium env in a worker process, stepped through a ``multiprocessing.Pipe``."""

    def __init__(self, env_id: str, **kwargs: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_pipe_worker, args=(child, env_id, kwargs), daemon=True)
        self._proc.start()
        child.close()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._conn.send(("reset", {"seed": seed, "options": options}))
        return self._conn.recv()

    def step(self, action):
        self._conn.send(("step", action))
        return self._conn.recv()

    def close(self) -> None:
        if self._proc is None:
            return
        try:
            self._conn.send(("close", None))
            self._conn.recv()
        except (OSError, EOFError):
            pass
        self._conn.close()
        _stop(self._proc)
        self._proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------- AsyncVectorEnv(1)


class AsyncVectorEnv1:
    """``AsyncVectorEnv(num_envs=1, shared_memory=True)`` seen as a single env.

    It resets a finished env itself on the next step (NEXT_STEP autoreset), so a driver
    that calls ``reset()`` after a done flag costs it one extra round trip per episode;
    the workloads' episodes are long (500-1000 steps), so that is noise.
    """

    def __init__(self, env_id: str, **kwargs: Any) -> None:
        self.envs = gymnasium.vector.AsyncVectorEnv([lambda: gymnasium.make(env_id, **kwargs)], shared_memory=True)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.envs.reset(seed=seed, options=options)
        return obs[0], info

    def step(self, action):
        obs, rewards, terminations, truncations, infos = self.envs.step(np.array([action]))
        return obs[0], rewards[0], terminations[0], truncations[0], infos

    def close(self) -> None:
        self.envs.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -------------------------------------------------------------- Pyro4 + JSON (DACBench)


def _hint(item: Any) -> Any:
    """Tag what JSON cannot carry, DACBench-style: tuples and arrays become typed objects,
    numpy scalars plain numbers."""
    if isinstance(item, tuple):
        return {"__type__": "tuple", "__items__": [_hint(e) for e in item]}
    if isinstance(item, np.ndarray):
        return {"__type__": "np.ndarray", "__items__": item.tolist()}
    if isinstance(item, np.bool_):
        return bool(item)
    if isinstance(item, np.floating):
        return float(item)
    if isinstance(item, np.integer):
        return int(item)
    if isinstance(item, list):
        return [_hint(e) for e in item]
    if isinstance(item, dict):
        return {k: _hint(v) for k, v in item.items()}
    return item


def _unhint(obj: dict) -> Any:
    kind = obj.get("__type__")
    if kind == "tuple":
        return tuple(obj["__items__"])
    if kind == "np.ndarray":
        return np.array(obj["__items__"])
    return obj


def json_encode(obj: Any) -> str:
    return json.dumps(_hint(obj), indent=None)


def json_decode(text: str) -> Any:
    return json.loads(text, object_hook=_unhint)


def _pyro_server(socket_path: str, env_id: str, kwargs: dict) -> None:
    import warnings

    import Pyro4

    # Pyro4 4.82 calls threading.Event.isSet(), deprecated since Python 3.10
    warnings.filterwarnings("ignore", "isSet", DeprecationWarning)
    Pyro4.config.SERVERTYPE = "multiplex"
    env = gymnasium.make(env_id, **kwargs)
    state = {"running": True}

    @Pyro4.expose
    class RemoteEnvironmentServer:
        def step(self, action: str) -> str:
            return json_encode(env.step(json_decode(action)))

        def reset(self, arguments: str) -> str:
            return json_encode(env.reset(**json_decode(arguments)))

        def close(self) -> None:
            env.close()
            state["running"] = False

    with Pyro4.Daemon(unixsocket=socket_path) as daemon:
        daemon.register(RemoteEnvironmentServer(), "env")
        daemon.requestLoop(loopCondition=lambda: state["running"])


class PyroJsonEnv:
    """DACBench's transport: a Pyro4 proxy over a unix socket, JSON strings both ways."""

    def __init__(self, env_id: str, **kwargs: Any) -> None:
        import Pyro4

        self._dir = tempfile.mkdtemp(prefix="shmbench-pyro-")
        self._socket = os.path.join(self._dir, "env.sock")
        ctx = multiprocessing.get_context("spawn")
        self._proc = ctx.Process(target=_pyro_server, args=(self._socket, env_id, kwargs), daemon=True)
        self._proc.start()
        try:
            deadline = time.monotonic() + _START_TIMEOUT
            while not os.path.exists(self._socket):
                if not self._proc.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the Pyro4 server did not start (exit code {self._proc.exitcode})")
                time.sleep(0.01)
            self._proxy = Pyro4.Proxy(f"PYRO:env@./u:{self._socket}")
            self._proxy._pyroBind()
        except BaseException:
            self._proxy = None
            self.close()
            raise

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return json_decode(self._proxy.reset(json_encode({"seed": seed, "options": options})))

    def step(self, action):
        return json_decode(self._proxy.step(json_encode(action)))

    def close(self) -> None:
        if self._proc is None:
            return
        if self._proxy is not None:
            try:
                self._proxy.close()
            except Exception:
                pass
            self._proxy._pyroRelease()
            self._proxy = None
        _stop(self._proc)
        self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ methods under test

#: where bench/ is bound inside an image, so that its servers can import ``envs``
IMAGE_BENCH_MOUNT = "/mnt"
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

#: single-env methods: name -> (native, peer)
SINGLE_METHODS = {
    "native": (True, False),
    "shmbench-process": (False, False),
    "shmbench-process-spin": (False, False),
    "shmbench-process-block": (False, False),
    "shmbench-process-nocopy": (False, False),
    "shmbench-bwrap": (False, False),
    "shmbench-bwrap-spin": (False, False),
    "shmbench-bwrap-sif": (False, False),
    "shmbench-bwrap-sif-spin": (False, False),
    "shmbench-apptainer": (False, False),
    "shmbench-apptainer-spin": (False, False),
    "pipe": (False, True),
    "gym-async": (False, True),
    "pyro4-json": (False, True),
}


#: the gymnasium ids EnvPool has a C++ implementation of, among the bench's workloads
ENVPOOL_IDS = {"CartPole-v1"}


def open_envpool(env_id: str, num_envs: int, batch_size: int | None = None, num_threads: int = 1):
    """An EnvPool of ``num_envs`` C++ copies of ``env_id`` (its gymnasium API); with
    ``batch_size`` < ``num_envs`` its async pool (``async_reset``/``recv``/``send``)."""
    import envpool

    if env_id not in ENVPOOL_IDS:
        raise ValueError(f"EnvPool has no C++ {env_id}")
    return envpool.make(
        env_id,
        env_type="gymnasium",
        num_envs=num_envs,
        batch_size=batch_size or num_envs,
        num_threads=num_threads,
        seed=0,
    )


def shmbench_options(method: str, image=None) -> dict:
    """``shmbench.make`` keyword arguments for a ``shmbench-*`` method name."""
    parts = method.split("-")[1:]
    options: dict[str, Any] = {"runtime": parts[0]}
    if "spin" in parts:
        options["wait"] = "spin"
    if "block" in parts:
        options["wait"] = "block"
    if "nocopy" in parts:
        options["copy"] = False
    if parts[0] == "bwrap" and "sif" not in parts:
        # the host root: the server's Python is ours, bench/ is readable where it is
        options["environment"] = {"PYTHONPATH": BENCH_DIR}
    elif parts[0] in ("bwrap", "apptainer"):
        if image is None:
            raise ValueError(f"{method} needs an image")
        options["image"] = image
        options["binds"] = [f"{BENCH_DIR}:{IMAGE_BENCH_MOUNT}:ro"]
        options["environment"] = {"PYTHONPATH": IMAGE_BENCH_MOUNT}
    return options


def open_single(method: str, env_id: str, image=None):
    """A single env for ``method``; every result has ``close()``."""
    if method == "native":
        return gymnasium.make(env_id)
    if method == "pipe":
        return PipeEnv(env_id)
    if method == "gym-async":
        return AsyncVectorEnv1(env_id)
    if method == "pyro4-json":
        return PyroJsonEnv(env_id)
    if method.startswith("shmbench-"):
        import shmbench

        return shmbench.make(env_id, **shmbench_options(method, image))
    raise ValueError(f"unknown method {method!r}")


def open_vector(method: str, env_id: str, num_envs: int):
    """A vector env of ``num_envs`` copies of ``env_id`` for a vector method (test_vector_bench's
    names: sync-vector, async-vector, shmbench-process[-w2|-spin|-pool])."""
    if method == "sync-vector":
        return gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make(env_id)] * num_envs)
    if method == "async-vector":
        return gymnasium.vector.AsyncVectorEnv([lambda: gymnasium.make(env_id)] * num_envs, shared_memory=True)
    import shmbench

    options: dict = {"runtime": "process"}
    if method.endswith("-w2"):
        options["num_workers"] = 2
    if method.endswith("-spin"):
        options["wait"] = "spin"
    if method.endswith("-pool"):
        options["batch_size"] = num_envs // 2
    return shmbench.make_vec(env_id, num_envs, **options)


def check_trajectory(env, workload, method: str) -> None:
    """Fails unless ``env`` (opened for ``method``) reproduces the native env's seeded
    trajectory under the workload's policy."""
    import bench_envs as envs

    want = envs.native_trajectory(workload)
    got = envs.record(env, workload.policy(), workload.check_steps)
    # JSON widens dtypes and AsyncVectorEnv returns numpy scalars: values must still agree
    strict = method not in ("pyro4-json", "gym-async")
    # an image's env is not the host's: the bookworm image's numpy 1.24 computes
    # CartPole's physics a last bit differently from numpy 2.x (first seen at step 129,
    # 7e-12 in the pole angle, reproduced by running the env natively in the image), so
    # image methods agree with the host's env closely (the gap grows chaotically: 8e-9 by
    # step 257), not bit for bit
    image = "-sif" in method or method.startswith("shmbench-apptainer")
    envs.assert_same(
        got,
        want,
        strict_dtype=strict,
        rtol=1e-4 if image else 0.0,
        atol=1e-6 if image else 0.0,
        who=f"{method} on {workload.name}",
    )


def label(
    benchmark,
    *,
    workload: str,
    method: str,
    payload_bytes: int,
    env_steps_per_round: int = 1,
    native: bool = False,
    peer: bool = False,
    **extra: Any,
) -> None:
    """Group a benchmark by workload and record what the report needs to compare it."""
    benchmark.group = workload
    benchmark.extra_info.update(
        {
            "workload": workload,
            "method": method,
            "payload_bytes": int(payload_bytes),
            "env_steps_per_round": env_steps_per_round,
            "native": bool(native),
            "peer": bool(peer),
            # an in-process env hands over a reference: no bytes move, no transfer rate
            "transfers_payload": method not in ("native", "sync-vector"),
            **extra,
        }
    )
