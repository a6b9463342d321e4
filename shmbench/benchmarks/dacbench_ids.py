"""Whitelisted DACBench benchmarks, built inside the container from filtered JSON overrides.

Used by the ``shmbench[dacbench]`` extra: ``dacbench/Luby`` with ``{"cutoff": 32}`` becomes
DACBench's ``LubyBenchmark.from_json('{"cutoff": 32}').get_environment()``.

Why a filter: DACBench's ``from_json``/``load_config`` turn some JSON back into code, so the
host's text must never reach it unchecked. Every form that selects or imports code is refused
(or pinned to a whitelist) here:

- any list ``["function", module, name]`` (``load_config`` imports ``module.name``); refused
  at any depth, not only at the top level where DACBench looks today;
- ``"wrappers"``: ``dejson_wrappers`` does ``getattr(dacbench.wrappers, name)`` and imports
  modules named in the description; only the empty list (what ``to_json`` writes when there
  are no wrappers) is accepted, and dropped;
- ``"observation_space"`` / ``"action_space"``: ``list_to_space`` calls
  ``getattr(gymnasium.spaces, name)(*args)`` and ``getattr(numpy, dtype)``; the class must be
  Box, Discrete, MultiDiscrete, MultiBinary or Dict and the dtype a plain numeric one;
- ``"observation_space_type"``: parsed into ``getattr(numpy, ...)``; only ``None``/"None" and
  ``"<class 'numpy.<dtype>'>"`` for a whitelisted dtype;
- ``"observation_space_class"`` / ``"action_space_class"``: ``getattr(gymnasium.spaces, ...)``
  in ``AbstractEnv``; same class whitelist;
- ``"reward_function"`` / ``"state_method"``: the envs call whatever these hold;
- Theory: ``"problem"`` is looked up in the env module's globals and called, so only
  ``"LeadingOne"``; ``"env_class"`` (a class name) and ``"outdir"`` (a directory the env
  writes into) are refused.

``"config_space"`` is ConfigSpace's JSON (hyperparameters, conditions, forbiddens): data that
ConfigSpace decodes by type tags, accepted as a dict.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from typing import Any

import gymnasium

from shmbench.errors import ExperimentError
from shmbench.wire.strict_json import dumps, strict_json

__all__ = ["DACBENCH_IDS", "SPACE_CLASSES", "DTYPES", "filter_dacbench_config", "dacbench_object", "make_dacbench_env"]

#: Whitelisted id -> (module, class) inside the ``dacbench`` package.
DACBENCH_IDS: dict[str, tuple[str, str]] = {
    "dacbench/FunctionApproximation": (
        "dacbench.benchmarks.function_approximation_benchmark",
        "FunctionApproximationBenchmark",
    ),
    "dacbench/Luby": ("dacbench.benchmarks.luby_benchmark", "LubyBenchmark"),
    "dacbench/ToySGD": ("dacbench.benchmarks.toysgd_benchmark", "ToySGDBenchmark"),
    "dacbench/Theory": ("dacbench.benchmarks.theory_benchmark", "TheoryBenchmark"),
}

SPACE_CLASSES = frozenset({"Box", "Discrete", "MultiDiscrete", "MultiBinary", "Dict"})
DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
)

_CODE_KEYS = {
    "wrappers": "DACBench rebuilds wrappers by importing modules named in the config",
    "reward_function": "DACBench envs call this value as the reward function",
    "state_method": "DACBench envs call this value as the state function",
}
_THEORY_KEYS = {
    "env_class": "TheoryBenchmark picks a class by this name",
    "outdir": "the Theory env writes log files under this host-chosen directory",
}
_THEORY_PROBLEMS = frozenset({"LeadingOne"})


def _refuse(benchmark_id: str, key: str, why: str) -> ExperimentError:
    return ExperimentError(f"{benchmark_id} config[{key!r}] is refused: {why}")


def _find_function_marker(value: Any, path: str) -> str | None:
    if isinstance(value, list):
        if value and value[0] == "function":
            return path
        items = enumerate(value)
    elif isinstance(value, dict):
        items = value.items()  # type: ignore[assignment]
    else:
        return None
    for key, item in items:
        found = _find_function_marker(item, f"{path}[{key!r}]")
        if found is not None:
            return found
    return None


def _check_space_list(benchmark_id: str, key: str, value: Any) -> None:
    if not isinstance(value, list) or len(value) not in (2, 3):
        raise _refuse(benchmark_id, key, f"a space must be [class, args] or [class, args, dtype], got {value!r}")
    if value[0] not in SPACE_CLASSES:
        raise _refuse(benchmark_id, key, f"space class {value[0]!r} is not one of {sorted(SPACE_CLASSES)}")
    if not isinstance(value[1], list):
        raise _refuse(benchmark_id, key, f"space arguments must be a list, got {value[1]!r}")
    if len(value) == 3 and value[2] not in {f"numpy.{name}" for name in DTYPES}:
        raise _refuse(benchmark_id, key, f"dtype {value[2]!r} is not 'numpy.<dtype>' for one of {sorted(DTYPES)}")


def filter_dacbench_config(benchmark_id: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``config`` as strict JSON that DACBench's ``from_json`` cannot turn into code.

    Args:
        benchmark_id: one of :data:`DACBENCH_IDS`.
        config: overrides of that benchmark's DACBench defaults.

    Raises:
        ExperimentError: for an unknown id, non-JSON data, or any code-selecting entry (see
            the module docstring for the list and the reasons).
    """
    if benchmark_id not in DACBENCH_IDS:
        raise ExperimentError(f"unknown DACBench id {benchmark_id!r}; whitelisted: {sorted(DACBENCH_IDS)}")
    cfg = strict_json({} if config is None else config, where=f"{benchmark_id} config")
    if not isinstance(cfg, dict):
        raise ExperimentError(f"{benchmark_id} config must be a dict, got {type(config).__name__}")
    marker = _find_function_marker(cfg, "config")
    if marker is not None:
        raise ExperimentError(
            f"{benchmark_id}: {marker} is a ['function', module, name] entry, which DACBench would "
            "import; code cannot travel in a benchmark description"
        )
    if cfg.get("wrappers") == []:
        del cfg["wrappers"]
    for key, why in _CODE_KEYS.items():
        if key in cfg:
            raise _refuse(benchmark_id, key, why)
    for key in ("observation_space", "action_space"):
        if key in cfg:
            _check_space_list(benchmark_id, key, cfg[key])
    for key in ("observation_space_class", "action_space_class"):
        if key in cfg and cfg[key] not in SPACE_CLASSES:
            raise _refuse(benchmark_id, key, f"{cfg[key]!r} is not one of {sorted(SPACE_CLASSES)}")
    if "observation_space_type" in cfg:
        allowed = {None, "None"} | {f"<class 'numpy.{name}'>" for name in DTYPES}
        if cfg["observation_space_type"] not in allowed:
            raise _refuse(
                benchmark_id,
                "observation_space_type",
                f"{cfg['observation_space_type']!r} is not None or \"<class 'numpy.<dtype>'>\"",
            )
    if "config_space" in cfg and not isinstance(cfg["config_space"], dict):
        raise _refuse(benchmark_id, "config_space", "must be ConfigSpace's JSON object")
    if benchmark_id == "dacbench/Theory":
        for key, why in _THEORY_KEYS.items():
            if key in cfg:
                raise _refuse(benchmark_id, key, why)
        if "problem" in cfg and cfg["problem"] not in _THEORY_PROBLEMS:
            raise _refuse(benchmark_id, "problem", f"{cfg['problem']!r} is not one of {sorted(_THEORY_PROBLEMS)}")
    return cfg


