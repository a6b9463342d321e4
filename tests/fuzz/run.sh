#!/usr/bin/env bash
# Coverage-guided fuzzing with atheris (pip install atheris; apt-get install clang).
#
#   bash tests/fuzz/run.sh [SECONDS_PER_TARGET]     (default 60)
#
# Builds shmbench._ring with clang, libFuzzer coverage (-fsanitize=fuzzer-no-link) and
# ASan/UBSan in a temporary copy of the tree (the checkout's build is left alone), then
# runs tests/fuzz/fuzz_ring.py and tests/fuzz/fuzz_codec.py. Crash inputs are written to
# tests/fuzz/findings/ of the checkout.
set -euo pipefail
seconds=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/shmbench-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar -C "$root" --exclude=.git --exclude='*.so' --exclude=build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.hypothesis --exclude=.benchmarks -cf - . | tar -C "$work" -xf -
cd "$work"
CC=clang LDSHARED="clang -shared" \
    CFLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -g -O1" \
    python setup.py -q build_ext --inplace >/dev/null
atheris_dir=$(python -c "import atheris; print(atheris.path())")
mkdir -p "$root/tests/fuzz/findings"
export LD_PRELOAD="$atheris_dir/asan_with_fuzzer.so"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$work"
status=0
for target in fuzz_ring fuzz_codec; do
    echo "== $target ($seconds s)"
    python "tests/fuzz/$target.py" -max_total_time="$seconds" -rss_limit_mb=4096 \
        -artifact_prefix="$root/tests/fuzz/findings/$target-" 2>&1 | tail -n 25 || status=1
done
exit $status
