"""shmbench.container.apptainer.

Apptainer and Singularity cannot be installed where these tests were written, so nothing
here shows that Apptainer accepts what shmbench hands it. What is tested:

* the parsers, against sample outputs in tests/data/apptainer (each file's format and
  its source are listed in that directory's README);
* the argv the runtime builds, flag by flag against the documented CLI, and read back by
  :func:`parse_exec_argv`, a model of how Apptainer's option parser (cobra/pflag) splits
  ``--bind`` and ``--env`` values;
* the spython helpers and the runtime's lifecycle against ``fake_apptainer``, a test double
  installed as ``apptainer`` on PATH. It records its argv and answers from the sample files;
  for ``exec`` it runs this host's ``python -I -m shmbench.server`` with ``/shmbench`` mapped
  to the bound session directory, so a real env is stepped through a real channel. It is
  never Apptainer: passing these tests counts for nothing about Apptainer support.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium
import pytest

import shmbench
from conftest_images import make_sif  # noqa: F401  (siftool-made SIF for pull)
from shmbench.channel import HOST_LOCK, Session
from shmbench.container import apptainer as app
from shmbench.container.apptainer import (ApptainerRuntime, Instance, gc_instances, inspect_labels,
                                          instance_name, list_instances, parse_inspect,
                                          parse_instance_list, parse_version, pull,
                                          session_of_instance, stale_instances, stop_instance,
                                          stop_instances)
from shmbench.container.runtime import Launch
from shmbench.errors import ImageError, PeerDied, RuntimeUnavailable
from helpers import assert_same

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


# ----------------------------------------------------------------- the exec argv, parsed

def parse_exec_argv(argv: list[str]) -> dict:
    """Read an ``apptainer exec`` argv the way Apptainer's option parser would.

    Models spf13/pflag: ``--env`` is a string-to-string map (string_to_string.go: with one
    '=' the text, surrounding double quotes trimmed, is the pair; with several it is read as
    one CSV record of pairs); ``--bind`` is a string slice (read as a CSV record, one bind
    per field), each bind ``src[:dst[:opts]]``. Flags must come before the image.
    """
    import csv as _csv

    if argv[1:2] != ["exec"]:
        raise ValueError(f"not an exec: {argv[:2]}")
    booleans = {"--containall", "--cleanenv", "--nv", "--writable-tmpfs", "--no-home"}
    out = {"flags": [], "binds": [], "env": {}, "pwd": None}
    i = 2
    while i < len(argv) and argv[i].startswith("-"):
        flag = argv[i]
        if flag in booleans:
            out["flags"].append(flag)
            i += 1
            continue
        if flag not in ("--bind", "--env", "--pwd") or i + 1 >= len(argv):
            raise ValueError(f"unknown flag: {flag}")
        value = argv[i + 1]
        i += 2
        if flag == "--pwd":
            out["pwd"] = value
        elif flag == "--bind":
            for field in next(_csv.reader([value])):
                parts = field.split(":")
                out["binds"].append((parts[0], parts[1] if len(parts) > 1 else parts[0],
                                     parts[2] if len(parts) > 2 else "rw"))
        else:
            n = value.count("=")
            if n == 0:
                raise ValueError(f"{value} must be formatted as key=value")
            pairs = [value.strip('"')] if n == 1 else next(_csv.reader([value]))
            for pair in pairs:
                key, sep, val = pair.partition("=")
                if not sep:
                    raise ValueError(f"{pair} must be formatted as key=value")
                out["env"][key] = val
    out["image"] = argv[i]
    out["command"] = argv[i + 1:]
    return out


def launch_for(tmp_path: Path, name: str = "w0") -> Launch:
    session = tmp_path / "sessions" / "123-deadbeef"
    session.mkdir(parents=True, exist_ok=True)
    return Launch(session_dir=session, channel_name=f"{name}.chan",
                  log_path=session / f"{name}.log", name=f"worker {name} (apptainer)")


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "sandbox"
    (root / "shmbench").mkdir(parents=True)
    return root


def test_typical_argv(tmp_path: Path, sandbox: Path) -> None:
    rt = ApptainerRuntime(image=sandbox, binary="/opt/apptainer/bin/apptainer")
    launch = launch_for(tmp_path)
    argv, env = rt.command(launch)
    assert argv == [
        "/opt/apptainer/bin/apptainer", "exec", "--containall", "--cleanenv", "--pwd", "/tmp",
        "--bind", f"{launch.session_dir}:/shmbench",
        "--env", "SHMBENCH_CHANNEL=/shmbench/w0.chan",
        str(sandbox), "python3", "-I", "-m", "shmbench.server",
    ]
    parsed = parse_exec_argv(argv)
    assert parsed["flags"] == ["--containall", "--cleanenv"]
    assert parsed["binds"] == [(str(launch.session_dir), "/shmbench", "rw")]
    assert parsed["env"] == {"SHMBENCH_CHANNEL": "/shmbench/w0.chan"}
    assert parsed["image"] == str(sandbox)
    assert parsed["command"] == ["python3", "-I", "-m", "shmbench.server"]
    assert env["PATH"] == os.environ["PATH"]        # apptainer itself: the host's environment


def test_full_argv_options(tmp_path: Path, sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("APPTAINERENV_SHMBENCH_CHANNEL", "/elsewhere")
    monkeypatch.setenv("APPTAINER_CACHEDIR", "/scratch/cache")
    rt = ApptainerRuntime(image=str(sandbox), binds=[f"{data}:/data:ro", str(data)],
                          environment={"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "0,1",
                                       "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
                                       "SHMBENCH_CHANNEL": "/ignored"},
                          nv=True, extra_args=["--writable-tmpfs"], python="/opt/py/bin/python",
                          binary="apptainer")
    launch = launch_for(tmp_path)
    launch.environment["RUN"] = "7"
    argv, env = rt.command(launch)
    parsed = parse_exec_argv(argv)
    assert parsed["flags"] == ["--containall", "--cleanenv", "--nv", "--writable-tmpfs"]
    assert parsed["pwd"] == "/tmp"
    assert parsed["binds"] == [(str(launch.session_dir), "/shmbench", "rw"),
                               (str(data), "/data", "ro"), (str(data), str(data), "rw")]
    # every value arrives literally, and SHMBENCH_CHANNEL is the runtime's
    assert parsed["env"] == {"SHMBENCH_CHANNEL": "/shmbench/w0.chan", "OMP_NUM_THREADS": "1",
                             "CUDA_VISIBLE_DEVICES": "0,1",
                             "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "RUN": "7"}
    assert parsed["command"] == ["/opt/py/bin/python", "-I", "-m", "shmbench.server"]
    assert argv.index("--nv") < argv.index("--writable-tmpfs") < argv.index(str(sandbox))
    assert "APPTAINERENV_SHMBENCH_CHANNEL" not in env
    assert env["APPTAINER_CACHEDIR"] == "/scratch/cache"


@pytest.mark.parametrize("ref", ["docker://python:3.11-slim", "oras://ghcr.io/o/img:1",
                                 "library://u/c/img:latest", "shub://u/img"])
def test_uri_images_pass_through(tmp_path: Path, ref: str) -> None:
    argv, _ = ApptainerRuntime(image=ref, binary="apptainer").command(launch_for(tmp_path))
    assert parse_exec_argv(argv)["image"] == ref


def test_relative_image_becomes_absolute(tmp_path: Path, sandbox: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
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


@pytest.mark.parametrize("value", ["$HOME/x", "`id`", "a\\b", 'say "hi"', "it's", "a\nb",
                                   "a=b,c"])
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
    with pytest.raises(ValueError, match="cannot express"):
        ApptainerRuntime(image=sandbox, binds=[f"{tmp_path}/a,b:/x"], binary="apptainer")
    with pytest.raises(ValueError, match="reserved"):
        ApptainerRuntime(image=sandbox, binds=[f"{tmp_path}:/shmbench"], binary="apptainer")
    rt = ApptainerRuntime(image=sandbox, binds=[f"{tmp_path}/missing:/x"], binary="apptainer")
    with pytest.raises(FileNotFoundError, match="bind source"):
        rt.command(launch_for(tmp_path))
    odd = tmp_path / "odd,dir"
    odd.mkdir()
    launch = Launch(session_dir=odd, channel_name="w0.chan", log_path=odd / "w0.log", name="w0")
    with pytest.raises(ValueError, match="cannot express"):
        ApptainerRuntime(image=sandbox, binary="apptainer").command(launch)


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


# --------------------------------------------------------------------- fake_apptainer

FAKE_APPTAINER = '''\
#!{python}
# fake_apptainer: a TEST DOUBLE standing in for the apptainer binary; never Apptainer.
# It records its argv, answers from sample files, and for `exec` runs this host's
# shmbench server with /shmbench mapped to the bound session directory.
import csv, json, os, shutil, sys
args = sys.argv[1:]
env = os.environ
with open({log!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv}}) + "\\n")

def fatal(msg, code=255):
    print("FATAL:   " + msg, file=sys.stderr)
    sys.exit(code)

def sample(var, default=""):
    return open(env[var]).read() if env.get(var) else default

{parser}

if args[:1] == ["--version"]:
    if env.get("FAKE_APPTAINER_VERSION_FAIL"):
        fatal("broken installation", 1)
    print(env.get("FAKE_APPTAINER_VERSION", "apptainer version 1.3.4"))
elif args[:3] == ["instance", "list", "--json"]:
    if env.get("FAKE_APPTAINER_FAIL"):
        fatal("could not retrieve instance list: permission denied")
    sys.stdout.write(sample("FAKE_APPTAINER_INSTANCES", '{{\\n\\t"instances": []\\n}}\\n'))
elif args[:2] == ["instance", "stop"]:
    name = args[-1]
    if name in env.get("FAKE_APPTAINER_GONE", "").split():
        fatal("no instance found")
    if name in env.get("FAKE_APPTAINER_STOP_FAIL", "").split():
        fatal("could not stop " + name + ": operation not permitted")
    print("INFO:    Stopping " + name + " instance of /x.sif (PID=1)", file=sys.stderr)
elif args[:1] == ["inspect"]:
    if env.get("FAKE_APPTAINER_FAIL"):
        fatal("could not open image " + args[-1] + ": failed to retrieve path")
    sys.stdout.write(sample("FAKE_APPTAINER_INSPECT"))
elif args[:1] == ["pull"]:
    name = args[args.index("--name") + 1]
    print("INFO:    Converting OCI blobs to SIF format", file=sys.stderr)
    if env.get("FAKE_APPTAINER_FAIL"):
        fatal("While making image from oci registry: manifest unknown")
    if env.get("FAKE_APPTAINER_PULL_GARBAGE"):
        open(name, "w").write("not a sif")
    else:
        shutil.copy(env["FAKE_APPTAINER_SIF"], name)
    print("INFO:    Creating SIF file...", file=sys.stderr)
elif args[:1] == ["exec"]:
    if env.get("FAKE_APPTAINER_FAIL"):
        fatal("could not open image " + args[-5] + ": image format not recognized")
    try:
        parsed = parse_exec_argv([sys.argv[0]] + args)
    except ValueError as exc:
        print("Error: " + str(exc), file=sys.stderr)
        sys.exit(255)
    binds = {{dst: src for src, dst, mode in parsed["binds"]}}
    inner = dict(parsed["env"])
    channel = inner["SHMBENCH_CHANNEL"]
    inner["SHMBENCH_CHANNEL"] = binds["/shmbench"] + channel[len("/shmbench"):]
    inner.update(PATH=env["PATH"], HOME=env.get("HOME", "/"), LANG="C.UTF-8")
    command = parsed["command"]
    if command[0] == "python3":
        command[0] = sys.executable
    os.execve(command[0], command, inner)
else:
    fatal("fake_apptainer does not know " + " ".join(args), 1)
'''


def _install(bindir: Path, name: str, log: Path) -> Path:
    parser = textwrap.dedent(inspect.getsource(parse_exec_argv))
    exe = bindir / name
    exe.write_text(FAKE_APPTAINER.format(python=sys.executable, log=str(log), parser=parser))
    exe.chmod(0o755)
    return exe


class FakeApptainer:
    """The installed test double and its call log."""

    def __init__(self, exe: Path, log: Path) -> None:
        self.exe = exe
        self.log = log

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line)["argv"][1:] for line in self.log.read_text().splitlines()]


@pytest.fixture
def fake_apptainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeApptainer:
    """fake_apptainer (a test double) first on PATH as ``apptainer``."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    log = tmp_path / "fake_apptainer.jsonl"
    exe = _install(bindir, "apptainer", log)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    for var in [v for v in os.environ if v.startswith("FAKE_APPTAINER")]:
        monkeypatch.delenv(var)
    return FakeApptainer(exe, log)


