"""Helpers shared by the runner, combine, logs, agent and ``shmbench run`` tests."""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shmbench.agents import RandomAgent
from shmbench.benchmarks import SigmoidBenchmark
from shmbench.cli.run import add_run_arguments
from shmbench.experiments.runner import (
    RemoteRunner,
)
from shmbench.logs import read_log

TESTS = Path(__file__).resolve().parent


def _bwrap_skip_reason() -> str | None:
    try:
        import shmbench.runtimes.bwrap  # noqa: F401
    except ImportError:
        return "shmbench.runtimes.bwrap cannot be imported"
    from shmbench.runtimes.selection import probe_all

    ok, why = probe_all().get("bwrap", (False, "not registered"))
    return None if ok else f"bwrap does not work here: {why}"


BWRAP_SKIP = _bwrap_skip_reason()


RUNTIMES = ["process", pytest.param("bwrap", marks=pytest.mark.skipif(BWRAP_SKIP is not None, reason=str(BWRAP_SKIP)))]


def seed_workflow(runtime: str, log_dir: Path, seed: int = 42, episodes: int = 10):
    """The seed workflow, verbatim but for the runtime and the log directory."""
    benchmark = SigmoidBenchmark()
    benchmark.set_seed(seed)
    with RemoteRunner(benchmark, experiment_identifier="exp:0.01", runtime=runtime, log_dir=log_dir) as remote_runner:
        agent = RandomAgent(remote_runner.get_environment())
        result = remote_runner.run(agent, number_of_episodes=episodes)
    return result, read_log(result.log_path)


def records(log) -> list:
    return [log.header, *log.runs, *log.rows, log.end]


def without(record: dict, *keys: str) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def user_record(tmp_path: Path, image_bytes: bytes, digest: str | None = None) -> tuple[Path, str]:
    image = tmp_path / "share" / "tiny.sif"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(image_bytes)
    digest = digest or "sha256:" + hashlib.sha256(image_bytes).hexdigest()
    records = tmp_path / "records"
    records.mkdir(exist_ok=True)
    (records / "mine.toml").write_text(
        'identifier = "exp:0.01"\nbenchmark = "shmbench/Sigmoid-v0"\nlog = ["reward"]\n'
        f'[image]\nref = "{image.as_uri()}"\ndigest = "{digest}"\n'
        '[config]\ncutoff = 3\n[seed]\nbase = 1\nper_episode = "fixed"\n'
    )
    return records, digest


def holder(space):
    from shmbench.agents import ActionSpaceHolder

    return ActionSpaceHolder(space)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="shmbench run")
    add_run_arguments(parser)
    return parser.parse_args(list(argv))


def shmbench(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The shmbench command line as a real subprocess (``env`` added to this environment)."""
    return subprocess.run(
        [sys.executable, "-m", "shmbench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
