"""The running shmbench as a wheel, so that building an image needs no manual step.

Every shipped recipe installs shmbench from ``{{ wheel }}``. When ``shmbench build`` (or
:func:`~shmbench.images.build.build`) is given no ``wheel`` build argument, it uses
:func:`own_wheel`: a wheel of this very shmbench, built with ``pip wheel`` from its source
checkout once per source state and cached (``CACHE/wheels/<source hash>/``). An installed
shmbench (no checkout around it) cannot rebuild itself: then the error says which build
argument to give. The wheel's C extension is built for *this* Python: the image's Python
must be the same minor version (3.11 for the Debian 12 recipes).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from shmbench.errors import ImageError
from shmbench.images.store import cache_subdir

__all__ = ["checkout_root", "source_hash", "own_wheel", "with_own_wheel"]

_WHEEL_PLACEHOLDER = re.compile(r"\{\{\s*wheel\s*\}\}")


def checkout_root() -> Path | None:
    """The source checkout this shmbench was imported from, or None for an installed one."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "setup.py").is_file() and (root / "shmbench").is_dir():
        return root
    return None


def source_hash(root: Path) -> str:
    """What a wheel of the checkout is built from: the package sources, the benchmark suites
    (installed with it) and the build configuration."""
    h = hashlib.sha256()
    for name in ("pyproject.toml", "setup.py"):
        h.update((root / name).read_bytes())
    for path in sorted([*(root / "shmbench").rglob("*"), *(root / "bench").rglob("*"), *(root / "recipes").rglob("*")]):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".so", ".pyc"):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:24]


def own_wheel(root: Path | None = None) -> Path:
    """A wheel of the running shmbench -- or of the checkout at ``root`` -- built once per
    source state, then cached."""
    root = root or checkout_root()
    if root is None:
        raise ImageError(
            "the recipe installs shmbench from {{ wheel }}, and this shmbench is installed, not a source "
            "checkout, so it cannot build a wheel of itself: give --build-arg wheel=PATH (a wheel for the "
            "image's Python, e.g. from 'pip download shmbench --no-deps' or 'pip wheel' of a checkout)"
        )
    out = cache_subdir("wheels") / source_hash(root)
    wheels = sorted(out.glob("shmbench-*.whl"))
    if wheels:
        return wheels[-1]
    staging = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    print(f"shmbench build: building a wheel of this shmbench ({root})...", file=sys.stderr, flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(staging), str(root)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ImageError(f"pip wheel of {root} failed: {done.stderr.strip()[-2000:]}")
    try:
        os.rename(staging, out)
    except OSError:  # another process finished first: its wheel is as good
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(out.glob("shmbench-*.whl"))[-1]


def with_own_wheel(recipe_text: str, build_args: Mapping[str, str] | None) -> dict[str, str]:
    """``build_args``, with ``wheel`` set to :func:`own_wheel` when the recipe uses
    ``{{ wheel }}`` and neither the caller nor its ``%arguments`` give one."""
    args = dict(build_args or {})
    if "wheel" in args or not _WHEEL_PLACEHOLDER.search(recipe_text):
        return args
    if re.search(r"(?m)^\s*wheel\s*=", _arguments_section(recipe_text)):
        return args
    args["wheel"] = str(own_wheel())
    return args


def _arguments_section(text: str) -> str:
    m = re.search(r"(?ms)^%arguments\s*$(.*?)(?=^%\w|\Z)", text)
    return m.group(1) if m else ""
