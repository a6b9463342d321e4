"""shmbench.perf.report and shmbench.perf.bench.

``tests/data/bench-sample.json`` is the pytest-benchmark JSON of a real full run of the
suites on the 2-vCPU development VM::

    python -m shmbench.perf.bench -o /tmp/bench-full     # = shmbench bench
    python -c "import json, sys; sys.path.insert(0, 'tests'); import test_report as t; \\
        t.dump_sample(t.prune(json.load(open('/tmp/bench-full/bench.json'))))"

``prune`` (below) drops what the report does not read -- each benchmark's raw timings,
options and params, most statistics, nested extra_info (server versions, wait counters),
the CPU flag list -- so the file stays small; the
numbers are the run's own. Its ``_note`` says the same. ``dump_sample`` writes one
benchmark per line.

``test_bench_quick`` runs the real quick suite (``shmbench bench --quick``): about 30 s on
an idle 2-vCPU machine, a minute or more under load. It is marked ``slow`` (CI runs it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shmbench.perf import report as rep

DATA = Path(__file__).resolve().parent / "data"
SAMPLE = DATA / "bench-sample.json"

_KEEP_STATS = ("median", "iqr", "rounds")


def prune(data: dict) -> dict:
    """The parts of a pytest-benchmark JSON file that the report reads."""
    machine = dict(data.get("machine_info") or {})
    if isinstance(machine.get("cpu"), dict):
        machine["cpu"] = {
            k: v for k, v in machine["cpu"].items() if k in ("brand_raw", "count", "arch", "hz_advertised_friendly")
        }
    return {
        "_note": data.get("_note")
        or (
            "A real run of `shmbench bench` (python -m shmbench.perf.bench) on the 2-vCPU "
            "development VM, pruned by tests/test_report.py:prune (raw timings, options, "
            "nested extra_info and CPU flags dropped)."
        ),
        "machine_info": machine,
        "commit_info": {
            k: v for k, v in (data.get("commit_info") or {}).items() if k in ("id", "dirty", "branch", "time")
        },
        "benchmarks": [
            {
                "group": b.get("group"),
                "name": b.get("name"),
                "extra_info": {k: v for k, v in (b.get("extra_info") or {}).items() if not isinstance(v, (dict, list))},
                "stats": {k: b["stats"][k] for k in _KEEP_STATS if k in b["stats"]},
            }
            for b in data["benchmarks"]
        ],
        "datetime": data.get("datetime"),
        "version": data.get("version"),
    }


def dump_sample(data: dict, path: Path = SAMPLE) -> None:
    """Write a pruned run compactly: one benchmark per line."""
    head = {k: v for k, v in data.items() if k != "benchmarks"}
    lines = ",\n".join("  " + json.dumps(b, separators=(",", ":")) for b in data["benchmarks"])
    text = json.dumps(head, indent=1)[:-2] + ',\n "benchmarks": [\n' + lines + "\n ]\n}\n"
    json.loads(text)
    path.write_text(text)


@pytest.fixture(scope="module")
def sample() -> dict:
    if not SAMPLE.is_file():
        pytest.fail(f"{SAMPLE} is missing (see this module's docstring for how to produce it)")
    return json.loads(SAMPLE.read_text())


def _groups(data: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for b in data["benchmarks"]:
        if b.get("extra_info", {}).get("workload") and b.get("extra_info", {}).get("method"):
            out.setdefault(b["group"], []).append(b)
    return out


def _sections(md: str) -> dict[str, str]:
    """### heading -> the text up to the next heading."""
    parts = re.split(r"^(#{2,3} .*)$", md, flags=re.M)
    return {parts[i].lstrip("#").strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _tables(text: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def test_sample_is_pruned_and_real(sample):
    assert prune(sample) == sample, "the sample holds more than prune() keeps"
    assert SAMPLE.stat().st_size < 40 * 1024
    assert sample["machine_info"]["shmbench"]["runtimes"]["process"]["ok"]
    groups = _groups(sample)
    for expected in ("cartpole", "frames-84x84x4-u8", "obs-1MiB-f32", "vec8-cartpole", "startup-cartpole"):
        assert expected in groups, f"the sample lacks the {expected} group"


def test_report_structure(sample, tmp_path):
    path = rep.write_report([SAMPLE], tmp_path)
    assert path == tmp_path / "report.md"
    md = path.read_text()
    assert md.startswith("# shmbench overhead report\n")
    sections = _sections(md)
    for heading in ("Runs", "Results", "Plots", "Appendix: the project's performance goals"):
        assert heading in sections, f"no '## {heading}' section"
    assert md.index("## Results") < md.index("## Appendix")  # the user's numbers first
    assert "AMD" in sections["Runs"] or "CPUs" in sections["Runs"]
    groups = _groups(sample)
    # one table per workload group, one row per benchmark of the group
    for group, benches in groups.items():
        assert group in sections, f"no '### {group}' table"
        tables = _tables(sections[group])
        assert len(tables) == 1, f"{group}: {len(tables)} tables"
        header, rule, *rows = tables[0]
        assert set(rule) <= {"---", "---:"}
        assert len(rows) == len(benches)
        assert {r[0].split(" (")[0] for r in rows} == {b["extra_info"]["method"] for b in benches}
        assert header[1].startswith("median ")
        vector = any(b["extra_info"].get("env_steps_per_round", 1) > 1 for b in benches)
        natives = [b["extra_info"]["method"] for b in benches if b["extra_info"].get("native")]
        peers = [b["extra_info"]["method"] for b in benches if b["extra_info"].get("peer")]
        if vector:
            assert "env-steps/s" in header
            for ref in natives + peers:
                assert f"speed-up vs {ref}" in header
        else:
            for ref in natives + peers:
                assert f"× {ref}" in header
        if any(b["extra_info"].get("payload_bytes", 0) >= rep.LARGE_PAYLOAD for b in benches):
            assert header[-1] == "GB/s"
        # a reference row divided by itself is 1
        for ref in natives:
            row = next(r for r in rows if r[0].split(" (")[0] == ref)
            col = header.index(f"speed-up vs {ref}" if vector else f"× {ref}")
            assert row[col] == "1"
    # the ratio columns hold the medians' ratios
    cartpole = groups["cartpole"]
    med = {b["extra_info"]["method"]: b["stats"]["median"] for b in cartpole}
    header, _, *rows = _tables(sections["cartpole"])[0]
    row = next(r for r in rows if r[0] == "shmbench-process")
    assert float(row[header.index("× native")].replace(",", "")) == pytest.approx(
        med["shmbench-process"] / med["native"], rel=0.01
    )
    targets = _tables(sections["Appendix: the project's performance goals"])[0]
    assert targets[0] == ["target", "measured", "goal", "met"]
    assert all(r[3] in ("yes", "no") for r in targets[2:])


def test_plots_open_with_the_expected_size(sample, tmp_path):
    image = pytest.importorskip("matplotlib.image")
    rep.write_report([SAMPLE], tmp_path)
    groups = _groups(sample)
    vector = {g for g, bs in groups.items() if any(b["extra_info"].get("env_steps_per_round", 1) > 1 for b in bs)}
    for name, panels in (("step-time.png", len(groups) - len(vector)), ("vector-throughput.png", len(vector))):
        pixels = image.imread(tmp_path / name)
        width, height = rep.plot_size(panels)
        assert pixels.shape[:2] == (height, width), name
        assert pixels.shape[2] in (3, 4)
        assert pixels.std() > 0.01, f"{name} is blank"
    md = (tmp_path / "report.md").read_text()
    assert "![time per round by method](step-time.png)" in md
    assert "![vector env throughput](vector-throughput.png)" in md


def test_several_runs_are_compared_within_each_run(sample, tmp_path):
    other = dict(sample)
    other["benchmarks"] = [
        dict(b, stats=dict(b["stats"], median=b["stats"]["median"] * 2)) for b in sample["benchmarks"]
    ]
    second = tmp_path / "slower.json"
    second.write_text(json.dumps(other))
    md = rep.write_report([SAMPLE, second], tmp_path / "out").read_text()
    header, _, *rows = _tables(_sections(md)["cartpole"])[0]
    assert header[:2] == ["run", "method"]
    ratios = {(r[0], r[1]): r[header.index("× native")] for r in rows}
    # every median doubled in the second run: its ratios to its own native are unchanged
    assert ratios[("bench-sample", "shmbench-process")] == ratios[("slower", "shmbench-process")]
    assert "- **bench-sample**" in md and "- **slower**" in md


def test_repeated_runs_get_each_goals_median_and_spread(sample, tmp_path):
    """``shmbench bench --repeats 3``: the appendix adds each goal's value in every run,
    the median of those values and their spread."""
    paths = []
    for name, factor in (("bench-1", 1.0), ("bench-2", 1.1), ("bench-3", 0.9)):
        run = dict(sample)
        run["benchmarks"] = [
            dict(b, stats=dict(b["stats"], median=b["stats"]["median"] * factor))
            if b.get("extra_info", {}).get("method") == "shmbench-process"
            else b
            for b in sample["benchmarks"]
        ]
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(run))
    md = rep.write_report(paths, tmp_path / "out").read_text()
    appendix = _sections(md)["Appendix: the project's performance goals"]
    header, _, *rows = _tables(appendix)[-1]
    assert header == ["target", "each run", "median", "spread", "goal", "met (median)"]
    row = next(r for r in rows if r[0] == "CartPole step, shmbench (default wait) vs native")
    index = {(b["group"], b["extra_info"].get("method")): b["stats"]["median"] for b in sample["benchmarks"]}
    ratio = index[("cartpole", "shmbench-process")] / index[("cartpole", "native")]
    values = [float(v) for v in row[1].split(", ")]
    assert values == pytest.approx([ratio, ratio * 1.1, ratio * 0.9], rel=1e-2)
    assert float(row[2].rstrip("×")) == pytest.approx(ratio, rel=1e-2)
    assert row[3] == "20%"  # (1.1 - 0.9) / 1.0
    assert row[5] == ("yes" if ratio <= 1.25 else "no")
    # one run: no such table
    single = rep.write_report([paths[0]], tmp_path / "one").read_text()
    assert "each run" not in single


def _bench(group, name, median, **extra):
    return {
        "group": group,
        "name": name,
        "extra_info": extra,
        "stats": {"median": median, "iqr": median / 10, "rounds": 100},
    }


def test_generic_groups_get_tables(tmp_path):
    """The channel suite's shape: no native row, peers named by method."""
    data = {
        "machine_info": {"node": "box"},
        "benchmarks": [
            _bench(
                "roundtrip-16B",
                "test_rt[spin]",
                2e-6,
                workload="roundtrip-16B",
                method="shmbench-spin",
                payload_bytes=16,
            ),
            _bench("roundtrip-16B", "test_rt[pipe]", 90e-6, workload="roundtrip-16B", method="pipe", payload_bytes=16),
            _bench(
                "roundtrip-16B", "test_rt[posix]", 80e-6, workload="roundtrip-16B", method="posix_ipc", payload_bytes=16
            ),
            _bench("roundtrip-16B", "test_rt[c]", 1e-6, workload="roundtrip-16B", method="c-futex", payload_bytes=16),
            _bench(
                "roundtrip-1MiB",
                "test_rt1m[spin]",
                100e-6,
                workload="roundtrip-1MiB",
                method="shmbench-spin",
                payload_bytes=1 << 20,
                peer=False,
            ),
            _bench(
                "roundtrip-1MiB",
                "test_rt1m[pipe]",
                400e-6,
                workload="roundtrip-1MiB",
                method="pipe",
                payload_bytes=1 << 20,
                peer=True,
            ),
            _bench(None, "test_unlabelled", 5e-6),
        ],
    }
    path = tmp_path / "channel.json"
    path.write_text(json.dumps(data))
    md = rep.write_report([path], tmp_path / "out").read_text()
    sections = _sections(md)
    header, _, *rows = _tables(sections["roundtrip-16B"])[0]
    assert "× native" not in header
    assert {"× pipe", "× posix_ipc", "× c-futex"} <= set(header)
    spin = next(r for r in rows if r[0] == "shmbench-spin")
    assert spin[header.index("× pipe")] == "0.0222"
    header, _, *rows = _tables(sections["roundtrip-1MiB"])[0]
    assert header[-1] == "GB/s" and "× pipe" in header
    spin = next(r for r in rows if r[0] == "shmbench-spin")
    assert spin[-1] == "10.5"  # 1 MiB per 100 µs
    assert "test_unlabelled" in sections["Other benchmarks"]
    assert "Appendix: the project's performance goals" not in sections
    assert (tmp_path / "out" / "step-time.png").is_file()
    assert not (tmp_path / "out" / "vector-throughput.png").exists()


def test_report_command(tmp_path, capsys):
    from shmbench.cli import main

    assert main(["report", str(SAMPLE), "-o", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r" / "report.md")
    assert main(["report", str(tmp_path / "missing.json"), "-o", str(tmp_path / "r2")]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["report", str(bad), "-o", str(tmp_path / "r3")]) == 2
    assert "not a pytest-benchmark JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_quick(tmp_path):
    """``shmbench bench --quick`` end to end (about 30 s idle; see the module docstring)."""
    from shmbench.perf import bench as benchrun

    status = benchrun.run(quick=True, out_dir=tmp_path)
    assert status == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["machine_info"]["shmbench"]["quick"] is True
    groups = _groups(data)
    assert {"cartpole", "obs-1MiB-f32", "vec8-cartpole", "startup-cartpole"} <= set(groups)
    md = (tmp_path / "report.md").read_text()
    for group in groups:
        assert f"### {group}" in md
    assert (tmp_path / "step-time.png").stat().st_size > 0
    assert (tmp_path / "vector-throughput.png").stat().st_size > 0
    # compacted: every round's timing became 101 percentiles, the summary stayed
    for bench in data["benchmarks"]:
        stats = bench["stats"]
        assert "data" not in stats and len(stats["data_percentiles"]) == 101
        assert stats["data_percentiles"][0] == stats["min"] and stats["data_percentiles"][-1] == stats["max"]
    assert (tmp_path / "bench.json").stat().st_size < 2_000_000


def test_compact_keeps_the_statistics_and_shrinks_the_rounds(tmp_path):
    from shmbench.perf.bench import compact

    rounds = [float(i) for i in range(1, 100_001)]
    doc = {"benchmarks": [{"name": "x", "stats": {"median": 50000.5, "rounds": 100_000, "data": rounds}}]}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc))
    before = path.stat().st_size
    compact(path)
    stats = json.loads(path.read_text())["benchmarks"][0]["stats"]
    assert stats["median"] == 50000.5 and stats["rounds"] == 100_000 and "data" not in stats
    assert stats["data_percentiles"][0] == 1.0 and stats["data_percentiles"][50] == 50001.0
    assert stats["data_percentiles"][100] == 100_000.0
    assert path.stat().st_size < before / 100


def test_bench_measures_the_users_own_env(tmp_path):
    """``shmbench bench --env`` on an env the host can build (native, the runtime, vector
    rows) and on one only its server can (no native row, said as the skip's reason)."""
    from shmbench.perf import bench as benchrun

    status = benchrun.run(
        quick=True, out_dir=tmp_path / "cp", user={"env": "CartPole-v1", "runtime": "process", "num_envs": 2}
    )
    assert status == 0
    data = json.loads((tmp_path / "cp" / "bench.json").read_text())
    groups = _groups(data)
    assert set(groups) == {"user-CartPole-v1", "user-vec2-CartPole-v1"}
    methods = {b["extra_info"]["method"] for b in data["benchmarks"]}
    assert {"native", "shmbench-process", "sync-vector", "shmbench-vector"} <= methods
    assert "### user-CartPole-v1" in (tmp_path / "cp" / "report.md").read_text()

    tests = str(Path(__file__).resolve().parent)
    env = {"PYTHONPATH": tests + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmbench",
            "bench",
            "--quick",
            "--env",
            "envs:InfoEnv",
            "--runtime",
            "process",
            "-o",
            str(tmp_path / "info"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "the host cannot build envs:InfoEnv" in out.stdout  # the skip's reason, in -rs
    data = json.loads((tmp_path / "info" / "bench.json").read_text())
    assert {b["extra_info"]["method"] for b in data["benchmarks"]} == {"shmbench-process"}


def test_bench_repeats_write_one_json_per_run_and_one_report(tmp_path, capsys):
    """``shmbench bench --repeats 2`` on one cheap benchmark: two real child runs, two JSON
    files, one report over both; --repeats 0 is refused."""
    from shmbench.cli import main
    from shmbench.perf import bench as benchrun

    status = benchrun.run(quick=True, out_dir=tmp_path, extra_args=["-k", "test_step and cartpole-native"], repeats=2)
    assert status == 0
    runs = [json.loads((tmp_path / f"bench-{i}.json").read_text()) for i in (1, 2)]
    assert all([b["extra_info"]["method"] for b in run["benchmarks"]] == ["native"] for run in runs)
    assert not (tmp_path / "bench.json").exists()
    md = (tmp_path / "report.md").read_text()
    assert "- **bench-1**" in md and "- **bench-2**" in md
    assert main(["bench", "--repeats", "0", "-o", str(tmp_path / "no")]) == 2
    assert "--repeats must be at least 1" in capsys.readouterr().err


def test_paired_goals_read_the_rows_own_paired_measurement(tmp_path):
    """bench/test_paired_bench.py's rows carry their interleaved ratio in extra_info; the
    paired goals read it (no second row), and a row without it is not a goal's row."""
    data = {
        "machine_info": {"node": "box"},
        "benchmarks": [
            _bench(
                "paired-cartpole",
                "test_paired[paired-cartpole]",
                12e-6,
                workload="paired-cartpole",
                method="shmbench-process",
                payload_bytes=16,
                paired_ratio=1.21,
            ),
            _bench(
                "paired-vec8-cartpole",
                "test_paired[paired-vec8-cartpole]",
                80e-6,
                workload="paired-vec8-cartpole",
                method="shmbench-process",
                payload_bytes=16,
                env_steps_per_round=8,
                paired_ratio=1 / 1.4,
                paired_speedup=1.4,
            ),
            _bench(
                "paired-vec16-cartpole",
                "test_paired[paired-vec16-cartpole]",
                190e-6,
                workload="paired-vec16-cartpole",
                method="shmbench-process",
                payload_bytes=16,
                env_steps_per_round=16,
            ),
        ],
    }
    path = tmp_path / "paired.json"
    path.write_text(json.dumps(data))
    md = rep.write_report([path], tmp_path / "out").read_text()
    header, _, *rows = _tables(_sections(md)["Appendix: the project's performance goals"])[-1]
    assert header == ["target", "measured", "goal", "met"]
    found = {r[0]: r[1:] for r in rows}
    assert found["CartPole step, shmbench vs native, paired (interleaved chunks)"] == ["1.21×", "≤ 1.25×", "yes"]
    assert found["8x CartPole env-steps/s vs SyncVectorEnv, paired (interleaved chunks)"] == ["1.40×", "≥ 1×", "yes"]
    assert not any(k.startswith("16x CartPole") and "paired" in k for k in found)
