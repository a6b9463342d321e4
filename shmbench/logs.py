"""Run logs: one JSONL file per run, a header line, DACBench-shaped step rows, an end line.

A log file written by :class:`shmbench.experiments.runner.Runner` reads like this (one JSON object per
line)::

    {"type": "header", "format": "shmbench-log/1", "started_at": "...", "experiment": {...}, ...}
    {"type": "run", "started_at": "...", "agent": {...}, "first_episode": 0, "episodes": 10}
    {"episode": 0, "step": 0, "instance": 0, "seed": 42, "terminated": false, "truncated": false,
     "reward": {"values": [0.78], "times": ["..."]}, "action": {"values": [[3, 9]], "times": ["..."]}}
    ...
    {"type": "end", "finished_at": "...", "episodes": 10, "steps": 100, ...}

The step rows have exactly the shape of DACBench's ``ModuleLogger`` rows: the identifying
fields (``episode``, ``step``, ``instance``, ``seed``) at the top level, and every logged
quantity as ``{"values": [...], "times": [...]}``. So ``dacbench.logger.log2dataframe`` reads
the rows of :func:`read_log` directly (the header, run and end records are not rows: skip them,
as :func:`read_log` does). One ``run`` record precedes the rows of each
:meth:`~shmbench.experiments.runner.Runner.run` call and names its agent.

Reproducibility contract: two runs of the same experiment with the same seeds and agent
write files that differ only in :data:`VOLATILE_FIELDS` -- wall-clock timestamps
(``times``, ``started_at``, ``finished_at``) and measured durations (``step_duration``,
``episode_duration``, ``wall_time``, only present when asked for). :func:`strip_volatile`
removes them.

Writing: the file is created exclusively (an existing log is never overwritten or appended
to), each record is one ``write`` of one complete line to a line-buffered file opened in
append mode, so a crash leaves every finished line readable; :func:`read_log` ignores an
unfinished last line and says so (``LogFile.complete``).
"""

from __future__ import annotations

import base64
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LOG_FORMAT",
    "VOLATILE_FIELDS",
    "RunLog",
    "LogFile",
    "read_log",
    "strip_volatile",
    "step_row",
    "log_files",
    "step_records",
    "to_dataframe",
    "load_logs",
    "episode_returns",
    "plot_returns",
    "to_plain",
    "timestamp",
]

#: The value of the header's ``format`` field; bumped when the layout changes.
LOG_FORMAT = "shmbench-log/1"

#: Fields whose values differ between two otherwise identical runs (clock readings).
VOLATILE_FIELDS = frozenset({"times", "started_at", "finished_at", "step_duration", "episode_duration", "wall_time"})

_MAX_DEPTH = 64


def timestamp() -> str:
    """Now, as ISO 8601 in UTC with microseconds (``pandas.to_datetime`` reads it)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def to_plain(value: Any, _depth: int = 0) -> Any:
    """``value`` as strict JSON data: numpy arrays and scalars become lists and numbers.

    - tuples become lists; dict keys become strings;
    - non-finite floats become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
      (strict JSON has no such numbers; ``float()`` reads the strings back);
    - bytes become ``{"base64": "..."}``;
    - anything else becomes its ``repr`` string: a log must never stop a run.
    """
    if _depth > _MAX_DEPTH:
        return "<nested too deeply>"
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            return to_plain(value.tolist(), _depth + 1)
        return [to_plain(v, _depth + 1) for v in value.tolist()] if value.ndim else to_plain(value.item(), _depth + 1)
    if isinstance(value, np.generic):
        return to_plain(value.item(), _depth + 1)
    if isinstance(value, dict):
        return {str(k): to_plain(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, _depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    return repr(value)


def _float(x: float) -> float | str:
    if math.isfinite(x):
        return float(x)
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


def _dumps(record: dict) -> str:
    return json.dumps(to_plain(record), allow_nan=False, ensure_ascii=False, separators=(",", ":"))


class RunLog:
    """An open log file; records are written whole, one line each.

    Args:
        path: the file to create; it must not exist (a log is never overwritten).

    Raises:
        FileExistsError: when ``path`` exists.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # "x": exclusive create; line buffering: each record reaches the kernel whole, at
        # its newline (a record is one write of one line)
        self._file = open(self.path, "x", buffering=1, encoding="utf-8")

    def write(self, record: dict) -> None:
        """Append one record as one line."""
        if self._file.closed:
            raise ValueError(f"log {self.path} is closed")
        self._file.write(_dumps(record) + "\n")

    def close(self) -> None:
        """Flush, fsync and close. Idempotent."""
        if not self._file.closed:
            self._file.flush()
            try:
                os.fsync(self._file.fileno())
            except OSError:
                pass
            self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RunLog {self.path}{' closed' if self.closed else ''}>"


