"""shmbench.images.store: the cache's listing and removal, the one file digest, make_once."""

from __future__ import annotations

import os
import time

import pytest
from image_helpers import fake_sif
from registry import (
    sha256_of,
)

from shmbench.images.fetch import pull
from shmbench.images.store import (
    IMAGES_SUBDIR,
    cached_path,
    list_images,
    remove_image,
)

pytestmark = pytest.mark.usefixtures("cache_dir")


def test_list_and_remove(server, tmp_path, cache_dir):
    assert list_images() == []
    assert not (cache_dir / IMAGES_SUBDIR).exists()  # listing creates nothing
    blobs = [fake_sif(1000 + i, seed=20 + i) for i in range(2)]
    paths = []
    for i, data in enumerate(blobs):
        server.files[f"/{i}.sif"] = data
        paths.append(pull(server.url(f"/{i}.sif"), sha256_of(data), progress=False))
    os.utime(paths[0], (time.time() - 3600, time.time() - 3600))  # used an hour ago
    (cache_dir / IMAGES_SUBDIR / "unrelated.txt").write_text("not an image")
    images = list_images()
    assert [i.digest for i in images] == [sha256_of(blobs[1]), sha256_of(blobs[0])]
    assert [i.size for i in images] == [len(blobs[1]), len(blobs[0])]
    assert [i.path for i in images] == [paths[1], paths[0]]
    # A cache hit refreshes "last used".
    pull(server.url("/0.sif"), sha256_of(blobs[0]), progress=False)
    assert list_images()[0].digest == sha256_of(blobs[0])
    assert time.time() - list_images()[0].last_used.timestamp() < 60
    assert remove_image(sha256_of(blobs[0])) is True
    assert remove_image(sha256_of(blobs[0])) is False
    assert [i.digest for i in list_images()] == [sha256_of(blobs[1])]
    assert cached_path(sha256_of(blobs[1])) == paths[1]
