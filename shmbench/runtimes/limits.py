"""Resource limits for servers: memory, processes, CPUs and /tmp, as this machine can enforce them.

``limits=`` (on ``make``, ``make_vec``, ``RemoteRunner``, ``shmbench run --limit``) bounds
each server a runtime starts, so that a runaway or hostile env cannot take the host down
with it (a fork bomb, a 30 GiB allocation, a /tmp filled to the brim). How a limit binds
depends on what the machine offers, in this order:

* **a cgroup** of its own per server, when the host may create one: cgroup v2 under a
  delegated subtree (``/sys/fs/cgroup/<our own cgroup>``, writable), or the v1 ``memory``,
  ``pids`` and ``cpu`` hierarchies where they are writable (root). ``memory`` is the
  cgroup's memory limit (the kernel's OOM killer stops a server over it), ``pids`` its
  process count, ``cpus`` a CFS quota of that many CPUs' time.
* **per-process limits** otherwise: ``memory`` becomes RLIMIT_AS (an allocation over it
  fails with MemoryError in the server), ``pids`` RLIMIT_NPROC (counted per user namespace
  by this kernel, so it binds inside a bwrap sandbox, also for root), ``cpus`` a CPU
  affinity of that many cores.
* ``tmp`` is the size of the private /tmp: bwrap's ``--size`` for its tmpfs. The process
  runtime has no private /tmp, and Apptainer sizes its own by its configuration
  (``sessiondir max size``): both refuse it rather than pretend.

:func:`enforcement` says which applies here (``shmbench doctor`` prints it); the guard
process of :mod:`shmbench.runtimes.guard` joins the cgroups and sets the limits before the
server starts, so nothing the server starts escapes them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from shmbench.transport.session import pid_alive

__all__ = ["Limits", "CgroupSet", "enforcement", "parse_size", "server_cgroups", "sweep_cgroups"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_CFS_PERIOD_US = 100_000


def parse_size(value: int | str) -> int:
    """Bytes from ``512M``, ``2G``, ``1.5GiB`` or a plain number (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"a size must be positive, got {value}")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size such as 512M or 2G")
    return max(1, int(float(m.group(1)) * _UNITS[m.group(2).upper()]))


