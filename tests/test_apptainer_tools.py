"""shmbench.runtimes.apptainer_tools: inspect, pull and instances through spython.

Against sample outputs (tests/data/apptainer) and ``fake_apptainer``, the test double of
tests/fake_apptainer.py (never Apptainer: passing these tests counts for nothing about
Apptainer support).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest_images import make_sif
from fake_apptainer import FakeApptainer

from shmbench.errors import ImageError, RuntimeUnavailable
from shmbench.runtimes.apptainer_tools import (
    Instance,
    gc_instances,
    inspect_labels,
    instance_name,
    list_instances,
    parse_inspect,
    parse_instance_list,
    pull,
    session_of_instance,
    stale_instances,
    stop_instance,
    stop_instances,
)
from shmbench.transport.channel import HOST_LOCK
from shmbench.transport.session import Session

DATA = Path(__file__).resolve().parent / "data" / "apptainer"


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "sandbox"
    (root / "shmbench").mkdir(parents=True)
    return root


# ------------------------------------------------------------------------------ inspect

LABELS = json.loads((DATA / "inspect.json").read_text())["data"]["attributes"]["labels"]


@pytest.mark.parametrize(
    "name, expect",
    [
        ("inspect.json", LABELS),
        (
            "inspect-3.0.json",
            {
                "org.label-schema.schema-version": "1.0",
                "org.label-schema.build-date": "Mon,_01_Oct_2018_12:00:00_+0000",
                "org.label-schema.usage.singularity.version": "3.0.0",
            },
        ),
        ("inspect-labels-string.json", {"org.label-schema.schema-version": "1.0", "Author": "someone@example.org"}),
    ],
)
def test_parse_inspect_samples(name: str, expect: dict) -> None:
    assert parse_inspect((DATA / name).read_text()) == expect


@pytest.mark.parametrize(
    "text",
    ["[]", "WARNING: x", '{"data": {}}', '{"attributes": {"labels": "{oops"}}', '{"attributes": {"labels": [1]}}'],
)
def test_parse_inspect_rejects(text: str) -> None:
    with pytest.raises(ImageError):
        parse_inspect(text)


def test_inspect_labels_through_spython(
    fake_apptainer: FakeApptainer, sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_INSPECT", str(DATA / "inspect.json"))
    assert inspect_labels(sandbox) == LABELS
    call = fake_apptainer.calls()[-1]
    assert call[0] == "inspect" and call[-2:] == ["--json", str(sandbox)] and "-l" in call


def test_inspect_failure_carries_the_message(
    fake_apptainer: FakeApptainer, sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_FAIL", "1")
    with pytest.raises(ImageError, match="failed to retrieve path"):
        inspect_labels(sandbox)


def test_inspect_garbage_output(
    fake_apptainer: FakeApptainer, sandbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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


def test_pull_writes_the_image_atomically(fake_apptainer: FakeApptainer, prepared_sif: Path, tmp_path: Path) -> None:
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


def test_pull_failure(
    fake_apptainer: FakeApptainer,
    prepared_sif: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_FAIL", "1")
    dest = tmp_path / "out" / "x.sif"
    with pytest.raises(ImageError, match="manifest unknown"):
        pull("oras://ghcr.io/o/missing:1", dest)
    assert list(dest.parent.iterdir()) == []
    capfd.readouterr()


def test_pull_rejects_what_is_not_a_sif(
    fake_apptainer: FakeApptainer, prepared_sif: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
        Instance(
            "shmbench-4242-0a1b2c3d-w0",
            1838401,
            "/scratch/u/images/cartpole.sif",
            "",
            "/home/u/.apptainer/instances/logs/node017/u/shmbench-4242-0a1b2c3d-w0.err",
            "/home/u/.apptainer/instances/logs/node017/u/shmbench-4242-0a1b2c3d-w0.out",
        ),
        Instance(
            "postgres",
            1838502,
            "/home/u/containers/postgres_16.sif",
            "10.22.0.4",
            "/home/u/.apptainer/instances/logs/node017/u/postgres.err",
            "/home/u/.apptainer/instances/logs/node017/u/postgres.out",
        ),
    ]
    assert parse_instance_list((DATA / "instance-list-empty.json").read_text()) == []
    assert parse_instance_list("") == []


@pytest.mark.parametrize("text", ["not json", '{"instances": {}}', '{"instances": [{"pid": 1}]}'])
def test_parse_instance_list_rejects(text: str) -> None:
    with pytest.raises(RuntimeUnavailable):
        parse_instance_list(text)


def test_list_and_stop_through_spython(fake_apptainer: FakeApptainer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_INSTANCES", str(DATA / "instance-list.json"))
    assert [i.name for i in list_instances()] == ["shmbench-4242-0a1b2c3d-w0", "postgres"]
    stop_instance("postgres", timeout=3)
    assert fake_apptainer.calls() == [["instance", "list", "--json"], ["instance", "stop", "-t", "3", "postgres"]]
    with pytest.raises(ValueError):
        stop_instance("bad name; rm -rf /")


def test_list_failure_is_an_error_not_an_empty_list(
    fake_apptainer: FakeApptainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_FAIL", "1")
    with pytest.raises(RuntimeUnavailable, match="permission denied"):
        list_instances()


def test_stop_instances_tries_all_then_reports(fake_apptainer: FakeApptainer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_APPTAINER_GONE", "b")
    monkeypatch.setenv("FAKE_APPTAINER_STOP_FAIL", "c")
    assert stop_instances(["a", "b"]) == ["a", "b"]  # b: already gone
    with pytest.raises(RuntimeUnavailable, match="could not stop c: operation not permitted"):
        stop_instances(["c", Instance("d", 1, "/x.sif")])
    stopped = [c[-1] for c in fake_apptainer.calls()]
    assert stopped == ["a", "b", "c", "d"]  # d was tried after c failed


def test_instance_names_carry_the_session() -> None:
    assert instance_name("4242-0a1b2c3d", 0) == "shmbench-4242-0a1b2c3d-0"
    assert session_of_instance("shmbench-4242-0a1b2c3d-w0") == "4242-0a1b2c3d"
    for other in ("shmbench-notours", "postgres", "shmbench-4242-0a1b2c3d", "xshmbench-1-0a1b2c3d-w"):
        assert session_of_instance(other) is None
    with pytest.raises(ValueError):
        instance_name("not-a-session", 0)
    with pytest.raises(ValueError):
        instance_name("4242-0a1b2c3d", "a/b")


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_instances_and_gc(fake_apptainer: FakeApptainer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "channels"
    live = Session(base)  # holds its host.lock
    dead = base / "999999-0badf00d"  # a host.lock nobody holds
    dead.mkdir()
    (dead / HOST_LOCK).write_text("")
    gone_dead = f"{_dead_pid()}-1234abcd"  # not under base, host pid dead
    gone_live = f"{os.getpid()}-5678abcd"  # not under base, host pid alive
    names = [
        instance_name(live.name, "w0"),
        instance_name(dead.name, "w0"),
        instance_name(gone_dead, "w1"),
        instance_name(gone_live, "w2"),
        "shmbench-notours",
        "postgres",
    ]
    listing = tmp_path / "instances.json"
    listing.write_text(
        json.dumps(
            {
                "instances": [
                    {"instance": n, "pid": 100 + i, "img": "/x.sif", "ip": "", "logErrPath": "", "logOutPath": ""}
                    for i, n in enumerate(names)
                ]
            },
            indent="\t",
        )
        + "\n"
    )
    monkeypatch.setenv("FAKE_APPTAINER_INSTANCES", str(listing))
    try:
        stale = [i.name for i in stale_instances(base=base)]
        assert stale == [names[1], names[2]]
        assert gc_instances(base=base) == [names[1], names[2]]
        stops = [c for c in fake_apptainer.calls() if c[:2] == ["instance", "stop"]]
        assert [c[-1] for c in stops] == [names[1], names[2]]
        assert (base / live.name).is_dir()  # gc of instances touches no directory
    finally:
        live.close()
