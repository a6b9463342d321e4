"""Byte-reproducible images and their manifests.

Real SIFs from siftool, real squashfs from mksquashfs, a real debootstrap build of
recipes/light.def (slow); the untrusted-manifest cases write real SIF objects.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest_images import make_sif, make_squashfs, make_tree, require_tool

from shmbench.errors import ImageError
from shmbench.images.manifest import MANIFEST_NAME, collect, describe_difference, difference, read_manifest
from shmbench.images.reproducible import DEFAULT_EPOCH, normalise_sif, normalise_tree
from shmbench.images.sif import read_sif


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_siftool_images_of_the_same_inputs_become_the_same_bytes(tmp_path: Path) -> None:
    """siftool stamps the time and a random UUID; normalise_sif fixes both."""
    squash = make_squashfs(make_tree(tmp_path / "tree"), tmp_path / "root.squashfs")
    first = make_sif(tmp_path / "a.sif", squash)
    time.sleep(1.1)  # another second: siftool's timestamps differ
    second = make_sif(tmp_path / "b.sif", squash)
    assert _sha(first) != _sha(second)
    for sif in (first, second):
        normalise_sif(sif, DEFAULT_EPOCH)
    assert _sha(first) == _sha(second)
    image = read_sif(first)
    assert image.header.created == image.header.modified == DEFAULT_EPOCH
    assert {(d.created, d.modified) for d in image.descriptors} == {(DEFAULT_EPOCH, DEFAULT_EPOCH)}
    assert image.header.uuid[14] == "5"  # a name-based UUID, derived from the contents
    other = make_sif(tmp_path / "c.sif", squash, deffile="Bootstrap: scratch\n# another\n")
    normalise_sif(other, DEFAULT_EPOCH)
    assert read_sif(other).header.uuid != image.header.uuid  # other contents, another UUID


def test_a_build_tree_loses_what_differs_between_builds(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    for name, text in {
        "var/log/dpkg.log": "2026-12-02 10:00:00 install ...\n",
        "var/log/apt/history.log": "Start-Date: 2026-12-02\n",
        "var/cache/apt/pkgcache.bin": "x",
        "var/cache/ldconfig/aux-cache": "x",
        "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease": "x",
        "var/lib/dpkg/status-old": "x",
        "var/lib/dpkg/status": "Package: x\n",
        "root/.cache/pip/http/x": "x",
        "tmp/stray": "x",
        "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "etc/shadow": "root:*:20424:0:99999:7:::\n_apt:*:20424:0:99999:7:::\nnobody:!::::::\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "var/lib/apt/lists/partial").mkdir()
    (root / "etc/shadow").chmod(0o640)
    normalise_tree(root, DEFAULT_EPOCH)
    assert sorted(p.name for p in (root / "var/log").rglob("*")) == ["apt"]  # directories stay
    for gone in (
        "var/cache/apt/pkgcache.bin",
        "var/cache/ldconfig/aux-cache",
        "var/lib/dpkg/status-old",
        "root/.cache",
    ):
        assert not (root / gone).exists(), gone
    assert [p.name for p in (root / "var/lib/apt/lists").iterdir()] == ["partial"]
    assert list((root / "tmp").iterdir()) == []
    assert (root / "var/lib/dpkg/status").read_text() == "Package: x\n"  # what the image needs stays
    assert (root / "etc/machine-id").read_text() == ""
    day = str(DEFAULT_EPOCH // 86400)
    assert (
        root / "etc/shadow"
    ).read_text() == f"root:*:{day}:0:99999:7:::\n_apt:*:{day}:0:99999:7:::\nnobody:!::::::\n"
    assert (root / "etc/shadow").stat().st_mode & 0o777 == 0o640


def _tree_with_packages(root: Path) -> Path:
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(
        "Package: python3.11\nStatus: install ok installed\nArchitecture: amd64\nVersion: 3.11.2-6\n"
        "Description: the interpreter\n spanning lines: with colons\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
        "Package: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2024a-0+deb12u1\n"
    )
    site = root / "usr/local/lib/python3.11/dist-packages"
    (site / "numpy-2.2.6.dist-info").mkdir(parents=True)
    (site / "numpy-2.2.6.dist-info/METADATA").write_text(
        "Metadata-Version: 2.1\nName: numpy\nVersion: 2.2.6\n\nlong text\n"
    )
    (site / "Typing_Extensions-4.16.0.dist-info").mkdir()
    (site / "Typing_Extensions-4.16.0.dist-info/METADATA").write_text("Name: Typing_Extensions\nVersion: 4.16.0\n")
    deb = root / "usr/lib/python3/dist-packages"
    deb.mkdir(parents=True)
    (deb / "msgpack-1.0.3.egg-info").write_text("Metadata-Version: 1.1\nName: msgpack\nVersion: 1.0.3\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python3").symlink_to("python3.11")
    return root


def test_a_manifest_names_packages_versions_and_inputs_but_no_host_path(tmp_path: Path) -> None:
    root = _tree_with_packages(tmp_path / "rootfs")
    wheel = tmp_path / "elsewhere" / "shmbench-0.1.0-cp311-cp311-linux_x86_64.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"a wheel")
    manifest = collect(
        root,
        recipe="/some/dir/light.def",
        recipe_digest="ab" * 32,
        build_args={"wheel": str(wheel), "numpy_version": "2.2.6"},
        header={"bootstrap": "debootstrap", "osversion": "bookworm"},
        epoch=DEFAULT_EPOCH,
        builder="shmbench test",
    )
    assert manifest["debian_packages"] == {"python3.11:amd64": "3.11.2-6", "tzdata": "2024a-0+deb12u1"}
    assert manifest["python_packages"] == {"msgpack": "1.0.3", "numpy": "2.2.6", "typing-extensions": "4.16.0"}
    assert manifest["python"] == "3.11" and manifest["shmbench"] is None
    assert manifest["recipe"] == {"name": "light.def", "digest": "ab" * 32}
    assert manifest["build_args"]["wheel"] == {"file": wheel.name, "sha256": hashlib.sha256(b"a wheel").hexdigest()}
    text = json.dumps(manifest)
    assert str(tmp_path) not in text and "/some/dir" not in text


def _sif_with_json(tmp_path: Path, data: bytes, name: str = MANIFEST_NAME) -> Path:
    siftool = require_tool("siftool")
    squash = make_squashfs(make_tree(tmp_path / "tree"), tmp_path / "root.squashfs")
    sif = make_sif(tmp_path / "m.sif", squash)
    obj = tmp_path / "obj.json"
    obj.write_bytes(data)
    subprocess.run(
        [siftool, "add", "--datatype", "6", "--groupid", "1", "--filename", name, str(sif), str(obj)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return sif


@pytest.mark.parametrize(
    "data, message",
    [
        (b"{not json", "manifest"),
        (b'{"schema": "something/else"}', "is not a shmbench-image-manifest/1 object"),
        (b'{"schema": "shmbench-image-manifest/1", "a": NaN}', "NaN"),
        (b" " * (4 << 20) + b"{}", "larger than 4 MiB"),
    ],
    ids=["not-json", "another-schema", "nan", "too-large"],
)
def test_an_untrusted_manifest_is_read_bounded_and_strictly(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        read_manifest(_sif_with_json(tmp_path, data))


def test_a_manifest_round_trips_and_other_json_objects_are_not_one(tmp_path: Path, small_sif: Path) -> None:
    assert read_manifest(small_sif) is None  # not built by shmbench
    good = {"schema": "shmbench-image-manifest/1", "debian_packages": {"a": "1"}}
    assert read_manifest(_sif_with_json(tmp_path / "x", json.dumps(good).encode())) == good
    assert read_manifest(_sif_with_json(tmp_path / "y", json.dumps(good).encode(), name="other.json")) is None


def test_difference_says_which_packages_moved() -> None:
    lock = {"debian_packages": {"libc6": "2.36-9+deb12u9", "tzdata": "2024a"}, "python_packages": {"numpy": "2.2.6"}}
    built = {
        "debian_packages": {"libc6": "2.36-9+deb12u10", "tzdata": "2024a", "new": "1"},
        "python_packages": {"numpy": "2.2.6"},
        "builder": "x",
    }
    diff = difference(lock, built)
    assert diff == {"debian_packages": {"libc6": ["2.36-9+deb12u9", "2.36-9+deb12u10"], "new": [None, "1"]}}
    assert describe_difference(diff).splitlines() == [
        "deb libc6: 2.36-9+deb12u9 -> 2.36-9+deb12u10",
        "deb new: (absent) -> 1",
    ]
    assert difference(lock, {**built, **lock}) == {}


# Two real builds of recipes/light.def compared byte for byte: test_pinned.py's
# test_exp_0_01_builds_its_image_once_checks_it_and_runs_in_it (its fresh build against the
# suite's reference build), so the suite pays for one extra build, not two.
