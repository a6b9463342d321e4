"""Read SIF images without Apptainer, and unpack their root filesystem for bubblewrap.

A SIF file (Singularity Image Format, https://github.com/sylabs/sif) is a 128-byte global
header, a table of fixed-size data-object descriptors, then the data objects themselves:
the definition file, JSON metadata, signatures and, what we want, the root filesystem as a
squashfs "primary system partition". Knowing where that partition starts is all it takes to
run a published image under bubblewrap on a machine without Apptainer: squashfs-tools'
``unsquashfs -o OFFSET`` extracts it straight out of the SIF.

Layout (little-endian, packed, as the Go reference writes it with ``encoding/binary``)::

    header      launch[32] magic[10] version[3] arch[3] uuid[16]
                ctime mtime dfree dtotal descroff descrlen dataoff datalen   (int64 each)
    descriptor  datatype:int32 used:bool id:u32 groupid:u32 link:u32
                offset:i64 size:i64 storesize:i64 ctime:i64 mtime:i64 uid:i64 gid:i64
                name[128] extra[384]       -> 585 bytes
    partition   extra = fstype:int32 parttype:int32 arch[3]

Every number read from the file is checked against the file's real size before use: an
image is untrusted input (downloaded, maybe truncated), and a bad one must end in a clear
:class:`~shmbench.errors.ImageError`, never in a huge allocation or a read past the end.

Unpacked trees are cached by the SIF's sha256, built in a temporary directory and renamed
into place (so a half-unpacked tree is never seen), under a file lock (so concurrent workers
unpack once).
"""

from __future__ import annotations

import enum
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shmbench.errors import ImageError
from shmbench.images.store import file_digest, local_subdir, make_once

__all__ = [
    "SIF_MAGIC",
    "DataType",
    "FsType",
    "PartType",
    "SifHeader",
    "SifDescriptor",
    "SifImage",
    "read_sif",
    "find_squashfs",
    "unpack_sif",
    "make_tree_readable",
]

SIF_MAGIC = b"SIF_MAGIC"
SIF_VERSION = "01"
SQUASHFS_MAGIC = b"hsqs"

_HEADER = struct.Struct("<32s10s3s3s16s8q")
_DESCRIPTOR = struct.Struct("<i?IIIqqqqqqq128s384s")
_PARTITION = struct.Struct("<ii3s")
HEADER_SIZE = _HEADER.size  # 128
DESCRIPTOR_SIZE = _DESCRIPTOR.size  # 585

# The reference creates 48 descriptors; a cap keeps a corrupt count from making us read
# (and allocate for) gigabytes of "descriptors" before noticing.
_MAX_DESCRIPTORS = 4096
_GROUP_MASK = 0xF0000000


class DataType(enum.IntEnum):
    """What a data object holds (the reference's ``DataType``)."""

    DEFFILE = 0x4001
    ENVVAR = 0x4002
    LABELS = 0x4003
    PARTITION = 0x4004
    SIGNATURE = 0x4005
    GENERIC_JSON = 0x4006
    GENERIC = 0x4007
    CRYPTO_MESSAGE = 0x4008
    SBOM = 0x4009
    OCI_ROOT_INDEX = 0x400A
    OCI_BLOB = 0x400B


class FsType(enum.IntEnum):
    """The filesystem inside a partition object."""

    SQUASHFS = 1
    EXT3 = 2
    IMMUTABLE_OBJECT = 3
    RAW = 4
    ENCRYPTED_SQUASHFS = 5


class PartType(enum.IntEnum):
    """The role of a partition object; Apptainer runs the ``PRIMARY_SYSTEM`` one."""

    SYSTEM = 1
    PRIMARY_SYSTEM = 2
    DATA = 3
    OVERLAY = 4


# SIF architecture codes (header and partition ``arch``), as written by the reference.
_ARCH_NAMES = {
    "01": "386",
    "02": "amd64",
    "03": "arm",
    "04": "arm64",
    "05": "ppc64",
    "06": "ppc64le",
    "07": "mips",
    "08": "mipsle",
    "09": "mips64",
    "10": "mips64le",
    "11": "s390x",
    "12": "riscv64",
}


