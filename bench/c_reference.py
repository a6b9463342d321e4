"""The C references of the suites: bench/pingpong.c, compiled with gcc and driven through
ctypes (``pingpong_lib`` in conftest.py builds it once per session)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
#: pingpong.c's wait modes
FUTEX, SPIN, HYBRID = 0, 1, 2
#: the obs-1MiB-f32 workload's observation (bench_envs.FrameEnv: 512 x 512 float32)
FRAME_BYTES = 512 * 512 * 4


def build_pingpong(directory: Path) -> ctypes.CDLL | None:
    """bench/pingpong.c as a shared library in ``directory``; None without a C compiler."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None
    so = Path(directory) / "libpingpong.so"
    subprocess.run(
        [gcc, "-O2", "-std=c11", "-shared", "-fPIC", "-Wall", "-Werror", str(BENCH / "pingpong.c"), "-o", str(so)],
        check=True,
    )
    lib = ctypes.CDLL(str(so))
    lib.pp_start.argtypes = [ctypes.c_int, ctypes.c_size_t]
    lib.pp_roundtrip.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.pp_roundtrip.restype = ctypes.c_void_p
    lib.pp_loop.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_long, ctypes.POINTER(ctypes.c_int64)]
    lib.pp_stop.restype = ctypes.c_int
    lib.pp_frame.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32]
    return lib


class FrameFloor:
    """The floor of a 1 MiB single-env step (pingpong.c's pp_frame): a forked C child copies
    one of its four frames into shared memory, this process copies it out into its own
    buffer. ``step()`` is one such step; the bytes are checked at start and by ``check()``."""

    def __init__(self, lib: ctypes.CDLL, mode: int, size: int = FRAME_BYTES) -> None:
        rc = lib.pp_start(mode, size)
        if rc != 0:
            raise OSError(-rc, os.strerror(-rc))
        self.lib, self.size = lib, size
        self.dst = np.zeros(size, np.uint8)
        self._address = self.dst.ctypes.data
        self._k = 0
        for _ in range(8):
            self.check()

    def step(self) -> None:
        self._k = (self._k + 1) & 0xFFFFFFFF
        self.lib.pp_frame(self._address, self.size, self._k)

    def check(self) -> None:
        self.step()
        want = self._k % 4 + 1  # frame k % 4 holds byte k % 4 + 1
        assert (self.dst == want).all(), f"frame {self._k}: wrong bytes"

    def close(self) -> None:
        status = self.lib.pp_stop()
        assert status == 0, f"C child ended with status {status}"
