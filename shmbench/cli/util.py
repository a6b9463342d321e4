"""Small helpers the command-line modules share: sizes and free space, for people."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["human_size", "free_space", "tree_size"]


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def free_space(path: Path) -> str:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError as exc:
        return f"unknown ({exc.strerror})"
    return f"{human_size(usage.free)} free of {human_size(usage.total)}"


def tree_size(root: Path) -> int:
    """Bytes of regular files under ``root``; skips hidden (in-progress) entries and
    anything unreadable."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if not name.startswith(".") and (st.st_mode & 0o170000) == 0o100000:
                total += st.st_size
    return total
