"""Helpers of the image tests: fake SIF bytes, a private cache, a real registry and HTTP server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

from shmbench.images.store import (
    IMAGES_SUBDIR,
)

# Bytes that look like the start of a SIF (its magic sits at offset 32), then noise.
SIF_HEAD = b"#!/usr/bin/env run-singularity\n".ljust(32, b"\0") + b"SIF_MAGIC\0"


def fake_sif(size: int, seed: int) -> bytes:
    import random

    return SIF_HEAD + random.Random(seed).randbytes(size - len(SIF_HEAD))


def image_files(cache: Path) -> list[str]:
    """Everything in the image cache except lock files (which are empty and harmless)."""
    directory = cache / IMAGES_SUBDIR
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))