@dataclass
class LogFile:
    """A log file as read back by :func:`read_log`.

    Attributes:
        header: the header record (``None`` if even the first line is missing).
        runs: the ``run`` records, one per ``Runner.run`` call.
        rows: the step rows, DACBench-shaped.
        end: the end record, ``None`` when the run did not close its log (a crash).
        complete: whether every line was whole and the end record is there.
    """

    header: dict | None
    runs: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    end: dict | None = None
    complete: bool = False


def read_log(path: str | os.PathLike[str]) -> LogFile:
    """Read a log, tolerating the unfinished last line a crash may leave.

    Raises:
        ValueError: when a line other than the last is not JSON, or the first record is
            not a header of a known format.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    whole = text.endswith("\n") or not text
    if lines and lines[-1] == "":
        lines.pop()
    out = LogFile(header=None)
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        try:
            record = json.loads(line)
        except ValueError:
            if last and not whole:
                break  # the line a crash cut short
            raise ValueError(f"{path}:{number}: not a JSON line") from None
        if last and not whole:
            break  # parses, but was not finished with its newline: not trusted
        if number == 1:
            if not isinstance(record, dict) or record.get("type") != "header":
                raise ValueError(f"{path}: the first line is not a shmbench log header")
            if record.get("format") != LOG_FORMAT:
                raise ValueError(f"{path}: log format {record.get('format')!r}, expected {LOG_FORMAT!r}")
            out.header = record
        elif not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: a record must be a JSON object")
        elif record.get("type") == "end":
            out.end = record
        elif record.get("type") == "run":
            out.runs.append(record)
        else:
            out.rows.append(record)
    out.complete = whole and out.end is not None
    return out


def step_row(
    fields: set[str],
    *,
    ids: tuple[int, int, Any, int | None],
    flags: tuple[bool, bool],
    logged: dict[str, Any],
    step_duration: float,
    total: float | None = None,
    episode_duration: float | None = None,
) -> dict[str, Any]:
    """One DACBench-shaped step row: ``ids`` (episode, step, instance, seed) and ``flags``
    (terminated, truncated) at the top level; each of ``logged`` (reward, action, state,
    info) that ``fields`` names as ``{"values": [v], "times": [now]}``; ``"time"`` adds the
    step's duration; the episode's last row (``total`` given) its performance and duration."""
    now = timestamp()
    episode, step, instance, seed = ids
    row: dict[str, Any] = {
        "episode": episode,
        "step": step,
        "instance": instance,
        "seed": seed,
        "terminated": bool(flags[0]),
        "truncated": bool(flags[1]),
    }
    for name in ("reward", "action", "state", "info"):
        if name in fields:
            row[name] = {"values": [logged[name]], "times": [now]}
    if "time" in fields:
        row["step_duration"] = {"values": [step_duration], "times": [now]}
    if total is not None and "performance" in fields:
        row["overall_performance"] = {"values": [total], "times": [now]}
    if episode_duration is not None and "time" in fields:
        row["episode_duration"] = {"values": [episode_duration], "times": [now]}
    return row


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` itself when it is a file, else the ``*.jsonl`` logs under it, sorted."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"no log file or directory at {p}")
    return sorted(q for q in p.rglob("*.jsonl") if q.is_file())


#: the columns every :func:`to_dataframe` row has, before the logged quantities
ID_COLUMNS = ("log", "experiment", "benchmark", "base_seed", "episode", "step", "instance", "seed")


def step_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One flat dict per step of every log at ``path`` (a file or a directory of runs): the
    identifying fields (the log's file name, the experiment, its benchmark and base seed,
    then DACBench's episode, step, instance, seed), the flags, and each logged quantity
    as a plain column (``{"values": [v], "times": [t]}`` becomes ``v``, and ``t`` goes to
    ``<name>_time``). Logs a crash cut short count as far as they go."""
    out: list[dict[str, Any]] = []
    for file in log_files(path):
        log = read_log(file)
        header = log.header or {}
        experiment = header.get("experiment") or {}
        ran: dict = header.get("benchmark") or {}  # what ran, after overrides
        policy: dict = experiment.get("seed") or {}
        base = {
            "log": file.name,
            "experiment": experiment.get("identifier"),
            "benchmark": ran.get("benchmark", experiment.get("benchmark")),
            "base_seed": ran.get("seed", policy.get("base")),
        }
        for row in log.rows:
            flat = dict(base)
            for key, value in row.items():
                if isinstance(value, dict) and set(value) == {"values", "times"}:
                    values, times = value["values"], value["times"]
                    flat[key] = values[0] if len(values) == 1 else values
                    flat[f"{key}_time"] = times[0] if len(times) == 1 else times
                else:
                    flat[key] = value
            out.append(flat)
    return out


