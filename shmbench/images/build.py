"""Build SIF images from definition files, with Apptainer or, for debootstrap recipes, without.

Two builders, one result (a SIF that Apptainer runs and that :func:`~shmbench.images.sif.
unpack_sif` unpacks for bubblewrap):

* **apptainer** (also ``singularity``), through spython: ``apptainer build --fakeroot
  OUTPUT RECIPE``, never sudo. Used whenever the binary is on PATH; it handles every
  bootstrap agent (docker, library, localimage...).
* **native**: for ``Bootstrap: debootstrap`` recipes where Apptainer cannot be installed
  (CI runners, laptops). It does what Apptainer does, with tools Debian ships:
  ``debootstrap`` the base system, run ``%setup`` on the host, copy ``%files`` and run
  ``%post`` inside bubblewrap with the new tree as ``/``, write Apptainer's metadata layout
  (``/.singularity.d/{env,actions,runscript,labels.json,Singularity}``), run ``%test``,
  ``mksquashfs`` the tree and let ``siftool`` assemble the SIF. debootstrap creates device
  nodes and root-owned files, so this builder needs real root (no fakeroot emulation).

Both builders are handed the same rendered recipe (see :mod:`~shmbench.images.deffile`):
build arguments already substituted, ``%files`` sources already absolute.

:func:`build_cached` keys a built image by everything that goes into it (the rendered
recipe, the build arguments and the bytes of every ``%files`` source), so a CI job that
keeps its cache directory builds an image once and reuses it until an input changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from shmbench.errors import ImageError, RuntimeUnavailable
from shmbench.images.deffile import Definition, read_definition
from shmbench.images.native import NativeBuild
from shmbench.images.sif import read_sif
from shmbench.images.store import cache_subdir, make_once
from shmbench.images.wheel import with_own_wheel
from shmbench.runtimes.apptainer import find_binary, spython_client

__all__ = ["build", "build_cached", "cached_image", "cannot_build_here", "recipe_digest", "apptainer_options"]

Builder = Literal["auto", "apptainer", "native"]

_DIGEST_VERSION = b"shmbench-image-v2\0"  # bump when the builder's output changes


# ---------------------------------------------------------------------------- public


def build(
    recipe: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    build_args: Mapping[str, str] | None = None,
    builder: Builder = "auto",
    fakeroot: bool | None = None,
    quiet: bool = False,
    verbose: bool = False,
) -> Path:
    """Build the SIF image ``output`` from the definition file ``recipe``.

    Args:
        recipe: a single-stage Singularity/Apptainer definition file.
        output: the SIF to write; replaced atomically, only once the build succeeded.
        build_args: values for the recipe's ``{{ name }}`` placeholders; ``wheel``, when the
            recipe uses it and none is given, is a wheel of the running shmbench
            (:func:`~shmbench.images.wheel.own_wheel`).
        builder: ``"apptainer"``, ``"native"`` (debootstrap recipes, as root), or
            ``"auto"``: Apptainer when installed, native otherwise.
        fakeroot: pass ``--fakeroot`` to Apptainer (default: when not running as root).
        quiet: keep the builders' output out of the terminal; a failure still shows the
            last lines of it in the exception. Without ``quiet`` a native build prints one
            line per stage; either way its full output is kept in ``OUTPUT.build.log``.
        verbose: stream the builders' output to the terminal instead.

    Returns:
        ``output`` as a path.

    Raises:
        RuntimeUnavailable: Apptainer is needed (a bootstrap agent other than debootstrap,
            or ``builder="apptainer"``) and not installed.
        ImageError: a bad recipe, a failing build step, a missing build tool, or a native
            build attempted without root.
    """
    if builder not in ("auto", "apptainer", "native"):
        raise ValueError(f"builder must be 'auto', 'apptainer' or 'native', not {builder!r}")
    recipe = Path(recipe)
    output = Path(output).absolute()
    build_args = _with_wheel(recipe, build_args)
    defn = read_definition(recipe, build_args)
    defn.source_paths()  # every %files source is there, or the error comes now, before debootstrap
    binary = find_binary() if builder != "native" else None
    if builder == "apptainer" and binary is None:
        raise RuntimeUnavailable("builder='apptainer' but neither apptainer nor singularity is on PATH")
    output.parent.mkdir(parents=True, exist_ok=True)
    if binary is not None:
        _build_with_apptainer(
            defn,
            output,
            binary,
            fakeroot=os.geteuid() != 0 if fakeroot is None else fakeroot,
            quiet=quiet and not verbose,
        )
    else:
        NativeBuild(
            defn,
            output,
            quiet=quiet,
            verbose=verbose,
            build_args=build_args,
            recipe_digest=recipe_digest(recipe, build_args),
            recipe_name=recipe.name,
        ).run()
    return output


def cannot_build_here() -> str | None:
    """Why no image can be built here (neither Apptainer nor root for debootstrap), or None."""
    if find_binary() is not None or os.geteuid() == 0:
        return None
    return (
        "building without Apptainer runs debootstrap, which needs root, and neither apptainer "
        "nor singularity is on PATH"
    )


def recipe_digest(recipe: str | os.PathLike[str], build_args: Mapping[str, str] | None = None) -> str:
    """The sha256 (hex) of everything a build of ``recipe`` depends on.

    The rendered recipe text, the build arguments, and each ``%files`` source's
    destination, relative names and bytes (symlinks followed, as the copy follows them).
    """
    defn = read_definition(recipe, build_args)
    h = hashlib.sha256(_DIGEST_VERSION)
    h.update(defn.text.encode())
    for key, value in sorted((build_args or {}).items()):
        h.update(f"\0arg {key}={value}".encode())
    for src, dst in defn.source_paths():
        h.update(f"\0files -> {dst}\0".encode())
        _hash_tree(h, src)
    return h.hexdigest()


def build_cached(
    recipe: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    build_args: Mapping[str, str] | None = None,
    *,
    builder: Builder = "auto",
    quiet: bool = True,
    timeout: float | None = None,
) -> Path:
    """A SIF built from ``recipe``, reused from ``cache_dir`` when its inputs are unchanged.

    The image is ``CACHE/<recipe_digest>.sif`` (default cache:
    ``shmbench.images.store.cache_subdir("built")``). Concurrent callers are serialised by a file
    lock, so one builds and the others wait for its result; ``timeout`` bounds that wait.
    """
    if cache_dir is None:
        root = cache_subdir("built")
    else:
        root = Path(cache_dir)
        root.mkdir(parents=True, exist_ok=True)
    build_args = _with_wheel(recipe, build_args)
    key = recipe_digest(recipe, build_args)
    target = root / f"{key}.sif"
    return make_once(
        root / f"{key}.lock",
        lambda: target if target.is_file() else None,
        lambda: build(recipe, target, build_args=build_args, builder=builder, quiet=quiet),
        timeout=timeout,
        what=f"build {recipe}",
    )


def cached_image(recipe: str | os.PathLike[str], build_args: Mapping[str, str] | None = None) -> Path:
    """Where :func:`build_cached` keeps (or will keep) the image of ``recipe`` in the default
    cache -- the same key, ``wheel`` supplied the same way."""
    return cache_subdir("built") / f"{recipe_digest(recipe, _with_wheel(recipe, build_args))}.sif"


def _with_wheel(recipe: str | os.PathLike[str], build_args: Mapping[str, str] | None) -> dict[str, str]:
    """``build_args`` with the running shmbench's wheel where the recipe needs one and none is given."""
    try:
        text = Path(recipe).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""  # read_definition says what is wrong with it
    return with_own_wheel(text, build_args)


