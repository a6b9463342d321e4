"""A hostile image against the host: every finding of the sealed-containers review, as a test.

The attacks are real: code a hostile image would run, inside the real server in a real
bwrap sandbox (tests/hostile_envs.py), or a hostile program in place of the server,
attached to the real inherited channel (tests/hostile_server.py, started by
:class:`HostileImage`, a real bwrap sandbox that runs it). Each test asserts that the host
survives with a clear :class:`~shmbench.errors.ShmbenchError`, that its memory stays bounded
where the attack aimed at it (measured in a fresh host process, :func:`run_host`), and --
through the suite's ``no_leaks`` fixture -- that nothing remains afterwards. Every test has
a time limit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from conftest import TESTS, runtime_kwargs
from unprivileged import run_unprivileged

import shmbench
from shmbench.errors import (
    ChannelTimeout,
    PeerDied,
    PeerStalled,
    ProtocolError,
    RemoteEnvError,
    RequestPending,
    ShmbenchError,
)
from shmbench.host.worker import CLOSE_TIMEOUT
from shmbench.runtimes.base import LOG_CAP
from shmbench.runtimes.bwrap import BwrapRuntime
from shmbench.runtimes.limits import enforcement
from shmbench.transport.session import channel_base

pytestmark = [pytest.mark.usefixtures("bwrap_ok"), pytest.mark.timeout(180)]

BWRAP = {"runtime": "bwrap", "environment": {"PYTHONPATH": str(TESTS)}}


@pytest.fixture
def bwrap_ok():
    runtime_kwargs("bwrap")  # skips, with the reason, where bwrap cannot run


class HostileImage(BwrapRuntime):
    """A hostile image, for real: a bwrap sandbox whose "server" is tests/hostile_server.py."""

    def __init__(self, attack: str) -> None:
        super().__init__(environment={"PYTHONPATH": str(TESTS)})
        self.attack = attack

    def command(self, launch):
        argv, env = super().command(launch)
        cut = argv.index("--")
        return [*argv[: cut + 1], self.python, "-s", str(TESTS / "hostile_server.py"), self.attack], env


def run_host(code: str, timeout: float = 150) -> dict:
    """Run a host in a fresh interpreter; its ``result`` dict plus its peak RSS in MiB."""
    script = (
        textwrap.dedent(code) + "\nimport json, resource\n"
        "result['rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print('RESULT ' + json.dumps(result), flush=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env, cwd=TESTS
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][7:])


@pytest.fixture(scope="module")
def baseline_rss() -> float:
    """The peak RSS of a host that makes one bwrap env and steps it: what attacks add to."""
    return run_host("""
        import shmbench
        with shmbench.make("CartPole-v1", runtime="bwrap") as env:
            env.reset(seed=0); env.step(0)
        result = {}
    """)["rss_mib"]


def _wait_gone(pids: list[int], seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        time.sleep(0.02)
    return alive


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------------------------------
# 1. no host file to write through, no log to swap: no directory of the host is writable
# ------------------------------------------------------------------------------------------


def test_the_sandbox_can_write_no_host_directory(tmp_path):
    """The review planted ``w<k>.log -> <a host file>`` in the shared session directory for
    the next workers (then a FIFO, /dev/zero, /etc/passwd...). Now no directory is shared:
    each server has its channel and slab as descriptors, its output as a pipe."""
    victim = tmp_path / "victim.pth"
    with shmbench.make_vec(
        "hostile_envs:Reach", 2, num_workers=2, **BWRAP, write_dirs=[str(tmp_path), str(TESTS), str(channel_base())]
    ) as envs:
        session = envs._owned.session.path
        envs.reset(seed=0)
        infos = envs.step(np.zeros(2, np.int64))[4]
        for k in range(2):
            assert infos["shmbench_dir"][k] is np.False_ or infos["shmbench_dir"][k] is False
            assert list(infos["written"][k]) == ["/tmp"], infos["written"][k]  # its private tmpfs, only
        logs = sorted(p.name for p in session.iterdir() if p.suffix == ".log")
        assert logs == ["w0.log", "w1.log"]
        assert all((session / n).is_file() and not (session / n).is_symlink() for n in logs)
    assert not victim.exists()


def test_an_output_flood_is_capped_and_the_host_stays_small(baseline_rss):
    got = run_host("""
        import os, shmbench
        with shmbench.make("hostile_envs:Flood", runtime="bwrap", environment={"PYTHONPATH": os.getcwd()},
                           megabytes=64) as env:
            env.reset(seed=0)
            info = env.step(0)[4]
            log = env.log_path
            size = os.path.getsize(log)
            tail = env._worker.process.log_tail()
        result = {"printed": info["printed_mib"], "log_bytes": size, "tail_chars": len(tail)}
    """)
    assert got["printed"] == 64
    assert got["log_bytes"] <= LOG_CAP + 4096, got  # 16 MiB kept of 64 printed
    assert got["tail_chars"] < 32 * 1024  # log_tail: the last lines only
    assert got["rss_mib"] < baseline_rss + 100, got


# ------------------------------------------------------------------------------------------
# 2. no reply decodes into more than a small multiple of its size
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attack, message",
    [
        ("alias", "array records overlap"),
        ("maps", "would decode into more than"),
        ("boxes", "array records overlap"),
    ],
)
def test_a_reply_cannot_balloon_the_host(attack, message, baseline_rss):
    got = run_host(f"""
        import sys, shmbench
        from test_hostile import HostileImage
        from shmbench.errors import ProtocolError
        try:
            shmbench.make("CartPole-v1", runtime=HostileImage({attack!r}))
            result = {{"error": None}}
        except ProtocolError as exc:
            result = {{"error": str(exc)}}
    """)
    assert got["error"] is not None and message in got["error"], got
    assert got["rss_mib"] < baseline_rss + 100, got


# ------------------------------------------------------------------------------------------
# 3. no truncation under the host's mapping: sealed memory
# ------------------------------------------------------------------------------------------


def test_the_server_can_neither_shrink_nor_grow_its_shared_memory():
    with shmbench.make("hostile_envs:Reach", copy=False, **BWRAP) as env:
        env.reset(seed=0)
        info = env.step(0)[4]
        assert info["truncate_channel"] == "EPERM" and info["grow_channel"] == "EPERM"
        assert info["truncate_slab"] == "EPERM"
        view = env.step(1)[0]  # a copy=False view of the slab, still readable
        assert view.tobytes() == np.zeros(1).tobytes() and env.step(0)[1] == 0.0


def test_punched_holes_read_as_zeros_and_the_host_goes_on():
    with shmbench.make("hostile_envs:PunchHoles", copy=False, **BWRAP) as env:
        env.reset(seed=0)
        obs, reward, *_ = env.step(0)  # the slab's pages were freed under our mapping
        assert obs.shape == (1 << 16,) and set(np.unique(obs)) <= {0, 9}
        assert reward == 0.0
        env.step(0)  # and the channel still works


# ------------------------------------------------------------------------------------------
# 4. no leftover in the channel base stops a later make() or gc
# ------------------------------------------------------------------------------------------

LEFTOVERS = r"""
import os, stat, sys, fcntl
from shmbench.transport.session import channel_base, gc, Session
import shmbench
base = channel_base(); base.mkdir(mode=0o700, parents=True, exist_ok=True)
outside = base.parent / f"outside-{os.getuid()}"; outside.mkdir(exist_ok=True)
(outside / "keep").write_text("x")
def dead_session(name):
    d = base / name; d.mkdir(); (d / "host.lock").write_text("")
    return d
