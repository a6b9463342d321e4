"""Single-env step time: one workload per group, every method side by side in one run.

Workloads (bench/bench_envs.py): CartPole-v1 (16-byte observations), an 84x84x4 uint8 frame
env (28 KiB) and a 512x512 float32 env (1 MiB). Methods: the native env, shmbench's
process runtime (default wait, spin, block, and zero-copy for the frame envs) and the
peers (bench/peers.py): a Pipe worker, AsyncVectorEnv(num_envs=1, shared_memory=True)
and DACBench's Pyro4+JSON transport. The container runtimes' rows of the same groups come
from test_runtime_bench.py.

Each benchmark first checks that the method reproduces the native env's seeded
trajectory (shmbench and the Pipe worker bit for bit, with types; the peers whose wire
format widens dtypes by value), warms up, then times one ``Driver.step`` per round: the
policy's action, ``env.step`` and, when an episode ends, ``reset`` -- an agent's loop.
"""

from __future__ import annotations

import pytest
from peers import SINGLE_METHODS, check_trajectory, label, open_single

#: (workload, method) pairs, quick ones marked
_PROCESS = ["shmbench-process", "shmbench-process-spin", "shmbench-process-block"]
_PEERS = ["pipe", "gym-async", "pyro4-json"]
_QUICK = (
    {("cartpole", m) for m in ["native", "shmbench-process", "shmbench-process-spin", *_PEERS]}
    | {("obs-1MiB-f32", m) for m in ["native", "shmbench-process", "shmbench-process-nocopy", "pipe"]}
    | {("obs-1MiB-f32-inplace", m) for m in ["native", "shmbench-process-nocopy"]}
)


def _cases():
    for workload in ("cartpole", "frames-84x84x4-u8", "obs-1MiB-f32", "obs-1MiB-f32-inplace"):
        methods = ["native", *_PROCESS]
        if workload != "cartpole":
            methods.append("shmbench-process-nocopy")
        methods += _PEERS
        for method in methods:
            marks = [pytest.mark.quick] if (workload, method) in _QUICK else []
            yield pytest.param(workload, method, id=f"{workload}-{method}", marks=marks)


@pytest.mark.parametrize("workload_name,method", list(_cases()))
def test_step(benchmark, bench_envs, quick, workload_name: str, method: str) -> None:
    workload = bench_envs.WORKLOADS[workload_name]
    native, peer = SINGLE_METHODS[method]
    env = open_single(method, workload.env_id)
    try:
        check_trajectory(env, workload, method)
        driver = bench_envs.Driver(env, workload.policy())
        bench_envs.warm_up(driver, 200 if quick else 1000, 0.2 if quick else 0.5)
        extra = {}
        if method.startswith("shmbench-"):
            extra["server"] = {
                k: v for k, v in getattr(env, "server_info", {}).items() if isinstance(v, (str, int, float, bool))
            }
        label(
            benchmark,
            workload=workload.name,
            method=method,
            payload_bytes=workload.payload_bytes,
            native=native,
            peer=peer,
            env_id=workload.env_id,
            **extra,
        )
        benchmark(driver.step)
    finally:
        env.close()
