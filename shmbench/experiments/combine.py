"""Which experiment a run runs: a record, a benchmark object and explicit arguments, combined.

How a benchmark object, an experiment record and explicit arguments combine
(:func:`resolve_experiment`):

- **benchmark id**: the record's. A benchmark object (or id string) given as well must name
  the same benchmark (``shmbench/Sigmoid`` and ``shmbench/Sigmoid-v0`` are the same);
  anything else is an :class:`~shmbench.errors.ExperimentError`, not a silent switch.
- **config**: the record's config, then the benchmark object's *changes* on top, then
  ``config=`` on top of that. A benchmark object always holds a full config (defaults
  included), so its changes are found by comparing it key by key with a fresh object of its
  class built from the record's config: a key the user edited (``bench.config.cutoff =
  20``) overrides the record; a key left at its default does not. Instance sets read from
  host files are inlined, as :meth:`~shmbench.benchmarks.DACBenchmark.spec` does.
- **seed**: the record's seed policy (``base``, ``per_episode``) with ``base`` replaced by
  ``seed=`` when given, else by the benchmark object's seed when it is an int other than
  its class's default (``set_seed(42)``). ``set_seed(0)`` on a class whose default is 0
  cannot be told from no call at all: pass ``seed=0`` to force it. The env is constructed
  with seed ``base``; episode *i* resets with ``policy.seed_for(i)``.
- **image**: ``image=`` (with ``image_digest=``) wins over the record's image.
- **wrappers, log fields**: the record's.

Without a record (``experiment_identifier=None``) the run is ad hoc: the identifier is
``adhoc:<benchmark>``, the config is the benchmark object's full config (or ``config=``),
the seed policy is ``once`` from ``seed=``, else the benchmark object's seed, else 0 for a
bare id (the first reset is seeded, later ones continue the env's generator: DACBench's
behaviour; a benchmark object seeded with None is refused, as the run could not be
repeated), and rewards, actions and states are logged.

Whatever changed relative to the record is written to the log header as ``overrides``,
next to the hash of the record as published (``record_hash``) and of what actually ran
(``experiment_hash``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import gymnasium

from shmbench.errors import ExperimentError
from shmbench.experiments import ExperimentRecord, SeedPolicy, resolve
from shmbench.images.refs import ImageSpec

__all__ = ["Experiment", "resolve_experiment", "slug"]

#: What an ad-hoc run (no record) logs per step.
_ADHOC_LOG = ("reward", "action", "state")
_MISSING = object()


# ------------------------------------------------------------------------------------------
# the experiment a runner runs
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """What a runner runs, and how it differs from the record it was asked for.

    Attributes:
        record: the effective record (overrides applied); its hash is what ran.
        base: the record as resolved from the identifier (None for an ad-hoc run).
        overrides: what differs from ``base``: ``{"config": {...}, "seed": int,
            "image": {...}}``, each key present only when something changed.
    """

    record: ExperimentRecord
    base: ExperimentRecord | None
    overrides: dict[str, Any]

    @property
    def identifier(self) -> str | None:
        """The identifier asked for (None for an ad-hoc run)."""
        return self.base.identifier if self.base is not None else None

    @property
    def seed_policy(self) -> SeedPolicy:
        return self.record.seed

    @property
    def image(self) -> ImageSpec | None:
        return self.record.image

    def benchmark_spec(self) -> dict[str, Any]:
        """The description the env is built from: ``{"benchmark", "config", "seed"}``."""
        return {
            "benchmark": self.record.benchmark,
            "config": json.loads(json.dumps(self.record.config)),
            "seed": self.record.seed.base,
        }


def _host_benchmark_class(benchmark_id: str) -> type | None:
    from shmbench.benchmarks import LubyBenchmark, SigmoidBenchmark, canonical_id

    return {cls.benchmark_id: cls for cls in (SigmoidBenchmark, LubyBenchmark)}.get(canonical_id(benchmark_id))


def slug(text: str) -> str:
    """``text`` made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def resolve_experiment(
    benchmark: Any = None,
    experiment_identifier: str | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    seed: int | None = None,
    image: str | os.PathLike[str] | ImageSpec | None = None,
    image_digest: str | None = None,
) -> Experiment:
    """Combine a benchmark (object or id), an experiment record and explicit overrides.

    The rules are in the module docstring.

    Raises:
        TypeError: neither a benchmark nor an identifier.
        ExperimentError: an unknown identifier, a benchmark that does not match the record,
            a config the benchmark refuses, or an ad-hoc run without an integer seed.
        ImageError: a bad image reference or digest.
    """
    from shmbench.benchmarks import canonical_id
    from shmbench.benchmarks.dacbench_ids import dacbench_object
    from shmbench.wire.strict_json import strict_json

    record = resolve(experiment_identifier) if experiment_identifier is not None else None
    obj = None
    dacbench = None
    if benchmark is None:
        bench_id = None
    elif isinstance(benchmark, str):
        bench_id = benchmark
    elif isinstance(getattr(benchmark, "benchmark_id", None), str) and callable(getattr(benchmark, "spec", None)):
        obj, bench_id = benchmark, benchmark.benchmark_id
    elif (dacbench := dacbench_object(benchmark)) is not None:
        bench_id = dacbench[0]  # DACBench's own object: its changes, serialised here
    else:
        raise TypeError(
            f"benchmark must be a benchmark id, a shmbench benchmark object (with benchmark_id and spec()) "
            f"or a DACBench benchmark object, not {type(benchmark).__name__}"
        )
    if record is None and bench_id is None:
        raise TypeError("give a benchmark, an experiment_identifier, or both")
    if record is not None and bench_id is not None and canonical_id(bench_id) != canonical_id(record.benchmark):
        raise ExperimentError(
            f"benchmark {bench_id!r} does not match experiment {record.identifier!r}, which runs {record.benchmark!r}"
        )
    if seed is not None and (type(seed) is not int or not 0 <= seed < 2**63):
        raise ExperimentError(f"seed must be None or an int in [0, 2**63), got {seed!r}")

    overrides: dict[str, Any] = {}
    config_changes: dict[str, Any] = {}
    obj_seed = None
    if obj is not None:
        mine = obj.spec()
        mine_config = dict(mine["config"])
        mine_config.pop("seed", None)
        default_seed = type(obj)().config.get("seed")
        if type(mine["seed"]) is int and mine["seed"] != default_seed:
            obj_seed = mine["seed"]
        if record is not None:
            reference = dict(type(obj)(config=record.config).spec()["config"])
            reference.pop("seed", None)
            config_changes = {k: v for k, v in mine_config.items() if k not in reference or reference[k] != v}
        else:
            config_changes = mine_config
            if seed is None and obj_seed is None:
                obj_seed = mine["seed"]  # the benchmark's own seed, default or not
    elif dacbench is not None:
        _, config_changes, dac_seed, dac_default = dacbench
        if type(dac_seed) is int and (record is None or dac_seed != dac_default):
            obj_seed = dac_seed
    elif record is None and seed is None:
        obj_seed = 0  # a bare id: the shmbench benchmarks' default seed
    if config:
        config_changes.update(strict_json(dict(config), where="config overrides"))

    image_spec = None
    if image is not None:
        if isinstance(image, ImageSpec):
            if image_digest is not None and image.digest != ImageSpec(image.ref, image_digest).digest:
                raise ExperimentError("image_digest differs from the digest of the ImageSpec given")
            image_spec = image
        else:
            image_spec = ImageSpec(os.fspath(image), image_digest)
    elif image_digest is not None:
        raise ExperimentError("image_digest was given without an image")

    base_seed = seed if seed is not None else obj_seed
    if record is not None:
        policy = record.seed
        if base_seed is not None and base_seed != policy.base:
            policy = SeedPolicy(base_seed, policy.per_episode)
            overrides["seed"] = base_seed
        merged = {**record.config, **config_changes}
        changed = {k: v for k, v in config_changes.items() if record.config.get(k, _MISSING) != v}
        if changed:
            overrides["config"] = changed
        if image_spec is not None and image_spec != record.image:
            overrides["image"] = image_spec.to_dict()
        effective = dataclasses.replace(
            record, config=merged, seed=policy, image=image_spec if image_spec is not None else record.image
        )
    else:
        if base_seed is None:
            raise ExperimentError(
                "an ad-hoc run needs an integer seed (runs are logged to be reproducible): "
                "call benchmark.set_seed(n) or pass seed=n"
            )
        bench_canonical = canonical_id(cast(str, bench_id))  # without a record there is a benchmark: checked above
        effective = ExperimentRecord(
            identifier=f"adhoc:{slug(bench_canonical.replace('/', '.'))}",
            benchmark=bench_canonical,
            config=config_changes,
            image=image_spec,
            seed=SeedPolicy(base_seed, "once"),
            log=_ADHOC_LOG,
        )
    host_class = _host_benchmark_class(effective.benchmark)
    if host_class is not None:
        host_class(config=effective.config)  # fail here, with the container's message
    for wrapper in effective.wrappers:
        if not hasattr(gymnasium.wrappers, wrapper.name):
            raise ExperimentError(f"wrapper {wrapper.name!r} is not in this gymnasium ({gymnasium.__version__})")
    return Experiment(effective, record, overrides)
