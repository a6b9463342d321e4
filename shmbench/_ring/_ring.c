/*
 * shmbench/_ring/_ring.c -- shared-memory rings with futex wake-ups in one mapped file.
 *
 * The narrow API (see shmbench/_ring/_ring.pyi): a Channel maps a channel file (ring.h describes
 * its layout), sends and receives variable-length records on two SPSC rings, and waits
 * adaptively: spin for a bounded, learned budget, then FUTEX_WAIT in short slices, checking
 * between slices that the peer is still alive and that no signal is pending.
 *
 * The futexes are NOT process-private (no FUTEX_PRIVATE_FLAG): the kernel keys them by
 * inode + offset of the shared file, so they work across mount, PID, IPC, user and network
 * namespaces -- a process inside `apptainer exec --containall` or bwrap can wake the host.
 *
 * The peer is untrusted. Every word it can write is read once into a local, checked, and
 * only then used; geometry comes from this side's private copy, never from the header
 * after attach. A violation raises shmbench.errors.ProtocolError and nothing else.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifdef Py_LIMITED_API
/* Built a second time on Python's stable ABI (_ring_abi3.c, setup.py): one .so that every
 * CPython >= 3.11 loads, for a container whose Python is not the host's. The macros that
 * read object internals become the functions behind them (the full build keeps the macros:
 * they are on the hot path). */
#define PyBytes_AS_STRING PyBytes_AsString
#define PyBytes_GET_SIZE PyBytes_Size
#define PyDict_GET_SIZE PyDict_Size
#define PyFloat_AS_DOUBLE PyFloat_AsDouble
#define PyList_GET_SIZE PyList_Size
#define PyList_GET_ITEM PyList_GetItem
#define PyList_SET_ITEM(list, i, item) ((void)PyList_SetItem((list), (i), (item)))
#define SB_MODULE_NAME "shmbench._ring._ring_abi3"
#define SB_INIT PyInit__ring_abi3
#else
#define SB_MODULE_NAME "shmbench._ring._ring"
#define SB_INIT PyInit__ring
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ring.h"

/* ======================================================================================
 * Module state
 * ====================================================================================== */

typedef struct {
    PyObject *ProtocolError;
    PyObject *ChannelMismatch;
    PyObject *ChannelTimeout;
    PyObject *ChannelClosed;
    PyObject *PeerDied;
    PyObject *PeerStalled;
} sb_module_state;

static sb_module_state sb_state;

#define SB_MAX_DEATH_FDS 4
#define SB_DEFAULT_SLICE_NS   (50 * 1000 * 1000LL)     /* liveness checked this often */
#define SB_DEFAULT_SPIN_NS    (100 * 1000LL)
#define SB_SPIN_FLOOR_NS      (10 * 1000LL)
#define SB_YIELD_AFTER_NS     (20 * 1000LL)     /* a spin this long starts yielding... */
#define SB_YIELD_EVERY_NS     (10 * 1000LL)     /* ...this often */
#define SB_DEFAULT_MAX_MESSAGE ((uint64_t)256 << 20)
#define SB_DEFAULT_STALL_NS   (10 * 1000 * 1000 * 1000LL)  /* a peer this long without a heartbeat is frozen */
#define SB_HEARTBEAT_NS       (100 * 1000 * 1000LL)

/* ======================================================================================
 * Small helpers: time, cpu_relax, futex
 * ====================================================================================== */

static inline int64_t
sb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A wait's deadline on CLOCK_MONOTONIC, fixed once per Python call so that a message
 * made of many records (pads, fragments) and call()'s send + recv share ONE timeout:
 * a peer that trickles records cannot stretch a call past it. */
#define SB_FOREVER  INT64_MAX    /* timeout=None */
#define SB_NOWAIT   INT64_MIN    /* timeout=0: never block */

static inline void
sb_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static inline int
sb_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns)
{
    struct timespec ts;
    ts.tv_sec = timeout_ns / 1000000000LL;
    ts.tv_nsec = timeout_ns % 1000000000LL;
    /* shared (non-private) futex: keyed by the file's inode + offset */
    return (int)syscall(SYS_futex, addr, FUTEX_WAIT, expected, &ts, NULL, 0);
}

static inline void
sb_futex_wake(uint32_t *addr)
{
    syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

#define LOAD_ACQ(p)      atomic_load_explicit((_Atomic __typeof__(*(p)) *)(p), memory_order_acquire)
#define LOAD_RLX(p)      atomic_load_explicit((_Atomic __typeof__(*(p)) *)(p), memory_order_relaxed)
#define STORE_REL(p, v)  atomic_store_explicit((_Atomic __typeof__(*(p)) *)(p), (v), memory_order_release)
#define FETCH_ADD(p, v)  atomic_fetch_add_explicit((_Atomic __typeof__(*(p)) *)(p), (v), memory_order_seq_cst)
#define LOAD_SC(p)       atomic_load_explicit((_Atomic __typeof__(*(p)) *)(p), memory_order_seq_cst)
#define STORE_SC(p, v)   atomic_store_explicit((_Atomic __typeof__(*(p)) *)(p), (v), memory_order_seq_cst)
#define XCHG(p, v)       atomic_exchange_explicit((_Atomic __typeof__(*(p)) *)(p), (v), memory_order_seq_cst)

static inline uint64_t
sb_round_up(uint64_t n, uint64_t a)
{
    return (n + a - 1) & ~(a - 1);
}

/* ======================================================================================
 * Mapping: owns the mmap; every memoryview handed out references it
 * ====================================================================================== */

/* A Mapping exports buffers over sub-ranges of the mapped file. The memoryviews that
 * recv() and reserve() return hold a reference to it through the buffer protocol, so the
 * memory stays mapped while any view lives, even after Channel.close() (pyzmq's
 * Frame.buffer does the same). munmap happens when the last reference goes. */
typedef struct {
    PyObject_HEAD
    char *base;
    size_t size;
    /* the range the next buffer export covers; set just before PyMemoryView_FromObject
     * under the GIL, so no other export can interleave */
    size_t export_off;
    size_t export_len;
    int export_readonly;
} sb_mapping;

static int
sb_mapping_getbuffer(sb_mapping *self, Py_buffer *view, int flags)
{
    if (self->base == NULL) {
        PyErr_SetString(PyExc_BufferError, "mapping is closed");
        return -1;
    }
    size_t off = self->export_off, len = self->export_len;
    int ro = self->export_readonly;
    /* a plain memoryview(mapping) sees the whole mapping read-only */
    self->export_off = 0;
    self->export_len = self->size;
    self->export_readonly = 1;
    return PyBuffer_FillInfo(view, (PyObject *)self, self->base + off, (Py_ssize_t)len, ro, flags);
}

/* Free an instance of one of our types: a static type in the full build, a heap type (made
 * from a spec, which its instances own a reference to) on the stable ABI. */
static void
sb_free(PyObject *self)
{
#ifdef Py_LIMITED_API
    PyTypeObject *tp = Py_TYPE(self);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
#else
    Py_TYPE(self)->tp_free(self);
#endif
}

static void
sb_mapping_dealloc(sb_mapping *self)
{
    if (self->base != NULL)
        munmap(self->base, self->size);
    sb_free((PyObject *)self);
}

#define SB_MAPPING_DOC "A shared mapping of a channel file; kept alive by the views into it."
#ifdef Py_LIMITED_API
static PyType_Slot sb_mapping_slots[] = {
    {Py_tp_doc, (void *)SB_MAPPING_DOC},
    {Py_tp_dealloc, (void *)sb_mapping_dealloc},
    {Py_bf_getbuffer, (void *)sb_mapping_getbuffer},
    {0, NULL},
};
static PyType_Spec sb_mapping_spec = {
    .name = "shmbench._ring.Mapping",
    .basicsize = sizeof(sb_mapping),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = sb_mapping_slots,
};
static PyTypeObject *sb_MappingTypeP;
#else
static PyBufferProcs sb_mapping_as_buffer = {
    .bf_getbuffer = (getbufferproc)sb_mapping_getbuffer,
};

static PyTypeObject sb_MappingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmbench._ring.Mapping",
    .tp_basicsize = sizeof(sb_mapping),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = SB_MAPPING_DOC,
    .tp_dealloc = (destructor)sb_mapping_dealloc,
    .tp_as_buffer = &sb_mapping_as_buffer,
};
static PyTypeObject *sb_MappingTypeP = &sb_MappingType;
#endif

static PyObject *
sb_mapping_view(sb_mapping *m, size_t off, size_t len, int readonly)
{
    m->export_off = off;
    m->export_len = len;
    m->export_readonly = readonly;
    return PyMemoryView_FromObject((PyObject *)m);
}

/* ======================================================================================
 * Channel
 * ====================================================================================== */

typedef struct {
    /* private geometry (never re-read from shared memory) */
    char *data;
    uint64_t cap;
    uint64_t mask;
    sb_ring_ctrl *ctrl;
    /* private copy of the counter this side owns */
    uint64_t own;    /* head when we produce, tail when we consume */
    /* producer only: the consumer's tail as last read. Free space computed from it is a
     * lower bound (tail only grows), so the shared tail -- a cache line the consumer
     * writes on every release -- is re-read only when that bound is too small. */
    uint64_t seen_tail;
} sb_ring;

typedef struct {
    /* adaptive spin: the budget follows the typical wait, capped by spin_max */
    int64_t spin_max_ns;
    int adaptive;
    int64_t est_ns;          /* EWMA of waits that ended while spinning */
    int fail_streak;         /* consecutive spins that ended without data */
    int pause_left;          /* waits left that sleep without spinning */
    int pause_len;           /* the next pause, in waits */
    int64_t slice_ns;
    /* tracking (the side that owns a core and only waits, e.g. a host waiting for its
     * workers): spin twice the recent longest wait, spun or slept, never pausing; so a step
     * of any length below the cap -- the occasional reset included -- is waited for
     * spinning, run after run */
    int track;
    int64_t lat_ns;          /* EWMA of every completed wait (stats) */
    int64_t peak_ns;         /* the longest recent wait: jumps up, decays by 1/64 a wait */
    int64_t waits;           /* completed waits seen */
} sb_wait_policy;

typedef struct {
    PyObject_HEAD
    sb_mapping *mapping;
    sb_header *hdr;
    int role;                /* SB_HOST or SB_SERVER */
    sb_ring tx;              /* the ring we produce into */
    sb_ring rx;              /* the ring we consume from */
    uint64_t max_record;     /* largest payload of one record */
    uint64_t max_message;    /* largest reassembled message we accept */
    uint64_t pending_release;/* bytes of rx records handed out but not yet released */
    PyObject *partial;       /* bytes of a fragmented message being reassembled, or NULL */
    uint64_t partial_got;    /* how much of it has arrived */
    uint64_t reserved;       /* bytes reserved in tx, 0 when no reservation */
    uint64_t reserved_pos;
    sb_wait_policy wait;
    int death_fds[SB_MAX_DEATH_FDS];
    int n_death_fds;
    int peer_lock_fd;
    int broken;              /* a protocol error was seen: refuse further use */
    int closed;
    /* the peer's heartbeat, as last seen (only a peer announcing SB_FEATURE_HEARTBEAT) */
    int64_t stall_ns;        /* 0: never call a silent peer frozen */
    uint64_t hb_last;
    int64_t hb_seen_ns;
    /* this side's heartbeat thread (a server's): bumps hdr->heartbeat[role] without the GIL */
    pthread_t hb_thread;
    int hb_running;
    pid_t hb_pid;            /* the process that started it (a forked child must not join it) */
    uint32_t hb_stop;        /* a private futex word: 1 asks the thread to stop */
    int64_t hb_period_ns;
    /* complete messages sent and received: a call interrupted mid-wait leaves sent ahead */
    uint64_t n_sent, n_received;
    /* statistics */
    uint64_t n_spin_ok, n_spin_fail, n_sleeps, n_wakes, n_wakes_skipped;
} sb_channel;

/* wait outcomes computed without the GIL, turned into exceptions with it */
enum {
    SB_W_OK = 0,
    SB_W_TIMEOUT,
    SB_W_PEER_CLOSED,
    SB_W_PEER_DIED,
    SB_W_PROTOCOL,
    SB_W_STALLED,    /* the peer lives but its heartbeat stopped: stopped, or frozen */
    SB_W_SIGNAL,     /* a Python exception is already set */
};

