"""The guard: a tiny parent between the host and a server, that limits and reaps.

A plain-process server could leave descendants behind that outlive ``close()``: a child
that calls ``setsid`` escapes the process group the host kills, and a detached writer
keeps running after its parent is gone. A server's limits must also bind everything it
starts, from its first instruction. The guard (``python -I -c GUARD SPEC ARGV...``, stdlib
only) does both before the server exists:

1. joins the server's cgroups (:class:`~shmbench.runtimes.limits.CgroupSet`) and sets its
   rlimits and CPU affinity -- inherited by everything below it;
2. with ``reap``, becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``): every orphan
   below it is reparented to it rather than to init; it starts the server (which dies with
   it: ``PR_SET_PDEATHSIG``), forwards SIGTERM/SIGINT/SIGHUP to it, and when the server
   exits it kills whatever is left below it, reaps it, and exits as the server did (the
   same status, or the same signal);
3. without ``reap`` (bwrap: its PID namespace already takes everything with it) it simply
   becomes the command (``execv``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from shmbench.runtimes.limits import CgroupSet, Limits

__all__ = ["GUARD", "guard_command"]

GUARD = r"""
import ctypes, json, os, resource, signal, sys, time
spec = json.loads(sys.argv[1]); argv = sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)
for path in spec.get("cgroups", ()):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
for name, value in spec.get("rlimits", {}).items():
    resource.setrlimit(getattr(resource, name), (value, value))
if spec.get("cpus"):
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cores[: max(1, min(len(cores), spec["cpus"]))])
if not spec.get("reap"):
    os.execv(argv[0], argv)
libc.prctl(36, 1, 0, 0, 0)                          # PR_SET_CHILD_SUBREAPER
child = os.fork()
if child == 0:
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)          # PR_SET_PDEATHSIG: die with the guard
    os.execv(argv[0], argv)
def forward(sig, frame):
    try:
        os.kill(child, sig)
    except ProcessLookupError:
        pass
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, forward)
while True:
    pid, status = os.waitpid(child, 0)
    if pid == child:
        break
def children():
    out = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    left = children()
    if not left:
        break
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    time.sleep(0.01)
if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    if sig not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def guard_command(
    argv: Sequence[str],
    *,
    reap: bool,
    limits: Limits | None = None,
    cgroups: CgroupSet | None = None,
    python: str | None = None,
) -> list[str]:
    """``argv`` started through the guard: limited by ``limits`` (the cgroups when there are
    some, rlimits and affinity for what they do not cover) and, with ``reap``, reaped."""
    spec: dict = {"reap": reap}
    if cgroups is not None:
        spec["cgroups"] = cgroups.procs
    if limits:
        rlimits = {}
        if limits.memory and cgroups is None:
            rlimits["RLIMIT_AS"] = limits.memory
        if limits.pids and cgroups is None:
            rlimits["RLIMIT_NPROC"] = limits.pids
        spec["rlimits"] = rlimits
        if limits.cpus and cgroups is None:
            spec["cpus"] = max(1, round(limits.cpus))
    return [python or sys.executable, "-I", "-c", GUARD, json.dumps(spec), *argv]
