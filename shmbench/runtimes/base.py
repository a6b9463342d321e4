"""Runtimes: how a server process is started (plain process, bwrap, apptainer) and stopped.

A runtime only builds the command line and environment of one server; the lifecycle around
it -- a pipe on stdin (EOF tells the server its host is gone), its own session (so signals
reach all its processes at once and a terminal's Ctrl-C does not), its log in the channel
directory, the stop sequence CLOSE, wait, terminate, wait, kill -- is the same code for all
of them, :class:`ServerProcess`. So the lifecycle the Apptainer runtime relies on is the
one the bwrap and process runtimes run for real in the tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

__all__ = [
    "CHANNEL_MOUNT",
    "Launch",
    "Runtime",
    "ServerProcess",
    "package_dir",
    "parse_bind",
    "server_command",
    "wait_for_exit",
]

#: where the channel directory appears inside a container
CHANNEL_MOUNT = "/shmbench"

# Runs the server from the shmbench package at argv[1], whatever sys.path holds. `python -m
# shmbench.server` puts the working directory first on sys.path, so a user who installed
# shmbench and works inside a clone of its repository would start the clone's unbuilt
# source tree instead. Only the package itself is pinned (by its location, with
# importlib): the rest of sys.path keeps its order, so user modules named in "module:attr"
# ids resolve exactly as they would on the host.
_SERVER_BOOT = (
    "import importlib.util as u, sys\n"
    "d = sys.argv.pop(1)\n"
    "s = u.spec_from_file_location('shmbench', d + '/__init__.py', submodule_search_locations=[d])\n"
    "m = u.module_from_spec(s)\n"
    "sys.modules['shmbench'] = m\n"
    "s.loader.exec_module(m)\n"
    "from shmbench.server import main\n"
    "sys.exit(main())\n"
)


def package_dir() -> str:
    """The directory of the shmbench package this process imported."""
    import shmbench

    return os.path.dirname(os.path.abspath(shmbench.__file__))


def server_command(python: str, *flags: str, shmbench_dir: str | None = None) -> list[str]:
    """argv that runs ``python FLAGS -m shmbench.server`` with the shmbench package in
    ``shmbench_dir`` (default: the host's own) -- never one the working directory holds."""
    return [python, *flags, "-c", _SERVER_BOOT, shmbench_dir or package_dir()]


def parse_bind(spec: str) -> tuple[str, str, str]:
    """Parse Apptainer's ``src[:dst[:ro|rw]]`` bind syntax into (src, dst, mode)."""
    parts = spec.split(":")
    if not parts[0] or len(parts) > 3:
        raise ValueError(f"bad bind {spec!r}: expected src[:dst[:ro|rw]]")
    src = parts[0]
    dst = parts[1] if len(parts) > 1 and parts[1] else src
    mode = parts[2] if len(parts) > 2 else "rw"
    if mode not in ("ro", "rw"):
        raise ValueError(f"bad bind {spec!r}: mode must be ro or rw")
    if not dst.startswith("/"):
        raise ValueError(f"bad bind {spec!r}: the destination must be absolute")
    if dst == CHANNEL_MOUNT or dst.startswith(CHANNEL_MOUNT + "/"):
        raise ValueError(f"bad bind {spec!r}: {CHANNEL_MOUNT} is reserved for the channel")
    return src, dst, mode


@dataclass
class Launch:
    """What one server needs: where its channel is, where to log, extra environment."""

    session_dir: Path
    channel_name: str  # file name of the channel inside session_dir
    log_path: Path
    name: str  # for messages: "worker 0 (bwrap)"
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def channel_path(self) -> Path:
        return self.session_dir / self.channel_name


class ServerProcess:
    """One running server and everything needed to tell what became of it."""

    def __init__(self, proc: subprocess.Popen, name: str, log_path: Path) -> None:
        self.proc = proc
        self.name = name
        self.log_path = log_path
        self.pid = proc.pid

    def pidfd(self) -> int:
        """A new pidfd for the process: readable once it exits (the channel polls it)."""
        return os.pidfd_open(self.proc.pid)

    def exit_status(self, wait: float = 0.0) -> int | None:
        """Its exit status (negative: killed by that signal), None while it runs."""
        try:
            return self.proc.wait(timeout=wait) if wait else self.proc.poll()
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 20, max_bytes: int = 8192) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                data = f.read()
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def stop(self, grace: float = 2.0, term_timeout: float = 2.0) -> int | None:
        """Wait for a clean exit, then SIGTERM, then SIGKILL (the whole process group)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()  # EOF: the server knows its host is leaving
            except OSError:
                pass
        status = self.exit_status(wait=grace) if grace else self.proc.poll()
        for sig, timeout in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, 5.0)):
            if status is not None:
                break
            self._signal_group(sig)
            status = self.exit_status(wait=timeout)
        return status

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass


class Runtime(ABC):
    """Starts servers. Subclasses build the command line; the lifecycle is shared.

    Args:
        image: what the runtime runs (a SIF, a directory, None for the host).
        binds: extra binds in Apptainer's ``src[:dst[:ro|rw]]`` syntax.
        environment: extra environment variables for the server.
    """

    name: ClassVar[str]
    #: whether servers run isolated from the host (a container)
    isolated: ClassVar[bool] = True

    def __init__(self, image: os.PathLike | str | None = None, binds=(), environment=None) -> None:
        self.image = image
        self.binds = tuple(binds or ())
        for b in self.binds:
            parse_bind(b)
        self.environment = dict(environment or {})

    @classmethod
    @abstractmethod
    def probe(cls) -> tuple[bool, str]:
        """(works here, why or why not), probed once per process."""

    @abstractmethod
    def command(self, launch: Launch) -> tuple[list[str], dict[str, str]]:
        """argv and environment of one server."""

    def start(self, launch: Launch) -> ServerProcess:
        argv, env = self.command(launch)
        with open(launch.log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        return ServerProcess(proc, launch.name, launch.log_path)

    def describe_image(self) -> str:
        return "the host" if self.image is None else str(self.image)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} image={self.describe_image()}>"


def wait_for_exit(pid: int, timeout: float) -> bool:
    """True once ``pid`` is gone (used by tests and gc for processes we did not spawn)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.01)
    return False