static int
sb_check_usable(sb_channel *c)
{
    if (c->closed) {
        PyErr_SetString(sb_state.ChannelClosed, "channel is closed");
        return -1;
    }
    if (c->broken) {
        PyErr_SetString(sb_state.ProtocolError,
                        "channel is broken after a protocol error; close it");
        return -1;
    }
    return 0;
}

static int
sb_raise_outcome(sb_channel *c, int outcome, const char *what, const char *detail)
{
    switch (outcome) {
    case SB_W_TIMEOUT:
        PyErr_Format(sb_state.ChannelTimeout, "timed out waiting for %s", what);
        break;
    case SB_W_PEER_CLOSED:
        PyErr_Format(sb_state.ChannelClosed, "the peer closed the channel while waiting for %s", what);
        break;
    case SB_W_PEER_DIED:
        PyErr_Format(sb_state.PeerDied, "the peer died while this side waited for %s", what);
        break;
    case SB_W_STALLED:
        PyErr_Format(sb_state.PeerStalled,
                     "the peer has shown no heartbeat for %.1f s while this side waited for %s: it is "
                     "stopped or frozen", (double)c->stall_ns / 1e9, what);
        break;
    case SB_W_PROTOCOL:
        c->broken = 1;
        PyErr_Format(sb_state.ProtocolError, "protocol violation by the peer: %s",
                     detail ? detail : "bad ring state");
        break;
    case SB_W_SIGNAL:
        break;
    }
    return -1;
}

/* --------------------------------------------------------------------------------------
 * Ring conditions. Each returns 1 when ready, 0 when not, -1 on a protocol violation
 * (with *why set). They never take the GIL.
 * -------------------------------------------------------------------------------------- */

/* Consumer: bytes available in rx. */
static inline int
sb_rx_ready(sb_channel *c, uint64_t *avail, const char **why)
{
    uint64_t head = LOAD_ACQ(&c->rx.ctrl->head);
    uint64_t tail = c->rx.own;
    /* the peer owns head: it must not be behind our tail nor claim more than the ring */
    if (head < tail || head - tail > c->rx.cap || (head & (SB_RECORD_ALIGN - 1))) {
        *why = "producer head out of range";
        return -1;
    }
    *avail = head - tail;
    return *avail != 0;
}

/* Producer: room for `need` contiguous-or-not bytes in tx. */
static inline int
sb_tx_room(sb_channel *c, uint64_t need, const char **why)
{
    uint64_t head = c->tx.own;
    if (c->tx.cap - (head - c->tx.seen_tail) >= need)
        return 1;
    uint64_t tail = LOAD_ACQ(&c->tx.ctrl->tail);
    /* the peer owns tail: it never passes our head, never goes back, never lags a ring */
    if (tail > head || tail < c->tx.seen_tail || head - tail > c->tx.cap) {
        *why = "consumer tail out of range";
        return -1;
    }
    c->tx.seen_tail = tail;
    return c->tx.cap - (head - tail) >= need;
}

static inline int
sb_peer_closed(sb_channel *c)
{
    return LOAD_RLX(&c->hdr->state[1 - c->role]) == SB_STATE_CLOSED;
}

/* Is the peer alive? Death fds (a pidfd of the child, or the server's stdin pipe) report
 * any event when the peer is gone; the peer's lock file is flocked exclusively by a live
 * peer, so if we can take a shared lock the peer no longer holds it. */
static int
sb_peer_alive(sb_channel *c)
{
    if (c->n_death_fds > 0) {
        struct pollfd p[SB_MAX_DEATH_FDS];
        for (int i = 0; i < c->n_death_fds; i++) {
            p[i].fd = c->death_fds[i];
            p[i].events = POLLIN;
            p[i].revents = 0;
        }
        int r = poll(p, (nfds_t)c->n_death_fds, 0);
        if (r > 0)
            for (int i = 0; i < c->n_death_fds; i++)
                if (p[i].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL))
                    return 0;
    }
    if (c->peer_lock_fd >= 0) {
        if (flock(c->peer_lock_fd, LOCK_SH | LOCK_NB) == 0) {
            flock(c->peer_lock_fd, LOCK_UN);
            return 0;
        }
    }
    return 1;
}

/* Has the peer's heartbeat stood still for longer than stall_ns? Only a peer that announced
 * SB_FEATURE_HEARTBEAT is judged: a live process whose heartbeat thread stopped is stopped
 * (SIGSTOP) or frozen, while one busy in a long step -- even holding the GIL in C code for
 * minutes -- keeps beating. */
static int
sb_peer_stalled(sb_channel *c, int64_t now)
{
    if (c->stall_ns <= 0 || !(LOAD_RLX(&c->hdr->features[1 - c->role]) & SB_FEATURE_HEARTBEAT))
        return 0;
    uint64_t hb = LOAD_RLX(&c->hdr->heartbeat[1 - c->role]);
    if (hb != c->hb_last || c->hb_seen_ns == 0) {
        c->hb_last = hb;
        c->hb_seen_ns = now;
        return 0;
    }
    return now - c->hb_seen_ns > c->stall_ns;
}

/* --------------------------------------------------------------------------------------
 * The wait: spin for the adaptive budget, then futex-wait in slices.
 * `space` selects the producer wait (room for `need` bytes in tx) over the consumer wait
 * (any bytes in rx). Called with the GIL held; releases it while waiting.
 * -------------------------------------------------------------------------------------- */

static inline int
sb_cond(sb_channel *c, int space, uint64_t need, const char **why)
{
    uint64_t avail;
    return space ? sb_tx_room(c, need, why) : sb_rx_ready(c, &avail, why);
}

/* The adaptive spin budget: twice the typical wait, capped. It learns from waits that ended
 * while spinning, and from waits whose spin gave up just too early (the data came within
 * the cap); not from longer ones: those also measured wake-ups (tens of us on a halted vCPU)
 * and learning from them made both sides' estimates grow until neither spun any more. Spins
 * that keep failing (a slow peer, or one that shares our core) pause spinning for a number
 * of waits that doubles on every repeat; the last wait of a pause probes with the full
 * budget, and one success ends the pausing. */
static int64_t
sb_spin_budget(sb_wait_policy *w)
{
    if (w->spin_max_ns <= 0)
        return 0;
    if (w->track) {
        int64_t t = w->waits < 4 ? w->spin_max_ns : 2 * w->peak_ns;   /* the first waits: the cap */
        if (t < SB_SPIN_FLOOR_NS)
            t = SB_SPIN_FLOOR_NS;
        return t < w->spin_max_ns ? t : w->spin_max_ns;
    }
    if (!w->adaptive)
        return w->spin_max_ns;
    if (w->pause_left > 0)
        return --w->pause_left == 0 ? w->spin_max_ns : 0;
    int64_t b = 2 * w->est_ns;
    if (b < SB_SPIN_FLOOR_NS)
        b = SB_SPIN_FLOOR_NS;
    return b < w->spin_max_ns ? b : w->spin_max_ns;
}

/* The budget the next wait would spin, without consuming a pause (for stats()). */
static int64_t
sb_spin_peek(const sb_wait_policy *w)
{
    sb_wait_policy copy = *w;
    return sb_spin_budget(&copy);
}

static void
sb_spin_learn(sb_wait_policy *w, int ok, int64_t elapsed)
{
    if (!w->adaptive)
        return;
    if (ok) {
        w->est_ns += (elapsed - w->est_ns) / 8;
        w->fail_streak = 0;
        w->pause_len = 16;
    } else if (++w->fail_streak >= 4) {
        w->fail_streak = 0;
        w->pause_left = w->pause_len;
        if (w->pause_len < 1024)
            w->pause_len *= 2;
    }
}

/* Every completed wait, for tracking and for stats(): an EWMA of how long waits take. */
static inline void
sb_track(sb_wait_policy *w, int64_t elapsed)
{
    w->lat_ns = w->waits == 0 ? elapsed : w->lat_ns + (elapsed - w->lat_ns) / 8;
    if (w->waits == 0 || elapsed >= w->peak_ns)
        w->peak_ns = elapsed;
    else
        w->peak_ns -= (w->peak_ns - elapsed) / 64;
    w->waits++;
}

static int
sb_wait(sb_channel *c, int space, uint64_t need, int64_t deadline, const char *what)
{
    const char *why = NULL;
    int r = sb_cond(c, space, need, &why);
    if (r > 0)
        return 0;
    if (r < 0)
        return sb_raise_outcome(c, SB_W_PROTOCOL, what, why);
    if (sb_peer_closed(c))
        return sb_raise_outcome(c, SB_W_PEER_CLOSED, what, NULL);
    if (deadline == SB_NOWAIT)
        return sb_raise_outcome(c, SB_W_TIMEOUT, what, NULL);

    sb_ring_ctrl *ctl = space ? c->tx.ctrl : c->rx.ctrl;
    uint32_t *seq = space ? &ctl->space_seq : &ctl->data_seq;
    uint32_t *sleepers = space ? &ctl->space_sleepers : &ctl->data_sleepers;
    int outcome = SB_W_OK;

    PyThreadState *ts = PyEval_SaveThread();
    int64_t t0 = sb_now_ns();
    int64_t last_check = t0;
    int64_t budget = sb_spin_budget(&c->wait);

    /* spin: a cache-line poll, checking the clock every few iterations. A spin that runs
     * long yields the CPU now and then: if the peer is waiting for this very core (more
     * runnable processes than cores), sched_yield lets it run instead of leaving it queued
     * until our spin or our time slice ends -- the milliseconds-per-step cliff. Short
     * spins, the common case, never make the syscall. */
    if (budget > 0) {
        int64_t spin_end = t0 + budget;
        int64_t next_yield = t0 + SB_YIELD_AFTER_NS;
        int64_t now = t0;
        for (;;) {
            for (int i = 0; i < 16; i++) {
                r = sb_cond(c, space, need, &why);
                if (r != 0)
                    goto spun;
                sb_cpu_relax();
            }
            now = sb_now_ns();
            if (now >= spin_end || now >= deadline || sb_peer_closed(c))
                break;
            if (now >= next_yield) {
                sched_yield();
                next_yield = now + SB_YIELD_EVERY_NS;
            }
        }
    spun:
        if (r != 0) {
            int64_t spun_ns = sb_now_ns() - t0;
            c->n_spin_ok++;
            sb_spin_learn(&c->wait, 1, spun_ns);
            sb_track(&c->wait, spun_ns);
            goto done;
        }
        c->n_spin_fail++;
    }

    /* block: FUTEX_WAIT in slices; between slices, liveness and signals. The rings are
     * single-producer single-consumer, so at most one thread sleeps on a futex word and
     * *sleepers is a flag: set (seq_cst) before the re-check, cleared by the waker when it
     * wakes us (so a woken sleeper that has not run yet costs the next sender no syscall)
     * or by us when we stop waiting. */
    for (;;) {
        STORE_SC(sleepers, 1);
        uint32_t s = LOAD_SC(seq);
        r = sb_cond(c, space, need, &why);
        if (r != 0) {
            STORE_SC(sleepers, 0);
            break;
        }
        if (sb_peer_closed(c)) {
            STORE_SC(sleepers, 0);
            outcome = SB_W_PEER_CLOSED;
            break;
        }
        int64_t now = sb_now_ns();
        if (now >= deadline) {
            STORE_SC(sleepers, 0);
            outcome = SB_W_TIMEOUT;
            break;
        }
        int64_t slice = deadline - now < c->wait.slice_ns ? deadline - now : c->wait.slice_ns;
        c->n_sleeps++;
        int rc = sb_futex_wait(seq, s, slice);
        int err = errno;
        STORE_SC(sleepers, 0);
        /* woken, or the word changed before we slept: re-check -- but still look at
         * liveness and signals once a slice, or a peer that keeps bumping the word
         * (hostile, or a stream of partial progress) would starve Ctrl-C */
        int64_t after = sb_now_ns();
        if ((rc == 0 || err == EAGAIN) && after - last_check < c->wait.slice_ns)
            continue;
        last_check = after;
        /* slice over or interrupted: is the peer alive, is a signal pending? */
        r = sb_cond(c, space, need, &why);
        if (r != 0)
            break;
        if (!sb_peer_alive(c)) {
            outcome = SB_W_PEER_DIED;
            break;
        }
        if (sb_peer_stalled(c, after)) {
            outcome = SB_W_STALLED;
            break;
        }
        PyEval_RestoreThread(ts);
        int sig = PyErr_CheckSignals();
        ts = PyEval_SaveThread();
        if (sig < 0) {
            outcome = SB_W_SIGNAL;
            break;
        }
    }
    if (outcome == SB_W_OK) {
        int64_t elapsed = sb_now_ns() - t0;
        sb_track(&c->wait, elapsed);
        /* the spin gave up, then the data came: soon after (within the cap), the budget was
         * just too small -- learn the wait, as the spin would have; later, spinning could not
         * have helped -- a failure */
        if (budget > 0)
            sb_spin_learn(&c->wait, elapsed <= c->wait.spin_max_ns, elapsed);
    }
done:
    PyEval_RestoreThread(ts);
    if (r < 0)
        outcome = SB_W_PROTOCOL;
    if (outcome != SB_W_OK)
        return sb_raise_outcome(c, outcome, what, why);
    return 0;
}

