"""shmbench.server: ``python -m shmbench.server`` as a program, and which shmbench it runs.

The server's request handling is exercised through the proxies (test_env.py, test_vector.py);
here it is the program: its usage and exit statuses, its answers to the bare protocol, and the
rule that the server imports the host's own shmbench whatever the working directory holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest_images import REPO

from shmbench.transport.session import Session
from shmbench.wire.protocol import Opcode, Status


def run_server(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shmbench.server", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_usage_without_a_channel():
    env = {k: v for k, v in os.environ.items() if k != "SHMBENCH_CHANNEL"}
    proc = run_server(env=env)
    assert proc.returncode == 2
    assert "usage: python -m shmbench.server CHANNEL_FILE" in proc.stderr


def test_a_channel_that_cannot_be_attached(tmp_path):
    proc = run_server(str(tmp_path / "missing.chan"))
    assert proc.returncode == 2
    assert "cannot attach to" in proc.stderr and "missing.chan" in proc.stderr


def _serve(session: Session, name: str = "w0") -> tuple[object, subprocess.Popen]:
    channel = session.create_channel(name)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmbench.server", str(channel.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return channel, proc


def test_ping_echo_close_and_exit_status():
    with Session() as session:
        channel, proc = _serve(session)
        try:
            assert bytes(channel.call(bytes((Opcode.PING, 0)), timeout=60)) == bytes((Status.OK,))
            assert (
                bytes(channel.call(bytes((Opcode.ECHO, 0)) + b"payload", timeout=10))
                == bytes((Status.OK,)) + b"payload"
            )
            assert bytes(channel.call(bytes((Opcode.CLOSE, 0)), timeout=10)) == bytes((Status.OK,))
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
            proc.communicate(timeout=10)
            channel.close()
            channel.unlink()


def test_a_protocol_violation_ends_the_server_with_status_3():
    with Session() as session:
        channel, proc = _serve(session)
        try:
            channel.send(bytes((200, 0)), timeout=60)  # no such opcode
            assert proc.wait(timeout=60) == 3
            assert "protocol error from the host: unknown opcode 200" in proc.stderr.read().decode()
        finally:
            proc.kill()
            proc.communicate(timeout=10)
            channel.close()
            channel.unlink()


# ------------------------------------------------------------------------------------------
# the server runs the host's shmbench, from any working directory
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_make_from_inside_an_unbuilt_checkout_with_a_non_editable_install(tmp_path, shmbench_wheel):
    """A user who installed shmbench (not editable) and works inside a clone of its repository.

    The clone's ``shmbench/`` is a source tree without a built extension, and it is first on
    the server's sys.path (``python -m`` puts the working directory there). The server must
    import the host's shmbench anyway, and a ``module:attr`` id from the user's directory must
    still resolve as it does on the host.
    """
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-compile",
            "--target",
            str(site),
            str(shmbench_wheel),
        ],
        check=True,
        timeout=300,
    )
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "shmbench", clone / "shmbench", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (clone / "scripts").mkdir()
    (clone / "scripts" / "usermod.py").write_text(
        textwrap.dedent("""
        import gymnasium
        class UserEnv(gymnasium.Wrapper):
            def __init__(self):
                super().__init__(gymnasium.make("CartPole-v1"))
    """)
    )
    script = clone / "scripts" / "run.py"  # its directory holds the user's module
    script.write_text(
        textwrap.dedent("""
        import os
        import shmbench
        assert shmbench.__file__.startswith(os.environ["SITE"]), shmbench.__file__
        for env_id in ("CartPole-v1", "usermod:UserEnv"):
            with shmbench.make(env_id, runtime="process") as env:
                obs, _ = env.reset(seed=0)
                env.step(0)
                print(env_id, "ok", env.server_info["shmbench"])
    """)
    )
    env = dict(os.environ, PYTHONPATH=str(site), SITE=str(site))
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=clone, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CartPole-v1 ok" in proc.stdout and "usermod:UserEnv ok" in proc.stdout
    # and the clone really is unimportable: that is what the server had to avoid
    broken = subprocess.run(
        [sys.executable, "-c", "import shmbench.transport.channel"],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert broken.returncode != 0 and "is not built" in broken.stderr
