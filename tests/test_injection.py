"""The host's shmbench serving an image (serve_from="host", the default) and an image's own.

Real images (recipes/light.def: Python, numpy and gymnasium, no shmbench;
recipes/bookworm-numpy124.def: this tree's shmbench inside), real bwrap sandboxes, and a
real older shmbench: the package of commit ``OLD_COMMIT`` (the last one before the protocol
version entered the handshake), with its C extension compiled from that commit's sources.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from conftest import TESTS
from conftest_images import REPO
from helpers import assert_same
from run_helpers import shmbench as shmbench_cli
from test_env import actions_for, run_trajectory

import shmbench
from shmbench.errors import PeerDied, ProtocolError
from shmbench.runtimes.base import server_command

#: the commit before c02994a (which added PROTOCOL_VERSION to the handshake): its server
#: answers MAKE without a protocol field, i.e. protocol 1
OLD_COMMIT = "557d32d"
#: where pip (as root, --break-system-packages) installs shmbench in the bookworm image
IMAGE_SITE = "/usr/local/lib/python3.11/dist-packages"


def _bwrap(image: Path, **kwargs):
    from conftest import runtime_kwargs

    runtime_kwargs("bwrap")  # skips, with the reason, where bwrap cannot run
    from shmbench.runtimes.bwrap import BwrapRuntime

    return BwrapRuntime(image, **kwargs)


def test_a_python_that_cannot_load_the_extension_is_told_so(tmp_path: Path) -> None:
    """The injected boot checks the image's interpreter against the C extension's file name
    (what the import system matches) before importing anything: a real interpreter, a
    package whose extension was built for another Python."""
    fake = tmp_path / "shmbench"
    (fake / "_ring").mkdir(parents=True)
    (fake / "__init__.py").write_text("raise SystemExit('must not be imported')\n")
    (fake / "_ring" / "_ring.cpython-399-x86_64-linux-gnu.so").write_bytes(b"")
    out = subprocess.run(
        server_command(sys.executable, shmbench_dir=str(fake), fallbacks=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 1
    assert f"this image's Python {sys.version.split()[0]} cannot load the host's shmbench" in out.stderr
    assert "_ring.cpython-399-x86_64-linux-gnu.so" in out.stderr and "serve_from='image'" in out.stderr


STABLE_ABI_HOST = """
import importlib, sys
# the stable-ABI build stands in for the full one on this side only; the server (a plain
# process) imports the full build: both ends of one channel, two builds of _ring.c
sys.modules["shmbench._ring._ring"] = importlib.import_module("shmbench._ring._ring_abi3")
import gymnasium, numpy as np, shmbench
from shmbench import _ring
assert _ring.Channel.__module__ == "shmbench._ring", _ring.Channel.__module__
assert sys.modules["shmbench._ring._ring"].__name__.endswith("_abi3")
ref = gymnasium.make("CartPole-v1")
with shmbench.make("CartPole-v1", runtime="process") as env:
    a, b = env.reset(seed=1), ref.reset(seed=1)
    assert np.array_equal(a[0], b[0])
    for t in range(300):
        x, y = env.step(t % 2), ref.step(t % 2)
        assert np.array_equal(x[0], y[0]) and x[1:4] == y[1:4], (x, y)
        if x[2] or x[3]:
            env.reset(); ref.reset()
