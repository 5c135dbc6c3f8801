/* Waiting for items or room: futex eventcounts, spin then sleep.
 *
 * No pthread condvars: a waiter killed inside a process-shared condvar wait can make the
 * next pthread_cond_signal block for ever, with the mutex held (glibc 2.36). Here a waiter
 * holds nothing while it waits:
 *
 *   waiter                                       waker (lock held, after publishing)
 *   lock; check; seen = seq; unlock              seq += 1                    (seq_cst)
 *   spin while seq == seen (budget, deadline;    if (flag) { flag = 0; owe a wake }
 *     pause hints and sched_yield())
 *   flag = 1                          (seq_cst)  unlock
 *   if seq == seen: FUTEX_WAIT(seq, seen, left)  if owed: FUTEX_WAKE(seq, all)
 *   lock; check again ...
 *
 * Either the waiter's re-load sees the new seq, or the waker's load sees the flag (the two
 * seq_cst store/load pairs cannot both miss). The flag is taken under the lock, so a waker
 * never consumes the flag of a waiter that has not yet read the seq it bumped. Waking all
 * keeps a pmq_wait() (which never consumes) from stealing a consumer's wake-up; everyone
 * re-checks under the lock. A dead waiter leaves at most a set flag (one spare FUTEX_WAKE).
 * A waker killed between its unlock and its FUTEX_WAKE would leave sleepers whose flag it
 * took: sleeps are therefore capped (SLEEP_CAP_NS) and end in a re-check. The spin only
 * reads: it ends in a return (the caller re-checks under the lock) or in the flag protocol.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "pmq_internal.h"

#define SLEEP_CAP_NS (200LL * 1000 * 1000)
#define SPIN_BATCH 4 /* pause hints (~27 ns each here) between two yields */

static int64_t default_spin_ns = PMQ_DEFAULT_SPIN_NS;

void pmq_set_default_spin(int64_t ns) {
    __atomic_store_n(&default_spin_ns, ns > 0 ? ns : 0, __ATOMIC_RELAXED);
}

int64_t pmq_default_spin(void) { return __atomic_load_n(&default_spin_ns, __ATOMIC_RELAXED); }

