/*
 * bench/pingpong.c -- the C reference for shmbench's channel round trips.
 *
 * Two processes (fork) share one MAP_SHARED|MAP_ANONYMOUS mapping: a request buffer, a
 * reply buffer and two 32-bit sequence words. The parent copies a payload into the
 * request buffer and bumps the request word; the child copies the request into the reply
 * buffer (an echo: one copy each way, like the channel) and bumps the reply word. Waiting:
 *
 *   PP_FUTEX  FUTEX_WAIT on the word until it changes; the other side always FUTEX_WAKEs
 *             (the textbook futex ping-pong: no spinning, a syscall on every hand-over)
 *   PP_SPIN   busy-poll the word with a pause instruction (both sides burn a core)
 *   PP_HYBRID busy-poll for up to 2 ms, then FUTEX_WAIT; the other side wakes only a
 *             sleeper (what shmbench's channel does, minus its bookkeeping)
 *
 * Built by bench/test_channel_bench.py with gcc into a temporary directory as a shared
 * library and driven through ctypes: pp_roundtrip() is ONE round trip per call, so it is
 * timed exactly like the Python methods (per call, by pytest-benchmark); pp_loop() times
 * n round trips inside C (clock_gettime around each) for the pure-C figure without the
 * ctypes call.
 *
 * pp_frame() is the floor of a large single-env step instead of an echo: the child copies
 * one of its own four frames into the reply buffer (a server writing the observation an
 * env handed it into the slab), the parent copies the reply out (the host's copy=True):
 * two memcpys, the second reading what the other core just wrote, and one hand-over each
 * way -- everything a 1 MiB step must do, with nothing else.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { PP_FUTEX = 0, PP_SPIN = 1, PP_HYBRID = 2 };
/* PP_HYBRID spins this long, then sleeps on the futex (so an idle child leaves its core) */
#define PP_HYBRID_SPIN_NS 2000000
#define PP_STOP UINT64_MAX
#define PP_FRAME (1ULL << 62)   /* in len: copy frame `frame` % 4, not the request */

typedef struct {
    _Alignas(64) _Atomic uint32_t req_seq;
    _Alignas(64) _Atomic uint32_t rep_seq;
    _Alignas(64) uint64_t len;
    uint32_t mode;
    uint32_t frame;
    _Alignas(64) _Atomic uint32_t req_sleeping;   /* PP_HYBRID: a waiter sleeps on req_seq */
    _Alignas(64) _Atomic uint32_t rep_sleeping;
} pp_shared;

static pp_shared *pp;
static char *pp_req, *pp_rep;
static size_t pp_max, pp_size;
static pid_t pp_child = -1;
static uint32_t pp_seq;

static int64_t
pp_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static _Atomic uint32_t *
pp_sleeper_flag(_Atomic uint32_t *word)
{
    return word == &pp->req_seq ? &pp->req_sleeping : &pp->rep_sleeping;
}

static void
pp_wait(_Atomic uint32_t *word, uint32_t old)
{
    if (pp->mode == PP_SPIN) {
        while (atomic_load_explicit(word, memory_order_acquire) == old)
            __builtin_ia32_pause();
        return;
    }
    if (pp->mode == PP_HYBRID) {
        int64_t end = pp_now() + PP_HYBRID_SPIN_NS;
        for (;;) {
            for (int i = 0; i < 64; i++) {
                if (atomic_load_explicit(word, memory_order_acquire) != old)
                    return;
                __builtin_ia32_pause();
            }
            if (pp_now() >= end)
                break;
        }
        /* then sleep: the flag (seq_cst) before the re-check, as the poster bumps the
         * word before it reads the flag, so no wake-up is lost */
        _Atomic uint32_t *flag = pp_sleeper_flag(word);
        atomic_store(flag, 1);
        while (atomic_load(word) == old)
            syscall(SYS_futex, word, FUTEX_WAIT, old, NULL, NULL, 0);
        atomic_store(flag, 0);
        return;
    }
    while (atomic_load_explicit(word, memory_order_acquire) == old)
        syscall(SYS_futex, word, FUTEX_WAIT, old, NULL, NULL, 0);
}

