"""shmbench.runtimes.apptainer: versions, the exec argv, the probe, and the runtime's lifecycle.

Apptainer and Singularity cannot be installed where these tests were written, so nothing
here shows that Apptainer accepts what shmbench hands it. What is tested:

* the version parser, against sample outputs in tests/data/apptainer (each file's format and
  its source are listed in that directory's README);
* the argv the runtime builds, flag by flag against the documented CLI, and read back by
  :func:`fake_apptainer.parse_exec_argv`, a model of how Apptainer's option parser
  (cobra/pflag) splits ``--bind`` and ``--env`` values;
* the probe and the runtime's lifecycle against ``fake_apptainer`` (tests/fake_apptainer.py),
  a test double installed as ``apptainer`` on PATH. It is never Apptainer: passing these
  tests counts for nothing about Apptainer support.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import gymnasium
import pytest
from fake_apptainer import FakeApptainer, install, parse_exec_argv
from helpers import assert_same

import shmbench
from shmbench.errors import ImageError, PeerDied, RuntimeUnavailable
from shmbench.runtimes import apptainer as app
from shmbench.runtimes.apptainer import ApptainerRuntime, parse_version
from shmbench.runtimes.apptainer_tools import gc_instances, list_instances
from shmbench.runtimes.base import Launch, image_server_command, package_dir, server_command

DATA = Path(__file__).resolve().parent / "data" / "apptainer"


# ------------------------------------------------------------------------------ versions

VERSIONS = json.loads((DATA / "versions.json").read_text())


@pytest.mark.parametrize("row", VERSIONS, ids=[r["stdout"].strip() or "empty" for r in VERSIONS])
def test_parse_version_samples(row: dict) -> None:
    v = parse_version(row["stdout"], row["binary"])
    if row["flavour"] is None:
        assert v is None
        return
    assert v is not None
    assert v.flavour == row["flavour"]
    assert v.release == (tuple(row["release"]) if row["release"] else None)
    assert v.text == row["stdout"].strip()
    ok, why = v.supported()
    assert ok is row["supported"], why
    if not ok:
        assert "too old" in why and ("3.7.0" in why or "1.0.0" in why)


def test_version_minimums_follow_the_flags_used() -> None:
    # --env: Singularity 3.6.0; --contain without fatal /etc/hosts binds: 3.7.0
    assert app.MIN_SINGULARITY == (3, 7, 0)
    assert app.MIN_APPTAINER == (1, 0, 0)


def launch_for(tmp_path: Path, name: str = "w0") -> Launch:
    session = tmp_path / "sessions" / "123-deadbeef"
    session.mkdir(parents=True, exist_ok=True)
    # the argv tests start nothing: the descriptors are numbers the argv must carry
    return Launch(
        name=f"worker {name} (apptainer)",
        fds={"SHMBENCH_CHANNEL_FD": 7, "SHMBENCH_SLAB_FD": 8},
        log_fd=-1,
        log_path=session / f"{name}.log",
    )


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "sandbox"
    (root / "shmbench").mkdir(parents=True)
    return root


def test_typical_argv(tmp_path: Path, sandbox: Path) -> None:
    rt = ApptainerRuntime(image=sandbox, binary="/opt/apptainer/bin/apptainer", serve_from="image")
    launch = launch_for(tmp_path)
    argv, env = rt.command(launch)
    assert argv == [
        "/opt/apptainer/bin/apptainer",
        "exec",
        "--containall",
        "--cleanenv",
        "--pwd",
        "/tmp",
        "--env",
        "SHMBENCH_CHANNEL_FD=7",
        "--env",
        "SHMBENCH_SLAB_FD=8",
        str(sandbox),
        "python3",
        "-I",
        "-c",
        image_server_command("python3")[-1],
    ]
    parsed = parse_exec_argv(argv)
    assert parsed["flags"] == ["--containall", "--cleanenv"]
    assert parsed["binds"] == []  # nothing of the host is writable: the channel is an inherited fd
    assert parsed["env"] == {"SHMBENCH_CHANNEL_FD": "7", "SHMBENCH_SLAB_FD": "8"}
    assert parsed["image"] == str(sandbox)
    assert parsed["command"] == image_server_command("python3", "-I")
    assert env["PATH"] == os.environ["PATH"]  # apptainer itself: the host's environment


def test_the_host_serves_the_image_by_default(tmp_path: Path, sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve_from="host": the host's shmbench (and its pure-Python fallbacks) bound
    read-only at /.shmbench-host, run by the image's python3."""
    import msgpack

    monkeypatch.delenv("SHMBENCH_SERVE_FROM", raising=False)
    parsed = parse_exec_argv(ApptainerRuntime(image=sandbox, binary="apptainer").command(launch_for(tmp_path))[0])
    assert parsed["binds"] == [
        (package_dir(), "/.shmbench-host/shmbench", "ro"),
        (os.path.dirname(msgpack.__file__), "/.shmbench-host/fallbacks/msgpack", "ro"),
    ]
    assert parsed["command"] == server_command(
        "python3", "-I", shmbench_dir="/.shmbench-host/shmbench", fallbacks="/.shmbench-host/fallbacks"
    )
    monkeypatch.setenv("SHMBENCH_SERVE_FROM", "image")
    own = parse_exec_argv(ApptainerRuntime(image=sandbox, binary="apptainer").command(launch_for(tmp_path))[0])
    assert own["binds"] == [] and own["command"] == image_server_command("python3", "-I")
    monkeypatch.setenv("SHMBENCH_SERVE_FROM", "guest")
    with pytest.raises(ValueError, match="serve_from must be 'host' or 'image', not 'guest'"):
        ApptainerRuntime(image=sandbox, binary="apptainer")


