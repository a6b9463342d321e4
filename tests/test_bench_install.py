"""``shmbench bench`` from a pip install: the suites ship with the package (bench/ installs as
``shmbench.perf.suites``), and ``pip install 'shmbench[bench]'`` brings what they need.

A real, non-editable install of this tree's wheel into a fresh venv, run from a directory of
its own (needs PyPI or a pip cache for the dependencies).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_bench_runs_from_a_pip_install_in_another_directory(shmbench_wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"{shmbench_wheel}[bench]"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHMBENCH_BENCH_DIR")}
    out = subprocess.run(
        [str(venv / "bin" / "shmbench"), "bench", "--quick", "-o", "rep", "--", "-k", "cartpole or roundtrip"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    suites = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert f"running the quick subset from {suites / 'shmbench' / 'perf' / 'suites'}" in out.stdout
    report = work / "rep"
    assert (report / "report.md").read_text().count("|") > 10
    assert list(report.glob("*.png"))
    results = json.loads((report / "bench.json").read_text())
    methods = {b["extra_info"].get("method") for b in results["benchmarks"]}
    assert {"native", "shmbench-process"} <= methods
    assert Path(shmbench_wheel).is_file()
    # an installed shmbench cannot build a wheel of itself for an image: it says what to give
    own = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "from shmbench.images.wheel import own_wheel; own_wheel()"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert own.returncode == 1 and "give --build-arg wheel=PATH" in own.stderr
