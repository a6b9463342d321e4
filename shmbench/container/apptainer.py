"""The Apptainer (and Singularity) runtime, and the spython helpers around it.

Each server runs in the foreground as::

    apptainer exec --containall --cleanenv --pwd /tmp \\
        --bind SESSION_DIR:/shmbench --env SHMBENCH_CHANNEL=/shmbench/w0.chan \\
        [--env K=V ...] [--bind SRC:DST:MODE ...] [--nv] [EXTRA_ARGS ...] \\
        IMAGE python3 -I -m shmbench.server

Why each flag (the flag texts are from ``apptainer exec --help``; the sources are the
Apptainer and Singularity changelogs and CLI code):

* ``--containall`` -- "contain not only file systems, but also PID, IPC, and environment":
  a private /dev, /tmp and $HOME, new PID and IPC namespaces. Nothing in shmbench needs
  to be shared but the channel directory: liveness goes through flock on files in it, and
  futexes on a shared file mapping work across IPC namespaces.
* ``--cleanenv`` -- already implied by ``--containall`` (Apptainer's action code sets it
  with the PID and IPC namespaces), written out so the intent does not depend on that.
* ``--pwd /tmp`` -- "initial working directory for payload process inside the container".
  With ``--contain`` the host's working directory is not mounted; naming one keeps the
  server's directory the same whatever the host's was, and /tmp is the contained, private,
  writable one -- the bwrap runtime's choice too (``--chdir /tmp``).
* ``--bind DIR:/shmbench`` -- the session directory, read-write (the default mode); the
  only host path the server needs.
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
in :mod:`shmbench.container.runtime`. Building images lives in
:mod:`shmbench.container.build` (``apptainer build --fakeroot`` through spython).

spython helpers: :func:`pull`, :func:`inspect_labels`, :func:`list_instances`,
:func:`stop_instance`, and for ``shmbench gc`` :func:`stale_instances`,
:func:`stop_instances`, :func:`gc_instances`. They use a spython client whose commands
start with the detected binary (spython hard-codes ``singularity``). ``inspect`` is
spython's ``Client.inspect``; pull and the instance commands go through spython's command
runner, because ``Client.pull`` drops Apptainer's output and exit status (or, streaming,
leaks the child's stderr pipe) and ``Client.instances`` reports every failure as "No
instances found". spython ends the interpreter (``sys.exit``) on some errors; every call
here catches that ``SystemExit`` and raises :class:`~shmbench.errors.RuntimeUnavailable`
or :class:`~shmbench.errors.ImageError` with the command's own message instead.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shmbench.container.build import find_apptainer
from shmbench.container.runtime import CHANNEL_MOUNT, Launch, Runtime, parse_bind
from shmbench.errors import ImageError, RuntimeUnavailable, ShmbenchError

__all__ = [
    "ApptainerRuntime",
    "ApptainerVersion",
    "Instance",
    "MIN_APPTAINER",
    "MIN_SINGULARITY",
    "INSTANCE_PREFIX",
    "find_binary",
    "binary_version",
    "parse_version",
    "parse_instance_list",
    "parse_inspect",
    "pull",
    "inspect_labels",
    "list_instances",
    "stop_instance",
    "instance_name",
    "session_of_instance",
    "stale_instances",
    "stop_instances",
    "gc_instances",
]

#: the oldest releases shmbench runs (see the module docstring for why)
MIN_APPTAINER = (1, 0, 0)
MIN_SINGULARITY = (3, 7, 0)
#: image references ``apptainer exec`` takes besides local files and directories
URI_SCHEMES = ("docker", "oras", "library", "shub")
#: what ``apptainer pull`` fetches (spython's pull accepts the same list)
PULL_SCHEMES = ("docker", "oras", "library", "shub", "https")
INSTANCE_PREFIX = "shmbench-"

_VERSION_LINE = re.compile(r"^(?:(?P<name>[A-Za-z][\w.-]*)\s+)?version\s+(?P<version>\S+)$",
                           re.IGNORECASE)
_RELEASE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(.*)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# characters the container's shell evaluation of its environment would act on
_ENV_SHELL = frozenset("$`\\\"'\n\r")
_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")   # Apptainer's rule for instance names
_SESSION = re.compile(r"^(\d+)-[0-9a-f]{8}$")       # shmbench.channel.Session.name
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# host variables Apptainer would turn into a container SHMBENCH_CHANNEL
_COMPETING_ENV = ("APPTAINERENV_SHMBENCH_CHANNEL", "SINGULARITYENV_SHMBENCH_CHANNEL")


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
            return False, (f"{self.text!r} is too old: shmbench needs {what} >= {need} "
                           f"(--env and reliable --containall)")
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
    return find_apptainer()


def binary_version(binary: str, timeout: float = 30.0) -> ApptainerVersion:
    """Run ``BINARY --version`` and parse it; RuntimeUnavailable when that fails."""
    try:
        out = subprocess.run([binary, "--version"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeUnavailable(f"'{binary} --version' could not run: {exc}") from None
    if out.returncode != 0:
        said = (out.stderr or out.stdout).strip() or f"exit status {out.returncode}"
        raise RuntimeUnavailable(f"'{binary} --version' failed: {said}")
    version = parse_version(out.stdout, binary)
    if version is None:
        raise RuntimeUnavailable(f"'{binary} --version' printed {out.stdout.strip()!r}, "
                                 f"which is not an Apptainer or Singularity version")
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
        raise ValueError(f"environment variable {name}={value!r}: apptainer --env would not pass "
                         f"{''.join(bad)!r} literally (the container evaluates its environment "
                         f"in a shell); set it in the image's %environment instead")
    # KEY=VALUE with a second '=' is read as a CSV record: a comma would split it
    # (double quotes, which pflag also treats specially, are refused above)
    if "=" in value and "," in value:
        raise ValueError(f"environment variable {name}={value!r}: apptainer --env reads a value "
                         f"holding both '=' and ',' as several variables")


def _check_bind_path(path: str, spec: str) -> None:
    # --bind is a pflag string slice, read as a CSV record (',' separates binds, '"'
    # quotes), and ':' separates the fields of each bind
    bad = sorted(set(path) & set(',:"\n\r'))
    if bad:
        raise ValueError(f"bind {spec!r}: apptainer --bind cannot express a path holding "
                         f"{''.join(bad)!r} ({path!r})")


def _image_reference(image: os.PathLike | str | None) -> str:
    if image is None:
        raise ValueError("the apptainer runtime needs an image: a SIF file, a sandbox directory "
                         "or a docker:// oras:// library:// shub:// reference (to run on the "
                         "host, use runtime='bwrap' or 'process')")
    text = os.fspath(image)
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme == "instance":
            raise ValueError(f"image {text!r}: a running instance cannot host a fresh, contained "
                             f"server (exec into it ignores --containall); give its image")
        if scheme not in URI_SCHEMES:
            raise ValueError(f"image {text!r}: apptainer exec takes {', '.join(URI_SCHEMES)} "
                             f"references, local SIF files and sandbox directories")
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
        binary: the apptainer or singularity executable (default: found on PATH).
    """

    name = "apptainer"

    def __init__(self, image=None, binds=(), environment=None, *, nv: bool = False,
                 extra_args: Sequence[str] = (), python: str = "python3",
                 binary: str | None = None) -> None:
        super().__init__(image, binds, environment)
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

    def command(self, launch: Launch) -> tuple[list[str], dict[str, str]]:
        session = os.path.abspath(launch.session_dir)
        _check_bind_path(session, session)
        env = {**self.environment, **launch.environment}
        env.pop("SHMBENCH_CHANNEL", None)           # reserved: the runtime sets it
        for key, value in env.items():
            _check_env(key, value)
        argv = [self.binary, "exec", "--containall", "--cleanenv", "--pwd", "/tmp",
                "--bind", f"{session}:{CHANNEL_MOUNT}",
                "--env", f"SHMBENCH_CHANNEL={CHANNEL_MOUNT}/{launch.channel_name}"]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        for spec in self.binds:
            src, dst, mode = parse_bind(spec)
            src = os.path.abspath(src)
            if not os.path.exists(src):
                raise FileNotFoundError(errno.ENOENT,
                                        f"bind source {src} does not exist ({spec!r})")
            argv += ["--bind", f"{src}:{dst}:{mode}"]
        if self.nv:
            argv.append("--nv")
        argv += [*self.extra_args, self.image_ref, self.python, "-I", "-m", "shmbench.server"]
        # Apptainer itself runs with the host's environment (its own settings, caches,
        # proxies); --cleanenv keeps that out of the container. Only variables that would
        # inject a competing SHMBENCH_CHANNEL into the container are dropped.
        host_env = {k: v for k, v in os.environ.items() if k not in _COMPETING_ENV}
        return argv, host_env

    def describe_image(self) -> str:
        return self.image_ref

    def __repr__(self) -> str:
        return f"<ApptainerRuntime {self.binary} image={self.image_ref}>"