@dataclass(frozen=True)
class Limits:
    """Per-server resource limits; None leaves one unbounded.

    Attributes:
        memory: bytes of memory (``"2G"`` accepted).
        pids: processes and threads the server may have at once.
        cpus: CPUs' worth of time (a fraction is fine with a cgroup).
        tmp: bytes of the private /tmp.
    """

    memory: int | None = None
    pids: int | None = None
    cpus: float | None = None
    tmp: int | None = None

    def __post_init__(self) -> None:
        for name in ("memory", "tmp"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, parse_size(value))
        if self.pids is not None and (type(self.pids) is not int or self.pids < 1):
            raise ValueError(f"limits: pids must be an int >= 1, got {self.pids!r}")
        if self.cpus is not None and not (isinstance(self.cpus, (int, float)) and 0 < self.cpus <= 4096):
            raise ValueError(f"limits: cpus must be a number > 0, got {self.cpus!r}")

    @classmethod
    def of(cls, value: Limits | Mapping[str, Any] | str | None) -> Limits | None:
        """A Limits from itself, a dict, ``"memory=2G,pids=256"``, or None."""
        if value is None or isinstance(value, Limits):
            return value
        if isinstance(value, str):
            pairs = [p.partition("=") for p in value.split(",") if p.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise ValueError(f"limits {value!r}: expected NAME=VALUE[,NAME=VALUE...]")
            value = {k.strip(): v.strip() for k, _, v in pairs}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown limit(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        conv = {"pids": int, "cpus": float}
        return cls(**{k: conv[k](v) if k in conv and isinstance(v, str) else v for k, v in value.items()})

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def describe(self) -> str:
        parts = []
        if self.memory is not None:
            parts.append(f"memory {_human(self.memory)}")
        if self.pids is not None:
            parts.append(f"pids {self.pids}")
        if self.cpus is not None:
            parts.append(f"cpus {self.cpus:g}")
        if self.tmp is not None:
            parts.append(f"/tmp {_human(self.tmp)}")
        return ", ".join(parts) or "none"


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


# ------------------------------------------------------------------------------------------
# cgroups
# ------------------------------------------------------------------------------------------


def _own_v2_cgroup() -> Path | None:
    """Our own cgroup v2 directory when it is writable (delegated to us, or we are root)."""
    if not (CGROUP_ROOT / "cgroup.controllers").exists():
        unified = CGROUP_ROOT / "unified"  # hybrid: v2 mounted beside v1
        if not (unified / "cgroup.controllers").exists():
            return None
        root = unified
    else:
        root = CGROUP_ROOT
    try:
        line = next(ln for ln in Path("/proc/self/cgroup").read_text().splitlines() if ln.startswith("0::"))
    except (OSError, StopIteration):
        return None
    own = root / line[3:].lstrip("/")
    if not os.access(own, os.W_OK):
        return None
    controllers = (
        set((own / "cgroup.controllers").read_text().split()) if (own / "cgroup.controllers").exists() else set()
    )
    if not {"memory", "pids"} <= controllers:
        return None
    return own


def _v1_dirs() -> dict[str, Path]:
    """The writable v1 hierarchies for memory, pids and cpu (as this process sees them)."""
    out = {}
    for controller in ("memory", "pids", "cpu"):
        d = CGROUP_ROOT / controller
        if (d / "cgroup.procs").exists() and os.access(d, os.W_OK):
            out[controller] = d
    return out


def _mode() -> str:
    if _own_v2_cgroup() is not None:
        return "v2"
    if len(_v1_dirs()) == 3:
        return "v1"
    return ""


class CgroupSet:
    """The cgroup(s) of one server: made by the host, joined by the guard, removed after.

    ``procs`` are the files the guard writes its pid into (one per v1 hierarchy, one for
    v2). After the server is gone, :meth:`remove` kills what is left in them and removes
    the directories.
    """

    def __init__(self, dirs: list[Path], mode: str) -> None:
        self.dirs = dirs
        self.mode = mode

    @property
    def procs(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    @classmethod
    def create(cls, name: str, limits: Limits) -> CgroupSet | None:
        """Cgroups for ``limits`` named ``shmbench-<name>``; None when this machine lets us make none."""
        mode = _mode()
        if not mode or not (limits.memory or limits.pids or limits.cpus):
            return None
        leaf = f"shmbench-{name}"
        made: list[Path] = []
        try:
            if mode == "v2":
                own = _own_v2_cgroup()
                leaf_dir = own / leaf if own is not None else None
                if leaf_dir is None:
                    return None
                leaf_dir.mkdir()
                made.append(leaf_dir)
                if limits.memory:
                    (leaf_dir / "memory.max").write_text(str(limits.memory))
                    if (leaf_dir / "memory.swap.max").exists():
                        (leaf_dir / "memory.swap.max").write_text("0")
                if limits.pids:
                    (leaf_dir / "pids.max").write_text(str(limits.pids))
                if limits.cpus and (leaf_dir / "cpu.max").exists():
                    (leaf_dir / "cpu.max").write_text(f"{math.ceil(limits.cpus * _CFS_PERIOD_US)} {_CFS_PERIOD_US}")
            else:
                for controller, base in _v1_dirs().items():
                    d = base / "shmbench" / leaf
                    for _ in range(3):  # another host may remove the shared parent meanwhile
                        try:
                            d.mkdir(parents=True)
                            break
                        except FileNotFoundError:
                            continue
                    else:
                        d.mkdir(parents=True)
                    made.append(d)
                    if controller == "memory" and limits.memory:
                        (d / "memory.limit_in_bytes").write_text(str(limits.memory))
                        if (d / "memory.memsw.limit_in_bytes").exists():
                            (d / "memory.memsw.limit_in_bytes").write_text(str(limits.memory))
                    if controller == "pids" and limits.pids:
                        (d / "pids.max").write_text(str(limits.pids))
                    if controller == "cpu" and limits.cpus:
                        (d / "cpu.cfs_period_us").write_text(str(_CFS_PERIOD_US))
                        (d / "cpu.cfs_quota_us").write_text(str(math.ceil(limits.cpus * _CFS_PERIOD_US)))
        except OSError:
            cls(made, mode).remove()
            return None
        return cls(made, mode)

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer stopped something in the memory cgroup."""
        for d in self.dirs:
            for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
                try:
                    text = (d / name).read_text()
                except OSError:
                    continue
                for line in text.splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == key and parts[1] != "0":
                        return True
        return False

    def remove(self) -> None:
        """Kill whatever is left in the cgroups, then remove them (idempotent, never raises)."""
        import signal
        import time

        for d in self.dirs:
            for _ in range(50):
                try:
                    pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
                except OSError:
                    break
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                time.sleep(0.02)
            try:
                d.rmdir()
            except OSError:
                pass
            if self.mode == "v1":
                try:
                    d.parent.rmdir()  # the shared "shmbench" directory, once empty
                except OSError:
                    pass


def enforcement() -> dict[str, str]:
    """How each limit binds on this machine (for ``shmbench doctor`` and the docs)."""
    mode = _mode()
    if mode == "v2":
        how = f"cgroup v2 under {_own_v2_cgroup()}"
        return {"memory": how, "pids": how, "cpus": how, "tmp": "bwrap --size (not process, not apptainer)"}
    if mode == "v1":
        how = "cgroup v1 (memory, pids, cpu hierarchies)"
        return {"memory": how, "pids": how, "cpus": how, "tmp": "bwrap --size (not process, not apptainer)"}
    return {
        "memory": "RLIMIT_AS (no writable cgroup here)",
        "pids": "RLIMIT_NPROC, per user namespace",
        "cpus": "CPU affinity (no writable cgroup here)",
        "tmp": "bwrap --size (not process, not apptainer)",
    }


_LEAF = re.compile(r"^shmbench-(\d+)-[0-9a-f]+-")


def server_cgroups() -> dict[Path, int]:
    """Every server cgroup shmbench made here, with the pid of the host that made it."""
    mode = _mode()
    parents: list[Path] = []
    if mode == "v2":
        own = _own_v2_cgroup()
        parents = [own] if own is not None else []
    elif mode == "v1":
        parents = [base / "shmbench" for base in _v1_dirs().values()]
    found: dict[Path, int] = {}
    for parent in parents:
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            m = _LEAF.match(name)
            if m is not None:
                found[parent / name] = int(m.group(1))
    return found


def sweep_cgroups() -> list[Path]:
    """Remove the cgroups of servers whose host died (kill -9) before it could: every
    ``shmbench-<host pid>-...`` cgroup whose host pid is gone. Returns what was removed;
    never raises."""
    dead = [path for path, host in server_cgroups().items() if not pid_alive(host)]
    if dead:
        CgroupSet(dead, _mode()).remove()
    return [d for d in dead if not d.exists()]
