"""Hostile envs: code a hostile image would run inside its server, attacking from there.

Each env does its attack in ``step`` (or ``close``) and reports what it managed in the info
dict, so that tests/test_hostile.py can assert both sides: what the container could do, and
that the host survived it. They run inside the real server, in a real bwrap sandbox (or a
plain process where the test says so); nothing here is a test double.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import time

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec


class _Base(gymnasium.Env):
    metadata = {"render_modes": []}
    observation_space = spaces.Box(-1e9, 1e9, (1,), np.float64)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1), {}

    def _reply(self, info: dict):
        return np.zeros(1), 0.0, False, False, info


def _errno(fn) -> str:
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "OK"


def _can_create(directory: str) -> bool:
    path = os.path.join(directory, f".hostile-{os.getpid()}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(path)
    return True


class Reach(_Base):
    """What of the host the sandbox can see, write and connect to; what it can do to its
    shared memory (truncate, grow, punch holes) and to the host's logs."""

    def __init__(self, probe_dirs=(), probe_files=(), sockets=(), write_dirs=()):
        self.probe_dirs, self.probe_files = list(probe_dirs), list(probe_files)
        self.sockets, self.write_dirs = list(sockets), list(write_dirs)

    def step(self, action):
        chan = int(os.environ["SHMBENCH_CHANNEL_FD"])
        slab = int(os.environ["SHMBENCH_SLAB_FD"])
        size = os.fstat(chan).st_size
        info = {
            "shmbench_dir": os.path.exists("/shmbench"),
            "seen": [p for p in self.probe_dirs if os.path.exists(p) and os.listdir(p)],
            "read": [p for p in self.probe_files if os.access(p, os.R_OK)],
            "written": [d for d in ["/", "/usr", "/etc", "/tmp", *self.write_dirs] if _can_create(d)],
            "truncate_channel": _errno(lambda: os.ftruncate(chan, 0)),
            "grow_channel": _errno(lambda: os.ftruncate(chan, size * 2)),
            "truncate_slab": _errno(lambda: os.ftruncate(slab, 0)),
            "size_after": os.fstat(chan).st_size,
            "sockets": {},
        }
        for path in self.sockets:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                s.sendall(b"hello from the sandbox")
                info["sockets"][path] = "connected"
            except OSError as exc:
                info["sockets"][path] = errno.errorcode.get(exc.errno or 0, str(exc))
            finally:
                s.close()
        return self._reply(info)


class PunchHoles(_Base):
    """Frees the pages of its shared memory under the host's mapping (fallocate punch hole):
    the host must read zeros, never crash."""

    observation_space = spaces.Box(0, 255, (1 << 16,), np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.full(1 << 16, 7, np.uint8), {}

    def step(self, action):
        libc = ctypes.CDLL(None, use_errno=True)
        results = []
        for name in ("SHMBENCH_SLAB_FD", "SHMBENCH_CHANNEL_FD"):
            fd = int(os.environ[name])
            size = os.fstat(fd).st_size
            # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE over everything but the first page
            rc = libc.fallocate(fd, 0x02 | 0x01, ctypes.c_long(4096), ctypes.c_long(size - 4096))
            results.append(rc)
        return np.full(1 << 16, 9, np.uint8), 0.0, False, False, {"punched": results}


class Stop(_Base):
    """Stops its own server (SIGSTOP): frozen, not dead."""

    def step(self, action):
        os.kill(os.getpid(), signal.SIGSTOP)
        return self._reply({})


class HoldGil(_Base):
    """A legitimately long step: C code that holds the GIL for ``seconds``."""

    def __init__(self, seconds=3):
        self.seconds = seconds

    def step(self, action):
        ctypes.PyDLL(None).sleep(int(self.seconds))  # PyDLL: the GIL stays held
        return self._reply({"slept": self.seconds})


class HangingClose(_Base):
    """An env whose close() never returns."""

    def close(self):
        time.sleep(3600)


class SlowEcho(_Base):
    """Steps slowly and answers with the action it got, so the order of replies shows."""

    def step(self, action):
        time.sleep(0.4)
        return np.array([float(action)]), 0.0, False, False, {}


class Shouting(_Base):
    """Raises with terminal escape sequences in its message (and prints them)."""

    def step(self, action):
        print("\x1b]0;owned\x07\x1b[2J\x1b[31mred\x1b[0m", flush=True)
        raise ValueError("\x1b]0;owned\x07\x1b[2Jboom\x1b[0m")


class EvilSpec(_Base):
    """Reports a spec whose entry point and wrappers name host code to run."""

    def __init__(self, marker="/tmp/shmbench-evil-spec"):
        self.spec = EnvSpec(
            "Evil-v0", entry_point="subprocess:getoutput", kwargs={"cmd": f"touch {marker}"}, max_episode_steps=5
        )


class Flood(_Base):
    """Prints without end: the host's log must stay capped, the host responsive."""

    def __init__(self, megabytes=64):
        self.megabytes = megabytes

    def step(self, action):
        line = b"x" * 1023 + b"\n"
        for _ in range(self.megabytes * 1024):
            os.write(1, line)
        return self._reply({"printed_mib": self.megabytes})


class ForkBomb(_Base):
    """Forks sleeping children until fork fails or ``limit`` is reached."""

    def __init__(self, limit=2000):
        self.limit = limit

    def step(self, action):
        made = 0
        failed = None
        for _ in range(self.limit):
            try:
                pid = os.fork()
            except OSError as exc:
                failed = errno.errorcode.get(exc.errno or 0, str(exc))
                break
            if pid == 0:
                time.sleep(3600)
                os._exit(0)
            made += 1
        return self._reply({"made": made, "failed": failed})


class Hog(_Base):
    """Allocates and touches ``megabytes`` of memory."""

    def __init__(self, megabytes=1024):
        self.megabytes = megabytes

    def step(self, action):
        blocks = []
        for _ in range(self.megabytes // 64):
            b = bytearray(64 << 20)
            b[::4096] = b"\x01" * len(b[::4096])
            blocks.append(b)
        return self._reply({"allocated_mib": len(blocks) * 64})


class FillTmp(_Base):
    """Writes into its private /tmp until the disk says no."""

    def __init__(self, megabytes=256):
        self.megabytes = megabytes

    def step(self, action):
        written = 0
        chunk = b"\0" * (1 << 20)
        error = None
        with open("/tmp/fill", "wb", buffering=0) as f:
            for _ in range(self.megabytes):
                try:
                    f.write(chunk)
                except OSError as exc:
                    error = errno.errorcode.get(exc.errno or 0, str(exc))
                    break
                written += 1
        return self._reply({"written_mib": written, "error": error})


class Escapees(_Base):
    """Starts a child in its own session (setsid) and a detached writer; reports their pids."""

    def __init__(self, out="/tmp/escapee"):
        self.out = out

    def step(self, action):
        sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
        writer = subprocess.Popen(
            [sys.executable, "-c", f"import time\nwhile True:\n open({self.out!r}, 'a').write('x')\n time.sleep(0.05)"],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self._reply({"pids": [sleeper.pid, writer.pid]})
