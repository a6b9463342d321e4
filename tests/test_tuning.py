"""make_vec tunes itself: the model (host/tuning.py) and the measurement behind it, on real
servers. That the chosen count is *faster* is the benchmarks' business (bench/)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from helpers import assert_same
from test_vector import batch_actions, sync

import shmbench
from shmbench.host.tuning import MARGIN, Tuning, choose_workers, predicted_step_ns


def test_a_cheap_env_gets_one_server_an_expensive_one_every_core():
    assert choose_workers(8, 2_000, cores=2) == 1  # CartPole: a second wake-up costs more
    assert choose_workers(8, 1_000_000, cores=2) == 2  # 1 ms: halving the work wins
    assert choose_workers(8, 1_000_000, cores=16) == 8  # never more servers than envs
    assert choose_workers(3, 1_000_000, cores=16) == 3
    assert choose_workers(8, None, cores=16) == 1  # unmeasured: the safe choice
    assert choose_workers(8, 0, cores=16) == 1


def test_more_servers_must_save_a_margin():
    """The fewest servers whose predicted step no larger count beats by MARGIN: 16 and 32
    CartPoles (9 us a step) stay on one spinning server, where two would win a little on
    paper and vary a lot in practice; 1 ms envs still spread."""
    assert choose_workers(16, 9_000, cores=2) == 1
    assert choose_workers(32, 9_000, cores=2) == 1
    assert choose_workers(2, 1_000_000, cores=2) == 2
    for n in (1, 2, 5, 32):
        for step in (500, 20_000, 400_000):
            for cores in (1, 2, 4, 64):
                k = choose_workers(n, step, cores)
                assert 1 <= k <= max(1, min(n, cores))
                chosen = predicted_step_ns(n, step, k, cores)
                for j in range(1, max(1, min(n, cores)) + 1):
                    other = predicted_step_ns(n, step, j, cores)
                    if j < k:  # more servers are only chosen when they are faster
                        assert chosen < other
                    else:  # no larger count beats the choice by the margin
                        assert not other < (1 - MARGIN) * chosen


def test_a_slow_env_is_measured_and_split_and_keeps_its_trajectory():
    """The spare env is timed (>= its 2 ms sleep), the count follows the model, and the
    served envs behave as if nothing had been measured."""
    n = 4
    ref = sync("envs:SlowEnv", n, AutoresetMode.NEXT_STEP, delay=0.002)
    with shmbench.make_vec("envs:SlowEnv", n, runtime="process", delay=0.002) as envs:
        tuning = envs.tuning
        assert isinstance(tuning, Tuning) and tuning.chosen
        assert tuning.step_ns is not None and 2_000_000 <= tuning.step_ns < 200_000_000
        assert tuning.num_workers == choose_workers(n, tuning.step_ns, tuning.cores)
        assert len(envs._workers) == tuning.num_workers
        assert_same(envs.reset(seed=3), ref.reset(seed=3))
        for t, a in enumerate(batch_actions(ref.action_space, 10, seed=2)):
            assert_same(envs.step(a), ref.step(a), f"step {t}")
    ref.close()


def test_given_num_workers_is_not_tuned():
    with shmbench.make_vec("CartPole-v1", 3, num_workers=3, runtime="process") as envs:
        assert envs.tuning == Tuning(None, 3, envs.tuning.cores, chosen=False)
        assert len(envs._workers) == 3


def test_an_env_that_cannot_be_timed_gets_one_server(tmp_path):
    """FailingEnv raises on action 0, which the spare env samples within its probe: the
    probe gives up (saying so in the server's log), one server serves all envs."""
    with shmbench.make_vec("envs:FailingEnv", 4, runtime="process") as envs:
        assert envs.tuning.step_ns is None and envs.tuning.num_workers == 1
        log_path = envs._owned.session.path / "w0.log"
        deadline = time.monotonic() + 10  # the host drains the server's output asynchronously
        while "could not time a spare env" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "could not time a spare env (ValueError" in log_path.read_text()
        envs.reset(seed=0)
        obs, *_ = envs.step(np.ones(4, np.int64))
        assert obs.shape == (4, 2)


@pytest.mark.parametrize("bad", [0, 5, -1])
def test_num_workers_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="num_workers"):
        shmbench.make_vec("CartPole-v1", 4, num_workers=bad, runtime="process")