/* --------------------------------------------------------------------------------------
 * Producing
 * -------------------------------------------------------------------------------------- */

/* After publishing: bump the futex word, then wake the peer only if it sleeps there. The
 * plain load keeps the common case (nobody sleeps) free of a locked instruction; the
 * exchange makes sure one sleep costs one FUTEX_WAKE, however many messages follow before
 * the woken thread runs. */
static inline void
sb_notify(sb_channel *c, uint32_t *seq, uint32_t *sleepers)
{
    FETCH_ADD(seq, 1);
    if (LOAD_SC(sleepers) != 0 && XCHG(sleepers, 0) != 0) {
        c->n_wakes++;
        sb_futex_wake(seq);
    } else {
        c->n_wakes_skipped++;
    }
}

/* Make room for one record of `payload` bytes at a contiguous position; writes a PAD
 * record to the end of the ring when the record would straddle it. Returns the ring
 * position of the record header, or -1 with an exception set. */
static int64_t
sb_tx_place(sb_channel *c, uint64_t payload, int64_t deadline)
{
    uint64_t need = SB_RECORD_HEADER + sb_round_up(payload, SB_RECORD_ALIGN);
    uint64_t pos = c->tx.own & c->tx.mask;
    uint64_t contiguous = c->tx.cap - pos;
    if (need > contiguous) {
        /* pad to the end first (publishing it), then wait for room at position 0 */
        if (sb_wait(c, 1, contiguous, deadline, "room in the ring") < 0)
            return -1;
        uint32_t *h = (uint32_t *)(c->tx.data + pos);
        h[0] = (uint32_t)(contiguous - SB_RECORD_HEADER);
        h[1] = SB_REC_PAD;
        c->tx.own += contiguous;
        STORE_REL(&c->tx.ctrl->head, c->tx.own);
        pos = 0;
    }
    if (sb_wait(c, 1, need, deadline, "room in the ring") < 0)
        return -1;
    return (int64_t)pos;
}

static void
sb_tx_publish(sb_channel *c, uint64_t pos, uint64_t payload, uint32_t kind)
{
    uint32_t *h = (uint32_t *)(c->tx.data + pos);
    h[0] = (uint32_t)payload;
    h[1] = kind;
    c->tx.own += SB_RECORD_HEADER + sb_round_up(payload, SB_RECORD_ALIGN);
    /* release: the record bytes above become visible no later than the new head */
    STORE_REL(&c->tx.ctrl->head, c->tx.own);
    sb_notify(c, &c->tx.ctrl->data_seq, &c->tx.ctrl->data_sleepers);
}

static int
sb_send_bytes(sb_channel *c, const char *buf, uint64_t len, int64_t deadline)
{
    if (len <= c->max_record) {
        int64_t pos = sb_tx_place(c, len, deadline);
        if (pos < 0)
            return -1;
        memcpy(c->tx.data + pos + SB_RECORD_HEADER, buf, len);
        sb_tx_publish(c, (uint64_t)pos, len, SB_REC_MESSAGE);
        c->n_sent++;
        return 0;
    }
    /* fragments of a quarter ring: the consumer drains while we fill */
    uint64_t chunk = c->tx.cap / 4 - 2 * SB_RECORD_HEADER;
    uint64_t sent = 0;
    while (sent < len) {
        uint64_t extra = sent == 0 ? 8 : 0;
        uint64_t n = len - sent < chunk ? len - sent : chunk;
        int64_t pos = sb_tx_place(c, n + extra, deadline);
        if (pos < 0) {
            if (sent > 0) {
                /* the peer holds the first fragments of a message that will never be
                 * finished: the stream is out of step, so no later send may follow */
                c->broken = 1;
                if (PyErr_ExceptionMatches(sb_state.ChannelTimeout))
                    PyErr_Format(sb_state.ChannelTimeout,
                                 "timed out after sending %llu of %llu bytes of a fragmented "
                                 "message; the channel is unusable now (close it)",
                                 (unsigned long long)sent, (unsigned long long)len);
            }
            return -1;
        }
        char *dst = c->tx.data + pos + SB_RECORD_HEADER;
        if (extra)
            memcpy(dst, &len, 8);
        memcpy(dst + extra, buf + sent, n);
        uint32_t kind = sent == 0 ? SB_REC_FIRST : (sent + n == len ? SB_REC_LAST : SB_REC_MIDDLE);
        sent += n;
        sb_tx_publish(c, (uint64_t)pos, n + extra, kind);
    }
    c->n_sent++;
    return 0;
}

/* --------------------------------------------------------------------------------------
 * Consuming
 * -------------------------------------------------------------------------------------- */

static void
sb_rx_release(sb_channel *c)
{
    if (c->pending_release == 0)
        return;
    c->rx.own += c->pending_release;
    c->pending_release = 0;
    /* release: we are done reading the old record before the producer may reuse it */
    STORE_REL(&c->rx.ctrl->tail, c->rx.own);
    sb_notify(c, &c->rx.ctrl->space_seq, &c->rx.ctrl->space_sleepers);
}

/* Reads the next record header, skipping a PAD. On success fills *pos (of the payload),
 * *len, *kind and leaves the record's size in pending_release. */
static int
sb_rx_next(sb_channel *c, int64_t deadline, uint64_t *pos, uint64_t *len, uint32_t *kind)
{
    for (;;) {
        if (sb_wait(c, 0, 0, deadline, "a message") < 0)
            return -1;
        uint64_t avail;
        const char *why = NULL;
        if (sb_rx_ready(c, &avail, &why) < 0)
            return sb_raise_outcome(c, SB_W_PROTOCOL, "a message", why);
        uint64_t p = c->rx.own & c->rx.mask;
        uint64_t contiguous = c->rx.cap - p;
        /* read the header ONCE into locals; the peer may rewrite it at any time */
        uint32_t h[2];
        memcpy(h, c->rx.data + p, sizeof h);
        uint64_t size = SB_RECORD_HEADER + sb_round_up(h[0], SB_RECORD_ALIGN);
        if (size > avail || size > contiguous)
            return sb_raise_outcome(c, SB_W_PROTOCOL, "a message", "record overruns the ring");
        if (h[1] == SB_REC_PAD) {
            /* a pad fills the ring to its end, and never starts at 0 (a record always fits
             * a whole ring): so at most one pad precedes a record, and a peer cannot keep
             * this loop busy -- with the GIL held -- by streaming pads */
            if (size != contiguous || p == 0)
                return sb_raise_outcome(c, SB_W_PROTOCOL, "a message", "misplaced pad record");
            c->pending_release = size;
            sb_rx_release(c);
            continue;
        }
        if (h[1] < SB_REC_MESSAGE || h[1] > SB_REC_LAST)
            return sb_raise_outcome(c, SB_W_PROTOCOL, "a message", "unknown record kind");
        *pos = p + SB_RECORD_HEADER;
        *len = h[0];
        *kind = h[1];
        c->pending_release = size;
        return 0;
    }
}

/* Receives one message: a zero-copy read-only view for a single record (valid until the
 * next recv or release), a reassembled bytes object for a fragmented one.
 *
 * A wait that ends mid-message (timeout=0 polling, a timeout, Ctrl-C) keeps the part
 * reassembled so far in c->partial; the next recv() goes on from there, so polling never
 * loses a fragment nor reads the stream out of step. */
static PyObject *
sb_recv_message(sb_channel *c, int64_t deadline)
{
    uint64_t pos, len;
    uint32_t kind;
    sb_rx_release(c);
    if (c->partial == NULL) {
        if (sb_rx_next(c, deadline, &pos, &len, &kind) < 0)
            return NULL;
        if (kind == SB_REC_MESSAGE) {
            PyObject *view = sb_mapping_view(c->mapping, (size_t)(c->rx.data - c->mapping->base) + pos, len, 1);
            if (view != NULL)
                c->n_received++;
            return view;
        }
        /* the producer fragments only what exceeds ITS max_record (half of the ring we
         * consume), in fragments of at least an eighth of that ring: so reassembly takes
         * a bounded number of records however the peer chooses them */
        uint64_t peer_max_record = c->rx.cap / 2 - SB_RECORD_HEADER;
        if (kind != SB_REC_FIRST || len < 8 + c->rx.cap / 8)
            return sb_raise_outcome(c, SB_W_PROTOCOL, "a message", "fragment out of order"), NULL;
        uint64_t total;
        memcpy(&total, c->rx.data + pos, 8);
        if (total > c->max_message || total <= peer_max_record)
            return sb_raise_outcome(c, SB_W_PROTOCOL, "a message",
                                    "fragmented message larger than max_message (or needlessly fragmented)"),
                   NULL;
        if (len - 8 >= total)
            return sb_raise_outcome(c, SB_W_PROTOCOL, "a message", "fragment overruns its message"), NULL;
        PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
        if (out == NULL)
            return NULL;
        memcpy(PyBytes_AS_STRING(out), c->rx.data + pos + 8, len - 8);
        c->partial = out;
        c->partial_got = len - 8;
    }
    PyObject *out = c->partial;
    uint64_t total = (uint64_t)PyBytes_GET_SIZE(out);
    char *dst = PyBytes_AS_STRING(out);
    while (c->partial_got < total) {
        uint64_t got = c->partial_got;
        sb_rx_release(c);
        if (sb_rx_next(c, deadline, &pos, &len, &kind) < 0)
            return NULL;   /* c->partial kept: the next recv() resumes */
        if ((kind != SB_REC_MIDDLE && kind != SB_REC_LAST) || len > total - got || len == 0 ||
            (kind == SB_REC_LAST) != (got + len == total) ||
            (kind == SB_REC_MIDDLE && len < c->rx.cap / 8)) {
            c->partial = NULL;
            Py_DECREF(out);
            return sb_raise_outcome(c, SB_W_PROTOCOL, "a message", "bad fragment sequence"), NULL;
        }
        memcpy(dst + got, c->rx.data + pos, len);
        c->partial_got = got + len;
    }
    c->partial = NULL;
    sb_rx_release(c);
    PyObject *mv = PyMemoryView_FromObject(out);
    Py_DECREF(out);
    if (mv != NULL)
        c->n_received++;
    return mv;
}

/* ======================================================================================
 * Channel: Python methods
 * ====================================================================================== */

/* timeout (None, 0 or seconds) -> a deadline (SB_FOREVER, SB_NOWAIT or a time) */
static int
sb_parse_timeout(PyObject *obj, int64_t *out)
{
    if (obj == NULL || obj == Py_None) {
        *out = SB_FOREVER;
        return 0;
    }
    double t = PyFloat_AsDouble(obj);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    if (!(t >= 0.0)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be None or a number >= 0");
        return -1;
    }
    if (t > 1e9)
        *out = SB_FOREVER;
    else if (t == 0.0)
        *out = SB_NOWAIT;
    else
        *out = sb_now_ns() + (int64_t)(t * 1e9);
    return 0;
}

static int
sb_check_capacity(uint64_t cap, const char *name)
{
    if (cap < SB_MIN_CAPACITY || cap > SB_MAX_CAPACITY || (cap & (cap - 1))) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be a power of two between %u and 2**31, got %llu",
                     name, SB_MIN_CAPACITY, (unsigned long long)cap);
        return -1;
    }
    return 0;
}

