"""The overhead report: pytest-benchmark JSON in, ``report.md`` and PNG plots out.

>>> from shmbench.perf.report import write_report
>>> write_report(["bench.json"], "bench-report")        # doctest: +SKIP
PosixPath('bench-report/report.md')

or ``shmbench report bench.json [more.json ...] -o bench-report``.

Every benchmark whose ``extra_info`` names a ``workload`` and a ``method`` becomes a row
of its workload's table (the benchmark group); rows flagged ``native`` or ``peer`` are the
references the other rows are divided by. Ratios are only ever taken within one run (one
JSON file): numbers from different machines or moments are shown side by side, never
divided -- on a small, shared VM two runs can differ by more than the effects measured.

Columns, per table:

* median time per round (µs, or ms for slow groups such as start-up) and its IQR;
* ``× REF`` -- this row's median time over the reference's (1.25 = 25 % slower), for
  the native row and each peer row;
* throughput tables (``env_steps_per_round`` > 1: vector envs) show env-steps/s and
  ``speed-up vs REF`` instead (the reference's time over this row's: 2.0 = twice the
  env-steps per second);
* ``GB/s`` where a round moves 16 KiB or more: ``payload_bytes * env_steps_per_round``
  per median round -- the observation bytes delivered, whatever the transport copied
  (not for rows whose ``extra_info["transfers_payload"]`` is false, nor for a method
  named ``native``: a native env returns a reference).

Plots (matplotlib, Agg): ``step-time.png`` (time per round by method, log scale, one
panel per group) and ``vector-throughput.png`` (env-steps/s of the throughput groups).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shmbench.perf.targets import TARGETS

__all__ = ["Row", "Run", "load_run", "write_report", "plot_size", "TARGETS"]


#: payloads from this size up get a GB/s column
LARGE_PAYLOAD = 16 * 1024
#: plot geometry: a fixed width, a fixed height per row of panels (inches at PLOT_DPI)
PLOT_DPI = 100
PLOT_WIDTH_IN = 12.0
PLOT_ROW_IN = 3.0
PLOT_TITLE_IN = 0.8
PLOT_COLUMNS = 2


@dataclass
class Row:
    """One benchmark of one run."""

    run: str
    group: str
    method: str
    name: str
    median: float  # seconds per round
    iqr: float
    rounds: int
    payload_bytes: int = 0
    env_steps: int = 1  # env steps per round (0: not a step, e.g. start-up)
    native: bool = False
    peer: bool = False
    extra: dict = field(default_factory=dict)
    mean: float = math.nan  # seconds per round

    @property
    def steps_per_s(self) -> float:
        """Env-steps per second: from the median round, or -- for an async pool, whose
        rounds alternate between a batch that was ready and one waited for, so that its
        median is either -- from the mean (``extra_info["throughput_from"] == "mean"``)."""
        per_round = self.mean if self.extra.get("throughput_from") == "mean" else self.median
        return self.env_steps / per_round if per_round > 0 else math.nan


@dataclass
class Run:
    """One pytest-benchmark JSON file."""

    label: str
    path: Path
    machine: dict
    commit: dict
    datetime: str
    version: str
    rows: list[Row]
    other: list[dict]  # benchmarks without workload/method in extra_info


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("1", "true", "yes"))


def load_run(path: str | os.PathLike[str], label: str | None = None) -> Run:
    """Read one pytest-benchmark JSON file (``--benchmark-json``)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ValueError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    label = label or path.stem
    rows, other = [], []
    for bench in data["benchmarks"]:
        stats = bench.get("stats") or {}
        extra = bench.get("extra_info") or {}
        if "median" not in stats:
            continue
        if not extra.get("workload") or not extra.get("method"):
            other.append(bench)
            continue
        steps = extra.get("env_steps_per_round", 1)
        rows.append(
            Row(
                run=label,
                group=str(bench.get("group") or extra["workload"]),
                method=str(extra["method"]),
                name=str(bench.get("name", "")),
                median=float(stats["median"]),
                iqr=float(stats.get("iqr", 0.0)),
                rounds=int(stats.get("rounds", 0)),
                payload_bytes=int(extra.get("payload_bytes") or 0),
                env_steps=int(steps) if isinstance(steps, (int, float)) else 1,
                native=_flag(extra.get("native")),
                peer=_flag(extra.get("peer")),
                extra=extra,
                mean=float(stats.get("mean", math.nan)),
            )
        )
    _disambiguate(rows)
    return Run(
        label=label,
        path=path,
        machine=data.get("machine_info") or {},
        commit=data.get("commit_info") or {},
        datetime=str(data.get("datetime", "")),
        version=str(data.get("version", "")),
        rows=rows,
        other=other,
    )


