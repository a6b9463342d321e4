"""Removing a directory tree that someone else may have crafted, completely and safely.

``shutil.rmtree`` recurses once per level (a 3,000-deep chain raises RecursionError) and
gives up on a directory it cannot read or write (a peer's ``chmod 000``), leaving the tree
-- and every later cleanup of its parent -- stuck. :func:`remove_tree` instead:

* never follows a symlink and never reopens a path by name after it checked it: every
  step is relative to an open directory descriptor (``O_NOFOLLOW``, ``O_DIRECTORY``), so a
  swapped entry is removed as what it is, never chased outside the tree;
* restores the owner's permissions as it goes (``fchmod`` on an open directory; for one it
  cannot even open, a chmod through an ``O_PATH`` descriptor's ``/proc/self/fd`` link, which
  names exactly that inode);
* keeps two directories open at a time whatever the depth: the subdirectories of the
  directory it empties are moved up into the tree's root and emptied in turn, so the walk
  is a loop, not a recursion, and needs no more descriptors for a deep chain than for a
  flat one.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

__all__ = ["remove_tree"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_PASSES = 1_000_000  # entries a tree that keeps growing may cost us, then we stop


def _chmod_via_path_fd(parent_fd: int, name: str, mode: int) -> None:
    """chmod the directory ``name`` in ``parent_fd`` without opening it for reading."""
    fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def _open_dir(parent_fd: int, name: str) -> int:
    """Open the directory ``name`` (never a symlink) with its owner's rwx restored."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        _chmod_via_path_fd(parent_fd, name, 0o700)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        if os.fstat(fd).st_mode & 0o700 != 0o700:
            os.fchmod(fd, 0o700)
    except OSError:
        pass  # not ours to change: removing inside may still work
    return fd


def _empty_into(root_fd: int, dir_fd: int) -> None:
    """Unlink what ``dir_fd`` holds; move its subdirectories up into ``root_fd``."""
    for entry in os.scandir(dir_fd):
        name = entry.name
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            continue
        if dir_fd == root_fd:
            continue  # already at the top: emptied in its own turn
        # moving a directory to a new parent needs write permission on it (its "..")
        if st.st_mode & 0o700 != 0o700:
            _chmod_via_path_fd(dir_fd, name, 0o700)
        os.rename(name, f".rm-{secrets.token_hex(6)}", src_dir_fd=dir_fd, dst_dir_fd=root_fd)


def remove_tree(path: os.PathLike | str) -> bool:
    """Remove ``path`` (a directory tree, a file or a symlink) and everything under it.

    Returns True when it is gone. Never raises for what it finds in the tree: an entry that
    cannot be removed (not ours, a read-only mount) is left and the result is False.
    """
    path = Path(path)
    try:
        parent_fd = os.open(path.parent, _DIR_FLAGS)
    except OSError:
        return not os.path.lexists(path)
    try:
        return _remove(parent_fd, path.name)
    finally:
        os.close(parent_fd)


def _remove(parent_fd: int, name: str) -> bool:
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent_fd)
            return True
        root_fd = _open_dir(parent_fd, name)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        for _ in range(_MAX_PASSES):
            progress = False
            _empty_into(root_fd, root_fd)  # the root's files
            for entry in os.scandir(root_fd):  # its subdirectories, one at a time
                try:
                    sub_fd = _open_dir(root_fd, entry.name)
                    try:
                        _empty_into(root_fd, sub_fd)
                    finally:
                        os.close(sub_fd)
                    os.rmdir(entry.name, dir_fd=root_fd)
                    progress = True
                except OSError:
                    # gone meanwhile, not ours, or it got a new entry: the next pass sees it
                    continue
            if not any(True for _ in os.scandir(root_fd)):
                break
            if not progress:
                # nothing came off in a whole pass: what is left cannot be removed by us
                return False
    except OSError:
        return False
    finally:
        os.close(root_fd)
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True
