/* The queue lock: a process-shared robust mutex, and condvar waits on CLOCK_MONOTONIC.
 *
 * When the previous holder died (EOWNERDEAD), the new holder runs pmq_recover_locked()
 * before marking the mutex consistent, so nobody ever sees a half-made change.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <time.h>

#include "pmq_internal.h"

static int64_t lock_timeout_ns = 5LL * 1000 * 1000 * 1000;

int pmq_crash_point = 0;

void pmq_set_lock_timeout(int64_t timeout_ns) {
    lock_timeout_ns = timeout_ns > 0 ? timeout_ns : 1;
}

void pmq_test_crash_at(int point) { pmq_crash_point = point; }

void pmq_crash_check(int point) {
    if (pmq_crash_point == point) raise(SIGKILL);
}

int pmq_deadline(int64_t timeout_ns, struct timespec *out) {
    if (clock_gettime(CLOCK_MONOTONIC, out) != 0) return PMQ_E_SYS;
    int64_t sec = timeout_ns / 1000000000LL;
    int64_t nsec = out->tv_nsec + timeout_ns % 1000000000LL;
    if (nsec >= 1000000000LL) {
        sec += 1;
        nsec -= 1000000000LL;
    }
    out->tv_sec += (time_t)sec;
    out->tv_nsec = (long)nsec;
    return PMQ_OK;
}

/* Called with the mutex held after EOWNERDEAD; returns with it held. */
static int recover(pmq_queue *q) {
    int rc = pmq_recover_locked(q);
    if (pthread_mutex_consistent(&q->h->lock) != 0) return PMQ_E_CORRUPT;
    return rc;
}

int pmq_lock(pmq_queue *q) {
    int rc = pthread_mutex_trylock(&q->h->lock);
    if (rc == EBUSY) {
        struct timespec deadline;
        if (pmq_deadline(lock_timeout_ns, &deadline) != PMQ_OK) return PMQ_E_SYS;
        rc = pthread_mutex_clocklock(&q->h->lock, CLOCK_MONOTONIC, &deadline);
    }
    switch (rc) {
    case 0:
        return PMQ_OK;
    case EOWNERDEAD:
        rc = recover(q);
        if (rc != PMQ_OK) pthread_mutex_unlock(&q->h->lock);
        return rc;
    case ETIMEDOUT:
        return PMQ_E_LOCKTIMEOUT;
    case ENOTRECOVERABLE:
    case EINVAL:  /* the mutex's bytes were overwritten */
    case EDEADLK:
    case EPERM:
        return PMQ_E_CORRUPT;
    default:
        errno = rc;
        return PMQ_E_SYS;
    }
}

void pmq_unlock(pmq_queue *q) { pthread_mutex_unlock(&q->h->lock); }

int pmq_cond_wait(pmq_queue *q, pthread_cond_t *cond, const struct timespec *deadline) {
    int rc = deadline ? pthread_cond_timedwait(cond, &q->h->lock, deadline)
                      : pthread_cond_wait(cond, &q->h->lock);
    switch (rc) {
    case 0:
        return PMQ_OK;
    case ETIMEDOUT:
        return 1;
    case EOWNERDEAD:
        return recover(q);
    case ENOTRECOVERABLE:
    case EINVAL: /* the mutex or condvar bytes were overwritten */
    case EPERM:
        return PMQ_E_CORRUPT; /* maybe not held; the caller's unlock then fails harmlessly */
    default:
        errno = rc;
        return PMQ_E_SYS;
    }
}

int pmq_test_hold_lock(pmq_queue *q) { return pmq_lock(q); }
