"""shmbench.transport.session (and channel files): session directories, attaching, full tmpfs, gc."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from channel_peers import (
    CTRL_TAIL,
    OFF_FILE_SIZE,
    OFF_HEADER_SIZE,
    OFF_MAGIC,
    OFF_RING_CAPACITY,
    OFF_RING_OFFSET,
    OFF_VERSION,
    REQUEST,
    ctrl_offset,
    read_line,
    reaped,
    spawn,
)

from shmbench.errors import (
    ChannelMismatch,
)
from shmbench.transport.channel import Channel
from shmbench.transport.session import Session, gc, reap_session


def test_stale_session_of_a_killed_host_is_reclaimed_by_gc():
    with reaped(spawn("host", "recv")) as host:
        path = Path(read_line(host))
        session_dir = path.parent
        assert session_dir.exists()
        assert reap_session(session_dir) is False  # its host lives: hands off
        assert session_dir.exists()
        host.kill()
        host.wait(10)
    assert session_dir.exists()  # nobody cleaned up yet
    removed = gc()  # its host.lock is free now
    assert session_dir in removed
    assert not session_dir.exists()


FULL_TMPFS_SCRIPT = r"""
import os, subprocess, sys
from pathlib import Path
from shmbench.transport.session import Session, Slab
from shmbench.errors import ChannelFull
mnt = Path(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
s = Session(base=mnt / "base")
try:
    s.create_channel("big", request_capacity=1 << 20, reply_capacity=1 << 20)
except ChannelFull as exc:
    print("full1", exc.errno, str(exc).replace("\n", " "))
print("left1", sorted(os.listdir(s.path)))
chans = []
try:
    for i in range(100):
        chans.append(s.create_channel(f"c{i}", request_capacity=1 << 14, reply_capacity=1 << 14))
except ChannelFull:
    print("full2", len(chans))
for c in chans:                  # touch every page of the channels that did get created
    c.send(b"x" * (c.max_record), timeout=0)
try:
    Slab.create(s.path / "slab", 1 << 20)
except ChannelFull:
    print("full3")
print("left2", sorted(p for p in os.listdir(s.path) if not p.startswith("c")))
for c in chans:
    c.close()
s.close()
print("done")
"""


def test_full_tmpfs_gives_channel_full_not_sigbus(tmp_path):
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.decode().strip()}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", FULL_TMPFS_SCRIPT, str(mnt)],
        capture_output=True,
        timeout=60,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, (proc.returncode, out, proc.stderr.decode())  # -7 = SIGBUS
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines() if " " in line)
    assert lines["full1"].startswith("28 ") and "cannot reserve" in lines["full1"]
    assert lines["left1"] == "['host.lock']"  # the failed file was removed
    assert 2 <= int(lines["full2"]) < 8  # some fit, then the tmpfs was full
    assert "full3" in out and "done" in out
    assert lines["left2"] == "['host.lock']"


def _attach_error(path: Path) -> str:
    with pytest.raises(ChannelMismatch) as info:
        Channel.attach(path, watch_stdin=False)
    assert not Path(str(path) + ".lock").exists()  # a refused attach takes no lock
    return str(info.value)


@pytest.mark.parametrize(
    "field,value,fmt,match",
    [
        (OFF_MAGIC, 0x1234, "<Q", "not a shmbench channel file"),
        (OFF_VERSION, 99, "<I", "layout version 99 .* use the same shmbench release"),
        (OFF_HEADER_SIZE, 8192, "<I", "header 8192 bytes"),
        (OFF_RING_CAPACITY, 5000, "<Q", "impossible ring geometry"),
        (OFF_RING_CAPACITY + 8, 1 << 40, "<Q", "impossible ring geometry"),
        (OFF_RING_OFFSET, 4100, "<Q", "impossible ring geometry"),
        (OFF_RING_OFFSET + 8, 4096, "<Q", "overlapping rings"),
        (OFF_FILE_SIZE, 1 << 30, "<Q", "claims"),
        (ctrl_offset(REQUEST, CTRL_TAIL), 64, "<Q", "already used"),
    ],
)
def test_attach_refuses_a_mismatched_header(field, value, fmt, match):
    with Session() as s:
        h = s.create_channel("m", request_capacity=1 << 14, reply_capacity=1 << 14)
        with h:
            fd = os.open(h.path, os.O_RDWR)
            try:
                os.pwrite(fd, struct.pack(fmt, value), field)
            finally:
                os.close(fd)
            import re

            assert re.search(match, _attach_error(h.path))


def test_attach_refuses_short_files_and_a_second_server(tmp_path):
    with Session() as s:
        for name, content in (("empty", b""), ("short", b"SHMBENCH"), ("zeros", bytes(8192))):
            p = s.path / f"{name}.chan"
            p.write_bytes(content)
            assert "too short" in _attach_error(p) or "bad magic" in _attach_error(p)
        h = s.create_channel("two")
        with h:
            first = Channel.attach(h.path, watch_stdin=False)
            with first, pytest.raises(ChannelMismatch, match="another server"):
                Channel.attach(h.path, watch_stdin=False)
        # a channel file shrunk under its header is refused, not mapped past its end
        h2 = s.create_channel("shrunk", request_capacity=1 << 14, reply_capacity=1 << 14)
        with h2:
            os.truncate(h2.path, 4096 + (1 << 14))
            assert "claims" in _attach_error(h2.path)


def test_the_suite_reclaims_the_channel_bases_of_killed_runs():
    """A test run killed before its sessionfinish (kill -9, a restart) leaves its channel
    base; the next run reaps it like any dead host's, and leaves a live run's alone."""
    import subprocess
    import sys

    import conftest

    parent = conftest._OWN_BASE.parent
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        bases = {}
        for name, proc in (("dead", dead), ("live", live)):
            base = parent / f"shmbench-{os.getuid()}-pytest{proc.pid}"
            session = base / f"{proc.pid}-00000000"
            session.mkdir(parents=True)
            (session / "host.lock").touch()  # nobody holds it
            (session / "w0.log").write_text("a server's log")
            bases[name] = base
        conftest._reclaim_killed_runs()
        assert not bases["dead"].exists()
        assert (bases["live"] / f"{live.pid}-00000000" / "w0.log").is_file()
    finally:
        live.kill()
        live.wait()
        conftest._reclaim_killed_runs()
    assert not bases["live"].exists()