def _cstr(raw: bytes) -> str:
    """A NUL-padded fixed-size field as text (undecodable bytes kept visible, not fatal)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _arch_name(code: str) -> str:
    return _ARCH_NAMES.get(code, "unknown" if code in ("", "00") else f"unknown({code})")


@dataclass(frozen=True)
class SifHeader:
    """The SIF global header."""

    launch: str
    version: str
    arch: str
    uuid: str
    created: int
    modified: int
    descriptors_free: int
    descriptors_total: int
    descriptors_offset: int
    descriptors_size: int
    data_offset: int
    data_size: int


@dataclass(frozen=True)
class SifDescriptor:
    """One used data-object descriptor.

    ``datatype`` stays a plain ``int`` when it is not a known :class:`DataType` (newer
    writers may add types; they must not make the image unreadable). ``fs_type``,
    ``part_type`` and ``arch`` are set for partitions only.
    """

    datatype: int
    id: int
    group_id: int
    linked_id: int
    offset: int
    size: int
    created: int
    modified: int
    name: str
    fs_type: int | None = None
    part_type: int | None = None
    arch: str | None = None

    @property
    def is_partition(self) -> bool:
        return self.datatype == DataType.PARTITION


@dataclass(frozen=True)
class SifImage:
    """A parsed SIF file: where it is, how big it was, its header and used descriptors."""

    path: Path
    file_size: int
    header: SifHeader
    descriptors: tuple[SifDescriptor, ...]

    def of_type(self, datatype: int) -> list[SifDescriptor]:
        return [d for d in self.descriptors if d.datatype == datatype]

    def read_object(self, descriptor: SifDescriptor) -> bytes:
        """The bytes of one (small) data object, such as the definition file."""
        with open(self.path, "rb") as f:
            f.seek(descriptor.offset)
            data = f.read(descriptor.size)
        if len(data) != descriptor.size:
            raise ImageError(f"{self.path}: data object {descriptor.id} is truncated")
        return data

    def primary_partition(self) -> SifDescriptor:
        """The partition Apptainer would run: the primary system partition.

        Old writers sometimes marked the only root filesystem as a plain system partition;
        a single one of those is accepted too.
        """
        parts = [d for d in self.descriptors if d.is_partition]
        primary = [d for d in parts if d.part_type == PartType.PRIMARY_SYSTEM]
        if not primary:
            system = [d for d in parts if d.part_type == PartType.SYSTEM]
            primary = system if len(system) == 1 else []
        if not primary:
            kinds = (
                ", ".join(
                    f"id {d.id}: {_enum_name(PartType, d.part_type)}/{_enum_name(FsType, d.fs_type)}" for d in parts
                )
                or "no partitions at all"
            )
            raise ImageError(f"{self.path}: no primary system partition in this SIF ({kinds})")
        return primary[0]


def _enum_name(kind: type[enum.IntEnum], value: int | None) -> str:
    if value is None:
        return "none"
    try:
        return kind(value).name.lower()
    except ValueError:
        return f"type {value}"


def read_sif(path: str | os.PathLike[str]) -> SifImage:
    """Parse and bounds-check the header and descriptor table of a SIF file.

    Raises:
        ImageError: the file is missing, is not a SIF, is of an unknown SIF version, or is
            truncated or corrupt (a descriptor points outside the file).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            head = f.read(HEADER_SIZE)
            if len(head) >= 42 and head[32:41] != SIF_MAGIC:
                raise ImageError(f"{path}: not a SIF file (no SIF_MAGIC in its header)")
            if len(head) < HEADER_SIZE:
                raise ImageError(
                    f"{path}: truncated SIF file ({file_size} bytes, shorter than its {HEADER_SIZE}-byte header)"
                )
            header = _parse_header(path, head, file_size)
            f.seek(header.descriptors_offset)
            table_size = header.descriptors_total * DESCRIPTOR_SIZE
            table = f.read(table_size)
    except FileNotFoundError:
        raise ImageError(f"SIF image not found: {path}") from None
    except IsADirectoryError:
        raise ImageError(f"{path} is a directory, not a SIF file") from None
    except PermissionError as exc:
        raise ImageError(f"cannot read SIF image {path}: {exc.strerror}") from None
    if len(table) != table_size:
        raise ImageError(f"{path}: truncated SIF file (descriptor table cut short)")

    descriptors = []
    seen_ids = set()
    for index in range(header.descriptors_total):
        d = _parse_descriptor(path, table, index, file_size)
        if d is None:
            continue
        if d.id in seen_ids:
            raise ImageError(f"{path}: corrupt SIF file (descriptor id {d.id} used twice)")
        seen_ids.add(d.id)
        descriptors.append(d)
    return SifImage(path=path, file_size=file_size, header=header, descriptors=tuple(descriptors))


