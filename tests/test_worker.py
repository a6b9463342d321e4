"""shmbench.host.worker: the host's handle on one real server, its states and its errors.

Every worker here runs a real ``python -m shmbench.server`` through the process runtime; the
bare protocol (PING, ECHO) is enough to drive the state machine.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

import shmbench
from shmbench.errors import ChannelClosed, ChannelTimeout, PeerDied, ProtocolError, RemoteEnvError, RequestPending
from shmbench.host.worker import HOST_SPIN_CAP_NS, START_TIMEOUT, Worker, WorkerState, wait_policy
from shmbench.runtimes.process import ProcessRuntime
from shmbench.transport.session import Session
from shmbench.wire.codec import Codec
from shmbench.wire.protocol import Opcode, Status


@pytest.fixture
def worker():
    session = Session()
    w = Worker(session, 0, ProcessRuntime(), codec=Codec(), timeout=30.0)
    try:
        yield w
    finally:
        w.close()
        session.close()


def test_requests_move_the_worker_between_ready_and_pending(worker):
    assert worker.state is WorkerState.READY
    worker.send(Opcode.ECHO, b"hello")
    assert worker.state is WorkerState.PENDING
    with pytest.raises(RequestPending, match="in flight"):
        worker.send(Opcode.PING)
    assert bytes(worker.receive(START_TIMEOUT)) == bytes((Status.OK,)) + b"hello"
    assert worker.state is WorkerState.READY
    assert bytes(worker.request(Opcode.PING)) == bytes((Status.OK,))


def test_an_env_error_is_raised_and_the_worker_stays_usable(worker):
    with pytest.raises(RemoteEnvError, match="NoSuchEnv"):
        worker.make({"env_id": "NoSuchEnv-v9", "kwargs": {}, "num_envs": 1, "vector": False})
    assert worker.state is WorkerState.READY
    assert worker.make({"env_id": "CartPole-v1", "kwargs": {}, "num_envs": 1, "vector": False})["server"]["pid"] > 0


def test_a_timeout_breaks_the_worker_and_names_the_wait(worker):
    worker.request(Opcode.PING)  # the server is up...
    os.kill(worker.process.server_pid(), signal.SIGSTOP)  # ...and now cannot answer
    try:
        worker.send(Opcode.PING)
        with pytest.raises(ChannelTimeout, match=r"did not answer within 0.2 s; the worker is now marked broken"):
            worker.receive(0.2)
        assert worker.state is WorkerState.BROKEN
        with pytest.raises(ChannelTimeout, match="broken after an earlier timeout"):
            worker.request(Opcode.PING)  # a late reply is never read as the next one
    finally:
        os.kill(worker.process.server_pid(), signal.SIGCONT)


def test_a_dead_server_becomes_peer_died_with_status_and_log(worker):
    worker.request(Opcode.PING)
    os.kill(worker.process.server_pid(), signal.SIGKILL)
    with pytest.raises(PeerDied) as info:
        worker.request(Opcode.PING)
    assert info.value.exit_status == -signal.SIGKILL and "worker 0 (process runtime" in str(info.value)
    assert "shmbench server pid" in info.value.log_tail  # the server's first log line
    assert worker.state is WorkerState.DEAD
    with pytest.raises(PeerDied, match="is gone"):
        worker.send(Opcode.PING)


def test_close_is_idempotent_and_final(worker):
    worker.request(Opcode.PING)
    pid = worker.process.pid
    worker.close()
    worker.close()
    assert worker.state is WorkerState.CLOSED and worker.process.exit_status() == 0
    with pytest.raises(ChannelClosed, match="is closed"):
        worker.send(Opcode.PING)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_wait_policies():
    cores = len(os.sched_getaffinity(0))
    owned = wait_policy("auto", cores - 1)  # the host and every server have a core each
    assert (owned.host_track, owned.host_spin_ns) == (True, HOST_SPIN_CAP_NS)
    assert owned.for_server() == {"spin_ns": 100_000, "adaptive": True}
    crowded = wait_policy("auto", cores)  # one too many: the host sleeps at once
    assert (crowded.host_track, crowded.host_spin_ns) == (False, 0)
    assert crowded.for_server() == {"spin_ns": 100_000, "adaptive": True}
    spin = wait_policy("spin", 2)
    assert (spin.host_spin_ns, spin.host_track, spin.for_server()) == (
        1_000_000,
        False,
        {"spin_ns": 1_000_000, "adaptive": False},
    )
    block = wait_policy("block", 2)
    assert (block.host_spin_ns, block.for_server()["spin_ns"]) == (0, 0)
    fixed = wait_policy(0.00025, 2)
    assert (fixed.host_spin_ns, fixed.server_spin_ns, fixed.host_adaptive) == (250_000, 250_000, False)
    for bad in ("fast", -1, True):
        with pytest.raises(ValueError):
            wait_policy(bad, 2)


class OtherProtocol(ProcessRuntime):
    """The process runtime starting tests/old_server.py: a server of another protocol."""

    def __init__(self, version: int) -> None:
        super().__init__()
        self.version = version

    def command(self, launch):
        _argv, env = super().command(launch)
        return [sys.executable, str(Path(__file__).resolve().parent / "old_server.py"), str(self.version)], env


@pytest.mark.parametrize("version", [1, 3])
def test_a_server_of_another_protocol_is_refused_at_the_handshake(version):
    t0 = time.monotonic()
    with pytest.raises(ProtocolError) as info:
        shmbench.make("CartPole-v1", runtime=OtherProtocol(version))
    message = str(info.value)
    assert f"speaks shmbench protocol {version} " in message and "this host protocol 2 " in message
    assert "rebuild the image with this host's shmbench" in message
    assert time.monotonic() - t0 < 30
