"""What a record's pinned image becomes for one run: an image to run in, or the host and why.

:func:`run_image` decides, before anything is pulled or built, whether the runtime would
run an image at all: an explicit ``process`` runtime runs the env on the host, so a
recipe is not built for nothing (a published image is still pulled and verified, and the
run warns, as before); ``auto`` with no container runtime here refuses unless the host is
allowed. Then :func:`~shmbench.images.pinned.obtain` pulls or builds and compares. What
happened goes into the run log's header (``image_build``, ``image_manifest``).
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shmbench.errors import RuntimeUnavailable
from shmbench.images.pinned import obtain
from shmbench.images.refs import ImageSpec
from shmbench.runtimes.selection import choose

__all__ = ["RunImage", "run_image"]


@dataclass
class RunImage:
    """The image a run pulled or built (None: none), its digest, the runtime to start,
    whether the env runs in the image, and what the log header records about it."""

    path: Path | None
    digest: str | None
    runtime: Any
    manifest: dict[str, Any] | None = None
    build: dict[str, Any] = field(default_factory=dict)
    used: bool = False


def _host(runtime: Any, why: str, allow_host: bool, spec: ImageSpec) -> RunImage:
    if not allow_host:
        raise RuntimeUnavailable(
            f"{spec.what} cannot be had or run here: {why}; to run on the host instead, allow it "
            "(--allow-host, allow_host=True)"
        )
    print(f"shmbench: {why}; running on the host (allowed)", file=sys.stderr)
    return RunImage(None, None, "process", build={"skipped": why})


def run_image(
    spec: ImageSpec | None,
    runtime: Any,
    *,
    offline: bool = False,
    progress: bool = True,
    require_pinned: bool = False,
    allow_host: bool = False,
) -> RunImage:
    """The image ``spec`` pins, made real for ``runtime`` (see the module docstring)."""
    if spec is None:
        return RunImage(None, None, runtime)
    try:
        name = choose(runtime, image=spec.what)
    except RuntimeUnavailable as exc:
        return _host(runtime, str(exc), allow_host, spec)
    if name == "process" and spec.ref is None:
        why = "the process runtime runs the env on the host: the image's recipe was not built"
        return RunImage(None, None, runtime, build={"skipped": why})
    try:
        got = obtain(spec, offline=offline, progress=progress, require_pinned=require_pinned)
    except RuntimeUnavailable as exc:
        return _host(runtime, str(exc), allow_host, spec)
    if name == "process":
        warnings.warn(
            f"shmbench: image {spec.what} was pulled and verified ({got.digest}), but the "
            "process runtime runs the env on the host, not in the image; use runtime='bwrap' or "
            "'apptainer' to run in it (the log header records image_used: false)",
            RuntimeWarning,
            stacklevel=3,
        )
        return RunImage(got.path, got.digest, runtime, got.manifest, {**got.to_log(), "skipped": "process runtime"})
    return RunImage(got.path, got.digest, runtime, got.manifest, got.to_log(), used=True)
