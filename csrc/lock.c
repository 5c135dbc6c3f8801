/* The queue lock: a process-shared robust mutex, taken within a deadline.
 *
 * When the previous holder died (EOWNERDEAD), the new holder runs pmq_recover_locked()
 * before marking the mutex consistent, so nobody ever sees a half-made change. A recovery
 * that fails poisons the segment: the mutex is released without being made consistent
 * (ENOTRECOVERABLE for every later locker in every process) and the header says so.
 *
 * A lock word whose owner does not exist (bytes overwritten, or a holder that died without
 * the kernel's robust-list cleanup) would otherwise look like a live holder until the lock
 * timeout: waiters look at the owner TID every few milliseconds and call it corruption.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "pmq_internal.h"

static int64_t lock_timeout_ns = 5LL * 1000 * 1000 * 1000;

int pmq_crash_point = 0;

void pmq_set_lock_timeout(int64_t timeout_ns) {
    __atomic_store_n(&lock_timeout_ns, timeout_ns > 0 ? timeout_ns : 1, __ATOMIC_RELAXED);
}

int64_t pmq_get_lock_timeout(void) { return __atomic_load_n(&lock_timeout_ns, __ATOMIC_RELAXED); }

static int64_t lock_slice_ns = 0;

void pmq_set_lock_slice(int64_t ns) {
    __atomic_store_n(&lock_slice_ns, ns > 0 ? ns : 0, __ATOMIC_RELAXED);
}

void pmq_test_crash_at(int point) { pmq_crash_point = point; }

void pmq_crash_check(int point) {
    if (pmq_crash_point == point) raise(SIGKILL);
}

static struct timespec to_timespec(int64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    return ts;
}

/* ---- lock-word sanity ------------------------------------------------------------------ */

#define FUTEX_TID_MASK_ 0x3fffffffu
#define FIRST_CHECK_NS (2 * 1000 * 1000)
#define CHECK_EVERY_NS (5 * 1000 * 1000)

static int64_t pid_max(void) {
    static int64_t cached = 0;
    int64_t v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v > 0) return v;
    v = 4194304; /* PID_MAX_LIMIT on 64-bit Linux */
    FILE *f = fopen("/proc/sys/kernel/pid_max", "re");
    if (f != NULL) {
        long long n;
        if (fscanf(f, "%lld", &n) == 1 && n > 0 && n <= v) v = n;
        fclose(f);
    }
    __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    return v;
}

static uint32_t lock_word(const pmq_queue *q) {
#ifdef __GLIBC__
    return (uint32_t)__atomic_load_n(&q->h->lock.__data.__lock, __ATOMIC_RELAXED);
#else
    (void)q;
    return 0; /* unknown layout: no check */
#endif
}

/* Whether the lock word names an owner that cannot exist, and has not changed since *last
 * (so it is not a hand-over in flight). Updates *last. */
static int owner_is_gone(const pmq_queue *q, uint32_t *last) {
    uint32_t word = lock_word(q);
    uint32_t prev = *last;
    *last = word;
    if (word == 0 || word != prev) return 0;
    uint32_t tid = word & FUTEX_TID_MASK_;
    if (tid == 0 || (int64_t)tid > pid_max()) return 1;
    return kill((pid_t)tid, 0) != 0 && errno == ESRCH;
}

/* glibc's pthread_mutex_trylock() answers ENOTRECOVERABLE with the lock word still holding
 * the caller's TID (it releases it only `if (oldval == id)`, and oldval was 0): the mutex
 * would stay locked by us. Release the word the way glibc's unlock does, leaving the
 * mutex's NOTRECOVERABLE mark alone. */
static void release_unrecoverable(pmq_queue *q) {
#ifdef __GLIBC__
    int *word = &q->h->lock.__data.__lock;
    if (((uint32_t)__atomic_load_n(word, __ATOMIC_RELAXED) & FUTEX_TID_MASK_) !=
        (uint32_t)gettid())
        return;
    if ((uint32_t)__atomic_exchange_n(word, 0, __ATOMIC_RELEASE) & FUTEX_WAITERS)
        syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
#else
    (void)q;
#endif
}