def _disambiguate(rows: list[Row]) -> None:
    """Two benchmarks of one group with the same method keep apart by their test names."""
    seen: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        seen.setdefault((r.group, r.method), []).append(r)
    for same in seen.values():
        if len(same) > 1:
            for r in same:
                r.method = f"{r.method} ({r.name})"


def _references(rows: list[Row]) -> tuple[str | None, list[str]]:
    """The native method and the peer methods of one group of one run.

    Rows say what they are (``native``/``peer``); a group whose rows never mention
    ``peer`` treats every method not named ``shmbench...`` and not native as a peer.
    """
    native = next((r.method for r in rows if r.native), None)
    if any("peer" in r.extra for r in rows):
        peers = [r.method for r in rows if r.peer]
    else:
        peers = [r.method for r in rows if not r.native and not r.method.startswith("shmbench")]
    return native, peers


# --------------------------------------------------------------------------- formatting


def _num(x: float, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - mag)
    return f"{x:,.{decimals}f}"


def _time_unit(rows: Sequence[Row]) -> tuple[str, float]:
    """µs for fast groups, ms where even the fastest row takes 10 ms or more."""
    fastest = min((r.median for r in rows), default=0.0)
    return ("ms", 1e3) if fastest >= 0.01 else ("µs", 1e6)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _table(headers: list[str], lines: list[list[str]], text_columns: int = 1) -> str:
    """A Markdown table: the first ``text_columns`` columns left-aligned, numbers right."""
    out = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i < text_columns else "---:" for i in range(len(headers))) + "|",
    ]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _group_table(group: str, rows: list[Row], runs: list[Run]) -> str:
    multi = len(runs) > 1
    unit, scale = _time_unit(rows)
    throughput = any(r.env_steps > 1 for r in rows)
    large = any(r.payload_bytes * max(r.env_steps, 1) >= LARGE_PAYLOAD for r in rows)
    by_run: dict[str, list[Row]] = {}
    for r in rows:
        by_run.setdefault(r.run, []).append(r)
    refs = {run: _references(rs) for run, rs in by_run.items()}
    ref_names: list[str] = []
    for native, peers in refs.values():
        for name in ([native] if native else []) + peers:
            if name not in ref_names:
                ref_names.append(name)

    headers = (["run"] if multi else []) + ["method", f"median {unit}/round", f"IQR {unit}", "rounds"]
    if throughput:
        headers += ["env-steps/s"] + [f"speed-up vs {n}" for n in ref_names]
    else:
        headers += [f"× {n}" for n in ref_names]
    if large:
        headers.append("GB/s")
    lines = []
    for run in runs:
        run_rows = by_run.get(run.label, [])
        medians = {r.method: r.median for r in run_rows}
        rates = {r.method: r.steps_per_s for r in run_rows}
        for r in sorted(run_rows, key=lambda r: r.median):
            kind = (
                " (native)"
                if r.native and r.method != "native"
                else (" (peer)" if r.method in refs[run.label][1] else "")
            )
            line = ([run.label] if multi else []) + [
                f"{r.method}{kind}",
                _num(r.median * scale),
                _num(r.iqr * scale, 2),
                str(r.rounds),
            ]
            for n in ref_names:
                ref = medians.get(n)
                if ref is None or n == r.method:
                    line.append("–" if ref is None else "1")
                    continue
                # throughput: env-steps/s over env-steps/s (a pool's round steps only a batch)
                line.append(_num(_ratio(r.steps_per_s, rates[n]) if throughput else _ratio(r.median, ref)))
            if throughput:
                line.insert(len(line) - len(ref_names), _num(r.steps_per_s))
            if large:
                moved = r.payload_bytes * max(r.env_steps, 1)
                line.append(_num(moved / r.median / 1e9) if moved >= LARGE_PAYLOAD and _transfers(r) else "–")
            lines.append(line)
    return _table(headers, lines, text_columns=2 if multi else 1)


