"""Small helpers the command-line modules share: sizes and free space for people, and the
help format every subcommand uses (a description, its options' defaults, examples)."""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["human_size", "free_space", "tree_size", "Formatter", "add_command"]


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


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help as written (descriptions and examples keep their lines), with each option's
    default appended where it has a meaningful one."""

    def __init__(self, prog: str, width: int | None = None) -> None:
        super().__init__(prog, width=width or min(100, shutil.get_terminal_size().columns), max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and "default" not in text
            and default not in (None, False, argparse.SUPPRESS, [], ())
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    examples: tuple[str, ...],
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` says what it does, its options' defaults and examples."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    p = sub.add_parser(name, help=help, description=description, epilog=epilog, formatter_class=Formatter)
    p.set_defaults(func=func)
    return p
