"""Runners: an agent on an experiment's benchmark for N episodes, logged on the host.

The seed workflow::

    benchmark = SigmoidBenchmark()
    benchmark.set_seed(42)
    remote_runner = RemoteRunner(benchmark, experiment_identifier="exp:0.01")
    agent = RandomAgent(remote_runner.get_environment())
    remote_runner.run(agent, number_of_episodes=10)     # -> RunResult; log in ./shmbench_logs
    remote_runner.close()

:class:`RemoteRunner` resolves the experiment record, pulls its image (verified by digest),
starts the env in a server (a container, or a plain process) and steps it through shared
memory; :class:`LocalRunner` builds the same env from the same description in this process.
Both share one :meth:`Runner.run` (DACBench's ``run_benchmark`` loop) and one log writer
(:mod:`shmbench.logs`).

How a benchmark object, an experiment record and explicit arguments combine is
:mod:`shmbench.experiments.combine`'s business (:func:`resolve_experiment`).

Wrappers named by a record are applied on the host around the env (local or remote), so
both runners see the same wrapped env; they are gymnasium's own wrappers and need nothing
from the image.

Images and the ``process`` runtime (:mod:`shmbench.experiments.pinning`): the process
runtime runs the env on the host. A published image is still pulled, verified and warned
about (RuntimeWarning); a recipe is not built. ``runtime="auto"`` never falls back to a
plain process for an image, unless ``allow_host``; the header says ``"image_used"``.
"""

from __future__ import annotations

import abc
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import numpy as np

from shmbench.benchmarks.factory import make_env
from shmbench.errors import ExperimentError, RemoteEnvError, ShmbenchError
from shmbench.experiments.combine import Experiment, resolve_experiment, slug
from shmbench.experiments.dacbench_compat import dacbench_keywords, gpu_runtime
from shmbench.experiments.pinning import run_image
from shmbench.experiments.records import WrapperSpec
from shmbench.experiments.results import EpisodeResult, RunResult
from shmbench.host.env import RemoteEnvironmentClient
from shmbench.host.worker import START_TIMEOUT
from shmbench.images.refs import ImageSpec
from shmbench.logs import LOG_FORMAT, RunLog, step_row, timestamp, to_plain

__all__ = [
    "DEFAULT_LOG_DIR",
    "Experiment",
    "EpisodeResult",
    "RunResult",
    "Runner",
    "LocalRunner",
    "RemoteRunner",
    "RemoteRunnerServer",
    "resolve_experiment",
]

#: Where logs go when neither ``log_dir`` nor ``log_path`` is given (relative to the cwd).
DEFAULT_LOG_DIR = "shmbench_logs"

_MISSING = object()


def _apply_wrappers(env: gymnasium.Env, wrappers: tuple[WrapperSpec, ...]) -> gymnasium.Env:
    for wrapper in wrappers:
        try:
            env = getattr(gymnasium.wrappers, wrapper.name)(env, **wrapper.kwargs)
        except (TypeError, ValueError) as exc:
            raise ExperimentError(f"wrapper {wrapper.name}({wrapper.kwargs}): {exc}") from exc
    return env


class RemoteRunnerServer:
    """The container side of a runner: builds an experiment's env from its description.

    No code or import path crosses into the container. The host sends the benchmark
    description (:meth:`Experiment.benchmark_spec`: a whitelisted id, strict-JSON config,
    seed) in the server's MAKE request, and ``python -m shmbench.server`` builds the env
    with :func:`shmbench.benchmarks.factory.make_env` -- exactly what :meth:`make_environment`
    runs.
    :class:`LocalRunner` calls it in-process, so a local and a remote run of one
    experiment build their env by the same code from the same description.

    Args:
        benchmark_spec: ``{"benchmark": id, "config": {...}, "seed": int | None}``.
    """

    def __init__(self, benchmark_spec: Mapping[str, Any]) -> None:
        spec = dict(benchmark_spec)
        unknown = sorted(set(spec) - {"benchmark", "config", "seed"})
        if unknown or not isinstance(spec.get("benchmark"), str):
            raise ExperimentError(f"a benchmark description is {{'benchmark', 'config', 'seed'}}, got {sorted(spec)}")
        self.spec = spec

    @classmethod
    def from_experiment(cls, experiment: Experiment) -> RemoteRunnerServer:
        return cls(experiment.benchmark_spec())

    def make_environment(self) -> gymnasium.Env:
        """Build the env (the server's own code path)."""
        return make_env({"benchmark": self.spec})


