"""The shmbench command line, run as a real subprocess."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from run_helpers import shmbench

from shmbench.transport.session import channel_base


def test_doctor_reports_runtimes_channels_and_caches(tmp_path):
    out = shmbench("doctor", env={"SHMBENCH_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in (
        "runtimes:",
        "apptainer",
        "bwrap",
        "process",
        "runtime='auto' picks:",
        f"sessions (host locks, server logs; never visible to a server): {channel_base()}",
        "limits (limits= on make/make_vec/RemoteRunner, --limit on shmbench run)",
        "free of",
        f"cache root: {tmp_path / 'cache'}",
        "environment:",
        f"SHMBENCH_CACHE_DIR         {tmp_path / 'cache'}",  # its effective value
    ):
        assert needle in text, needle
    # every runtime line says ok or no, and why
    lines = [ln for ln in text.splitlines() if ln.strip().startswith(("ok ", "no "))]
    assert len(lines) == 3 and all(len(ln.split(None, 2)) == 3 for ln in lines)
    assert "no  apptainer" in text or "ok  apptainer" in text
    # every limit says how it binds here
    from shmbench.runtimes.limits import enforcement

    for name, how in enforcement().items():
        assert f"  {name:7s} {how}" in text, name


def test_gc_removes_sessions_whose_host_died_and_keeps_live_ones():
    # a host that creates a session and dies without cleaning up (kill -9 of itself)
    script = textwrap.dedent("""
        import os, signal
        from shmbench.transport.session import Session
        s = Session()
        (s.path / "w0.chan").write_bytes(b"x")
        print(s.path, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    dead = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    stale = Path(dead.stdout.strip())
    assert stale.is_dir()
    from shmbench.transport.session import Session

    with Session() as live:
        out = shmbench("gc")
        assert out.returncode == 0, out.stderr
        assert f"removed {stale}" in out.stdout
        assert not stale.exists()
        assert live.path.exists(), "a live session must survive gc"


def test_build_refuses_other_bootstrap_agents_without_apptainer(tmp_path):
    from shmbench.runtimes.apptainer import find_binary as find_apptainer

    if find_apptainer() is not None:
        pytest.skip("Apptainer is installed here: it builds every bootstrap agent")
    recipe = tmp_path / "docker.def"
    recipe.write_text("Bootstrap: docker\nFrom: python:3.11-slim\n\n%post\n    mkdir -p /shmbench\n")
    out = shmbench("build", str(recipe), "-o", str(tmp_path / "x.sif"))
    assert out.returncode == 1
    assert "docker" in out.stderr and "Apptainer" in out.stderr
    assert not (tmp_path / "x.sif").exists()


def test_experiments_lists_the_shipped_record():
    out = shmbench("experiments", "-v")
    assert out.returncode == 0, out.stderr
    assert "exp:0.01" in out.stdout and "shmbench/Sigmoid-v0" in out.stdout and "sha256:" in out.stdout


def test_pull_and_images_through_the_cache(tmp_path):
    image = tmp_path / "tiny.sif"
    image.write_bytes(b"not really a SIF, but pull does not care" * 100)
    digest = "sha256:" + hashlib.sha256(image.read_bytes()).hexdigest()
    env = {"SHMBENCH_CACHE_DIR": str(tmp_path / "cache")}
    out = shmbench("pull", image.as_uri(), "--digest", digest, env=env)
    assert out.returncode == 0, out.stderr
    cached = Path(out.stdout.strip())
    assert cached.read_bytes() == image.read_bytes() and cached != image
    listing = shmbench("images", env=env)
    assert digest in listing.stdout and "1 image(s)" in listing.stdout
    wrong = shmbench("pull", image.as_uri(), "--digest", "sha256:" + "0" * 64, env=env)
    assert wrong.returncode == 1 and "sha256:" + "0" * 64 in wrong.stderr
    offline = shmbench(
        "pull", (tmp_path / "absent.sif").as_uri(), "--digest", "sha256:" + "1" * 64, "--offline", env=env
    )
    assert offline.returncode == 1


def test_demo_steps_an_env_and_compares_it_with_native():
    out = shmbench("demo", "--runtime", "process", "--check", "300", "--steps", "300")
    assert out.returncode == 0, out.stderr
    assert "300 steps compared with the native env: identical" in out.stdout
    assert "median step: native" in out.stdout and "closed" in out.stdout


def test_errors_are_one_line_not_a_traceback():
    out = shmbench("pull", "exp:does-not-exist")
    assert out.returncode == 1
    assert out.stderr.startswith("shmbench: ") and "Traceback" not in out.stderr


def _commands():
    from shmbench.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return list(sub.choices.items())


@pytest.mark.parametrize("name,parser", _commands(), ids=[n for n, _ in _commands()])
def test_every_command_explains_itself(name, parser):
    """--help: a description, every option's meaning, and examples that name the command."""
    assert parser.description and len(parser.description) > 20, name
    assert parser.epilog.startswith("examples:\n"), name
    assert f"shmbench {name}" in parser.epilog
    for action in parser._actions:
        if action.dest != "help":
            assert action.help, f"shmbench {name}: {action.option_strings or action.dest} has no help text"
    text = parser.format_help()
    assert "``" not in text  # no reStructuredText in a terminal


def test_top_level_help_reads_as_a_sentence_not_rst():
    out = shmbench("--help")
    assert out.returncode == 0
    assert "``" not in out.stdout and "rootless containers" in out.stdout
    assert "benchmarks" in out.stdout and "COMMAND --help" in out.stdout


def test_the_cli_reference_is_current():
    from shmbench.cli.reference import render

    doc = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    assert doc.read_text() == render(), "docs/cli.md drifted: python -m shmbench.cli.reference > docs/cli.md"


def test_benchmarks_lists_every_id_a_run_accepts():
    from shmbench.benchmarks import DACBENCH_IDS, SHMBENCH_IDS

    out = shmbench("benchmarks")
    assert out.returncode == 0, out.stderr
    for env_id in [*SHMBENCH_IDS, *DACBENCH_IDS]:
        assert env_id in out.stdout
    assert "Predict the Luby sequence" in out.stdout


def test_the_readme_documents_every_environment_variable():
    from shmbench.cli.system import ENVIRONMENT

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name, _ in ENVIRONMENT:
        assert f"| `{name}` |" in readme, name


def test_images_prune_removes_derived_entries_but_not_pulled_or_running_ones(tmp_path):
    cache = tmp_path / "cache"
    unpacked, built, images = cache / "unpacked", cache / "built", cache / "images"
    for tree in ("a" * 64, "b" * 64):
        (unpacked / tree / "usr" / "lib").mkdir(parents=True)
        (unpacked / tree / "usr" / "lib" / "x.so").write_bytes(b"x" * 1000)
        (unpacked / tree / "usr").chmod(0o555)  # read-only, as unpacked trees can be
    (built).mkdir()
    (built / "k1.sif").write_bytes(b"s" * 5000)
    images.mkdir()
    pulled = images / ("sha256-" + "c" * 64)
    pulled.write_bytes(b"pinned")
    busy = unpacked / ("b" * 64)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(busy)])
    try:
        out = shmbench("images", "--prune", env={"SHMBENCH_CACHE_DIR": str(cache)})
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 0, out.stderr
    assert not (unpacked / ("a" * 64)).exists() and not (built / "k1.sif").exists()
    assert busy.is_dir() and pulled.read_bytes() == b"pinned"  # a running sandbox's tree, a pull
    assert "pruned 2 unpacked tree(s) and built image(s)" in out.stdout
    assert not [p for p in unpacked.iterdir() if p.name.startswith(".pruning")]


