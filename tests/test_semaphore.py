"""shmbench.transport.semaphore: the posix_ipc named-semaphore wake-up backend, between processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shmbench.errors import (
    ChannelClosed,
    ChannelMismatch,
    ChannelTimeout,
    PeerDied,
    ShmbenchError,
)
from shmbench.transport.channel import Channel
from shmbench.transport.semaphore import SemaphoreChannel, sweep
from shmbench.transport.session import Session, channel_base, gc

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from channel_peers import PEER_TAG, finish, read_line, reaped, say  # noqa: E402


def spawn(func: str, *args, stdin=subprocess.PIPE, prefix=()) -> subprocess.Popen:
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_semaphore as m; m.peer_{func}(*sys.argv[2:])"
    return subprocess.Popen(
        [*prefix, sys.executable, "-X", "faulthandler", "-c", code, PEER_TAG, *map(str, args)],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )


def our_semaphores() -> set[str]:
    prefix = f"sem.shmbench-{os.getuid()}-"
    return {e for e in os.listdir("/dev/shm") if e.startswith(prefix)}


@pytest.fixture(autouse=True)
def no_semaphore_leaks():
    before = our_semaphores()
    yield
    assert our_semaphores() <= before, "semaphores left in /dev/shm"


@contextlib.contextmanager
def host_and_peer(func: str, *args, cap: int = 1 << 16):
    with Session() as s:
        ch = SemaphoreChannel.create(s.channel_path("w0"), request_capacity=cap, reply_capacity=cap)
        with ch, reaped(spawn(func, ch.path, *args)) as peer:
            ch.set_peer(death_fds=[os.pidfd_open(peer.pid)])
            assert bytes(ch.recv(timeout=30)) == b"ready"
            yield ch, peer


def peer_echo(path: str) -> None:
    ch = SemaphoreChannel.attach(path)
    ch.send(b"ready")
    with contextlib.suppress(ChannelClosed):
        while True:
            msg = ch.recv(timeout=30)
            ch.send(msg, timeout=30)
    ch.close()


def test_round_trips_small_and_fragmented():
    with host_and_peer("echo") as (ch, peer):
        assert ch.wakeup == "posix_ipc"
        rng = np.random.default_rng(0)
        for size in [0, 1, 100, ch.max_record, ch.max_record + 1, 1 << 20, *rng.integers(0, 3000, 200)]:
            payload = rng.bytes(int(size))
            assert bytes(ch.call(payload, timeout=30)) == payload
        ch.close()
        assert finish(peer)[0] == 0


def test_a_sleeping_receiver_is_woken_by_the_post_not_the_slice():
    with host_and_peer("echo") as (ch, peer):
        ch.slice_s = 5.0  # a wake-up that waited for the slice would take seconds
        for _ in range(20):
            t = time.monotonic()
            assert bytes(ch.call(b"ping", timeout=10)) == b"ping"
            assert time.monotonic() - t < 1.0
        # no futex wake-ups: the server's data waits slept on the semaphore
        assert ch.stats()["wakes"] == 0
        ch.close()
        finish(peer)


def peer_send_later(path: str, delay: str) -> None:
    ch = SemaphoreChannel.attach(path)
    ch.send(b"ready")
    time.sleep(float(delay))
    ch.send(b"late")
    with contextlib.suppress(ShmbenchError):
        ch.recv(timeout=30)
    ch.close()


def test_timeouts():
    with host_and_peer("send_later", 0.4) as (ch, peer):
        t = time.monotonic()
        with pytest.raises(ChannelTimeout):
            ch.recv(timeout=0)
        assert time.monotonic() - t < 0.25
        t = time.monotonic()
        with pytest.raises(TimeoutError):
            ch.recv(timeout=0.15)
        assert 0.15 <= time.monotonic() - t < 1.0
        assert bytes(ch.recv(timeout=None)) == b"late"
        with pytest.raises(ValueError):
            ch.recv(timeout=-1)
        ch.send(b"bye")
        assert finish(peer)[0] == 0


def test_posts_do_not_pile_up():
    with Session() as s:
        h = SemaphoreChannel.create(s.channel_path("p"))
        sv = SemaphoreChannel.attach(h.path, watch_stdin=False)
        with h, sv:
            for i in range(100):
                h.send(b"%d" % i)
            assert sv._mine.value == 1  # one pending wake-up covers them all
            assert [bytes(sv.recv(timeout=0)) for _ in range(100)] == [b"%d" % i for i in range(100)]
            assert sv._mine.value == 0  # ... and was consumed with them
            with pytest.raises(ChannelTimeout):
                sv.recv(timeout=0.05)


def peer_blocked(path: str) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited as ignored
    ch = SemaphoreChannel.attach(path)
    ch.send(b"ready")
    say("waiting")
    t = time.monotonic()
    try:
        ch.recv(timeout=30)
        say("returned")
    except KeyboardInterrupt:
        say("interrupted", time.monotonic() - t)
    except ShmbenchError as exc:
        say(type(exc).__name__, time.monotonic() - t)
    ch.close()


def test_ctrl_c_interrupts_a_semaphore_wait():
    with host_and_peer("blocked") as (_ch, peer):
        assert read_line(peer) == "waiting"
        time.sleep(0.3)
        t = time.monotonic()
        peer.send_signal(signal.SIGINT)
        words = read_line(peer, 5).split()
        assert words[0] == "interrupted" and time.monotonic() - t < 1.0, words
        assert finish(peer)[0] == 0


def test_peer_close_is_noticed_at_once():
    with host_and_peer("blocked") as (ch, peer):
        assert read_line(peer) == "waiting"
        time.sleep(0.2)
        t = time.monotonic()
        ch.close()
        words = read_line(peer, 5).split()
        assert words[0] == "ChannelClosed" and time.monotonic() - t < 0.5, words
        assert finish(peer)[0] == 0


def test_server_killed_while_host_waits():
    with host_and_peer("blocked") as (ch, peer):
        assert read_line(peer) == "waiting"
        killed = time.monotonic()
        peer.kill()
        with pytest.raises(PeerDied):
            ch.recv(timeout=10)
        assert time.monotonic() - killed < 1.0


def peer_host() -> None:
    s = Session()
    ch = SemaphoreChannel.create(s.channel_path("w0"))
    say(ch.path)
    time.sleep(60)


def test_killed_host_semaphores_are_swept_after_gc():
    before = our_semaphores()
    with reaped(spawn("host", stdin=subprocess.DEVNULL)) as host:
        path = Path(read_line(host))
        assert len(our_semaphores() - before) == 2
        assert sweep(channel_base()) == []  # its session lives: hands off
        host.kill()
        host.wait(10)
    assert len(our_semaphores() - before) == 2  # a killed host cannot unlink them
    assert path.parent in gc()
    swept = sweep(channel_base())
    assert len(swept) == 2 and all(name.startswith("/shmbench-") for name in swept)
    assert our_semaphores() <= before


def test_close_unlinks_the_semaphores_and_their_file():
    before = our_semaphores()
    with Session() as s:
        h = SemaphoreChannel.create(s.channel_path("u"))
        assert len(our_semaphores() - before) == 2
        assert Path(str(h.path) + ".sem").exists()
        sv = SemaphoreChannel.attach(h.path, watch_stdin=False)
        sv.close()
        assert len(our_semaphores() - before) == 2  # the server does not own them
        h.close()
        h.close()
        assert our_semaphores() <= before
        assert not Path(str(h.path) + ".sem").exists()
        h.unlink()


def test_attach_to_a_plain_channel_is_refused():
    with Session() as s:
        h = Channel.create(s.channel_path("plain"))
        with h, pytest.raises(ChannelMismatch, match="posix_ipc"):
            SemaphoreChannel.attach(h.path, watch_stdin=False)
        # the refused attach released the server lock: a real server may still come
        Channel.attach(h.path, watch_stdin=False).close()


CONTAIN_SCRIPT = r"""
import subprocess, sys
from pathlib import Path
from shmbench.transport.channel import Channel
from shmbench.errors import ChannelMismatch
from shmbench.transport.semaphore import SemaphoreChannel
session, bound = sys.argv[1], Path(sys.argv[2])
# what `apptainer exec --containall --bind SESSION:/shmbench` does to the server's view:
# the channel directory is bound in, /dev/shm is a fresh, private tmpfs
subprocess.run(["mount", "--bind", session, str(bound)], check=True)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/dev/shm"], check=True)
try:
    SemaphoreChannel.attach(bound / "sem.chan", watch_stdin=False)
    print("semaphores: attached")