deep = dead_session("111-deadbeef")
fd = os.open(deep, os.O_RDONLY)
for _ in range(3000):
    os.mkdir("d", dir_fd=fd); nfd = os.open("d", os.O_RDONLY, dir_fd=fd); os.close(fd); fd = nfd
os.close(fd)
locked = dead_session("222-deadbeef")
(locked / "sub").mkdir(); (locked / "sub" / "f").write_text("z"); os.chmod(locked / "sub", 0)
os.chmod(locked, 0o500)
odd = dead_session("333-deadbeef")
os.mkfifo(odd / "fifo"); os.symlink(outside, odd / "link"); os.symlink("/etc/passwd", odd / "w0.log")
fifo_lock = base / "444-deadbeef"; fifo_lock.mkdir(); os.mkfifo(fifo_lock / "host.lock")
removed = gc(min_age=0)
env = shmbench.make("CartPole-v1", runtime="process")
env.reset(seed=0); env.step(0); env.close()
left = sorted(os.listdir(base))
print("removed", len(removed), "left", left, "outside", sorted(os.listdir(outside)), oct(outside.stat().st_mode & 0o777))
"""


def test_crafted_leftovers_never_stop_gc_or_make(tmp_path):
    """A 3,000-deep chain, mode-000 and 0500 directories, FIFOs (one as a host.lock), symlinks
    out of the tree: gc removes them all, as an unprivileged user too (for whom the modes
    bind), make() works beside them, and nothing outside the tree is touched."""
    base = tmp_path / "base"
    script = f"import os\nos.environ['SHMBENCH_CHANNEL_DIR'] = {str(base)!r}\n" + LEFTOVERS
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, SHMBENCH_RUNTIME="process"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "left []" in out.stdout and "outside ['keep'] 0o755" in out.stdout, out.stdout
    if os.geteuid() == 0:
        unpriv_base = f"/tmp/shmbench-hostile-{os.getpid()}"
        out = run_unprivileged(f"import os\nos.environ['SHMBENCH_CHANNEL_DIR'] = {unpriv_base!r}\n" + LEFTOVERS)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "left []" in out.stdout and "outside ['keep'] 0o755" in out.stdout, out.stdout
        subprocess.run(["rm", "-rf", unpriv_base, f"/tmp/outside-{os.getpid()}"], check=False)


# ------------------------------------------------------------------------------------------
# 5. Ctrl-C never leaves the stream one reply behind
# ------------------------------------------------------------------------------------------


def _interrupt_soon(delay: float = 0.1) -> threading.Timer:
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.parametrize("kind", ["make", "make_vec_one_worker", "make_vec_two_workers"])
def test_ctrl_c_mid_step_keeps_the_stream_in_step(kind):
    if kind == "make":
        env = shmbench.make("hostile_envs:SlowEcho", **BWRAP)
        step = lambda a: float(env.step(a)[0][0])  # noqa: E731
    else:
        env = shmbench.make_vec(
            "hostile_envs:SlowEcho", 2, num_workers=1 if kind.endswith("one_worker") else 2, **BWRAP
        )
        step = lambda a: float(env.step(np.full(2, a, np.int64))[0][0][0])  # noqa: E731
    with env:
        env.reset(seed=0)
        timer = _interrupt_soon()
        with pytest.raises(KeyboardInterrupt):
            step(1)
        timer.join()
        assert step(0) == 0.0  # the answer to this step, not to the interrupted one
        assert step(1) == 1.0
        assert step(0) == 0.0


# ------------------------------------------------------------------------------------------
# 6. a stopped server is noticed with timeout=None; close() is bounded, all workers together
# ------------------------------------------------------------------------------------------


def test_a_stopped_server_is_noticed_with_no_timeout():
    with shmbench.make("hostile_envs:Stop", stall_timeout=1.0, **BWRAP) as env:
        env.reset(seed=0)
        t0 = time.monotonic()
        with pytest.raises(PeerStalled) as info:
            env.step(0)  # the server SIGSTOPs itself; timeout=None
        assert time.monotonic() - t0 < 6
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, ShmbenchError)
        assert "no heartbeat for 1.0 s" in str(info.value) and "stopped" in str(info.value)
        with pytest.raises(ChannelTimeout, match="broken"):
            env.step(0)


def test_a_long_step_holding_the_gil_still_completes():
    with shmbench.make("hostile_envs:HoldGil", seconds=3, stall_timeout=1.0, **BWRAP) as env:
        env.reset(seed=0)
        assert env.step(0)[4] == {"slept": 3}


def test_close_takes_a_bounded_time_for_all_workers_together():
    envs = shmbench.make_vec("hostile_envs:HangingClose", 4, num_workers=4, **BWRAP)
    envs.reset(seed=0)
    t0 = time.monotonic()
    envs.close()
    took = time.monotonic() - t0
    # one CLOSE wait and one SIGTERM round for all four, not one each (the review: 40 s)
    assert took < CLOSE_TIMEOUT + 2 + 3, took


# ------------------------------------------------------------------------------------------
# 7. the sandbox sees what a server needs, not the host user's world
# ------------------------------------------------------------------------------------------


@pytest.fixture
def host_sockets(tmp_path):
    """Unix sockets listening on the host: one in /tmp, one in /run, one abstract."""
    made, paths = [], []
    for path in (str(tmp_path / "host.sock"), f"/run/shmbench-hostile-{os.getpid()}.sock"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(1)
        s.setblocking(False)
        made.append(s)
        paths.append(path)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(f"\0shmbench-hostile-{os.getpid()}")
    abstract.listen(1)
    abstract.setblocking(False)
    made.append(abstract)
    paths.append(f"\0shmbench-hostile-{os.getpid()}")
    yield paths, made
    for s in made:
        s.close()
    for p in paths[:2]:
        Path(p).unlink(missing_ok=True)


def test_the_host_view_hides_homes_secrets_sockets_and_other_sessions(tmp_path, host_sockets, monkeypatch):
    paths, listeners = host_sockets
    secret = Path("/root/.shmbench-hostile-secret") if os.geteuid() == 0 else Path.home() / ".shmbench-secret"
    secret.write_text("not for the sandbox")
    # a channel base on a path the sandbox sees (a PYTHONPATH entry): masked
    visible = tmp_path / "visible"
    visible.mkdir()
    monkeypatch.setenv("SHMBENCH_CHANNEL_DIR", str(visible / "base"))
    try:
        with shmbench.make(
            "hostile_envs:Reach",
            runtime="bwrap",
            environment={"PYTHONPATH": f"{TESTS}:{visible}"},
            probe_dirs=["/home", "/srv", "/mnt", "/var", "/run", str(visible / "base")],
            probe_files=["/etc/shadow", "/etc/passwd", str(secret)],
            sockets=paths,
        ) as env:
            env.reset(seed=0)
            info = env.step(0)[4]
    finally:
        secret.unlink()
    assert info["seen"] == [], info["seen"]
    assert info["read"] == [], info["read"]
    assert set(info["sockets"].values()) <= {"ENOENT", "ECONNREFUSED"}, info["sockets"]
    for listener in listeners:
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody reached the host's listeners


# ------------------------------------------------------------------------------------------
# 8. nothing the container names is imported or run on the host
# ------------------------------------------------------------------------------------------


def test_gymnasium_make_of_the_spec_runs_nothing_the_container_named(tmp_path):
    marker = tmp_path / "spec-ran"
    with shmbench.make("hostile_envs:EvilSpec", marker=str(marker), **BWRAP) as env:
        spec = env.spec
        assert spec.id == "Evil-v0" and spec.kwargs == {"cmd": f"touch {marker}"}
        assert not isinstance(spec.entry_point, str) and spec.additional_wrappers == ()
        # gymnasium.make(spec) asks shmbench for the same remote env: the server gets the
        # spec's kwargs as env keywords (EvilSpec takes none of them) -- the host runs nothing
        with pytest.raises(RemoteEnvError, match="unexpected keyword argument 'cmd'"):
            gymnasium.make(spec)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------
# 9. resource limits
# ------------------------------------------------------------------------------------------


def test_a_fork_bomb_is_stopped_by_the_pids_limit_and_the_host_goes_on():
    with shmbench.make("hostile_envs:ForkBomb", limit=5000, limits={"pids": 64}, **BWRAP) as env:
        env.reset(seed=0)
        info = env.step(0)[4]
        assert info["made"] < 64 and info["failed"] == "EAGAIN", info
        with shmbench.make("CartPole-v1", **BWRAP) as other:  # the host can start another env
            other.reset(seed=0)
            other.step(0)


def test_memory_over_the_limit_gives_a_clear_error():
    how = enforcement()["memory"]
    with shmbench.make("hostile_envs:Hog", megabytes=1024, limits={"memory": "256M"}, **BWRAP) as env:
        env.reset(seed=0)
        if how.startswith("cgroup"):
            with pytest.raises(PeerDied, match="memory limit"):
                env.step(0)
        else:  # RLIMIT_AS: the allocation fails inside the server
            with pytest.raises(RemoteEnvError, match="MemoryError"):
                env.step(0)


def test_the_private_tmp_is_sized():
    with shmbench.make("hostile_envs:FillTmp", megabytes=256, limits={"tmp": "16M"}, **BWRAP) as env:
        env.reset(seed=0)
        info = env.step(0)[4]
    assert info["written_mib"] <= 16 and info["error"] == "ENOSPC", info
    with pytest.raises(ValueError, match="cannot size /tmp"):
        shmbench.make("CartPole-v1", runtime="process", limits={"tmp": "16M"})


@pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning")  # the env's own, re-emitted
def test_no_descendant_of_a_process_runtime_server_survives_close(tmp_path):
    out = tmp_path / "escapee"
    with shmbench.make("hostile_envs:Escapees", runtime="process", out=str(out)) as env:
        env.reset(seed=0)
        pids = list(env.step(0)[4]["pids"])
        assert all(_running(p) for p in pids)
    assert _wait_gone(pids) == [], "a setsid child or a detached writer outlived close()"
    size = out.stat().st_size if out.exists() else 0
    time.sleep(0.3)
    assert (out.stat().st_size if out.exists() else 0) == size


# ------------------------------------------------------------------------------------------
# 10. the smaller findings
# ------------------------------------------------------------------------------------------


def test_vector_observations_that_do_not_fit_are_a_protocol_error():
    with shmbench.make_vec("CartPole-v1", 2, num_workers=1, runtime=HostileImage("vec_obs")) as envs:
        with pytest.raises(ProtocolError, match="do not fit the observation space") as info:
            envs.reset(seed=0)
        assert isinstance(info.value, ValueError)  # what SyncVectorEnv raises for such observations


def test_terminal_escapes_in_remote_texts_never_reach_the_host():
    with shmbench.make("hostile_envs:Shouting", **BWRAP) as env:
        env.reset(seed=0)
        with pytest.raises(RemoteEnvError) as info:
            env.step(0)
        text = str(info.value)
        assert "boom" in text and "\x1b" not in text and "\x07" not in text
        tail = env._worker.process.log_tail()
        assert "red" in tail and "\x1b" not in tail


def test_step_wait_without_step_async_says_so_and_the_env_goes_on():
    with shmbench.make_vec("CartPole-v1", 2, **BWRAP) as envs:
        envs.reset(seed=0)
        with pytest.raises(RequestPending, match="without any prior call to `step_async`"):
            envs.step_wait()
        envs.step(np.zeros(2, np.int64))


def test_a_step_wait_timeout_names_its_own_timeout():
    with shmbench.make_vec("hostile_envs:SlowEcho", 2, **BWRAP) as envs:
        envs.reset(seed=0)
        envs.step_async(np.zeros(2, np.int64))
        with pytest.raises(ChannelTimeout, match="within 0.1 s"):
            envs.step_wait(timeout=0.1)