static void
sb_channel_setup_rings(sb_channel *c, const uint64_t off[2], const uint64_t cap[2])
{
    int tx = c->role == SB_HOST ? SB_REQUEST : SB_REPLY;
    int rx = 1 - tx;
    char *base = c->mapping->base;
    c->tx.data = base + off[tx];
    c->tx.cap = cap[tx];
    c->tx.mask = cap[tx] - 1;
    c->tx.ctrl = &c->hdr->ring[tx];
    c->rx.data = base + off[rx];
    c->rx.cap = cap[rx];
    c->rx.mask = cap[rx] - 1;
    c->rx.ctrl = &c->hdr->ring[rx];
    uint64_t smaller = cap[0] < cap[1] ? cap[0] : cap[1];
    (void)smaller;
    c->max_record = c->tx.cap / 2 - SB_RECORD_HEADER;
}

static int
sb_channel_init(sb_channel *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "role", "create", "request_capacity", "reply_capacity",
                             "max_message", NULL};
    int fd, role, create = 0;
    unsigned long long req_cap = 1 << 20, rep_cap = 1 << 22, max_message = SB_DEFAULT_MAX_MESSAGE;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ii|$pKKK", kwlist, &fd, &role, &create,
                                     &req_cap, &rep_cap, &max_message))
        return -1;
    if (self->mapping != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Channel.__init__ called twice");
        return -1;
    }
    if (role != SB_HOST && role != SB_SERVER) {
        PyErr_SetString(PyExc_ValueError, "role must be HOST (0) or SERVER (1)");
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    uint64_t off[2], cap[2], size;
    if (create) {
        if (role != SB_HOST) {
            PyErr_SetString(PyExc_ValueError, "only the host creates a channel");
            return -1;
        }
        if (sb_check_capacity(req_cap, "request_capacity") < 0 ||
            sb_check_capacity(rep_cap, "reply_capacity") < 0)
            return -1;
        cap[0] = req_cap;
        cap[1] = rep_cap;
        off[0] = SB_HEADER_SIZE;
        off[1] = SB_HEADER_SIZE + req_cap;
        size = off[1] + rep_cap;
        if ((uint64_t)st.st_size < size) {
            PyErr_Format(sb_state.ChannelMismatch,
                         "channel file is %lld bytes, the layout needs %llu (reserve it first)",
                         (long long)st.st_size, (unsigned long long)size);
            return -1;
        }
    } else {
        /* attach: validate the header as written by the creator */
        sb_header h;
        if ((uint64_t)st.st_size < SB_HEADER_SIZE ||
            pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
            PyErr_SetString(sb_state.ChannelMismatch, "channel file is too short for a header");
            return -1;
        }
        if (h.magic != SB_MAGIC) {
            PyErr_SetString(sb_state.ChannelMismatch, "not a shmbench channel file (bad magic)");
            return -1;
        }
        if (h.layout_version != SB_LAYOUT_VERSION || h.header_size != SB_HEADER_SIZE) {
            PyErr_Format(sb_state.ChannelMismatch,
                         "channel layout version %u (header %u bytes) but this shmbench speaks "
                         "version %u (header %u bytes): use the same shmbench release on both sides",
                         h.layout_version, h.header_size, SB_LAYOUT_VERSION, SB_HEADER_SIZE);
            return -1;
        }
        for (int i = 0; i < 2; i++) {
            cap[i] = h.ring_capacity[i];
            off[i] = h.ring_offset[i];
            if (cap[i] < SB_MIN_CAPACITY || cap[i] > SB_MAX_CAPACITY || (cap[i] & (cap[i] - 1)) ||
                off[i] < SB_HEADER_SIZE || off[i] % SB_CACHELINE || off[i] > h.file_size ||
                cap[i] > h.file_size - off[i]) {
                PyErr_SetString(sb_state.ChannelMismatch, "channel header has an impossible ring geometry");
                return -1;
            }
        }
        if ((off[0] < off[1] && off[0] + cap[0] > off[1]) || (off[1] < off[0] && off[1] + cap[1] > off[0]) ||
            off[0] == off[1]) {
            PyErr_SetString(sb_state.ChannelMismatch, "channel header has overlapping rings");
            return -1;
        }
        size = h.file_size;
        if ((uint64_t)st.st_size < size) {
            PyErr_Format(sb_state.ChannelMismatch,
                         "channel file is %lld bytes but its header claims %llu",
                         (long long)st.st_size, (unsigned long long)size);
            return -1;
        }
    }
    void *base = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    sb_mapping *m = PyObject_New(sb_mapping, sb_MappingTypeP);
    if (m == NULL) {
        munmap(base, (size_t)size);
        return -1;
    }
    m->base = base;
    m->size = (size_t)size;
    m->export_off = 0;
    m->export_len = (size_t)size;
    m->export_readonly = 1;
    self->mapping = m;
    self->hdr = (sb_header *)base;
    self->role = role;
    if (create) {
        sb_header *h = self->hdr;
        memset(h, 0, sizeof *h);
        h->layout_version = SB_LAYOUT_VERSION;
        h->header_size = SB_HEADER_SIZE;
        h->file_size = size;
        for (int i = 0; i < 2; i++) {
            h->ring_offset[i] = off[i];
            h->ring_capacity[i] = cap[i];
        }
        /* magic last (release): an attacher that sees it sees a complete header */
        STORE_REL(&h->magic, SB_MAGIC);
    }
    sb_channel_setup_rings(self, off, cap);
    /* start from the counters as they are (zero for a new channel) */
    self->tx.own = LOAD_ACQ(&self->tx.ctrl->head);
    self->tx.seen_tail = LOAD_ACQ(&self->tx.ctrl->tail);
    self->rx.own = LOAD_ACQ(&self->rx.ctrl->tail);
    if (!create && (self->tx.own != 0 || self->rx.own != 0 || self->tx.seen_tail != 0)) {
        PyErr_SetString(sb_state.ChannelMismatch, "channel was already used (counters not zero)");
        return -1;
    }
    self->max_message = max_message;
    self->wait.spin_max_ns = SB_DEFAULT_SPIN_NS;
    self->wait.adaptive = 1;
    self->wait.est_ns = SB_DEFAULT_SPIN_NS / 4;
    self->wait.pause_len = 16;
    self->wait.slice_ns = SB_DEFAULT_SLICE_NS;
    self->stall_ns = SB_DEFAULT_STALL_NS;
    self->peer_lock_fd = -1;
    self->hdr->pid[role] = (uint32_t)getpid();
    STORE_REL(&self->hdr->state[role], (uint32_t)SB_STATE_OPEN);
    return 0;
}

/* --------------------------------------------------------------------------------------
 * Heartbeat: a sign of life that needs no GIL. The thread bumps this side's heartbeat word
 * every period; the peer's waits (sb_peer_stalled) call a live but silent side frozen. It
 * sleeps on a private futex word, so stopping it is a store and a wake, not a period.
 * -------------------------------------------------------------------------------------- */

static void *
sb_heartbeat_main(void *arg)
{
    sb_channel *c = (sb_channel *)arg;
    uint64_t *beat = &c->hdr->heartbeat[c->role];
    struct timespec ts;
    ts.tv_sec = c->hb_period_ns / 1000000000LL;
    ts.tv_nsec = c->hb_period_ns % 1000000000LL;
    while (LOAD_ACQ(&c->hb_stop) == 0) {
        atomic_fetch_add_explicit((_Atomic uint64_t *)beat, 1, memory_order_relaxed);
        syscall(SYS_futex, &c->hb_stop, FUTEX_WAIT_PRIVATE, 0, &ts, NULL, 0);
    }
    return NULL;
}

