"""Host-side benchmark objects in DACBench's shape: a config to edit, JSON in and out.

A researcher used to DACBench writes::

    bench = SigmoidBenchmark()
    bench.config.cutoff = 20
    bench.set_seed(3)
    env = bench.get_environment()          # in-process
    spec = bench.spec()                    # what a RemoteRunner sends into a container

Unlike DACBench, the config holds only strict JSON (see :mod:`shmbench.wire.strict_json`):
no callables, classes or import paths, so :meth:`DACBenchmark.to_json` and
:meth:`DACBenchmark.from_json` are inert data round trips and a spec can safely cross into
the container. Unknown keys and bad values fail on the host, with the message the container
would give.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import gymnasium

from shmbench.benchmarks import luby, sigmoid
from shmbench.benchmarks._config import is_shipped
from shmbench.errors import ExperimentError
from shmbench.wire.strict_json import dumps, loads, strict_json

__all__ = ["ConfigDict", "DACBenchmark", "SigmoidBenchmark", "LubyBenchmark"]


class ConfigDict(dict):
    """A dict whose keys are also attributes, like DACBench's ``objdict``.

    >>> cfg = ConfigDict(cutoff=10)
    >>> cfg.cutoff = 20
    >>> cfg["cutoff"]
    20
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no config key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(f"no config key {name!r}") from None

    def copy(self) -> ConfigDict:
        """A shallow copy that keeps attribute access."""
        return ConfigDict(self)


