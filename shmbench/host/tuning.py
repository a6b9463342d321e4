"""How many servers a vector env gets, from what its env costs: ``make_vec`` tunes itself.

A cheap env (CartPole: microseconds a step) is fastest on one server that the host waits
for spinning: a second server costs a second wake-up per step, more than it saves. An
expensive one (a millisecond a step) wants every core. Where the line lies depends on the
env, so ``make_vec`` measures it: the first server times a few steps of a spare copy of
the env (never one of the envs it serves: their state and generators stay untouched),
and :func:`choose_workers` picks the count with the least predicted step time::

    T(k) = ceil(n / k) * step + wait(k)

where ``wait(k)`` is a spinning round trip while the host and ``k`` servers each have a
core, and futex wake-ups (about a hundred microseconds a step on a VM whose idle vCPUs
halt) when they do not. More servers must also *earn* their place: a count is taken over
a smaller one only when it predicts a step at least :data:`MARGIN` shorter, because a
step that waits for wake-ups varies from chunk to chunk and from run to run (measured:
16 CartPoles on two servers 0.59-1.0x SyncVectorEnv between runs, on one 1.28x steadily)
while a spinning single server does not. The wait policy then follows the count
(:func:`~shmbench.host.worker.wait_policy`), and while it runs the host's spin budget
keeps tracking the reply time it sees (the C extension's ``track`` mode), so a step that
grows or shrinks keeps being waited for the right way. ``num_workers=`` and ``wait=`` override.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

__all__ = ["PROBE_STEPS", "PROBE_SECONDS", "MARGIN", "Tuning", "choose_workers", "predicted_step_ns"]

#: steps of the spare env the first server times (fewer when they take long: PROBE_SECONDS)
PROBE_STEPS = 24
PROBE_SECONDS = 0.25
#: a spinning round trip with the host's Python around it, and what a step pays in wake-ups
#: when the host and its servers outnumber the cores (measured on the 2-vCPU VM shmbench
#: is developed on: bench/test_channel_bench.py's spin row; and two servers' step of 16 and
#: 32 CartPoles less their envs' work, bench/test_paired_bench.py's way: 114 and 100 us)
SPIN_ROUND_TRIP_NS = 5_000
WAKE_UP_NS = 120_000
#: the share of the step a further server must save to be chosen over fewer
MARGIN = 0.2
#: what each further server adds to a step on the host (one more request and reply)
PER_WORKER_NS = 3_000


@dataclass(frozen=True)
class Tuning:
    """What ``make_vec`` measured and chose (``envs.tuning``)."""

    step_ns: int | None  # the spare env's median step, None when it could not be measured
    num_workers: int
    cores: int
    chosen: bool  # False: num_workers was given


def predicted_step_ns(num_envs: int, step_ns: int, workers: int, cores: int) -> int:
    """The model's vector step time with ``workers`` servers (see the module docstring)."""
    wait = SPIN_ROUND_TRIP_NS if workers + 1 <= cores else WAKE_UP_NS
    return math.ceil(num_envs / workers) * step_ns + wait + PER_WORKER_NS * (workers - 1)


def choose_workers(num_envs: int, step_ns: int | None, cores: int | None = None) -> int:
    """The number of servers for ``num_envs`` envs whose step takes ``step_ns``: one when it
    could not be measured, else the count with the least predicted step time, where each
    count must beat the best smaller one by :data:`MARGIN` to be taken."""
    cores = cores or len(os.sched_getaffinity(0))
    if step_ns is None or step_ns <= 0:
        return 1
    best, best_ns = 1, predicted_step_ns(num_envs, step_ns, 1, cores)
    for k in range(2, max(1, min(num_envs, cores)) + 1):
        ns = predicted_step_ns(num_envs, step_ns, k, cores)
        if ns < (1 - MARGIN) * best_ns:
            best, best_ns = k, ns
    return best