static void
sb_heartbeat_stop(sb_channel *c)
{
    if (!c->hb_running)
        return;
    c->hb_running = 0;
    if (c->hb_pid != getpid())
        return;   /* a forked child: the thread lives (and is joined) in the parent only */
    STORE_REL(&c->hb_stop, 1);
    syscall(SYS_futex, &c->hb_stop, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    pthread_join(c->hb_thread, NULL);
}

static void
sb_channel_do_close(sb_channel *self)
{
    if (self->closed || self->mapping == NULL)
        return;
    self->closed = 1;
    sb_heartbeat_stop(self);
    /* tell the peer, then wake it wherever it sleeps so it notices now, not after a slice */
    STORE_REL(&self->hdr->state[self->role], (uint32_t)SB_STATE_CLOSED);
    for (int i = 0; i < 2; i++) {
        FETCH_ADD(&self->hdr->ring[i].data_seq, 1);
        FETCH_ADD(&self->hdr->ring[i].space_seq, 1);
        sb_futex_wake(&self->hdr->ring[i].data_seq);
        sb_futex_wake(&self->hdr->ring[i].space_seq);
    }
    if (self->peer_lock_fd >= 0)
        close(self->peer_lock_fd);
    self->peer_lock_fd = -1;
    for (int i = 0; i < self->n_death_fds; i++)
        close(self->death_fds[i]);
    self->n_death_fds = 0;
}

static void
sb_channel_dealloc(sb_channel *self)
{
    sb_channel_do_close(self);
    Py_CLEAR(self->partial);
    Py_XDECREF((PyObject *)self->mapping);
    sb_free((PyObject *)self);
}

PyDoc_STRVAR(sb_send_doc,
"send($self, data, /, timeout=None)\n--\n\n"
"Send one message (any bytes-like object). Waits for room when the ring is full.\n"
"Messages larger than half the ring travel as fragments; a timeout after some of them\n"
"were sent leaves the channel unusable (the peer holds half a message).");

/* The (data, timeout=None) arguments of send() and call(): parse them and send the data.
 * 0 sent (*deadline holds the call's deadline), -1 with an exception set. */
static int
sb_send_from_args(sb_channel *self, PyObject *args, PyObject *kwds, const char *name, int64_t *deadline)
{
    static char *kwlist[] = {"data", "timeout", NULL};
    Py_buffer buf;
    PyObject *tobj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|O", kwlist, &buf, &tobj))
        return -1;
    int rc = -1;
    if (sb_parse_timeout(tobj, deadline) == 0 && sb_check_usable(self) == 0) {
        if (self->reserved)
            PyErr_Format(PyExc_RuntimeError, "%s() while a reservation is open; commit() it first", name);
        else
            rc = sb_send_bytes(self, buf.buf, (uint64_t)buf.len, *deadline);
    }
    PyBuffer_Release(&buf);
    return rc;
}

static PyObject *
sb_channel_send(sb_channel *self, PyObject *args, PyObject *kwds)
{
    int64_t deadline;
    if (sb_send_from_args(self, args, kwds, "send", &deadline) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(sb_recv_doc,
"recv($self, /, timeout=None)\n--\n\n"
"Receive the next message as a read-only memoryview. A single-record message is a\n"
"zero-copy view into the ring, valid until the next recv() or release(); it keeps the\n"
"mapping alive. A fragmented message comes back as a copy; a wait that ends in its middle\n"
"keeps what arrived and the next recv() resumes. Raises ChannelTimeout, ChannelClosed,\n"
"PeerDied or ProtocolError.");

static PyObject *
sb_channel_recv(sb_channel *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *tobj = Py_None;
    int64_t timeout;   /* the deadline */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O", kwlist, &tobj))
        return NULL;
    if (sb_parse_timeout(tobj, &timeout) < 0 || sb_check_usable(self) < 0)
        return NULL;
    return sb_recv_message(self, timeout);
}

PyDoc_STRVAR(sb_call_doc,
"call($self, data, /, timeout=None)\n--\n\n"
"send(data) then recv(): one round trip in one Python call. The timeout bounds the whole\n"
"round trip.");

static PyObject *
sb_channel_call(sb_channel *self, PyObject *args, PyObject *kwds)
{
    int64_t deadline;
    if (sb_send_from_args(self, args, kwds, "call", &deadline) < 0)
        return NULL;
    return sb_recv_message(self, deadline);
}

/* --------------------------------------------------------------------------------------
 * Step fast paths: the common single-env step (an ndarray obs exactly of the slab's dtype
 * and shape, a float reward, bool flags, an empty info) without the Python that builds
 * and parses its reply -- about a microsecond per step on a ~7 us env. Anything else makes
 * them return None (reply_step) or the raw reply (call_step) for the Python path.
 * -------------------------------------------------------------------------------------- */

/* numpy's ndarray object as its C headers lay it out (PyArrayObject_fields, the same in
 * numpy 1.x and 2.x). Read only for objects whose type is exactly numpy.ndarray, and only
 * once sb_ndarray_layout_ok() has seen the fields agree with the buffer protocol. Why: a
 * buffer export of an array builds its format string and shape anew (numpy caches them
 * per array, so a fresh array -- most envs return one per step -- pays every time): about
 * half a microsecond, a tenth of the whole round trip; the fields are a few loads. */
typedef struct {
    PyObject_HEAD
    char *data;
    int nd;
    Py_ssize_t *dimensions;
    Py_ssize_t *strides;
    PyObject *base;
    PyObject *descr;
    int flags;
} sb_ndarray_fields;
#define SB_NPY_C_CONTIGUOUS 0x0001

static PyObject *sb_ndarray_type = NULL;   /* numpy.ndarray, once numpy is imported */
static int sb_ndarray_layout = -1;         /* -1 unchecked, 0 differs (never read it), 1 agrees */

static int
sb_is_ndarray(PyObject *x)
{
    if (sb_ndarray_type == NULL) {
        PyObject *np = PyDict_GetItemString(PyImport_GetModuleDict(), "numpy");   /* borrowed */
        if (np == NULL)
            return 0;   /* numpy not imported: nothing is an ndarray */
        sb_ndarray_type = PyObject_GetAttrString(np, "ndarray");
        if (sb_ndarray_type == NULL) {
            PyErr_Clear();
            return 0;
        }
    }
    return (PyObject *)Py_TYPE(x) == sb_ndarray_type;
}

/* Whether numpy's fields are where sb_ndarray_fields says, checked once against the buffer
 * `buf` exported by the ndarray `arr`. */
static int
sb_ndarray_layout_ok(PyObject *arr, const Py_buffer *buf)
{
    if (sb_ndarray_layout < 0) {
        const sb_ndarray_fields *a = (const sb_ndarray_fields *)arr;
        int ok = a->data == (char *)buf->buf && a->nd == buf->ndim && (a->flags & SB_NPY_C_CONTIGUOUS) &&
                 buf->ndim >= 0 && buf->shape != NULL;
        for (int i = 0; ok && i < buf->ndim; i++)
            ok = a->dimensions[i] == buf->shape[i];
        sb_ndarray_layout = ok;
    }
    return sb_ndarray_layout;
}

/* Where `item`'s data is, if it is an ndarray exactly like `dst` (whose buffer is `out`)
 * minus `drop` leading dimensions: same dtype object, same shape, C-contiguous. NULL: not
 * that case (the caller asks the buffer protocol). */
static const char *
sb_array_like(PyObject *item, PyObject *dst, const Py_buffer *out, int drop)
{
    if (!sb_is_ndarray(dst) || Py_TYPE(item) != Py_TYPE(dst) || !sb_ndarray_layout_ok(dst, out))
        return NULL;
    const sb_ndarray_fields *a = (const sb_ndarray_fields *)item, *d = (const sb_ndarray_fields *)dst;
    if (a->descr != d->descr || a->nd != out->ndim - drop || !(a->flags & SB_NPY_C_CONTIGUOUS) || a->data == NULL)
        return NULL;
    for (int i = 0; i < a->nd; i++)
        if (a->dimensions[i] != out->shape[i + drop])
            return NULL;
    return a->data;
}

/* Copy `obs` into the slab array `dst` if both are C-contiguous buffers of one format and
 * shape. 1 copied, 0 not applicable (no exception set), -1 error. */
static int
sb_copy_exact(PyObject *obs, PyObject *dst)
{
    if (Py_TYPE(obs) != Py_TYPE(dst))
        return 0;
    Py_buffer src, out;
    if (PyObject_GetBuffer(dst, &out, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0)
        return -1;
    const char *data = sb_array_like(obs, dst, &out, 0);
    if (data != NULL) {
        if (data != (char *)out.buf)   /* an env writing into the slab itself: nothing to copy */
            memcpy(out.buf, data, (size_t)out.len);
        PyBuffer_Release(&out);
        return 1;
    }
    if (PyObject_GetBuffer(obs, &src, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Clear();   /* not contiguous (or no buffer): the Python path copies it */
        PyBuffer_Release(&out);
        return 0;
    }
    int same = src.len == out.len && src.itemsize == out.itemsize && src.ndim == out.ndim &&
               strcmp(src.format ? src.format : "B", out.format ? out.format : "B") == 0;
    for (int i = 0; same && i < src.ndim; i++)
        same = src.shape[i] == out.shape[i];
    if (same && src.buf != out.buf)
        memcpy(out.buf, src.buf, (size_t)src.len);
    PyBuffer_Release(&out);
    PyBuffer_Release(&src);
    return same;
}

PyDoc_STRVAR(sb_reply_step_doc,
"reply_step($self, obs, reward, terminated, truncated, info, dst, timeout=None, /)\n--\n\n"
"Server side. If the step result is the common case, copy obs into the slab array dst,\n"
"send the 16-byte step reply and wait for the next request (like call()); otherwise\n"
"return None and change nothing.");

static PyObject *
sb_channel_reply_step(sb_channel *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 6 || nargs > 7) {
        PyErr_SetString(PyExc_TypeError, "reply_step(obs, reward, terminated, truncated, info, dst, timeout=None)");
        return NULL;
    }
    PyObject *obs = args[0], *reward = args[1], *term = args[2], *trunc = args[3], *info = args[4];
    if (!PyFloat_CheckExact(reward) || !Py_IS_TYPE(term, &PyBool_Type) || !Py_IS_TYPE(trunc, &PyBool_Type) ||
        !PyDict_CheckExact(info) || PyDict_GET_SIZE(info) != 0)
        Py_RETURN_NONE;
    int64_t deadline;
    if (sb_parse_timeout(nargs > 6 ? args[6] : Py_None, &deadline) < 0 || sb_check_usable(self) < 0)
        return NULL;
    int copied = sb_copy_exact(obs, args[5]);
    if (copied <= 0) {
        if (copied == 0)
            Py_RETURN_NONE;
        return NULL;
    }
    sb_step_reply reply = {0};
    reply.terminated = term == Py_True;
    reply.truncated = trunc == Py_True;
    reply.reward = PyFloat_AS_DOUBLE(reward);
    if (sb_send_bytes(self, (const char *)&reply, sizeof reply, deadline) < 0)
        return NULL;
    return sb_recv_message(self, deadline);
}

PyDoc_STRVAR(sb_call_step_doc,
"call_step($self, request, dst, copy, timeout=None, /)\n--\n\n"
"Host side: call(request); if the reply is the common step case, return\n"
"(obs, reward, terminated, truncated, {}) with obs = dst.copy() (copy) or dst itself;\n"
"otherwise return the reply as call() would.");

static PyObject *
sb_channel_call_step(sb_channel *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 3 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "call_step(request, dst, copy, timeout=None)");
        return NULL;
    }
    int64_t deadline;
    if (sb_parse_timeout(nargs > 3 ? args[3] : Py_None, &deadline) < 0 || sb_check_usable(self) < 0)
        return NULL;
    int copy = PyObject_IsTrue(args[2]);
    if (copy < 0)
        return NULL;
    Py_buffer req;
    if (PyObject_GetBuffer(args[0], &req, PyBUF_SIMPLE) < 0)
        return NULL;
    if (self->reserved) {
        PyBuffer_Release(&req);
        PyErr_SetString(PyExc_RuntimeError, "call_step() while a reservation is open; commit() it first");
        return NULL;
    }
    int rc = sb_send_bytes(self, req.buf, (uint64_t)req.len, deadline);
    PyBuffer_Release(&req);
    if (rc < 0)
        return NULL;
    PyObject *mv = sb_recv_message(self, deadline);
    if (mv == NULL)
        return NULL;
    sb_step_reply r;
#ifdef Py_LIMITED_API
    Py_buffer vb;
    if (PyObject_GetBuffer(mv, &vb, PyBUF_SIMPLE) < 0) {
        Py_DECREF(mv);
        return NULL;
    }
    int is_head = vb.len == (Py_ssize_t)sizeof r;
    if (is_head)
        memcpy(&r, vb.buf, sizeof r);   /* once: the peer may rewrite it */
    PyBuffer_Release(&vb);
#else
    Py_buffer *view = PyMemoryView_GET_BUFFER(mv);
    int is_head = view->len == (Py_ssize_t)sizeof r;
    if (is_head)
        memcpy(&r, view->buf, sizeof r);   /* once: the peer may rewrite it */
#endif
    if (!is_head || args[1] == Py_None)
        return mv;
    if (r.status != SB_STATUS_OK || r.obs_tag != 0 || r.reward_tag != 0 || r.terminated > 1 || r.truncated > 1)
        return mv;
    Py_DECREF(mv);
    PyObject *obs = copy ? PyObject_CallMethod(args[1], "copy", NULL) : Py_NewRef(args[1]);
    if (obs == NULL)
        return NULL;
    PyObject *rew = PyFloat_FromDouble(r.reward);
    PyObject *info = PyDict_New();
    if (rew == NULL || info == NULL) {
        Py_DECREF(obs);
        Py_XDECREF(rew);
        Py_XDECREF(info);
        return NULL;
    }
    PyObject *out = PyTuple_Pack(5, obs, rew, r.terminated ? Py_True : Py_False,
                                 r.truncated ? Py_True : Py_False, info);
    Py_DECREF(obs);
    Py_DECREF(rew);
    Py_DECREF(info);
    return out;
}

PyDoc_STRVAR(sb_release_doc,
"release($self, /)\n--\n\n"
"Hand the space of the last received message back to the producer now (recv() does\n"
"this implicitly). Views of that message must not be read afterwards.");

static PyObject *
sb_channel_release(sb_channel *self, PyObject *unused)
{
    if (!self->closed && !self->broken)
        sb_rx_release(self);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(sb_reserve_doc,
"reserve($self, size, /, timeout=None)\n--\n\n"
"Reserve `size` bytes in the outgoing ring and return a writable memoryview over them;\n"
"fill it, then commit(n) publishes the first n bytes as one message. size is at most\n"
"max_record.");

static PyObject *
sb_channel_reserve(sb_channel *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"size", "timeout", NULL};
    Py_ssize_t size;
    PyObject *tobj = Py_None;
    int64_t timeout;   /* the deadline */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|O", kwlist, &size, &tobj))
        return NULL;
    if (sb_parse_timeout(tobj, &timeout) < 0 || sb_check_usable(self) < 0)
        return NULL;
    if (self->reserved) {
        PyErr_SetString(PyExc_RuntimeError, "a reservation is already open; commit() it first");
        return NULL;
    }
    if (size < 0 || (uint64_t)size > self->max_record) {
        PyErr_Format(PyExc_ValueError, "reserve size must be between 0 and max_record=%llu",
                     (unsigned long long)self->max_record);
        return NULL;
    }
    int64_t pos = sb_tx_place(self, (uint64_t)size, timeout);
    if (pos < 0)
        return NULL;
    self->reserved = (uint64_t)size + 1;   /* +1: a zero-byte reservation is still open */
    self->reserved_pos = (uint64_t)pos;
    size_t abs = (size_t)(self->tx.data - self->mapping->base) + (size_t)pos + SB_RECORD_HEADER;
    return sb_mapping_view(self->mapping, abs, (size_t)size, 0);
}

PyDoc_STRVAR(sb_commit_doc,
"commit($self, size, /)\n--\n\n"
"Publish the first `size` bytes of the open reservation as one message.");

static PyObject *
sb_channel_commit(sb_channel *self, PyObject *arg)
{
    Py_ssize_t size = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    if (sb_check_usable(self) < 0)
        return NULL;
    if (!self->reserved) {
        PyErr_SetString(PyExc_RuntimeError, "commit() without reserve()");
        return NULL;
    }
    if (size < 0 || (uint64_t)size > self->reserved - 1) {
        PyErr_SetString(PyExc_ValueError, "commit size exceeds the reservation");
        return NULL;
    }
    self->reserved = 0;
    sb_tx_publish(self, self->reserved_pos, (uint64_t)size, SB_REC_MESSAGE);
    self->n_sent++;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(sb_poll_doc,
"poll($self, /)\n--\n\nTrue when a message is waiting (never blocks).");

static PyObject *
sb_channel_poll(sb_channel *self, PyObject *unused)
{
    if (sb_check_usable(self) < 0)
        return NULL;
    uint64_t avail;
    const char *why = NULL;
    /* a record already handed out does not count */
    int r = sb_rx_ready(self, &avail, &why);
    if (r < 0)
        return sb_raise_outcome(self, SB_W_PROTOCOL, "a message", why), NULL;
    return PyBool_FromLong(r > 0 && avail > self->pending_release);
}

PyDoc_STRVAR(sb_set_peer_doc,
"set_peer($self, /, death_fds=(), lock_fd=-1)\n--\n\n"
"Tell the channel how to notice a dead peer between wait slices. `death_fds` (up to 4)\n"
"are polled: any event means the peer is gone (a pidfd of the child process; the server's\n"
"stdin pipe). `lock_fd` is an fd of the peer's lock file, which a live peer holds with\n"
"flock(LOCK_EX). The channel takes ownership of the fds and closes them.");

static PyObject *
sb_channel_set_peer(sb_channel *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"death_fds", "lock_fd", NULL};
    PyObject *fds = NULL;
    int lock_fd = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|Oi", kwlist, &fds, &lock_fd))
        return NULL;
    if (self->closed) {
        PyErr_SetString(sb_state.ChannelClosed, "channel is closed");
        return NULL;
    }
    int tmp[SB_MAX_DEATH_FDS], n = 0;
    if (fds != NULL && fds != Py_None) {
        PyObject *seq = PySequence_List(fds);
        if (seq == NULL)
            return NULL;
        Py_ssize_t len = PyList_GET_SIZE(seq);
        if (len > SB_MAX_DEATH_FDS) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "at most 4 death fds");
            return NULL;
        }
        for (Py_ssize_t i = 0; i < len; i++) {
            long v = PyLong_AsLong(PyList_GET_ITEM(seq, i));
            if (v == -1 && PyErr_Occurred()) {
                Py_DECREF(seq);
                return NULL;
            }
            tmp[n++] = (int)v;
        }
        Py_DECREF(seq);
        for (int i = 0; i < self->n_death_fds; i++)
            close(self->death_fds[i]);
        memcpy(self->death_fds, tmp, sizeof(int) * (size_t)n);
        self->n_death_fds = n;
    }
    if (lock_fd >= 0) {
        if (self->peer_lock_fd >= 0)
            close(self->peer_lock_fd);
        self->peer_lock_fd = lock_fd;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(sb_peer_alive_doc,
"peer_alive($self, /)\n--\n\nThe liveness check the waits run between slices.");

static PyObject *
sb_channel_peer_alive(sb_channel *self, PyObject *unused)
{
    if (self->closed)
        Py_RETURN_FALSE;
    return PyBool_FromLong(sb_peer_alive(self));
}

PyDoc_STRVAR(sb_configure_wait_doc,
"configure_wait($self, /, spin_ns=100000, adaptive=True, slice_ns=50000000, stall_ns=10000000000, track=False)\n--\n\n"
"Spin at most spin_ns before sleeping (0: never spin). adaptive=True learns the typical\n"
"wait and spins about twice that (capped at spin_ns), and stops spinning for a while\n"
"when spins keep failing. track=True (for a side with a core of its own that only waits)\n"
"spins twice the recent longest wait, spun or slept, capped at spin_ns, and never pauses.\n"
"slice_ns is how often a sleeping wait checks the peer is alive.\n"
"A peer with a heartbeat that shows none for stall_ns is stopped or frozen: the wait\n"
"raises PeerStalled (0: never).");

static PyObject *
sb_channel_configure_wait(sb_channel *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"spin_ns", "adaptive", "slice_ns", "stall_ns", "track", NULL};
    long long spin = self->wait.spin_max_ns, slice = self->wait.slice_ns, stall = self->stall_ns;
    int adaptive = self->wait.adaptive, track = self->wait.track;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|LpLLp", kwlist, &spin, &adaptive, &slice, &stall, &track))
        return NULL;
    if (spin < 0 || slice < 1000 || slice > 10LL * 1000 * 1000 * 1000 || stall < 0) {
        PyErr_SetString(PyExc_ValueError, "spin_ns and stall_ns must be >= 0 and slice_ns in [1 us, 10 s]");
        return NULL;
    }
    self->stall_ns = stall;
    self->hb_seen_ns = 0;
    self->wait.spin_max_ns = spin;
    self->wait.adaptive = adaptive;
    self->wait.est_ns = spin / 4;
    self->wait.fail_streak = 0;
    self->wait.pause_left = 0;
    self->wait.pause_len = 16;
    self->wait.slice_ns = slice;
    if (track && !self->wait.track)
        self->wait.waits = 0;    /* start tracking afresh */
    self->wait.track = track;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(sb_stats_doc,
"stats($self, /)\n--\n\nCounters of the waits and wake-ups, and the learned spin budget.");

static PyObject *
sb_channel_stats(sb_channel *self, PyObject *unused)
{
    return Py_BuildValue("{sKsKsKsKsKsLsLsLsLsi}",
                         "spin_ok", (unsigned long long)self->n_spin_ok,
                         "spin_fail", (unsigned long long)self->n_spin_fail,
                         "sleeps", (unsigned long long)self->n_sleeps,
                         "wakes", (unsigned long long)self->n_wakes,
                         "wakes_skipped", (unsigned long long)self->n_wakes_skipped,
                         "spin_estimate_ns", (long long)self->wait.est_ns,
                         "spin_budget_ns", (long long)sb_spin_peek(&self->wait),
                         "spin_pause_left", (long long)self->wait.pause_left,
                         "wait_estimate_ns", (long long)self->wait.lat_ns,
                         "tracking", self->wait.track);
}

PyDoc_STRVAR(sb_start_heartbeat_doc,
"start_heartbeat($self, /, period_ns=100000000)\n--\n\n"
"Start this side's heartbeat: a thread that needs no GIL bumps a word in the header every\n"
"period_ns, so that the peer can tell a process that is busy (even in C code holding the\n"
"GIL) from one that is stopped or frozen. Servers start it; close() stops it.");

static PyObject *
sb_channel_start_heartbeat(sb_channel *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"period_ns", NULL};
    long long period = SB_HEARTBEAT_NS;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|L", kwlist, &period))
        return NULL;
    if (period < 1000000 || period > 10LL * 1000 * 1000 * 1000) {
        PyErr_SetString(PyExc_ValueError, "period_ns must be in [1 ms, 10 s]");
        return NULL;
    }
    if (sb_check_usable(self) < 0)
        return NULL;
    if (self->hb_running)
        Py_RETURN_NONE;
    self->hb_period_ns = period;
    self->hb_stop = 0;
    /* the thread takes no signals: they belong to the interpreter's main thread */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&self->hb_thread, NULL, sb_heartbeat_main, self);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    self->hb_running = 1;
    self->hb_pid = getpid();
    atomic_fetch_or_explicit((_Atomic uint32_t *)&self->hdr->features[self->role], SB_FEATURE_HEARTBEAT,
                             memory_order_release);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(sb_close_doc,
"close($self, /)\n--\n\n"
"Mark this side closed and wake the peer. Idempotent. Views handed out stay readable.");

static PyObject *
sb_channel_close(sb_channel *self, PyObject *unused)
{
    sb_channel_do_close(self);
    Py_RETURN_NONE;
}

static PyObject *
sb_channel_enter(sb_channel *self, PyObject *unused)
{
    return Py_NewRef((PyObject *)self);
}

static PyObject *
sb_channel_exit(sb_channel *self, PyObject *args)
{
    sb_channel_do_close(self);
    Py_RETURN_FALSE;
}

static PyObject *
sb_channel_get_closed(sb_channel *self, void *unused)
{
    return PyBool_FromLong(self->closed);
}

static PyObject *
sb_channel_get_peer_closed(sb_channel *self, void *unused)
{
    if (self->mapping == NULL)
        Py_RETURN_FALSE;
    return PyBool_FromLong(sb_peer_closed(self));
}

static PyObject *
sb_channel_get_receiving(sb_channel *self, void *unused)
{
    return PyBool_FromLong(self->partial != NULL);
}

static PyObject *
sb_channel_get_max_record(sb_channel *self, void *unused)
{
    return PyLong_FromUnsignedLongLong(self->max_record);
}

static PyObject *
sb_channel_get_size(sb_channel *self, void *unused)
{
    return PyLong_FromSize_t(self->mapping ? self->mapping->size : 0);
}

static PyObject *
sb_channel_get_role(sb_channel *self, void *unused)
{
    return PyLong_FromLong(self->role);
}

static PyObject *
sb_channel_get_sent(sb_channel *self, void *unused)
{
    return PyLong_FromUnsignedLongLong(self->n_sent);
}

static PyObject *
sb_channel_get_received(sb_channel *self, void *unused)
{
    return PyLong_FromUnsignedLongLong(self->n_received);
}

static PyMethodDef sb_channel_methods[] = {
    {"send", (PyCFunction)(void (*)(void))sb_channel_send, METH_VARARGS | METH_KEYWORDS, sb_send_doc},
    {"recv", (PyCFunction)(void (*)(void))sb_channel_recv, METH_VARARGS | METH_KEYWORDS, sb_recv_doc},
    {"call", (PyCFunction)(void (*)(void))sb_channel_call, METH_VARARGS | METH_KEYWORDS, sb_call_doc},
    {"reply_step", (PyCFunction)(void (*)(void))sb_channel_reply_step, METH_FASTCALL, sb_reply_step_doc},
    {"call_step", (PyCFunction)(void (*)(void))sb_channel_call_step, METH_FASTCALL, sb_call_step_doc},
    {"release", (PyCFunction)sb_channel_release, METH_NOARGS, sb_release_doc},
    {"reserve", (PyCFunction)(void (*)(void))sb_channel_reserve, METH_VARARGS | METH_KEYWORDS, sb_reserve_doc},
    {"commit", (PyCFunction)sb_channel_commit, METH_O, sb_commit_doc},
    {"poll", (PyCFunction)sb_channel_poll, METH_NOARGS, sb_poll_doc},
    {"set_peer", (PyCFunction)(void (*)(void))sb_channel_set_peer, METH_VARARGS | METH_KEYWORDS, sb_set_peer_doc},
    {"peer_alive", (PyCFunction)sb_channel_peer_alive, METH_NOARGS, sb_peer_alive_doc},
    {"configure_wait", (PyCFunction)(void (*)(void))sb_channel_configure_wait, METH_VARARGS | METH_KEYWORDS,
     sb_configure_wait_doc},
    {"stats", (PyCFunction)sb_channel_stats, METH_NOARGS, sb_stats_doc},
    {"start_heartbeat", (PyCFunction)(void (*)(void))sb_channel_start_heartbeat, METH_VARARGS | METH_KEYWORDS,
     sb_start_heartbeat_doc},
    {"close", (PyCFunction)sb_channel_close, METH_NOARGS, sb_close_doc},
    {"__enter__", (PyCFunction)sb_channel_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)sb_channel_exit, METH_VARARGS, NULL},
    {NULL},
};

