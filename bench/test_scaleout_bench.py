"""Beyond one process: what a sweep's tasks and a Ray actor's batches cost.

Sweep overhead (``sweep-N-tasks``): N tasks of short Sigmoid episodes (exp:0.01, the
process runtime, so that the machinery is measured and not a container's start) run

- ``in-process`` (the baseline): one RemoteRunner after another in this process;
- ``sweep-local``: ``shmbench.sweeps.sweep`` with the local executor (one task process
  per task, a pool sized to the cores, markers and published logs);
- ``sweep-slurm``: the same through Slurm job arrays, where a cluster answers here
  (``$SLURM_CONF`` set and ``sbatch`` on PATH; otherwise it skips, saying so).

Ray (``ray-rollouts-batchB``): one actor holding ``make_vec("CartPole-v1", 8)`` returns B
vector steps per call (``ray-actor``), against the same BatchedRollouts stepped directly
in this process (``direct``), for B in 1, 8, 64: the cost of one network round trip per
call, divided over B * 8 env steps. Skips without Ray (``pip install 'shmbench[ray]'``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from peers import label

from shmbench.experiments.runner import RemoteRunner

EPISODES = 2
STEPS_PER_EPISODE = 10  # exp:0.01's cutoff


def _tasks(quick: bool) -> int:
    return 16 if quick else 64


def _in_process(n: int) -> None:
    from shmbench.agents import derived_seed, make_agent

    for seed in range(n):
        with RemoteRunner(None, "exp:0.01", seed=seed, runtime="process", log_dir=None, progress=False) as runner:
            env = runner.get_environment()
            agent = make_agent({"type": "random", "seed": derived_seed(seed), "action_space": env.action_space})
            runner.run(agent, EPISODES)


def _slurm_reason() -> str | None:
    if not os.environ.get("SLURM_CONF") and not Path("/etc/slurm/slurm.conf").exists():
        return "no Slurm cluster configured here ($SLURM_CONF)"
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH"
    return None


def _wait_done(out: Path, n: int, timeout: float = 1800.0) -> None:
    from shmbench.sweeps import status

    deadline = time.monotonic() + timeout
    while status(out)["done"] < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Slurm sweep in {out} did not finish in {timeout} s: {status(out)}")
        time.sleep(0.2)


@pytest.mark.parametrize("method", [pytest.param("in-process", marks=pytest.mark.quick), "sweep-local", "sweep-slurm"])
def test_sweep_overhead(benchmark, quick, tmp_path_factory, method: str) -> None:
    from shmbench.sweeps import collect, sweep

    n = _tasks(quick)
    if method == "sweep-slurm" and _slurm_reason() is not None:
        pytest.skip(str(_slurm_reason()))
    counter = iter(range(1_000_000))

    def fresh() -> tuple[tuple, dict]:
        return (tmp_path_factory.mktemp(f"sweep-{method}-{next(counter)}"),), {}

    def run(out: Path) -> None:
        if method == "in-process":
            _in_process(n)
            return
        executor = "slurm" if method == "sweep-slurm" else "local"
        sweep(["exp:0.01"], range(n), episodes=EPISODES, out=out, runtime="process", executor=executor)
        if executor == "slurm":
            _wait_done(out, n)

    # checked first: every task done, every log complete
    if method != "in-process":
        (out,), _ = fresh()
        run(out)
        rows = collect(out)
        assert [r["state"] for r in rows] == ["done"] * n and {r["steps"] for r in rows} == {EPISODES * 10}
    label(
        benchmark,
        workload=f"sweep-{n}-tasks",
        method=method,
        payload_bytes=0,
        env_steps_per_round=n * EPISODES * STEPS_PER_EPISODE,
        native=method == "in-process",
        tasks=n,
    )
    benchmark.pedantic(run, setup=fresh, rounds=1 if quick else 3, iterations=1)
    benchmark.extra_info["seconds_per_task"] = benchmark.stats.stats.median / n


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="pip install 'shmbench[ray]'")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("batch", [1, 8, 64])
@pytest.mark.parametrize("method", ["direct", "ray-actor"])
def test_ray_rollouts(benchmark, quick, ray_local, method: str, batch: int) -> None:
    import numpy as np

    from shmbench.host.rollouts import BatchedRollouts

    num_envs = 8
    direct = BatchedRollouts("CartPole-v1", num_envs, 3, runtime="process")
    try:
        if method == "direct":
            step = lambda: direct.rollout(batch)  # noqa: E731
        else:
            actor = ray_local.remote(num_cpus=0)(BatchedRollouts).remote("CartPole-v1", num_envs, 3, runtime="process")
            step = lambda: ray_local.get(actor.rollout.remote(batch))  # noqa: E731
        # checked first: the actor's first batch is the one stepped here
        want = BatchedRollouts("CartPole-v1", num_envs, 3, runtime="process")
        try:
            got, ref = step(), want.rollout(batch)
        finally:
            want.close()
        assert all(np.array_equal(got[k], ref[k]) for k in ref)
        label(
            benchmark,
            workload=f"ray-rollouts-batch{batch}",
            method=method,
            payload_bytes=int(sum(v.nbytes for v in got.values())),
            env_steps_per_round=batch * num_envs,
            native=method == "direct",
        )
        benchmark.pedantic(step, rounds=20 if quick else 100, iterations=1, warmup_rounds=2)
    finally:
        direct.close()
        if method == "ray-actor":
            ray_local.get(actor.close.remote())
            ray_local.kill(actor)
