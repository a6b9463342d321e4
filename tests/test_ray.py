"""examples/ray_rollouts.py on a real local Ray (127.0.0.1): two actors, each holding a
shmbench make_vec in bwrap, return batched rollouts equal to the same rollouts stepped in
this process without Ray."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from run_helpers import BWRAP_SKIP

ray = pytest.importorskip("ray", reason="the test command installs shmbench[ray]; pip install 'shmbench[ray]'")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(BWRAP_SKIP is not None, reason=str(BWRAP_SKIP))]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ray_rollouts.py"


def load_example():
    spec = importlib.util.spec_from_file_location("ray_rollouts", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield
    finally:
        ray.shutdown()


def test_two_ray_actors_return_the_rollouts_stepped_here(local_ray):
    example = load_example()
    remote = example.collect(2, 4, 16, 3, seed=5, runtime="bwrap")
    here = example.collect(2, 4, 16, 3, seed=5, runtime="bwrap", use_ray=False)
    assert example.same(remote, here)
    first = remote[0][0]
    assert first["obs"].shape == (16, 4, 4) and first["actions"].shape == (16, 4)
    assert not example.same(remote[:1], remote[1:])  # two actors, two seeds: two trajectories
    assert first["rewards"].sum() > 0