static PyGetSetDef sb_channel_getset[] = {
    {"closed", (getter)sb_channel_get_closed, NULL, "True after close().", NULL},
    {"peer_closed", (getter)sb_channel_get_peer_closed, NULL, "True once the peer closed its side.", NULL},
    {"max_record", (getter)sb_channel_get_max_record, NULL, "Largest message sent as one record.", NULL},
    {"receiving", (getter)sb_channel_get_receiving, NULL,
     "True while a fragmented message is partly received (a wait ended in its middle).", NULL},
    {"size", (getter)sb_channel_get_size, NULL, "Bytes mapped (header and rings).", NULL},
    {"role", (getter)sb_channel_get_role, NULL, "HOST (0) or SERVER (1).", NULL},
    {"sent", (getter)sb_channel_get_sent, NULL,
     "Messages this side sent completely (a call interrupted while it waited for the reply has\n"
     "sent one more than it received).", NULL},
    {"received", (getter)sb_channel_get_received, NULL, "Messages this side received completely.", NULL},
    {NULL},
};

PyDoc_STRVAR(sb_channel_doc,
"Channel(fd, role, /, *, create=False, request_capacity=1048576, reply_capacity=4194304,\n"
"        max_message=268435456)\n--\n\n"
"One side of a shmbench channel: maps the channel file behind `fd` (which may be closed\n"
"afterwards). The host creates (create=True; the file must already be reserved to\n"
"layout_size(request_capacity, reply_capacity) bytes); the server attaches, which checks\n"
"the magic, layout version and geometry.");

