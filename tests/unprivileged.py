"""Run a Python script as an unprivileged user, with this interpreter and this checkout.

When the suite runs as root, the script runs as the system user ``shmbench-test`` (created
on first use): a private mount namespace gives that user views of this interpreter's prefix
and of the checkout (which may live under /root, mode 0700), and ``setpriv`` drops to it for
good. When the suite already runs unprivileged, the script simply runs.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

__all__ = ["run_unprivileged", "unprivileged_uid"]

USER = "shmbench-test"


def _test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
        return pwd.getpwnam(USER)


def unprivileged_uid() -> int:
    return _test_user().pw_uid


def run_unprivileged(script: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``script`` (Python source) unprivileged; its CompletedProcess (text output)."""
    if os.geteuid() != 0:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    pw = _test_user()
    import shmbench as package

    prefix = Path(os.path.realpath(sys.prefix))
    repo = Path(package.__file__).resolve().parent.parent
    tests = Path(__file__).resolve().parent
    mnt, mnt_repo = Path("/mnt/shmbench-test-python"), Path("/mnt/shmbench-test-repo")
    mnt.mkdir(exist_ok=True)
    mnt_repo.mkdir(exist_ok=True)
    # the interpreter as the prefix sees it (inside a venv, sys.executable is a link into the
    # venv's bin, which resolves outside sys.prefix: keep the venv's own path)
    exe = Path(sys.executable)
    rel = exe.relative_to(sys.prefix) if exe.is_relative_to(sys.prefix) else exe.resolve().relative_to(prefix)
    rel_tests = tests.relative_to(repo)
    cmd = (
        f"mount --bind {prefix} {mnt} && mount --bind {repo} {mnt_repo} && "
        f"exec setpriv --reuid={pw.pw_uid} --regid={pw.pw_gid} --clear-groups env -i HOME=/tmp "
        f"PATH=/usr/bin:/bin LANG=C.UTF-8 LD_LIBRARY_PATH={mnt / 'lib'} "
        f'PYTHONPATH={mnt_repo}:{mnt_repo / rel_tests} {mnt / rel} -c "$0"'
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", cmd, script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/tmp",
    )
