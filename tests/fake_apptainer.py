"""fake_apptainer: a TEST DOUBLE installed as ``apptainer`` on PATH; it is never Apptainer.

Apptainer cannot be installed where these tests run. The double records its argv, answers
``--version``, ``inspect``, ``pull`` and ``instance`` from the sample files in
tests/data/apptainer, and for ``exec`` runs this host's ``python -I -m shmbench.server`` with the descriptors it was
started with (as Apptainer's starter keeps them), so a real env is stepped through a real
channel. :func:`parse_exec_argv` models how Apptainer's option parser (cobra/pflag)
splits ``--bind`` and ``--env`` values; the double reads its argv with it. Passing tests
against it counts for nothing about Apptainer support.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

__all__ = ["FakeApptainer", "fake_apptainer", "install", "parse_exec_argv"]


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
        if flag in ("--memory", "--pids-limit", "--cpus") and i + 1 < len(argv):
            out.setdefault("limits", {})[flag[2:]] = argv[i + 1]
            i += 2
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
                out["binds"].append(
                    (parts[0], parts[1] if len(parts) > 1 else parts[0], parts[2] if len(parts) > 2 else "rw")
                )
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
    out["command"] = argv[i + 1 :]
    return out


FAKE_APPTAINER = """\
#!{python}
# fake_apptainer: a TEST DOUBLE standing in for the apptainer binary; never Apptainer.
# It records its argv, answers from sample files, and for `exec` runs this host's
# shmbench server with the descriptors it inherited.
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
    inner = dict(parsed["env"])   # the channel and slab: descriptors inherited through us
    inner.update(PATH=env["PATH"], HOME=env.get("HOME", "/"), LANG="C.UTF-8")
    command = parsed["command"]
    if command[0] == "python3":
        command[0] = sys.executable
    # its mount namespace, as far as the command sees it: each bind's destination is a
    # symlink to its source under a private root, and the command's arguments that name a
    # destination path are read under that root
    import tempfile
    top = tempfile.mkdtemp(prefix="fake-apptainer-root-", dir=os.path.dirname({log!r}))
    dests = []
    for src, dst, _mode in parsed["binds"]:
        link = top + dst
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.lexists(link):
            os.symlink(src, link)
        dests.append(dst)
    def under(arg):
        for dst in dests:
            parent = os.path.dirname(dst)
            if arg == dst or arg.startswith(dst + "/") or arg == parent:
                return top + arg
        return arg
    command = [command[0]] + [under(a) for a in command[1:]]
    os.execve(command[0], command, inner)
else:
    fatal("fake_apptainer does not know " + " ".join(args), 1)
"""


def install(bindir: Path, name: str, log: Path) -> Path:
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
    exe = install(bindir, "apptainer", log)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    for var in [v for v in os.environ if v.startswith("FAKE_APPTAINER")]:
        monkeypatch.delenv(var)
    return FakeApptainer(exe, log)