void pmq_set_spin(pmq_queue *q, int64_t ns) {
    __atomic_store_n(&q->spin_ns, ns > 0 ? ns : 0, __ATOMIC_RELAXED);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

static void futex_wake_all(uint32_t *word) {
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Shared (not PRIVATE): the word is in memory mapped by other processes. */
static void futex_wait(uint32_t *word, uint32_t expected, int64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, NULL, 0);
    /* 0, EAGAIN (the word moved), EINTR, ETIMEDOUT: the caller looks again in each case */
}

/* ---- waker side -------------------------------------------------------------------- */

static int signal_ec(uint32_t *seq, uint32_t *flag) {
    __atomic_fetch_add(seq, 1u, __ATOMIC_SEQ_CST);
    return __atomic_load_n(flag, __ATOMIC_SEQ_CST) != 0 &&
           __atomic_exchange_n(flag, 0u, __ATOMIC_SEQ_CST) != 0;
}

void pmq_signal_items(pmq_queue *q, pmq_wakes *wk) {
    if (signal_ec(&q->h->items_seq, &q->h->items_sleep)) wk->items = 1;
    pmq_bells_take(q, wk); /* one relaxed load when no doorbell is armed */
}

void pmq_signal_room(pmq_queue *q, pmq_wakes *wk) {
    if (signal_ec(&q->h->room_seq, &q->h->room_sleep)) {
        __atomic_store_n(&q->h->room_need, PMQ_NONE, __ATOMIC_RELAXED); /* they re-register */
        wk->room = 1;
    }
}

void pmq_wake(pmq_queue *q, const pmq_wakes *wk) {
    if (wk->items) futex_wake_all(&q->h->items_seq);
    if (wk->room) futex_wake_all(&q->h->room_seq);
    if (wk->bells) pmq_bells_ring(q, wk->bells);
}

void pmq_wake_all(pmq_queue *q) {
    __atomic_fetch_add(&q->h->items_seq, 1u, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&q->h->room_seq, 1u, __ATOMIC_SEQ_CST);
    futex_wake_all(&q->h->items_seq);
    futex_wake_all(&q->h->room_seq);
    __atomic_fetch_add(&q->h->tasks_seq, 1u, __ATOMIC_SEQ_CST);
    pmq_wake_tasks(q);
}

void pmq_shutdown(pmq_queue *q) {
    if (q == NULL) return;
    __atomic_store_n(&q->closing, 1, __ATOMIC_SEQ_CST);
    /* Moving the words makes a waiter about to FUTEX_WAIT return at once (EAGAIN); waiters
     * of other processes see a change, look again and wait on. */
    pmq_wake_all(q);
}

/* ---- waiter side ------------------------------------------------------------------- */

uint32_t pmq_items_seen(const pmq_queue *q) {
    return __atomic_load_n(&q->h->items_seq, __ATOMIC_RELAXED);
}

uint32_t pmq_room_seen(const pmq_queue *q) {
    return __atomic_load_n(&q->h->room_seq, __ATOMIC_RELAXED);
}

static inline int closing(const pmq_queue *q) {
    return __atomic_load_n(&q->closing, __ATOMIC_SEQ_CST);
}

/* Watch *seq until it leaves `seen` (1), `end` passes (0) or the handle closes (-1): a few
 * pause hints, then a sched_yield(), then the clock, and again. The yield is what makes
 * spinning safe when the peer shares this CPU: without it the peer cannot run before the
 * budget is spent (a same-CPU ping-pong took 55 us per round trip with a 20 us budget, and
 * 12 us sleeping at once); with it the peer runs at once (~9 us). With nothing else
 * runnable here the yield is a ~0.5 us system call and the peer, if it runs, runs on
 * another CPU, where the loop sees its store within a batch or a yield. (Yielding less
 * often once yields come back quickly measured no different, so the loop stays simple.) */
static int spin_ec(pmq_queue *q, const uint32_t *seq, uint32_t seen, int64_t *now,
                   int64_t end) {
    while (*now < end) {
        for (int i = 0; i < SPIN_BATCH; i++) {
            if (__atomic_load_n(seq, __ATOMIC_ACQUIRE) != seen) return 1;
            cpu_relax();
        }
        if (closing(q)) return -1;
        sched_yield();
        *now = pmq_now_ns();
    }
    return 0;
}

static int wait_ec(pmq_queue *q, uint32_t *seq, uint32_t *flag, uint32_t seen,
                   const pmq_call *c) {
    int64_t now = pmq_now_ns();
    int64_t spin = __atomic_load_n(&q->spin_ns, __ATOMIC_RELAXED);
    if (spin > 0) {
        int64_t spin_end = now + spin < c->end ? now + spin : c->end;
        int r = spin_ec(q, seq, seen, &now, spin_end);
        if (r > 0) return PMQ_OK;
        if (r < 0) return PMQ_E_CLOSED;
    }
    if (now >= c->end) return PMQ_OK; /* deadline: the caller looks once more */
    __atomic_store_n(flag, 1u, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(seq, __ATOMIC_SEQ_CST) != seen) return PMQ_OK;
    if (closing(q)) return PMQ_E_CLOSED;
    int64_t left = c->end - now;
    futex_wait(seq, seen, left < SLEEP_CAP_NS ? left : SLEEP_CAP_NS);
    return closing(q) ? PMQ_E_CLOSED : PMQ_OK;
}

int pmq_wait_items(pmq_queue *q, uint32_t seen, const pmq_call *c, const pmq_wakes *wk) {
    pmq_unlock(q);
    pmq_wake(q, wk);
    return wait_ec(q, &q->h->items_seq, &q->h->items_sleep, seen, c);
}

int pmq_wait_room(pmq_queue *q, uint32_t seen, uint64_t need, const pmq_call *c,
                  const pmq_wakes *wk) {
    /* Under the lock still: the smallest need of the sleepers (a hint for observers). */
    uint64_t cur = __atomic_load_n(&q->h->room_need, __ATOMIC_RELAXED);
    if (need < cur) __atomic_store_n(&q->h->room_need, need, __ATOMIC_RELAXED);
    pmq_unlock(q);
    pmq_wake(q, wk);
    return wait_ec(q, &q->h->room_seq, &q->h->room_sleep, seen, c);
}

/* ---- join() waiters (tasks.c): the same protocol on tasks_seq / tasks_sleep ---------- */

int pmq_signal_tasks(pmq_queue *q) { return signal_ec(&q->h->tasks_seq, &q->h->tasks_sleep); }

void pmq_wake_tasks(pmq_queue *q) { futex_wake_all(&q->h->tasks_seq); }

uint32_t pmq_tasks_seen(const pmq_queue *q) {
    return __atomic_load_n(&q->h->tasks_seq, __ATOMIC_RELAXED);
}

int pmq_wait_tasks(pmq_queue *q, uint32_t seen, const pmq_call *c) {
    pmq_unlock(q);
    return wait_ec(q, &q->h->tasks_seq, &q->h->tasks_sleep, seen, c);
}
