"""The Apptainer (and Singularity) runtime, and the spython helpers around it.

Each server runs in the foreground as::

    apptainer exec --containall --cleanenv --pwd /tmp \\
        --env SHMBENCH_CHANNEL_FD=N --env SHMBENCH_SLAB_FD=M \\
        [--env K=V ...] [--bind SRC:DST:MODE ...] [--nv] [EXTRA_ARGS ...] \\
        IMAGE python3 -I -m shmbench.server

(by default, ``serve_from="host"``, the host's own shmbench is bound read-only at
``/.shmbench-host/shmbench`` and the image's ``python3 -I`` runs the server from there:
see :func:`~shmbench.runtimes.base.injection`). Why each flag (the flag texts are from ``apptainer exec --help``; the sources are the
Apptainer and Singularity changelogs and CLI code):

* ``--containall`` -- "contain not only file systems, but also PID, IPC, and environment":
  a private /dev, /tmp and $HOME, new PID and IPC namespaces. Nothing in shmbench needs
  to be shared: the channel and the slab are sealed memory the server inherits as file
  descriptors N and M (Apptainer's starter keeps the descriptors it was started with: it
  closes only those it opened itself -- ``cleanup_fd`` in ``cmd/starter/c/starter.c``), and
  futexes on a shared mapping work across IPC namespaces. The host notices the server's
  death through the pidfd of the ``apptainer`` process it started, which lives exactly as
  long as the container; the server notices the host's through its stdin pipe.
* ``--cleanenv`` -- already implied by ``--containall`` (Apptainer's action code sets it
  with the PID and IPC namespaces), written out so the intent does not depend on that.
* ``--pwd /tmp`` -- "initial working directory for payload process inside the container".
  With ``--contain`` the host's working directory is not mounted; naming one keeps the
  server's directory the same whatever the host's was, and /tmp is the contained, private,
  writable one -- the bwrap runtime's choice too (``--chdir /tmp``).
* ``--env`` -- new in Singularity 3.6.0; works with ``--cleanenv``. Values go through two
  parsers on the way in: pflag's ``key=value`` map flag (one ``=``: the text with its
  surrounding double quotes trimmed; several: read as one CSV record, so a comma splits
  it) and the container's shell evaluation of its environment (what ``--no-eval`` turns
  off, in versions newer than the oldest supported here). Values that would not arrive
  literally are refused with a ValueError instead of being silently mangled.
* ``--nv`` -- NVIDIA devices and driver libraries; works with ``--contain`` (the
  ``/dev/nvidia*`` devices are bound into the minimal /dev since Singularity PR #1358, 2018).

The image's interpreter is ``python3`` by default: Debian/Ubuntu-based images often have
no ``python`` (only ``python-is-python3`` adds it), while images that have ``python`` have
``python3`` too. ``-I`` isolates it from the image's PYTHON* variables and user site.

Versions: Apptainer >= 1.0 (all releases); Singularity (SingularityCE, the older
hpcng/sylabs ``singularity``) >= 3.7.0 -- ``--env`` came in 3.6.0, and 3.7.0 stopped
failing ``--contain`` runs on binds of /etc/hosts and /etc/localtime that cannot be made.

The lifecycle (stdin pipe, own session, log file, CLOSE-wait-TERM-KILL) is the shared one
in :mod:`shmbench.runtimes.base`. Building images lives in
:mod:`shmbench.images.build` (``apptainer build --fakeroot`` through spython).

The spython helpers (pull, inspect, instances, gc) live in
:mod:`shmbench.runtimes.apptainer_tools`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shmbench.errors import ImageError, RuntimeUnavailable
from shmbench.runtimes.base import Launch, Runtime, image_server_command, injection, parse_bind, serve_from_default

__all__ = [
    "ApptainerRuntime",
    "ApptainerVersion",
    "MIN_APPTAINER",
    "MIN_SINGULARITY",
    "URI_SCHEMES",
    "find_binary",
    "binary_version",
    "parse_version",
    "require_binary",
    "spython_client",
]

#: the oldest releases shmbench runs (see the module docstring for why)
MIN_APPTAINER = (1, 0, 0)
MIN_SINGULARITY = (3, 7, 0)
#: the first releases whose ``exec`` takes --memory, --pids-limit and --cpus
LIMIT_FLAGS_APPTAINER = (1, 0, 0)
LIMIT_FLAGS_SINGULARITY = (3, 9, 0)
#: image references ``apptainer exec`` takes besides local files and directories
URI_SCHEMES = ("docker", "oras", "library", "shub")

_VERSION_LINE = re.compile(r"^(?:(?P<name>[A-Za-z][\w.-]*)\s+)?version\s+(?P<version>\S+)$", re.IGNORECASE)
_RELEASE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(.*)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# characters the container's shell evaluation of its environment would act on
_ENV_SHELL = frozenset("$`\\\"'\n\r")
# host variables Apptainer would turn into a container SHMBENCH_CHANNEL
_COMPETING_ENV = ("APPTAINERENV_SHMBENCH_", "SINGULARITYENV_SHMBENCH_")


# ----------------------------------------------------------------------------- versions


@dataclass(frozen=True)
class ApptainerVersion:
    """What ``BINARY --version`` said, understood.

    Attributes:
        flavour: ``"apptainer"``, ``"singularity-ce"``, ``"singularity"`` (hpcng/sylabs
            before the split) or another ``singularity*`` name as printed.
        release: (major, minor, patch), or None when the version is not a number (a
            development build printing a commit hash).
        text: the line as printed.
    """

    flavour: str
    release: tuple[int, int, int] | None
    text: str

    @property
    def is_apptainer(self) -> bool:
        return self.flavour == "apptainer"

    @property
    def minimum(self) -> tuple[int, int, int]:
        return MIN_APPTAINER if self.is_apptainer else MIN_SINGULARITY

    def supported(self) -> tuple[bool, str]:
        """(new enough, why not)."""
        need = ".".join(map(str, self.minimum))
        if self.release is None:
            # a build from a commit: newer than any release we could name, most likely
            return True, f"version {self.text!r} is not a release number; assuming >= {need}"
        if self.release < self.minimum:
            what = "Apptainer" if self.is_apptainer else "Singularity"
            return False, (
                f"{self.text!r} is too old: shmbench needs {what} >= {need} (--env and reliable --containall)"
            )
        return True, ""


def parse_version(text: str, binary: str = "apptainer") -> ApptainerVersion | None:
    """Understand the first line of ``BINARY --version`` (or ``BINARY version``).

    ``binary`` names the flavour when the line is a bare number (``apptainer version``
    prints ``1.3.4``; Singularity 2 printed ``2.6.1-dist``). None if it is not a version.
    """
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    m = _VERSION_LINE.match(line)
    if m:
        flavour = (m.group("name") or Path(binary).name).lower()
        version = m.group("version")
    elif re.match(r"^v?\d+\.\d+", line) and " " not in line:
        flavour, version = Path(binary).name.lower(), line
    else:
        return None
    if not (flavour == "apptainer" or flavour.startswith("singularity")):
        return None
    r = _RELEASE.match(version)
    release = (int(r.group(1)), int(r.group(2)), int(r.group(3) or 0)) if r else None
    return ApptainerVersion(flavour, release, line)


def find_binary() -> str | None:
    """``apptainer`` on PATH, else ``singularity``; None without either."""
    return shutil.which("apptainer") or shutil.which("singularity")


def require_binary(binary: str | None = None) -> str:
    """``binary``, else the one :func:`find_binary` finds; RuntimeUnavailable without either."""
    binary = binary or find_binary()
    if binary is None:
        raise RuntimeUnavailable("neither apptainer nor singularity is on PATH")
    return binary


def spython_client(binary: str) -> Any:
    """A private spython client whose commands start with ``binary``.

    spython hard-codes ``singularity`` as the program; Apptainer-only installs may not have
    that name. A separate instance keeps the shared ``spython.main.Client`` untouched. The
    builder (:mod:`shmbench.images.build`) and the helpers of
    :mod:`shmbench.runtimes.apptainer_tools` drive the same executable through it.
    """
    from spython.main import Client as shared

    client = type(shared)()
    base_init = client._init_command

    def init_command(action: Any, flags: Any = None) -> list[str]:
        cmd = base_init(action, flags)
        cmd[0] = binary
        return cmd

    client._init_command = init_command
    return client


def binary_version(binary: str, timeout: float = 30.0) -> ApptainerVersion:
    """Run ``BINARY --version`` and parse it; RuntimeUnavailable when that fails."""
    try:
        out = subprocess.run(
            [binary, "--version"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeUnavailable(f"'{binary} --version' could not run: {exc}") from None
    if out.returncode != 0:
        said = (out.stderr or out.stdout).strip() or f"exit status {out.returncode}"
        raise RuntimeUnavailable(f"'{binary} --version' failed: {said}")
    version = parse_version(out.stdout, binary)
    if version is None:
        raise RuntimeUnavailable(
            f"'{binary} --version' printed {out.stdout.strip()!r}, which is not an Apptainer or Singularity version"
        )
    return version


# ------------------------------------------------------------------------------ runtime


def _check_env(name: str, value: str) -> None:
    """Refuse what ``--env`` would not deliver literally (see the module docstring)."""
    if not _ENV_NAME.match(name):
        raise ValueError(f"environment variable name {name!r} is not a valid name")
    if not isinstance(value, str):
        raise TypeError(f"environment variable {name} must be a str, not {type(value).__name__}")
    bad = sorted(_ENV_SHELL.intersection(value))
    if bad:
        raise ValueError(
            f"environment variable {name}={value!r}: apptainer --env would not pass "
            f"{''.join(bad)!r} literally (the container evaluates its environment "
            f"in a shell); set it in the image's %environment instead"
        )
    # KEY=VALUE with a second '=' is read as a CSV record: a comma would split it
    # (double quotes, which pflag also treats specially, are refused above)
    if "=" in value and "," in value:
        raise ValueError(
            f"environment variable {name}={value!r}: apptainer --env reads a value "
            f"holding both '=' and ',' as several variables"
        )


def _check_bind_path(path: str, spec: str) -> None:
    # --bind is a pflag string slice, read as a CSV record (',' separates binds, '"'
    # quotes), and ':' separates the fields of each bind
    bad = sorted(set(path) & set(',:"\n\r'))
    if bad:
        raise ValueError(f"bind {spec!r}: apptainer --bind cannot express a path holding {''.join(bad)!r} ({path!r})")


def _image_reference(image: os.PathLike | str | None) -> str:
    if image is None:
        raise ValueError(
            "the apptainer runtime needs an image: a SIF file, a sandbox directory "
            "or a docker:// oras:// library:// shub:// reference (to run on the "
            "host, use runtime='bwrap' or 'process')"
        )
    text = os.fspath(image)
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme == "instance":
            raise ValueError(
                f"image {text!r}: a running instance cannot host a fresh, contained "
                f"server (exec into it ignores --containall); give its image"
            )
        if scheme not in URI_SCHEMES:
            raise ValueError(
                f"image {text!r}: apptainer exec takes {', '.join(URI_SCHEMES)} "
                f"references, local SIF files and sandbox directories"
            )
        return text
    path = Path(text)
    if not path.exists():
        raise ImageError(errno.ENOENT, f"image {path} does not exist")
    return str(path.absolute())


class ApptainerRuntime(Runtime):
    """Runs each server with ``apptainer exec --containall`` (see the module docstring).

    Args:
        image: a SIF file (or SquashFS/ext3 image), a sandbox directory, or a
            ``docker://``, ``oras://``, ``library://``, ``shub://`` reference (converted
            by Apptainer on each start, from its cache: :func:`pull` it once to start fast).
        binds: extra binds, ``src[:dst[:ro|rw]]``.
        environment: extra environment variables for the server.
        nv: pass ``--nv`` (NVIDIA GPUs).
        extra_args: more ``exec`` options, placed just before the image.
        python: the interpreter inside the image.
        serve_from: ``"host"`` (default, or ``$SHMBENCH_SERVE_FROM``): the server runs the
            host's own shmbench, bound read-only at ``/.shmbench-host``, with the image's
            Python, numpy and gymnasium; ``"image"``: the shmbench installed in the image.
        binary: the apptainer or singularity executable (default: found on PATH).
    """

    name = "apptainer"

    def __init__(
        self,
        image=None,
        binds=(),
        environment=None,
        *,
        nv: bool = False,
        extra_args: Sequence[str] = (),
        python: str = "python3",
        binary: str | None = None,
        limits=None,
        serve_from: str | None = None,
    ) -> None:
        super().__init__(image, binds, environment, limits)
        self.serve_from = serve_from_default(serve_from)
        self.image_ref = _image_reference(image)
        for spec in self.binds:
            src, dst, _ = parse_bind(spec)
            _check_bind_path(src, spec)
            _check_bind_path(dst, spec)
        for key, value in self.environment.items():
            _check_env(key, value)
        if isinstance(extra_args, str):
            raise TypeError("extra_args is a sequence of arguments, not one string")
        self.nv = bool(nv)
        self.extra_args = tuple(extra_args)
        self.python = python
        binary = binary or find_binary()
        if binary is None:
            raise RuntimeUnavailable("neither apptainer nor singularity is on PATH")
        self.binary = binary
        self._version: ApptainerVersion | None = None

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        binary = find_binary()
        if binary is None:
            return False, "neither apptainer nor singularity is on PATH"
        try:
            version = binary_version(binary)
        except RuntimeUnavailable as exc:
            return False, str(exc)
        ok, why = version.supported()
        if not ok:
            return False, f"{binary}: {why}"
        return True, f"{binary} ({version.text})" + (f"; {why}" if why else "")

    def limits_itself(self) -> bool:
        """Apptainer's own ``--memory``, ``--pids-limit`` and ``--cpus`` (Apptainer >= 1.0,
        SingularityCE >= 3.9), where it can make cgroups: as root, or rootless on cgroup v2
        with a systemd user session (its documented requirement)."""
        if self._version is None:
            try:
                self._version = binary_version(self.binary)
            except RuntimeUnavailable:
                return False
        v = self._version
        if v.release is not None and v.release < (LIMIT_FLAGS_APPTAINER if v.is_apptainer else LIMIT_FLAGS_SINGULARITY):
            return False
        if os.geteuid() == 0:
            return True
        runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "")
        return (
            os.path.exists("/sys/fs/cgroup/cgroup.controllers")
            and bool(runtime_dir)
            and os.path.exists(os.path.join(runtime_dir, "bus"))
        )

    def why_no_tmp_limit(self) -> str:
        return (
            "Apptainer sizes the /tmp of --containall by its own configuration ('sessiondir max size' "
            "in apptainer.conf)"
        )

    def command(self, launch: Launch, program: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
        """apptainer's argv and environment for a server -- or, given ``program``, for that
        program in the same container (``shmbench shell``)."""
        env = {**self.environment, **launch.server_environment()}
        env.pop("SHMBENCH_CHANNEL", None)  # reserved: the channel is an inherited descriptor
        for key, value in env.items():
            _check_env(key, value)
        argv = [self.binary, "exec", "--containall", "--cleanenv", "--pwd", "/tmp"]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        binds = [parse_bind(spec) for spec in self.binds]
        server = image_server_command(self.python, "-I")
        if program is None and self.serve_from == "host":
            extra, server = injection(self.python, "-I")
            binds += extra
        for src, dst, mode in binds:
            argv += ["--bind", f"{os.path.abspath(src)}:{dst}:{mode}"]
        if self.nv:
            argv.append("--nv")
        if launch.runtime_limits and self.limits is not None:
            if self.limits.memory:
                argv += ["--memory", str(self.limits.memory)]
            if self.limits.pids:
                argv += ["--pids-limit", str(self.limits.pids)]
            if self.limits.cpus:
                argv += ["--cpus", f"{self.limits.cpus:g}"]
        argv += [*self.extra_args, self.image_ref, *(program or server)]
        # Apptainer itself runs with the host's environment (its own settings, caches,
        # proxies); --cleanenv keeps that out of the container. Only variables that would
        # inject competing SHMBENCH_* values into the container are dropped.
        host_env = {k: v for k, v in os.environ.items() if not k.startswith(_COMPETING_ENV)}
        return argv, host_env

    def describe_image(self) -> str:
        return self.image_ref

    def __repr__(self) -> str:
        return f"<ApptainerRuntime {self.binary} image={self.image_ref}>"
