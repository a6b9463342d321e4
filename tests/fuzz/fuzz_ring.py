"""Coverage-guided fuzzing of the host side of a channel against a hostile server.

Not part of the test suite: run it with ``bash tests/fuzz/run.sh`` (which builds an
instrumented extension in a temporary copy of the tree) or by hand::

    python tests/fuzz/fuzz_ring.py -max_total_time=60

Each input is the script of a malicious server: it writes control words, record headers
and bytes into the channel's mapping, publishes heads, and in between the host receives
(decoding what it got with the wire codec), sends, polls and reserves -- every call with
timeout=0, so an input never waits. Anything but a ShmbenchError escaping, a crash, or a
sanitizer report is a finding.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys

import atheris

with atheris.instrument_imports(include=["shmbench"]):
    from shmbench import _ring
    from shmbench.errors import ShmbenchError
    from shmbench.wire import codec

CAP = 4096
REQ, REP = 4096, 4096 + CAP  # ring offsets
CTRL = 128  # ring control blocks (ring.h)
FIELDS = [0, 64, 128, 132, 192, 196]  # head, tail, data/space seq and sleepers
SIZE = _ring.layout_size(CAP, CAP)
CODEC = codec.Codec()


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    fd = os.memfd_create("shmbench-fuzz", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, SIZE)
        ch = _ring.Channel(fd, _ring.HOST, create=True, request_capacity=CAP, reply_capacity=CAP, max_message=1 << 20)
        raw = mmap.mmap(fd, SIZE)
    finally:
        os.close(fd)
    head = 0
    try:
        for _ in range(64):
            if fdp.remaining_bytes() == 0:
                break
            op = fdp.ConsumeIntInRange(0, 10)
            try:
                if op == 0:  # a control word, any value
                    off = CTRL + 256 * fdp.ConsumeIntInRange(0, 1) + fdp.PickValueInList(FIELDS)
                    if off % 64 == 0:
                        struct.pack_into("<Q", raw, off, fdp.ConsumeInt(8) % 2**64)
                    else:
                        struct.pack_into("<I", raw, off, fdp.ConsumeInt(4) % 2**32)
                elif op == 1:  # a record header at the consumer's position
                    tail = struct.unpack_from("<Q", raw, CTRL + 256 + 64)[0]
                    pos = (tail + 8 * fdp.ConsumeIntInRange(0, 8)) % CAP & ~7  # tail: forged
                    struct.pack_into("<II", raw, REP + pos, fdp.ConsumeInt(4) % 2**32, fdp.ConsumeIntInRange(0, 7))
                elif op == 2:  # bytes anywhere in the reply ring
                    pos = fdp.ConsumeIntInRange(0, CAP - 1)
                    chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, CAP - pos))
                    raw[REP + pos : REP + pos + len(chunk)] = chunk
                elif op == 3:  # publish (the head the server owns)
                    head += 8 * fdp.ConsumeIntInRange(0, CAP // 8 + 2)
                    struct.pack_into("<Q", raw, CTRL + 256, head)
                elif op == 4:  # a whole well-formed record
                    tail = struct.unpack_from("<Q", raw, CTRL + 256 + 64)[0]
                    body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, CAP // 2))
                    kind = fdp.ConsumeIntInRange(1, 5)
                    pos = head % CAP
                    if pos + 8 + len(body) <= CAP:
                        struct.pack_into("<II", raw, REP + pos, len(body), kind)
                        raw[REP + pos + 8 : REP + pos + 8 + len(body)] = body
                        head += 8 + (len(body) + 7) // 8 * 8
                        struct.pack_into("<Q", raw, CTRL + 256, head)
                    del tail
                elif op in (5, 6):  # the host receives, and decodes
                    msg = ch.recv(timeout=0)
                    try:
                        CODEC.decode(msg, copy=op == 5)
                    except ShmbenchError:
                        pass
                elif op == 7:
                    ch.send(b"\0" * fdp.ConsumeIntInRange(0, 3 * CAP), timeout=0)
                elif op == 8:
                    ch.poll()
                    ch.release()
                elif op == 9:
                    n = fdp.ConsumeIntInRange(0, ch.max_record)
                    mv = ch.reserve(n, timeout=0)
                    mv.release()
                    ch.commit(fdp.ConsumeIntInRange(0, n))
                else:  # the peer's state word
                    struct.pack_into("<I", raw, 64 + 4, fdp.ConsumeIntInRange(0, 3))
            except ShmbenchError:
                if ch.closed:
                    break
    finally:
        ch.close()
        del ch
        raw.close()


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
