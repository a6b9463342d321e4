"""shmbench.images.sif: parsing real SIF files (made by siftool from real squashfs
images), rejecting broken ones, and unpacking once into the cache."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest_images import make_sif, make_squashfs, make_tree, require_tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmbench.errors import ImageError
from shmbench.images.sif import (
    DataType,
    FsType,
    PartType,
    find_squashfs,
    read_sif,
    unpack_sif,
)
from shmbench.images.store import file_digest


def siftool_offsets(path: Path) -> dict[int, tuple[int, int]]:
    """{object id: (offset, size)} as siftool itself reads them (the reference parser)."""
    out = subprocess.run(
        [require_tool("siftool"), "list", str(path)], check=True, capture_output=True, text=True
    ).stdout
    result = {}
    for m in re.finditer(r"^(\d+)\s*\|[^|]*\|[^|]*\|(\d+)-(\d+)\s*\|", out, re.M):
        obj, start, end = map(int, m.groups())
        result[obj] = (start, end - start)
    return result


# ------------------------------------------------------------------------- parsing


def test_parses_header_and_descriptors_like_siftool(small_sif: Path) -> None:
    image = read_sif(small_sif)
    assert image.header.version == "01"
    assert image.header.arch == "amd64"
    assert image.header.descriptors_total == 48
    assert image.header.descriptors_offset == 4096
    assert [d.datatype for d in image.descriptors] == [DataType.DEFFILE, DataType.PARTITION]
    deffile, part = image.descriptors
    assert image.read_object(deffile) == b"Bootstrap: scratch\n"
    assert (part.fs_type, part.part_type, part.arch) == (FsType.SQUASHFS, PartType.PRIMARY_SYSTEM, "amd64")
    assert part.group_id == 1
    reference = siftool_offsets(small_sif)
    assert {d.id: (d.offset, d.size) for d in image.descriptors} == reference


def test_find_squashfs_points_at_the_squashfs_bytes(small_sif: Path, tmp_path: Path) -> None:
    offset, size = find_squashfs(small_sif)
    original = (tmp_path / "rootfs.squashfs").read_bytes()
    with open(small_sif, "rb") as f:
        f.seek(offset)
        assert f.read(size) == original


def test_not_a_sif(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sif"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(ImageError, match="not a SIF"):
        read_sif(garbage)
    empty = tmp_path / "empty.sif"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="truncated"):
        read_sif(empty)
    with pytest.raises(ImageError, match="not found"):
        find_squashfs(tmp_path / "missing.sif")
    with pytest.raises(ImageError, match="directory"):
        read_sif(tmp_path)


def test_unknown_version_is_refused(small_sif: Path) -> None:
    data = bytearray(small_sif.read_bytes())
    data[42:45] = b"99\0"
    small_sif.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="unsupported SIF version '99'"):
        read_sif(small_sif)


def test_no_partition(tmp_path: Path) -> None:
    only_deffile = make_sif(tmp_path / "nopart.sif", None)
    with pytest.raises(ImageError, match="no primary system partition"):
        find_squashfs(only_deffile)


def test_data_partition_is_not_a_root_filesystem(tmp_path: Path) -> None:
    squash = make_squashfs(make_tree(tmp_path / "tree"), tmp_path / "fs.squashfs")
    data_only = make_sif(tmp_path / "data.sif", squash, parttype=3)
    with pytest.raises(ImageError, match="no primary system partition.*data/squashfs"):
        find_squashfs(data_only)


def test_non_squashfs_partition(tmp_path: Path) -> None:
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 8192)
    ext3 = make_sif(tmp_path / "ext3.sif", raw, partfs=2)
    with pytest.raises(ImageError, match="is ext3, not squashfs"):
        find_squashfs(ext3)
    lying = make_sif(tmp_path / "lying.sif", raw, partfs=1)
    with pytest.raises(ImageError, match="squashfs superblock"):
        find_squashfs(lying)


# A SIF built once per module for the property tests (hypothesis examples cannot use
# function-scoped fixtures).
@pytest.fixture(scope="module")
def sif_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("sifprop")
    squash = make_squashfs(make_tree(root / "tree"), root / "fs.squashfs")
    return make_sif(root / "prop.sif", squash).read_bytes()


def _check(data: bytes) -> None:
    """find_squashfs on these bytes: an ImageError or an in-bounds answer, nothing else."""
    with tempfile.NamedTemporaryFile(suffix=".sif") as f:
        f.write(data)
        f.flush()
        try:
            offset, size = find_squashfs(f.name)
        except ImageError:
            return
        assert 0 <= offset and 0 <= size and offset + size <= len(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=2**40))
def test_every_truncation_is_an_image_error(sif_bytes: bytes, cut: int) -> None:
    cut %= len(sif_bytes)  # any proper prefix (the partition runs to the end)
    with tempfile.NamedTemporaryFile(suffix=".sif") as f:
        f.write(sif_bytes[:cut])
        f.flush()
        with pytest.raises(ImageError):
            find_squashfs(f.name)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    flips=st.lists(
        st.tuples(st.integers(min_value=0, max_value=4096 + 3 * 585), st.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=8,
    )
)
def test_corrupt_header_or_descriptors_never_escape(sif_bytes: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(sif_bytes)
    for position, value in flips:
        data[position] = value
    _check(bytes(data))


def test_huge_descriptor_fields_are_rejected(small_sif: Path) -> None:
    data = bytearray(small_sif.read_bytes())
    part = 4096 + 585  # the second descriptor
    data[part + 17 : part + 25] = (2**62).to_bytes(8, "little")  # its offset
    small_sif.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        read_sif(small_sif)
    data[88:96] = (2**40).to_bytes(8, "little")  # descriptor count
    small_sif.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="descriptor count"):
        read_sif(small_sif)


# ------------------------------------------------------------------------ unpacking


@pytest.fixture
def counting_unsquashfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real unsquashfs behind a wrapper that counts its runs (and dawdles a little,
    so that concurrent callers really overlap)."""
    real = require_tool("unsquashfs")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "unsquashfs-runs.log"
    wrapper = bindir / "unsquashfs"
    wrapper.write_text(f'#!/bin/sh\necho run >> "{log}"\nsleep 0.5\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def _runs(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_unpack_makes_a_usable_harmless_tree(small_sif: Path, tmp_path: Path) -> None:
    rootfs = unpack_sif(small_sif, tmp_path / "cache")
    assert rootfs.parent == tmp_path / "cache"
    assert rootfs.name == file_digest(small_sif).split(":", 1)[1]
    assert (rootfs / "etc" / "hello.txt").read_text() == "hello from the image\n"
    secret = rootfs / "root" / "secret"
    assert stat.S_IMODE(secret.stat().st_mode) & 0o044 == 0o044
    assert stat.S_IMODE((rootfs / "root").stat().st_mode) & 0o055 == 0o055
    tool = rootfs / "usr" / "bin" / "tool"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755  # set-uid gone
    assert os.readlink(rootfs / "bin") == "usr/bin"
    assert not os.path.lexists(rootfs / "etc" / "fifo")
    assert (rootfs / "dev").is_dir() and (rootfs / "shmbench").is_dir()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".unpack")]


