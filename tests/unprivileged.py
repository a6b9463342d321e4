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

    repo = Path(package.__file__).resolve().parent.parent
    tests = Path(__file__).resolve().parent
    # everything the script needs, at its own path: the interpreter (a venv and the Python
    # it was made from), and the checkout
    needed = sorted(
        {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, repo, tests)}
        | {os.path.dirname(os.path.realpath(sys.executable))}
    )
    keep = Path("/mnt/shmbench-test-keep")
    keep.mkdir(exist_ok=True)
    steps = [f"mount -t tmpfs -o mode=700 tmpfs {keep}"]
    # a directory the user may not traverse (/root, mode 0700) becomes, in this private
    # mount namespace only, an empty 0755 tmpfs holding just the needed trees, bound back
    for n, blocked in enumerate(_untraversable_ancestors(needed)):
        under = [d for d in needed if d.startswith(blocked + os.sep)]
        for m, d in enumerate(under):
            steps.append(f"mkdir -p {keep}/{n}-{m} && mount --bind {d} {keep}/{n}-{m}")
        steps.append(f"mount -t tmpfs -o mode=755 tmpfs {blocked}")
        for m, d in enumerate(under):
            steps.append(f"mkdir -p {d} && mount --bind {keep}/{n}-{m} {d}")
    ld = os.path.join(os.path.realpath(sys.base_prefix), "lib")
    steps.append(
        f"exec setpriv --reuid={pw.pw_uid} --regid={pw.pw_gid} --clear-groups env -i HOME=/tmp "
        f'PATH=/usr/bin:/bin LANG=C.UTF-8 LD_LIBRARY_PATH={ld} PYTHONPATH={repo}:{tests} {sys.executable} -c "$0"'
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(steps), script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/tmp",
    )


def _untraversable_ancestors(paths: list[str]) -> list[str]:
    """The outermost directories on the way to ``paths`` that others may not enter."""
    out: list[str] = []
    for path in paths:
        parts = Path(path).parts
        for i in range(2, len(parts) + 1):
            d = os.path.join(*parts[:i])
            if any(d == o or d.startswith(o + os.sep) for o in out):
                break
            if not os.stat(d).st_mode & 0o001:
                out.append(d)
                break
    return out