def _transfers(row: Row) -> bool:
    """Whether a row's round really moves its payload: a native env hands over a reference
    (``extra_info["transfers_payload"] = False``; a method named ``native`` is assumed so)."""
    flag = row.extra.get("transfers_payload")
    return bool(flag) if flag is not None else row.method != "native"


#: goals read from one row's paired measurement (bench/test_paired_bench.py)
_PAIRED = {"paired_time_ratio": "paired_ratio", "paired_speedup": "paired_speedup"}
_HIGHER_IS_BETTER = ("speedup", "paired_speedup")


def _target_values(run: Run) -> list[tuple[str, float, str, float]]:
    """Each target this run measured: (what, value, kind, goal)."""
    index = {(r.group, r.method): r for r in run.rows}
    out = []
    for what, a_key, b_key, kind, goal in TARGETS:
        a = index.get(a_key)
        b = index.get(b_key) if b_key else None
        if a is None:
            continue
        if kind == "seconds":
            out.append((what, a.median, kind, goal))
        elif kind in _PAIRED:
            value = a.extra.get(_PAIRED[kind])
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append((what, float(value), kind, goal))
        elif b is None:
            continue
        elif kind == "time_ratio":
            out.append((what, _ratio(a.median, b.median), kind, goal))
        else:  # speedup, in env-steps/s (a pool's round steps only a batch)
            out.append((what, _ratio(a.steps_per_s, b.steps_per_s), kind, goal))
    return out


def _met(value: float, kind: str, goal: float) -> bool:
    return value >= goal if kind in _HIGHER_IS_BETTER else value <= goal


def _shown(value: float, kind: str) -> str:
    return f"{_num(value)} s" if kind == "seconds" else f"{_num(value)}×"


def _goal_text(kind: str, goal: float) -> str:
    return f"{'≥' if kind in _HIGHER_IS_BETTER else '≤'} {goal:g}{' s' if kind == 'seconds' else '×'}"


def _targets_table(runs: list[Run]) -> str | None:
    lines = []
    for run in runs:
        for what, value, kind, goal in _target_values(run):
            lines.append(
                ([run.label] if len(runs) > 1 else [])
                + [what, _shown(value, kind), _goal_text(kind, goal), "yes" if _met(value, kind, goal) else "no"]
            )
    if not lines:
        return None
    headers = (["run"] if len(runs) > 1 else []) + ["target", "measured", "goal", "met"]
    return _table(headers, lines, text_columns=len(headers))


def _targets_spread(runs: list[Run]) -> str | None:
    """With several runs (``shmbench bench --repeats``): each target's value in every run,
    their median, and the spread (max - min) / median -- how far one run can be trusted."""
    if len(runs) < 2:
        return None
    per: dict[str, tuple[str, float, list[float]]] = {}
    for run in runs:
        for what, value, kind, goal in _target_values(run):
            per.setdefault(what, (kind, goal, []))[2].append(value)
    lines = []
    for what, (kind, goal, values) in per.items():
        mid = statistics.median(values)
        spread = f"{100 * (max(values) - min(values)) / mid:.0f}%" if mid > 0 else "–"
        lines.append(
            [
                what,
                ", ".join(_num(v) for v in values),
                _shown(mid, kind),
                spread,
                _goal_text(kind, goal),
                "yes" if _met(mid, kind, goal) else "no",
            ]
        )
    if not lines:
        return None
    return _table(["target", "each run", "median", "spread", "goal", "met (median)"], lines, text_columns=6)


