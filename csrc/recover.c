/* Recovery after a lock holder died (EOWNERDEAD): called by lock.c with the mutex held,
 * before it is marked consistent.
 */
#define _GNU_SOURCE
#include <string.h>

#include "pmq_internal.h"

/* Rolls forward the tombstone the dead holder had published but maybe not yet written. */
static int finish_pending_tomb(pmq_queue *q, pmq_state *w) {
    if (w->pending_tomb == PMQ_NONE) return PMQ_OK;
    if (w->pending_tomb < w->head || w->pending_tomb >= w->tail) return PMQ_E_CORRUPT;
    pmq_rec_ref ref;
    if (pmq_read_rec(q, w->pending_tomb, w->tail, &ref) != PMQ_OK || ref.rec == NULL)
        return PMQ_E_CORRUPT;
    __atomic_or_fetch(&ref.rec->flags, REC_TOMB, __ATOMIC_RELAXED);
    w->pending_tomb = PMQ_NONE;
    return PMQ_OK;
}

/* Every published record must be readable and the live ones must add up to the counters. */
static int check_records(const pmq_queue *q, pmq_state *w) {
    uint64_t count = 0, bytes = 0, held = 0;
    for (uint64_t pos = w->head; pos < w->tail;) {
        pmq_rec_ref ref;
        if (pmq_read_rec(q, pos, w->tail, &ref) != PMQ_OK) return PMQ_E_CORRUPT;
        if (ref.rec != NULL && !(ref.flags & REC_TOMB)) {
            count++;
            bytes += (uint64_t)ref.klen + ref.vlen;
            if (ref.flags & REC_HELD) held++;
        }
        pos = ref.next;
    }
    if (count != w->count || bytes != w->bytes) return PMQ_E_CORRUPT;
    if (q->max_items > 0 && count > (uint64_t)q->max_items) return PMQ_E_CORRUPT;
    w->held = held; /* a release may have cleared flags and died before publishing */
    return PMQ_OK;
}

/* The index is derived state: rebuilt from the records (after check_records). */
static int rebuild_index(pmq_queue *q, const pmq_state *w) {
    if (q->index == NULL) return PMQ_OK;
    memset(q->index, 0, q->index_slots * sizeof(pmq_slot));
    for (uint64_t pos = w->head; pos < w->tail;) {
        pmq_rec_ref ref;
        (void)pmq_read_rec(q, pos, w->tail, &ref); /* validated by check_records */
        if (ref.rec != NULL && !(ref.flags & REC_TOMB) &&
            pmq_index_insert(q, pos, pmq_hash_key(pmq_ref_key(&ref), ref.klen)) != PMQ_OK)
            return PMQ_E_CORRUPT;
        pos = ref.next;
    }
    return PMQ_OK;
}

/* The previous holder died mid-operation. The published state is whole by construction;
 * what may be stale is everything derived from it: a tombstone not yet set, the index.
 * Rebuild those from a scan of the published records. */
int pmq_recover_locked(pmq_queue *q) {
    if (q->h->cur > 1) return PMQ_E_CORRUPT;
    pmq_state *w = pmq_begin(q);
    if (!pmq_state_ok(q, w)) return PMQ_E_CORRUPT;
    int rc = finish_pending_tomb(q, w);
    if (rc == PMQ_OK) rc = check_records(q, w);
    if (rc == PMQ_OK) rc = rebuild_index(q, w);
    if (rc != PMQ_OK) return rc;
    w->recoveries++;
    /* Waiters are not counted (wait.c): a dead one leaves at most a sleep flag set. */
    pmq_commit(q);
    return PMQ_OK;
}