static void
pp_post(_Atomic uint32_t *word)
{
    if (pp->mode == PP_HYBRID) {
        atomic_fetch_add(word, 1);
        if (atomic_load(pp_sleeper_flag(word)))
            syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
        return;
    }
    atomic_fetch_add_explicit(word, 1, memory_order_release);
    if (pp->mode == PP_FUTEX)
        syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void
pp_child_loop(void)
{
    uint32_t seen = 0;
    char *frames[4] = {NULL};
    for (;;) {
        pp_wait(&pp->req_seq, seen);
        seen = atomic_load_explicit(&pp->req_seq, memory_order_acquire);
        uint64_t n = pp->len;
        if (n == PP_STOP)
            _exit(0);
        if (n & PP_FRAME) {
            n &= ~PP_FRAME;
            if (frames[0] == NULL) {
                for (int i = 0; i < 4; i++) {
                    frames[i] = malloc(pp_max);
                    if (frames[i] == NULL)
                        _exit(2);
                    memset(frames[i], i + 1, pp_max);
                }
            }
            memcpy(pp_rep, frames[pp->frame % 4], n);
        } else {
            memcpy(pp_rep, pp_req, n);
        }
        pp_post(&pp->rep_seq);
    }
}

/* Map the buffers and fork the echoing child. Returns 0, or -errno. */
int
pp_start(int mode, size_t max)
{
    if (pp != NULL)
        return -EBUSY;
    pp_max = max;
    pp_size = 4096 + 2 * max;
    void *m = mmap(NULL, pp_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    pp = m;
    pp_req = (char *)m + 4096;
    pp_rep = pp_req + max;
    pp->mode = (uint32_t)mode;
    pp_seq = 0;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        pp_child_loop();
    }
    pp_child = pid;
    return 0;
}

/* One round trip of n bytes; returns the reply buffer (valid until the next call). */
const char *
pp_roundtrip(const char *buf, size_t n)
{
    memcpy(pp_req, buf, n);
    pp->len = n;
    uint32_t old = atomic_load_explicit(&pp->rep_seq, memory_order_relaxed);
    pp_post(&pp->req_seq);
    pp_wait(&pp->rep_seq, old);
    return pp_rep;
}

/* One step's transfer of n bytes: the child's frame k % 4 (every byte k % 4 + 1) copied
 * into the reply buffer, then into dst. */
void
pp_frame(char *dst, size_t n, uint32_t k)
{
    pp->len = n | PP_FRAME;
    pp->frame = k;
    uint32_t old = atomic_load_explicit(&pp->rep_seq, memory_order_relaxed);
    pp_post(&pp->req_seq);
    pp_wait(&pp->rep_seq, old);
    memcpy(dst, pp_rep, n);
}

/* n round trips timed one by one inside C; each round trip's ns go to out[i]. */
void
pp_loop(const char *buf, size_t len, long n, int64_t *out)
{
    struct timespec a, b;
    for (long i = 0; i < n; i++) {
        clock_gettime(CLOCK_MONOTONIC, &a);
        pp_roundtrip(buf, len);
        clock_gettime(CLOCK_MONOTONIC, &b);
        out[i] = (int64_t)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    }
}

/* Stop the child and unmap. Returns the child's exit status (0: clean). */
int
pp_stop(void)
{
    int status = -1;
    if (pp == NULL)
        return status;
    if (pp_child > 0) {
        pp->len = PP_STOP;
        pp_post(&pp->req_seq);
        if (waitpid(pp_child, &status, 0) < 0)
            status = -1;
        pp_child = -1;
    }
    munmap(pp, pp_size);
    pp = NULL;
    return status;
}
