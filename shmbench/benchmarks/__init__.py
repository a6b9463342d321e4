"""Benchmarks named by whitelisted ids: the light reference DAC benchmarks and the factory.

The host describes a benchmark as ``{"benchmark": id, "config": <strict JSON>, "seed": s}``;
inside the container :func:`make_benchmark_env` turns that description into an env. Only ids
from a whitelist are accepted, and no import path or code is ever taken from the host:

- ``shmbench/Sigmoid-v0``, ``shmbench/Luby-v0`` (also ``shmbench/Sigmoid``, ``shmbench/Luby``):
  numpy-only reimplementations, registered with gymnasium by :func:`register`;
- ``dacbench/FunctionApproximation``, ``dacbench/Luby``, ``dacbench/ToySGD``,
  ``dacbench/Theory``: DACBench itself, when installed (the ``shmbench[dacbench]`` extra);
- any id already in gymnasium's registry (``CartPole-v1``...), with the config passed as
  keyword arguments to ``gymnasium.make``.

>>> env = make_benchmark_env("shmbench/Luby", {"min_steps": 16}, seed=0)
>>> env.action_space
Discrete(7)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium
from gymnasium.utils import seeding

from shmbench.benchmarks.dacbench_ids import DACBENCH_IDS, make_dacbench_env
from shmbench.benchmarks.host import ConfigDict, DACBenchmark, LubyBenchmark, SigmoidBenchmark
from shmbench.errors import ExperimentError
from shmbench.wire.strict_json import strict_json

__all__ = [
    "SHMBENCH_IDS",
    "DACBENCH_IDS",
    "register",
    "canonical_id",
    "make_benchmark_env",
    "ConfigDict",
    "DACBenchmark",
    "SigmoidBenchmark",
    "LubyBenchmark",
]

#: shmbench's own ids -> gymnasium entry points (strings: importing this package stays cheap).
SHMBENCH_IDS: dict[str, str] = {
    "shmbench/Sigmoid-v0": "shmbench.benchmarks.sigmoid:SigmoidEnv",
    "shmbench/Luby-v0": "shmbench.benchmarks.luby:LubyEnv",
}
_SHORT_IDS = {"shmbench/Sigmoid": "shmbench/Sigmoid-v0", "shmbench/Luby": "shmbench/Luby-v0"}


def register() -> None:
    """Register shmbench's ids with gymnasium; calling it again does nothing.

    Raises:
        ExperimentError: when one of the ids is already registered with another entry point
            (a different env would silently run under our name).
    """
    for env_id, entry_point in SHMBENCH_IDS.items():
        existing = gymnasium.registry.get(env_id)
        if existing is None:
            gymnasium.register(id=env_id, entry_point=entry_point, nondeterministic=False)
        elif existing.entry_point != entry_point:
            raise ExperimentError(f"{env_id} is already registered with entry point {existing.entry_point!r}")


def canonical_id(benchmark_id: str) -> str:
    """The full id for a short form (``shmbench/Luby`` -> ``shmbench/Luby-v0``)."""
    return _SHORT_IDS.get(benchmark_id, benchmark_id)


def make_benchmark_env(
    benchmark_id: str, config: Mapping[str, Any] | None = None, seed: int | None = None
) -> gymnasium.Env:
    """Build the env a benchmark description names; this runs inside the container.

    Args:
        benchmark_id: a whitelisted id (see the module docstring).
        config: strict-JSON overrides (shmbench and DACBench benchmarks) or keyword arguments
            for ``gymnasium.make`` (other gymnasium ids).
        seed: seeds the env's Generator at construction, so an unseeded ``reset()`` afterwards
            is reproducible (DACBench's convention). For shmbench and DACBench benchmarks it
            replaces ``config["seed"]``.

    Raises:
        ExperimentError: for an id off the whitelist, a config that is not strict JSON, a bad
            seed, or anything a benchmark refuses in its config.
    """
    if not isinstance(benchmark_id, str) or not benchmark_id:
        raise ExperimentError(f"a benchmark id must be a non-empty string, got {benchmark_id!r}")
    if seed is not None and (type(seed) is not int or seed < 0):
        raise ExperimentError(f"seed must be None or an int >= 0, got {seed!r}")
    cfg = strict_json({} if config is None else config, where=f"{benchmark_id} config")
    if not isinstance(cfg, dict):
        raise ExperimentError(f"{benchmark_id} config must be a dict, got a {type(config).__name__}")
    env_id = canonical_id(benchmark_id)

    if env_id in SHMBENCH_IDS:
        register()
        if seed is not None:
            cfg["seed"] = seed
        return gymnasium.make(env_id, config=cfg)
    if env_id.startswith("shmbench/"):
        raise ExperimentError(f"unknown shmbench benchmark {benchmark_id!r}; known: {sorted(SHMBENCH_IDS)}")
    if env_id.startswith("dacbench/"):
        return make_dacbench_env(env_id, cfg, seed)
    # "module:Env-v0" would make gymnasium import `module`: code chosen by the host.
    if ":" in env_id or env_id not in gymnasium.registry:
        raise ExperimentError(
            f"unknown benchmark id {benchmark_id!r}: not a shmbench or DACBench id and not in "
            "gymnasium's registry (ids of the form 'module:Env' are refused: they import code)"
        )
    try:
        env = gymnasium.make(env_id, **cfg)
    except TypeError as exc:
        raise ExperimentError(f"{benchmark_id}: config does not fit gymnasium.make: {exc}") from exc
    if seed is not None:
        # What Env.reset(seed=...) does to the RNG, without starting an episode.
        base = env.unwrapped
        base._np_random, base._np_random_seed = seeding.np_random(seed)
    return env


register()