#ifdef Py_LIMITED_API
static PyType_Slot sb_channel_slots[] = {
    {Py_tp_doc, (void *)sb_channel_doc},
    {Py_tp_new, (void *)PyType_GenericNew},
    {Py_tp_init, (void *)sb_channel_init},
    {Py_tp_dealloc, (void *)sb_channel_dealloc},
    {Py_tp_methods, sb_channel_methods},
    {Py_tp_getset, sb_channel_getset},
    {0, NULL},
};
static PyType_Spec sb_channel_spec = {
    .name = "shmbench._ring.Channel",
    .basicsize = sizeof(sb_channel),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = sb_channel_slots,
};
static PyTypeObject *sb_ChannelTypeP;
#else
static PyTypeObject sb_ChannelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmbench._ring.Channel",
    .tp_basicsize = sizeof(sb_channel),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = sb_channel_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)sb_channel_init,
    .tp_dealloc = (destructor)sb_channel_dealloc,
    .tp_methods = sb_channel_methods,
    .tp_getset = sb_channel_getset,
};
static PyTypeObject *sb_ChannelTypeP = &sb_ChannelType;
#endif

/* ======================================================================================
 * The decoding budget of an untrusted MessagePack document
 *
 * A peer can send a few bytes that decode into a lot of memory: one byte (0x80) is an empty
 * dict of 64+ bytes, and our extension records nest documents inside documents. Before
 * shmbench.wire.codec decodes a large document, it asks what decoding would cost, walking
 * the bytes once with no allocation: an estimate of the CPython objects msgpack would
 * build (sizes of 64-bit CPython 3.10-3.13, rounded up), descending into the payloads of
 * the codec's own extension records (1 tuple, 2 ndarray, 3 numpy scalar, which are
 * documents themselves). Small ints, None, booleans and the empty string are singletons
 * and cost nothing. A malformed document costs -1: msgpack itself then says what is wrong.
 * ====================================================================================== */

#define SB_COST_STACK 512            /* containers open at once in one document */
#define SB_COST_MAX_DEPTH 64         /* documents nested in extension records (codec MAX_DEPTH) */

static inline uint64_t
sb_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int k = 0; k < n; k++)
        v = (v << 8) | p[k];
    return v;
}

/* The cost of the one object at the start of p[0..n), stopping early at limit + 1. */
static int64_t
sb_doc_cost(const uint8_t *p, uint64_t n, int64_t limit, int depth)
{
    uint64_t stack[SB_COST_STACK];
    int sp = 0;
    uint64_t i = 0, todo = 1, len = 0;
    int64_t cost = 0;
    int ext_type = 0;
#define SB_NEED(k) do { if ((uint64_t)(k) > n - i) return -1; } while (0)
    for (;;) {
        while (todo == 0) {
            if (sp == 0)
                return cost;
            todo = stack[--sp];
        }
        todo--;
        if (cost > limit)
            return limit + 1;
        SB_NEED(1);
        uint8_t b = p[i++];
        if (b <= 0x7f)
            continue;                               /* positive fixint: cached */
        if (b >= 0xe0) {                            /* negative fixint */
            cost += (int8_t)b < -5 ? 32 : 0;
            continue;
        }
        if (b <= 0x8f) { len = b & 0x0f; goto map; }
        if (b <= 0x9f) { len = b & 0x0f; goto array; }
        if (b <= 0xbf) { len = b & 0x1f; goto str; }
        switch (b) {
        case 0xc0: case 0xc2: case 0xc3: continue;  /* nil, false, true */
        case 0xc4: SB_NEED(1); len = sb_be(p + i, 1); i += 1; goto bin;
        case 0xc5: SB_NEED(2); len = sb_be(p + i, 2); i += 2; goto bin;
        case 0xc6: SB_NEED(4); len = sb_be(p + i, 4); i += 4; goto bin;
        case 0xc7: SB_NEED(2); len = sb_be(p + i, 1); ext_type = (int8_t)p[i + 1]; i += 2; goto ext;
        case 0xc8: SB_NEED(3); len = sb_be(p + i, 2); ext_type = (int8_t)p[i + 2]; i += 3; goto ext;
        case 0xc9: SB_NEED(5); len = sb_be(p + i, 4); ext_type = (int8_t)p[i + 4]; i += 5; goto ext;
        case 0xca: SB_NEED(4); i += 4; cost += 24; continue;
        case 0xcb: SB_NEED(8); i += 8; cost += 24; continue;
        case 0xcc: SB_NEED(1); i += 1; continue;                    /* uint8: <= 255, cached */
        case 0xcd: SB_NEED(2); i += 2; cost += 32; continue;
        case 0xce: SB_NEED(4); i += 4; cost += 32; continue;
        case 0xcf: SB_NEED(8); i += 8; cost += 32; continue;
        case 0xd0: SB_NEED(1); cost += (int8_t)p[i] < -5 ? 32 : 0; i += 1; continue;
        case 0xd1: SB_NEED(2); i += 2; cost += 32; continue;
        case 0xd2: SB_NEED(4); i += 4; cost += 32; continue;
        case 0xd3: SB_NEED(8); i += 8; cost += 32; continue;
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:      /* fixext 1..16 */
            SB_NEED(1); len = (uint64_t)1 << (b - 0xd4); ext_type = (int8_t)p[i]; i += 1; goto ext;
        case 0xd9: SB_NEED(1); len = sb_be(p + i, 1); i += 1; goto str;
        case 0xda: SB_NEED(2); len = sb_be(p + i, 2); i += 2; goto str;
        case 0xdb: SB_NEED(4); len = sb_be(p + i, 4); i += 4; goto str;
        case 0xdc: SB_NEED(2); len = sb_be(p + i, 2); i += 2; goto array;
        case 0xdd: SB_NEED(4); len = sb_be(p + i, 4); i += 4; goto array;
        case 0xde: SB_NEED(2); len = sb_be(p + i, 2); i += 2; goto map;
        case 0xdf: SB_NEED(4); len = sb_be(p + i, 4); i += 4; goto map;
        default: return -1;                                         /* 0xc1: never used */
        }
    str:
        SB_NEED(len);
        i += len;
        cost += len ? 80 + (int64_t)len : 0;
        continue;
    bin:
        SB_NEED(len);
        i += len;
        cost += 40 + (int64_t)len;
        continue;
    array:
        SB_NEED(len);                               /* every item is at least one byte */
        cost += 64 + 8 * (int64_t)len;
        if (len) {
            if (sp == SB_COST_STACK)
                return -1;
            stack[sp++] = todo;
            todo = len;
        }
        continue;
    map:
        SB_NEED(2 * len);
        cost += 100 + 40 * (int64_t)len;
        if (len) {
            if (sp == SB_COST_STACK)
                return -1;
            stack[sp++] = todo;
            todo = 2 * len;
        }
        continue;
    ext:
        SB_NEED(len);
        /* What stays once a record is decoded (its payload bytes and the list a tuple is made
         * from are freed again, one record at a time): a tuple costs what the list its payload
         * is costs; an array object with its shape tuple (its data is a copy of out-of-band
         * bytes, which the codec bounds by the message: records may not overlap); a numpy
         * scalar; a big int from its digits or a timestamp. A graph instance is a tuple of three. */
        if (ext_type == 1 || ext_type == 5) {      /* a tuple; a graph instance, a 3-tuple */
            if (depth >= SB_COST_MAX_DEPTH)
                return -1;
            int64_t sub = sb_doc_cost(p + i, len, limit - cost, depth + 1);
            if (sub < 0)
                return sub;
            cost += sub;
        } else if (ext_type == 2) {
            cost += 192;
        } else if (ext_type == 3) {
            cost += 48;
        } else {
            cost += 40 + (int64_t)len;
        }
        i += len;
        continue;
    }
#undef SB_NEED
}

PyDoc_STRVAR(sb_decode_cost_doc,
"decode_cost(data, limit, /)\n--\n\n"
"An estimate of the bytes of Python objects that decoding the MessagePack document `data`\n"
"(with shmbench.wire.codec's extension records) would allocate; limit + 1 as soon as it\n"
"exceeds `limit`; -1 for a malformed document. Allocates nothing.");

static PyObject *
sb_decode_cost(PyObject *mod, PyObject *args)
{
    Py_buffer buf;
    long long limit;
    if (!PyArg_ParseTuple(args, "y*L", &buf, &limit))
        return NULL;
    int64_t cost = sb_doc_cost((const uint8_t *)buf.buf, (uint64_t)buf.len, limit, 0);
    PyBuffer_Release(&buf);
    return PyLong_FromLongLong(cost);
}

/* ======================================================================================
 * Module
 * ====================================================================================== */

PyDoc_STRVAR(sb_layout_size_doc,
"layout_size(request_capacity, reply_capacity, /)\n--\n\n"
"Bytes a channel file needs for the header and both rings.");

static PyObject *
sb_layout_size(PyObject *mod, PyObject *args)
{
    unsigned long long a, b;
    if (!PyArg_ParseTuple(args, "KK", &a, &b))
        return NULL;
    if (sb_check_capacity(a, "request_capacity") < 0 || sb_check_capacity(b, "reply_capacity") < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(SB_HEADER_SIZE + a + b);
}

PyDoc_STRVAR(sb_fill_rows_doc,
"fill_rows(dst, items, /)\n--\n\n"
"Copy items[i] into row i of the C-contiguous array dst when every item is a C-contiguous\n"
"array of exactly the rows' format and shape, and return True; otherwise copy nothing and\n"
"return False (the caller concatenates them the general way). What np.stack(items, out=dst)\n"
"does for that case, without its per-call overhead (a vector server's observations).");

static PyObject *
sb_fill_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "fill_rows(dst, items: list)");
        return NULL;
    }
    PyObject *items = args[1];
    Py_ssize_t n = PyList_GET_SIZE(items);
    Py_buffer out;
    if (PyObject_GetBuffer(args[0], &out, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0)
        return NULL;
    PyObject *result = Py_False;
    if (out.ndim < 1 || out.shape[0] != n || n == 0)
        goto done;
    Py_ssize_t row = out.len / n;
    /* all checked first, then all copied: a misfit item leaves dst untouched */
    for (int pass = 0; pass < 2; pass++) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PyList_GET_ITEM(items, i);
            if (Py_TYPE(item) != Py_TYPE(args[0]))
                goto done;
            const char *data = sb_array_like(item, args[0], &out, 1);
            if (data != NULL) {
                if (pass == 1 && data != (char *)out.buf + i * row)
                    memcpy((char *)out.buf + i * row, data, (size_t)row);
                continue;
            }
            Py_buffer src;
            if (PyObject_GetBuffer(item, &src, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
                PyErr_Clear();
                goto done;
            }
            int same = src.len == row && src.itemsize == out.itemsize && src.ndim == out.ndim - 1 &&
                       strcmp(src.format ? src.format : "B", out.format ? out.format : "B") == 0;
            for (int d = 0; same && d < src.ndim; d++)
                same = src.shape[d] == out.shape[d + 1];
            if (same && pass == 1)
                memcpy((char *)out.buf + i * row, src.buf, (size_t)row);
            PyBuffer_Release(&src);
            if (!same)
                goto done;
        }
    }
    result = Py_True;
done:
    PyBuffer_Release(&out);
    return Py_NewRef(result);
}

PyDoc_STRVAR(sb_store_step_doc,
"store_step(rewards, terminations, truncations, reward_list, terminated_list, truncated_list, /)\n--\n\n"
"Write one vector step's results into the batch arrays (float64, bool, bool; C-contiguous,\n"
"one element per env) and return the envs that now need a reset, as a list of bools\n"
"(terminated or truncated); or return None, having written nothing, when a value is not a\n"
"plain number or flag (the caller assigns them the numpy way). Rewards convert as float()\n"
"does and flags as bool() -- what numpy's item assignment does for them.");

static int
sb_plain_number(PyObject *v)
{
    return PyFloat_CheckExact(v) || PyLong_CheckExact(v) || PyBool_Check(v) ||
           (PyNumber_Check(v) && !PyUnicode_Check(v) && !PyBytes_Check(v) && !PyComplex_Check(v) &&
            PyObject_HasAttrString(v, "__float__"));
}

