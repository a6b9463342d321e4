#!/usr/bin/env bash
# The test command (README, .ci/run): system packages, the package with its test extras,
# the test suite, then the channel tests again against an ASan/UBSan build of the C code.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/system-deps.sh
python -m pip install -q -e ".[test]"
python -m pytest -q tests/ "$@"
bash tests/sanitize.sh
