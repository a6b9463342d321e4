"""shmbench.experiments.combine: how a record, a benchmark object and explicit overrides combine."""

from __future__ import annotations

import pytest

from shmbench.benchmarks import LubyBenchmark, SigmoidBenchmark
from shmbench.errors import ExperimentError
from shmbench.experiments import resolve
from shmbench.experiments.runner import (
    resolve_experiment,
)

pytestmark = pytest.mark.usefixtures("isolated")


def test_an_untouched_benchmark_object_changes_nothing():
    exp = resolve_experiment(SigmoidBenchmark(), "exp:0.01")
    assert exp.overrides == {}
    assert exp.record.canonical_hash() == resolve("exp:0.01").canonical_hash()
    assert exp.benchmark_spec() == {"benchmark": "shmbench/Sigmoid-v0", "config": resolve("exp:0.01").config, "seed": 0}


def test_edited_config_keys_override_the_record_and_change_the_hash():
    bench = SigmoidBenchmark()
    bench.config.cutoff = 5
    bench.config.instance_update_func = "random"
    exp = resolve_experiment(bench, "exp:0.01", config={"slope_multiplier": 1.5})
    assert exp.overrides == {"config": {"cutoff": 5, "instance_update_func": "random", "slope_multiplier": 1.5}}
    assert exp.record.config["cutoff"] == 5 and exp.record.config["action_values"] == [5, 10]
    assert exp.record.canonical_hash() != exp.base.canonical_hash()


def test_seed_precedence_explicit_then_benchmark_then_record():
    bench = SigmoidBenchmark()
    assert resolve_experiment(bench, "exp:0.01").seed_policy.base == 0
    bench.set_seed(42)
    assert resolve_experiment(bench, "exp:0.01").seed_policy.base == 42
    exp = resolve_experiment(bench, "exp:0.01", seed=9)
    assert exp.seed_policy.base == 9 and exp.seed_policy.per_episode == "once"
    assert exp.overrides == {"seed": 9}
    bench.set_seed(None)  # None does not unseed a record
    assert resolve_experiment(bench, "exp:0.01").seed_policy.base == 0
    with pytest.raises(ExperimentError, match="integer seed"):
        resolve_experiment(bench)


def test_mismatched_benchmark_and_bad_config_are_refused():
    with pytest.raises(ExperimentError, match="does not match"):
        resolve_experiment(LubyBenchmark(), "exp:0.01")
    with pytest.raises(ExperimentError, match="does not match"):
        resolve_experiment("shmbench/Luby", "exp:0.01")
    assert resolve_experiment("shmbench/Sigmoid", "exp:0.01").overrides == {}
    with pytest.raises(ExperimentError, match="cutof"):
        resolve_experiment(None, "exp:0.01", config={"cutof": 3})
    with pytest.raises(ExperimentError, match="unknown experiment"):
        resolve_experiment(None, "exp:9.99")
    with pytest.raises(TypeError):
        resolve_experiment()