def test_full_argv_options(tmp_path: Path, sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("APPTAINERENV_SHMBENCH_CHANNEL", "/elsewhere")
    monkeypatch.setenv("APPTAINERENV_SHMBENCH_CHANNEL_FD", "99")
    monkeypatch.setenv("APPTAINER_CACHEDIR", "/scratch/cache")
    rt = ApptainerRuntime(
        image=str(sandbox),
        binds=[f"{data}:/data:ro", str(data)],
        environment={
            "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": "0,1",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
            "SHMBENCH_CHANNEL": "/ignored",
        },
        nv=True,
        extra_args=["--writable-tmpfs"],
        python="/opt/py/bin/python",
        binary="apptainer",
        serve_from="image",
    )
    launch = launch_for(tmp_path)
    launch.environment["RUN"] = "7"
    argv, env = rt.command(launch)
    parsed = parse_exec_argv(argv)
    assert parsed["flags"] == ["--containall", "--cleanenv", "--nv", "--writable-tmpfs"]
    assert parsed["pwd"] == "/tmp"
    assert parsed["binds"] == [
        (str(data), "/data", "ro"),
        (str(data), str(data), "rw"),
    ]
    # every value arrives literally; the descriptors are the runtime's, SHMBENCH_CHANNEL is dropped
    assert parsed["env"] == {
        "SHMBENCH_CHANNEL_FD": "7",
        "SHMBENCH_SLAB_FD": "8",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "RUN": "7",
    }
    assert parsed["command"] == image_server_command("/opt/py/bin/python", "-I")
    assert argv.index("--nv") < argv.index("--writable-tmpfs") < argv.index(str(sandbox))
    assert "APPTAINERENV_SHMBENCH_CHANNEL" not in env and "APPTAINERENV_SHMBENCH_CHANNEL_FD" not in env
    assert env["APPTAINER_CACHEDIR"] == "/scratch/cache"


@pytest.mark.parametrize(
    "ref", ["docker://python:3.11-slim", "oras://ghcr.io/o/img:1", "library://u/c/img:latest", "shub://u/img"]
)
def test_uri_images_pass_through(tmp_path: Path, ref: str) -> None:
    argv, _ = ApptainerRuntime(image=ref, binary="apptainer").command(launch_for(tmp_path))
    assert parse_exec_argv(argv)["image"] == ref


def test_relative_image_becomes_absolute(tmp_path: Path, sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rt = ApptainerRuntime(image="sandbox", binary="apptainer")
    assert rt.image_ref == str(sandbox) and rt.describe_image() == str(sandbox)


def test_bad_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs an image"):
        ApptainerRuntime(image=None, binary="apptainer")
    with pytest.raises(ImageError, match="does not exist"):
        ApptainerRuntime(image=tmp_path / "missing.sif", binary="apptainer")
    with pytest.raises(ValueError, match="instance"):
        ApptainerRuntime(image="instance://running", binary="apptainer")
    with pytest.raises(ValueError, match="takes docker"):
        ApptainerRuntime(image="ftp://host/img.sif", binary="apptainer")


@pytest.mark.parametrize("value", ["$HOME/x", "`id`", "a\\b", 'say "hi"', "it's", "a\nb", "a=b,c"])
def test_env_values_apptainer_would_mangle_are_refused(sandbox: Path, value: str) -> None:
    with pytest.raises(ValueError, match="apptainer --env"):
        ApptainerRuntime(image=sandbox, environment={"V": value}, binary="apptainer")


def test_env_names_and_launch_env_are_checked(tmp_path: Path, sandbox: Path) -> None:
    with pytest.raises(ValueError, match="not a valid name"):
        ApptainerRuntime(image=sandbox, environment={"A-B": "1"}, binary="apptainer")
    rt = ApptainerRuntime(image=sandbox, binary="apptainer")
    launch = launch_for(tmp_path)
    launch.environment["V"] = "$X"
    with pytest.raises(ValueError, match="apptainer --env"):
        rt.command(launch)


@pytest.mark.parametrize("value", ["plain", "a,b", "a=b", "with space", "ünïcode", ""])
def test_env_values_that_pass_arrive_literally(tmp_path: Path, sandbox: Path, value: str) -> None:
    rt = ApptainerRuntime(image=sandbox, environment={"V": value}, binary="apptainer")
    assert parse_exec_argv(rt.command(launch_for(tmp_path))[0])["env"]["V"] == value


def test_bind_problems(tmp_path: Path, sandbox: Path) -> None:
    (tmp_path / "a,b").mkdir()
    with pytest.raises(ValueError, match="cannot express"):
        ApptainerRuntime(image=sandbox, binds=[f"{tmp_path}/a,b:/x"], binary="apptainer")
    # checked on the host before anything starts, in one line
    with pytest.raises(FileNotFoundError, match=r"^bind source .*/missing does not exist \("):
        ApptainerRuntime(image=sandbox, binds=[f"{tmp_path}/missing:/x"], binary="apptainer")


def test_argument_types(sandbox: Path) -> None:
    with pytest.raises(TypeError, match="sequence"):
        ApptainerRuntime(image=sandbox, extra_args="--nv", binary="apptainer")


def test_no_binary(sandbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(RuntimeUnavailable, match="neither apptainer nor singularity"):
        ApptainerRuntime(image=sandbox)
    assert ApptainerRuntime.probe() == (False, "neither apptainer nor singularity is on PATH")
    assert gc_instances() == []
    with pytest.raises(RuntimeUnavailable):
        list_instances()


# ----------------------------------------------------------------- detection and probe


def test_probe_reports_binary_and_version(fake_apptainer: FakeApptainer) -> None:
    ok, why = ApptainerRuntime.probe()
    assert ok, why
    assert why == f"{fake_apptainer.exe} (apptainer version 1.3.4)"
    assert fake_apptainer.calls() == [["--version"]]


@pytest.mark.parametrize(
    "output, ok, words",
    [
        ("singularity-ce version 3.11.4", True, "singularity-ce version 3.11.4"),
        ("singularity version 3.6.4", False, "too old"),
        ("singularity-ce version a948062", True, "not a release number"),
        ("something else", False, "not an Apptainer or Singularity version"),
    ],
)
def test_probe_judges_the_version(
    fake_apptainer: FakeApptainer, monkeypatch: pytest.MonkeyPatch, output: str, ok: bool, words: str
) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_VERSION", output)
    got, why = ApptainerRuntime.probe()
    assert got is ok and words in why, why


def test_probe_when_version_fails(fake_apptainer: FakeApptainer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_VERSION_FAIL", "1")
    ok, why = ApptainerRuntime.probe()
    assert not ok and "broken installation" in why


def test_apptainer_is_preferred_over_singularity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    singularity = install(bindir, "singularity", tmp_path / "log")
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setenv("FAKE_APPTAINER_VERSION", "singularity-ce version 3.11.4")
    assert app.find_binary() == str(singularity)
    assert ApptainerRuntime.probe() == (True, f"{singularity} (singularity-ce version 3.11.4)")
    apptainer = install(bindir, "apptainer", tmp_path / "log")
    assert app.find_binary() == str(apptainer)


# ---------------------------------------------------------- the lifecycle, through the fake


def test_env_runs_through_the_fake(fake_apptainer: FakeApptainer, sandbox: Path) -> None:
    rt = ApptainerRuntime(image=sandbox, environment={"MARK": "a,b"})
    native = gymnasium.make("CartPole-v1")
    with shmbench.make("CartPole-v1", runtime=rt) as env:
        assert_same(env.reset(seed=3), native.reset(seed=3))
        for a in (0, 1, 1, 0):
            assert_same(env.step(a), native.step(a))
    native.close()
    execs = [c for c in fake_apptainer.calls() if c[:1] == ["exec"]]
    assert len(execs) == 1
    parsed = parse_exec_argv([str(fake_apptainer.exe)] + execs[0])
    assert parsed["env"]["MARK"] == "a,b"
    # the channel and the slab crossed as inherited descriptors; no host directory was
    # bound but the host's shmbench, read-only (the fake reads the server from there)
    assert [dst for _, dst, _ in parsed["binds"]] == ["/.shmbench-host/shmbench", "/.shmbench-host/fallbacks/msgpack"]
    assert {mode for _, _, mode in parsed["binds"]} == {"ro"}
    assert {"SHMBENCH_CHANNEL_FD", "SHMBENCH_SLAB_FD"} <= set(parsed["env"])
    assert parsed["image"] == str(sandbox)


def test_a_failing_start_shows_apptainers_message(
    fake_apptainer: FakeApptainer, sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_FAIL", "1")
    with pytest.raises(PeerDied, match="image format not recognized"):
        shmbench.make("CartPole-v1", runtime=ApptainerRuntime(image=sandbox))


# ------------------------------------------------------------------------------- limits


def test_limits_become_apptainer_flags_when_apptainer_applies_them(
    fake_apptainer: FakeApptainer, tmp_path: Path, sandbox: Path
) -> None:
    rt = ApptainerRuntime(image=sandbox, limits={"memory": "512M", "pids": 64, "cpus": 1.5})
    launch = launch_for(tmp_path)
    plain = parse_exec_argv(rt.command(launch)[0])
    assert "limits" not in plain  # a host cgroup binds it: no flags
    flagged = parse_exec_argv(rt.command(replace(launch, runtime_limits=True))[0])
    assert flagged["limits"] == {"memory": str(512 << 20), "pids-limit": "64", "cpus": "1.5"}
    with pytest.raises(ValueError, match="sessiondir max size"):
        ApptainerRuntime(image=sandbox, limits={"tmp": "1G"})


@pytest.mark.parametrize(
    "version, has_flags",
    [
        ("apptainer version 1.3.4", True),
        ("singularity-ce version 3.9.2", True),
        ("singularity-ce version 3.8.7", False),
    ],
)
def test_which_versions_apply_limits_themselves(
    fake_apptainer: FakeApptainer, monkeypatch: pytest.MonkeyPatch, sandbox: Path, version: str, has_flags: bool
) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_VERSION", version)
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # as root Apptainer can make cgroups
    assert ApptainerRuntime(image=sandbox, limits={"pids": 64}).limits_itself() is has_flags


def test_a_limited_env_runs_through_the_fake_in_a_host_cgroup(fake_apptainer: FakeApptainer, sandbox: Path) -> None:
    from shmbench.runtimes.limits import enforcement

    rt = ApptainerRuntime(image=sandbox, limits={"pids": 64, "memory": "1G"})
    with shmbench.make("CartPole-v1", runtime=rt) as env:
        env.reset(seed=0)
        env.step(0)
    execs = [c for c in fake_apptainer.calls() if c[:1] == ["exec"]]
    parsed = parse_exec_argv([str(fake_apptainer.exe)] + execs[0])
    if enforcement()["pids"].startswith("cgroup"):
        assert "limits" not in parsed  # the guard put apptainer in a cgroup
    else:
        assert ("limits" in parsed) is rt.limits_itself()
