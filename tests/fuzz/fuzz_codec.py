"""Coverage-guided fuzzing of the wire codec's decoder (atheris).

Not part of the test suite: ``bash tests/fuzz/run.sh`` or
``python tests/fuzz/fuzz_codec.py -max_total_time=60``. Any exception but DecodeError,
a decode slower than a second, or a crash is a finding.
"""

from __future__ import annotations

import sys
import time

import atheris

with atheris.instrument_imports(include=["shmbench", "numpy.lib.format"]):
    import numpy as np

    from shmbench.errors import DecodeError
    from shmbench.wire import codec

SEEDS = [
    codec.encode(x)
    for x in (
        None,
        [1, 2.5, "x", b"y", (1,), {"k": None}],
        2**80,
        np.float32(1.5),
        np.arange(6, dtype=">i4").reshape(2, 3),
        np.zeros(2, dtype=[("a", "<f8"), ("b", "S3", (2,))]),
        np.array(["2024-01-01"], dtype="M8[D]"),
        np.str_("ab"),
        {"obs": np.ones((4, 4), np.float32)},
    )
]


def one_input(data: bytes) -> None:
    if data[:1] == b"\xff" and len(data) > 1:  # mutate a valid message instead
        seed = bytearray(SEEDS[data[1] % len(SEEDS)])
        for i, b in enumerate(data[2:]):
            seed[(i * 7919 + b) % len(seed)] ^= b
        data = bytes(seed)
    t = time.perf_counter()
    try:
        codec.decode(data, copy=len(data) % 2 == 0)
    except DecodeError:
        pass
    took = time.perf_counter() - t
    if took > 1.0:
        raise RuntimeError(f"decoding {len(data)} bytes took {took:.2f} s")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
