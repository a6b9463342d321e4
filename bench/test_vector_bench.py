"""Vector envs: env-steps per second of 4 and 8 CartPoles and of 8 envs whose step computes
for 1 ms, through shmbench's ``make_vec`` (its default worker count, and two workers for
the 1 ms envs; and with ``wait="spin"`` for the CartPoles), gymnasium's SyncVectorEnv (the in-process reference, ``native``) and
AsyncVectorEnv (one process per env, shared memory; the peer).

Each benchmark first checks that the vector env reproduces SyncVectorEnv's seeded
trajectory (autoresets included), then times one batched step per round under a batch
CartPole controller; the report turns the median into env-steps/s.
"""

from __future__ import annotations

import gymnasium
import pytest
from peers import label

METHODS = {
    # name -> (native, peer)
    "shmbench-process": (False, False),
    "shmbench-process-spin": (False, False),
    "shmbench-process-w2": (False, False),
    "sync-vector": (True, False),
    "async-vector": (False, True),
}
_QUICK = {("vec8-cartpole", m) for m in ("shmbench-process", "sync-vector", "async-vector")}


def _cases():
    for workload in ("vec4-cartpole", "vec8-cartpole", "vec8-busy1ms"):
        for method in METHODS:
            # two workers only pay off for expensive envs; spinning only for cheap ones
            if method == "shmbench-process-w2" and workload != "vec8-busy1ms":
                continue
            if method == "shmbench-process-spin" and workload == "vec8-busy1ms":
                continue
            marks = [pytest.mark.quick] if (workload, method) in _QUICK else []
            yield pytest.param(workload, method, id=f"{workload}-{method}", marks=marks)


def open_vector(method: str, env_id: str, num_envs: int):
    if method == "sync-vector":
        return gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make(env_id)] * num_envs)
    if method == "async-vector":
        return gymnasium.vector.AsyncVectorEnv([lambda: gymnasium.make(env_id)] * num_envs, shared_memory=True)
    import shmbench

    num_workers = 2 if method.endswith("-w2") else None
    wait = "spin" if method.endswith("-spin") else "auto"
    return shmbench.make_vec(env_id, num_envs, num_workers=num_workers, runtime="process", wait=wait)


_sync_cache: dict[str, list] = {}


@pytest.mark.parametrize("workload_name,method", list(_cases()))
def test_vector_step(benchmark, bench_envs, quick, workload_name: str, method: str) -> None:
    workload = bench_envs.VECTOR_WORKLOADS[workload_name]
    native, peer = METHODS[method]
    if workload.name not in _sync_cache:
        ref = open_vector("sync-vector", workload.env_id, workload.num_envs)
        try:
            _sync_cache[workload.name] = bench_envs.record_vec(ref, workload.check_steps)
        finally:
            ref.close()
    envs = open_vector(method, workload.env_id, workload.num_envs)
    try:
        got = bench_envs.record_vec(envs, workload.check_steps)
        bench_envs.assert_same(got, _sync_cache[workload.name], who=f"{method} on {workload.name}")
        driver = bench_envs.VecDriver(envs)
        driver.run(20 if "busy" in workload.name else (100 if quick else 500))
        if method.startswith("shmbench-"):
            workers = envs.tuning.num_workers
        else:
            workers = workload.num_envs if method == "async-vector" else 0
        label(
            benchmark,
            workload=workload.name,
            method=method,
            payload_bytes=workload.payload_bytes,
            env_steps_per_round=workload.num_envs,
            native=native,
            peer=peer,
            env_id=workload.env_id,
            num_envs=workload.num_envs,
            processes=workers,
        )
        benchmark(driver.step)
    finally:
        envs.close()