# ----------------------------------------------------------------- detection and probe

def test_probe_reports_binary_and_version(fake_apptainer: FakeApptainer) -> None:
    ok, why = ApptainerRuntime.probe()
    assert ok, why
    assert why == f"{fake_apptainer.exe} (apptainer version 1.3.4)"
    assert fake_apptainer.calls() == [["--version"]]


@pytest.mark.parametrize("output, ok, words", [
    ("singularity-ce version 3.11.4", True, "singularity-ce version 3.11.4"),
    ("singularity version 3.6.4", False, "too old"),
    ("singularity-ce version a948062", True, "not a release number"),
    ("something else", False, "not an Apptainer or Singularity version"),
])
def test_probe_judges_the_version(fake_apptainer: FakeApptainer, monkeypatch: pytest.MonkeyPatch,
                                  output: str, ok: bool, words: str) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_VERSION", output)
    got, why = ApptainerRuntime.probe()
    assert got is ok and words in why, why


def test_probe_when_version_fails(fake_apptainer: FakeApptainer,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_VERSION_FAIL", "1")
    ok, why = ApptainerRuntime.probe()
    assert not ok and "broken installation" in why


def test_apptainer_is_preferred_over_singularity(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    singularity = _install(bindir, "singularity", tmp_path / "log")
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setenv("FAKE_APPTAINER_VERSION", "singularity-ce version 3.11.4")
    assert app.find_binary() == str(singularity)
    assert ApptainerRuntime.probe() == (True, f"{singularity} (singularity-ce version 3.11.4)")
    apptainer = _install(bindir, "apptainer", tmp_path / "log")
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
    assert parsed["binds"][0][1] == "/shmbench"
    assert parsed["image"] == str(sandbox)


def test_a_failing_start_shows_apptainers_message(fake_apptainer: FakeApptainer, sandbox: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_FAIL", "1")
    with pytest.raises(PeerDied, match="image format not recognized"):
        shmbench.make("CartPole-v1", runtime=ApptainerRuntime(image=sandbox))


# ------------------------------------------------------------------------------ inspect

LABELS = json.loads((DATA / "inspect.json").read_text())["data"]["attributes"]["labels"]


@pytest.mark.parametrize("name, expect", [
    ("inspect.json", LABELS),
    ("inspect-3.0.json", {"org.label-schema.schema-version": "1.0",
                          "org.label-schema.build-date": "Mon,_01_Oct_2018_12:00:00_+0000",
                          "org.label-schema.usage.singularity.version": "3.0.0"}),
    ("inspect-labels-string.json", {"org.label-schema.schema-version": "1.0",
                                    "Author": "someone@example.org"}),
])
def test_parse_inspect_samples(name: str, expect: dict) -> None:
    assert parse_inspect((DATA / name).read_text()) == expect


@pytest.mark.parametrize("text", ['[]', 'WARNING: x', '{"data": {}}', '{"attributes": {"labels": "{oops"}}',
                                  '{"attributes": {"labels": [1]}}'])
def test_parse_inspect_rejects(text: str) -> None:
    with pytest.raises(ImageError):
        parse_inspect(text)


def test_inspect_labels_through_spython(fake_apptainer: FakeApptainer, sandbox: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_INSPECT", str(DATA / "inspect.json"))
    assert inspect_labels(sandbox) == LABELS
    call = fake_apptainer.calls()[-1]
    assert call[0] == "inspect" and call[-2:] == ["--json", str(sandbox)] and "-l" in call


def test_inspect_failure_carries_the_message(fake_apptainer: FakeApptainer, sandbox: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_FAIL", "1")
    with pytest.raises(ImageError, match="failed to retrieve path"):
        inspect_labels(sandbox)


def test_inspect_garbage_output(fake_apptainer: FakeApptainer, sandbox: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("WARNING: not json\n")
    monkeypatch.setenv("FAKE_APPTAINER_INSPECT", str(bad))
    with pytest.raises(ImageError, match="unreadable output"):
        inspect_labels(sandbox)


def test_spython_sys_exit_becomes_an_error(fake_apptainer: FakeApptainer) -> None:
    # spython itself calls sys.exit ("Please provide an image to inspect.") for an empty
    # image; that must surface as an ImageError, not end the interpreter
    with pytest.raises(ImageError, match="Please provide an image"):
        inspect_labels("")


# ---------------------------------------------------------------------------------- pull

@pytest.fixture
def prepared_sif(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    sif = make_sif(tmp_path / "prepared.sif", None)
    monkeypatch.setenv("FAKE_APPTAINER_SIF", str(sif))
    return sif


def test_pull_writes_the_image_atomically(fake_apptainer: FakeApptainer, prepared_sif: Path,
                                          tmp_path: Path) -> None:
    dest = tmp_path / "images" / "py.sif"
    assert pull("docker://python:3.11-slim", dest) == dest
    assert dest.read_bytes() == prepared_sif.read_bytes()
    (call,) = fake_apptainer.calls()
    assert call[0] == "pull" and call[-1] == "docker://python:3.11-slim"
    part = Path(call[call.index("--name") + 1])
    assert part.parent == dest.parent and part.name.startswith(".py.sif.") and not part.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["py.sif"]
    with pytest.raises(ImageError, match="exists"):
        pull("docker://python:3.11-slim", dest)
    pull("docker://python:3.11-slim", dest, force=True)


def test_pull_failure(fake_apptainer: FakeApptainer, prepared_sif: Path, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_FAIL", "1")
    dest = tmp_path / "out" / "x.sif"
    with pytest.raises(ImageError, match="manifest unknown"):
        pull("oras://ghcr.io/o/missing:1", dest)
    assert list(dest.parent.iterdir()) == []
    capfd.readouterr()


def test_pull_rejects_what_is_not_a_sif(fake_apptainer: FakeApptainer, prepared_sif: Path,
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_PULL_GARBAGE", "1")
    dest = tmp_path / "out" / "x.sif"
    with pytest.raises(ImageError, match="did not write a SIF image.*truncated"):
        pull("docker://x", dest)
    assert list(dest.parent.iterdir()) == []


def test_pull_rejects_unknown_references(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot pull"):
        pull("/local/file.sif", tmp_path / "x.sif", binary="apptainer")


# ----------------------------------------------------------------------------- instances

def test_parse_instance_list_samples() -> None:
    got = parse_instance_list((DATA / "instance-list.json").read_text())
    assert got == [
        Instance("shmbench-4242-0a1b2c3d-w0", 1838401, "/scratch/u/images/cartpole.sif", "",
                 "/home/u/.apptainer/instances/logs/node017/u/shmbench-4242-0a1b2c3d-w0.err",
                 "/home/u/.apptainer/instances/logs/node017/u/shmbench-4242-0a1b2c3d-w0.out"),
        Instance("postgres", 1838502, "/home/u/containers/postgres_16.sif", "10.22.0.4",
                 "/home/u/.apptainer/instances/logs/node017/u/postgres.err",
                 "/home/u/.apptainer/instances/logs/node017/u/postgres.out"),
    ]
    assert parse_instance_list((DATA / "instance-list-empty.json").read_text()) == []
    assert parse_instance_list("") == []


@pytest.mark.parametrize("text", ["not json", '{"instances": {}}', '{"instances": [{"pid": 1}]}'])
def test_parse_instance_list_rejects(text: str) -> None:
    with pytest.raises(RuntimeUnavailable):
        parse_instance_list(text)


def test_list_and_stop_through_spython(fake_apptainer: FakeApptainer,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_INSTANCES", str(DATA / "instance-list.json"))
    assert [i.name for i in list_instances()] == ["shmbench-4242-0a1b2c3d-w0", "postgres"]
    stop_instance("postgres", timeout=3)
    assert fake_apptainer.calls() == [["instance", "list", "--json"],
                                      ["instance", "stop", "-t", "3", "postgres"]]
    with pytest.raises(ValueError):
        stop_instance("bad name; rm -rf /")


def test_list_failure_is_an_error_not_an_empty_list(fake_apptainer: FakeApptainer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_FAIL", "1")
    with pytest.raises(RuntimeUnavailable, match="permission denied"):
        list_instances()


def test_stop_instances_tries_all_then_reports(fake_apptainer: FakeApptainer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_GONE", "b")
    monkeypatch.setenv("FAKE_APPTAINER_STOP_FAIL", "c")
    assert stop_instances(["a", "b"]) == ["a", "b"]         # b: already gone
    with pytest.raises(RuntimeUnavailable, match="could not stop c: operation not permitted"):
        stop_instances(["c", Instance("d", 1, "/x.sif")])
    stopped = [c[-1] for c in fake_apptainer.calls()]
    assert stopped == ["a", "b", "c", "d"]                 # d was tried after c failed


def test_instance_names_carry_the_session() -> None:
    assert instance_name("4242-0a1b2c3d", 0) == "shmbench-4242-0a1b2c3d-0"
    assert session_of_instance("shmbench-4242-0a1b2c3d-w0") == "4242-0a1b2c3d"
    for other in ("shmbench-notours", "postgres", "shmbench-4242-0a1b2c3d",
                  "xshmbench-1-0a1b2c3d-w"):
        assert session_of_instance(other) is None
    with pytest.raises(ValueError):
        instance_name("not-a-session", 0)
    with pytest.raises(ValueError):
        instance_name("4242-0a1b2c3d", "a/b")


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_instances_and_gc(fake_apptainer: FakeApptainer, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "channels"
    live = Session(base)                            # holds its host.lock
    dead = base / "999999-0badf00d"                 # a host.lock nobody holds
    dead.mkdir()
    (dead / HOST_LOCK).write_text("")
    gone_dead = f"{_dead_pid()}-1234abcd"           # not under base, host pid dead
    gone_live = f"{os.getpid()}-5678abcd"           # not under base, host pid alive
    names = [instance_name(live.name, "w0"), instance_name(dead.name, "w0"),
             instance_name(gone_dead, "w1"), instance_name(gone_live, "w2"),
             "shmbench-notours", "postgres"]
    listing = tmp_path / "instances.json"
    listing.write_text(json.dumps({"instances": [
        {"instance": n, "pid": 100 + i, "img": "/x.sif", "ip": "", "logErrPath": "",
         "logOutPath": ""} for i, n in enumerate(names)]}, indent="\t") + "\n")
    monkeypatch.setenv("FAKE_APPTAINER_INSTANCES", str(listing))
    try:
        stale = [i.name for i in stale_instances(base=base)]
        assert stale == [names[1], names[2]]
        assert gc_instances(base=base) == [names[1], names[2]]
        stops = [c for c in fake_apptainer.calls() if c[:2] == ["instance", "stop"]]
        assert [c[-1] for c in stops] == [names[1], names[2]]
        assert (base / live.name).is_dir()          # gc of instances touches no directory
    finally:
        live.close()
