"""Where shmbench keeps what it downloads, unpacks and builds.

One root for every cache, so that a user (or a CI job that saves and restores one directory)
can move, keep or wipe all of it at once: ``$SHMBENCH_CACHE_DIR`` when set, otherwise the
platform's per-user cache directory (``~/.cache/shmbench`` on Linux). Each consumer takes
its own subdirectory (``unpacked`` for unpacked SIF images, ``images`` for built ones...).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["CACHE_ENV", "cache_root", "cache_subdir", "make_once"]

T = TypeVar("T")

#: The environment variable that moves the whole cache.
CACHE_ENV = "SHMBENCH_CACHE_DIR"


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


def make_once(lock_path: Path, done: Callable[[], T | None], make: Callable[[], T], *,
              timeout: float | None, what: str) -> T:
    """``done()`` if it has a result, else ``make()`` -- under a file lock, so that processes
    racing for one cache entry make it once: a waiter re-checks ``done()`` when it gets the
    lock and finds the winner's result. ``make`` must publish atomically (rename).

    Raises ImageError naming ``what`` when ``timeout`` seconds pass waiting for the lock.
    """
    found = done()
    if found is not None:
        return found
    import filelock

    from shmbench.errors import ImageError

    lock = filelock.FileLock(str(lock_path))
    try:
        lock.acquire(timeout=-1 if timeout is None else timeout)
    except filelock.Timeout:
        raise ImageError(f"timed out after {timeout} s waiting for another process to {what} "
                         f"(lock {lock_path})") from None
    try:
        found = done()
        return found if found is not None else make()
    finally:
        lock.release()