class DACBenchmark:
    """Base of the host-side benchmarks: a checked config plus ways to use or send it.

    Args:
        config_path: a JSON file of config overrides (as written by :meth:`save_config`).
        config: a mapping of config overrides.

    Raises:
        ExperimentError: when both are given, or the overrides are not valid.
    """

    #: The whitelisted id the container resolves (``shmbench/...-v0``).
    benchmark_id: ClassVar[str]
    _defaults: ClassVar[Mapping[str, Any]]
    _resolve: ClassVar[staticmethod[[Mapping[str, Any] | None], dict[str, Any]]]
    _env_class: ClassVar[Callable[..., gymnasium.Env]]
    _read_csv: ClassVar[staticmethod[[str | Path], dict[int, list[float]]]]

    def __init__(self, config_path: str | Path | None = None, config: Mapping[str, Any] | None = None) -> None:
        if config_path is not None and config is not None:
            raise ExperimentError("give either config_path or config, not both")
        self.config = ConfigDict(copy.deepcopy(dict(self._defaults)))
        if config_path is not None:
            self.read_config_file(config_path)
        elif config is not None:
            self._apply(config)

    def _apply(self, overrides: Mapping[str, Any]) -> None:
        merged = type(self)._resolve({**self._plain(), **strict_json(overrides, where=f"{self.benchmark_id} config")})
        self.config = ConfigDict(merged)

    def _plain(self) -> dict[str, Any]:
        cfg = dict(self.config)
        # DACBench keeps inline instance sets as {int id: values}; JSON needs str keys.
        if isinstance(cfg.get("instance_set"), Mapping):
            cfg["instance_set"] = {str(k): v for k, v in cfg["instance_set"].items()}
        return strict_json(cfg, where=f"{self.benchmark_id} config")

    # -- DACBench API ---------------------------------------------------------------------------

    def get_config(self) -> ConfigDict:
        """The live config (edits take effect at the next :meth:`get_environment`)."""
        return self.config

    def set_seed(self, seed: int | None) -> None:
        """Seed for the env's Generator at construction (``None``: fresh entropy each time)."""
        if seed is not None and (type(seed) is not int or seed < 0):
            raise ExperimentError(f"seed must be None or an int >= 0, got {seed!r}")
        self.config["seed"] = seed

    def serialize_config(self) -> dict[str, Any]:
        """The full config as checked, plain JSON data.

        Raises:
            ExperimentError: when an edit made the config invalid.
        """
        return type(self)._resolve(self._plain())

    def to_json(self) -> str:
        """The full config as strict JSON text (no code, no import paths)."""
        return dumps(self.serialize_config(), where=f"{self.benchmark_id} config")

    @classmethod
    def from_json(cls, json_config: str | bytes) -> DACBenchmark:
        """A benchmark from :meth:`to_json` text (or any strict-JSON object of overrides)."""
        data = loads(json_config, where=f"{cls.benchmark_id} config")
        if not isinstance(data, dict):
            raise ExperimentError(f"{cls.benchmark_id} config JSON must be an object, got {type(data).__name__}")
        return cls(config=data)

    def save_config(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(self.to_json() + "\n")

    def read_config_file(self, path: str | Path) -> None:
        """Apply the overrides stored in a JSON file."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ExperimentError(f"cannot read config file {str(path)!r}: {exc}") from None
        data = loads(text, where=str(path))
        if not isinstance(data, dict):
            raise ExperimentError(f"{path}: a config file must hold a JSON object")
        self._apply(data)

    def get_environment(self) -> gymnasium.Env:
        """Build the environment in this process (no container)."""
        return type(self)._env_class(config=self.serialize_config())

    # -- shmbench ------------------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """What a container needs to rebuild this benchmark: id, strict-JSON config, seed.

        An instance set read from a host file that the container cannot see (anything but a
        file shipped with shmbench) is inlined as ``instance_set`` rows, so the container
        runs exactly the instances the host would. A path that does not exist on the host is
        sent as is: it may name a file inside the container image.
        """
        cfg = self.serialize_config()
        path = cfg.get("instance_set_path")
        if cfg.get("instance_set") is None and path is not None and not is_shipped(path):
            local = Path(path)
            if local.is_file():
                instances = type(self)._read_csv(local)
                cfg["instance_set"] = [[inst_id, *values] for inst_id, values in sorted(instances.items())]
                cfg["instance_set_path"] = None
                cfg = type(self)._resolve(cfg)
        return {"benchmark": self.benchmark_id, "config": cfg, "seed": cfg["seed"]}

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, DACBenchmark)
            and type(self) is type(other)
            and (self.serialize_config() == other.serialize_config())
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dict

    def __repr__(self) -> str:
        return f"{type(self).__name__}(config={dict(self.config)!r})"


class SigmoidBenchmark(DACBenchmark):
    """The Sigmoid benchmark (:mod:`shmbench.benchmarks.sigmoid`), configured on the host."""

    benchmark_id = sigmoid.BENCHMARK
    _defaults = sigmoid.DEFAULT_CONFIG
    _resolve = staticmethod(sigmoid.resolve_config)
    _env_class = sigmoid.SigmoidEnv
    _read_csv = staticmethod(sigmoid.read_instance_csv)

    def set_action_values(self, values: list[int] | tuple[int, ...]) -> None:
        """Set the number of action values per dimension (DACBench's API).

        Changing the number of dimensions invalidates the current instance set, so the
        instances are then generated from ``instance_seed`` (``n_instances`` of them).
        """
        values = list(values)
        if len(values) != len(self.config["action_values"]):
            self.config["instance_set"] = None
            self.config["instance_set_path"] = None
        self.config["action_values"] = values


class LubyBenchmark(DACBenchmark):
    """The Luby benchmark (:mod:`shmbench.benchmarks.luby`), configured on the host."""

    benchmark_id = luby.BENCHMARK
    _defaults = luby.DEFAULT_CONFIG
    _resolve = staticmethod(luby.resolve_config)
    _env_class = luby.LubyEnv
    _read_csv = staticmethod(luby.read_instance_csv)

    def set_cutoff(self, steps: int) -> None:
        """Set the sequence cutoff; the action and observation spaces follow from it."""
        self.config["cutoff"] = steps

    def set_history_length(self, length: int) -> None:
        """Set how many past actions the observation holds."""
        self.config["hist_length"] = length