def _hash_tree(h: hashlib._Hash, path: Path) -> None:
    if path.is_file():
        h.update(f"F {path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames.sort()
        rel = os.path.relpath(dirpath, path)
        h.update(f"D {rel}\0".encode())
        for name in sorted(filenames):
            h.update(f"N {os.path.join(rel, name)}\0".encode())
            _hash_tree(h, Path(dirpath, name))


# ------------------------------------------------------------------------- apptainer


def apptainer_options(*, fakeroot: bool) -> list[str]:
    """The options shmbench adds to ``apptainer build`` (never sudo)."""
    return ["--fakeroot"] if fakeroot else []


def _build_with_apptainer(defn: Definition, output: Path, binary: str, *, fakeroot: bool, quiet: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix=".shmbench-build-", dir=output.parent))
    try:
        rendered = work / "recipe.def"
        rendered.write_text(defn.to_text(), encoding="utf-8")
        image = work / "image.sif"
        client = spython_client(binary)
        try:
            client.build(
                recipe=str(rendered),
                image=str(image),
                sudo=False,
                options=apptainer_options(fakeroot=fakeroot),
                quiet=quiet,
            )
        except SystemExit as exc:  # spython reports some failures with sys.exit
            raise ImageError(f"{binary} build failed (spython exited with status {exc.code})") from None
        if not image.is_file():
            raise ImageError(
                f"{binary} build failed: no image was written "
                f"(its output is above{'; rerun with quiet=False' if quiet else ''})"
            )
        read_sif(image)
        os.replace(image, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