sync = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make("CartPole-v1")] * 4)
with shmbench.make_vec("CartPole-v1", 4, num_workers=2, runtime="process") as envs:
    assert np.array_equal(envs.reset(seed=3)[0], sync.reset(seed=3)[0])
    for t in range(100):
        acts = np.array([t % 2, 1, 0, (t // 3) % 2])
        got, want = envs.step(acts), sync.step(acts)
        assert all(np.array_equal(g, w) for g, w in zip(got[:4], want[:4]))
with shmbench.make_vec("CartPole-v1", 4, num_workers=2, batch_size=2, runtime="process") as pool:
    pool.reset(seed=0)
    pool.send(np.zeros(4, dtype=np.int64))
    done = sorted(int(i) for _ in range(2) for i in pool.recv()[-1])
    assert done == [0, 1, 2, 3], done
print("ok")
"""


def test_the_stable_abi_build_speaks_with_the_full_one() -> None:
    """The host on shmbench._ring._ring_abi3 (the build an injected server loads where the
    image's Python is not the host's), its servers on the full build: one channel, bit-exact
    steps, vector batches (fill_rows, store_step) and the pool's wait_any."""
    out = subprocess.run([sys.executable, "-c", STABLE_ABI_HOST], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


@pytest.mark.slow
def test_an_image_whose_python_is_not_the_hosts_is_served_by_the_stable_abi_build(tmp_path: Path) -> None:
    """Debian 13 (Python 3.13, the host runs 3.11), no shmbench inside: the host's package,
    bound in, loads _ring_abi3 there; bit-exact against native."""
    from conftest_images import require_tool

    from shmbench.images.build import build_cached

    if os.geteuid() != 0:
        pytest.skip("building without Apptainer needs root (debootstrap)")
    for tool in ("debootstrap", "mksquashfs", "siftool"):
        require_tool(tool)
    image = build_cached(TESTS / "data" / "recipes" / "trixie-python313.def")
    ref = gymnasium.make("CartPole-v1")
    actions = actions_for(ref.action_space, 200, seed=7)
    expected = run_trajectory(ref, actions, seed=6)
    with shmbench.make("CartPole-v1", runtime=_bwrap(image)) as env:
        assert env.server_info["python"].startswith("3.13.")
        assert_same(run_trajectory(env, actions, seed=6), expected)
    shell = shmbench_cli(
        "shell", str(image), "--runtime", "bwrap", "-c", "ls /.shmbench-host/shmbench/_ring/ 2>&1; python3 -V"
    )
    assert "No such file" in shell.stdout and "Python 3.13" in shell.stdout  # a shell gets no injection


@pytest.mark.slow
def test_an_image_without_shmbench_is_served_by_the_host(light_sif: Path) -> None:
    shell = shmbench_cli("shell", str(light_sif), "--runtime", "bwrap", "-c", "python3 -c 'import shmbench'")
    assert shell.returncode != 0 and "No module named 'shmbench'" in shell.stderr  # nothing of it inside
    ref = gymnasium.make("CartPole-v1")
    actions = actions_for(ref.action_space, 200, seed=5)
    expected = run_trajectory(ref, actions, seed=4)
    with shmbench.make("CartPole-v1", runtime=_bwrap(light_sif)) as env:
        assert env.server_info["shmbench"] == shmbench.__version__
        assert env.server_info["numpy"].startswith("2.2.")  # the image's numpy, not the host's
        assert_same(run_trajectory(env, actions, seed=4), expected)
    from gymnasium.vector import SyncVectorEnv

    sync = SyncVectorEnv([lambda: gymnasium.make("CartPole-v1")] * 4)
    with shmbench.make_vec("CartPole-v1", 4, num_workers=2, runtime=_bwrap(light_sif)) as envs:
        assert_same(envs.reset(seed=3), sync.reset(seed=3))
        for t in range(100):
            a = np.array([t % 2, 1, 0, (t // 3) % 2])
            assert_same(envs.step(a), sync.step(a))
    with pytest.raises(PeerDied, match="this image has no shmbench server of its own") as info:
        shmbench.make("CartPole-v1", runtime=_bwrap(light_sif, serve_from="image"))
    assert "serve_from='host' (the default)" in str(info.value)


@pytest.fixture(scope="session")
def old_shmbench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shmbench package of OLD_COMMIT, its C extension built in place."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the older shmbench is built from this repository's history")
    probe = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"commit {OLD_COMMIT} is not in this clone (a shallow clone?)")
    root = tmp_path_factory.mktemp("old-shmbench")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", OLD_COMMIT, "shmbench", "bench", "setup.py", "pyproject.toml"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=root,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return root / "shmbench"


@pytest.mark.slow
def test_an_image_with_an_older_shmbench(bookworm_sif: Path, old_shmbench: Path) -> None:
    """The bookworm image with OLD_COMMIT's package bound over its own shmbench (the files
    an image built from that commit holds): served by the host it works, bit for bit;
    served from its own shmbench the handshake refuses it, naming both versions."""
    older = [f"{old_shmbench}:{IMAGE_SITE}/shmbench:ro"]
    ref = gymnasium.make("CartPole-v1")
    actions = actions_for(ref.action_space, 100, seed=1)
    expected = run_trajectory(ref, actions, seed=0)
    with shmbench.make("CartPole-v1", runtime=_bwrap(bookworm_sif, binds=older)) as env:
        assert env.server_info["protocol"] == 2
        assert_same(run_trajectory(env, actions, seed=0), expected)
    with pytest.raises(ProtocolError) as info:
        shmbench.make("CartPole-v1", runtime=_bwrap(bookworm_sif, binds=older, serve_from="image"))
    message = str(info.value)
    assert "speaks shmbench protocol 1" in message and "this host protocol 2" in message
    assert "rebuild the image" in message
    # the image's own shmbench (this tree's) agrees with the host
    with shmbench.make("CartPole-v1", runtime=_bwrap(bookworm_sif, serve_from="image")) as env:
        assert env.server_info["protocol"] == 2
        assert_same(run_trajectory(env, actions, seed=0), expected)
