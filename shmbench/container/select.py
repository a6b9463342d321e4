"""Choosing a runtime by name: ``"auto"``, ``"apptainer"``/``"singularity"``, ``"bwrap"``,
``"process"``, or a :class:`~shmbench.container.runtime.Runtime` instance."""

from __future__ import annotations

import functools
import os
import warnings

from shmbench.container.runtime import ProcessRuntime, Runtime
from shmbench.errors import RuntimeUnavailable

__all__ = ["RUNTIMES", "get_runtime", "probe_all"]


def _runtimes() -> dict[str, type[Runtime]]:
    out: dict[str, type[Runtime]] = {}
    try:
        from shmbench.container.apptainer import ApptainerRuntime

        out["apptainer"] = ApptainerRuntime
        out["singularity"] = ApptainerRuntime
    except ImportError:
        pass
    try:
        from shmbench.container.bwrap import BwrapRuntime

        out["bwrap"] = BwrapRuntime
    except ImportError:
        pass
    out["process"] = ProcessRuntime
    return out


RUNTIMES = _runtimes()
AUTO_ORDER = ("apptainer", "bwrap", "process")


@functools.lru_cache(maxsize=None)
def _probe(name: str) -> tuple[bool, str]:
    return RUNTIMES[name].probe()


def probe_all() -> dict[str, tuple[bool, str]]:
    """Which runtimes work here, and why or why not (probed once per process)."""
    return {name: _probe(name) for name in dict.fromkeys(RUNTIMES) if name != "singularity"}


def get_runtime(runtime: str | Runtime = "auto", *, image=None, binds=(), environment=None,
                **options) -> Runtime:
    """A runtime instance for ``runtime``.

    ``"auto"`` prefers Apptainer, then bwrap (when user namespaces work here), then a plain
    process -- with a one-line warning, since the env then runs without isolation. An
    image given to ``auto`` rules out the process runtime.
    """
    if isinstance(runtime, Runtime):
        return runtime
    if runtime == "auto":
        env_choice = os.environ.get("SHMBENCH_RUNTIME")
        if env_choice and env_choice != "auto":
            return get_runtime(env_choice, image=image, binds=binds, environment=environment, **options)
        reasons = []
        for name in AUTO_ORDER:
            if name not in RUNTIMES:
                continue
            if name == "apptainer" and image is None:
                reasons.append("apptainer: needs an image")
                continue   # Apptainer runs images; with none, bwrap runs the host's own software
            ok, why = _probe(name)
            if ok:
                if name == "process":
                    if image is not None:
                        break
                    warnings.warn(
                        "shmbench: no container runtime works here (" + "; ".join(reasons)
                        + "); running the env in a plain process without isolation",
                        RuntimeWarning, stacklevel=3)
                return RUNTIMES[name](image=image, binds=binds, environment=environment, **options)
            reasons.append(f"{name}: {why}")
        raise RuntimeUnavailable("no runtime can run image " + repr(str(image)) + ": " + "; ".join(reasons))
    cls = RUNTIMES.get(runtime)
    if cls is None:
        raise ValueError(f"unknown runtime {runtime!r}; choose from auto, {', '.join(RUNTIMES)}")
    ok, why = _probe(runtime)
    if not ok:
        raise RuntimeUnavailable(f"runtime {runtime!r} does not work here: {why}")
    if runtime == "singularity" and "binary" not in options:
        import shutil

        options["binary"] = shutil.which("singularity") or shutil.which("apptainer")
    return cls(image=image, binds=binds, environment=environment, **options)