def _machine_lines(run: Run) -> list[str]:
    m, c = run.machine, run.commit
    cpu = m.get("cpu") or {}
    extra = m.get("shmbench") or {}
    out = [f"- **{run.label}** (`{run.path.name}`, {run.datetime or 'undated'}, pytest-benchmark {run.version or '?'})"]
    parts = [
        m.get("node"),
        cpu.get("brand_raw") or m.get("processor"),
        f"{cpu.get('count')} CPUs" if cpu.get("count") else None,
        f"{extra['usable_cpus']} usable" if extra.get("usable_cpus") else None,
        f"{m.get('system', '')} {m.get('release', '')}".strip() or None,
        f"{m.get('python_implementation', 'Python')} {m.get('python_version', '')}".strip(),
    ]
    out.append("  - machine: " + ", ".join(str(p) for p in parts if p))
    loads: list[tuple[str, list]] = []
    for when, key in (("start", "loadavg_start"), ("end", "loadavg_end")):
        value = extra.get(key)
        if isinstance(value, list) and value:
            loads.append((when, value))
    if loads:
        out.append(
            "  - load average (1/5/15 min): "
            + "; ".join(f"{when} {' '.join(f'{x:.2f}' for x in v)}" for when, v in loads)
        )
    if extra.get("quick"):
        out.append("  - quick mode (subset, few rounds)")
    runtimes = extra.get("runtimes") or {}
    if runtimes:
        out.append(
            "  - runtimes: "
            + "; ".join(
                f"{name}: {'ok' if v.get('ok') else 'unavailable'} ({v.get('detail', '')})"
                for name, v in runtimes.items()
            )
        )
    if c.get("id"):
        out.append(
            f"  - commit: `{str(c['id'])[:12]}`{' (dirty tree)' if c.get('dirty') else ''}"
            f"{' on ' + str(c['branch']) if c.get('branch') else ''}"
        )
    return out


# -------------------------------------------------------------------------------- plots


def plot_size(panels: int) -> tuple[int, int]:
    """The pixel size (width, height) of a plot with ``panels`` panels."""
    rows = max(1, math.ceil(panels / PLOT_COLUMNS))
    return (round(PLOT_WIDTH_IN * PLOT_DPI), round((PLOT_ROW_IN * rows + PLOT_TITLE_IN) * PLOT_DPI))


def _colour(row: Row, peers: Iterable[str]) -> str:
    if row.native:
        return "#2ca02c"
    if row.method in peers:
        return "#ff7f0e"
    if row.method.startswith("shmbench"):
        return "#1f77b4"
    return "#7f7f7f"


def _plot(groups: dict[str, list[Row]], path: Path, title: str, throughput: bool, multi: bool) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    names = list(groups)
    rows_n = max(1, math.ceil(len(names) / PLOT_COLUMNS))
    width, height = plot_size(len(names))
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(width / PLOT_DPI, height / PLOT_DPI), dpi=PLOT_DPI, layout="constrained")
    axes = fig.subplots(rows_n, PLOT_COLUMNS, squeeze=False)
    for ax, name in zip(axes.flat, names):
        rows = sorted(groups[name], key=lambda r: (r.run, r.median))
        peers = {p for run in {r.run for r in rows} for p in _references([r for r in rows if r.run == run])[1]}
        if throughput:
            values, unit = [r.steps_per_s for r in rows], "env-steps/s"
        else:
            unit, scale = _time_unit(rows)
            values = [r.median * scale for r in rows]
            unit = f"{unit} per round (log)"
            ax.set_xscale("log")
            # bars need a left edge: at least a decade below the largest, under the smallest
            low = min(min(values) / 3, max(values) / 10)
            ax.set_xlim(low, max(values) * 4)
            ax.xaxis.set_minor_formatter(NullFormatter())
        labels = [f"{r.method} [{r.run}]" if multi else r.method for r in rows]
        ax.barh(range(len(rows)), values, color=[_colour(r, peers) for r in rows])
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        for i, v in enumerate(values):
            ax.annotate(_num(v), (v, i), xytext=(2, 0), textcoords="offset points", va="center", fontsize=6)
        if throughput:
            ax.margins(x=0.15)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(title + "  (green: native, blue: shmbench, orange: peers)", fontsize=10)
    fig.savefig(path, dpi=PLOT_DPI)