def dacbench_object(benchmark: Any) -> tuple[str, dict[str, Any], Any, Any] | None:
    """``(id, config changes, seed, default seed)`` of a DACBench benchmark object (from the
    ``dacbench`` package itself); None for anything else.

    The object's config is DACBench's own JSON (``to_json``), compared key by key with a
    fresh object of its class: only what was changed travels (through
    :func:`filter_dacbench_config`), and the container's DACBench fills in its defaults --
    which also keeps DACBench's infinities (not JSON) out of the description.

    Raises:
        ExperimentError: a DACBench benchmark that is not whitelisted, or refused changes.
    """
    import json

    cls = type(benchmark)
    if not cls.__module__.startswith("dacbench."):
        return None
    found = [bid for bid, (module, name) in DACBENCH_IDS.items() if cls.__module__ == module and cls.__name__ == name]
    if not found:
        raise ExperimentError(
            f"DACBench's {cls.__name__} is not one of the benchmarks shmbench builds in a container: "
            f"{', '.join(sorted(DACBENCH_IDS))}"
        )
    mine, default = json.loads(benchmark.to_json()), json.loads(cls().to_json())
    seed, default_seed = mine.pop("seed", None), default.pop("seed", None)
    changes = {k: v for k, v in mine.items() if k not in default or default[k] != v}
    return found[0], filter_dacbench_config(found[0], changes), seed, default_seed


def _benchmark_class(benchmark_id: str) -> type:
    module_name, class_name = DACBENCH_IDS[benchmark_id]
    try:
        with warnings.catch_warnings():
            # dacbench.benchmarks warns about every optional benchmark that is not installed.
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (exc.name == "dacbench" or exc.name.startswith("dacbench.")):
            raise ExperimentError(
                f"{benchmark_id} needs DACBench where the env runs (inside the container): install shmbench[dacbench]"
            ) from exc
        raise ExperimentError(f"{benchmark_id}: DACBench is installed but cannot be imported: {exc}") from exc
    except ImportError as exc:
        raise ExperimentError(f"{benchmark_id}: DACBench is installed but cannot be imported: {exc}") from exc
    return getattr(module, class_name)


def make_dacbench_env(
    benchmark_id: str, config: Mapping[str, Any] | None = None, seed: int | None = None
) -> gymnasium.Env:
    """Build a whitelisted DACBench benchmark's env from filtered JSON overrides.

    The overrides go through DACBench's own ``from_json`` (so list values become arrays and
    partial configs are completed from its defaults, exactly as for a DACBench JSON file);
    ``seed``, when given, is applied with ``set_seed`` afterwards.

    Raises:
        ExperimentError: for a refused config or when DACBench is not installed.
    """
    cfg = filter_dacbench_config(benchmark_id, config)
    cls = _benchmark_class(benchmark_id)
    if not hasattr(cls, "from_json"):
        raise ExperimentError(f"{benchmark_id}: this DACBench version has no from_json; install dacbench>=0.3")
    benchmark = cls.from_json(dumps(cfg, where=f"{benchmark_id} config"))
    if seed is not None:
        benchmark.set_seed(seed)
    return benchmark.get_environment()
