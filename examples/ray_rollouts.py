"""Envs on many nodes with Ray: N actors, each holding a shmbench vector env in a container
on whatever node Ray places it, collecting batched rollouts for the driver.

    pip install 'shmbench[ray]'
    python examples/ray_rollouts.py --actors 2 --num-envs 8 --steps 64 --calls 10
    RAY_ADDRESS=auto python examples/ray_rollouts.py ...   # an existing cluster (docs/scale-out.md)

No per-step call crosses a node: each actor steps its envs locally through shared memory
(shmbench.host.rollouts.BatchedRollouts) and returns ``--steps`` vector steps per call as
arrays. ``--check`` runs the same rollouts in this process without Ray and compares.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

from shmbench.host.rollouts import BatchedRollouts


def collect(
    actors: int,
    num_envs: int,
    steps: int,
    calls: int,
    seed: int = 0,
    env_id: str = "CartPole-v1",
    *,
    use_ray: bool = True,
    **make_vec_kwargs: Any,
) -> list[list[dict[str, np.ndarray]]]:
    """``calls`` batches of ``steps`` vector steps from each of ``actors`` rollout holders;
    holder ``i`` is seeded ``seed + 1000 * i``. ``use_ray``: each is a Ray actor, all step
    at once (Ray must be initialised); else they run one after another in this process."""
    seeds = [seed + 1000 * i for i in range(actors)]
    if not use_ray:
        out = []
        for s in seeds:
            rollouts = BatchedRollouts(env_id, num_envs, s, **make_vec_kwargs)
            try:
                out.append([rollouts.rollout(steps) for _ in range(calls)])
            finally:
                rollouts.close()
        return out
    import ray

    Actor = ray.remote(num_cpus=0)(BatchedRollouts)  # its servers take the cores, not the actor
    handles = [Actor.remote(env_id, num_envs, s, **make_vec_kwargs) for s in seeds]
    try:
        batches: list[list[dict[str, np.ndarray]]] = [[] for _ in handles]
        for _ in range(calls):
            # every actor steps at once; the driver waits for the slowest batch
            for i, batch in enumerate(ray.get([h.rollout.remote(steps) for h in handles])):
                batches[i].append(batch)
        return batches
    finally:
        ray.get([h.close.remote() for h in handles])
        for h in handles:
            ray.kill(h)


def same(a: list[list[dict[str, np.ndarray]]], b: list[list[dict[str, np.ndarray]]]) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(set(p) == set(q) and all(np.array_equal(p[k], q[k]) for k in p) for p, q in zip(x, y))
        for x, y in zip(a, b)
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--num-envs", type=int, default=8, help="envs per actor (one make_vec each)")
    p.add_argument("--steps", type=int, default=64, help="vector steps per actor call")
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--runtime", default="auto")
    p.add_argument("--image", help="the image every actor's envs run in (a SIF file on each node)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="compare with the same rollouts run here without Ray")
    args = p.parse_args()
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS", "local"), include_dashboard=False, log_to_driver=False)
    kwargs: dict[str, Any] = {"runtime": args.runtime, **({"image": args.image} if args.image else {})}
    try:
        start = time.perf_counter()
        batches = collect(args.actors, args.num_envs, args.steps, args.calls, args.seed, args.env, **kwargs)
        elapsed = time.perf_counter() - start
    finally:
        ray.shutdown()
    total = args.actors * args.num_envs * args.steps * args.calls
    print(f"{total} env steps from {args.actors} actors in {elapsed:.2f} s: {total / elapsed:,.0f} env-steps/s")
    if args.check:
        local = collect(
            args.actors, args.num_envs, args.steps, args.calls, args.seed, args.env, use_ray=False, **kwargs
        )
        print("same as without Ray:", same(batches, local))
        return 0 if same(batches, local) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