# ------------------------------------------------------------------------------- report


def write_report(json_paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``report.md`` and its plots into ``out_dir`` from one or more runs' JSON;
    returns the path of ``report.md``."""
    if not json_paths:
        raise ValueError("give at least one pytest-benchmark JSON file")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = _labels([Path(p) for p in json_paths])
    runs = [load_run(p, label) for p, label in zip(json_paths, labels)]
    rows = [r for run in runs for r in run.rows]
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    step_groups = {g: rs for g, rs in groups.items() if not any(r.env_steps > 1 for r in rs)}
    vector_groups = {g: rs for g, rs in groups.items() if g not in step_groups}
    multi = len(runs) > 1

    md = ["# shmbench overhead report", ""]
    md += [
        "Medians of pytest-benchmark rounds; ratios are taken within one run only. "
        "`× REF` = this median / REF's median (lower is faster); `speed-up vs REF` = REF's "
        "median / this median (higher is better); GB/s = observation bytes delivered per "
        "second.",
        "",
    ]
    md += ["## Runs", ""]
    for run in runs:
        md += _machine_lines(run)
    md.append("")
    targets = _targets_table(runs)
    spread = _targets_spread(runs)
    md += ["## Results", ""]
    for name in list(step_groups) + list(vector_groups):
        md += [f"### {name}", "", _group_table(name, groups[name], runs), ""]
    if not groups:
        md += ["No benchmark recorded a workload and a method in its extra_info.", ""]
    other = [(run.label, b) for run in runs for b in run.other]
    if other:
        md += [
            "### Other benchmarks",
            "",
            _table(
                (["run"] if multi else []) + ["benchmark", "group", "median µs", "rounds"],
                [
                    ([label] if multi else [])
                    + [
                        str(b.get("name")),
                        str(b.get("group") or "–"),
                        _num(b["stats"]["median"] * 1e6),
                        str(b["stats"].get("rounds", "")),
                    ]
                    for label, b in other
                ],
                text_columns=3 if multi else 2,
            ),
            "",
        ]
    md += ["## Plots", ""]
    if step_groups:
        _plot(step_groups, out / "step-time.png", "Time per round by method", throughput=False, multi=multi)
        md += ["![time per round by method](step-time.png)", ""]
    if vector_groups:
        _plot(vector_groups, out / "vector-throughput.png", "Vector env throughput", throughput=True, multi=multi)
        md += ["![vector env throughput](vector-throughput.png)", ""]
    if targets:
        md += [
            "## Appendix: the project's performance goals",
            "",
            "The goals shmbench's developers set themselves (its issue tracker), measured on this "
            "machine: a ratio here is not a failure of your set-up, and the goals were set on a "
            "2-vCPU VM; compare with the tables above.",
            "",
            targets,
            "",
        ]
        if spread:
            md += [
                "Across the runs (each run measures every method side by side; spread = "
                "(max - min) / median of the runs' values):",
                "",
                spread,
                "",
            ]
    report = out / "report.md"
    report.write_text("\n".join(md), encoding="utf-8")
    return report


def _labels(paths: list[Path]) -> list[str]:
    """Short, unique run labels: file stems, numbered where two files share a stem."""
    stems = [p.stem for p in paths]
    out = []
    for i, s in enumerate(stems):
        out.append(s if stems.count(s) == 1 else f"{s}#{stems[: i + 1].count(s)}")
    return out
