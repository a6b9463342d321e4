"""Peer processes and helpers of the channel tests (test_channel*.py, test_session.py,
test_semaphore.py, test_fuzz.py).

Peers are separate Python processes (``subprocess``, started with ``-c`` and importing this
module for their ``peer_*`` functions); every wait has a timeout, and a peer never outlives
the test that started it (:func:`reaped`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from shmbench.errors import (
    ChannelClosed,
    ChannelTimeout,
    PeerDied,
    ShmbenchError,
)
from shmbench.transport.channel import Channel
from shmbench.transport.session import Session, channel_base, reap_session

TESTS = Path(__file__).resolve().parent


# Byte offsets in the channel header (shmbench/_ring/ring.h; checked by test_header_offsets)
OFF_MAGIC, OFF_VERSION, OFF_HEADER_SIZE, OFF_FILE_SIZE = 0, 8, 12, 16


OFF_RING_OFFSET, OFF_RING_CAPACITY, OFF_STATE = 24, 40, 64


RING_CTRL, RING_CTRL_SIZE = 128, 256


CTRL_HEAD, CTRL_TAIL, CTRL_DATA_SEQ, CTRL_DATA_SLEEPERS = 0, 64, 128, 132


CTRL_SPACE_SEQ, CTRL_SPACE_SLEEPERS = 192, 196


REQUEST, REPLY = 0, 1


def base_entries() -> set[str]:
    try:
        return set(os.listdir(channel_base()))
    except FileNotFoundError:
        return set()


def ctrl_offset(ring: int, field: int) -> int:
    return RING_CTRL + ring * RING_CTRL_SIZE + field


PEER_TAG = "shmbench-test-peer"  # in every peer's command line: the leak check sees them


def spawn(func: str, *args, stdin=subprocess.DEVNULL, env=None) -> subprocess.Popen:
    """Start ``peer_<func>(*args)`` of this module in a fresh interpreter."""
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import channel_peers as m; m.peer_{func}(*sys.argv[2:])"
    return subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", code, PEER_TAG, *map(str, args)],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        env=env,
    )


def read_line(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """One line of the peer's stdout, or fail after ``timeout`` seconds."""
    out = b""
    deadline = time.monotonic() + timeout
    while not out.endswith(b"\n"):
        left = deadline - time.monotonic()
        r, _, _ = select.select([proc.stdout], [], [], max(left, 0))
        if not r:
            raise AssertionError(f"peer said nothing for {timeout} s (so far {out!r}); stderr: {_stderr(proc)}")
        b = proc.stdout.read(1)
        if not b:
            raise AssertionError(f"peer exited ({proc.wait(5)}) before a full line {out!r}; stderr: {_stderr(proc)}")
        out += b
    return out.decode().strip()


