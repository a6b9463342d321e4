#!/usr/bin/env bash
# The test command (README, .ci/run): system packages, the package with its test extras
# (and Ray, for the scale-out example's test),
# lint and types, the test suite, then the channel tests again against an ASan/UBSan build
# of the C code. Extra arguments go to pytest, e.g. ./run-tests.sh -m "not slow" locally.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/system-deps.sh
python -m pip install -q -e ".[test,ray]"
python -m ruff check shmbench tests bench examples
python -m ruff format --check shmbench tests bench examples
python -m mypy
# the sweep tests' Slurm cluster on 127.0.0.1 (tests/slurm_cluster.py), started outside
# pytest and stopped by PID however pytest ends (the tests start their own without it)
slurm_dir=$(mktemp -d "${TMPDIR:-/tmp}/shmbench-slurm.XXXXXX")
trap 'python tests/slurm_cluster.py stop "$slurm_dir/cluster"; rm -rf "$slurm_dir"' EXIT
if python tests/slurm_cluster.py start "$slurm_dir/cluster" >/dev/null; then
    export SHMBENCH_TEST_SLURM="$slurm_dir/cluster"
fi
python -m pytest -q tests/ "$@"
bash tests/sanitize.sh
