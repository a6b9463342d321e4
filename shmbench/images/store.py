"""Where shmbench keeps what it downloads, unpacks and builds, and how entries get there.

One root for every cache, so that a user (or a CI job that saves and restores one directory)
can move, keep or wipe all of it at once: ``$SHMBENCH_CACHE_DIR`` when set, otherwise the
platform's per-user cache directory (``~/.cache/shmbench`` on Linux). Each consumer takes
its own subdirectory (``images`` for pulled images, ``unpacked`` for unpacked SIF trees,
``built`` for built images...).

Every entry is made once (:func:`make_once`: a lock that also holds on NFS and Lustre --
:mod:`shmbench.images.locks` --, a re-check, an atomic rename by the maker), and every file is hashed by one function (:func:`file_digest`), memoised per
file identity so that the workers of one vector env do not hash one image eight times,
and told the digest a pull already verified (:func:`remember_digest`).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from shmbench.errors import ImageError
from shmbench.images.refs import normalize_digest

__all__ = [
    "CACHE_ENV",
    "IMAGES_SUBDIR",
    "CachedImage",
    "cache_root",
    "cache_subdir",
    "cache_name",
    "cached_path",
    "file_digest",
    "images_dir",
    "list_images",
    "local_subdir",
    "make_once",
    "prune_cache",
    "remember_digest",
    "remove_image",
    "touch",
]

T = TypeVar("T")

#: The environment variable that moves the whole cache.
CACHE_ENV = "SHMBENCH_CACHE_DIR"
#: The cache subdirectory that holds pulled images, each named by its digest.
IMAGES_SUBDIR = "images"

_CHUNK = 1 << 20
_CACHE_NAME_RE = re.compile(r"sha256-([0-9a-f]{64})")


def cache_root() -> Path:
    """The root of shmbench's caches (not created here).

    Read at each call, not at import, so that a test or a launcher can point it elsewhere
    by setting the environment variable.
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser().absolute()
    import platformdirs  # deferred: the container side never needs it

    return Path(platformdirs.user_cache_dir("shmbench"))


def cache_subdir(name: str) -> Path:
    """``cache_root() / name``, created (with its parents) if missing.

    A new directory is made private (0700): caches hold images this user chose to trust,
    and another local user must not be able to swap one in underneath us.
    """
    if not name or os.sep in name or name in (".", ".."):
        raise ValueError(f"cache subdirectory name must be one plain path component, not {name!r}")
    path = cache_root() / name
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def make_once(
    lock_path: Path, done: Callable[[], T | None], make: Callable[[], T], *, timeout: float | None, what: str
) -> T:
    """``done()`` if it has a result, else ``make()`` -- under a file lock, so that processes
    racing for one cache entry make it once: a waiter re-checks ``done()`` when it gets the
    lock and finds the winner's result. ``make`` must publish atomically (rename).

    Raises ImageError naming ``what`` when ``timeout`` seconds pass waiting for the lock.
    """
    found = done()
    if found is not None:
        return found
    from shmbench.images.locks import LockTimeout, cache_lock

    try:
        with cache_lock(lock_path, timeout):
            found = done()
            return found if found is not None else make()
    except LockTimeout:
        raise ImageError(
            f"timed out after {timeout} s waiting for another process to {what} (lock {lock_path})"
        ) from None


def local_subdir(name: str) -> Path:
    """Like :func:`cache_subdir`, for a part that must stay on this node: node-local storage
    when the cache root is on a network filesystem (:func:`shmbench.images.locks.node_local_dir`)."""
    from shmbench.images.locks import node_local_dir

    return node_local_dir(name, cache_root()) or cache_subdir(name)


# ------------------------------------------------------------------------- file digests

_digest_memo: dict[tuple[str, int, int, int], str] = {}


def _identity(path: str | os.PathLike[str]) -> tuple[str, int, int, int]:
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, st.st_ino, st.st_size, st.st_mtime_ns


def file_digest(path: str | os.PathLike[str], *, progress: bool = False) -> str:
    """The ``sha256:...`` digest of a file, read in chunks.

    Memoised in this process per (real path, inode, size, mtime): images are hundreds of
    megabytes, and a changed file changes its stat.
    """
    try:
        key = _identity(path)
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    found = _digest_memo.get(key)
    if found is not None:
        return found
    from tqdm import tqdm

    name = Path(path).name
    hasher = hashlib.sha256()
    with (
        open(key[0], "rb") as f,
        tqdm(
            total=key[2],
            unit="B",
            unit_scale=True,
            desc=f"sha256 {name}",
            disable=None if progress else True,
            leave=False,
        ) as bar,
    ):
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
            bar.update(len(chunk))
    digest = _digest_memo[key] = "sha256:" + hasher.hexdigest()
    return digest


def remember_digest(path: str | os.PathLike[str], digest: str) -> None:
    """Record that ``path`` (as it is now) has ``digest``: a pull that verified the bytes as it
    wrote them, or a cache entry named by its verified digest, need not be hashed again."""
    try:
        _digest_memo[_identity(path)] = normalize_digest(digest)
    except OSError:
        pass


