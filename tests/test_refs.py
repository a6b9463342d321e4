"""shmbench.images.refs: image references and the digests that pin them."""

from __future__ import annotations

from pathlib import Path

import pytest

from shmbench.errors import ImageError
from shmbench.images.refs import ImageSpec, normalize_digest, parse_ref

pytestmark = pytest.mark.usefixtures("cache_dir")


@pytest.mark.parametrize(
    "text, scheme, host, repository, tag",
    [
        ("oras://ghcr.io/shmbench/light:0.1", "oras", "ghcr.io", "shmbench/light", "0.1"),
        ("oras://127.0.0.1:5000/a/b/c", "oras", "127.0.0.1:5000", "a/b/c", "latest"),
        ("oras://localhost/light:v1.2_x", "oras", "localhost", "light", "v1.2_x"),
        ("oras://[::1]:5000/x:1", "oras", "[::1]:5000", "x", "1"),
        ("https://example.org/img.sif", "https", "example.org", None, None),
        ("http://127.0.0.1:8000/a.sif", "http", "127.0.0.1:8000", None, None),
        ("file:///srv/images/a.sif", "file", None, None, None),
        ("./a.sif", "path", None, None, None),
        ("/abs/a.sif", "path", None, None, None),
    ],
)
def test_parse_ref(text, scheme, host, repository, tag):
    ref = parse_ref(text)
    assert (ref.scheme, ref.host, ref.repository, ref.tag) == (scheme, host, repository, tag)
    assert str(ref) == text
    assert ref.remote == (scheme != "path")


def test_parse_ref_manifest_digest_and_loopback():
    digest = "sha256:" + "ab" * 32
    ref = parse_ref(f"oras://127.0.0.1:5000/shmbench/light@{digest}")
    assert ref.manifest_digest == digest and ref.tag is None and ref.loopback
    assert parse_ref("oras://localhost:1/x").loopback
    assert parse_ref("oras://[::1]:1/x").loopback
    assert not parse_ref("oras://ghcr.io/x").loopback
    assert parse_ref("file:///srv/a%20b.sif").path == Path("/srv/a b.sif")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("oras://ghcr.io/Shmbench/light:0.1", "invalid repository"),
        ("oras://ghcr.io", "/REPOSITORY"),
        ("oras://ghcr.io/x:bad tag", "invalid tag"),
        ("oras://ghcr.io/x@sha256:1234", "64 hex"),
        ("oras:ghcr.io/x", "two slashes"),
        ("docker://ubuntu:22.04", "apptainer push"),
        ("ftp://example.org/a.sif", "unknown scheme"),
        ("https://user:pw@example.org/a.sif", "credentials"),
        ("file://otherhost/a.sif", "local file"),
        ("", "non-empty"),
    ],
)
def test_parse_ref_rejects(text, needle):
    with pytest.raises(ImageError, match=needle):
        parse_ref(text)


def test_normalize_digest():
    hexdigest = "AB" * 32
    assert normalize_digest(f"sha256:{hexdigest}") == "sha256:" + hexdigest.lower()
    for bad in ("ab" * 32, "sha512:" + "ab" * 32, "sha256:" + "ab" * 31, "sha256:" + "zz" * 32, None):
        with pytest.raises(ImageError, match="sha256"):
            normalize_digest(bad)  # type: ignore[arg-type]


def test_image_spec_requires_digest_for_remote(tmp_path):
    with pytest.raises(ImageError, match="pinned"):
        ImageSpec("oras://ghcr.io/shmbench/light:0.1")
    assert ImageSpec(str(tmp_path / "a.sif")).digest is None
    assert ImageSpec("https://x.org/a", "sha256:" + "AA" * 32).digest == "sha256:" + "aa" * 32
