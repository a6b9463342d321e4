"""What a run returns: each finished episode, and the run as a whole."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EpisodeResult", "RunResult"]


@dataclass(frozen=True)
class EpisodeResult:
    """One finished episode.

    Attributes:
        episode: its index within the runner (0-based, across ``run`` calls).
        seed: the seed its reset used (None: it continued the env's generator).
        instance: the env's instance id when it exposes one (``instance_id`` or ``inst_id``).
        steps: how many steps it took.
        reward: the sum of its rewards (its return).
        final_reward: the last step's reward (what DACBench's ``run_benchmark`` averages).
    """

    episode: int
    seed: int | None
    instance: Any
    steps: int
    reward: float
    final_reward: Any


@dataclass(frozen=True)
class RunResult:
    """What :meth:`Runner.run` returns."""

    episodes: tuple[EpisodeResult, ...]
    log_path: Path | None
    wall_time: float

    @property
    def episode_rewards(self) -> list[float]:
        """The return (sum of rewards) of each episode."""
        return [e.reward for e in self.episodes]

    @property
    def episode_lengths(self) -> list[int]:
        return [e.steps for e in self.episodes]

    @property
    def mean_reward(self) -> float:
        return float(np.mean(self.episode_rewards)) if self.episodes else float("nan")
