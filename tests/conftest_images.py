"""Shared fixtures and helpers for image tests: small real SIFs, the shmbench wheel, the
bookworm reference image.

Everything here is real: squashfs images come from mksquashfs, SIF files from siftool,
images from debootstrap and bubblewrap. What cannot run on a machine (no siftool, not root
for debootstrap) is skipped with the apt package or the reason in the skip message.

tests/conftest.py imports these names so that any test module can use the fixtures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

__all__ = [
    "REPO",
    "RECIPES",
    "require_tool",
    "make_tree",
    "make_squashfs",
    "make_sif",
    "small_sif",
    "shmbench_wheel",
    "bookworm_sif",
    "light_sif",
    "reference_images",
]

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"

_PACKAGES = {
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "siftool": "siftool",
    "bwrap": "bubblewrap",
    "debootstrap": "debootstrap",
}


def require_tool(name: str) -> str:
    """The tool's path, or skip the test naming the package that provides it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install {_PACKAGES.get(name, name)})")
    return path


def make_tree(root: Path) -> Path:
    """A small root filesystem with the awkward cases unpacking must handle."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hello.txt").write_text("hello from the image\n")
    (root / "usr" / "bin").mkdir(parents=True)
    tool = root / "usr" / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o4755)  # set-uid: must be dropped
    (root / "root").mkdir(mode=0o700)
    secret = root / "root" / "secret"
    secret.write_text("only root could read this\n")
    secret.chmod(0o600)  # must become readable
    (root / "bin").symlink_to("usr/bin")  # symlinks kept as they are
    os.mkfifo(root / "etc" / "fifo")  # must be removed
    (root / "dev").mkdir()
    (root / "shmbench").mkdir()
    return root


def make_squashfs(tree: Path, out: Path) -> Path:
    mksquashfs = require_tool("mksquashfs")
    subprocess.run(
        [mksquashfs, str(tree), str(out), "-noappend", "-no-progress", "-quiet"], check=True, stdout=subprocess.DEVNULL
    )
    return out


def make_sif(
    out: Path,
    partition: Path | None,
    *,
    deffile: str | None = "Bootstrap: scratch\n",
    parttype: int = 2,
    partfs: int = 1,
    partarch: int = 2,
) -> Path:
    """A SIF assembled by siftool: an optional definition file, an optional partition."""
    siftool = require_tool("siftool")
    subprocess.run([siftool, "new", str(out)], check=True, stdout=subprocess.DEVNULL)
    if deffile is not None:
        def_path = out.with_suffix(".def")
        def_path.write_text(deffile)
        subprocess.run(
            [siftool, "add", "--datatype", "1", "--groupid", "1", str(out), str(def_path)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    if partition is not None:
        subprocess.run(
            [
                siftool,
                "add",
                "--datatype",
                "4",
                "--parttype",
                str(parttype),
                "--partfs",
                str(partfs),
                "--partarch",
                str(partarch),
                "--groupid",
                "1",
                str(out),
                str(partition),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return out


@pytest.fixture
def small_sif(tmp_path: Path) -> Path:
    """A real SIF (siftool) whose primary partition is a real squashfs of make_tree()."""
    tree = make_tree(tmp_path / "tree")
    squash = make_squashfs(tree, tmp_path / "rootfs.squashfs")
    return make_sif(tmp_path / "small.sif", squash)


# ----------------------------------------------------------------- the real image build


def _source_hash() -> str:
    """The key of this tree's wheel (shmbench.images.wheel.source_hash: what it is built from)."""
    from shmbench.images.wheel import source_hash

    return source_hash(REPO)


@pytest.fixture(scope="session")
def shmbench_wheel() -> Path:
    """The shmbench wheel, built once per source state into the cache.

    Keyed by the sources, so an unchanged tree reuses the same wheel file: its bytes are
    an input of the image's cache key, and a rebuilt wheel (new timestamps) would make
    every run rebuild the image.
    """
    if not (REPO / "shmbench" / "_ring" / "_ring.c").exists():
        pytest.skip("shmbench/_ring/_ring.c does not exist yet: no wheel can be built")
    if sys.version_info[:2] != (3, 11):
        pytest.skip(
            "the bookworm image runs Python 3.11; its shmbench wheel must be built "
            f"by Python 3.11, not {sys.version.split()[0]}"
        )
    from shmbench.images.wheel import own_wheel

    # what shmbench build uses when no wheel is given, of this tree (shmbench itself may be
    # imported from an installed copy of it)
    return own_wheel(REPO)


#: the reference images of the test suite: Debian's numpy 1.24 with this tree's shmbench
#: inside, and pip's numpy 2.2 with no shmbench (served by the host's)
REFERENCE_RECIPES = {"bookworm": "bookworm-numpy124.def", "light": "light.def"}


@pytest.fixture(scope="session")
def reference_images(shmbench_wheel: Path) -> dict[str, Path]:
    """The reference recipes built once into the default build cache, side by side.

    The builds run concurrently: they mostly wait on downloads and dpkg, so two take little
    longer than one. The cache survives between runs (``$SHMBENCH_CACHE_DIR`` or
    ``~/.cache/shmbench``), so a CI job that keeps it builds once, and a developer only
    rebuilds after changing shmbench's sources or a recipe.
    """
    from concurrent.futures import ThreadPoolExecutor

    from shmbench.images.build import build_cached
    from shmbench.runtimes.apptainer import find_binary as find_apptainer

    if find_apptainer() is None:
        if os.geteuid() != 0:
            pytest.skip("building without Apptainer needs root (debootstrap)")
        for tool in ("debootstrap", "bwrap", "mksquashfs", "siftool"):
            require_tool(tool)
    start = time.monotonic()
    with ThreadPoolExecutor(len(REFERENCE_RECIPES)) as pool:
        futures = {
            name: pool.submit(
                build_cached,
                RECIPES / recipe,
                # light.def holds no shmbench (the host's serves it)
                build_args={} if name == "light" else {"wheel": str(shmbench_wheel)},
            )
            for name, recipe in REFERENCE_RECIPES.items()
        }
        images = {name: f.result() for name, f in futures.items()}
    elapsed = time.monotonic() - start
    if elapsed > 5:
        print(f"\n[reference_images] built {sorted(images)} in {elapsed:.0f} s", file=sys.stderr)
    return images


@pytest.fixture(scope="session")
def bookworm_sif(reference_images: dict[str, Path]) -> Path:
    """recipes/bookworm-numpy124.def (Debian's python3-numpy 1.24) as a SIF."""
    return reference_images["bookworm"]


@pytest.fixture(scope="session")
def light_sif(reference_images: dict[str, Path]) -> Path:
    """recipes/light.def (pip's numpy 2.2, no shmbench: the host serves it) as a SIF."""
    return reference_images["light"]
