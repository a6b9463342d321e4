#!/usr/bin/env bash
# Build shmbench._ring (both builds: _ring and the stable-ABI _ring_abi3) with AddressSanitizer
# + UndefinedBehaviorSanitizer and run the channel and hostile-peer tests against that build.
#
#   bash tests/sanitize.sh                 # the channel tests (test_channel*.py, test_session.py) + test_fuzz.py
#   bash tests/sanitize.sh -k fuzz         # extra arguments go to pytest
#
# The build happens in a temporary copy of the tree, so the checkout keeps its normal
# (optimised, unsanitized) extension whatever happens; the copy is removed on exit.
# Every Python process the tests start (peers, fuzz hosts) inherits the environment below,
# so they run the sanitized extension too.
#
# Why each setting:
#   LD_PRELOAD=libasan.so    CPython itself is not built with ASan; its runtime must be the
#                            first library loaded for its malloc/mmap interceptors to work.
#   detect_leaks=0           CPython keeps interned objects and arenas alive at exit by
#                            design; LeakSanitizer would report them all.
#   PYTHONMALLOC=malloc      route Python object allocations (the bytes a fragmented message
#                            is reassembled into) through malloc, where ASan guards them.
#   abort_on_error, halt_on_error   a finding kills the process (a failed test), never a log
#                            line that scrolls by.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/shmbench-sanitize.XXXXXX")
trap 'rm -rf "$work"' EXIT

tar -C "$root" --exclude=.git --exclude='*.so' --exclude=build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.hypothesis --exclude=.benchmarks --exclude=.pytest_cache \
    -cf - . | tar -C "$work" -xf -

cd "$work"
SHMBENCH_SANITIZE=1 python setup.py -q build_ext --inplace 2>&1 | grep -v -i "warning: .*deprecated" || true
# both builds of _ring.c: the host's (_ring) and the stable-ABI one (_ring_abi3)
for so in "$work"/shmbench/_ring/_ring*.so; do
    # not `nm | grep -q`: grep -q exits at the first match, nm dies of SIGPIPE, pipefail fails it
    if ! nm -D "$so" | grep -c __asan_ >/dev/null; then
        echo "sanitize.sh: $so was not built with AddressSanitizer" >&2
        exit 1
    fi
done

libasan=$(gcc -print-file-name=libasan.so)
export LD_PRELOAD="$libasan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:disable_coredump=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONMALLOC=malloc
export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

python - "$work" <<'EOF'
import sys
import shmbench._ring._ring as ring
assert ring.__file__.startswith(sys.argv[1]), f"imported {ring.__file__}, not the sanitized build"
print("sanitized build:", ring.__file__)
EOF

python -m pytest -q -p no:cacheprovider tests/test_channel.py tests/test_channel_waits.py \
    tests/test_channel_liveness.py tests/test_session.py tests/test_protocol.py tests/test_codec.py tests/test_fuzz.py \
    tests/test_injection.py::test_the_stable_abi_build_speaks_with_the_full_one "$@"
