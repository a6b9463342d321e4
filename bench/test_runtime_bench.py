"""What a container costs: step time and start-up time per runtime.

Step time: the single-env workloads through bwrap with the host root read-only
(``shmbench-bwrap``), bwrap running the reference SIF image (``shmbench-bwrap-sif``,
unpacked once into the cache) and Apptainer with the same image where it is installed.
They join the workload groups of test_env_bench.py, so each table shows them next to the
process runtime, native and the peers. In an image, bench/ is bound read-only at /mnt so
that its servers can build the frame envs.

Each also runs with ``wait="spin"`` (``...-spin``): the default adaptive wait can settle
in a slow, blocking mode under background load, which a comparison of runtimes must not
mistake for the runtime's cost.

Start-up: from ``shmbench.make()`` to the end of the first ``reset()`` (spawning the
server, its imports, the handshake, building CartPole, one reset), one fresh env per
round, closed outside the timed region.

Runtimes that cannot run here skip with the reason (bwrap not installed or no user
namespaces, no cached reference image in quick mode, no Apptainer).
"""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from peers import check_trajectory, label, open_single, shmbench_options

CONTAINER_METHODS = ["shmbench-bwrap", "shmbench-bwrap-sif", "shmbench-apptainer"]
#: step benchmarks also run with wait="spin": the default adaptive wait is bimodal under
#: background load (see the report), and a runtime comparison should not hinge on it
STEP_METHODS = [v for m in CONTAINER_METHODS for v in (m, f"{m}-spin")]
#: quick mode keeps one image row: it runs where the reference image is cached (quick
#: mode builds none; bench/conftest.py's bookworm_image skips, saying so, otherwise)
_QUICK_STEP = {("cartpole", "shmbench-bwrap"), ("cartpole", "shmbench-bwrap-sif")}
_QUICK_START = {"shmbench-process", "shmbench-bwrap"}


def _runtime_of(method: str) -> str:
    return method.split("-")[1]


def _image_for(method: str, request: pytest.FixtureRequest):
    request.getfixturevalue("require_runtime")(_runtime_of(method))
    if "-sif" in method or _runtime_of(method) == "apptainer":
        return request.getfixturevalue("bookworm_image")
    return None


def _step_cases():
    for workload in ("cartpole", "frames-84x84x4-u8", "obs-1MiB-f32"):
        for method in STEP_METHODS:
            marks = [pytest.mark.quick] if (workload, method) in _QUICK_STEP else []
            yield pytest.param(workload, method, id=f"{workload}-{method}", marks=marks)


@pytest.mark.parametrize("workload_name,method", list(_step_cases()))
def test_runtime_step(benchmark, request, bench_envs, quick, workload_name: str, method: str) -> None:
    workload = bench_envs.WORKLOADS[workload_name]
    image = _image_for(method, request)
    env = open_single(method, workload.env_id, image=image)
    try:
        check_trajectory(env, workload, method)
        driver = bench_envs.Driver(env, workload.policy())
        bench_envs.warm_up(driver, 200 if quick else 1000, 0.2 if quick else 0.5)
        label(
            benchmark,
            workload=workload.name,
            method=method,
            payload_bytes=workload.payload_bytes,
            env_id=workload.env_id,
            runtime=_runtime_of(method),
            image=None if image is None else str(image),
        )
        benchmark(driver.step)
    finally:
        env.close()


@pytest.mark.parametrize(
    "method",
    [
        pytest.param(m, marks=[pytest.mark.quick] if m in _QUICK_START else [], id=m)
        for m in ["shmbench-process", *CONTAINER_METHODS]
    ],
)
def test_startup(benchmark, request, quick, method: str) -> None:
    """make() to the end of the first reset(), CartPole-v1."""
    import shmbench

    image = _image_for(method, request)
    options = shmbench_options(method, image)
    native = gymnasium.make("CartPole-v1")
    want, _ = native.reset(seed=0)
    native.close()

    live: list = []

    def start():
        env = shmbench.make("CartPole-v1", **options)
        live.append(env)
        obs, _ = env.reset(seed=0)
        return obs

    def stop():
        while live:
            live.pop().close()

    try:
        # checked (and warmed: the first start may unpack an image or fill caches) untimed
        obs = start()
        if obs.dtype != want.dtype or not np.array_equal(obs, want):
            raise AssertionError(f"{method}: first observation {obs!r}, native {want!r}")
        stop()
        label(
            benchmark,
            workload="startup-cartpole",
            method=method,
            payload_bytes=0,
            env_steps_per_round=0,
            runtime=_runtime_of(method),
            image=None if image is None else str(image),
        )
        benchmark.pedantic(start, teardown=stop, rounds=3 if quick else 8, warmup_rounds=0)
    finally:
        stop()