/* ---- taking the lock ------------------------------------------------------------------- */

/* Called with the mutex held after EOWNERDEAD. */
static int recover(pmq_queue *q) {
    pmq_header *h = q->h;
    int rc = __atomic_load_n(&h->poisoned, __ATOMIC_RELAXED) ? PMQ_E_CORRUPT
                                                             : pmq_recover_locked(q);
    if (rc != PMQ_OK) {
        /* Not made consistent: unlocking makes the mutex ENOTRECOVERABLE for everyone. */
        __atomic_store_n(&h->poisoned, 1u, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&h->lock);
        pmq_wake_all(q);
        return PMQ_E_CORRUPT;
    }
    if (pthread_mutex_consistent(&h->lock) != 0) {
        pthread_mutex_unlock(&h->lock);
        return PMQ_E_CORRUPT;
    }
    /* The dead holder may have published without waking anyone (or taken the armed
     * doorbells): everyone looks again. */
    pmq_wake_all(q);
    pmq_bells_ring_all(q);
    return PMQ_OK;
}

/* The outcome of a lock attempt that did not time out. */
static int acquired(pmq_queue *q, int rc) {
    switch (rc) {
    case 0:
        break;
    case EOWNERDEAD:
        rc = recover(q);
        if (rc != PMQ_OK) return rc;
        break;
    case ENOTRECOVERABLE:
    case EINVAL: /* the mutex's bytes were overwritten */
    case EDEADLK:
    case EPERM:
    case EAGAIN:
        return PMQ_E_CORRUPT;
    default:
        errno = rc;
        return PMQ_E_SYS;
    }
    if (__atomic_load_n(&q->h->poisoned, __ATOMIC_ACQUIRE) ||
        !pmq_state_ok(q, pmq_published(q))) {
        pthread_mutex_unlock(&q->h->lock);
        return PMQ_E_CORRUPT;
    }
    return PMQ_OK;
}

int pmq_lock(pmq_queue *q, const pmq_call *c) {
    if (__atomic_load_n(&q->closing, __ATOMIC_ACQUIRE)) return PMQ_E_CLOSED;
    if (__atomic_load_n(&q->h->poisoned, __ATOMIC_ACQUIRE)) return PMQ_E_CORRUPT;
    int rc = pthread_mutex_trylock(&q->h->lock);
    if (rc == ENOTRECOVERABLE) release_unrecoverable(q);
    if (rc != EBUSY) return acquired(q, rc);

    int64_t now = pmq_now_ns();
    int64_t budget = pmq_get_lock_timeout();
    int64_t slice = __atomic_load_n(&lock_slice_ns, __ATOMIC_RELAXED);
    if (c == NULL && slice > 0 && slice < budget) budget = slice;
    if (c != NULL && !c->forever) {
        int64_t left = c->end - now;
        if (left < PMQ_LOCK_FLOOR_NS) left = PMQ_LOCK_FLOOR_NS;
        if (left < budget) budget = left;
    }
    int64_t lock_end = now + budget;
    uint32_t last = lock_word(q);
    int64_t chunk = FIRST_CHECK_NS;
    for (;;) {
        int64_t until = now + chunk < lock_end ? now + chunk : lock_end;
        struct timespec ts = to_timespec(until);
        rc = pthread_mutex_clocklock(&q->h->lock, CLOCK_MONOTONIC, &ts);
        if (rc != ETIMEDOUT) return acquired(q, rc);
        now = pmq_now_ns();
        if (owner_is_gone(q, &last)) return PMQ_E_CORRUPT;
        if (now >= lock_end) return PMQ_E_LOCKTIMEOUT;
        if (__atomic_load_n(&q->closing, __ATOMIC_ACQUIRE)) return PMQ_E_CLOSED;
        chunk = CHECK_EVERY_NS;
    }
}

void pmq_unlock(pmq_queue *q) { pthread_mutex_unlock(&q->h->lock); }

int pmq_test_hold_lock(pmq_queue *q) { return pmq_lock(q, NULL); }