static PyObject *
sb_store_step(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyList_CheckExact(args[3]) || !PyList_CheckExact(args[4]) || !PyList_CheckExact(args[5])) {
        PyErr_SetString(PyExc_TypeError, "store_step(rewards, terminations, truncations, list, list, list)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(args[3]);
    if (PyList_GET_SIZE(args[4]) != n || PyList_GET_SIZE(args[5]) != n)
        Py_RETURN_NONE;
    Py_buffer b[3];
    const char *fmt[3] = {"d", "?", "?"};
    int got = 0;
    PyObject *result = NULL;
    double *rew = NULL;
    char *term = NULL, *trunc = NULL;
    for (; got < 3; got++) {
        if (PyObject_GetBuffer(args[got], &b[got], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0)
            goto out;
        if (b[got].len != n * (got == 0 ? 8 : 1) || strcmp(b[got].format ? b[got].format : "B", fmt[got]) != 0) {
            got++;
            result = Py_NewRef(Py_None);
            goto out;
        }
    }
    rew = (double *)b[0].buf;
    term = (char *)b[1].buf;
    trunc = (char *)b[2].buf;
    /* every value checked before anything is written */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyList_GET_ITEM(args[3], i), *t = PyList_GET_ITEM(args[4], i), *u = PyList_GET_ITEM(args[5], i);
        if (!sb_plain_number(r) || !sb_plain_number(t) || !sb_plain_number(u)) {
            result = Py_NewRef(Py_None);
            goto out;
        }
    }
    PyObject *autoreset = PyList_New(n);
    if (autoreset == NULL)
        goto out;
    for (Py_ssize_t i = 0; i < n; i++) {
        double r = PyFloat_AsDouble(PyList_GET_ITEM(args[3], i));
        int t = PyObject_IsTrue(PyList_GET_ITEM(args[4], i));
        int u = PyObject_IsTrue(PyList_GET_ITEM(args[5], i));
        if ((r == -1.0 && PyErr_Occurred()) || t < 0 || u < 0) {
            /* a value that looked plain but is not: nothing may stay half-written */
            PyErr_Clear();
            Py_DECREF(autoreset);
            result = Py_NewRef(Py_None);
            goto out;
        }
        PyList_SET_ITEM(autoreset, i, Py_NewRef((t || u) ? Py_True : Py_False));
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        rew[i] = PyFloat_AsDouble(PyList_GET_ITEM(args[3], i));
        term[i] = (char)(PyList_GET_ITEM(autoreset, i) == Py_True && PyObject_IsTrue(PyList_GET_ITEM(args[4], i)));
        trunc[i] = (char)PyObject_IsTrue(PyList_GET_ITEM(args[5], i));
    }
    result = autoreset;
out:
    for (int i = 0; i < got; i++)
        PyBuffer_Release(&b[i]);
    return result;
}

PyDoc_STRVAR(sb_wait_any_doc,
"wait_any(channels, timeout, /)\n--\n\n"
"Wait until one of the channels (a list of up to 64) has a message waiting,\n"
"is closed or broken, or its peer closed; return its index, or -1 once timeout seconds\n"
"passed (None: no limit). It sleeps on every channel's futex word at once (futex_waitv,\n"
"Linux 5.16+), so the first reply wakes it; it checks no liveness (the caller's slices\n"
"do) and leaves every channel as it was. Raises OSError where futex_waitv is missing.");

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#define SB_WAIT_ANY_MAX 64

struct sb_waitv {   /* struct futex_waitv, spelled out for headers older than 5.16 */
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};

/* 1: channel i is ready for the caller (a message, or a state its recv will report) */
static int
sb_any_ready(sb_channel *c)
{
    if (c->closed || c->broken || sb_peer_closed(c))
        return 1;
    uint64_t avail;
    const char *why = NULL;
    int r = sb_rx_ready(c, &avail, &why);
    return r < 0 || (r > 0 && avail > c->pending_release);
}

static PyObject *
sb_wait_any(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "wait_any(channels: list, timeout)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(args[0]);
    if (n < 1 || n > SB_WAIT_ANY_MAX) {
        PyErr_Format(PyExc_ValueError, "wait_any takes 1 to %d channels, got %zd", SB_WAIT_ANY_MAX, n);
        return NULL;
    }
    sb_channel *chans[SB_WAIT_ANY_MAX];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(args[0], i);
        if (!PyObject_TypeCheck(item, sb_ChannelTypeP)) {
            PyErr_SetString(PyExc_TypeError, "wait_any needs a list of channels");
            return NULL;
        }
        chans[i] = (sb_channel *)item;
        if (chans[i]->mapping == NULL) {
            PyErr_SetString(sb_state.ChannelClosed, "channel is not attached");
            return NULL;
        }
    }
    int64_t deadline;
    if (sb_parse_timeout(args[1], &deadline) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (sb_any_ready(chans[i]))
            return PyLong_FromSsize_t(i);
    if (deadline == SB_NOWAIT)
        return PyLong_FromLong(-1);

    /* each channel (and so its mapping) stays alive while the GIL is released, whatever
     * another thread does to the list; a close() meanwhile wakes us (it bumps the words) */
    for (Py_ssize_t i = 0; i < n; i++)
        Py_INCREF((PyObject *)chans[i]);
    struct sb_waitv w[SB_WAIT_ANY_MAX];
    Py_ssize_t found = -1;
    int err = 0;
    PyThreadState *ts = PyEval_SaveThread();
    for (;;) {
        /* announce ourselves on every word, then re-check: a reply published before the
         * flag was seen is found here, one after it wakes us (see sb_wait's block loop) */
        for (Py_ssize_t i = 0; i < n; i++) {
            sb_ring_ctrl *ctl = chans[i]->rx.ctrl;
            if (chans[i]->closed) {
                found = i;
                break;
            }
            STORE_SC(&ctl->data_sleepers, 1);
            w[i].val = LOAD_SC(&ctl->data_seq);
            w[i].uaddr = (uint64_t)(uintptr_t)&ctl->data_seq;
            w[i].flags = 2;   /* FUTEX_32, shared: the peer is another process */
            w[i].reserved = 0;
        }
        for (Py_ssize_t i = 0; found < 0 && i < n; i++)
            if (sb_any_ready(chans[i]))
                found = i;
        int64_t now = sb_now_ns();
        if (found < 0 && now < deadline) {
            struct timespec abs, *tp = NULL;
            if (deadline != SB_FOREVER) {
                struct timespec mono;
                clock_gettime(CLOCK_MONOTONIC, &mono);
                int64_t left = deadline - now;
                int64_t ns = (int64_t)mono.tv_nsec + left % 1000000000LL;
                abs.tv_sec = mono.tv_sec + (time_t)(left / 1000000000LL) + (time_t)(ns / 1000000000LL);
                abs.tv_nsec = (long)(ns % 1000000000LL);
                tp = &abs;
            }
            long rc = syscall(SYS_futex_waitv, w, (unsigned int)n, 0, tp, CLOCK_MONOTONIC);
            if (rc < 0 && errno != EAGAIN && errno != ETIMEDOUT && errno != EINTR)
                err = errno;
            else if (rc < 0 && errno == EINTR)
                err = EINTR;
        }
        for (Py_ssize_t i = 0; i < n; i++)
            if (!chans[i]->closed)
                STORE_SC(&chans[i]->rx.ctrl->data_sleepers, 0);
        if (found >= 0 || (err && err != EINTR))
            break;
        for (Py_ssize_t i = 0; found < 0 && i < n; i++)
            if (sb_any_ready(chans[i]))
                found = i;
        if (found >= 0 || sb_now_ns() >= deadline)
            break;
        if (err == EINTR) {
            PyEval_RestoreThread(ts);
            int sig = PyErr_CheckSignals();
            ts = PyEval_SaveThread();
            if (sig < 0)
                break;
            err = 0;
        }
    }
    PyEval_RestoreThread(ts);
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF((PyObject *)chans[i]);
    if (PyErr_Occurred())
        return NULL;
    if (err && err != EINTR) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromSsize_t(found);
}

static PyMethodDef sb_module_methods[] = {
    {"layout_size", sb_layout_size, METH_VARARGS, sb_layout_size_doc},
    {"decode_cost", sb_decode_cost, METH_VARARGS, sb_decode_cost_doc},
    {"fill_rows", (PyCFunction)(void (*)(void))sb_fill_rows, METH_FASTCALL, sb_fill_rows_doc},
    {"store_step", (PyCFunction)(void (*)(void))sb_store_step, METH_FASTCALL, sb_store_step_doc},
    {"wait_any", (PyCFunction)(void (*)(void))sb_wait_any, METH_FASTCALL, sb_wait_any_doc},
    {NULL},
};

static struct PyModuleDef sb_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = SB_MODULE_NAME,
    .m_doc = "Shared-memory rings with futex wake-ups in one mapped file (see ring.h).",
    .m_size = -1,
    .m_methods = sb_module_methods,
};

static int
sb_add_int(PyObject *dict, const char *name, long value)
{
    PyObject *v = PyLong_FromLong(value);
    if (v == NULL)
        return -1;
    int rc = PyDict_SetItemString(dict, name, v);
    Py_DECREF(v);
    return rc;
}

PyMODINIT_FUNC
SB_INIT(void)
{
    PyObject *errors = PyImport_ImportModule("shmbench.errors");
    if (errors == NULL)
        return NULL;
    sb_state.ProtocolError = PyObject_GetAttrString(errors, "ProtocolError");
    sb_state.ChannelMismatch = PyObject_GetAttrString(errors, "ChannelMismatch");
    sb_state.ChannelTimeout = PyObject_GetAttrString(errors, "ChannelTimeout");
    sb_state.ChannelClosed = PyObject_GetAttrString(errors, "ChannelClosed");
    sb_state.PeerDied = PyObject_GetAttrString(errors, "PeerDied");
    sb_state.PeerStalled = PyObject_GetAttrString(errors, "PeerStalled");
    Py_DECREF(errors);
    if (!sb_state.ProtocolError || !sb_state.ChannelMismatch || !sb_state.ChannelTimeout ||
        !sb_state.ChannelClosed || !sb_state.PeerDied || !sb_state.PeerStalled)
        return NULL;
#ifdef Py_LIMITED_API
    sb_MappingTypeP = (PyTypeObject *)PyType_FromSpec(&sb_mapping_spec);
    sb_ChannelTypeP = (PyTypeObject *)PyType_FromSpec(&sb_channel_spec);
    if (sb_MappingTypeP == NULL || sb_ChannelTypeP == NULL)
        return NULL;
#else
    if (PyType_Ready(&sb_MappingType) < 0 || PyType_Ready(&sb_ChannelType) < 0)
        return NULL;
#endif
    PyObject *m = PyModule_Create(&sb_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Channel", (PyObject *)sb_ChannelTypeP) < 0 ||
        PyModule_AddObjectRef(m, "Mapping", (PyObject *)sb_MappingTypeP) < 0 ||
        PyModule_AddIntConstant(m, "HOST", SB_HOST) < 0 ||
        PyModule_AddIntConstant(m, "SERVER", SB_SERVER) < 0 ||
        PyModule_AddIntConstant(m, "HEADER_SIZE", SB_HEADER_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "LAYOUT_VERSION", SB_LAYOUT_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "RECORD_HEADER", SB_RECORD_HEADER) < 0 ||
        PyModule_AddIntConstant(m, "STEP_REPLY_SIZE", (long)sizeof(sb_step_reply)) < 0)
        goto fail;
    PyObject *ops = PyDict_New();
    if (ops == NULL)
        goto fail;
    if (sb_add_int(ops, "MAKE", SB_OP_MAKE) < 0 || sb_add_int(ops, "CONFIGURE", SB_OP_CONFIGURE) < 0 ||
        sb_add_int(ops, "RESET", SB_OP_RESET) < 0 || sb_add_int(ops, "STEP", SB_OP_STEP) < 0 ||
        sb_add_int(ops, "RENDER", SB_OP_RENDER) < 0 || sb_add_int(ops, "CALL", SB_OP_CALL) < 0 ||
        sb_add_int(ops, "GET_ATTR", SB_OP_GET_ATTR) < 0 || sb_add_int(ops, "SET_ATTR", SB_OP_SET_ATTR) < 0 ||
        sb_add_int(ops, "CLOSE", SB_OP_CLOSE) < 0 || sb_add_int(ops, "PING", SB_OP_PING) < 0 ||
        sb_add_int(ops, "ECHO", SB_OP_ECHO) < 0 || PyModule_AddObject(m, "OPCODES", ops) < 0) {
        Py_DECREF(ops);
        goto fail;
    }
    PyObject *st = PyDict_New();
    if (st == NULL)
        goto fail;
    if (sb_add_int(st, "OK", SB_STATUS_OK) < 0 || sb_add_int(st, "ERROR", SB_STATUS_ERROR) < 0 ||
        sb_add_int(st, "NOTES", SB_STATUS_NOTES) < 0 ||
        PyModule_AddObject(m, "STATUSES", st) < 0) {
        Py_DECREF(st);
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