def test_demo_times_an_env_only_its_server_can_build():
    """``module:Class`` ids are built by the server; the host's gymnasium.make cannot build
    an unregistered class (nor a module only the container has): the demo says so and times
    the server alone instead of crashing."""
    tests = str(Path(__file__).resolve().parent)
    out = shmbench(
        "demo",
        "--env",
        "envs:InfoEnv",
        "--runtime",
        "process",
        "--check",
        "50",
        "--steps",
        "200",
        env={"PYTHONPATH": tests + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    assert out.returncode == 0, out.stderr
    assert "the host cannot build envs:InfoEnv" in out.stdout and "no native reference" in out.stdout
    assert "median step: shmbench" in out.stdout and "Traceback" not in out.stderr


def test_inspect_shows_the_sif_and_says_when_nothing_runs_in_it(small_sif):
    """small_sif: a real SIF (siftool, squashfs) with a definition file and no Python."""
    out = shmbench("inspect", str(small_sif), "--runtime", "bwrap", timeout=180)
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout
    assert f"{small_sif}: SIF 01, amd64" in text and "digest sha256:" in text
    assert "deffile" in text and "partition" in text
    assert "definition file:\n    Bootstrap: scratch" in text
    assert "inside: no server could run in it (" in text and "Traceback" not in out.stderr
    missing = shmbench("inspect", str(small_sif) + ".nope")
    assert missing.returncode == 2 and missing.stderr.startswith("shmbench inspect: error: no image at")


@pytest.mark.slow
def test_inspect_reports_what_runs_inside_a_real_image(light_sif):
    out = shmbench("inspect", str(light_sif), "--runtime", "bwrap", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "inside (via the bwrap runtime): python 3.11" in out.stdout
    assert "shmbench 0.1.0 (the host's, serving the image)" in out.stdout  # light.def holds none
    assert "  manifest:\n    recipe light.def (digest " in out.stdout
    assert "python 3.11, shmbench inside: none" in out.stdout and "numpy 2.2.6" in out.stdout
    assert "(--packages lists them)" in out.stdout
    listed = shmbench("inspect", str(light_sif), "--runtime", "bwrap", "--packages", timeout=300)
    assert "    libc6:amd64 2." in listed.stdout


def test_shell_runs_in_the_sandbox_a_server_would_get():
    from conftest import runtime_kwargs

    runtime_kwargs("bwrap")  # skips, with the reason, where bwrap cannot run
    out = shmbench("shell", "--runtime", "bwrap", "-c", "echo in $(hostname); touch /usr/x 2>/dev/null || echo ro")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["in", "shmbench", "ro"]  # its hostname, a read-only root
    failed = shmbench("shell", "--runtime", "bwrap", "-c", "exit 7")
    assert failed.returncode == 7
    refused = shmbench("shell", "--runtime", "process")
    assert refused.returncode == 2 and "no sandbox to open a shell in" in refused.stderr


@pytest.mark.slow
def test_shell_in_a_real_image(light_sif):
    out = shmbench(
        "shell", str(light_sif), "--runtime", "bwrap", "-c", "python3 -c 'import numpy; print(numpy.__version__)'"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(("1.", "2."))


def test_inspect_shows_an_images_words_without_terminal_escapes(tmp_path):
    """A hostile image's definition file may hold escape sequences (a terminal would obey
    them): inspect prints them stripped."""
    from conftest_images import make_sif, make_squashfs, make_tree

    squash = make_squashfs(make_tree(tmp_path / "tree"), tmp_path / "root.squashfs")
    sif = make_sif(
        tmp_path / "evil.sif", squash, deffile="Bootstrap: scratch\n# \x1b]0;owned\x07title \x1b[2Jcleared\n"
    )
    out = shmbench("inspect", str(sif), "--runtime", "bwrap", timeout=180)
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout
    assert "    Bootstrap: scratch\n" in out.stdout and "cleared" in out.stdout
