"""A hostile peer: whatever the container writes into shared memory, the host only ever
raises ShmbenchError -- no crash, no hang, no other exception.

Two kinds of cases:

- crafted: a raw peer process writes well-formed-looking but malicious records and
  counters (trickled fragments, pad storms, oversized totals, counters out of range);
- random: a scribbler process overwrites the header, both rings, the futex words and the
  slab file with random bytes or chosen words, while a host *process* sends, receives,
  decodes, reserves and polls with short timeouts. The host runs in its own process so
  that a crash (a signal) or a hang shows up as a failed test, not a dead test runner.

Not covered, by design: a peer that truncates the channel file makes the host's next
access to a vanished page raise SIGBUS (the same uid may always ftruncate a file it can
write; tmpfs files cannot be sealed against shrinking).
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import random
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shmbench.errors import (
    ChannelClosed,
    ChannelTimeout,
    PeerDied,
    ProtocolError,
    ShmbenchError,
)
from shmbench.transport.channel import Channel
from shmbench.transport.session import Session, Slab
from shmbench.wire import codec

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from channel_peers import (  # noqa: E402
    CTRL_DATA_SEQ,
    CTRL_DATA_SLEEPERS,
    CTRL_HEAD,
    CTRL_SPACE_SEQ,
    CTRL_SPACE_SLEEPERS,
    CTRL_TAIL,
    OFF_STATE,
    PEER_TAG,
    REPLY,
    REQUEST,
    ctrl_offset,
    finish,
    read_line,
    reaped,
    say,
)

REC_MESSAGE, REC_PAD, REC_FIRST, REC_MIDDLE, REC_LAST = 1, 2, 3, 4, 5
_libc = ctypes.CDLL(None, use_errno=True)
SYS_futex, FUTEX_WAKE = 202, 1  # x86_64


def spawn(func: str, *args, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    """Start ``peer_<func>(*args)`` of this module in a fresh interpreter."""
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_fuzz as m; m.peer_{func}(*sys.argv[2:])"
    return subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", code, PEER_TAG, *map(str, args)],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )


# ======================================================================================
# A raw producer of the reply ring: writes records as a (malicious) server would
# ======================================================================================


class RawServer:
    """Maps a channel file and produces records into its reply ring by hand."""

    def __init__(self, path: str, req_cap: int, rep_cap: int) -> None:
        self.f = open(path, "r+b")
        self.mm = mmap.mmap(self.f.fileno(), 0)
        self.base = 4096 + req_cap
        self.cap = rep_cap
        self.head = 0
        struct.pack_into("<I", self.mm, OFF_STATE + 4, 1)  # server OPEN

    def record(self, kind: int, payload: bytes, length: int | None = None, published: int | None = None) -> None:
        """Write one record (its header may lie about ``length``) and publish ``published``
        bytes of it (default: all)."""
        n = len(payload) if length is None else length
        size = 8 + (n + 7) // 8 * 8
        pos = self.head % self.cap
        struct.pack_into("<II", self.mm, self.base + pos, n, kind)
        self.mm[self.base + pos + 8 : self.base + pos + 8 + len(payload)] = payload
        self.publish(self.head + (size if published is None else published))

    def publish(self, head: int) -> None:
        self.head = head
        struct.pack_into("<Q", self.mm, ctrl_offset(REPLY, CTRL_HEAD), head & (2**64 - 1))
        seq_off = ctrl_offset(REPLY, CTRL_DATA_SEQ)
        seq = struct.unpack_from("<I", self.mm, seq_off)[0]
        struct.pack_into("<I", self.mm, seq_off, (seq + 1) & 0xFFFFFFFF)
        word = ctypes.c_uint32.from_buffer(self.mm, seq_off)
        _libc.syscall(SYS_futex, ctypes.byref(word), FUTEX_WAKE, 0x7FFFFFFF, None, None, 0)
        del word

    def tail(self) -> int:
        return struct.unpack_from("<Q", self.mm, ctrl_offset(REPLY, CTRL_TAIL))[0]

    def close(self) -> None:
        self.mm.close()
        self.f.close()


CAP = 1 << 14


def peer_raw(path: str, scenario: str) -> None:
    rs = RawServer(path, CAP, CAP)
    say("ready")
    if scenario == "trickle":
        # a fragmented message whose fragments come just often enough to keep a per-record
        # timeout from ever firing
        rs.record(REC_FIRST, struct.pack("<Q", 10 << 20) + bytes(CAP // 4 - 16))
        for _ in range(400):
            time.sleep(0.02)
            while rs.head - rs.tail() > CAP // 2:
                time.sleep(0.001)
            pos = rs.head % CAP
            if CAP - pos < CAP // 4:
                rs.record(REC_PAD, b"", CAP - pos - 8)
            rs.record(REC_MIDDLE, bytes(CAP // 4 - 16))
    elif scenario == "pads":
        # the consumer must never spin on pads: a pad at ring position 0 is refused
        rs.record(REC_PAD, b"", CAP - 8)
    elif scenario == "zero_fragments":
        rs.record(REC_FIRST, struct.pack("<Q", 1 << 20) + bytes(CAP // 4 - 16))
        for _ in range(100):
            rs.record(REC_MIDDLE, b"")
    elif scenario == "tiny_fragments":
        rs.record(REC_FIRST, struct.pack("<Q", 1 << 20) + bytes(CAP // 4 - 16))
        rs.record(REC_MIDDLE, b"x")
    elif scenario == "huge_total":
        rs.record(REC_FIRST, struct.pack("<Q", 1 << 62) + bytes(CAP // 4 - 16))
    elif scenario == "small_total":
        rs.record(REC_FIRST, struct.pack("<Q", 100) + bytes(CAP // 4 - 16))
    elif scenario == "orphan_middle":
        rs.record(REC_MIDDLE, bytes(CAP // 4))
    elif scenario == "bad_kind":
        rs.record(77, b"hello")
    elif scenario == "overrun":
        rs.record(REC_MESSAGE, bytes(8), length=CAP // 2, published=16)  # more than published
    elif scenario == "head_beyond":
        rs.publish(CAP + 8)
    elif scenario == "head_unaligned":
        rs.publish(13)
    elif scenario == "head_backwards":
        rs.record(REC_MESSAGE, b"12345678")
        say("sent")
        assert read_line_stdin() == "go"
        rs.publish(0)
    elif scenario == "tail_rewind":
        # the host produces requests; we (the consumer) claim to have consumed more than it sent
        struct.pack_into("<Q", rs.mm, ctrl_offset(REQUEST, CTRL_TAIL), 1 << 40)
    say("done")
    time.sleep(30)


def read_line_stdin() -> str:
    return sys.stdin.readline().strip()


@pytest.mark.parametrize(
    "scenario,match",
    [
        ("pads", "misplaced pad"),
        ("zero_fragments", "bad fragment sequence"),
        ("tiny_fragments", "bad fragment sequence"),
        ("huge_total", "larger than max_message"),
        ("small_total", "needlessly fragmented"),
        ("orphan_middle", "out of order"),
        ("bad_kind", "unknown record kind"),
        ("overrun", "overruns the ring"),
        ("head_beyond", "head out of range"),
        ("head_unaligned", "head out of range"),
    ],
)
def test_crafted_records_give_protocol_errors(scenario, match):
    with Session() as s:
        ch = s.create_channel("raw", request_capacity=CAP, reply_capacity=CAP)
        with ch, reaped(spawn("raw", ch.path, scenario)) as peer:
            ch.set_peer(death_fds=[os.pidfd_open(peer.pid)])
            assert read_line(peer) == "ready"
            assert read_line(peer) == "done"
            t = time.monotonic()
            with pytest.raises(ProtocolError, match=match):
                ch.recv(timeout=5)
            assert time.monotonic() - t < 1.0
            # broken for good: the stream cannot be trusted to be in step any more
            with pytest.raises(ProtocolError, match="broken"):
                ch.recv(timeout=0)
            with pytest.raises(ProtocolError, match="broken"):
                ch.send(b"x", timeout=0)


def test_tail_rewound_by_the_peer():
    with Session() as s:
        ch = s.create_channel("raw", request_capacity=CAP, reply_capacity=CAP)
        with ch, reaped(spawn("raw", ch.path, "tail_rewind")) as peer:
            assert read_line(peer) == "ready"
            assert read_line(peer) == "done"
            # the cached free space still allows a few sends; then the tail is read and refused
            with pytest.raises(ProtocolError, match="tail out of range"):
                for _ in range(100):
                    ch.send(b"y" * 1000, timeout=1)


def test_head_going_backwards():
    with Session() as s:
        ch = s.create_channel("raw", request_capacity=CAP, reply_capacity=CAP)
        with ch, reaped(spawn("raw", ch.path, "head_backwards", stdin=subprocess.PIPE)) as peer:
            assert read_line(peer) == "ready"
            assert read_line(peer) == "sent"
            assert bytes(ch.recv(timeout=5)) == b"12345678"
            ch.release()
            peer.stdin.write(b"go\n")
            assert read_line(peer) == "done"
            with pytest.raises(ProtocolError, match="head out of range"):
                ch.recv(timeout=5)


def test_trickled_fragments_cannot_stretch_a_timeout():
    """The timeout bounds the whole message, however often the peer adds a fragment."""
    with Session() as s:
        ch = s.create_channel("raw", request_capacity=CAP, reply_capacity=CAP)
        ch.configure_wait(slice_ns=10_000_000)
        with ch, reaped(spawn("raw", ch.path, "trickle")) as peer:
            ch.set_peer(death_fds=[os.pidfd_open(peer.pid)])
            assert read_line(peer) == "ready"
            t = time.monotonic()
            with pytest.raises(ChannelTimeout):
                ch.recv(timeout=0.5)
            took = time.monotonic() - t
            assert 0.5 <= took < 1.0, took
            # the partial message is kept; a later recv resumes (and times out again)
            with pytest.raises(ChannelTimeout):
                ch.recv(timeout=0.1)


# ======================================================================================
# Random scribbling while a host process works
# ======================================================================================

FUZZ_REQ_CAP = 1 << 13
FUZZ_REP_CAP = 1 << 14
SLAB_SIZE = 1 << 14


def _interesting(rng: random.Random, cap: int) -> int:
    return rng.choice(
        [
            0,
            1,
            7,
            8,
            9,
            16,
            cap - 8,
            cap,
            cap + 8,
            2 * cap,
            cap // 2,
            cap // 4,
            2**31,
            2**32 - 1,
            2**32,
            2**63,
            2**64 - 1,
            2**64 - 8,
            rng.getrandbits(64),
            rng.getrandbits(16) * 8,
        ]
    )


def peer_scribbler(session_dir: str, strategy: str, seed: str, duration: str) -> None:
    """Overwrite the channel files and the slab of a session with garbage until told to stop."""
    rng = random.Random(int(seed))
    end = time.monotonic() + float(duration) + 5
    maps: dict[str, mmap.mmap] = {}
    attached: dict[str, Channel] = {}
    cd = codec.Codec()
    say("ready")
    n = 0
    while time.monotonic() < end:
        for name in os.listdir(session_dir):
            if name in maps or not (name.endswith(".chan") or name == "slab"):
                continue
            try:
                with open(os.path.join(session_dir, name), "r+b") as f:
                    maps[name] = mmap.mmap(f.fileno(), 0)
            except (OSError, ValueError):
                continue
            if strategy == "server" and name.endswith(".chan"):
                try:
                    attached[name] = Channel.attach(os.path.join(session_dir, name), watch_stdin=False)
                except (ShmbenchError, OSError):  # refused, or already replaced
                    pass
        for name, mm in list(maps.items()):
            size = len(mm)
            if strategy == "random":
                for _ in range(rng.randrange(1, 4)):
                    k = rng.randrange(1, 64)
                    off = rng.randrange(0, size - k)
                    mm[off : off + k] = rng.randbytes(k)
            elif strategy in ("words", "server") and name != "slab":
                ring = rng.choice((REQUEST, REPLY))
                field = rng.choice(
                    (
                        CTRL_HEAD,
                        CTRL_TAIL,
                        CTRL_DATA_SEQ,
                        CTRL_DATA_SLEEPERS,
                        CTRL_SPACE_SEQ,
                        CTRL_SPACE_SLEEPERS,
                        None,
                        None,
                        "rec",
                    )
                )
                cap = FUZZ_REQ_CAP if ring == REQUEST else FUZZ_REP_CAP
                if field is None:  # the state words
                    struct.pack_into("<I", mm, OFF_STATE + 4 * rng.randrange(2), rng.choice((0, 1, 2, 3)))
                elif field == "rec":  # a record header in a ring
                    base = 4096 if ring == REQUEST else 4096 + FUZZ_REQ_CAP
                    tail = struct.unpack_from("<Q", mm, ctrl_offset(ring, CTRL_TAIL))[0]
                    pos = (tail + 8 * rng.randrange(0, 4)) % cap & ~7  # tail may be scribbled
                    struct.pack_into(
                        "<II",
                        mm,
                        base + pos,
                        _interesting(rng, cap) & 0xFFFFFFFF,
                        rng.choice((1, 2, 3, 4, 5, 0, 6, rng.getrandbits(32))),
                    )
                elif field in (CTRL_HEAD, CTRL_TAIL):
                    cur = struct.unpack_from("<Q", mm, ctrl_offset(ring, field))[0]
                    val = rng.choice(
                        (cur + 8, cur - 8, cur + cap, cur + rng.getrandbits(8) * 8, _interesting(rng, cap))
                    )
                    struct.pack_into("<Q", mm, ctrl_offset(ring, field), val % 2**64)
                else:
                    struct.pack_into("<I", mm, ctrl_offset(ring, field), rng.getrandbits(32))
            elif name == "slab":
                k = rng.randrange(1, 256)
                off = rng.randrange(0, size - k)
                mm[off : off + k] = rng.randbytes(k)
        if strategy == "server":
            # between the scribbles, behave: send real messages (codec documents, big ones)
            for ch in list(attached.values()):
                try:
                    if rng.random() < 0.5:
                        ch.send(
                            cd.encode(
                                {
                                    "obs": np.arange(rng.randrange(0, 5000), dtype=np.float32),
                                    "info": ("t", rng.random(), [None, True, 2**70]),
                                }
                            ),
                            timeout=0.01,
                        )
                    else:
                        ch.send(rng.randbytes(rng.choice((0, 10, 9000, 40000))), timeout=0.01)
                    ch.recv(timeout=0)
                except ShmbenchError:
                    pass
        n += 1
        if n % 64 == 0:
            time.sleep(0.0005)
    for ch in attached.values():
        ch.close()


def peer_fuzz_host(strategy: str, seed: str, duration: str) -> None:
    """The host under attack: it must only ever see ShmbenchError, and never wait long."""
    rng = random.Random(int(seed) ^ 0x5EED)
    duration = float(duration)
    counts: Counter[str] = Counter()
    cd = codec.Codec()
    max_op = 0.0
    session = Session()
    slab = Slab.create(session.path / "slab", SLAB_SIZE)
    chans: list[Channel] = []

    def fresh() -> Channel:
        ch = session.create_channel(f"f{len(chans)}", request_capacity=FUZZ_REQ_CAP, reply_capacity=FUZZ_REP_CAP)
        ch.set_peer(death_fds=[os.pidfd_open(scribbler.pid)])
        ch.configure_wait(slice_ns=5_000_000)
        chans.append(ch)
        return ch

    scribbler = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_fuzz as m; m.peer_scribbler(*sys.argv[2:])",
            PEER_TAG,
            str(session.path),
            strategy,
            seed,
            str(duration),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        bufsize=0,
    )
    try:
        assert scribbler.stdout.readline().strip() == b"ready"
        ch = fresh()
        payloads = [b"", b"x" * 5, bytes(3000), bytes(FUZZ_REQ_CAP // 2), bytes(3 * FUZZ_REQ_CAP)]
        end = time.monotonic() + duration
        while time.monotonic() < end:
            op = rng.choice(("send", "recv", "recv", "call", "poll", "reserve", "slab"))
            t = time.perf_counter()
            try:
                if op == "send":
                    ch.send(rng.choice(payloads), timeout=0.005)
                elif op == "recv":
                    v = ch.recv(timeout=rng.choice((0, 0.002, 0.005)))
                    try:
                        cd.decode(v, copy=rng.random() < 0.5)
                        counts["decoded"] += 1
                    except ShmbenchError:
                        counts["decode-error"] += 1
                    ch.release()
                elif op == "call":
                    ch.call(rng.choice(payloads), timeout=0.005)
                elif op == "poll":
                    ch.poll()
                    ch.peer_alive()
                    ch.stats()
                elif op == "reserve":
                    n = rng.choice((0, 8, 100, ch.max_record))
                    mv = ch.reserve(n, timeout=0.005)
                    mv[:] = bytes(n)
                    mv.release()
                    ch.commit(rng.randrange(0, n + 1))
                else:
                    a = np.frombuffer(slab.buffer, dtype=np.float64)
                    counts["slab-nan"] += int(np.isnan(a).sum() > 0)
                    cd.decode(slab.buffer[: SLAB_SIZE // 2]) if rng.random() < 0.1 else None
                counts["ok:" + op] += 1
            except ShmbenchError as exc:
                counts[type(exc).__name__] += 1
                if isinstance(exc, PeerDied):
                    raise AssertionError("the scribbler died") from exc
                if isinstance(exc, (ProtocolError, ChannelClosed)) or (
                    isinstance(exc, ChannelTimeout) and "unusable" in str(exc)
                ):
                    # this channel is done for (broken, or closed by a forged state word):
                    # the next attack goes against a fresh one
                    ch.close()
                    ch.unlink()
                    ch = fresh()
            max_op = max(max_op, time.perf_counter() - t)
    finally:
        scribbler.kill()
        scribbler.wait(10)
        for c in chans:
            c.close()
        slab.close()
        session.close()
    say(json.dumps({"counts": counts, "max_op": max_op, "channels": len(chans)}))


FUZZ_SECONDS = 1.5


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("strategy", ["random", "words", "server"])
def test_scribbling_peer_only_causes_shmbench_errors(strategy, seed):
    host = subprocess.Popen(
        [
            sys.executable,
            "-X",
            "faulthandler",
            "-c",
            f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_fuzz as m; m.peer_fuzz_host(*sys.argv[2:])",
            PEER_TAG,
            strategy,
            str(seed),
            str(FUZZ_SECONDS),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with reaped(host):
        status, out, err = finish(host, 60)
    assert status == 0, f"host process failed ({status}): {err[-4000:]}"  # < 0: killed by a signal
    result = json.loads(out.strip().splitlines()[-1])
    counts = result["counts"]
    assert result["max_op"] < 1.0, result  # every call returned promptly
    ok = sum(v for k, v in counts.items() if k.startswith("ok:"))
    errors = sum(v for k, v in counts.items() if k[0].isupper() and k != "ChannelTimeout")
    assert ok > 50, counts
    assert errors > 0, counts  # the scribbling was noticed ...
    assert result["channels"] > 1, result  # ... and broke channels, which were replaced
    print(f"\n{strategy}/{seed}: {result}")
