"""Choosing a runtime by name: ``"auto"``, ``"apptainer"``/``"singularity"``, ``"bwrap"``,
``"process"``, or a :class:`~shmbench.runtimes.base.Runtime` instance."""

from __future__ import annotations

import functools
import os
import warnings

from shmbench.errors import RuntimeUnavailable
from shmbench.runtimes.base import Runtime
from shmbench.runtimes.process import ProcessRuntime

__all__ = ["AUTO_ORDER", "RUNTIMES", "choose", "get_runtime", "probe_all"]


def _runtimes() -> dict[str, type[Runtime]]:
    out: dict[str, type[Runtime]] = {}
    try:
        from shmbench.runtimes.apptainer import ApptainerRuntime

        out["apptainer"] = ApptainerRuntime
        out["singularity"] = ApptainerRuntime
    except ImportError:
        pass
    try:
        from shmbench.runtimes.bwrap import BwrapRuntime

        out["bwrap"] = BwrapRuntime
    except ImportError:
        pass
    out["process"] = ProcessRuntime
    return out


RUNTIMES = _runtimes()
AUTO_ORDER = ("apptainer", "bwrap", "process")


@functools.cache
def _probe(name: str) -> tuple[bool, str]:
    return RUNTIMES[name].probe()


def probe_all() -> dict[str, tuple[bool, str]]:
    """Which runtimes work here, and why or why not (probed once per process)."""
    return {name: _probe(name) for name in dict.fromkeys(RUNTIMES) if name != "singularity"}


def _choose(runtime: str, image) -> tuple[str, list[str]]:
    """(name, why each runtime ``"auto"`` tried before it failed)."""
    if runtime == "auto":
        env_choice = os.environ.get("SHMBENCH_RUNTIME")
        if env_choice and env_choice != "auto":
            return _choose(env_choice, image)
        reasons = []
        for name in AUTO_ORDER:
            if name not in RUNTIMES:
                continue
            if name == "apptainer" and image is None:
                reasons.append("apptainer: needs an image")
                continue  # Apptainer runs images; with none, bwrap runs the host's own software
            if name == "process" and image is not None:
                break
            ok, why = _probe(name)
            if ok:
                return name, reasons
            reasons.append(f"{name}: {why}")
        raise RuntimeUnavailable("no runtime can run image " + repr(str(image)) + ": " + "; ".join(reasons))
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from auto, {', '.join(RUNTIMES)}")
    ok, why = _probe(runtime)
    if not ok:
        raise RuntimeUnavailable(f"runtime {runtime!r} does not work here: {why}")
    return runtime, []


def choose(runtime: str | Runtime = "auto", *, image=None) -> str:
    """The name of the runtime :func:`get_runtime` starts for these arguments.

    ``"auto"`` (and ``$SHMBENCH_RUNTIME`` when it names another) is resolved here, once:
    Apptainer when there is an image, then bwrap (when user namespaces work here), then a
    plain process -- never a plain process for an image.

    Raises:
        ValueError: an unknown runtime name.
        RuntimeUnavailable: the named runtime does not work here, or none can run ``image``.
    """
    if isinstance(runtime, Runtime):
        return runtime.name
    return _choose(runtime, image)[0]


def get_runtime(runtime: str | Runtime = "auto", *, image=None, binds=(), environment=None, **options) -> Runtime:
    """A runtime instance for ``runtime`` (see :func:`choose` for how one is picked).

    When ``"auto"`` falls back to a plain process it says so with a one-line warning, since
    the env then runs without isolation.
    """
    if isinstance(runtime, Runtime):
        return runtime
    name, reasons = _choose(runtime, image)
    if name == "process" and reasons:
        warnings.warn(
            "shmbench: no container runtime works here ("
            + "; ".join(reasons)
            + "); running the env in a plain process without isolation",
            RuntimeWarning,
            stacklevel=3,
        )
    if name == "singularity" and "binary" not in options:
        import shutil

        options["binary"] = shutil.which("singularity") or shutil.which("apptainer")
    return RUNTIMES[name](image=image, binds=binds, environment=environment, **options)
