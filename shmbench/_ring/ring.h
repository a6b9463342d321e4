/*
 * shmbench/_ring/ring.h -- the shared-memory layout of a shmbench channel file.
 *
 * Both sides of a channel (the host and the server inside a container) map the SAME regular
 * file with mmap(MAP_SHARED). Everything in this header is therefore an ABI between two
 * processes that may run different builds of shmbench: change a field, bump
 * SB_LAYOUT_VERSION.
 *
 *   offset 0                      SB_HEADER_SIZE      +req_cap          +rep_cap
 *   +-----------------------------+------------------+-----------------+----------------
 *   | sb_header (one 4 KiB page)  | request ring     | reply ring      | slabs (Python)
 *   |  magic, version, geometry,  | host -> server   | server -> host  | grown after
 *   |  per-side state, 2 ring     |                  |                 | the handshake
 *   |  control blocks             |                  |                 |
 *   +-----------------------------+------------------+-----------------+----------------
 *
 * The C extension maps only [0, file_size) as written in the header at creation; the slabs
 * behind it are mapped separately by Python once their layout is known.
 *
 * Trust: the host creates the file and is trusted by the server; the server is NOT trusted by
 * the host. Each side therefore keeps private copies of the geometry and of the counters it
 * owns (its producer head, its consumer tail) and only ever *reads* the peer's counters, once
 * per use, bounds-checking them before use.
 */
#ifndef SHMBENCH_RING_H
#define SHMBENCH_RING_H

#include <stdint.h>

#define SB_MAGIC            UINT64_C(0x48434e45424d4853) /* "SHMBENCH" little-endian */
#define SB_LAYOUT_VERSION   1u
#define SB_HEADER_SIZE      4096u
#define SB_CACHELINE        64u
#define SB_RECORD_ALIGN     8u
#define SB_RECORD_HEADER    8u
#define SB_MIN_CAPACITY     4096u
#define SB_MAX_CAPACITY     (UINT64_C(1) << 31)

/* Sides and ring indices: the request ring is written by the host, the reply ring by the
 * server. */
enum sb_side { SB_HOST = 0, SB_SERVER = 1 };
enum sb_ring_index { SB_REQUEST = 0, SB_REPLY = 1 };

/* Per-side state word. A side sets CLOSED when it shuts down cleanly, then wakes the peer. */
enum sb_state { SB_STATE_NEW = 0, SB_STATE_OPEN = 1, SB_STATE_CLOSED = 2 };

/* Per-side feature bits, announced in features[side] when the side attaches. A peer of an
 * older release announces none, and nothing is expected of it. */
enum sb_feature {
    SB_FEATURE_HEARTBEAT = 1,   /* a thread of this side bumps heartbeat[side] periodically */
};

/* Record kinds (the second u32 of a record header). A message that does not fit one record
 * travels as FIRST (payload starts with the u64 total length), MIDDLE..., LAST.
 * Rules a consumer enforces (so a hostile producer cannot keep it busy for free): only a
 * message longer than max_record (half the producer's ring, less a header) is fragmented;
 * FIRST and MIDDLE fragments carry at least an eighth of the ring (the sender uses a
 * quarter); no fragment is empty; a PAD fills the ring to its end and never starts at 0. */
enum sb_record_kind {
    SB_REC_MESSAGE = 1,
    SB_REC_PAD = 2,     /* filler up to the end of the ring; the next record starts at 0 */
    SB_REC_FIRST = 3,
    SB_REC_MIDDLE = 4,
    SB_REC_LAST = 5,
};

/* The wire protocol's opcodes: the first byte of every request. Mirrored by
 * shmbench.protocol.Opcode (a test checks that they agree). */
enum sb_opcode {
    SB_OP_MAKE = 1,       /* build the env(s): payload = codec(spec) */
    SB_OP_CONFIGURE = 2,  /* map the slabs: payload = codec(layout) */
    SB_OP_RESET = 3,
    SB_OP_STEP = 4,
    SB_OP_RENDER = 5,
    SB_OP_CALL = 6,
    SB_OP_GET_ATTR = 7,
    SB_OP_SET_ATTR = 8,
    SB_OP_CLOSE = 9,
    SB_OP_PING = 10,
    SB_OP_ECHO = 11,      /* test and benchmark aid: reply with the payload */
};

