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
    ref.rec->flags |= REC_TOMB;
    w->pending_tomb = PMQ_NONE;
    return PMQ_OK;
}

/* Every published record must be readable and the live ones must add up to the counters. */
static int check_records(const pmq_queue *q, const pmq_state *w) {
    uint64_t count = 0, bytes = 0;
    for (uint64_t pos = w->head; pos < w->tail;) {
        pmq_rec_ref ref;
        if (pmq_read_rec(q, pos, w->tail, &ref) != PMQ_OK) return PMQ_E_CORRUPT;
        if (ref.rec != NULL && !(ref.rec->flags & REC_TOMB)) {
            count++;
            bytes += (uint64_t)ref.rec->klen + ref.rec->vlen;
        }
        pos = ref.next;
    }
    if (count != w->count || bytes != w->bytes) return PMQ_E_CORRUPT;
    if (q->h->max_items > 0 && count > (uint64_t)q->h->max_items) return PMQ_E_CORRUPT;
    return PMQ_OK;
}

/* The index is derived state: rebuilt from the records (after check_records). */
static int rebuild_index(pmq_queue *q, const pmq_state *w) {
    if (q->index == NULL) return PMQ_OK;
    memset(q->index, 0, q->h->index_slots * sizeof(pmq_slot));
    for (uint64_t pos = w->head; pos < w->tail;) {
        pmq_rec_ref ref;
        (void)pmq_read_rec(q, pos, w->tail, &ref); /* validated by check_records */
        if (ref.rec != NULL && !(ref.rec->flags & REC_TOMB) &&
            pmq_index_insert(q, pos, pmq_hash_key(pmq_rec_key(ref.rec), ref.rec->klen)) !=
                PMQ_OK)
            return PMQ_E_CORRUPT;
        pos = ref.next;
    }
    return PMQ_OK;
}

/* The previous holder died mid-operation. The published state is whole by construction;
 * what may be stale is everything derived from it: a tombstone not yet set, the index,
 * the waiter counts. Rebuild those from a scan of the published records. */
int pmq_recover_locked(pmq_queue *q) {
    pmq_header *h = q->h;
    if (h->cur > 1) return PMQ_E_CORRUPT;
    pmq_state *w = pmq_begin(q);
    if (w->head > w->tail || w->tail - w->head > h->data_cap) return PMQ_E_CORRUPT;
    int rc = finish_pending_tomb(q, w);
    if (rc == PMQ_OK) rc = check_records(q, w);
    if (rc == PMQ_OK) rc = rebuild_index(q, w);
    if (rc != PMQ_OK) return rc;
    w->recoveries++;
    /* A waiter that died while waiting leaves its count behind: that costs a few needless
     * wake-ups, never a missed one, so the counts are left alone (live waiters own theirs). */
    pmq_commit(q);
    return PMQ_OK;
}
