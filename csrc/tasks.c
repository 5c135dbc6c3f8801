/* JoinableQueue: the unfinished count, task_done() and join().
 *
 * The count is not a field of its own: it is derived from counters of the published state,
 *
 *     unfinished = added - dropped - replaced - tasks_done
 *
 * so an add publishes its item and its count in one store (ring.c is unchanged), a
 * task_done publishes its decrement like any mutation, and a process killed at any instant
 * leaves the count exact. Items the engine removes itself (drop-oldest, addmode 2) count as
 * done: nobody will fetch them. A consumer killed after its fetch and before its task_done
 * leaves its item unfinished, as with multiprocessing.JoinableQueue.
 *
 * join() waiters sleep on their own eventcount (tasks_seq / tasks_sleep, wait.c), bumped
 * under the lock by the task_done that brings the count to 0; they re-check under the lock.
 */
#define _GNU_SOURCE
#include "pmq_internal.h"

/* The counters come from shared memory: a sum that overflows reads as nothing unfinished. */
uint64_t pmq_unfinished_of(const pmq_state *s) {
    uint64_t done;
    if (__builtin_add_overflow(s->dropped, s->replaced, &done) ||
        __builtin_add_overflow(done, s->tasks_done, &done))
        return 0;
    return s->added > done ? s->added - done : 0;
}

int pmq_task_done(pmq_queue *q, uint64_t n) {
    int rc = pmq_lock(q, NULL);
    if (rc != PMQ_OK) return rc;
    if (pmq_unfinished_of(pmq_published(q)) < n) {
        pmq_unlock(q);
        return PMQ_E_NOTASK;
    }
    pmq_state *w = pmq_begin(q);
    w->tasks_done += n;
    pmq_commit(q);
    int owed = n > 0 && pmq_unfinished_of(w) == 0 && pmq_signal_tasks(q);
    pmq_unlock(q);
    if (owed) pmq_wake_tasks(q);
    return PMQ_OK;
}

int pmq_join(pmq_queue *q, int64_t timeout_ns) {
    pmq_call c;
    pmq_call_init(&c, timeout_ns);
    for (;;) {
        int rc = pmq_lock(q, &c);
        if (rc != PMQ_OK) return rc;
        if (pmq_unfinished_of(pmq_published(q)) == 0) {
            pmq_unlock(q);
            return PMQ_OK;
        }
        if (pmq_call_expired(&c)) {
            pmq_unlock(q);
            return PMQ_E_PENDING;
        }
        rc = pmq_wait_tasks(q, pmq_tasks_seen(q), &c);
        if (rc != PMQ_OK) return rc;
        /* look again, also once past the deadline */
    }
}

int pmq_unfinished(pmq_queue *q, uint64_t *out) {
    int rc = pmq_lock(q, NULL);
    if (rc != PMQ_OK) return rc;
    *out = pmq_unfinished_of(pmq_published(q));
    pmq_unlock(q);
    return PMQ_OK;
}