# ---------------------------------------------------------------------- spython helpers

def _binary(binary: str | None) -> str:
    binary = binary or find_binary()
    if binary is None:
        raise RuntimeUnavailable("neither apptainer nor singularity is on PATH")
    return binary


def _client(binary: str):
    """A private spython client whose commands start with ``binary`` (spython hard-codes
    ``singularity``). Shared with the builder, so both drive the same executable."""
    from shmbench.container.build import _spython_client

    return _spython_client(binary)


def _clean(text: str) -> str:
    return _ANSI.sub("", text).strip()


@contextlib.contextmanager
def _spython_errors(what: str, error: type[ShmbenchError]) -> Iterator[None]:
    """Turn spython's ``sys.exit`` (and a missing executable) into ``error``.

    spython logs the reason through its ``bot`` before exiting; the messages logged during
    the call become the error's text.
    """
    from spython.logger import bot

    mark = len(bot.history)
    try:
        yield
    except SystemExit as exc:
        said = _clean("".join(bot.history[mark:]))
        raise error(f"{what} failed: {said or f'spython exited with status {exc.code}'}") from None
    except FileNotFoundError as exc:
        raise RuntimeUnavailable(f"{what}: {exc}") from None


def _message(result: Mapping) -> str:
    msg = result.get("message")
    if isinstance(msg, (list, tuple)):
        msg = "".join(str(m) for m in msg)
    return _clean(str(msg or "")) or f"exit status {result.get('return_code')}"


