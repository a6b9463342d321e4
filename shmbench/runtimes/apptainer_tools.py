"""The spython helpers around Apptainer: pull, inspect, instances, and their garbage collection.

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
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shmbench.errors import ImageError, RuntimeUnavailable, ShmbenchError
from shmbench.images.sif import read_sif
from shmbench.runtimes.apptainer import find_binary, require_binary, spython_client
from shmbench.transport.channel import HOST_LOCK
from shmbench.transport.session import channel_base, pid_alive, try_lock

__all__ = [
    "Instance",
    "INSTANCE_PREFIX",
    "PULL_SCHEMES",
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

#: what ``apptainer pull`` fetches (spython's pull accepts the same list)
PULL_SCHEMES = ("docker", "oras", "library", "shub", "https")
INSTANCE_PREFIX = "shmbench-"
_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # Apptainer's rule for instance names
_SESSION = re.compile(r"^(\d+)-[0-9a-f]{8}$")  # shmbench.transport.session.Session.name
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


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


def _run(binary: str, args: Sequence[str], what: str, error: type[ShmbenchError] = RuntimeUnavailable) -> list[str]:
    """Run ``BINARY ARGS`` through spython's command runner; its output, or raise ``error``.

    The output is spython's list: stdout, then stderr, each only when non-empty.
    """
    from spython.utils import run_command

    client = spython_client(binary)
    cmd = client._init_command(list(args))
    with _spython_errors(what, error):
        result = run_command(cmd, quiet=True)
    if result["return_code"] != 0:
        raise error(f"{what} failed: {_message(result)}")
    return [str(m) for m in result.get("message") or []]


def pull(
    ref: str, dest: os.PathLike | str, *, force: bool = False, binary: str | None = None, quiet: bool = True
) -> Path:
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
    scheme = ref.split("://", 1)[0].lower() if "://" in ref else ""
    if scheme not in PULL_SCHEMES:
        raise ValueError(
            f"cannot pull {ref!r}: apptainer pull takes {', '.join(s + '://' for s in PULL_SCHEMES)} references"
        )
    binary = require_binary(binary)
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
    binary = require_binary(binary)
    image = os.fspath(image)
    client = spython_client(binary)
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
        raise RuntimeUnavailable(f"apptainer instance list --json printed {text[:200]!r}, not JSON") from None
    items = doc.get("instances") if isinstance(doc, Mapping) else None
    if items is None:
        items = []
    if not isinstance(items, list):
        raise RuntimeUnavailable("apptainer instance list --json: 'instances' is not a list")
    out = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("instance"), str):
            raise RuntimeUnavailable(f"apptainer instance list --json: unexpected entry {item!r}")
        out.append(
            Instance(
                name=item["instance"],
                pid=int(item.get("pid") or 0),
                image=str(item.get("img") or ""),
                ip=str(item.get("ip") or ""),
                log_err=str(item.get("logErrPath") or ""),
                log_out=str(item.get("logOutPath") or ""),
            )
        )
    return out


def list_instances(*, binary: str | None = None) -> list[Instance]:
    """This user's running instances.

    spython's ``Client.instances()`` reports every failure as "No instances found", so
    the command goes through spython's runner and its output is parsed here: a failure is
    a RuntimeUnavailable, never an empty list.
    """
    binary = require_binary(binary)
    out = _run(binary, ["instance", "list", "--json"], f"{binary} instance list")
    # the JSON is on stdout, the first entry; a lone stderr entry (warnings, no stdout)
    # is not JSON and fails the parse with its text
    return parse_instance_list(out[0] if out else "")


def stop_instance(name: str, *, timeout: float = 10.0, binary: str | None = None) -> None:
    """``apptainer instance stop -t TIMEOUT NAME`` (SIGTERM, then SIGKILL after timeout)."""
    if not _INSTANCE_NAME.match(name):
        raise ValueError(f"{name!r} is not an instance name")
    binary = require_binary(binary)
    _run(binary, ["instance", "stop", "-t", str(max(1, int(timeout))), name], f"{binary} instance stop {name}")


def instance_name(session: str, worker: str | int, prefix: str = INSTANCE_PREFIX) -> str:
    """The instance name for a worker of a session: ``shmbench-<session>-<worker>``.

    The session name (``<host pid>-<8 hex>``, see :class:`shmbench.transport.session.Session`) is
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
    m = re.match(r"^(\d+-[0-9a-f]{8})-[A-Za-z0-9._-]+$", name[len(prefix) :])
    return m.group(1) if m else None


def _session_alive(base: Path, session: str) -> bool:
    """Whether the host that owns ``session`` lives.

    Its ``host.lock`` decides when present (held exactly while the host lives, see
    :mod:`shmbench.transport.session`). Without it -- the session is gone from ``base``, or belongs to
    a host that used another channel directory -- the host pid in the session name is
    checked: a live pid keeps the instance (a reused pid only delays its reaping).
    """
    lock = base / session / HOST_LOCK
    if lock.exists():
        fd = try_lock(lock)
        if fd is not None:
            os.close(fd)
            return False
        return lock.exists()  # held -- or removed just now by a reaper: recheck later
    return pid_alive(int(session.split("-", 1)[0]))


def stale_instances(
    prefix: str = INSTANCE_PREFIX, *, base: os.PathLike | str | None = None, binary: str | None = None
) -> list[Instance]:
    """Running instances named ``<prefix><session>-<worker>`` whose session's host is dead.

    Instances under the prefix whose names do not carry a session are not shmbench's to
    judge and are left alone.
    """
    root = Path(base) if base is not None else channel_base()
    stale = []
    for inst in list_instances(binary=binary):
        session = session_of_instance(inst.name, prefix)
        if session is not None and not _session_alive(root, session):
            stale.append(inst)
    return stale


def stop_instances(
    instances: Iterable[Instance | str], *, timeout: float = 10.0, binary: str | None = None
) -> list[str]:
    """Stop each instance; returns the names stopped (or already gone).

    Every instance is tried; failures are raised together afterwards.
    """
    stopped, failed = [], []
    for inst in instances:
        name = inst.name if isinstance(inst, Instance) else inst
        try:
            stop_instance(name, timeout=timeout, binary=binary)
        except RuntimeUnavailable as exc:
            if "no instance found" in str(exc).lower():  # stopped meanwhile
                stopped.append(name)
            else:
                failed.append(str(exc))
            continue
        stopped.append(name)
    if failed:
        raise RuntimeUnavailable("could not stop every instance:\n" + "\n".join(failed))
    return stopped


def gc_instances(
    prefix: str = INSTANCE_PREFIX, *, base: os.PathLike | str | None = None, timeout: float = 10.0
) -> list[str]:
    """For ``shmbench gc``: stop stale instances; nothing to do without Apptainer."""
    binary = find_binary()
    if binary is None:
        return []
    return stop_instances(stale_instances(prefix, base=base, binary=binary), timeout=timeout, binary=binary)
