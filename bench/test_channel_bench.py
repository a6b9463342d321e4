"""Channel round trips: shmbench's rings against a Pipe, a semaphore pair and C references.

    pytest bench/test_channel_bench.py --benchmark-enable [--benchmark-json out.json]

One group per workload, one row per method, all measured in the same run:

=====================  ==================================================================
workload               one round (timed per call, from the Python call to its return)
=====================  ==================================================================
roundtrip-16B          16 bytes to an echo peer and back
roundtrip-28KB         an 84x84x4 frame (28,224 bytes) there and back
roundtrip-1MiB         1 MiB there and back (each way ONE copy: into the ring; the reader
                       gets a zero-copy view, and the echo sends that view on)
oneway-1MiB            1 MiB there (one copy), a 24-byte acknowledgement back
=====================  ==================================================================

methods: ``shmbench-spin`` (both sides spin, ``configure_wait(spin_ns=10 ms,
adaptive=False)``), ``shmbench-block`` (``spin_ns=0``: straight to FUTEX_WAIT),
``shmbench-adaptive`` (the default policy), ``shmbench-posix_ipc`` (the named-semaphore
backend, shmbench/semaphore.py), and the references: ``c-futex`` (the textbook C futex
ping-pong, bench/pingpong.c, flagged native: the floor for block mode), ``c-spin`` (the
same with busy-polling), ``pipe`` (multiprocessing's duplex Pipe with send_bytes /
recv_bytes) and ``posix_ipc-sem-pair`` (two posix_ipc named semaphores and a posix_ipc
shared-memory block). Every peer is a separate process: Python for the Python methods,
the fork()ed C child for the C ones. The C rows are driven through ctypes, one round trip
per call like the others; ``extra_info["c_loop_median_us"]`` gives the same round trip
timed inside C (no ctypes call).

Each benchmark checks that replies are right (several distinct payloads, byte for byte)
before it times anything, and warms up so the adaptive wait settles. None asserts a speed.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import secrets
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from c_reference import FRAME_BYTES, FUTEX, HYBRID, SPIN, FrameFloor
from peers import label

BENCH = Path(__file__).resolve().parent

WORKLOADS = {
    "roundtrip-16B": (16, "echo"),
    "roundtrip-28KB": (84 * 84 * 4, "echo"),
    "roundtrip-1MiB": (1 << 20, "echo"),
    "oneway-1MiB": (1 << 20, "ack"),
}
METHODS = [
    "shmbench-spin",
    "shmbench-block",
    "shmbench-adaptive",
    "shmbench-posix_ipc",
    "c-futex",
    "c-spin",
    "pipe",
    "posix_ipc-sem-pair",
]
#: quick subset (SHMBENCH_BENCH_QUICK=1, see bench/conftest.py)
QUICK = {("roundtrip-16B", m) for m in ("shmbench-spin", "shmbench-block", "c-futex", "pipe")}

RING = 4 << 20  # both rings: a 1 MiB message fits one record (max_record = 2 MiB)
SPIN_NS = 10_000_000  # "spin": never give up within a round trip
WARMUP_S = 0.3
ACK = struct.Struct("<Q8s8s")  # length, first and last 8 bytes: the peer did read it


def ack_of(data) -> bytes:
    mv = memoryview(data)
    return ACK.pack(len(mv), bytes(mv[:8]), bytes(mv[-8:]))


# ======================================================================================
# Peers (separate Python processes)
# ======================================================================================


def _spawn(func: str, *args, pass_fds=()) -> subprocess.Popen:
    code = (
        f"import sys; sys.path.insert(0, {str(BENCH)!r}); import test_channel_bench as m; m.peer_{func}(*sys.argv[2:])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, "shmbench-bench-peer", *map(str, args)],
        stdin=subprocess.DEVNULL,
        pass_fds=pass_fds,
    )


def peer_channel(path: str, method: str, mode: str) -> None:
    from shmbench.transport.channel import Channel
    from shmbench.transport.semaphore import SemaphoreChannel

    ch = (SemaphoreChannel if method == "shmbench-posix_ipc" else Channel).attach(path)
    _configure(ch, method)
    ch.send(b"ready")
    recv, send = ch.recv, ch.send
    while True:
        msg = recv(60)
        if len(msg) == 0:
            break
        send(msg if mode == "echo" else ack_of(msg), 60)
    ch.close()


def peer_pipe(fd: str, mode: str) -> None:
    from multiprocessing.connection import Connection

    conn = Connection(int(fd))
    conn.send_bytes(b"ready")
    while True:
        msg = conn.recv_bytes()
        if not msg:
            break
        conn.send_bytes(msg if mode == "echo" else ack_of(msg))
    conn.close()


def peer_sem(name: str, size: str, mode: str) -> None:
    import mmap

    import posix_ipc

    req, rep = posix_ipc.Semaphore(name + "-req"), posix_ipc.Semaphore(name + "-rep")
    shm = posix_ipc.SharedMemory(name)
    buf = mmap.mmap(shm.fd, shm.size)
    shm.close_fd()
    view = memoryview(buf)
    size = int(size)
    lens = struct.Struct("<Q")
    inbox, outbox = view[8 : 8 + size], view[16 + size : 16 + 2 * size]
    rep.release()  # ready
    while True:
        req.acquire(60)
        (n,) = lens.unpack_from(view, 0)
        if n == 0:
            break
        if mode == "echo":
            outbox[:n] = inbox[:n]
            lens.pack_into(view, 8 + size, n)
        else:
            a = ack_of(inbox[:n])
            outbox[: len(a)] = a
            lens.pack_into(view, 8 + size, len(a))
        rep.release()
    del inbox, outbox, view
    buf.close()


def _configure(ch, method: str) -> None:
    if method == "shmbench-spin":
        ch.configure_wait(spin_ns=SPIN_NS, adaptive=False)
    elif method in ("shmbench-block", "shmbench-posix_ipc"):
        ch.configure_wait(spin_ns=0, adaptive=False)


# ======================================================================================
# Host-side drivers: each gives roundtrip(payload) -> reply (bytes-like) and close()
# ======================================================================================


class ChannelDriver:
    def __init__(self, method: str, mode: str) -> None:
        from shmbench.transport.semaphore import SemaphoreChannel
        from shmbench.transport.session import Session

        self.session = Session()
        path = self.session.channel_path("bench")
        cls = SemaphoreChannel if method == "shmbench-posix_ipc" else None
        if cls is not None:
            self.ch = cls.create(path, request_capacity=RING, reply_capacity=RING)
        else:
            self.ch = self.session.create_channel("bench", request_capacity=RING, reply_capacity=RING)
        self.peer = _spawn("channel", path, method, mode)
        self.ch.set_peer(death_fds=[os.pidfd_open(self.peer.pid)])
        _configure(self.ch, method)
        assert bytes(self.ch.recv(timeout=30)) == b"ready"
        self.roundtrip = self._call

    def _call(self, payload):
        return self.ch.call(payload, 10)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ch.send(b"", timeout=5)
            self.peer.wait(10)
        if self.peer.poll() is None:
            self.peer.kill()
            self.peer.wait(10)
        self.ch.close()
        self.session.close()


class PipeDriver:
    def __init__(self, method: str, mode: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe(duplex=True)
        self.peer = _spawn("pipe", child.fileno(), mode, pass_fds=(child.fileno(),))
        child.close()
        assert self.conn.poll(30) and self.conn.recv_bytes() == b"ready"

    def roundtrip(self, payload):
        self.conn.send_bytes(payload)
        return self.conn.recv_bytes()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send_bytes(b"")
            self.peer.wait(10)
        if self.peer.poll() is None:
            self.peer.kill()
            self.peer.wait(10)
        self.conn.close()


class SemPairDriver:
    def __init__(self, method: str, mode: str, size: int) -> None:
        import mmap

        import posix_ipc

        self.name = f"/shmbench-bench-{os.getpid()}-{secrets.token_hex(4)}"
        self.req = posix_ipc.Semaphore(self.name + "-req", posix_ipc.O_CREX, mode=0o600)
        self.rep = posix_ipc.Semaphore(self.name + "-rep", posix_ipc.O_CREX, mode=0o600)
        self.shm = posix_ipc.SharedMemory(self.name, posix_ipc.O_CREX, mode=0o600, size=16 + 2 * size)
        self.buf = mmap.mmap(self.shm.fd, self.shm.size)
        self.shm.close_fd()
        self.view = memoryview(self.buf)
        self.size = size
        self.inbox = self.view[8 : 8 + size]
        self.outbox = self.view[16 + size : 16 + 2 * size]
        self.peer = _spawn("sem", self.name, size, mode)
        self.rep.acquire(30)
        self._len = struct.Struct("<Q")

    def roundtrip(self, payload):
        n = len(payload)
        self.inbox[:n] = payload
        self._len.pack_into(self.view, 0, n)
        self.req.release()
        self.rep.acquire(10)
        (m,) = self._len.unpack_from(self.view, 8 + self.size)
        return self.outbox[:m]

    def close(self) -> None:
        import posix_ipc

        with contextlib.suppress(Exception):
            self._len.pack_into(self.view, 0, 0)
            self.req.release()
            self.peer.wait(10)
        if self.peer.poll() is None:
            self.peer.kill()
            self.peer.wait(10)
        del self.inbox, self.outbox
        self.view.release()
        self.buf.close()
        for unlink in (lambda: self.shm.unlink(), lambda: self.req.unlink(), lambda: self.rep.unlink()):
            with contextlib.suppress(posix_ipc.Error):
                unlink()
        self.req.close()
        self.rep.close()


class CDriver:
    def __init__(self, lib, method: str, size: int) -> None:
        self.lib = lib
        rc = lib.pp_start(SPIN if method == "c-spin" else FUTEX, max(size, 64))
        if rc != 0:
            raise OSError(-rc, os.strerror(-rc))
        self._rt = lib.pp_roundtrip
        self._at = ctypes.string_at

    def roundtrip(self, payload):
        return self._at(self._rt(payload, len(payload)), len(payload))

    def timed_call(self, payload):
        # what the benchmark times: the ctypes call only (the reply stays in the mapping)
        return self._rt(payload, len(payload))

    def c_loop(self, payload, n: int) -> list[int]:
        out = (ctypes.c_int64 * n)()
        self.lib.pp_loop(payload, len(payload), n, out)
        return list(out)

    def close(self) -> None:
        status = self.lib.pp_stop()
        assert status == 0, f"C echo child ended with status {status}"


def _payloads(size: int, n: int = 4) -> list[bytes]:
    return [os.urandom(size) for _ in range(n)]


def _check(driver, payloads, mode: str) -> None:
    for p in payloads * 2:
        reply = bytes(driver.roundtrip(p))
        expected = p if mode == "echo" else ack_of(p)
        assert reply == expected, f"wrong reply ({len(reply)} bytes, expected {len(expected)})"


def _cases():
    for workload in WORKLOADS:
        for method in METHODS:
            marks = [pytest.mark.quick] if (workload, method) in QUICK else []
            yield pytest.param(workload, method, id=f"{workload}-{method}", marks=marks)


@pytest.mark.parametrize("workload,method", list(_cases()))
def test_channel_roundtrip(benchmark, pingpong_lib, workload, method):
    size, mode = WORKLOADS[workload]
    if method.startswith("c-") and mode == "ack":
        pytest.skip("the C reference only echoes")
    payloads = _payloads(size)
    if method.startswith("shmbench"):
        driver = ChannelDriver(method, mode)
    elif method == "pipe":
        driver = PipeDriver(method, mode)
    elif method == "posix_ipc-sem-pair":
        driver = SemPairDriver(method, mode, size)
    else:
        driver = CDriver(pingpong_lib, method, size)
    try:
        _check(driver, payloads, mode)  # correct before timed
        payload = payloads[0]
        call = driver.timed_call if isinstance(driver, CDriver) else driver.roundtrip
        end = time.perf_counter() + WARMUP_S
        while time.perf_counter() < end:
            call(payload)
        extra = {}
        if isinstance(driver, CDriver):
            samples = driver.c_loop(payload, 20000 if size < 1 << 20 else 2000)
            extra["c_loop_median_us"] = statistics.median(samples) / 1000
        benchmark.group = workload
        benchmark.extra_info.update(
            {
                "workload": workload,
                "method": method,
                "payload_bytes": size,
                "env_steps_per_round": 1,
                "native": method == "c-futex",
                "peer": method in ("c-spin", "pipe", "posix_ipc-sem-pair"),
                **extra,
            }
        )
        benchmark(call, payload)
        _check(driver, payloads, mode)  # and still correct after
        if method.startswith("shmbench") and hasattr(driver, "ch"):
            benchmark.extra_info["wait_stats"] = driver.ch.stats()
    finally:
        driver.close()


@pytest.mark.parametrize("method", ["c-floor-spin", "c-floor-futex"])
def test_frame_step_floor(benchmark, pingpong_lib, method):
    """The floor of test_env_bench's obs-1MiB-f32 step, in its group (c_reference.FrameFloor:
    the two memcpys, the second reading lines the other core just wrote, and the round trip,
    with no Python, no protocol and no allocation), handing over by spinning (up to 2 ms,
    then sleeping) or by futex. shmbench's copy=True row against this one is what its
    machinery costs beyond the transfer. test_paired_bench has the same comparison with
    both sides alternating, which the VM's slow spells cannot tilt."""
    floor = FrameFloor(pingpong_lib, HYBRID if method == "c-floor-spin" else FUTEX)
    try:
        end = time.perf_counter() + WARMUP_S
        while time.perf_counter() < end:
            floor.step()
        label(
            benchmark,
            workload="obs-1MiB-f32",
            method=method,
            payload_bytes=FRAME_BYTES,
            peer=True,
        )
        benchmark(floor.step)
        floor.check()
    finally:
        floor.close()