def _run(binary: str, args: Sequence[str], what: str,
         error: type[ShmbenchError] = RuntimeUnavailable) -> list[str]:
    """Run ``BINARY ARGS`` through spython's command runner; its output, or raise ``error``.

    The output is spython's list: stdout, then stderr, each only when non-empty.
    """
    from spython.utils import run_command

    client = _client(binary)
    cmd = client._init_command(list(args))
    with _spython_errors(what, error):
        result = run_command(cmd, quiet=True)
    if result["return_code"] != 0:
        raise error(f"{what} failed: {_message(result)}")
    return [str(m) for m in result.get("message") or []]


def pull(ref: str, dest: os.PathLike | str, *, force: bool = False, binary: str | None = None,
         quiet: bool = True) -> Path:
    """``apptainer pull`` ``ref`` into the SIF file ``dest``; returns ``dest``.

    The image is pulled next to ``dest`` under a temporary name, checked to be a SIF, then
    renamed into place: a failed or interrupted pull never leaves a partial ``dest``.
    Apptainer's output is shown once it finishes (``quiet=False``), not live (see the
    module docstring for why not ``Client.pull``).

    Raises:
        ValueError: ``ref`` is not a docker://, oras://, library://, shub:// or https://
            reference.
        ImageError: ``dest`` exists (without ``force``), or the pull failed (the message
            ends with what Apptainer said).
        RuntimeUnavailable: no apptainer or singularity.
    """
    from shmbench.container.sif import read_sif

    scheme = ref.split("://", 1)[0].lower() if "://" in ref else ""
    if scheme not in PULL_SCHEMES:
        raise ValueError(f"cannot pull {ref!r}: apptainer pull takes "
                         f"{', '.join(s + '://' for s in PULL_SCHEMES)} references")
    binary = _binary(binary)
    dest = Path(dest).absolute()
    if dest.exists() and not force:
        raise ImageError(errno.EEXIST, f"{dest} exists; pass force=True to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.part"
    what = f"{binary} pull {ref}"
    try:
        said = _run(binary, ["pull", "--name", str(part), ref], what, ImageError)
        if not quiet:
            sys.stderr.write("".join(said))
        if not part.is_file():
            raise ImageError(f"{what} wrote no image: {_clean(''.join(said))[-2000:]}")
        try:
            read_sif(part)
        except ImageError as exc:
            raise ImageError(f"{what} did not write a SIF image: {exc}") from None
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def parse_inspect(data: Mapping | str) -> dict[str, str]:
    """The labels from ``apptainer inspect --json`` output (text, or spython's dict).

    Current releases nest them as ``{"data": {"attributes": {"labels": {...}}}}``;
    Singularity 3.0/3.1 had no ``data`` level, and some versions printed the labels as a
    JSON string. All three are accepted.
    """
    try:
        doc = json.loads(data) if isinstance(data, str) else data
    except ValueError:
        raise ImageError(f"apptainer inspect printed {data[:200]!r}, not JSON") from None
    if not isinstance(doc, Mapping):
        raise ImageError(f"apptainer inspect printed {type(doc).__name__}, not an object")
    if isinstance(doc.get("data"), Mapping):
        doc = doc["data"]
    attributes = doc.get("attributes")
    if not isinstance(attributes, Mapping):
        raise ImageError("apptainer inspect output has no attributes")
    labels = attributes.get("labels") or {}
    if isinstance(labels, str):
        try:
            labels = json.loads(labels)
        except ValueError:
            raise ImageError(f"apptainer inspect labels are not JSON: {labels[:200]!r}") from None
    if not isinstance(labels, Mapping):
        raise ImageError(f"apptainer inspect labels are a {type(labels).__name__}, not an object")
    return {str(k): str(v) for k, v in labels.items()}


def inspect_labels(image: os.PathLike | str, *, binary: str | None = None) -> dict[str, str]:
    """The labels of ``image`` (``apptainer inspect --json``, through spython)."""
    binary = _binary(binary)
    image = os.fspath(image)
    client = _client(binary)
    what = f"{binary} inspect {image}"
    with _spython_errors(what, ImageError):
        try:
            result = client.inspect(image=image, json=True, quiet=True)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            # spython parses the first output line as JSON and reaches into it
            raise ImageError(f"{what}: unreadable output ({type(exc).__name__}: {exc})") from None
    if isinstance(result, Mapping) and "return_code" in result:
        raise ImageError(f"{what} failed: {_message(result)}")
    return parse_inspect(result)


# ---------------------------------------------------------------------------- instances

@dataclass(frozen=True)
class Instance:
    """One line of ``apptainer instance list --json``."""

    name: str
    pid: int
    image: str
    ip: str = ""
    log_err: str = ""
    log_out: str = ""


def parse_instance_list(text: str) -> list[Instance]:
    """Parse ``apptainer instance list --json``: ``{"instances": [{"instance", "pid",
    "img", "ip", "logErrPath", "logOutPath"}, ...]}`` (the log paths since 3.6)."""
    if not text.strip():
        return []
    try:
        doc = json.loads(text)
    except ValueError:
        raise RuntimeUnavailable(f"apptainer instance list --json printed {text[:200]!r}, "
                                 f"not JSON") from None
    items = doc.get("instances") if isinstance(doc, Mapping) else None
    if items is None:
        items = []
    if not isinstance(items, list):
        raise RuntimeUnavailable("apptainer instance list --json: 'instances' is not a list")
    out = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("instance"), str):
            raise RuntimeUnavailable(f"apptainer instance list --json: unexpected entry {item!r}")
        out.append(Instance(name=item["instance"], pid=int(item.get("pid") or 0),
                            image=str(item.get("img") or ""), ip=str(item.get("ip") or ""),
                            log_err=str(item.get("logErrPath") or ""),
                            log_out=str(item.get("logOutPath") or "")))
    return out


