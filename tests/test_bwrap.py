"""The bwrap runtime for real: isolation, crashes, host death, an unprivileged user, and
envs from images with conflicting dependencies stepped side by side."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from conftest import TESTS, runtime_kwargs
from helpers import assert_same
from test_env import actions_for, run_trajectory, server_pid
from unprivileged import run_unprivileged, unprivileged_uid

import shmbench
from shmbench.errors import PeerDied
from shmbench.runtimes.base import Launch, server_command
from shmbench.runtimes.bwrap import BwrapRuntime
from shmbench.transport.session import channel_base, gc

pytestmark = pytest.mark.usefixtures("bwrap_ok")


@pytest.fixture
def bwrap_ok():
    runtime_kwargs("bwrap")  # skips, with the reason, where bwrap cannot run


def test_argv_isolates_and_binds_no_host_directory(tmp_path):
    rt = BwrapRuntime(binds=[f"{tmp_path}:/data:ro"], environment={"A": "1"})
    launch = Launch(
        name="w0", fds={"SHMBENCH_CHANNEL_FD": 7, "SHMBENCH_SLAB_FD": 8}, log_fd=-1, log_path=tmp_path / "w0.log"
    )
    argv, env = rt.command(launch)
    joined = " ".join(argv)
    for flag in (
        "--die-with-parent",
        "--new-session",
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-net",
        "--unshare-uts",
        "--clearenv",
        "--dev /dev",
        "--proc /proc",
        "--tmpfs /tmp",
        f"--ro-bind {tmp_path} /data",
        "--setenv SHMBENCH_CHANNEL_FD 7",
        "--setenv SHMBENCH_SLAB_FD 8",
        "--setenv A 1",
    ):
        assert flag in joined, flag
    # the channel and slab are inherited descriptors: no host directory is writable
    assert "--bind" not in argv and "/shmbench" not in argv
    # the host's own shmbench.server, whatever the working directory holds (server_command)
    assert argv[argv.index("--") + 1 :] == server_command(rt.python, "-s")
    assert "--bind / /" not in joined and "--ro-bind /dev " not in joined
    assert set(env) <= {"PATH", "LANG"}


def test_sandbox_sees_only_its_own_world():
    with shmbench.make("envs:ProbeEnv", **runtime_kwargs("bwrap")) as env:
        env.reset(seed=0)
        info = env.step(0)[4]
    assert info["hostname"] == "shmbench"
    assert info["interfaces"] == ["lo"], "a private, empty network namespace"
    assert info["pid"] <= 3, "a private PID namespace"
    assert info["shmbench"] is None, "no host directory is bound: the channel is an inherited descriptor"
    assert not info["root_writable"]
    # a clean environment: ours, plus what the server's own imports set (gymnasium sets
    # PYGAME_HIDE_SUPPORT_PROMPT); nothing of the host's
    assert set(info["env"]) <= {
        "PATH",
        "HOME",
        "LANG",
        "PYTHONPATH",
        "SHMBENCH_CHANNEL_FD",
        "SHMBENCH_SLAB_FD",
        "USER",
        "LOGNAME",
        "PWD",
        "LC_CTYPE",
        "PYGAME_HIDE_SUPPORT_PROMPT",
    }
    assert not set(info["env"]) & {"SHMBENCH_CHANNEL_DIR", "PYTEST_CURRENT_TEST"}


def test_trajectory_equals_process_and_native():
    ref = gymnasium.make("Pendulum-v1")
    actions = actions_for(ref.action_space, 1000, seed=2)
    expected = run_trajectory(ref, actions, seed=8)
    results = {}
    for name in ("process", "bwrap"):
        with shmbench.make("Pendulum-v1", **runtime_kwargs(name)) as env:
            results[name] = run_trajectory(env, actions, seed=8)
    assert_same(results["bwrap"], results["process"])
    assert_same(results["bwrap"], expected)


def test_kill_of_the_sandboxed_server_gives_peer_died_and_leaves_nothing():
    base = channel_base()
    env = shmbench.make("CartPole-v1", **runtime_kwargs("bwrap"))
    session = env._owned.session.path
    try:
        env.reset(seed=0)
        os.kill(server_pid(env), signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(PeerDied):
            env.step(0)
        assert time.monotonic() - t0 < 1.5
    finally:
        env.close()
    assert not session.exists() and session.name not in os.listdir(base)


HOST_SCRIPT = """
import os, sys, time, shmbench
sys.path.insert(0, {tests!r})
from test_env import server_pid
env = shmbench.make("CartPole-v1", runtime={runtime!r}, **{extra!r})
env.reset(seed=0)
print(env._owned.session.path, server_pid(env), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("runtime_name", ["bwrap", "process"])
def test_host_death_takes_the_server_with_it(runtime_name):
    kw = runtime_kwargs(runtime_name)
    extra = {k: v for k, v in kw.items() if k != "runtime"}
    script = HOST_SCRIPT.format(tests=str(TESTS), runtime=runtime_name, extra=extra)
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = host.stdout.readline().split()
        assert line, "the host script did not start"
        session, server = Path(line[0]), int(line[1])
        host.kill()
        host.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(server):
            time.sleep(0.02)
        assert not _alive(server), "the server outlived its host"
        # the channel and slab were sealed memory: the kernel freed them with the last
        # process; the host-only session (its lock and logs) is reclaimable by its free lock
        assert session in gc(min_age=0)
        assert not session.exists()
    finally:
        host.kill()
        host.wait()
        host.stdout.close()
        gc(min_age=0)  # a failed assertion above must not also fail as a leak


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before open, or between open and read
        return False


USER_SCRIPT = """
import os, numpy as np, gymnasium, shmbench
ref = gymnasium.make("CartPole-v1")
extra = {"environment": {"PYTHONPATH": os.environ["PYTHONPATH"]}} if "PYTHONPATH" in os.environ else {}
with shmbench.make("CartPole-v1", runtime="bwrap", **extra) as env:
    a = env.reset(seed=4)[0]; b = ref.reset(seed=4)[0]
    assert a.tobytes() == b.tobytes()
    for t in range(300):
        x, y = env.step(t % 2), ref.step(t % 2)
        assert x[0].tobytes() == y[0].tobytes() and x[1:4] == y[1:4]
        if x[2] or x[3]:
            env.reset(); ref.reset()
    print("uid", os.getuid(), "ok", env.server_info["pid"])
"""


def test_bwrap_path_as_an_unprivileged_user():
    out = run_unprivileged(USER_SCRIPT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith(f"uid {os.getuid() if os.geteuid() else unprivileged_uid()} ok"), out.stdout
    if os.geteuid() == 0:
        base = Path(f"/dev/shm/shmbench-{unprivileged_uid()}")
        left = os.listdir(base) if base.exists() else []
        assert left == [], f"the unprivileged run left {left} in {base}"
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# conflicting dependencies, for real: images built from recipes with their own numpy
# ------------------------------------------------------------------------------------------


def _image_kwargs(image: Path) -> dict:
    return {
        "runtime": "bwrap",
        "image": str(image),
        "binds": [f"{TESTS}:/tests:ro"],
        "environment": {"PYTHONPATH": "/tests"},
    }


@pytest.mark.slow
def test_numpy_124_image_runs_beside_a_numpy_2_host(bookworm_sif):
    assert np.lib.NumpyVersion(np.__version__) >= "2.0.0"
    ref = gymnasium.make("CartPole-v1")
    actions = actions_for(ref.action_space, 1000, seed=6)
    expected = run_trajectory(ref, actions, seed=1)
    with shmbench.make("CartPole-v1", **_image_kwargs(bookworm_sif)) as env:
        assert env.server_info["numpy"].startswith("1.24."), env.server_info
        got = run_trajectory(env, actions, seed=1)
    assert_same(got, expected)
    with shmbench.make("envs:ProbeEnv", **_image_kwargs(bookworm_sif)) as env:
        env.reset(seed=0)
        assert env.step(0)[4]["numpy"].startswith("1.24.")


@pytest.mark.slow
def test_two_images_side_by_side_in_one_loop(bookworm_sif, light_sif):
    # CartPole computes with the math module, so its trajectory does not depend on the numpy
    # version; Pendulum's does (numpy's vectorised sin/cos changed between 1.24, 2.2, 2.4), so
    # it could not be compared with the host's native run bit for bit
    ref = gymnasium.make("CartPole-v1")
    actions = actions_for(ref.action_space, 300, seed=3)
    expected = run_trajectory(ref, actions, seed=2)
    with (
        shmbench.make("CartPole-v1", **_image_kwargs(bookworm_sif)) as old,
        shmbench.make("CartPole-v1", **_image_kwargs(light_sif)) as new,
    ):
        versions = {old.server_info["numpy"][:4], new.server_info["numpy"][:3], np.__version__[:3]}
        assert old.server_info["numpy"].startswith("1.24.") and new.server_info["numpy"].startswith("2.2.")
        assert len(versions) == 3, versions
        trace_old, trace_new = [old.reset(seed=2)], [new.reset(seed=2)]
        episode = 0
        for a in actions:  # one loop, both envs each step
            s_old, s_new = old.step(a), new.step(a)
            trace_old.append(s_old)
            trace_new.append(s_new)
            if s_old[2] or s_old[3]:
                episode += 1
                seed = 2 + episode if episode % 2 else None
                trace_old.append(old.reset(seed=seed))
                trace_new.append(new.reset(seed=seed))
    assert_same(trace_old, expected)
    assert_same(trace_new, expected)


@pytest.mark.slow
def test_vector_env_from_an_image(bookworm_sif):
    from gymnasium.vector import SyncVectorEnv

    ref = SyncVectorEnv([lambda: gymnasium.make("CartPole-v1")] * 4)
    with shmbench.make_vec("CartPole-v1", 4, num_workers=2, **_image_kwargs(bookworm_sif)) as envs:
        assert_same(envs.reset(seed=3), ref.reset(seed=3))
        for t in range(200):
            a = np.array([t % 2, 1, 0, (t // 3) % 2])
            assert_same(envs.step(a), ref.step(a))