# ------------------------------------------------------------------------------------------
# runners
# ------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import shmbench

    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
        "shmbench": shmbench.__version__,
    }


def _describe_agent(agent: Any) -> dict[str, Any]:
    describe = getattr(agent, "describe", None)
    if callable(describe):
        try:
            return to_plain(describe())
        except Exception:
            pass
    out: dict[str, Any] = {"class": f"{type(agent).__module__}.{type(agent).__qualname__}"}
    for name in ("seed", "action"):  # what the baseline agents are made of
        value = getattr(agent, name, _MISSING)
        if value is not _MISSING and not callable(value):
            out[name] = to_plain(value)
    return out


class Runner(abc.ABC):
    """Runs agents on one experiment's env and logs every step on the host.

    Subclasses provide the env (:class:`LocalRunner`: in this process;
    :class:`RemoteRunner`: in a server). Everything else -- resolving the experiment,
    the episode loop, seeding, logging, argument parsing -- is defined here once.

    Args:
        benchmark: a benchmark object (``SigmoidBenchmark()``) or a benchmark id.
        experiment_identifier: a record identifier such as ``exp:0.01``.
        config: config overrides (strict JSON), applied last.
        seed: the experiment's base seed, overriding the record's and the benchmark's.
        image, image_digest: an image overriding the record's (see :class:`RemoteRunner`).
        log_dir: the directory logs are created in (one new file per runner); None: no log.
        log_path: the exact log file to create instead (it must not exist).
    """

    #: the name the log header gives this runner
    kind: ClassVar[str] = "runner"

    def __init__(
        self,
        benchmark: Any = None,
        experiment_identifier: str | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        seed: int | None = None,
        image: str | os.PathLike[str] | ImageSpec | None = None,
        image_digest: str | None = None,
        log_dir: str | os.PathLike[str] | None = DEFAULT_LOG_DIR,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.experiment = resolve_experiment(
            benchmark, experiment_identifier, config=config, seed=seed, image=image, image_digest=image_digest
        )
        # absolute now: a later chdir must not move the log
        self.log_dir = Path(log_dir).absolute() if log_dir is not None else None
        self._log_path_arg = Path(log_path).absolute() if log_path is not None else None
        self._log: RunLog | None = None
        self._env: gymnasium.Env | None = None
        self._episodes: list[EpisodeResult] = []
        self._next_episode = 0
        self._steps = 0
        self._instance_attr: str | bool | None = None
        self._closed = False
        self._interrupted = False  # a run() stopped by Ctrl-C: the end record says so
        #: the image's sha256 when one was pulled or built (RemoteRunner), its manifest,
        #: and how it was had (see shmbench.experiments.pinning)
        self.image_digest: str | None = None
        self.image_manifest: dict[str, Any] | None = None
        self.image_build: dict[str, Any] = {}

    # -- what subclasses provide ---------------------------------------------------------

    @abc.abstractmethod
    def _make_environment(self) -> gymnasium.Env:
        """The unwrapped env (the record's wrappers are added by :meth:`get_environment`)."""

    @abc.abstractmethod
    def _runtime_info(self) -> dict[str, Any]:
        """``{"name", "isolated", "image_used"}`` for the log header."""

    @abc.abstractmethod
    def _server_info(self) -> dict[str, Any]:
        """Versions where the env runs: python, numpy, gymnasium, shmbench."""

    # -- the env -------------------------------------------------------------------------

    def get_environment(self) -> gymnasium.Env:
        """The env agents act on (the same object on every call)."""
        self._check_open()
        if self._env is None:
            self._env = _apply_wrappers(self._make_environment(), self.experiment.record.wrappers)
        return self._env

    # -- the loop ------------------------------------------------------------------------

    def run(
        self, agent: Any, number_of_episodes: int, *, callback: Callable[[EpisodeResult], None] | None = None
    ) -> RunResult:
        """Run ``agent`` for ``number_of_episodes`` episodes, logging each step.

        The loop is DACBench's ``run_benchmark``: ``reset`` (seeded by the experiment's
        seed policy), then ``act(state, reward)`` (reward 0 before the first step),
        ``step``, ``train(next_state, reward)`` until the episode terminates or is
        truncated, then ``end_episode(state, reward)``. Unlike DACBench it does not close
        the env (run again, or call :meth:`close`) and returns every episode's result.

        Args:
            agent: anything with ``act``, ``train`` and ``end_episode``.
            number_of_episodes: how many episodes (>= 0). Episode indices (and so seeds)
                continue across calls.
            callback: called with each :class:`EpisodeResult` as it finishes (a progress bar).
        """
        if type(number_of_episodes) is not int or number_of_episodes < 0:
            raise ValueError(f"number_of_episodes must be an int >= 0, got {number_of_episodes!r}")
        env = self.get_environment()
        log = self._open_log()
        fields = set(self.experiment.record.log)
        policy = self.experiment.seed_policy
        t_run = time.perf_counter()
        if log is not None:
            log.write(
                {
                    "type": "run",
                    "started_at": timestamp(),
                    "agent": _describe_agent(agent),
                    "first_episode": self._next_episode,
                    "episodes": number_of_episodes,
                }
            )
        results: list[EpisodeResult] = []
        try:
            self._run_episodes(env, agent, number_of_episodes, log, fields, policy, results, callback)
        except KeyboardInterrupt:
            self._interrupted = True  # the end record says so when the runner closes
            raise
        return RunResult(tuple(results), self.log_path, time.perf_counter() - t_run)

    def _run_episodes(self, env, agent, number_of_episodes, log, fields, policy, results, callback) -> None:
        for _ in range(number_of_episodes):
            episode = self._next_episode
            self._next_episode += 1  # a failed episode keeps its index: no duplicate rows
            seed = policy.seed_for(episode)
            t_episode = time.perf_counter()
            state, _info = env.reset(seed=seed)
            instance = self._instance(env)
            reward: Any = 0
            total = 0.0
            step = 0
            terminated = truncated = False
            while not (terminated or truncated):
                action = agent.act(state, reward)
                plain_action = to_plain(action) if "action" in fields else None
                t_step = time.perf_counter()
                next_state, reward, terminated, truncated, info = env.step(action)
                step_duration = time.perf_counter() - t_step
                agent.train(next_state, reward)
                state = next_state
                total += reward
                self._steps += 1
                if log is not None:
                    done = terminated or truncated
                    log.write(
                        step_row(
                            fields,
                            ids=(episode, step, instance, seed),
                            flags=(terminated, truncated),
                            logged={"reward": reward, "action": plain_action, "state": next_state, "info": info},
                            step_duration=step_duration,
                            total=total if done else None,
                            episode_duration=time.perf_counter() - t_episode if done else None,
                        )
                    )
                step += 1
            agent.end_episode(state, reward)
            result = EpisodeResult(episode, seed, instance, step, float(total), to_plain(reward))
            self._episodes.append(result)
            results.append(result)
            if callback is not None:
                callback(result)

    def _instance(self, env: gymnasium.Env) -> Any:
        """The episode's instance id, through wrappers and the channel; None if the env has none."""
        if self._instance_attr is False:
            return None
        names = (self._instance_attr,) if isinstance(self._instance_attr, str) else ("instance_id", "inst_id")
        for name in names:
            try:
                value = env.get_wrapper_attr(name)
            except AttributeError:
                continue
            except RemoteEnvError as exc:
                if exc.type_name.rsplit(".", 1)[-1] == "AttributeError":
                    continue
                raise
            self._instance_attr = name
            return to_plain(value)
        self._instance_attr = False
        return None

    # -- the log -------------------------------------------------------------------------

    @property
    def episodes(self) -> tuple[EpisodeResult, ...]:
        """Every episode finished so far, across run() calls."""
        return tuple(self._episodes)

    @property
    def log_path(self) -> Path | None:
        """The log file (None before the first :meth:`run`, or without logging)."""
        return self._log.path if self._log is not None else None

    def header(self) -> dict[str, Any]:
        """The log's header record (its ``started_at`` is the only clock reading)."""
        exp = self.experiment
        return {
            "type": "header",
            "format": LOG_FORMAT,
            "started_at": timestamp(),
            "runner": self.kind,
            "experiment_identifier": exp.identifier,
            "experiment": exp.record.to_dict(),
            "experiment_hash": exp.record.canonical_hash(),
            "record_hash": exp.base.canonical_hash() if exp.base is not None else None,
            "overrides": exp.overrides,
            "benchmark": exp.benchmark_spec(),
            "image": exp.image.to_dict() if exp.image is not None else None,
            "image_digest": self.image_digest,
            "image_build": self.image_build or None,
            "image_manifest": self.image_manifest,
            "runtime": self._runtime_info(),
            "server": self._server_info(),
            "host": _versions(),
            "shmbench": _versions()["shmbench"],
        }

    def _open_log(self) -> RunLog | None:
        if self._log is not None:
            return self._log
        if self._log_path_arg is not None:
            self._log = RunLog(self._log_path_arg)
        elif self.log_dir is not None:
            exp = self.experiment
            stem = (
                f"{slug(exp.record.identifier)}_seed{exp.seed_policy.base}_"
                f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
            )
            for n in range(1000):
                try:
                    self._log = RunLog(self.log_dir / f"{stem}{'' if n == 0 else f'-{n}'}.jsonl")
                    break
                except FileExistsError:
                    continue
            else:
                raise FileExistsError(f"no free log file name for {stem} in {self.log_dir}")
        else:
            return None
        self._log.write(self.header())
        return self._log

    # -- lifecycle -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ShmbenchError(f"{type(self).__name__} is closed")

    def close(self) -> None:
        """Finish the log (its end record) and close the env. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._log is not None:
                self._log.write(
                    {
                        "type": "end",
                        "finished_at": timestamp(),
                        "episodes": len(self._episodes),
                        "steps": self._steps,
                        "episode_rewards": [e.reward for e in self._episodes],
                        "episode_lengths": [e.steps for e in self._episodes],
                        **({"interrupted": True} if self._interrupted else {}),
                    }
                )
                self._log.close()
        finally:
            self._close_environment()

    def _close_environment(self) -> None:
        if self._env is not None:
            self._env.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        exp = self.experiment
        return (
            f"<{type(self).__name__} {exp.record.identifier} ({exp.record.benchmark}, seed "
            f"{exp.seed_policy.base}){' closed' if self._closed else ''}>"
        )


class LocalRunner(Runner):
    """A runner whose env lives in this process: no server, no container.

    It builds the env the container would (:class:`RemoteRunnerServer`, from the same
    description), so its rows equal a :class:`RemoteRunner`'s for the same experiment, seed
    and agent. A record's image is not used (it is named in the header's experiment, and the
    header says ``"image_used": false``). Arguments: see :class:`Runner`.
    """

    kind = "local"

    def __init__(self, benchmark: Any = None, experiment_identifier: str | None = None, **kwargs: Any) -> None:
        super().__init__(benchmark, experiment_identifier, **kwargs)
        self.get_environment()

    def _make_environment(self) -> gymnasium.Env:
        return RemoteRunnerServer.from_experiment(self.experiment).make_environment()

    def _runtime_info(self) -> dict[str, Any]:
        return {"name": "local", "isolated": False, "image_used": False}

    def _server_info(self) -> dict[str, Any]:
        return _versions()


class RemoteRunner(Runner):
    """A runner whose env runs in a server: a container, or a plain process.

    On construction it resolves the experiment, pulls the image (the record's, or
    ``image=``; verified by its sha256, cached) or builds it from the record's recipe
    (:mod:`shmbench.experiments.pinning`), and starts the server; :meth:`get_environment`
    returns the :class:`~shmbench.host.env.RemoteEnvironmentClient` (wrapped by the record's
    wrappers, if any). Use it as a context manager, or call :meth:`close`.

    Args:
        benchmark, experiment_identifier, config, seed, log_dir, log_path: see :class:`Runner`.
        runtime: ``"auto"``, ``"apptainer"``, ``"bwrap"``, ``"process"`` or a Runtime.
        image: a reference (local path, ``file://``, ``https://``, ``oras://``) or an
            :class:`~shmbench.images.refs.ImageSpec`, overriding the record's image.
        image_digest: the image's ``sha256:...`` (required for remote references).
        binds, environment: passed to the runtime.
        offline: use the image cache only.
        timeout: seconds any env call may take (None: no limit; a dead or frozen server is
            noticed).
        start_timeout: seconds the server may take to start and build the env.
        limits: resource limits for the server (``{"memory": "2G", "pids": 256, "cpus": 1,
            "tmp": "1G"}``; see :mod:`shmbench.runtimes.limits`).
        wait: the client's wait policy.
        progress: show a progress bar while an image downloads or is hashed, and the
            stages of a build.
        require_pinned: refuse an image built from the record's recipe that is not the
            pinned one (default: run in it, say how it differs and log it).
        allow_host: where the image cannot be had (no container runtime, no way to build
            it), run the env on the host instead of failing.
        container_source, container_name, container_tag, bind_str, env_str, gpu: DACBench's
            own ``RemoteRunner`` keywords, as they map here (see :func:`dacbench_keywords`):
            the image (a local SIF, or a registry with ``container_name`` and
            ``container_tag``), ``binds`` (comma-separated), ``environment``
            (``VAR=VALUE,...``) and Apptainer's ``--nv``.

    Raises:
        ExperimentError, ImageError, DigestMismatch, RuntimeUnavailable, PeerDied.
    """

    kind = "remote"

    def __init__(
        self,
        benchmark: Any = None,
        experiment_identifier: str | None = None,
        *,
        runtime: Any = "auto",
        image: str | os.PathLike[str] | ImageSpec | None = None,
        image_digest: str | None = None,
        binds=(),
        environment=None,
        offline: bool = False,
        timeout: float | None = None,
        start_timeout: float = START_TIMEOUT,
        limits=None,
        wait="auto",
        progress: bool = True,
        require_pinned: bool = False,
        allow_host: bool = False,
        container_source: str | os.PathLike[str] | None = None,
        container_name: str | None = None,
        container_tag: str = "latest",
        bind_str: str | None = "",
        env_str: str | None = "",
        gpu: bool | None = False,
        socket_id: Any = None,
        **kwargs: Any,
    ) -> None:
        if socket_id is not None:
            raise ExperimentError(
                "socket_id= connects DACBench's runner to a running Pyro server; shmbench starts its own server "
                "and talks to it through shared memory"
            )
        image, binds, environment = dacbench_keywords(
            image,
            binds,
            environment,
            container_source=container_source,
            container_name=container_name,
            container_tag=container_tag,
            bind_str=bind_str,
            env_str=env_str,
        )
        super().__init__(benchmark, experiment_identifier, image=image, image_digest=image_digest, **kwargs)
        pins = dict(offline=offline, progress=progress, require_pinned=require_pinned, allow_host=allow_host)
        got = run_image(self.experiment.image, runtime, **pins)
        self.image_path: Path | None = got.path
        self.image_digest, self.image_manifest, self.image_build = got.digest, got.manifest, got.build
        runtime, self.image_used, run_in = got.runtime, got.used, got.path if got.used else None
        if gpu:
            runtime = gpu_runtime(runtime, run_in, binds, environment)
        self._client = RemoteEnvironmentClient(
            benchmark=self.experiment.benchmark_spec(),
            runtime=runtime,
            image=run_in,
            binds=binds,
            environment=environment,
            timeout=timeout,
            start_timeout=start_timeout,
            limits=limits,
            wait=wait,
        )
        try:
            self.get_environment()
        except BaseException:
            self._client.close()
            raise

    @property
    def client(self) -> RemoteEnvironmentClient:
        """The :class:`~shmbench.host.env.RemoteEnvironmentClient` (unwrapped)."""
        return self._client

    @property
    def server_info(self) -> dict[str, Any]:
        return self._client.server_info

    def _make_environment(self) -> gymnasium.Env:
        return self._client

    def _runtime_info(self) -> dict[str, Any]:
        rt = self._client.runtime
        return {"name": rt.name, "isolated": bool(rt.isolated), "image_used": self.image_used}

    def _server_info(self) -> dict[str, Any]:
        info = self._client.server_info or {}
        # never the pid: it differs between runs and says nothing about the result
        return {k: info.get(k) for k in ("python", "numpy", "gymnasium", "shmbench")}

    def _close_environment(self) -> None:
        try:
            super()._close_environment()
        finally:
            self._client.close()