def list_instances(*, binary: str | None = None) -> list[Instance]:
    """This user's running instances.

    spython's ``Client.instances()`` reports every failure as "No instances found", so
    the command goes through spython's runner and its output is parsed here: a failure is
    a RuntimeUnavailable, never an empty list.
    """
    binary = _binary(binary)
    out = _run(binary, ["instance", "list", "--json"], f"{binary} instance list")
    # the JSON is on stdout, the first entry; a lone stderr entry (warnings, no stdout)
    # is not JSON and fails the parse with its text
    return parse_instance_list(out[0] if out else "")


def stop_instance(name: str, *, timeout: float = 10.0, binary: str | None = None) -> None:
    """``apptainer instance stop -t TIMEOUT NAME`` (SIGTERM, then SIGKILL after timeout)."""
    if not _INSTANCE_NAME.match(name):
        raise ValueError(f"{name!r} is not an instance name")
    binary = _binary(binary)
    _run(binary, ["instance", "stop", "-t", str(max(1, int(timeout))), name],
         f"{binary} instance stop {name}")


def instance_name(session: str, worker: str | int, prefix: str = INSTANCE_PREFIX) -> str:
    """The instance name for a worker of a session: ``shmbench-<session>-<worker>``.

    The session name (``<host pid>-<8 hex>``, see :class:`shmbench.channel.Session`) is
    what lets :func:`stale_instances` tell whether the instance's owner still lives.
    """
    if not _SESSION.match(session):
        raise ValueError(f"{session!r} is not a shmbench session name")
    name = f"{prefix}{session}-{worker}"
    if not _INSTANCE_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid instance name")
    return name


