"""An image's manifest: what went into it, carried inside the SIF and compared on demand.

A native build (:mod:`~shmbench.images.native`) writes one JSON object into the SIF it
makes (a ``GenericJSON`` data object named ``shmbench-manifest.json``, in the image's
object group): the recipe's digest and build arguments, the Debian release and mirror,
every installed Debian and Python package with its version, the Python and shmbench
versions inside, the ``SOURCE_DATE_EPOCH`` the build normalised its timestamps to, and the
builder with its tools' versions. It holds nothing that differs between two builds of the
same inputs (no build time, no host paths: a file given as a build argument is named by
its file name and sha256), so it is part of a byte-reproducible image, not a record beside
it.

Who reads it: ``shmbench inspect IMAGE`` prints it; every run log's header records it (a
pulled image is untrusted, so it is read bounded, as strict JSON, and only its plain fields
are kept); :func:`difference` says which packages moved between two manifests -- what an
experiment record's lock (``image.lock``) and a rebuilt image are compared by.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shmbench.errors import ImageError
from shmbench.images.sif import DataType, SifImage, read_sif
from shmbench.images.store import file_digest

__all__ = ["MANIFEST_NAME", "MANIFEST_SCHEMA", "collect", "difference", "read_manifest", "describe_difference"]

MANIFEST_NAME = "shmbench-manifest.json"
MANIFEST_SCHEMA = "shmbench-image-manifest/1"
#: the largest manifest read from an image (a few thousand packages fit in far less)
_MAX_MANIFEST = 4 << 20
#: the largest package database read from a tree being built
_MAX_STATUS = 64 << 20
_PY_DIRS = ("usr/lib/python3*/site-packages", "usr/lib/python3*/dist-packages", "usr/lib/python3/dist-packages")
_PY_DIRS_LOCAL = ("usr/local/lib/python3*/site-packages", "usr/local/lib/python3*/dist-packages")


def _debian_packages(rootfs: Path) -> dict[str, str]:
    """``{package[:arch]: version}`` of every installed package in ``var/lib/dpkg/status``."""
    status = rootfs / "var/lib/dpkg/status"
    if not status.is_file():
        return {}
    if status.stat().st_size > _MAX_STATUS:
        raise ImageError(f"{status} is larger than {_MAX_STATUS >> 20} MiB")
    packages: dict[str, str] = {}
    for stanza in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields.get("status", "").endswith(" installed") and "package" in fields:
            arch = fields.get("architecture", "")
            name = fields["package"] + (f":{arch}" if arch and arch != "all" else "")
            packages[name] = fields.get("version", "")
    return dict(sorted(packages.items()))


def _metadata_field(path: Path, name: str) -> str | None:
    prefix = name.lower() + ":"
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for _ in range(200):  # the header comes first; the description may be long
                line = f.readline()
                if not line or not line.strip():
                    break
                if line.lower().startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _python_packages(rootfs: Path, patterns: tuple[str, ...]) -> dict[str, str]:
    """``{normalised name: version}`` of every distribution under those site directories."""
    packages: dict[str, str] = {}
    for pattern in patterns:
        for site in sorted(rootfs.glob(pattern)):
            if not site.is_dir() or site.is_symlink():
                continue
            for entry in sorted(os.listdir(site)):
                meta = None
                if entry.endswith(".dist-info"):
                    meta = site / entry / "METADATA"
                elif entry.endswith(".egg-info"):
                    meta = site / entry / "PKG-INFO" if (site / entry).is_dir() else site / entry
                if meta is None or not meta.is_file():
                    continue
                name, version = _metadata_field(meta, "Name"), _metadata_field(meta, "Version")
                if name and version:
                    packages[re.sub(r"[-_.]+", "-", name).lower()] = version
    return dict(sorted(packages.items()))


def _python_version(rootfs: Path) -> str | None:
    """``3.11`` from the image's ``python3`` (the link Debian makes, read, never followed
    out of the tree)."""
    for candidate in ("usr/bin/python3", "usr/local/bin/python3"):
        path = rootfs / candidate
        if path.is_symlink():
            match = re.fullmatch(r"(?:.*/)?python(3\.\d+)", os.readlink(path))
            if match:
                return match.group(1)
    return None


def file_argument(value: str) -> Any:
    """A build argument as the manifest records it: a file by its name and sha256 (its
    path is the builder's, not the image's), anything else as given."""
    if os.path.isfile(value):
        return {"file": os.path.basename(value), "sha256": file_digest(value).removeprefix("sha256:")}
    return value


def collect(
    rootfs: Path,
    *,
    recipe: str,
    recipe_digest: str | None,
    build_args: Mapping[str, str],
    header: Mapping[str, str],
    epoch: int,
    builder: str,
) -> dict[str, Any]:
    """The manifest of the tree ``rootfs`` that a native build made (see the module docstring)."""
    python = _python_packages(rootfs, _PY_DIRS)
    local = _python_packages(rootfs, _PY_DIRS_LOCAL)
    both = {**python, **local}
    return {
        "schema": MANIFEST_SCHEMA,
        "recipe": {"name": os.path.basename(recipe), "digest": recipe_digest},
        "build_args": {k: file_argument(v) for k, v in sorted(build_args.items())},
        "bootstrap": {k: header[k] for k in sorted(header)},
        "source_date_epoch": epoch,
        "debian_packages": _debian_packages(rootfs),
        "python": _python_version(rootfs),
        "python_packages": dict(sorted(both.items())),
        "shmbench": both.get("shmbench"),
        "builder": builder,
    }


def read_manifest(image: str | os.PathLike[str] | SifImage) -> dict[str, Any] | None:
    """The manifest a SIF carries, or None (an image shmbench did not build).

    The image may be untrusted: the object is read only up to 4 MiB and parsed as strict
    JSON; anything else is an :class:`~shmbench.errors.ImageError`.
    """
    from shmbench.errors import ExperimentError
    from shmbench.wire.strict_json import loads

    sif = image if isinstance(image, SifImage) else read_sif(image)
    found = [d for d in sif.of_type(DataType.GENERIC_JSON) if d.name == MANIFEST_NAME]
    if not found:
        return None
    if found[0].size > _MAX_MANIFEST:
        raise ImageError(f"{sif.path}: its manifest is larger than {_MAX_MANIFEST >> 20} MiB")
    try:
        data = loads(sif.read_object(found[0]), where=f"{sif.path} manifest")
    except ExperimentError as exc:
        raise ImageError(str(exc)) from None
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        raise ImageError(f"{sif.path}: its manifest is not a {MANIFEST_SCHEMA} object")
    return data


def difference(expected: Mapping[str, Any], got: Mapping[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """``{"debian_packages": {name: [expected, got]}, "python_packages": ...}`` for every
    package whose version differs (None where one side lacks it), plus the other top-level
    fields that differ, under ``"fields"``. Only the fields ``expected`` has are compared,
    so a lock (package lists only) compares with a whole manifest."""
    out: dict[str, dict[str, list[Any]]] = {}
    for table in ("debian_packages", "python_packages"):
        if table not in expected:
            continue
        want, have = dict(expected.get(table) or {}), dict(got.get(table) or {})
        moved = {
            name: [want.get(name), have.get(name)]
            for name in sorted(set(want) | set(have))
            if want.get(name) != have.get(name)
        }
        if moved:
            out[table] = moved
    fields = {
        key: [expected[key], got.get(key)]
        for key in sorted(expected)
        if key not in ("debian_packages", "python_packages") and expected[key] != got.get(key)
    }
    if fields:
        out["fields"] = fields
    return out


def describe_difference(diff: Mapping[str, Mapping[str, list[Any]]], limit: int = 12) -> str:
    """One line per moved package (``python3.11 3.11.2-6 -> 3.11.2-6+deb12u1``), at most ``limit``."""
    lines = []
    for table, moved in diff.items():
        for name, (want, have) in moved.items():
            kind = {"debian_packages": "deb", "python_packages": "pip"}.get(table, "field")
            lines.append(
                f"{kind} {name}: {want if want is not None else '(absent)'} -> {have if have is not None else '(absent)'}"
            )
    more = len(lines) - limit
    return "\n".join(lines[:limit] + ([f"... and {more} more"] if more > 0 else []))
