"""A channel notices a dead or departed peer: kill -9 of either side, pipes, pidfds, locks.

Kills are real SIGKILLs of real processes (tests/channel_peers.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from channel_peers import (
    PEER_TAG,
    base_entries,
    finish,
    host_and_peer,
    read_line,
    reaped,
    spawn,
)

from shmbench.errors import (
    ChannelTimeout,
    PeerDied,
)
from shmbench.transport.session import Session


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
        timer = threading.Timer(0.3, lambda: (killed.append(time.monotonic()), os.kill(peer.pid, signal.SIGKILL)))
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


def test_peer_alive_watches_pipes_pidfds_and_locks():
    with Session() as s, s.create_channel("alive") as h:
        assert h.peer_alive()  # nothing to watch: assumed alive
        r, w = os.pipe()
        h.set_peer(death_fds=[r])
        assert h.peer_alive()
        os.close(w)  # EOF: the host of a server died
        assert not h.peer_alive()
        lock = os.open(str(h.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        # a separate open file description: flock locks belong to those, not to fds
        h.set_peer(death_fds=[], lock_fd=os.open(str(h.path) + ".lock", os.O_RDONLY))
        assert not h.peer_alive()  # nobody holds the lock
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import fcntl,sys,time; "
                f"fcntl.flock({lock}, fcntl.LOCK_EX); print('locked', flush=True); "
                f"time.sleep(30) # {PEER_TAG}",
            ],
            pass_fds=(lock,),
            stdout=subprocess.PIPE,
            bufsize=0,
        )
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


def test_close_wakes_a_peer_blocked_in_recv_at_once():
    with host_and_peer("wait_close") as (ch, peer):
        time.sleep(0.2)
        t = time.monotonic()
        ch.close()
        words = read_line(peer, 10).split()
        assert words[0] == "closed" and float(words[1]) - t < 0.5, (words, t)
        assert finish(peer, 10)[0] == 0