except ChannelMismatch as exc:
    print("semaphores: refused:", exc)
ch = Channel.attach(bound / "futex.chan", watch_stdin=False)
ch.send(b"futex wake-ups work here")
print("futex: sent", bytes(ch.recv(timeout=10)).decode())
ch.close()
"""


def test_semaphores_do_not_cross_a_private_dev_shm(tmp_path):
    """Why this backend is not the default: under --contain/--containall the container's
    /dev/shm is its own, so the named semaphores are not there; futex words are."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.decode().strip()}")
    bound = tmp_path / "shmbench"
    bound.mkdir()
    with Session() as s:
        sem = SemaphoreChannel.create(s.channel_path("sem"))
        futex = Channel.create(s.channel_path("futex"))
        with sem, futex:
            proc = subprocess.Popen(
                [
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    sys.executable,
                    "-c",
                    CONTAIN_SCRIPT,
                    str(s.path),
                    str(bound),
                    PEER_TAG,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            with reaped(proc):
                assert bytes(futex.recv(timeout=30)) == b"futex wake-ups work here"
                futex.send(b"and back")
                status, out, err = finish(proc, 30)
            assert status == 0, err
            assert "semaphores: refused" in out and "--containall" in out, out
            assert "futex: sent and back" in out
        futex.unlink()
