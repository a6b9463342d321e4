"""The process runtime: a server as a plain subprocess of this interpreter, no isolation.

The embedded default where no container system exists, and the baseline that shows what a
container costs. The lifecycle around the process is :class:`~shmbench.runtimes.base.
ServerProcess`'s, the same as every runtime's; the server runs below a guard
(:mod:`shmbench.runtimes.guard`) that reaps every descendant when it ends, since no PID
namespace does it here.
"""

from __future__ import annotations

import os
import sys

from shmbench.runtimes.base import Launch, Runtime, server_command

__all__ = ["ProcessRuntime", "host_pythonpath"]


def host_pythonpath() -> str:
    """PYTHONPATH that lets a child import what this process can (tests' helper modules,
    a notebook's working directory), without repeating the interpreter's own paths."""
    skip = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    entries = []
    for p in [os.getcwd(), *sys.path]:
        if not p or not os.path.isdir(p):
            continue
        real = os.path.realpath(p)
        if any(real == s or real.startswith(s + os.sep) for s in skip):
            continue
        if p not in entries:
            entries.append(p)
    existing = os.environ.get("PYTHONPATH")
    if existing:
        entries += [e for e in existing.split(os.pathsep) if e and e not in entries]
    return os.pathsep.join(entries)


class ProcessRuntime(Runtime):
    """A plain subprocess of this interpreter: no isolation, the host's environment.

    The embedded default where no container system exists, and the baseline that shows
    what a container costs.
    """

    name = "process"
    isolated = False
    reaps = True

    def __init__(self, image=None, binds=(), environment=None, limits=None) -> None:
        if image is not None:
            raise ValueError(
                "the process runtime runs on the host; it takes no image "
                "(use runtime='bwrap' or 'apptainer' for images)"
            )
        if binds:
            raise ValueError("the process runtime shares the host's file system; binds make no sense")
        super().__init__(None, (), environment, limits)

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        return True, f"{sys.executable} (no isolation)"

    def command(self, launch: Launch) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        env["PYTHONPATH"] = host_pythonpath()
        env.update(self.environment)
        env.pop("SHMBENCH_CHANNEL", None)
        env.update(launch.server_environment())
        return server_command(sys.executable), env