def _parse_header(path: Path, head: bytes, file_size: int) -> SifHeader:
    (launch, magic, version, arch, uuid, ctime, mtime, dfree, dtotal, descroff, descrlen, dataoff, datalen) = (
        _HEADER.unpack(head)
    )
    if magic.rstrip(b"\0") != SIF_MAGIC:
        raise ImageError(f"{path}: not a SIF file (no SIF_MAGIC in its header)")
    version_text = _cstr(version)
    if version_text != SIF_VERSION:
        raise ImageError(f"{path}: unsupported SIF version {version_text!r} (this reader knows version {SIF_VERSION})")
    if not 0 <= dtotal <= _MAX_DESCRIPTORS:
        raise ImageError(f"{path}: corrupt SIF header (descriptor count {dtotal})")
    if descroff < HEADER_SIZE or descroff > file_size:
        raise ImageError(
            f"{path}: corrupt or truncated SIF file (descriptor table at {descroff}, file size {file_size})"
        )
    if descroff + dtotal * DESCRIPTOR_SIZE > file_size:
        raise ImageError(
            f"{path}: truncated SIF file (descriptor table ends past the end of the {file_size}-byte file)"
        )
    uuid_hex = uuid.hex()
    return SifHeader(
        launch=_cstr(launch),
        version=version_text,
        arch=_arch_name(_cstr(arch)),
        uuid=f"{uuid_hex[:8]}-{uuid_hex[8:12]}-{uuid_hex[12:16]}-{uuid_hex[16:20]}-{uuid_hex[20:]}",
        created=ctime,
        modified=mtime,
        descriptors_free=dfree,
        descriptors_total=dtotal,
        descriptors_offset=descroff,
        descriptors_size=descrlen,
        data_offset=dataoff,
        data_size=datalen,
    )


def _parse_descriptor(path: Path, table: bytes, index: int, file_size: int) -> SifDescriptor | None:
    (datatype, used, obj_id, group, link, offset, size, _storesize, ctime, mtime, _uid, _gid, name, extra) = (
        _DESCRIPTOR.unpack_from(table, index * DESCRIPTOR_SIZE)
    )
    if not used:
        return None
    if offset < 0 or size < 0 or offset + size > file_size:
        raise ImageError(
            f"{path}: truncated or corrupt SIF file (data object {obj_id} spans bytes "
            f"{offset}..{offset + size}, file size {file_size})"
        )
    try:
        datatype = DataType(datatype)
    except ValueError:
        pass
    fs_type = part_type = arch = None
    if datatype == DataType.PARTITION:
        fs_type, part_type, arch_raw = _PARTITION.unpack_from(extra)
        arch = _arch_name(_cstr(arch_raw))
    return SifDescriptor(
        datatype=datatype,
        id=obj_id,
        group_id=group & ~_GROUP_MASK,
        linked_id=link,
        offset=offset,
        size=size,
        created=ctime,
        modified=mtime,
        name=_cstr(name),
        fs_type=fs_type,
        part_type=part_type,
        arch=arch,
    )


