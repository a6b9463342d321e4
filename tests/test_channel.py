"""shmbench._ring and shmbench.channel between real processes.

Peers are separate Python processes (``subprocess``, started with ``-c`` and importing this
module for their ``peer_*`` functions); kills are real SIGKILLs; files live in the real
channel base directory, which the suite-wide ``no_leaks`` fixture checks after every test.
Every wait here has a timeout.
"""

from __future__ import annotations

import contextlib
import json
import mmap
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
import pytest

from shmbench import _ring
from shmbench.channel import Channel, Session, channel_base, gc, reap_session
from shmbench.errors import (
    ChannelClosed,
    ChannelFull,
    ChannelMismatch,
    ChannelTimeout,
    PeerDied,
    ProtocolError,
    ShmbenchError,
)
from shmbench.protocol import Opcode, Status

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


# ======================================================================================
# Peer processes
# ======================================================================================

PEER_TAG = "shmbench-test-peer"   # in every peer's command line: the leak check sees them


def spawn(func: str, *args, stdin=subprocess.DEVNULL, env=None) -> subprocess.Popen:
    """Start ``peer_<func>(*args)`` of this module in a fresh interpreter."""
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_channel as m; "
            f"m.peer_{func}(*sys.argv[2:])")
    return subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", code, PEER_TAG, *map(str, args)],
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env=env,
    )