def load_logs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The step rows of the log(s) at ``path``, DACBench-shaped, as ``dacbench.logger.load_logs``
    returns them: ``dacbench.logger.log2dataframe(load_logs(path))`` works unchanged."""
    return [row for file in log_files(path) for row in read_log(file).rows]


def to_dataframe(path: str | os.PathLike[str]) -> Any:
    """The steps of the log(s) at ``path`` as a pandas DataFrame, one row per step and flat
    columns (:func:`step_records`; ``*_time`` columns as datetimes). pandas is an optional
    dependency: ``pip install 'shmbench[analysis]'``."""
    try:
        import pandas as pd  # type: ignore[import-untyped,import-not-found,unused-ignore]  # optional, no stubs
    except ImportError:
        raise ImportError("to_dataframe needs pandas: pip install 'shmbench[analysis]'") from None
    frame = pd.DataFrame.from_records(step_records(path))
    for column in [c for c in frame.columns if c.endswith("_time")]:
        frame[column] = pd.to_datetime(frame[column], utc=True, errors="coerce")
    return frame


def episode_returns(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Per episode of every log at ``path``: experiment, base seed, log, episode, return (the
    sum of its logged rewards) and length -- what :func:`plot_returns` draws."""
    episodes: dict[tuple[str, int], dict[str, Any]] = {}
    for r in step_records(path):
        key = (r["log"], r["episode"])
        e = episodes.setdefault(
            key, {k: r[k] for k in ("experiment", "base_seed", "log", "episode")} | {"return": 0.0, "steps": 0}
        )
        reward = r.get("reward")
        if isinstance(reward, (int, float)):
            e["return"] += float(reward)
        e["steps"] += 1
    return list(episodes.values())


def plot_returns(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """A PNG of the per-episode return of the runs at ``path``: one line per log (labelled
    by its base seed), one panel per experiment. Needs matplotlib (``shmbench[analysis]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'shmbench[analysis]'") from None
    episodes = episode_returns(path)
    if not episodes:
        raise ValueError(f"no logged steps under {path}")
    experiments = sorted({str(e["experiment"]) for e in episodes})
    fig, axes = plt.subplots(len(experiments), 1, figsize=(7, 3.2 * len(experiments)), squeeze=False)
    for ax, experiment in zip(axes[:, 0], experiments):
        mine = [e for e in episodes if str(e["experiment"]) == experiment]
        for log in sorted({e["log"] for e in mine}):
            run = sorted((e for e in mine if e["log"] == log), key=lambda e: e["episode"])
            ax.plot(
                [e["episode"] for e in run], [e["return"] for e in run], marker=".", label=f"seed {run[0]['base_seed']}"
            )
        ax.set_title(experiment)
        ax.set_xlabel("episode")
        ax.set_ylabel("return")
        ax.legend(fontsize="small")
    fig.tight_layout()
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def strip_volatile(record: Any) -> Any:
    """A copy of ``record`` without :data:`VOLATILE_FIELDS`, at any depth."""
    if isinstance(record, dict):
        return {k: strip_volatile(v) for k, v in record.items() if k not in VOLATILE_FIELDS}
    if isinstance(record, list):
        return [strip_volatile(v) for v in record]
    return record
