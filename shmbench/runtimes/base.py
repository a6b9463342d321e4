"""Runtimes: how a server process is started (plain process, bwrap, apptainer) and stopped.

A runtime only builds the command line and environment of one server; the lifecycle around
it is the same code for all of them, :class:`ServerProcess`:

* the server's channel and slab are inherited descriptors (``$SHMBENCH_CHANNEL_FD``,
  ``$SHMBENCH_SLAB_FD``): sealed memory, nothing in any directory the container sees;
* stdin is a pipe whose other end the host holds (EOF tells the server its host is gone);
* stdout and stderr are one pipe that the host drains (:class:`OutputPump`) into the log
  it owns in its session directory, up to a cap, keeping the last lines in memory for the
  error messages -- the server never sees the log file, so it can neither swap it nor
  fill the disk with it;
* its own session (signals reach all its processes at once, a terminal's Ctrl-C does not);
* the stop sequence: CLOSE, wait, terminate, wait, kill, which the proxies run for all
  their servers at once (:func:`stop_all`).

So the lifecycle the Apptainer runtime relies on is the one the bwrap and process runtimes
run for real in the tests.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import signal
import subprocess
import termios
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from shmbench.errors import sanitize
from shmbench.runtimes.limits import CgroupSet, Limits
from shmbench.transport.session import pid_alive

__all__ = [
    "LOG_CAP",
    "Launch",
    "OutputPump",
    "Runtime",
    "ServerProcess",
    "INJECT_ROOT",
    "SERVE_FROM",
    "image_server_command",
    "injection",
    "package_dir",
    "parse_bind",
    "serve_from_default",
    "server_command",
    "stop_all",
    "wait_for_exit",
]

#: bytes of a server's output kept in its log file; the rest is dropped (the tail stays in memory)
LOG_CAP = 16 << 20
_TAIL = 16 << 10

# Runs the server from the shmbench package at argv[1], whatever sys.path holds. `python -m
# shmbench.server` puts the working directory first on sys.path, so a user who installed
# shmbench and works inside a clone of its repository would start the clone's unbuilt
# source tree instead. Only the package itself is pinned (by its location, with
# importlib): the rest of sys.path keeps its order, so user modules named in "module:attr"
# ids resolve exactly as they would on the host. argv[2], when not empty, is a directory
# of fallbacks appended to sys.path (after the image's own packages); before anything is
# imported the interpreter is checked against the C extensions beside the package (the build
# for the host's Python, or the stable-ABI one for any CPython >= 3.11), so an image whose
# Python can load neither says so in one line instead of an ImportError.
_SERVER_BOOT = (
    "import importlib.machinery as ma, importlib.util as u, os, sys\n"
    "d = sys.argv.pop(1)\n"
    "x = sys.argv.pop(1)\n"
    "if x:\n"
    "    sys.path.append(x)\n"
    "    so = [n for n in os.listdir(d + '/_ring') if n.startswith('_ring') and n.endswith('.so')]\n"
    "    full = '_ring' + ma.EXTENSION_SUFFIXES[0] in so\n"
    "    if not full and not (sys.version_info >= (3, 11) and '_ring_abi3.abi3.so' in so):\n"
    "        sys.exit('shmbench: this image\\'s Python %s cannot load the host\\'s shmbench (C extension %s); "
    "serve it from its own shmbench (serve_from=\\'image\\', SHMBENCH_SERVE_FROM=image) or run it from a host "
    "whose Python matches' % (sys.version.split()[0], ', '.join(so) or 'missing'))\n"
    "s = u.spec_from_file_location('shmbench', d + '/__init__.py', submodule_search_locations=[d])\n"
    "m = u.module_from_spec(s)\n"
    "sys.modules['shmbench'] = m\n"
    "s.loader.exec_module(m)\n"
    "from shmbench.server import main\n"
    "sys.exit(main())\n"
)

# Runs the shmbench installed in an image (serve_from="image"); an image without one says
# what to do instead of a bare ModuleNotFoundError.
_IMAGE_BOOT = (
    "import sys\n"
    "try:\n"
    "    from shmbench.server import main\n"
    "except ImportError as e:\n"
    "    sys.exit('shmbench: this image has no shmbench server of its own (%s); let the host serve it: "
    "serve_from=\\'host\\' (the default) or SHMBENCH_SERVE_FROM=host' % e)\n"
    "sys.exit(main())\n"
)

#: where a container sees the host's shmbench when the host serves it (read-only binds)
INJECT_ROOT = "/.shmbench-host"
#: host packages offered to an injected server as fallbacks, after the image's own: pure
#: Python where the image lacks them (msgpack falls back to its pure-Python codec when its C
#: part cannot load)
_FALLBACKS = ("msgpack",)
#: "host": an image's server runs the host's own shmbench, bound read-only into it (the
#: default: image and host never disagree); "image": the shmbench installed in the image
SERVE_FROM = ("host", "image")


def package_dir() -> str:
    """The directory of the shmbench package this process imported."""
    import shmbench

    return os.path.dirname(os.path.abspath(shmbench.__file__))


def server_command(python: str, *flags: str, shmbench_dir: str | None = None, fallbacks: str = "") -> list[str]:
    """argv that runs ``python FLAGS -m shmbench.server`` with the shmbench package in
    ``shmbench_dir`` (default: the host's own) -- never one the working directory holds --
    and ``fallbacks`` (a directory) last on its path."""
    return [python, *flags, "-c", _SERVER_BOOT, shmbench_dir or package_dir(), fallbacks]


def image_server_command(python: str, *flags: str) -> list[str]:
    """argv that runs the shmbench server installed in an image (``serve_from="image"``)."""
    return [python, *flags, "-c", _IMAGE_BOOT]


def serve_from_default(serve_from: str | None) -> str:
    """``serve_from`` checked, or ``$SHMBENCH_SERVE_FROM``, or ``"host"``."""
    value = serve_from or os.environ.get("SHMBENCH_SERVE_FROM") or "host"
    if value not in SERVE_FROM:
        raise ValueError(f"serve_from must be 'host' or 'image', not {value!r}")
    return value


def injection(python: str, *flags: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(read-only binds, server argv) that serve an image from the host's shmbench: the
    package at ``INJECT_ROOT/shmbench``, the fallbacks in ``INJECT_ROOT/fallbacks``."""
    import importlib.util

    binds = [(package_dir(), f"{INJECT_ROOT}/shmbench", "ro")]
    for name in _FALLBACKS:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            binds.append((next(iter(spec.submodule_search_locations)), f"{INJECT_ROOT}/fallbacks/{name}", "ro"))
    argv = server_command(python, *flags, shmbench_dir=f"{INJECT_ROOT}/shmbench", fallbacks=f"{INJECT_ROOT}/fallbacks")
    return binds, argv


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
    return src, dst, mode


@dataclass
class Launch:
    """What one server needs: its inherited descriptors, its log, extra environment.

    ``fds`` maps an environment variable to a descriptor the server inherits under the same
    number (``SHMBENCH_CHANNEL_FD``, ``SHMBENCH_SLAB_FD``); ``log_fd`` is the host's log
    file for the server's output, ``log_path`` its name (for people).
    """

    name: str  # for messages: "worker 0 (bwrap runtime, ...)"
    fds: dict[str, int]
    log_fd: int
    log_path: Path
    environment: dict[str, str] = field(default_factory=dict)
    #: a name for the server's cgroups, unique among live servers
    tag: str = "server"
    #: set by :meth:`Runtime.start`: the runtime's own flags apply the limits (no host cgroup)
    runtime_limits: bool = False

    def server_environment(self) -> dict[str, str]:
        """What the server must find in its environment: the descriptors' numbers and
        :attr:`environment` (for a runtime to set, after its own variables)."""
        return {**self.environment, **{k: str(v) for k, v in self.fds.items()}}


class OutputPump:
    """One daemon thread that drains every server's output pipe into its log.

    Nothing a server prints can block it (the pipe is always read) or fill the host's disk
    (each log stops growing at ``cap`` bytes, with one line saying so); the last 16 KiB of
    each stream stay in memory for :meth:`tail`, whatever the cap.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="shmbench-output", daemon=True)
        self._thread.start()

    def add(self, fd: int, log_fd: int, cap: int = LOG_CAP) -> _Stream:
        stream = _Stream(fd, log_fd, cap)
        with self._lock:
            self._streams[fd] = stream
            self._selector.register(fd, selectors.EVENT_READ)
        os.write(self._wake_w, b"x")
        return stream

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                with self._lock:
                    stream = self._streams.get(key.fd)
                if stream is None:
                    continue
                stream.reading = True
                try:
                    data = os.read(key.fd, 65536)
                except OSError:
                    data = b""
                if data:
                    stream.take(data)
                    stream.reading = False
                    continue
                with self._lock:
                    self._selector.unregister(key.fd)
                    del self._streams[key.fd]
                stream.finish()


class _Stream:
    """One server's output: appended to its log up to a cap, its tail kept."""

    def __init__(self, fd: int, log_fd: int, cap: int) -> None:
        self.fd = fd
        self.log_fd = log_fd
        self.cap = cap
        self.written = 0
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.done = threading.Event()
        self.reading = False

    def settle(self, wait: float) -> None:
        """Wait up to ``wait`` seconds until what the server printed so far is taken (the
        pipe is empty and the pump is not between reading and taking)."""
        deadline = time.monotonic() + wait
        while not self.done.is_set() and time.monotonic() < deadline:
            try:
                pending = int.from_bytes(fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"), "little")
            except OSError:
                return
            if not pending and not self.reading:
                return
            time.sleep(0.001)

    def take(self, data: bytes) -> None:
        if self.written < self.cap:
            part = data[: self.cap - self.written]
            try:
                os.write(self.log_fd, part)
            except OSError:
                pass
            self.written += len(part)
            if self.written >= self.cap:
                try:
                    os.write(
                        self.log_fd,
                        f"\n[shmbench: the server's output beyond {self.cap >> 20} MiB was not kept]\n".encode(),
                    )
                except OSError:
                    pass
        self.tail.append(data)
        self.tail_size += len(data)
        while self.tail_size - len(self.tail[0]) >= _TAIL:
            self.tail_size -= len(self.tail.popleft())

    def finish(self) -> None:
        for fd in (self.fd, self.log_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.done.set()

    def text(self) -> str:
        return b"".join(self.tail)[-_TAIL:].decode("utf-8", "replace")


_pump: OutputPump | None = None
_pump_lock = threading.Lock()


def output_pump() -> OutputPump:
    """This process's pump (started on first use)."""
    global _pump
    with _pump_lock:
        if _pump is None or not _pump._thread.is_alive():
            _pump = OutputPump()
        return _pump


class ServerProcess:
    """One running server and everything needed to tell what became of it."""

    def __init__(
        self,
        proc: subprocess.Popen,
        name: str,
        log_path: Path,
        output: _Stream,
        cgroups: CgroupSet | None = None,
        limits: Limits | None = None,
        guarded: bool = False,
    ) -> None:
        self.proc = proc
        self.name = name
        self.log_path = log_path
        #: the process the host started: the runtime's (bwrap, apptainer), the guard, or the server
        self.pid = proc.pid
        self.output = output
        self.cgroups = cgroups
        self.limits = limits
        self.guarded = guarded

    def server_pid(self, wait: float = 5.0) -> int | None:
        """The pid of what the runtime runs: below a reaping guard its one child (waited for
        up to ``wait`` seconds while it starts), else :attr:`pid`. None once it is gone."""
        if not self.guarded:
            return self.pid
        deadline = time.monotonic() + wait
        while self.proc.poll() is None:
            try:
                children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            except OSError:
                return None
            if children:
                return int(children[0])
            if time.monotonic() > deadline:
                return None
            time.sleep(0.005)
        return None

    def pidfd(self) -> int:
        """A new pidfd for the process: readable once it exits (the channel polls it)."""
        return os.pidfd_open(self.proc.pid)

    def exit_status(self, wait: float = 0.0) -> int | None:
        """Its exit status (negative: killed by that signal), None while it runs."""
        try:
            return self.proc.wait(timeout=wait) if wait else self.proc.poll()
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 20, wait: float = 0.5) -> str:
        """The last lines it printed, without control characters (waiting up to ``wait``
        seconds for its output to end when it has exited)."""
        if self.proc.poll() is not None:
            self.output.done.wait(wait)
        else:
            self.output.settle(wait)
        text = sanitize(self.output.text())
        return "\n".join(text.splitlines()[-lines:])

    def why_dead(self) -> str | None:
        """A limit that explains its death, when one does (the memory cgroup's OOM killer)."""
        if self.cgroups is not None and self.limits is not None and self.limits.memory and self.cgroups.oom_killed():
            return f"it exceeded its memory limit ({self.limits.describe()}): the kernel's OOM killer stopped it"
        status = self.proc.poll()
        if status is not None and self.limits is not None and self.limits.memory and status == -signal.SIGKILL:
            return f"it was killed (SIGKILL) while limited to {self.limits.describe()}"
        return None

    def state(self) -> str | None:
        """The kernel's word for what its process tree is doing, when one of them is stopped
        or a zombie (``"stopped"``, ``"traced"``...); None when all run or sleep."""
        words = {"T": "stopped (SIGSTOP or Ctrl-Z)", "t": "stopped by a debugger", "Z": "a zombie"}
        todo, seen = [self.proc.pid], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state in words and pid != self.proc.pid:
                return f"process {pid} is {words[state]}"
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo += [int(c) for c in task.read_text().split()]
                except OSError:
                    pass
        return None

    # -- stopping: begin for every server, then finish for every server -------------------

    def begin_stop(self) -> None:
        """Close its stdin: EOF tells the server its host is leaving."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def stop(self, grace: float = 2.0, term_timeout: float = 2.0) -> int | None:
        """Stop this one server: EOF on stdin, ``grace`` seconds to exit, then SIGTERM, then
        SIGKILL (:func:`stop_all` for one)."""
        stop_all([self], time.monotonic() + grace, term_timeout)
        return self.proc.poll()

    def signal_group(self, sig: int) -> None:
        self._signal_group(sig)

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
        limits: resource limits per server (:class:`~shmbench.runtimes.limits.Limits`, a
            dict such as ``{"memory": "2G", "pids": 256}``, or ``"memory=2G,pids=256"``).
    """

    name: ClassVar[str]
    #: whether servers run isolated from the host (a container)
    isolated: ClassVar[bool] = True
    #: whether the guard must reap the server's descendants (no PID namespace takes them)
    reaps: ClassVar[bool] = False

    def __init__(self, image: os.PathLike | str | None = None, binds=(), environment=None, limits=None) -> None:
        self.image = image
        self.binds = tuple(binds or ())
        for spec in self.binds:
            src = parse_bind(spec)[0]
            if not os.path.exists(src):  # said here, in one line, not by the sandbox later
                raise FileNotFoundError(f"bind source {os.path.abspath(src)} does not exist ({spec!r})")
        self.environment = dict(environment or {})
        self.limits = Limits.of(limits)
        if self.limits is not None and self.limits.tmp is not None and not self.sizes_tmp():
            raise ValueError(f"the {self.name} runtime cannot size /tmp (limits tmp=...): " + self.why_no_tmp_limit())

    @classmethod
    @abstractmethod
    def probe(cls) -> tuple[bool, str]:
        """(works here, why or why not), probed once per process."""

    @abstractmethod
    def command(self, launch: Launch) -> tuple[list[str], dict[str, str]]:
        """argv and environment of one server."""

    def sizes_tmp(self) -> bool:
        """Whether this runtime gives servers a private /tmp it can size (limits tmp=)."""
        return False

    def why_no_tmp_limit(self) -> str:
        return "its servers have no private /tmp"

    def limits_itself(self) -> bool:
        """Whether this runtime's own flags can apply :attr:`limits` where the host has no
        cgroup to put the server in (Apptainer's ``--memory``, ``--pids-limit``, ``--cpus``);
        when it can, :meth:`command` gets ``launch.runtime_limits`` set and adds them."""
        return False

    def start(self, launch: Launch) -> ServerProcess:
        """Start one server; takes over ``launch.log_fd`` (the output pump closes it)."""
        cgroups = CgroupSet.create(launch.tag, self.limits) if self.limits else None
        try:
            itself = self.limits is not None and cgroups is None and self.limits_itself()
            launch = replace(launch, runtime_limits=itself)
            argv, env = self.command(launch)
            guard_limits = None if itself else self.limits
            if self.reaps or guard_limits:
                from shmbench.runtimes.guard import guard_command

                argv = guard_command(argv, reap=self.reaps, limits=guard_limits, cgroups=cgroups)
            shown = " ".join("<code>" if "\n" in a else a for a in argv)
            os.write(launch.log_fd, f"$ {shown}\n".encode())
            out_r, out_w = os.pipe()
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=out_w,
                    stderr=out_w,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=tuple(launch.fds.values()),
                )
            except BaseException:
                os.close(out_r)
                raise
            finally:
                os.close(out_w)
        except BaseException:
            os.close(launch.log_fd)
            if cgroups is not None:
                cgroups.remove()
            raise
        stream = output_pump().add(out_r, launch.log_fd)
        return ServerProcess(proc, launch.name, launch.log_path, stream, cgroups, self.limits, guarded=self.reaps)

    def describe_image(self) -> str:
        return "the host" if self.image is None else str(self.image)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} image={self.describe_image()}>"


def stop_all(processes: list[ServerProcess], deadline: float, term_timeout: float = 2.0) -> None:
    """Stop servers together: EOF on every stdin, until ``deadline`` (monotonic) for them to
    exit, then SIGTERM to each survivor's process group, ``term_timeout`` seconds, then
    SIGKILL; finally their cgroups go. Each phase runs for all of them at once, so stopping
    eight servers that ignore everything takes as long as stopping one."""

    def wait_all(until: float) -> None:
        for p in processes:
            p.exit_status(wait=max(0.0, until - time.monotonic()))

    for p in processes:
        p.begin_stop()
    wait_all(deadline)
    for sig, timeout in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, 5.0)):
        alive = [p for p in processes if p.proc.poll() is None]
        if not alive:
            break
        for p in alive:
            p.signal_group(sig)
        wait_all(time.monotonic() + timeout)
    for p in processes:
        if p.cgroups is not None:
            p.cgroups.remove()


def wait_for_exit(pid: int, timeout: float) -> bool:
    """True once ``pid`` is gone (used by tests and gc for processes we did not spawn)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.01)
    return False
