"""Vector envs: env-steps per second, shmbench's ``make_vec`` against the peers a user
would pick, side by side in one run.

Workloads (bench_envs.VECTOR_WORKLOADS): n CartPoles and n envs whose step computes for
1 ms, for n in 1, 2, 4, 8, 16, 32 (the scaling sweep), and 8 envs whose steps take 0.1 to
2 ms at random (the mixed workload, where a synchronous step waits for its slowest env).

Methods: gymnasium's SyncVectorEnv (the in-process reference, ``native``) and
AsyncVectorEnv (one process per env, shared memory); shmbench's default (self-tuning) and,
where they matter, two workers, ``wait="spin"`` and the async pool (``batch_size=n/2``:
each round takes the half that finished first); and EnvPool, synchronous with one thread
and as an async pool with two -- on CartPole only (it runs its own C++ envs; its CartPole
is its own implementation, so its trajectory is not compared: its rows are speed only).

Every other method's seeded trajectory is first checked against SyncVectorEnv's
(autoresets included); then each round is one batched step -- or, for a pool, one
``recv``/``send`` of a batch -- under a CartPole controller, and the report turns the
median into env-steps/s (the mean where rounds vary by design: the pools, and every row of
the mixed workload, whose synchronous rounds are sums of random step times).
"""

from __future__ import annotations

import importlib.util

import pytest
from peers import ENVPOOL_IDS, label, open_envpool, open_vector

METHODS = {
    # name -> (native, peer)
    "shmbench-process": (False, False),
    "shmbench-process-spin": (False, False),
    "shmbench-process-w2": (False, False),
    "shmbench-process-pool": (False, False),
    "sync-vector": (True, False),
    "async-vector": (False, True),
    "envpool": (False, True),
    "envpool-async": (False, True),
}
_QUICK = {("vec8-cartpole", m) for m in ("shmbench-process", "sync-vector", "async-vector")} | {
    ("vec8-busy1ms", m) for m in ("shmbench-process", "sync-vector")
}
_HAVE_ENVPOOL = importlib.util.find_spec("envpool") is not None


def _wanted(workload: str, method: str, n: int, env_id: str) -> bool:
    if method.startswith("envpool"):
        return env_id in ENVPOOL_IDS and (method == "envpool" or n >= 2)
    if method == "shmbench-process-spin":
        return workload == "vec8-cartpole"  # spinning only pays for cheap envs
    if method == "shmbench-process-w2":
        return n == 8 and workload != "vec8-cartpole"  # two workers only for expensive envs
    if method == "shmbench-process-pool":
        return workload in ("vec8-mixed", "vec8-busy1ms", "vec8-cartpole", "vec32-cartpole")
    if method == "async-vector":
        return n <= 16 or "cartpole" in workload  # 32 processes of 1 ms envs: minutes, no news
    return True


def _cases():
    from bench_envs import VECTOR_WORKLOADS

    for workload in VECTOR_WORKLOADS.values():
        for method in METHODS:
            if not _wanted(workload.name, method, workload.num_envs, workload.env_id):
                continue
            marks = [pytest.mark.quick] if (workload.name, method) in _QUICK else []
            yield pytest.param(workload.name, method, id=f"{workload.name}-{method}", marks=marks)


def open_driver(bench_envs, method: str, envs):
    """What times one round: a batched step, or a pool's recv and send."""
    if method == "shmbench-process-pool":

        def start():
            obs, _ = envs.reset(seed=0)
            envs.send(bench_envs.cartpole_batch_policy(obs))

        def recv():
            obs, _, _, _, _, ids = envs.recv()
            return obs, ids

        def drain():
            while len(envs.in_flight):
                envs.recv()

        return bench_envs.PoolDriver(start, envs.send, recv, drain)
    if method == "envpool-async":

        def recv():
            obs, _, _, _, info = envs.recv()
            return obs, info["env_id"]

        return bench_envs.PoolDriver(envs.async_reset, lambda a, ids: envs.send(a, ids), recv, lambda: None)
    return bench_envs.VecDriver(envs, seed=None if method == "envpool" else 0)


_sync_cache: dict[str, list] = {}


@pytest.mark.parametrize("workload_name,method", list(_cases()))
@pytest.mark.filterwarnings("ignore:.*precision lowered by casting:UserWarning")  # EnvPool's spaces
def test_vector_step(benchmark, bench_envs, quick, workload_name: str, method: str) -> None:
    workload = bench_envs.VECTOR_WORKLOADS[workload_name]
    native, peer = METHODS[method]
    n = workload.num_envs
    if method.startswith("envpool"):
        if not _HAVE_ENVPOOL:
            pytest.skip("EnvPool is not installed (pip install 'shmbench[peers]')")
        # its own C++ CartPole: speed only (see the module docstring)
        envs = open_envpool(
            workload.env_id, n, n // 2 if method == "envpool-async" else None, 2 if "async" in method else 1
        )
    else:
        if workload.name not in _sync_cache:
            ref = open_vector("sync-vector", workload.env_id, n)
            try:
                _sync_cache[workload.name] = bench_envs.record_vec(ref, workload.check_steps)
            finally:
                ref.close()
        envs = open_vector(method, workload.env_id, n)
    try:
        if not method.startswith("envpool"):
            got = bench_envs.record_vec(envs, workload.check_steps)
            bench_envs.assert_same(got, _sync_cache[workload.name], who=f"{method} on {workload.name}")
        driver = open_driver(bench_envs, method, envs)
        expensive = "busy" in workload.name or "mixed" in workload.name
        driver.run(20 if expensive else (100 if quick else 500))
        pool = method in ("shmbench-process-pool", "envpool-async")
        if method.startswith("shmbench-"):
            workers = envs.tuning.num_workers
        else:
            workers = n if method == "async-vector" else 0
        label(
            benchmark,
            workload=workload.name,
            method=method,
            payload_bytes=workload.payload_bytes,
            env_steps_per_round=n // 2 if pool else n,
            native=native,
            peer=peer,
            env_id=workload.env_id,
            num_envs=n,
            processes=workers,
            trajectory_checked=not method.startswith("envpool"),
            # a pool's rounds alternate between a batch that was ready and one waited for,
            # and the mixed workload's rounds vary by design (a sum of random step times,
            # skewed: its median is below its mean): env-steps/s is then 1 / the mean
            throughput_from="mean" if pool or "mixed" in workload.name else "median",
        )
        benchmark(driver.step)
        if pool:
            driver.drain()
    finally:
        envs.close()
