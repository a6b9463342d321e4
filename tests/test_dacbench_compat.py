"""DACBench's own container API on shmbench: its benchmark objects, its RemoteRunner keywords,
and its ``examples/container.py`` run with only the import lines changed.

DACBench is installed on the host side in a venv of its own (DACBench itself without its
declared dependencies -- they include jupyter and pytest -- plus what its benchmarks import:
ConfigSpace, seaborn, ioh; everything else comes from the environment running the tests).
The example is the file from DACBench's own sdist on PyPI, not a copy of it; the image is
recipes/dacbench.def, built like every image of the suite.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import site
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from conftest_images import RECIPES

from shmbench.errors import ExperimentError
from shmbench.experiments.dacbench_compat import dacbench_keywords

DACBENCH = "0.5.6"
#: what DACBench's benchmarks import beyond numpy and gymnasium (pinned as recipes/dacbench.def)
RUNTIME_DEPS = ["configspace==1.2.2", "seaborn==0.13.2", "ioh==0.4.2"]


def _cache() -> Path:
    from shmbench.images.store import cache_root

    return cache_root() / "test-venvs"


@pytest.fixture(scope="session")
def dacbench_venv() -> Path:
    """A venv with DACBench that also sees everything of the environment running the tests
    (a .pth file naming its site-packages), built once into the cache."""
    venv = _cache() / f"dacbench-{DACBENCH}-py{sys.version_info.major}{sys.version_info.minor}"
    python = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / "ready").exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
            purelib = subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            ours = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if os.path.isdir(p)]
            ours += [p for p in sys.path if p.endswith("site-packages") and p not in ours]
            # after the venv's own site-packages (DACBench's pins win), the environment running
            # the tests, as site dirs: their own .pth files (an editable shmbench) count too
            Path(purelib, "zz-host-environment.pth").write_text(
                "".join(f"import site; site.addsitedir({p!r})\n" for p in ours)
            )
            pip = [sys.executable, "-m", "pip", "install", "-q", "--target", purelib]
            subprocess.run([*pip, "--no-deps", f"dacbench=={DACBENCH}"], check=True, timeout=600)
            subprocess.run([*pip, *RUNTIME_DEPS], check=True, timeout=900)
            (venv / "ready").write_text("")
    return python


@pytest.fixture(scope="session")
def dacbench_example(tmp_path_factory) -> str:
    """DACBench's examples/container.py, from its sdist on PyPI."""
    where = tmp_path_factory.mktemp("dacbench-sdist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"dacbench=={DACBENCH}",
            "-d",
            str(where),
        ],
        check=True,
        timeout=600,
    )
    (sdist,) = where.glob("dacbench-*.tar.gz")
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(f"dacbench-{DACBENCH}/examples/container.py")
        assert member is not None
        return member.read().decode()


def run_in(python: Path, code: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )


# ------------------------------------------------------------------------------------------


def test_dacbench_keywords_map_onto_shmbench(tmp_path):
    sif = tmp_path / "x.sif"
    assert dacbench_keywords(
        None,
        (),
        None,
        container_source=sif,
        container_name=None,
        container_tag="latest",
        bind_str="/a:/b, /c:/d:ro",
        env_str="A=1,B=x=y",
    ) == (str(sif), ["/a:/b", "/c:/d:ro"], {"A": "1", "B": "x=y"})
    ref = dacbench_keywords(
        None,
        (),
        None,
        container_source="oras://reg.example/dac/",
        container_name="bench",
        container_tag="0.5.6",
        bind_str="",
        env_str="",
    )[0]
    assert ref == "oras://reg.example/dac/bench:0.5.6"
    with pytest.raises(ExperimentError, match="not VAR=VALUE"):
        dacbench_keywords(
            None,
            (),
            None,
            container_source=None,
            container_name=None,
            container_tag="latest",
            bind_str="",
            env_str="NOEQUALS",
        )
    with pytest.raises(ExperimentError, match="container_source"):
        dacbench_keywords(
            None,
            (),
            None,
            container_source=None,
            container_name="bench",
            container_tag="latest",
            bind_str="",
            env_str="",
        )


@pytest.mark.slow
def test_a_dacbench_benchmark_object_runs_remotely(dacbench_venv, tmp_path):
    """RemoteRunner(benchmark) with DACBench's own object: its changes cross as strict JSON,
    it is built in the server by its whitelisted id, seeded as set_seed() said."""
    code = textwrap.dedent("""
        import json, warnings
        warnings.simplefilter("ignore")
        from dacbench.agents import RandomAgent
        from dacbench.benchmarks import LubyBenchmark
        from shmbench.container import RemoteRunner
        from shmbench.logs import read_log
        b = LubyBenchmark(); b.set_seed(42); b.config.cutoff = 20
        with RemoteRunner(b, runtime="process", log_dir="logs") as runner:
            agent = RandomAgent(runner.get_environment())
            result = runner.run(agent, 3)
        log = read_log(result.log_path)
        print("RESULT", json.dumps({"episodes": len(result.episodes), **log.header["benchmark"]}))
        try:
            RemoteRunner(b, runtime="process", socket_id="abc")
        except Exception as exc:
            print("REFUSED", type(exc).__name__, exc)
    """)
    out = run_in(dacbench_venv, code, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    import json

    got = json.loads(line[7:])
    assert got["episodes"] == 3 and got["benchmark"] == "dacbench/Luby"
    assert got["config"] == {"cutoff": 20} and got["seed"] == 42
    assert "REFUSED ExperimentError socket_id=" in out.stdout


@pytest.fixture(scope="session")
def dacbench_sif(shmbench_wheel: Path) -> Path:
    from shmbench.images.build import build_cached

    return build_cached(RECIPES / "dacbench.def", build_args={"wheel": str(shmbench_wheel)})


@pytest.mark.slow
def test_dacbenchs_container_example_runs_with_only_its_imports_changed(
    dacbench_venv, dacbench_example, dacbench_sif, tmp_path
):
    original = "from dacbench.container.remote_runner import RemoteRunner"
    assert original in dacbench_example
    example = dacbench_example.replace(original, "from shmbench.container import RemoteRunner")
    changed = [a for a, b in zip(dacbench_example.splitlines(), example.splitlines()) if a != b]
    assert changed == [original]  # one import line, nothing else
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "container.py").write_text(example)
    os.symlink(dacbench_sif, tmp_path / "dacbench.sif")
    out = subprocess.run(
        [str(dacbench_venv), "-W", "ignore", "examples/container.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (log,) = (tmp_path / "shmbench_logs").glob("*.jsonl")
    from shmbench.logs import read_log

    run = read_log(log)
    assert run.header["benchmark"]["benchmark"] == "dacbench/FunctionApproximation"
    assert run.header["benchmark"]["seed"] == 42
    assert run.header["runtime"]["image_used"] is True
    assert len({row["episode"] for row in run.rows}) == 10