# ---------------------------------------------------------------------- the image cache


def cache_name(digest: str) -> str:
    """The file name of the cached image ``digest``."""
    return "sha256-" + normalize_digest(digest).split(":", 1)[1]


def images_dir() -> Path:
    """Where pulled images live (not created here)."""
    return cache_root() / IMAGES_SUBDIR


def cached_path(digest: str) -> Path | None:
    """The cached file for ``digest``, or ``None`` when it is not in the cache."""
    path = images_dir() / cache_name(digest)
    if not path.is_file():
        return None
    remember_digest(path, digest)  # it got that name only after it was verified
    return path


def touch(path: Path) -> None:
    """Mark a cache entry as used now.

    "Last used" is the access time, set explicitly: relatime/noatime mounts do not keep it.
    A cache on a read-only mount still works, it just stops tracking use.
    """
    try:
        os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))
    except OSError:
        pass


@dataclass(frozen=True)
class CachedImage:
    """One image in the cache.

    Attributes:
        path: the file.
        digest: its ``sha256:...`` (from its name: it was verified before it got that name).
        size: bytes.
        last_used: when a :func:`pull` last returned it (UTC).
    """

    path: Path
    digest: str
    size: int
    last_used: datetime


def list_images() -> list[CachedImage]:
    """The images in the cache, most recently used first (creates nothing)."""
    directory = images_dir()
    if not directory.is_dir():
        return []
    found = []
    for entry in os.scandir(directory):
        match = _CACHE_NAME_RE.fullmatch(entry.name)
        if not match or not entry.is_file(follow_symlinks=False):
            continue  # lock files (empty; they stay), partial downloads, other tools' files
        st = entry.stat(follow_symlinks=False)
        found.append(
            CachedImage(
                path=Path(entry.path),
                digest="sha256:" + match.group(1),
                size=st.st_size,
                last_used=datetime.fromtimestamp(st.st_atime, tz=timezone.utc),
            )
        )
    found.sort(key=lambda image: image.last_used, reverse=True)
    return found


def remove_image(digest: str) -> bool:
    """Remove the cached image ``digest``; ``False`` when it was not cached.

    Taken under the image's lock, so it never races a pull of the same image. A container
    that has the file open keeps running: unlinking does not take the bytes from under it.
    """
    from shmbench.images.locks import cache_lock

    name = cache_name(digest)
    directory = images_dir()
    if not directory.is_dir():
        return False
    with cache_lock(directory / f".{name}.lock"):
        try:
            (directory / name).unlink()
        except FileNotFoundError:
            return False
    return True


#: the cache's derived parts: trees unpacked from SIFs (for bwrap) and images built from
#: recipes -- both made again when needed; pulled images (digest-pinned downloads) are kept
PRUNABLE = ("unpacked", "built")


def _in_use(path: Path) -> bool:
    """Whether a process names ``path`` on its command line (a bwrap sandbox runs with its
    root tree as an argument) -- a running server's tree is never pruned."""
    needle = os.fsencode(str(path))
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if needle in f.read(1 << 20):
                    return True
        except OSError:
            continue
    return False


def _remove_tree(path: Path) -> None:
    """Remove an unpacked tree: renamed aside first (it vanishes at once, whole), then
    deleted, making read-only directories writable where that is what stops it."""
    import shutil
    import stat

    aside = path.with_name(f".pruning-{path.name}-{os.getpid()}")
    path.rename(aside)

    def retry(func: Callable[[str], object], name: str, exc: object) -> None:
        parent = os.path.dirname(name)
        os.chmod(parent, os.lstat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        func(name)

    if sys.version_info >= (3, 12):
        shutil.rmtree(aside, onexc=retry)
    else:
        shutil.rmtree(aside, onerror=retry)


def prune_cache(parts: tuple[str, ...] = PRUNABLE) -> list[tuple[Path, int]]:
    """Remove the derived parts of the cache (:data:`PRUNABLE`) that nothing uses: each
    entry under its lock (one being made is skipped) and only if no process names it.
    Returns what was removed, with the bytes it held."""
    from shmbench.images.locks import LockTimeout, cache_lock

    removed: list[tuple[Path, int]] = []
    for part in parts:
        if part not in PRUNABLE:
            raise ValueError(f"only {PRUNABLE} can be pruned, not {part!r}")
        directory = local_subdir(part) if part == "unpacked" else cache_root() / part
        if not directory.is_dir():
            continue
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith(".") or entry.suffix == ".lock" or entry.is_symlink():
                continue
            key = entry.name.split(".", 1)[0]
            try:
                with cache_lock(directory / f"{key}.lock", timeout=0):
                    if _in_use(entry):
                        continue
                    size = _size(entry)
                    if entry.is_dir():
                        _remove_tree(entry)
                    else:
                        entry.unlink()
                    removed.append((entry, size))
            except LockTimeout:
                continue  # being unpacked or built right now
    return removed


def _size(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