def test_unpack_is_cached(small_sif: Path, tmp_path: Path, counting_unsquashfs: Path) -> None:
    first = unpack_sif(small_sif, tmp_path / "cache")
    second = unpack_sif(small_sif, tmp_path / "cache")
    assert first == second
    assert _runs(counting_unsquashfs) == 1


def test_default_cache_dir_follows_the_environment(
    small_sif: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHMBENCH_CACHE_DIR", str(tmp_path / "root"))
    rootfs = unpack_sif(small_sif)
    assert rootfs.parent == tmp_path / "root" / "unpacked"
    assert stat.S_IMODE((tmp_path / "root" / "unpacked").stat().st_mode) == 0o700


_UNPACK_CHILD = """
import sys
from shmbench.images.sif import unpack_sif
print(unpack_sif(sys.argv[1], sys.argv[2]))
"""


def test_concurrent_unpacks_unpack_once(small_sif: Path, tmp_path: Path, counting_unsquashfs: Path) -> None:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")])
        ),
    )
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _UNPACK_CHILD, str(small_sif), str(cache)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1] == str(cache / file_digest(small_sif).split(":", 1)[1])
    assert _runs(counting_unsquashfs) == 1


def test_missing_unsquashfs(small_sif: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ImageError, match="unsquashfs not found.*squashfs-tools"):
        unpack_sif(small_sif, tmp_path / "cache")


def test_failing_unsquashfs_leaves_nothing_behind(small_sif: Path, tmp_path: Path) -> None:
    # A partition that claims to be squashfs and starts like one, but is cut short.
    offset, size = find_squashfs(small_sif)
    data = bytearray(small_sif.read_bytes())
    data[offset + 4 : offset + size] = b"\xff" * (size - 4)
    small_sif.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="unsquashfs failed"):
        unpack_sif(small_sif, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_unpacked_tree_is_readable_by_an_unprivileged_user(small_sif: Path) -> None:
    """Unpacked as root, read as nobody: what a user's bwrap sees of a shared cache."""
    setpriv = require_tool("setpriv")
    with tempfile.TemporaryDirectory() as shared:  # tmp_path is private to this user
        os.chmod(shared, 0o755)
        rootfs = unpack_sif(small_sif, Path(shared) / "cache")
        os.chmod(Path(shared) / "cache", 0o755)
        proc = subprocess.run(
            [
                setpriv,
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "cat",
                str(rootfs / "root" / "secret"),
                str(rootfs / "etc" / "hello.txt"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "only root could read this\nhello from the image\n"
