"""What makes two native builds of the same inputs the same bytes.

:class:`~shmbench.images.native.NativeBuild` runs every step with ``SOURCE_DATE_EPOCH`` (and
``PYTHONHASHSEED=0``), then, before ``mksquashfs -reproducible -all-time -mkfs-time``,
:func:`normalise_tree` removes what a build leaves behind that differs from run to run
(logs, caches, package lists, machine ids, ``*-old`` backups) and rewrites the one date in
``/etc/shadow``; after siftool, :func:`normalise_sif` fixes the SIF fields siftool fills from
the clock and from randomness. What is left to differ is what the inputs say: the recipe,
its build arguments, the package versions the mirror serves (the image's manifest lists
them, :mod:`~shmbench.images.manifest`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from pathlib import Path

from shmbench.errors import ImageError
from shmbench.images.sif import DESCRIPTOR_SIZE, read_sif

__all__ = ["DEFAULT_EPOCH", "build_epoch", "normalise_sif", "normalise_tree"]

#: the time a build's timestamps are set to without $SOURCE_DATE_EPOCH: Debian 12's release
#: day (2023-06-10 UTC). A constant, so that two builds of the same inputs are the same bytes.
DEFAULT_EPOCH = 1686355200
# what a build leaves behind that differs between two builds of the same inputs: logs,
# caches, package lists, machine ids, backups of the package database (globs under the
# image's root; directories are emptied, not removed)
_VOLATILE = (
    "var/log/**/*",
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/*-old",
    "var/lib/apt/lists/*",
    "var/lib/dpkg/*-old",
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "root/.cache",
    "root/.wget-hsts",
    "tmp/*",
    "var/tmp/*",
)


def build_epoch() -> int:
    """The build's ``SOURCE_DATE_EPOCH``: the environment's, or :data:`DEFAULT_EPOCH`."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "")
    try:
        return int(raw) if raw else DEFAULT_EPOCH
    except ValueError:
        raise ImageError(f"SOURCE_DATE_EPOCH={raw!r} is not a number of seconds") from None


def normalise_tree(rootfs: Path, epoch: int) -> None:
    """Remove or rewrite what differs between two builds of the same inputs (see
    ``_VOLATILE``); what the image needs (the package database, ``/etc``) stays."""
    for pattern in _VOLATILE:
        for path in sorted(rootfs.glob(pattern), reverse=True):
            if path.is_symlink() or not path.is_dir():
                path.unlink(missing_ok=True)
            elif path.name != "partial" and not path.parent.name == "log":
                shutil.rmtree(path, ignore_errors=True)
    machine_id = rootfs / "etc/machine-id"
    if machine_id.is_file() and not machine_id.is_symlink():
        machine_id.write_text("")  # "uninitialized": systemd fills it in on first boot
    day = str(epoch // 86400)
    for name in ("etc/shadow", "etc/shadow-"):  # field 3: the day a password last changed
        path = rootfs / name
        if not path.is_file() or path.is_symlink():
            continue
        lines = []
        for line in path.read_text(encoding="utf-8").splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[2]:
                fields[2] = day
            lines.append(":".join(fields))
        mode = path.stat().st_mode & 0o7777
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.chmod(path, mode)


def normalise_sif(sif: Path, epoch: int) -> None:
    """Fix the SIF fields siftool fills with the time and randomness: the creation and
    modification times (header and every object) become ``epoch``, and the image's UUID is
    derived from its contents, so it still names one image and two builds of the same inputs
    get the same one."""
    image = read_sif(sif)
    h = hashlib.sha256()
    with open(sif, "rb") as f:
        f.seek(image.header.data_offset)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    uuid = bytearray(h.digest()[:16])
    uuid[6] = (uuid[6] & 0x0F) | 0x50  # an RFC 4122 name-based (version 5 shaped) UUID
    uuid[8] = (uuid[8] & 0x3F) | 0x80
    stamp = struct.pack("<qq", epoch, epoch)
    with open(sif, "r+b") as f:
        f.seek(48)  # launch[32] magic[10] version[3] arch[3], then uuid[16], ctime, mtime
        f.write(bytes(uuid) + stamp)
        for index in range(image.header.descriptors_total):
            base = image.header.descriptors_offset + index * DESCRIPTOR_SIZE
            f.seek(base + 4)
            if f.read(1) != b"\x01":  # unused slot
                continue
            f.seek(base + 41)  # datatype used id groupid link offset size storesize, then ctime mtime
            f.write(stamp)
