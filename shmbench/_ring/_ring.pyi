"""Type stub of the C extension shmbench._ring._ring (shmbench/_ring/_ring.c; layout in ring.h)."""

import sys
from collections.abc import Sequence
from typing import Final, TypedDict, final, type_check_only

from _typeshed import ReadableBuffer
from typing_extensions import Self, disjoint_base

HOST: Final[int]
SERVER: Final[int]
HEADER_SIZE: Final[int]
LAYOUT_VERSION: Final[int]
RECORD_HEADER: Final[int]
#: size of the fixed head of a single env's step reply (shmbench.protocol.STEP_REPLY)
STEP_REPLY_SIZE: Final[int]
#: opcode name -> value, mirrored by shmbench.protocol.Opcode
OPCODES: Final[dict[str, int]]
#: status name -> value, mirrored by shmbench.protocol.Status
STATUSES: Final[dict[str, int]]

def fill_rows(dst: object, items: list, /) -> bool:
    """Copy items[i] into row i of dst when all are exactly the rows' format and shape."""

def store_step(
    rewards: object,
    terminations: object,
    truncations: object,
    reward_list: list,
    terminated_list: list,
    truncated_list: list,
    /,
) -> list[bool] | None:
    """Write a vector step's results into the batch arrays; the envs needing a reset, or None."""

def wait_any(channels: list[Channel], timeout: float | None, /) -> int:
    """The index of a channel with a message waiting (or closed, broken, its peer closed),
    or -1 after timeout seconds; sleeps on all their futex words at once (futex_waitv)."""

def decode_cost(data: ReadableBuffer, limit: int, /) -> int:
    """Bytes of Python objects decoding the MessagePack document would allocate (limit + 1
    above the limit, -1 malformed)."""

def layout_size(request_capacity: int, reply_capacity: int, /) -> int:
    """Bytes a channel file needs for the header and both rings."""

@type_check_only
class WaitStats(TypedDict):
    spin_ok: int
    spin_fail: int
    sleeps: int
    wakes: int
    wakes_skipped: int
    spin_estimate_ns: int
    spin_budget_ns: int
    spin_pause_left: int

@final
class Mapping:
    """A shared mapping of a channel file; kept alive by the views into it."""

    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...

@disjoint_base
class Channel:
    """One side of a channel: maps the file behind ``fd`` (which may be closed afterwards).

    Timeouts: ``None`` waits forever (still checking that the peer lives every slice),
    ``0`` never blocks, a number is seconds for the whole call. Waits release the GIL and
    raise KeyboardInterrupt on Ctrl-C.
    """

    def __init__(
        self,
        fd: int,
        role: int,
        /,
        *,
        create: bool = False,
        request_capacity: int = 1048576,
        reply_capacity: int = 4194304,
        max_message: int = 268435456,
    ) -> None: ...
    def send(self, data: ReadableBuffer, /, timeout: float | None = None) -> None:
        """Send one message; waits for room. Raises ChannelTimeout, ChannelClosed,
        PeerDied or ProtocolError."""
    def recv(self, /, timeout: float | None = None) -> memoryview:
        """The next message: a read-only zero-copy view valid until the next recv() or
        release(), or a copy for a fragmented message."""
    def call(self, data: ReadableBuffer, /, timeout: float | None = None) -> memoryview:
        """send() then recv(); the timeout bounds the whole round trip."""
    def reply_step(
        self,
        obs: object,
        reward: object,
        terminated: object,
        truncated: object,
        info: object,
        dst: object,
        timeout: float | None = None,
        /,
    ) -> memoryview | None:
        """Server fast path: copy obs into dst, send the 16-byte step reply and receive the
        next request; None (nothing done) unless the result is the common case."""
    def call_step(
        self, request: ReadableBuffer, dst: object, copy: bool, timeout: float | None = None, /
    ) -> tuple[object, float, bool, bool, dict[str, object]] | memoryview:
        """Host fast path: call(request); the finished step tuple for the common reply,
        else the raw reply."""
    def release(self) -> None:
        """Hand the space of the last received message back to the producer now."""
    def reserve(self, size: int, /, timeout: float | None = None) -> memoryview:
        """A writable view of ``size`` bytes in the outgoing ring (size <= max_record)."""
    def commit(self, size: int, /) -> None:
        """Publish the first ``size`` bytes of the open reservation as one message."""
    def poll(self) -> bool:
        """True when a message is waiting (never blocks)."""
    def set_peer(self, /, death_fds: Sequence[int] | None = (), lock_fd: int = -1) -> None:
        """How to notice a dead peer: fds polled for any event, and the peer's lock file
        (held with flock(LOCK_EX) while it lives). The channel owns and closes them."""
    def peer_alive(self) -> bool: ...
    def configure_wait(
        self,
        /,
        spin_ns: int = 100000,
        adaptive: bool = True,
        slice_ns: int = 50000000,
        stall_ns: int = 10000000000,
        track: bool = False,
    ) -> None:
        """Spin at most spin_ns (0: block at once), learn the typical wait if adaptive,
        check liveness every slice_ns while sleeping; a peer with a heartbeat that shows
        none for stall_ns raises PeerStalled (0: never)."""
    def start_heartbeat(self, /, period_ns: int = 100000000) -> None:
        """Start this side's heartbeat thread (needs no GIL); close() stops it."""
    def stats(self) -> WaitStats: ...
    def close(self) -> None:
        """Mark this side closed and wake the peer. Idempotent."""
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def peer_closed(self) -> bool: ...
    @property
    def receiving(self) -> bool:
        """True while a fragmented message is partly received."""
    @property
    def max_record(self) -> int:
        """Largest message sent as one record (half the outgoing ring, less a header)."""
    @property
    def size(self) -> int: ...
    @property
    def sent(self) -> int:
        """Messages this side sent completely."""
    @property
    def received(self) -> int:
        """Messages this side received completely."""
    @property
    def role(self) -> int: ...