def session_of_instance(name: str, prefix: str = INSTANCE_PREFIX) -> str | None:
    """The session an instance named by :func:`instance_name` belongs to; None otherwise."""
    if not name.startswith(prefix):
        return None
    m = re.match(r"^(\d+-[0-9a-f]{8})-[A-Za-z0-9._-]+$", name[len(prefix):])
    return m.group(1) if m else None


def _session_alive(base: Path, session: str) -> bool:
    """Whether the host that owns ``session`` lives.

    Its ``host.lock`` decides when present (held exactly while the host lives, see
    :mod:`shmbench.channel`). Without it -- the session is gone from ``base``, or belongs to
    a host that used another channel directory -- the host pid in the session name is
    checked: a live pid keeps the instance (a reused pid only delays its reaping).
    """
    from shmbench.channel import HOST_LOCK, _try_lock

    lock = base / session / HOST_LOCK
    if lock.exists():
        fd = _try_lock(lock)
        if fd is not None:
            os.close(fd)
            return False
        return lock.exists()        # held -- or removed just now by a reaper: recheck later
    pid = int(session.split("-", 1)[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_instances(prefix: str = INSTANCE_PREFIX, *, base: os.PathLike | str | None = None,
                    binary: str | None = None) -> list[Instance]:
    """Running instances named ``<prefix><session>-<worker>`` whose session's host is dead.

    Instances under the prefix whose names do not carry a session are not shmbench's to
    judge and are left alone.
    """
    from shmbench.channel import channel_base

    root = Path(base) if base is not None else channel_base()
    stale = []
    for inst in list_instances(binary=binary):
        session = session_of_instance(inst.name, prefix)
        if session is not None and not _session_alive(root, session):
            stale.append(inst)
    return stale


def stop_instances(instances: Iterable[Instance | str], *, timeout: float = 10.0,
                   binary: str | None = None) -> list[str]:
    """Stop each instance; returns the names stopped (or already gone).

    Every instance is tried; failures are raised together afterwards.
    """
    stopped, failed = [], []
    for inst in instances:
        name = inst.name if isinstance(inst, Instance) else inst
        try:
            stop_instance(name, timeout=timeout, binary=binary)
        except RuntimeUnavailable as exc:
            if "no instance found" in str(exc).lower():     # stopped meanwhile
                stopped.append(name)
            else:
                failed.append(str(exc))
            continue
        stopped.append(name)
    if failed:
        raise RuntimeUnavailable("could not stop every instance:\n" + "\n".join(failed))
    return stopped


def gc_instances(prefix: str = INSTANCE_PREFIX, *, base: os.PathLike | str | None = None,
                 timeout: float = 10.0) -> list[str]:
    """For ``shmbench gc``: stop stale instances; nothing to do without Apptainer."""
    binary = find_binary()
    if binary is None:
        return []
    return stop_instances(stale_instances(prefix, base=base, binary=binary), timeout=timeout,
                          binary=binary)
