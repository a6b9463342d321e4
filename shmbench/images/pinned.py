"""An experiment's pinned image made real: pulled where it is published, built where not.

A record's ``[image]`` pins what can be checked (:class:`~shmbench.images.refs.ImageSpec`):
a reference and digest where the image is published, and/or the recipe it is built from,
its build arguments and a *lock*: a JSON file beside the recipe (``light.lock.json`` for
``light.def``) that holds the recipe's digest, the package versions the image must hold and
the digest of the build it was written from (``shmbench build RECIPE -o X.sif --lock
FILE`` writes one). :func:`obtain` turns that into a SIF on disk:

1. a reference: pulled (or found in the cache) and verified by its digest, as before;
2. no reference, or one that cannot be pulled (offline, not yet published): the recipe is
   built once -- :func:`~shmbench.images.build.build_cached`, keyed by the recipe's digest,
   so later runs reuse it -- with one line per build stage on stderr;
3. the result is compared with the pin: the same digest, or the difference said plainly
   (which packages moved, e.g. a Debian security update since the lock was written, read
   from the image's manifest, :mod:`~shmbench.images.manifest`), on stderr and in what
   :func:`obtain` returns for the run log; ``require_pinned`` refuses a difference.

Builds are byte-reproducible (see :mod:`~shmbench.images.native`), so on a machine with the
same package versions the rebuilt image *is* the pinned one, digest for digest.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shmbench.errors import DigestMismatch, ImageError, RuntimeUnavailable
from shmbench.images.manifest import describe_difference, difference, read_manifest
from shmbench.images.refs import ImageSpec
from shmbench.images.sif import read_sif
from shmbench.images.store import file_digest

__all__ = ["Obtained", "obtain", "find_recipe", "read_lock", "write_lock", "lock_path"]

#: the largest lock file read (a lock lists a few hundred packages)
_MAX_LOCK = 4 << 20


@dataclass
class Obtained:
    """A pinned image on disk, and how it got there (for the run log's header)."""

    path: Path
    digest: str | None  # None: a sandbox directory, used as it is
    how: str  # "pulled" (or found in the cache), "built", "local"
    pinned_digest: str | None = None
    manifest: dict[str, Any] | None = None
    #: the manifest's difference from the lock (see manifest.difference); empty: none
    difference: dict[str, Any] = field(default_factory=dict)
    #: why the published image was not used, when it was built instead
    pull_failed: str | None = None

    @property
    def matches(self) -> bool:
        return self.pinned_digest is None or self.pinned_digest == self.digest

    def to_log(self) -> dict[str, Any]:
        return {
            "how": self.how,
            "digest": self.digest,
            "pinned_digest": self.pinned_digest,
            "matches_pin": self.matches,
            "difference": self.difference,
            "pull_failed": self.pull_failed,
        }


def shipped_recipes() -> Path | None:
    """The recipes shipped with shmbench: a checkout's ``recipes/``, or the installed
    package's ``shmbench/recipes``."""
    from shmbench.images.wheel import checkout_root

    root = checkout_root()
    if root is not None and (root / "recipes").is_dir():
        return root / "recipes"
    installed = Path(__file__).resolve().parents[1] / "recipes"
    return installed if installed.is_dir() else None


def find_recipe(name: str) -> Path:
    """A recipe by path, or by the file name of a shipped one (``light.def``)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if os.sep not in name and shipped is not None and (shipped / name).is_file():
        return shipped / name
    raise ImageError(
        f"recipe {name!r} not found (neither a file nor one of the recipes shipped with shmbench"
        + (f" in {shipped}" if shipped else "")
        + ")"
    )


def lock_path(recipe: Path, lock: str) -> Path:
    """A lock named in a record: relative to its recipe's directory."""
    path = Path(lock).expanduser()
    return path if path.is_absolute() else recipe.parent / path


def read_lock(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > _MAX_LOCK:
            raise ImageError(f"lock {path} is larger than {_MAX_LOCK >> 20} MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImageError(
            f"lock {path} does not exist (write it with: shmbench build RECIPE -o X.sif --lock {path})"
        ) from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read lock {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("digest"), str):
        raise ImageError(f"lock {path}: not a shmbench lock (an object with 'digest' and package tables)")
    return data


def write_lock(image: Path, path: Path) -> dict[str, Any]:
    """Write the lock of a built image: its digest, its recipe's digest and its package versions."""
    manifest = read_manifest(image)
    if manifest is None:
        raise ImageError(f"{image} carries no manifest (only images shmbench builds do): no lock can be written")
    lock = {
        "digest": file_digest(image),
        "recipe": manifest.get("recipe"),
        "build_args": manifest.get("build_args"),
        "source_date_epoch": manifest.get("source_date_epoch"),
        "builder": manifest.get("builder"),
        "python": manifest.get("python"),
        "debian_packages": manifest.get("debian_packages"),
        "python_packages": manifest.get("python_packages"),
    }
    path.write_text(json.dumps(lock, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return lock


def _say(text: str) -> None:
    print(f"shmbench: {text}", file=sys.stderr, flush=True)


def obtain(
    spec: ImageSpec,
    *,
    offline: bool = False,
    progress: bool = True,
    require_pinned: bool = False,
) -> Obtained:
    """The SIF ``spec`` pins, pulled or built (see the module docstring).

    Raises:
        DigestMismatch: a pulled image's bytes differ from the pin; or, with
            ``require_pinned``, a built one's.
        RuntimeUnavailable: the image must be built and cannot be here (no root for
            debootstrap and no Apptainer); the message says what would do.
        ImageError: a missing recipe or lock, a failing build.
    """
    from shmbench.images.fetch import pull_spec

    pull_failed = None
    if spec.ref is not None:
        try:
            path = pull_spec(spec, offline=offline, progress=progress)
        except DigestMismatch:
            raise
        except ImageError as exc:
            if spec.recipe is None:
                raise
            pull_failed = " ".join(str(exc).split())
            _say(f"{spec.ref} cannot be had ({pull_failed}); building it from {spec.recipe}")
        else:
            digest = spec.digest or (file_digest(path, progress=progress) if path.is_file() else None)
            how = "local" if Path(spec.ref).expanduser().exists() else "pulled"
            return Obtained(path, digest, how, pinned_digest=spec.digest, manifest=_manifest_of(path))
    assert spec.recipe is not None
    recipe = find_recipe(spec.recipe)
    lock = read_lock(lock_path(recipe, spec.lock)) if spec.lock else None
    built = _build(recipe, dict(spec.build_args), progress=progress)
    digest = file_digest(built)
    manifest = read_manifest(built)
    pinned = spec.digest or (lock or {}).get("digest")
    out = Obtained(built, digest, "built", pinned_digest=pinned, manifest=manifest, pull_failed=pull_failed)
    if out.matches:
        return out
    diff = difference({k: v for k, v in (lock or {}).items() if k != "digest"}, manifest or {}) if lock else {}
    out.difference = diff
    said = describe_difference(diff) if diff else "the same package versions, different bytes"
    message = f"the image built from {recipe.name} ({digest}) is not the pinned one ({pinned}):\n" + "\n".join(
        "  " + line for line in said.splitlines()
    )
    if require_pinned:
        raise DigestMismatch(message + "\n(refused: --require-pinned)")
    _say(message + "\n  running in the image as built (the run log records the difference)")
    return out


def _manifest_of(path: Path) -> dict[str, Any] | None:
    """A pulled or given image's manifest for the log, or None: it is informational (the
    digest is what was verified), so an image whose manifest cannot be read still runs --
    or fails where it is started, with that error."""
    try:
        sif = read_sif(path) if path.is_file() else None
    except ImageError:
        return None  # not a SIF: whatever starts it says so
    if sif is None:
        return None
    try:
        return read_manifest(sif)
    except ImageError as exc:
        _say(f"{path}: no manifest recorded ({exc})")
        return None


def _build(recipe: Path, build_args: dict[str, str], *, progress: bool) -> Path:
    from shmbench.images.build import build_cached, cached_image, cannot_build_here

    if not cached_image(recipe, build_args).is_file():
        why = cannot_build_here()
        if why is not None:
            raise RuntimeUnavailable(f"it must be built from {recipe}, and {why} (build it elsewhere and pass --image)")
        if progress:
            _say(f"building the pinned image from {recipe} (once; cached by its recipe digest)")
    return build_cached(recipe, build_args=build_args, quiet=not progress)