def find_squashfs(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(offset, size)`` of the squashfs root filesystem inside the SIF at ``path``.

    Raises:
        ImageError: not a readable SIF, no primary system partition, or one that is not a
            plain squashfs (ext3 and encrypted partitions need Apptainer itself).
    """
    image = read_sif(path)
    part = image.primary_partition()
    if part.fs_type != FsType.SQUASHFS:
        hint = " (encrypted images need Apptainer)" if part.fs_type == FsType.ENCRYPTED_SQUASHFS else ""
        raise ImageError(
            f"{image.path}: the primary partition is {_enum_name(FsType, part.fs_type)}, not squashfs{hint}"
        )
    # Cheap corruption check before handing the offset to unsquashfs: a squashfs
    # superblock starts with "hsqs" (little-endian squashfs, the only kind Linux writes).
    with open(image.path, "rb") as f:
        f.seek(part.offset)
        if f.read(4) != SQUASHFS_MAGIC:
            raise ImageError(
                f"{image.path}: partition {part.id} does not start with a squashfs superblock (corrupt image?)"
            )
    return part.offset, part.size


# --------------------------------------------------------------------------- unpacking


def _default_unpack_dir() -> Path:
    # node-local when the cache is on NFS or Lustre: a tree is big, made at run time, and
    # read by every server start
    return local_subdir("unpacked")


def unpack_sif(
    path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None, *, timeout: float | None = None
) -> Path:
    """Unpack the root filesystem of a SIF image once; return the rootfs directory.

    The tree lives at ``CACHE/<sha256 of the SIF>`` (default cache:
    ``shmbench.images.store.local_subdir("unpacked")``, i.e. ``$SHMBENCH_CACHE_DIR/unpacked`` or
    ``~/.cache/shmbench/unpacked``; node-local storage when that is a network filesystem). It is made readable by everyone and stripped of
    set-id bits, device nodes and extended attributes (file capabilities): it is only ever a
    bubblewrap root filesystem, and a cache must not plant privileged files on the host.

    Args:
        path: the SIF file.
        cache_dir: where unpacked trees live.
        timeout: seconds to wait for another process that is unpacking the same image
            (``None``: wait for as long as it takes).

    Raises:
        ImageError: not a SIF with a squashfs root partition, unsquashfs missing or
            failing, or ``timeout`` ran out while another process held the lock.
    """
    offset, _size = find_squashfs(path)
    digest = file_digest(path).split(":", 1)[1]
    root = Path(cache_dir) if cache_dir is not None else _default_unpack_dir()
    root.mkdir(parents=True, exist_ok=True)
    dest = root / digest

    def unpack() -> Path:
        _unsquash(Path(path), offset, root, dest)
        return dest

    return make_once(
        root / f"{digest}.lock", lambda: dest if dest.is_dir() else None, unpack, timeout=timeout, what=f"unpack {path}"
    )


def _unsquash(sif: Path, offset: int, root: Path, dest: Path) -> None:
    unsquashfs = shutil.which("unsquashfs")
    if unsquashfs is None:
        raise ImageError(
            "unsquashfs not found: unpacking a SIF without Apptainer needs "
            "squashfs-tools >= 4.5 (apt-get install squashfs-tools)"
        )
    staging = Path(tempfile.mkdtemp(prefix=f".unpack-{dest.name[:12]}-", dir=root))
    tree = staging / "rootfs"
    try:
        # -no-xattrs: no security.capability on host files; dev/*: no device nodes (bwrap
        # mounts its own /dev, and a non-root unsquashfs cannot create them anyway).
        argv = [
            unsquashfs,
            "-no-progress",
            "-no-xattrs",
            "-excludes",
            "-o",
            str(offset),
            "-d",
            str(tree),
            str(sif),
            "dev/*",
        ]
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            check=False,
        )
        if proc.returncode != 0 or not tree.is_dir():
            tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
            if "SYNTAX:" in proc.stdout:
                tail = "this unsquashfs has no -o option; squashfs-tools >= 4.5 is needed"
            raise ImageError(f"unsquashfs failed (exit status {proc.returncode}) on {sif}:\n{tail}")
        (tree / "dev").mkdir(exist_ok=True)
        make_tree_readable(tree)
        os.rename(tree, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def make_tree_readable(tree: str | os.PathLike[str]) -> None:
    """Make a root filesystem tree usable as an unprivileged bwrap root, and harmless.

    Directories become ``rwxr-xr-x`` at least, files ``rw-r--r--`` (plus ``r-x`` for
    everyone where any execute bit was set); set-uid/set-gid bits are dropped; device
    nodes, FIFOs and sockets are removed. Symlinks are left alone (never followed).

    An image's ``/root`` (0700) or ``/etc/shadow`` (0640) would otherwise be unreadable to
    a user whose bwrap maps them to an unprivileged uid; the owner write bit also lets the
    cache be deleted later without root.
    """
    _fix_mode(os.fspath(tree), is_dir=True)
    for dirpath, dirnames, filenames in os.walk(tree):
        # Subdirectories are fixed before os.walk descends, so a 0700 or 0000 directory
        # is listable by the time it is walked.
        for name in dirnames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                _fix_mode(full, is_dir=True, st=st)
        for name in filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                continue
            if stat.S_ISREG(st.st_mode):
                _fix_mode(full, is_dir=False, st=st)
            else:
                os.unlink(full)


def _fix_mode(path: str, *, is_dir: bool, st: os.stat_result | None = None) -> None:
    st = st or os.lstat(path)
    mode = stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID)
    if is_dir:
        mode |= 0o755
    else:
        mode |= 0o644
        if mode & 0o111:
            mode |= 0o555
    if mode != stat.S_IMODE(st.st_mode):
        os.chmod(path, mode)
