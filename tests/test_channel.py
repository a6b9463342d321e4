"""shmbench._ring through shmbench.transport.channel: the rings, their records and their API.

Peers are real processes (tests/channel_peers.py); files live in the real channel base
directory, which the suite-wide ``no_leaks`` fixture checks after every test. Every wait
here has a timeout.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from channel_peers import (
    CTRL_DATA_SEQ,
    CTRL_HEAD,
    N_STREAM,
    OFF_FILE_SIZE,
    OFF_MAGIC,
    OFF_RING_CAPACITY,
    OFF_RING_OFFSET,
    OFF_STATE,
    OFF_VERSION,
    REPLY,
    REQUEST,
    STREAM_REPLY_CAP,
    STREAM_REQUEST_CAP,
    STREAM_SEED,
    TESTS,
    ctrl_offset,
    finish,
    host_and_peer,
    reaped,
    spawn,
    stream_plan,
    stream_pool,
    stream_recv,
    stream_run,
    stream_send,
)

from shmbench import _ring
from shmbench.errors import (
    ChannelClosed,
    ChannelTimeout,
)
from shmbench.transport.channel import Channel
from shmbench.transport.session import Session


@pytest.mark.slow
def test_million_messages_both_directions_concurrently():
    """10^6 messages each way at once: none lost, duplicated, reordered or corrupted."""
    pool = stream_pool(STREAM_SEED)
    send_plan = stream_plan(STREAM_SEED, REQUEST, N_STREAM, STREAM_REQUEST_CAP)
    recv_plan = stream_plan(STREAM_SEED, REPLY, N_STREAM, STREAM_REPLY_CAP)
    total = sum(send_plan[0]) + sum(recv_plan[0])
    n_frag = sum(s > STREAM_REQUEST_CAP // 2 - 8 for s in send_plan[0])
    assert n_frag > 1000 and max(send_plan[0]) >= 4 << 20  # the plan covers what it claims
    with Session() as s:
        ch = s.create_channel("stream", request_capacity=STREAM_REQUEST_CAP, reply_capacity=STREAM_REPLY_CAP)
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
    print(
        f"\n{2 * N_STREAM} messages, {total / 2**30:.2f} GiB in {mine['seconds']:.1f} s "
        f"(host stats {mine['stats']}, server stats {theirs['stats']})"
    )


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
            assert struct.unpack_from("<I", raw, OFF_STATE)[0] == 1  # host OPEN
            h.send(b"x" * 13)
            with open(h.path, "rb") as g:
                raw = g.read(_ring.HEADER_SIZE)
            assert struct.unpack_from("<Q", raw, ctrl_offset(REQUEST, CTRL_HEAD))[0] == 8 + 16
            assert struct.unpack_from("<I", raw, ctrl_offset(REQUEST, CTRL_DATA_SEQ))[0] == 1


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
        h = s.create_channel("caps")  # 1 MiB requests, 4 MiB replies
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
        assert bytes(v) == b"Jello, zero copy"  # still mapped
        w[:4] = b"ok!!"  # still writable
        assert bytes(w[:4]) == b"ok!!"
        v.release()
        w.release()


def test_closed_channel_raises_clear_errors():
    with Session() as s:
        h = s.create_channel("c")
        sv = Channel.attach(h.path, watch_stdin=False)
        h.close()
        h.close()  # idempotent
        assert h.closed and not sv.closed and sv.peer_closed
        for call in (
            lambda: h.send(b"x"),
            lambda: h.recv(timeout=0),
            lambda: h.poll(),
            lambda: h.reserve(1),
            lambda: h.call(b"x"),
        ):
            with pytest.raises(ChannelClosed, match="closed"):
                call()
        with pytest.raises(ChannelClosed, match="peer closed"):
            sv.recv(timeout=5)
        sv.close()
        h.unlink()


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
            assert not sv.poll()  # the message handed out does not count
            # the ring (4 KiB) has room for 3 such records while one is held ...
            h.send(b"b" * 1000, timeout=0)
            h.send(b"c" * 1000, timeout=0)
            h.send(b"d" * 1000, timeout=0)
            with pytest.raises(ChannelTimeout):
                h.send(b"e" * 1000, timeout=0)
            sv.release()  # ... and a 4th once it is released
            h.send(b"e" * 1000, timeout=0)
            del v
            assert [bytes(sv.recv(timeout=0))[:1] for _ in range(4)] == [b"b", b"c", b"d", b"e"]


def test_text_signatures():
    import inspect

    assert str(inspect.signature(_ring.Channel.send)) == "(self, data, /, timeout=None)"
    assert str(inspect.signature(_ring.Channel.recv)) == "(self, /, timeout=None)"
    assert "spin_ns" in inspect.signature(_ring.Channel.configure_wait).parameters
    assert list(inspect.signature(_ring.layout_size).parameters) == ["request_capacity", "reply_capacity"]


def test_stub_matches_the_extension():
    """shmbench/_ring/_ring.pyi describes the extension as built (mypy's stubtest, when installed)."""
    pytest.importorskip("mypy.stubtest", reason="mypy is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "shmbench._ring._ring"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=TESTS.parent,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
