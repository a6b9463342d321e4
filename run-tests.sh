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
python -m pytest -q tests/ "$@"
bash tests/sanitize.sh
