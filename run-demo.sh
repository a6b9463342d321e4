#!/usr/bin/env bash
# The main job (README): install, then step CartPole in the best container runtime this
# machine has (bwrap, Apptainer, or a plain process where neither exists) from the host.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/system-deps.sh || true
python -m pip install -q -e .
exec python -m shmbench demo "$@"