def read_line(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """One line of the peer's stdout, or fail after ``timeout`` seconds."""
    out = b""
    deadline = time.monotonic() + timeout
    while not out.endswith(b"\n"):
        left = deadline - time.monotonic()
        r, _, _ = select.select([proc.stdout], [], [], max(left, 0))
        if not r:
            raise AssertionError(f"peer said nothing for {timeout} s (so far {out!r}); "
                                 f"stderr: {_stderr(proc)}")
        b = proc.stdout.read(1)
        if not b:
            raise AssertionError(f"peer exited ({proc.wait(5)}) before a full line {out!r}; "
                                 f"stderr: {_stderr(proc)}")
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
        raise AssertionError(f"peer did not finish within {timeout} s; stderr: {err.decode()[-3000:]}")
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


# ======================================================================================
# The stream: 10^6 messages each way, verified against a pooled random buffer
# ======================================================================================

HDR = struct.Struct("<QI")          # sequence number, length: in every message of >= 12 bytes
END = b"END-OF-STREAM"
POOL_LEN = 10 << 20
STREAM_SEED = 20240611
STREAM_REQUEST_CAP = 1 << 16         # small rings: many wrap-arounds and fragments
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
    sizes = rng.integers(0, 64, n)                                          # 60 %
    pick = u >= 0.60
    sizes[pick] = rng.integers(64, 2048, n)[pick]                           # 30 %
    pick = u >= 0.90
    sizes[pick] = loguniform(2048, 32 << 10)[pick]                          # 9 %
    pick = u >= 0.99
    sizes[pick] = loguniform(16 << 10, 512 << 10)[pick]                     # 0.9 %: both rings'
    pick = u >= 0.9999                                                      #   thresholds
    sizes[pick] = loguniform(512 << 10, 4 << 20)[pick]                      # 0.01 %: MiBs
    edges = np.array([0, 1, 7, 8, 9, 11, 12, 13, max_record - 1, max_record, max_record + 1,
                      cap // 4 - 16, cap // 4 - 8, cap // 4, cap // 2, cap - 8, cap, cap + 1,
                      3 * cap + 5, 4 << 20])
    pick = (u >= 0.9990) & (u < 0.9995)
    sizes[pick] = rng.choice(edges, n)[pick]                                # 0.05 %
    sizes[:len(edges)] = edges          # and each edge at least once, early
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
            send(pool_mv[off:off + size], timeout)
        elif size <= max_record and i % 4 == 0:
            # reserve/commit: written in place, published as one record
            mv = ch.reserve(size, timeout)
            mv[:HDR.size] = pack(i, size)
            mv[HDR.size:] = pool_mv[off + HDR.size:off + size]
            mv.release()
            ch.commit(size)
        else:
            send(pack(i, size) + pool[off + HDR.size:off + size], timeout)
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
        if not startswith(v[HDR.size:], off + HDR.size):
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
    return {"problem": problem, "seconds": time.perf_counter() - t0,
            "received": len(recv_plan[0]), "stats": ch.stats()}


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


N_STREAM = 10 ** 6


@pytest.mark.slow
def test_million_messages_both_directions_concurrently():
    """10^6 messages each way at once: none lost, duplicated, reordered or corrupted."""
    pool = stream_pool(STREAM_SEED)
    send_plan = stream_plan(STREAM_SEED, REQUEST, N_STREAM, STREAM_REQUEST_CAP)
    recv_plan = stream_plan(STREAM_SEED, REPLY, N_STREAM, STREAM_REPLY_CAP)
    total = sum(send_plan[0]) + sum(recv_plan[0])
    n_frag = sum(s > STREAM_REQUEST_CAP // 2 - 8 for s in send_plan[0])
    assert n_frag > 1000 and max(send_plan[0]) >= 4 << 20   # the plan covers what it claims
    with Session() as s:
        ch = s.create_channel("stream", request_capacity=STREAM_REQUEST_CAP,
                              reply_capacity=STREAM_REPLY_CAP)
        with ch, reaped(spawn("stream", ch.path, N_STREAM, stdin=subprocess.PIPE)) as peer:
            ch.set_peer(death_fds=[os.pidfd_open(peer.pid)])
            assert bytes(ch.recv(timeout=30)) == b"ready"
            mine = stream_run(ch, send_plan, recv_plan, pool)
            ch.send(b"bye", timeout=10)
            status, out, err = finish(peer, 60)
            assert status == 0, err
            theirs = json.loads(out.strip().splitlines()[-1])
            assert mine["problem"] is None, mine
            assert theirs["problem"] is None, theirs
            assert not ch.poll()
    print(f"\n{2 * N_STREAM} messages, {total / 2**30:.2f} GiB in {mine['seconds']:.1f} s "
          f"(host stats {mine['stats']}, server stats {theirs['stats']})")


def test_stream_detects_a_lost_message():
    """The stream check itself can fail: a skipped message is reported, not ignored."""
    pool = stream_pool(STREAM_SEED)
    plan = stream_plan(STREAM_SEED, REQUEST, 2000, STREAM_REQUEST_CAP)
    with Session() as s:
        h = s.create_channel("lost", request_capacity=STREAM_REQUEST_CAP)
        sv = Channel.attach(h.path, watch_stdin=False)
        with h, sv:
            bad = ([*plan[0][:500], *plan[0][501:]], [*plan[1][:500], *plan[1][501:]])
            th = threading.Thread(target=stream_send, args=(h, *bad, pool, 10), daemon=True)
            th.start()
            problem = stream_recv(sv, *plan, pool, 10)
            assert problem is not None and "message 500" in problem
            # let the sender finish (it may wait for room)
            with contextlib.suppress(ChannelTimeout):
                while th.is_alive():
                    sv.recv(timeout=0.5)
            th.join(10)


# ======================================================================================
# Small helpers for a host in this process and a server peer
# ======================================================================================

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
def host_and_peer(func: str, *args, request_capacity=1 << 16, reply_capacity=1 << 16,
                  watch: str = "pidfd"):
    with Session() as s:
        ch = s.create_channel("w0", request_capacity=request_capacity, reply_capacity=reply_capacity)
        with ch, reaped(spawn(func, ch.path, *args, stdin=subprocess.PIPE)) as peer:
            if watch == "pidfd":
                ch.set_peer(death_fds=[os.pidfd_open(peer.pid)])
            assert bytes(ch.recv(timeout=30)) == b"ready"
            if watch == "lock":
                ch.set_peer(lock_fd=os.open(str(ch.path) + ".lock", os.O_RDONLY | os.O_CLOEXEC))
            yield ch, peer


def test_header_offsets():
    """The offsets these tests poke at are the header's (magic, geometry, futex words)."""
    with Session() as s:
        h = s.create_channel("hdr", request_capacity=1 << 14, reply_capacity=1 << 15)
        with h, open(h.path, "rb") as f:
            raw = f.read(_ring.HEADER_SIZE)
            assert struct.unpack_from("<Q", raw, OFF_MAGIC)[0] == 0x48434E45424D4853
            assert raw[:8] == b"SHMBENCH"
            assert struct.unpack_from("<II", raw, OFF_VERSION) == (_ring.LAYOUT_VERSION, _ring.HEADER_SIZE)
            assert struct.unpack_from("<Q", raw, OFF_FILE_SIZE)[0] == _ring.layout_size(1 << 14, 1 << 15)
            assert struct.unpack_from("<QQ", raw, OFF_RING_OFFSET) == (4096, 4096 + (1 << 14))
            assert struct.unpack_from("<QQ", raw, OFF_RING_CAPACITY) == (1 << 14, 1 << 15)
            assert struct.unpack_from("<I", raw, OFF_STATE)[0] == 1       # host OPEN
            h.send(b"x" * 13)
            with open(h.path, "rb") as g:
                raw = g.read(_ring.HEADER_SIZE)
            assert struct.unpack_from("<Q", raw, ctrl_offset(REQUEST, CTRL_HEAD))[0] == 8 + 16
            assert struct.unpack_from("<I", raw, ctrl_offset(REQUEST, CTRL_DATA_SEQ))[0] == 1


def test_opcodes_and_statuses_agree_with_protocol():
    assert _ring.OPCODES == {op.name: op.value for op in Opcode}
    assert _ring.STATUSES == {st.name: st.value for st in Status}
    assert len(set(_ring.OPCODES.values())) == len(_ring.OPCODES)


def test_round_trip_through_a_peer_process():
    with host_and_peer("echo") as (ch, peer):
        for size in (0, 1, 100, ch.max_record, ch.max_record + 1, 3 << 20):
            payload = os.urandom(size)
            assert bytes(ch.call(payload, timeout=30)) == payload
        ch.send(b"CLOSE")
        assert finish(peer)[0] == 0


def test_default_capacities_fragment_in_both_directions():
    """A message between the two rings' max_record sizes (the host fragments it, the server
    could have sent it whole) is accepted: each side checks the PEER's threshold."""
    with Session() as s:
        h = s.create_channel("caps")          # 1 MiB requests, 4 MiB replies
        sv = Channel.attach(h.path, watch_stdin=False)
        with h, sv:
            assert h.max_record < sv.max_record
            for size in (h.max_record + 1, (h.max_record + sv.max_record) // 2, sv.max_record + 1):
                payload = os.urandom(size)
                th = threading.Thread(target=h.send, args=(payload, 10), daemon=True)
                th.start()
                assert bytes(sv.recv(timeout=10)) == payload
                th.join(10)
                th = threading.Thread(target=sv.send, args=(payload, 10), daemon=True)
                th.start()
                assert bytes(h.recv(timeout=10)) == payload
                th.join(10)


# ======================================================================================
# Timeouts
# ======================================================================================

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
        say("closed", time.monotonic())       # CLOCK_MONOTONIC: one clock for all processes
    ch.close()


def test_timeout_is_a_timeout_error():
    assert issubclass(ChannelTimeout, TimeoutError)
    assert issubclass(PeerDied, ConnectionError)
    assert issubclass(ChannelMismatch, ValueError)
    assert issubclass(ChannelFull, OSError)


def test_recv_timeouts_none_zero_seconds():
    with host_and_peer("send_later", 0.4) as (ch, peer):
        t = time.monotonic()
        with pytest.raises(ChannelTimeout) as info:
            ch.recv(timeout=0)
        assert time.monotonic() - t < 0.25           # never blocks (a loaded VM may still lag)
        assert isinstance(info.value, TimeoutError)
        t = time.monotonic()
        with pytest.raises(TimeoutError):
            ch.recv(timeout=0.1)
        assert 0.1 <= time.monotonic() - t < 1.0
        t = time.monotonic()
        assert bytes(ch.recv(timeout=None)) == b"late"      # forever, but it came
        assert time.monotonic() - t >= 0.1
        assert ch.stats()["sleeps"] > 0
        ch.send(b"bye")
        assert finish(peer)[0] == 0


def test_send_timeouts_on_a_full_ring():
    with host_and_peer("sleep", 30) as (ch, peer):
        n = 0
        with pytest.raises(ChannelTimeout):
            while True:
                ch.send(b"x" * 1000, timeout=0)
                n += 1
        assert 50 < n < 66                       # 64 KiB of 1008-byte records
        t = time.monotonic()
        with pytest.raises(ChannelTimeout, match="room in the ring"):
            ch.send(b"x" * 1000, timeout=0.2)
        assert 0.2 <= time.monotonic() - t < 1.5
        with pytest.raises(ChannelTimeout):
            ch.reserve(1000, timeout=0.05)
        ch.close()                               # the peer sees CLOSED and exits
        assert finish(peer)[0] == 0


def test_bad_timeouts_are_rejected():
    with Session() as s, s.create_channel("t") as h:
        for bad in (-1, -0.5, float("nan")):
            with pytest.raises(ValueError):
                h.recv(timeout=bad)
            with pytest.raises(ValueError):
                h.send(b"x", timeout=bad)
        with pytest.raises(TypeError):
            h.recv(timeout="1")
        with pytest.raises(ChannelTimeout):
            h.recv(timeout=1e-9)
        t = time.monotonic()
        with pytest.raises(ChannelTimeout):
            h.recv(timeout=0.05)
        assert time.monotonic() - t < 1.0


def peer_slow_echo(path: str, delay: str) -> None:
    ch = Channel.attach(path)
    ch.send(b"ready")
    with contextlib.suppress(ShmbenchError):
        while True:
            msg = bytes(ch.recv(timeout=30))
            time.sleep(float(delay))
            ch.send(msg, timeout=30)
    ch.close()


def test_call_timeout_bounds_the_whole_round_trip():
    with host_and_peer("slow_echo", 0.5) as (ch, peer):
        t = time.monotonic()
        with pytest.raises(ChannelTimeout):
            ch.call(b"ping", timeout=0.2)
        assert time.monotonic() - t < 0.45
        ch.close()
        finish(peer)


def peer_send_big(path: str, size: str) -> None:
    ch = Channel.attach(path)
    ch.send(b"ready")
    payload = np.random.default_rng(int(size)).bytes(int(size))
    ch.send(payload, timeout=30)
    ch.recv(timeout=30)
    ch.close()


def test_polling_a_fragmented_message_resumes_where_it_stopped():
    """recv(timeout=0) in the middle of a fragmented message keeps what arrived."""
    size = 3 << 20
    expected = np.random.default_rng(size).bytes(size)
    with host_and_peer("send_big", size) as (ch, peer):
        timeouts = 0
        deadline = time.monotonic() + 30
        while True:
            try:
                got = ch.recv(timeout=0)
                break
            except ChannelTimeout:
                timeouts += 1
                assert time.monotonic() < deadline
        assert bytes(got) == expected
        assert timeouts > 0
        ch.send(b"bye")
        assert finish(peer)[0] == 0


def test_send_timeout_mid_fragmented_message_breaks_the_channel():
    with host_and_peer("sleep", 30) as (ch, peer):
        with pytest.raises(ChannelTimeout, match="unusable"):
            ch.send(b"y" * (1 << 20), timeout=0.2)    # 16 ring-fulls; the peer never reads
        with pytest.raises(ProtocolError, match="broken"):
            ch.send(b"z", timeout=0)
        ch.close()
        finish(peer)


# ======================================================================================
# Ctrl-C and the GIL during a wait
# ======================================================================================

def peer_interruptible(path: str, what: str) -> None:
    # Python leaves SIGINT ignored when its parent ignored it (a shell's background job):
    # this peer must turn Ctrl-C into KeyboardInterrupt whatever it inherited
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ch = Channel.attach(path)
    ch.configure_wait(spin_ns=0)
    count = [0]
    stop = threading.Event()

    def busy():          # a pure-Python loop: it can run only while the wait drops the GIL
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


@pytest.mark.parametrize("what", ["recv", "send"])
def test_ctrl_c_interrupts_a_blocked_wait_and_the_gil_is_free(what):
    with Session() as s:
        ch = s.create_channel("w0", request_capacity=1 << 14, reply_capacity=1 << 14)
        with ch, reaped(spawn("interruptible", ch.path, what, stdin=subprocess.PIPE)) as peer:
            if what == "recv":
                assert bytes(ch.recv(timeout=30)) == b"ready"
            assert read_line(peer) == "waiting"
            time.sleep(0.3)                       # well into the futex wait
            t = time.monotonic()
            peer.send_signal(signal.SIGINT)
            words = read_line(peer, 5).split()
            latency = time.monotonic() - t
            assert words[0] == "interrupted", words
            assert latency < 1.0, latency
            assert int(words[2]) > 1000           # the other thread ran while we waited
            assert finish(peer)[0] == 0


def test_another_thread_runs_while_this_one_waits():
    with Session() as s, s.create_channel("gil") as h:
        count = 0

        def waiter():
            with contextlib.suppress(ChannelTimeout):
                h.recv(timeout=0.3)

        th = threading.Thread(target=waiter)
        th.start()
        t = time.monotonic()
        while th.is_alive() and time.monotonic() - t < 5:
            count += 1
        th.join(5)
        assert count > 10000


# ======================================================================================
# kill -9
# ======================================================================================

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
        now = time.monotonic()                     # CLOCK_MONOTONIC: the test's clock too
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


@pytest.mark.parametrize("watch", ["pidfd", "lock"])
@pytest.mark.parametrize("what", ["recv", "send"])
def test_server_killed_while_host_waits(what, watch):
    before = base_entries()
    with host_and_peer("sleep", 60, request_capacity=1 << 12, watch=watch) as (ch, peer):
        session_dir = ch.path.parent
        if what == "send":
            with contextlib.suppress(ChannelTimeout):
                while True:
                    ch.send(b"h" * 200, timeout=0)
        killed = []
        timer = threading.Timer(0.3, lambda: (killed.append(time.monotonic()),
                                               os.kill(peer.pid, signal.SIGKILL)))
        timer.start()
        try:
            with pytest.raises(PeerDied):
                if what == "recv":
                    ch.recv(timeout=20)
                else:
                    ch.send(b"h" * 200, timeout=20)
            took = time.monotonic() - killed[0]
        finally:
            timer.cancel()
        assert took < 1.0, took
        assert not ch.peer_alive()
    # the host (survivor) closed its session: nothing is left behind
    assert not session_dir.exists()
    assert base_entries() <= before


@pytest.mark.parametrize("what", ["recv", "send"])
def test_host_killed_while_server_waits(what):
    before = base_entries()
    with reaped(spawn("host", what)) as host:
        path = Path(read_line(host))
        with reaped(spawn("block", path, what)) as server:
            assert read_line(host) == "hosting"
            assert read_line(server) == "blocking"
            time.sleep(0.3)
            t = time.monotonic()
            host.kill()
            host.wait(10)
            words = read_line(server, 5).split()
            assert words[0] == "died", words
            took = float(words[4]) - t
            assert took < 1.0, (took, words)
            assert words[2] == "True"
            assert finish(server)[0] == 0
    assert not path.parent.exists()
    assert base_entries() <= before


def test_stale_session_of_a_killed_host_is_reclaimed_by_gc():
    with reaped(spawn("host", "recv")) as host:
        path = Path(read_line(host))
        session_dir = path.parent
        assert session_dir.exists()
        assert reap_session(session_dir) is False     # its host lives: hands off
        assert session_dir.exists()
        host.kill()
        host.wait(10)
    assert session_dir.exists()                        # nobody cleaned up yet
    removed = gc()                                      # its host.lock is free now
    assert session_dir in removed
    assert not session_dir.exists()


def test_peer_alive_watches_pipes_pidfds_and_locks():
    with Session() as s, s.create_channel("alive") as h:
        assert h.peer_alive()                           # nothing to watch: assumed alive
        r, w = os.pipe()
        h.set_peer(death_fds=[r])
        assert h.peer_alive()
        os.close(w)                                     # EOF: the host of a server died
        assert not h.peer_alive()
        lock = os.open(str(h.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        # a separate open file description: flock locks belong to those, not to fds
        h.set_peer(death_fds=[], lock_fd=os.open(str(h.path) + ".lock", os.O_RDONLY))
        assert not h.peer_alive()                       # nobody holds the lock
        proc = subprocess.Popen([sys.executable, "-c", "import fcntl,sys,time; "
                                 f"fcntl.flock({lock}, fcntl.LOCK_EX); print('locked', flush=True); "
                                 f"time.sleep(30) # {PEER_TAG}"],
                                pass_fds=(lock,), stdout=subprocess.PIPE, bufsize=0)
        os.close(lock)
        with reaped(proc):
            assert read_line(proc) == "locked"
            assert h.peer_alive()
            h.set_peer(death_fds=[os.pidfd_open(proc.pid)])
            assert h.peer_alive()
            proc.kill()
            proc.wait(10)
            assert not h.peer_alive()
        h.unlink()


# ======================================================================================
# Full tmpfs: ChannelFull, never SIGBUS
# ======================================================================================

FULL_TMPFS_SCRIPT = r"""
import os, subprocess, sys
from pathlib import Path
from shmbench.channel import Session, Slab
from shmbench.errors import ChannelFull
mnt = Path(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
s = Session(base=mnt / "base")
try:
    s.create_channel("big", request_capacity=1 << 20, reply_capacity=1 << 20)
except ChannelFull as exc:
    print("full1", exc.errno, str(exc).replace("\n", " "))
print("left1", sorted(os.listdir(s.path)))
chans = []
try:
    for i in range(100):
        chans.append(s.create_channel(f"c{i}", request_capacity=1 << 14, reply_capacity=1 << 14))
except ChannelFull:
    print("full2", len(chans))
for c in chans:                  # touch every page of the channels that did get created
    c.send(b"x" * (c.max_record), timeout=0)
try:
    Slab.create(s.path / "slab", 1 << 20)
except ChannelFull:
    print("full3")
print("left2", sorted(p for p in os.listdir(s.path) if not p.startswith("c")))
for c in chans:
    c.close()
s.close()
print("done")
"""


def test_full_tmpfs_gives_channel_full_not_sigbus(tmp_path):
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.decode().strip()}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                           FULL_TMPFS_SCRIPT, str(mnt)], capture_output=True, timeout=60)
    out = proc.stdout.decode()
    assert proc.returncode == 0, (proc.returncode, out, proc.stderr.decode())   # -7 = SIGBUS
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines() if " " in line)
    assert lines["full1"].startswith("28 ") and "cannot reserve" in lines["full1"]
    assert lines["left1"] == "['host.lock']"          # the failed file was removed
    assert 2 <= int(lines["full2"]) < 8               # some fit, then the tmpfs was full
    assert "full3" in out and "done" in out
    assert lines["left2"] == "['host.lock']"


# ======================================================================================
# Header, version and magic mismatches
# ======================================================================================

def _attach_error(path: Path) -> str:
    with pytest.raises(ChannelMismatch) as info:
        Channel.attach(path, watch_stdin=False)
    assert not Path(str(path) + ".lock").exists()     # a refused attach takes no lock
    return str(info.value)


@pytest.mark.parametrize("field,value,fmt,match", [
    (OFF_MAGIC, 0x1234, "<Q", "not a shmbench channel file"),
    (OFF_VERSION, 99, "<I", "layout version 99 .* use the same shmbench release"),
    (OFF_HEADER_SIZE, 8192, "<I", "header 8192 bytes"),
    (OFF_RING_CAPACITY, 5000, "<Q", "impossible ring geometry"),
    (OFF_RING_CAPACITY + 8, 1 << 40, "<Q", "impossible ring geometry"),
    (OFF_RING_OFFSET, 4100, "<Q", "impossible ring geometry"),
    (OFF_RING_OFFSET + 8, 4096, "<Q", "overlapping rings"),
    (OFF_FILE_SIZE, 1 << 30, "<Q", "claims"),
    (ctrl_offset(REQUEST, CTRL_TAIL), 64, "<Q", "already used"),
])
def test_attach_refuses_a_mismatched_header(field, value, fmt, match):
    with Session() as s:
        h = s.create_channel("m", request_capacity=1 << 14, reply_capacity=1 << 14)
        with h:
            fd = os.open(h.path, os.O_RDWR)
            try:
                os.pwrite(fd, struct.pack(fmt, value), field)
            finally:
                os.close(fd)
            import re
            assert re.search(match, _attach_error(h.path))


def test_attach_refuses_short_files_and_a_second_server(tmp_path):
    with Session() as s:
        for name, content in (("empty", b""), ("short", b"SHMBENCH"), ("zeros", bytes(8192))):
            p = s.path / f"{name}.chan"
            p.write_bytes(content)
            assert "too short" in _attach_error(p) or "bad magic" in _attach_error(p)
        h = s.create_channel("two")
        with h:
            first = Channel.attach(h.path, watch_stdin=False)
            with first, pytest.raises(ChannelMismatch, match="another server"):
                Channel.attach(h.path, watch_stdin=False)
        # a channel file shrunk under its header is refused, not mapped past its end
        h2 = s.create_channel("shrunk", request_capacity=1 << 14, reply_capacity=1 << 14)
        with h2:
            os.truncate(h2.path, 4096 + (1 << 14))
            assert "claims" in _attach_error(h2.path)


# ======================================================================================
# Zero-copy views, reserve/commit, close
# ======================================================================================

def test_zero_copy_views_keep_the_mapping_alive_after_close():
    with Session() as s:
        h = s.create_channel("zc", request_capacity=1 << 14, reply_capacity=1 << 14)
        sv = Channel.attach(h.path, watch_stdin=False)
        h.send(b"hello, zero copy")
        v = sv.recv(timeout=1)
        assert v.readonly and bytes(v) == b"hello, zero copy"
        with pytest.raises(TypeError):
            v[0] = 0
        # it IS the ring: a write into the file shows through the view
        with open(h.path, "r+b") as f, mmap.mmap(f.fileno(), 0) as raw:
            raw[4096 + 8] = ord("J")
        assert bytes(v) == b"Jello, zero copy"
        w = h.reserve(32, timeout=1)
        assert not w.readonly and len(w) == 32
        sv.close()
        h.close()
        h.unlink()
        del h, sv
        import gc as _gc

        _gc.collect()
        assert bytes(v) == b"Jello, zero copy"          # still mapped
        w[:4] = b"ok!!"                                   # still writable
        assert bytes(w[:4]) == b"ok!!"
        v.release()
        w.release()


def test_closed_channel_raises_clear_errors():
    with Session() as s:
        h = s.create_channel("c")
        sv = Channel.attach(h.path, watch_stdin=False)
        h.close()
        h.close()                                         # idempotent
        assert h.closed and not sv.closed and sv.peer_closed
        for call in (lambda: h.send(b"x"), lambda: h.recv(timeout=0), lambda: h.poll(),
                     lambda: h.reserve(1), lambda: h.call(b"x")):
            with pytest.raises(ChannelClosed, match="closed"):
                call()
        with pytest.raises(ChannelClosed, match="peer closed"):
            sv.recv(timeout=5)
        sv.close()
        h.unlink()


def test_close_wakes_a_peer_blocked_in_recv_at_once():
    with host_and_peer("wait_close") as (ch, peer):
        time.sleep(0.2)
        t = time.monotonic()
        ch.close()
        words = read_line(peer, 10).split()
        assert words[0] == "closed" and float(words[1]) - t < 0.5, (words, t)
        assert finish(peer, 10)[0] == 0


def test_reserve_commit():
    with Session() as s:
        h = s.create_channel("rc", request_capacity=1 << 14, reply_capacity=1 << 14)
        sv = Channel.attach(h.path, watch_stdin=False)
        with h, sv:
            w = h.reserve(100)
            w[:5] = b"abcde"
            with pytest.raises(RuntimeError, match="reservation"):
                h.send(b"x")
            with pytest.raises(RuntimeError, match="already open"):
                h.reserve(1)
            with pytest.raises(ValueError):
                h.commit(101)
            h.commit(5)
            assert bytes(sv.recv(timeout=1)) == b"abcde"
            with pytest.raises(RuntimeError, match="without reserve"):
                h.commit(0)
            h.reserve(0)
            h.commit(0)
            assert bytes(sv.recv(timeout=1)) == b""
            with pytest.raises(ValueError, match="max_record"):
                h.reserve(h.max_record + 1)
            # reservations wrap around the ring like sends do
            for i in range(200):
                w = h.reserve(h.max_record // 3)
                w[:] = bytes([i % 256]) * len(w)
                h.commit(len(w) - i % 7)
                got = sv.recv(timeout=1)
                assert bytes(got) == bytes([i % 256]) * (len(w) - i % 7)
            assert not sv.poll()


def test_poll_and_release():
    with Session() as s:
        h = s.create_channel("pr", request_capacity=1 << 12, reply_capacity=1 << 12)
        sv = Channel.attach(h.path, watch_stdin=False)
        with h, sv:
            assert not sv.poll()
            h.send(b"a" * 1000)
            assert sv.poll()
            v = sv.recv(timeout=0)
            assert not sv.poll()                   # the message handed out does not count
            # the ring (4 KiB) has room for 3 such records while one is held ...
            h.send(b"b" * 1000, timeout=0)
            h.send(b"c" * 1000, timeout=0)
            h.send(b"d" * 1000, timeout=0)
            with pytest.raises(ChannelTimeout):
                h.send(b"e" * 1000, timeout=0)
            sv.release()                           # ... and a 4th once it is released
            h.send(b"e" * 1000, timeout=0)
            del v
            assert [bytes(sv.recv(timeout=0))[:1] for _ in range(4)] == [b"b", b"c", b"d", b"e"]


# ======================================================================================
# Wake-ups: the futex syscall only when someone sleeps
# ======================================================================================

def peer_sleeper(path: str) -> None:
    ch = Channel.attach(path)
    ch.configure_wait(spin_ns=0, adaptive=False)
    n = 0
    while bytes(ch.recv(timeout=10)) != b"last":
        n += 1
    ch.send(b"drained %d" % n)
    msg = bytes(ch.recv(timeout=10))                 # sleeps: nothing is there
    ch.send(json.dumps({"msg": msg.decode(), "stats": ch.stats()}).encode())
    ch.recv(timeout=10)
    ch.close()


def test_waker_skips_the_syscall_when_nobody_sleeps():
    with Session() as s:
        ch = s.create_channel("wk", request_capacity=1 << 16, reply_capacity=1 << 16)
        with ch:
            for i in range(100):
                ch.send(b"m%d" % i)
            ch.send(b"last")
            st = ch.stats()
            assert st["wakes"] == 0 and st["wakes_skipped"] == 101    # nobody listened yet
            with reaped(spawn("sleeper", ch.path, stdin=subprocess.PIPE)) as peer:
                ch.set_peer(death_fds=[os.pidfd_open(peer.pid)])
                assert bytes(ch.recv(timeout=30)) == b"drained 100"
                # wait until the server sleeps on the request ring's futex word
                with open(ch.path, "rb") as f, mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ) as raw:
                    deadline = time.monotonic() + 10
                    while struct.unpack_from("<I", raw, ctrl_offset(REQUEST, CTRL_DATA_SLEEPERS))[0] != 1:
                        assert time.monotonic() < deadline, "the server never went to sleep"
                        time.sleep(0.001)
                before = ch.stats()
                ch.send(b"wake up")
                after = ch.stats()
                assert after["wakes"] == before["wakes"] + 1              # it slept: syscall
                reply = json.loads(bytes(ch.recv(timeout=10)))
                assert reply["msg"] == "wake up" and reply["stats"]["sleeps"] >= 1
                assert reply["stats"]["spin_ok"] == 0
                ch.send(b"bye")
                assert finish(peer)[0] == 0


def test_configure_wait_and_stats():
    with Session() as s, s.create_channel("cw") as h:
        h.configure_wait(spin_ns=0, adaptive=False)
        assert h.stats()["spin_budget_ns"] == 0
        h.configure_wait(spin_ns=20000, adaptive=False, slice_ns=10_000_000)
        assert h.stats()["spin_budget_ns"] == 20000
        for bad in ({"spin_ns": -1}, {"slice_ns": 10}, {"slice_ns": 11 * 10**9}):
            with pytest.raises(ValueError):
                h.configure_wait(**bad)
        assert set(h.stats()) >= {"spin_ok", "spin_fail", "sleeps", "wakes", "wakes_skipped"}


def test_text_signatures():
    import inspect

    assert str(inspect.signature(_ring.Channel.send)) == "(self, data, /, timeout=None)"
    assert str(inspect.signature(_ring.Channel.recv)) == "(self, /, timeout=None)"
    assert "spin_ns" in inspect.signature(_ring.Channel.configure_wait).parameters
    assert list(inspect.signature(_ring.layout_size).parameters) == ["request_capacity", "reply_capacity"]


def test_stub_matches_the_extension():
    """shmbench/_ring.pyi describes the extension as built (mypy's stubtest, when installed)."""
    pytest.importorskip("mypy.stubtest", reason="mypy is not installed")
    proc = subprocess.run([sys.executable, "-m", "mypy.stubtest", "shmbench._ring"],
                          capture_output=True, text=True, timeout=300, cwd=TESTS.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_step_reply_head_agrees_with_the_protocol():
    from shmbench.protocol import STEP_REPLY, STEP_REPLY_F

    assert _ring.STEP_REPLY_SIZE == STEP_REPLY.size == STEP_REPLY_F.size == 16


def test_adaptive_spin_pauses_on_a_slow_peer_and_resumes_when_it_is_fast():
    """The policy learns only from waits that ended while spinning: a peer slower than the
    spin cap makes it pause spinning (the pause doubles on repeats); once the peer is fast
    again, the probe at the end of a pause succeeds and spinning resumes."""
    with Session() as s:
        h = s.create_channel("a")
        sv = Channel.attach(h.path, watch_stdin=False)
        h.configure_wait(spin_ns=100_000, adaptive=True)
        delay = [0.002]
        stop = threading.Event()

        def echo():
            while not stop.is_set():
                try:
                    mv = sv.recv(timeout=0.5)
                except ChannelTimeout:
                    continue
                time.sleep(delay[0])
                sv.send(bytes(mv))

        t = threading.Thread(target=echo, daemon=True)
        t.start()
        try:
            for _ in range(6):                   # slow replies: spins fail, a pause begins
                h.call(b"x", timeout=5)
            stats = h.stats()
            assert stats["spin_pause_left"] > 0 and stats["spin_budget_ns"] == 0, stats
            assert stats["spin_ok"] == 0
            delay[0] = 0.0
            for _ in range(200):                 # fast replies: the probe succeeds, spinning resumes
                h.call(b"x", timeout=5)
            stats = h.stats()
            assert stats["spin_pause_left"] == 0 and stats["spin_budget_ns"] > 0, stats
            # spinning resumed and pays off again (not for every call on a loaded machine)
            assert stats["spin_ok"] >= 50, stats
        finally:
            stop.set()
            t.join(timeout=5)
            sv.close()
            h.close()
            h.unlink()