/* Every reply starts with a status byte. NOTES prefixes a reply with what happened on the
 * way (the warnings the env raised: shmbench.wire.protocol.with_notes); the C fast paths
 * never build or read it. */
enum sb_status { SB_STATUS_OK = 0, SB_STATUS_ERROR = 1, SB_STATUS_NOTES = 2 };

/* The fixed head of a single env's STEP reply (shmbench.protocol.STEP_REPLY mirrors it; a
 * test checks the size). The C fast paths (Channel.reply_step / Channel.call_step) write and
 * read only its common case: obs in the slab (tag 0), a Python float reward (tag 0), Python
 * bools (0/1) and no extras. Everything else is built and parsed in Python. */
typedef struct {
    uint8_t status;
    uint8_t obs_tag;
    uint8_t reward_tag;
    uint8_t terminated;   /* 0/1 Python bool, 2/3 numpy bool, 255 in the extras */
    uint8_t truncated;
    uint8_t pad[3];
    double reward;        /* read as int64 for the integer reward tags */
} sb_step_reply;

_Static_assert(sizeof(sb_step_reply) == 16, "the step reply head is 16 bytes");

/* One ring's control block: four cache lines so that the producer's and the consumer's hot
 * words never share a line (false sharing would cost a cache-line transfer per access).
 *
 * head  - bytes ever published by the producer. Written only by the producer, with release
 *         ordering AFTER the record bytes; the consumer reads it with acquire ordering, so
 *         the record bytes are visible once the new head is.
 * tail  - bytes ever consumed. Written only by the consumer, with release ordering after it
 *         finished reading the record; the producer reads it with acquire ordering before
 *         overwriting that space.
 * *_seq - futex words. The producer bumps data_seq after publishing (the consumer sleeps on
 *         it); the consumer bumps space_seq after releasing (a producer waiting for room
 *         sleeps on it).
 * *_sleepers - how many threads sleep (or are about to) on the matching futex, so a waker
 *         can skip the FUTEX_WAKE syscall when nobody sleeps. The seq_cst increment by the
 *         sleeper followed by its re-check of the condition, paired with the waker's seq_cst
 *         bump of *_seq followed by its load of *_sleepers, forms the Dekker-style handshake
 *         that prevents lost wake-ups: either the sleeper sees the new data, or the futex
 *         word changed and FUTEX_WAIT returns at once, or the waker sees a sleeper.
 */
typedef struct {
    _Alignas(SB_CACHELINE) uint64_t head;
    _Alignas(SB_CACHELINE) uint64_t tail;
    _Alignas(SB_CACHELINE) uint32_t data_seq;
    uint32_t data_sleepers;
    _Alignas(SB_CACHELINE) uint32_t space_seq;
    uint32_t space_sleepers;
} sb_ring_ctrl;

typedef struct {
    /* written once by the host at creation, validated by the server on attach */
    uint64_t magic;
    uint32_t layout_version;
    uint32_t header_size;
    uint64_t file_size;          /* header + both rings: the part the extension maps */
    uint64_t ring_offset[2];
    uint64_t ring_capacity[2];   /* powers of two */
    /* live words */
    _Alignas(SB_CACHELINE) uint32_t state[2];  /* enum sb_state, per side */
    uint32_t pid[2];             /* for diagnostics only (namespaces make pids relative) */
    uint32_t features[2];        /* enum sb_feature bits, per side */
    uint64_t heartbeat[2];       /* bumped by a side's heartbeat thread: it is not frozen */
    _Alignas(SB_CACHELINE) sb_ring_ctrl ring[2];
} sb_header;

_Static_assert(sizeof(sb_header) <= SB_HEADER_SIZE, "sb_header must fit its page");
_Static_assert(sizeof(sb_ring_ctrl) == 4 * SB_CACHELINE, "ring control is 4 cache lines");

#endif /* SHMBENCH_RING_H */
