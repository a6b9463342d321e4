"""What the sweep tests share: a second experiment record, and logs compared without what
differs between two runs of one task."""

from __future__ import annotations

from pathlib import Path

from shmbench.logs import read_log, strip_volatile

LUBY_RECORD = """\
identifier = "exp:luby-test"
description = "Luby, the sweep tests' second experiment"
benchmark = "shmbench/Luby-v0"
log = ["reward", "action"]

[seed]
base = 0
per_episode = "once"
"""

EXPERIMENTS = ["exp:0.01", "exp:luby-test"]


def comparable(path: Path) -> list[dict]:
    """A log without what differs between two runs of the same task: clock readings, the
    paths and hosts of its sweep, the server's pid and log."""
    log = read_log(path)
    assert log.complete, path
    header = {k: v for k, v in log.header.items() if k not in ("started_at", "sweep", "server", "runtime", "host")}
    return [strip_volatile(r) for r in (header, *log.runs, *log.rows, log.end)]


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Each published log's inode and mtime (a redone task replaces its log)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((directory / "logs").glob("*.jsonl"))}
