"""How a channel waits: timeouts, Ctrl-C, the GIL, wake-ups and the adaptive spin.

Every wait here has a timeout; peers are real processes (tests/channel_peers.py).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import signal
import struct
import subprocess
import threading
import time

import pytest
from channel_peers import (
    CTRL_DATA_SLEEPERS,
    REQUEST,
    ctrl_offset,
    finish,
    host_and_peer,
    read_line,
    reaped,
    spawn,
)

from shmbench.errors import (
    ChannelFull,
    ChannelMismatch,
    ChannelTimeout,
    PeerDied,
    ProtocolError,
)
from shmbench.transport.channel import Channel
from shmbench.transport.session import Session


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
        assert time.monotonic() - t < 0.25  # never blocks (a loaded VM may still lag)
        assert isinstance(info.value, TimeoutError)
        t = time.monotonic()
        with pytest.raises(TimeoutError):
            ch.recv(timeout=0.1)
        assert 0.1 <= time.monotonic() - t < 1.0
        t = time.monotonic()
        assert bytes(ch.recv(timeout=None)) == b"late"  # forever, but it came
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
        assert 50 < n < 66  # 64 KiB of 1008-byte records
        t = time.monotonic()
        with pytest.raises(ChannelTimeout, match="room in the ring"):
            ch.send(b"x" * 1000, timeout=0.2)
        assert 0.2 <= time.monotonic() - t < 1.5
        with pytest.raises(ChannelTimeout):
            ch.reserve(1000, timeout=0.05)
        ch.close()  # the peer sees CLOSED and exits
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


def test_call_timeout_bounds_the_whole_round_trip():
    with host_and_peer("slow_echo", 0.5) as (ch, peer):
        t = time.monotonic()
        with pytest.raises(ChannelTimeout):
            ch.call(b"ping", timeout=0.2)
        assert time.monotonic() - t < 0.45
        ch.close()
        finish(peer)


def test_send_timeout_mid_fragmented_message_breaks_the_channel():
    with host_and_peer("sleep", 30) as (ch, peer):
        with pytest.raises(ChannelTimeout, match="unusable"):
            ch.send(b"y" * (1 << 20), timeout=0.2)  # 16 ring-fulls; the peer never reads
        with pytest.raises(ProtocolError, match="broken"):
            ch.send(b"z", timeout=0)
        ch.close()
        finish(peer)


@pytest.mark.parametrize("what", ["recv", "send"])
def test_ctrl_c_interrupts_a_blocked_wait_and_the_gil_is_free(what):
    with Session() as s:
        ch = s.create_channel("w0", request_capacity=1 << 14, reply_capacity=1 << 14)
        with ch, reaped(spawn("interruptible", ch.path, what, stdin=subprocess.PIPE)) as peer:
            if what == "recv":
                assert bytes(ch.recv(timeout=30)) == b"ready"
            assert read_line(peer) == "waiting"
            time.sleep(0.3)  # well into the futex wait
            t = time.monotonic()
            peer.send_signal(signal.SIGINT)
            words = read_line(peer, 5).split()
            latency = time.monotonic() - t
            assert words[0] == "interrupted", words
            assert latency < 1.0, latency
            assert int(words[2]) > 1000  # the other thread ran while we waited
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


def test_waker_skips_the_syscall_when_nobody_sleeps():
    with Session() as s:
        ch = s.create_channel("wk", request_capacity=1 << 16, reply_capacity=1 << 16)
        with ch:
            for i in range(100):
                ch.send(b"m%d" % i)
            ch.send(b"last")
            st = ch.stats()
            assert st["wakes"] == 0 and st["wakes_skipped"] == 101  # nobody listened yet
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
                assert after["wakes"] == before["wakes"] + 1  # it slept: syscall
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


@contextlib.contextmanager
def delayed_echo(name: str, delay: float):
    """A host channel whose peer (a thread here) echoes each request after ``delays[0]``
    seconds; yields (host channel, delays): a one-item list the test may change."""
    with Session() as s:
        h = s.create_channel(name)
        sv = Channel.attach(h.path, watch_stdin=False)
        delays = [delay]
        stop = threading.Event()

        def echo():
            while not stop.is_set():
                try:
                    mv = sv.recv(timeout=0.5)
                except ChannelTimeout:
                    continue
                time.sleep(delays[0])
                sv.send(bytes(mv))

        t = threading.Thread(target=echo, daemon=True)
        t.start()
        try:
            yield h, delays
        finally:
            stop.set()
            t.join(timeout=5)
            sv.close()
            h.close()
            h.unlink()


def test_adaptive_spin_pauses_on_a_slow_peer_and_resumes_when_it_is_fast():
    """The policy learns only from waits that ended while spinning: a peer slower than the
    spin cap makes it pause spinning (the pause doubles on repeats); once the peer is fast
    again, the probe at the end of a pause succeeds and spinning resumes."""
    with delayed_echo("a", 0.002) as (h, delay):
        h.configure_wait(spin_ns=100_000, adaptive=True)
        for _ in range(6):  # slow replies: spins fail, a pause begins
            h.call(b"x", timeout=5)
        stats = h.stats()
        assert stats["spin_pause_left"] > 0 and stats["spin_budget_ns"] == 0, stats
        assert stats["spin_ok"] == 0
        delay[0] = 0.0
        # fast replies: a probe succeeds and spinning resumes. A probe can still miss
        # (a wake-up on this VM's halted vCPU, an ASan build), and each miss doubles the
        # pause, so the resumption is waited for -- within a bound -- not counted on by
        # a fixed call
        for _ in range(20_000):
            h.call(b"x", timeout=5)
            stats = h.stats()
            if stats["spin_pause_left"] == 0 and stats["spin_budget_ns"] > 0:
                break
        assert stats["spin_pause_left"] == 0 and stats["spin_budget_ns"] > 0, stats
        ok_before = stats["spin_ok"]
        # spinning resumed and pays off again: not for every call on a loaded machine
        # (where a slow stretch may pause it again), so again waited for within a bound
        for _ in range(20_000):
            h.call(b"x", timeout=5)
            if h.stats()["spin_ok"] - ok_before >= 50:
                break
        assert h.stats()["spin_ok"] - ok_before >= 50, h.stats()


def test_tracking_spins_for_replies_of_any_length_up_to_the_cap():
    """track=True: the budget follows about twice the longest recent wait -- a 2 ms reply is
    spun for (no sleep, no futex wake-up) under a 20 ms cap, a fast one shrinks the budget
    again, and a reply slower than the cap is slept for."""
    with delayed_echo("t", 0.002) as (h, delay):
        h.configure_wait(spin_ns=20_000_000, track=True)
        assert h.stats()["tracking"]
        for _ in range(20):
            h.call(b"x", timeout=5)
        stats = h.stats()
        # time.sleep(0.002) takes at least 2 ms; a loaded VM may add to it, never take off
        assert stats["wait_estimate_ns"] >= 2_000_000, stats
        assert 4_000_000 <= stats["spin_budget_ns"] <= 20_000_000, stats
        assert stats["sleeps"] <= 4, stats  # spun for, bar the odd preemption
        delay[0] = 0.0
        # the peak decays by 1/64 a wait: within some hundreds of fast replies the budget
        # shrinks (a preempted reply on a loaded machine may lift it again for a while,
        # so the lowest budget seen is what counts)
        lowest = h.stats()["spin_budget_ns"]
        for i in range(3000):
            h.call(b"x", timeout=5)
            if i % 50 == 0:
                lowest = min(lowest, h.stats()["spin_budget_ns"])
        assert lowest < 1_000_000, h.stats()
        delay[0] = 0.05  # beyond the cap: spinning gives up and sleeps
        sleeps = h.stats()["sleeps"]
        for _ in range(3):
            h.call(b"x", timeout=5)
        stats = h.stats()
        # each slept for: once, or twice when the 50 ms wait outlasts a 50 ms futex slice
        assert 3 <= stats["sleeps"] - sleeps <= 6 and stats["spin_budget_ns"] == 20_000_000, stats
        h.configure_wait(spin_ns=0, track=False)
        assert not h.stats()["tracking"] and h.stats()["spin_budget_ns"] == 0


def test_wait_any_wakes_on_the_first_reply_of_several():
    """wait_any sleeps on every channel's futex word at once: the one that gets a reply
    is returned (quickly: not at the end of a slice), a timeout gives -1, a closed channel
    counts as ready (its recv says why), and a close from another thread wakes it."""
    from shmbench.transport.channel import wait_any

    with Session() as s:
        hosts = [s.create_channel(f"any{i}") for i in range(3)]
        peers = [Channel.attach(h.path, watch_stdin=False) for h in hosts]
        try:
            t0 = time.monotonic()
            assert wait_any(hosts, 0.1) == -1
            assert 0.1 <= time.monotonic() - t0 < 1.0
            assert wait_any(hosts, 0) == -1
            sleeps = [h.stats()["sleeps"] for h in hosts]

            def reply_later():
                time.sleep(0.2)
                peers[2].send(b"two")

            t = threading.Thread(target=reply_later)
            t.start()
            t0 = time.monotonic()
            assert wait_any(hosts, 10) == 2
            took = time.monotonic() - t0
            t.join()
            assert 0.15 <= took < 2.0, took
            assert bytes(hosts[2].recv(timeout=1)) == b"two"
            assert [h.stats()["sleeps"] for h in hosts] == sleeps  # nothing else was touched
            with pytest.raises(ValueError):
                wait_any([], 1)
            with pytest.raises(TypeError):
                wait_any([object()], 1)
            closer = threading.Timer(0.2, hosts[1].close)
            closer.start()
            assert wait_any(hosts, 10) == 1  # the close woke it
            closer.join()
        finally:
            for c in peers + hosts:
                c.close()
            for h in hosts:
                h.unlink()


def test_wait_any_is_interruptible():
    from shmbench.transport.channel import wait_any

    class Alarm(Exception):
        pass

    def handler(signum, frame):
        raise Alarm

    with Session() as s, s.create_channel("anyint") as h:
        peer = Channel.attach(h.path, watch_stdin=False)
        old = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            t0 = time.monotonic()
            with pytest.raises(Alarm):
                wait_any([h], 10)
            assert time.monotonic() - t0 < 2.0
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            peer.close()
            h.unlink()
