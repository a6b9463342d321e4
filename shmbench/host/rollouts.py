"""Batched rollouts of one vector env: the unit placed on a remote node (a Ray actor, a
Slurm task), so that no per-step call crosses a node.

A :class:`BatchedRollouts` holds a :func:`~shmbench.make_vec` (its servers on the same node,
stepped through shared memory) and a seeded action stream, and answers
:meth:`~BatchedRollouts.rollout` with ``steps`` vector steps at once, as arrays shaped
``(steps, num_envs, ...)``. One call per batch is all that crosses the network, so the
network's cost is divided by ``steps * num_envs``. The class imports nothing of Ray: the
caller wraps it (``ray.remote(BatchedRollouts)``, see ``examples/ray_rollouts.py``), and the
same object stepped in-process gives the same arrays for the same seed, which is how the
example's results are checked.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["BatchedRollouts"]


class BatchedRollouts:
    """``num_envs`` copies of ``env_id`` with random actions from ``seed``.

    Args:
        env_id: a gymnasium id (or anything :func:`~shmbench.make_vec` takes).
        num_envs: envs in the vector env.
        seed: seeds the envs' first reset (``seed``, ``seed + 1``, ...) and the actions.
        make_vec_kwargs: passed to :func:`~shmbench.make_vec` (``runtime``, ``image``, ...).
    """

    def __init__(self, env_id: str, num_envs: int, seed: int, **make_vec_kwargs: Any) -> None:
        import shmbench

        self.envs = shmbench.make_vec(env_id, num_envs=num_envs, **make_vec_kwargs)
        self.envs.action_space.seed(seed)
        self.obs, _ = self.envs.reset(seed=seed)
        self.steps = 0

    def rollout(self, steps: int) -> dict[str, np.ndarray]:
        """``steps`` vector steps: ``obs`` (the observation each action was chosen in),
        ``actions``, ``rewards``, ``terminated``, ``truncated``, each ``(steps, num_envs, ...)``."""
        if steps < 1:
            raise ValueError("steps must be at least 1")
        envs = self.envs
        obs = np.empty((steps, *np.shape(self.obs)), dtype=np.asarray(self.obs).dtype)
        actions: list[Any] = []
        rewards = np.empty((steps, envs.num_envs), dtype=np.float64)
        terminated = np.empty((steps, envs.num_envs), dtype=bool)
        truncated = np.empty((steps, envs.num_envs), dtype=bool)
        for t in range(steps):
            obs[t] = self.obs
            action = envs.action_space.sample()
            actions.append(action)
            self.obs, rewards[t], terminated[t], truncated[t], _ = envs.step(action)
        self.steps += steps * envs.num_envs
        return {
            "obs": obs,
            "actions": np.stack(actions),
            "rewards": rewards,
            "terminated": terminated,
            "truncated": truncated,
        }

    def close(self) -> None:
        self.envs.close()