def _stderr(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        return "(still running)"
    if proc.stderr is None:
        return "(not captured)"
    return proc.stderr.read().decode(errors="replace")[-3000:]


def finish(proc: subprocess.Popen, timeout: float = 30.0) -> tuple[int, str, str]:
    """Wait for a peer; kill it if it overstays. Returns (status, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"peer did not finish within {timeout} s; stderr: {err.decode()[-3000:]}") from None
    return proc.returncode, out.decode(), err.decode()


@contextlib.contextmanager
def reaped(proc: subprocess.Popen):
    """Whatever happens, no peer outlives the test."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)


def say(*words) -> None:
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()


HDR = struct.Struct("<QI")  # sequence number, length: in every message of >= 12 bytes


END = b"END-OF-STREAM"


POOL_LEN = 10 << 20


STREAM_SEED = 20240611


STREAM_REQUEST_CAP = 1 << 16  # small rings: many wrap-arounds and fragments


STREAM_REPLY_CAP = 1 << 18


STREAM_TIMEOUT = 60.0


def stream_pool(seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(POOL_LEN)


def stream_plan(seed: int, direction: int, n: int, cap: int) -> tuple[list[int], list[int]]:
    """Sizes and pool offsets of the n messages one side sends into a ring of ``cap`` bytes.

    Mostly small, some large, a few crossing the fragmentation threshold (max_record =
    cap/2 - 8) or spanning several rings, and every edge size around the thresholds.
    """
    rng = np.random.default_rng([seed, direction])
    max_record = cap // 2 - 8

    def loguniform(lo, hi):
        return np.exp(rng.uniform(np.log(lo), np.log(hi), n)).astype(np.int64)

    u = rng.random(n)
    sizes = rng.integers(0, 64, n)  # 60 %
    pick = u >= 0.60
    sizes[pick] = rng.integers(64, 2048, n)[pick]  # 30 %
    pick = u >= 0.90
    sizes[pick] = loguniform(2048, 32 << 10)[pick]  # 9 %
    pick = u >= 0.99
    sizes[pick] = loguniform(16 << 10, 512 << 10)[pick]  # 0.9 %: both rings'
    pick = u >= 0.9999  #   thresholds
    sizes[pick] = loguniform(512 << 10, 4 << 20)[pick]  # 0.01 %: MiBs
    edges = np.array(
        [
            0,
            1,
            7,
            8,
            9,
            11,
            12,
            13,
            max_record - 1,
            max_record,
            max_record + 1,
            cap // 4 - 16,
            cap // 4 - 8,
            cap // 4,
            cap // 2,
            cap - 8,
            cap,
            cap + 1,
            3 * cap + 5,
            4 << 20,
        ]
    )
    pick = (u >= 0.9990) & (u < 0.9995)
    sizes[pick] = rng.choice(edges, n)[pick]  # 0.05 %
    sizes[: len(edges)] = edges  # and each edge at least once, early
    offsets = (rng.random(n) * (POOL_LEN - sizes)).astype(np.int64)
    return sizes.tolist(), offsets.tolist()


def stream_send(ch, sizes, offsets, pool: bytes, timeout: float) -> None:
    pool_mv = memoryview(pool)
    max_record = ch.max_record
    pack = HDR.pack
    send = ch.send
    for i in range(len(sizes)):
        size = sizes[i]
        off = offsets[i]
        if size < HDR.size:
            send(pool_mv[off : off + size], timeout)
        elif size <= max_record and i % 4 == 0:
            # reserve/commit: written in place, published as one record
            mv = ch.reserve(size, timeout)
            mv[: HDR.size] = pack(i, size)
            mv[HDR.size :] = pool_mv[off + HDR.size : off + size]
            mv.release()
            ch.commit(size)
        else:
            send(pack(i, size) + pool[off + HDR.size : off + size], timeout)
    send(END, timeout)


def stream_recv(ch, sizes, offsets, pool: bytes, timeout: float) -> str | None:
    """Receives and checks every message; a description of the first problem, or None."""
    recv = ch.recv
    unpack = HDR.unpack_from
    startswith = pool.startswith
    for i in range(len(sizes)):
        v = recv(timeout)
        size = sizes[i]
        off = offsets[i]
        n = len(v)
        if n != size:
            return f"message {i}: {n} bytes, expected {size}"
        if size < HDR.size:
            if not startswith(v, off):
                return f"message {i} ({size} bytes): wrong content"
            continue
        seq, length = unpack(v)
        if seq != i or length != size:
            return f"message {i}: header says #{seq} of {length} bytes (lost/duplicated/reordered)"
        if not startswith(v[HDR.size :], off + HDR.size):
            return f"message {i} ({size} bytes): corrupted payload"
    last = bytes(recv(timeout))
    if last != END:
        return f"after {len(sizes)} messages: {len(last)} more bytes instead of the end marker"
    return None


def stream_run(ch, send_plan, recv_plan, pool) -> dict:
    """Send one stream from a thread while this thread receives the other."""
    errors: list[BaseException] = []

    def sender():
        try:
            stream_send(ch, *send_plan, pool, STREAM_TIMEOUT)
        except BaseException as exc:  # reported below
            errors.append(exc)

    t0 = time.perf_counter()
    th = threading.Thread(target=sender, daemon=True)
    th.start()
    try:
        problem = stream_recv(ch, *recv_plan, pool, STREAM_TIMEOUT)
    except ShmbenchError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    th.join(STREAM_TIMEOUT)
    if th.is_alive():
        problem = problem or "sender thread still blocked"
    if errors:
        problem = problem or f"sender: {type(errors[0]).__name__}: {errors[0]}"
    return {"problem": problem, "seconds": time.perf_counter() - t0, "received": len(recv_plan[0]), "stats": ch.stats()}


def peer_stream(path: str, n: str) -> None:
    n = int(n)
    ch = Channel.attach(path)
    pool = stream_pool(STREAM_SEED)
    send_plan = stream_plan(STREAM_SEED, REPLY, n, STREAM_REPLY_CAP)
    recv_plan = stream_plan(STREAM_SEED, REQUEST, n, STREAM_REQUEST_CAP)
    ch.send(b"ready")
    result = stream_run(ch, send_plan, recv_plan, pool)
    say(json.dumps(result))
    # stay until the host has read everything: closing early is legal, but the test wants
    # the host to finish its stream against a live peer
    ch.recv(timeout=STREAM_TIMEOUT)
    ch.close()


N_STREAM = 10**6


def peer_echo(path: str, spin_ns: str = "-1") -> None:
    """Echo every message back until CLOSE."""
    ch = Channel.attach(path)
    if int(spin_ns) >= 0:
        ch.configure_wait(spin_ns=int(spin_ns), adaptive=False)
    ch.send(b"ready")
    while True:
        msg = bytes(ch.recv(timeout=60))
        if msg == b"CLOSE":
            break
        ch.send(msg, timeout=60)
    ch.close()


@contextlib.contextmanager
def host_and_peer(func: str, *args, request_capacity=1 << 16, reply_capacity=1 << 16, watch: str = "pidfd"):
    with Session() as s:
        ch = s.create_channel("w0", request_capacity=request_capacity, reply_capacity=reply_capacity)
        with ch, reaped(spawn(func, ch.path, *args, stdin=subprocess.PIPE)) as peer:
            if watch == "pidfd":
                ch.set_peer(death_fds=[os.pidfd_open(peer.pid)])
            assert bytes(ch.recv(timeout=30)) == b"ready"
            if watch == "lock":
                ch.set_peer(lock_fd=os.open(str(ch.path) + ".lock", os.O_RDONLY | os.O_CLOEXEC))
            yield ch, peer


def peer_send_later(path: str, delay: str) -> None:
    ch = Channel.attach(path)
    ch.send(b"ready")
    time.sleep(float(delay))
    ch.send(b"late")
    ch.recv(timeout=30)
    ch.close()


def peer_sleep(path: str, seconds: str = "60") -> None:
    """Attach, say ready, then never read (the host's ring fills up) until the host closes."""
    ch = Channel.attach(path)
    ch.send(b"ready")
    deadline = time.monotonic() + float(seconds)
    while not ch.peer_closed and time.monotonic() < deadline:
        time.sleep(0.01)
    ch.close()


def peer_wait_close(path: str) -> None:
    ch = Channel.attach(path)
    ch.send(b"ready")
    try:
        ch.recv(timeout=30)
        say("got a message")
    except ChannelClosed:
        say("closed", time.monotonic())  # CLOCK_MONOTONIC: one clock for all processes
    ch.close()


def peer_slow_echo(path: str, delay: str) -> None:
    ch = Channel.attach(path)
    ch.send(b"ready")
    with contextlib.suppress(ShmbenchError):
        while True:
            msg = bytes(ch.recv(timeout=30))
            time.sleep(float(delay))
            ch.send(msg, timeout=30)
    ch.close()


def peer_send_big(path: str, size: str) -> None:
    ch = Channel.attach(path)
    ch.send(b"ready")
    payload = np.random.default_rng(int(size)).bytes(int(size))
    ch.send(payload, timeout=30)
    ch.recv(timeout=30)
    ch.close()


def peer_interruptible(path: str, what: str) -> None:
    # Python leaves SIGINT ignored when its parent ignored it (a shell's background job):
    # this peer must turn Ctrl-C into KeyboardInterrupt whatever it inherited
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ch = Channel.attach(path)
    ch.configure_wait(spin_ns=0)
    count = [0]
    stop = threading.Event()

    def busy():  # a pure-Python loop: it can run only while the wait drops the GIL
        while not stop.is_set():
            count[0] += 1

    th = threading.Thread(target=busy, daemon=True)
    th.start()
    if what == "send":
        with contextlib.suppress(ChannelTimeout):
            while True:
                ch.send(b"s" * 500, timeout=0)
    else:
        ch.send(b"ready")
    say("waiting")
    before = count[0]
    t = time.monotonic()
    try:
        if what == "recv":
            ch.recv(timeout=30)
        else:
            ch.send(b"s" * 500, timeout=30)
        say("returned")
    except KeyboardInterrupt:
        stop.set()
        th.join(5)
        say("interrupted", time.monotonic() - t, count[0] - before)
    ch.close()


def peer_block(path: str, what: str) -> None:
    """Server: say ready, then block in recv, or fill the reply ring and block in send."""
    ch = Channel.attach(path)
    ch.send(b"ready")
    if what == "send":
        with contextlib.suppress(ChannelTimeout):
            while True:
                ch.send(b"r" * 200, timeout=0)
    say("blocking")
    t = time.monotonic()
    try:
        if what == "recv":
            ch.recv(timeout=30)
        else:
            ch.send(b"r" * 200, timeout=30)
        say("returned")
    except PeerDied as exc:
        took = time.monotonic() - t
        ch.close()
        # the survivor cleans up after a dead host: its session goes once its lock is free
        now = time.monotonic()  # CLOCK_MONOTONIC: the test's clock too
        gone = reap_session(Path(path).parent)
        say("died", took, gone, type(exc).__name__, now)
    except ShmbenchError as exc:
        say("error", type(exc).__name__, exc)


def peer_host(what: str) -> None:
    """Host: create a session and channel, wait for a server, then sleep (to be killed)."""
    s = Session()
    small = 1 << 12
    ch = s.create_channel("w0", request_capacity=small, reply_capacity=small)
    say(ch.path)
    assert bytes(ch.recv(timeout=30)) == b"ready"
    say("hosting")
    time.sleep(60)


def peer_sleeper(path: str) -> None:
    ch = Channel.attach(path)
    ch.configure_wait(spin_ns=0, adaptive=False)
    n = 0
    while bytes(ch.recv(timeout=10)) != b"last":
        n += 1
    ch.send(b"drained %d" % n)
    msg = bytes(ch.recv(timeout=10))  # sleeps: nothing is there
    ch.send(json.dumps({"msg": msg.decode(), "stats": ch.stats()}).encode())
    ch.recv(timeout=10)
    ch.close()
