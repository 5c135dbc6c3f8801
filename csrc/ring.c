/* The record ring: add, fetch, batches, overflow policies (the index is in index.c,
 * recovery in recover.c).
 *
 * Positions (head, tail) grow monotonically; a record lives at position % data_cap and never
 * straddles the end of the ring (a WRAP record, or fewer than sizeof(pmq_rec) bytes, pads to
 * the end). Every record read is validated against the ring's bounds and the published
 * tail before its lengths are trusted.
 */
#define _GNU_SOURCE
#include <string.h>
#include <time.h>

#include "pmq_internal.h"

/* ---- state publication ------------------------------------------------------------- */

pmq_state *pmq_begin(pmq_queue *q) {
    pmq_header *h = q->h;
    pmq_state *w = &h->st[1u - h->cur];
    *w = h->st[h->cur];
    return w;
}

void pmq_commit(pmq_queue *q) {
    __atomic_store_n(&q->h->cur, 1u - q->h->cur, __ATOMIC_RELEASE);
}

/* ---- records ----------------------------------------------------------------------- */

int pmq_read_rec(const pmq_queue *q, uint64_t pos, uint64_t tail, pmq_rec_ref *out) {
    uint64_t cap = q->h->data_cap, off = pmq_phys(q, pos);
    if (cap - off < sizeof(pmq_rec)) {
        out->rec = NULL;
        out->next = pmq_to_boundary(q, pos);
        return out->next <= tail ? PMQ_OK : PMQ_E_CORRUPT;
    }
    pmq_rec *r = (pmq_rec *)(q->data + off);
    if (r->flags & REC_WRAP) {
        out->rec = NULL;
        out->next = pmq_to_boundary(q, pos);
        return out->next <= tail ? PMQ_OK : PMQ_E_CORRUPT;
    }
    uint64_t size = pmq_rec_size(r->klen, r->vlen);
    if (r->check != pmq_rec_check(r->klen, r->vlen, r->id) || size > cap - off ||
        size > tail - pos || (r->flags & ~(uint32_t)REC_TOMB) != 0)
        return PMQ_E_CORRUPT;
    out->rec = r;
    out->next = pos + size;
    return PMQ_OK;
}

/* ---- removal from the head ---------------------------------------------------------- */

/* Skips padding and tombstones at w->head. */
static int skip_dead(pmq_queue *q, pmq_state *w) {
    while (w->head < w->tail) {
        pmq_rec_ref ref;
        int rc = pmq_read_rec(q, w->head, w->tail, &ref);
        if (rc != PMQ_OK) return rc;
        if (ref.rec != NULL && !(ref.rec->flags & REC_TOMB)) break;
        w->head = ref.next;
    }
    if (w->head == w->tail && pmq_phys(q, w->head) != 0) {
        /* Empty: restart at the ring's start so any item up to data_cap fits. */
        w->head = w->tail = pmq_to_boundary(q, w->head);
    }
    return PMQ_OK;
}

/* Removes the live record at w->head (after skip_dead); counts it by the caller. */
static int pop_head(pmq_queue *q, pmq_state *w, pmq_rec **out) {
    pmq_rec_ref ref;
    int rc = pmq_read_rec(q, w->head, w->tail, &ref);
    if (rc != PMQ_OK) return rc;
    if (ref.rec == NULL) return PMQ_E_CORRUPT;
    pmq_index_remove_rec(q, w->head, ref.rec);
    w->count--;
    w->bytes -= (uint64_t)ref.rec->klen + ref.rec->vlen;
    w->head = ref.next;
    *out = ref.rec;
    return PMQ_OK;
}

/* ---- add ---------------------------------------------------------------------------- */

static inline uint64_t room_needed(const pmq_queue *q, const pmq_state *w, uint64_t size) {
    if (w->head == w->tail) return size; /* the write restarts an empty ring at 0 */
    uint64_t left = q->h->data_cap - pmq_phys(q, w->tail);
    return left >= size ? size : left + size;
}

static inline int has_room(const pmq_queue *q, const pmq_state *w, uint64_t size, int extra) {
    int64_t max = q->h->max_items;
    if (max > 0 && w->count + (uint64_t)extra > (uint64_t)max) return 0;
    return q->h->data_cap - (w->tail - w->head) >= room_needed(q, w, size);
}

static void wake_getters(pmq_queue *q, uint64_t count_before, uint64_t added) {
    uint32_t waiting = q->h->getters_waiting;
    if (waiting == 0 || count_before >= waiting) return;
    if (added > 1)
        pthread_cond_broadcast(&q->h->not_empty);
    else
        pthread_cond_signal(&q->h->not_empty);
}

/* Producers blocked on a full queue are woken once it has drained to a low-water mark. */
static void wake_putters(pmq_queue *q, uint64_t count_before, uint64_t used_before) {
    const pmq_header *h = q->h;
    if (h->putters_waiting == 0) return;
    const pmq_state *s = pmq_published(q);
    uint64_t used = s->tail - s->head;
    uint64_t low_bytes = h->data_cap - h->data_cap / 4;
    int wake = s->count == 0 || (used_before > low_bytes && used <= low_bytes);
    if (h->max_items > 0) {
        uint64_t max = (uint64_t)h->max_items;
        uint64_t quarter = max / 4 ? max / 4 : 1;
        uint64_t low = max - quarter;
        wake = wake || (count_before > low && s->count <= low);
    }
    if (wake) pthread_cond_broadcast(&q->h->not_full);
}

static int wait_or_give_up(pmq_queue *q, pthread_cond_t *cond, uint32_t *waiters,
                           const struct timespec *deadline, int forever, int give_up_code) {
    if (!forever && deadline == NULL) return give_up_code;
    (*waiters)++;
    int rc = pmq_cond_wait(q, cond, forever ? NULL : deadline);
    (*waiters)--;
    if (rc < 0) return rc;
    return rc == 1 ? give_up_code : PMQ_OK;
}

/* One item being added: what it is and what it may replace. */
typedef struct add_req {
    const uint8_t *key, *val;
    uint32_t klen, vlen;
    uint64_t size;   /* bytes of its record */
    uint64_t hash;   /* of its key (addmodes 1 and 2) */
    uint64_t victim; /* position of the live record with the same key (addmode 2), or NONE */
} add_req;

#define LOOK_AGAIN 1 /* the published state changed: start the add over */

/* Step 1 (addmodes 1 and 2): look the key up. Keep-oldest ignores a duplicate (counted);
 * keep-newest remembers the record the new one replaces. */
static int find_same_key(pmq_queue *q, add_req *a) {
    a->victim = PMQ_NONE;
    if (q->index == NULL) return PMQ_OK;
    a->hash = pmq_hash_key(a->key, a->klen);
    int64_t slot = pmq_index_find(q, a->key, a->klen, a->hash);
    if (slot < 0) return PMQ_OK;
    if (q->h->addmode == PMQ_ADDMODE_KEEP_OLDEST) {
        pmq_state *w = pmq_begin(q);
        w->duplicates++;
        pmq_commit(q);
        return PMQ_DUPLICATE;
    }
    a->victim = q->index[slot].pos1 - 1;
    return PMQ_OK;
}

/* Items the add brings: a replacement keeps the count. */
static inline int extra_items(const add_req *a) { return a->victim == PMQ_NONE ? 1 : 0; }

/* Reject policy: refuse (counted). Block policy: wait for a change, or give up; the caller
 * may try again after a slice and reports its final refusal with pmq_note_rejected(). */
static int refuse_or_wait(pmq_queue *q, const struct timespec *deadline, int forever) {
    pmq_header *h = q->h;
    if (h->policy == PMQ_POLICY_BLOCK) {
        int rc = wait_or_give_up(q, &h->not_full, &h->putters_waiting, deadline, forever,
                                 PMQ_E_FULL);
        return rc == PMQ_OK ? LOOK_AGAIN : rc;
    }
    pmq_state *w = pmq_begin(q);
    w->rejected++;
    pmq_commit(q);
    return PMQ_E_FULL;
}

/* Drop-oldest policy: remove items from the head of the working state w until the new one
 * fits, then publish, before any byte of the dropped records is overwritten. */
static int drop_oldest(pmq_queue *q, pmq_state *w, add_req *a) {
    while (!has_room(q, w, a->size, extra_items(a))) {
        int rc = skip_dead(q, w);
        if (rc != PMQ_OK) return rc;
        if (w->count == 0) break; /* an empty ring always has room */
        pmq_rec *r;
        uint64_t pos = w->head;
        rc = pop_head(q, w, &r);
        if (rc != PMQ_OK) return rc;
        w->dropped++;
        if (pos == a->victim) a->victim = PMQ_NONE; /* dropped: nothing left to replace */
        rc = skip_dead(q, w);
        if (rc != PMQ_OK) return rc;
    }
    if (!has_room(q, w, a->size, extra_items(a))) return PMQ_E_CORRUPT;
    pmq_commit(q);
    pmq_crash_check(3);
    return PMQ_OK;
}

/* Step 2: make room for the record under the queue's policy. PMQ_OK: it fits now. */
static int make_room(pmq_queue *q, add_req *a, const struct timespec *deadline, int forever) {
    const pmq_state *s = pmq_published(q);
    if (has_room(q, s, a->size, extra_items(a))) return PMQ_OK;
    /* Padding and tombstones at the head are free to reclaim under any policy. */
    pmq_state *w = pmq_begin(q);
    int rc = skip_dead(q, w);
    if (rc != PMQ_OK) return rc;
    if (w->head != s->head) {
        pmq_commit(q);
        return LOOK_AGAIN;
    }
    if (q->h->policy != PMQ_POLICY_DROP_OLDEST) return refuse_or_wait(q, deadline, forever);
    return drop_oldest(q, w, a);
}

/* Step 3: write the record into the free space past the tail of the working state w (pads
 * to the ring's end first if it does not fit there). Nothing is visible yet. */
static uint64_t write_record(pmq_queue *q, pmq_state *w, const add_req *a) {
    uint64_t cap = q->h->data_cap;
    if (w->head == w->tail) w->head = w->tail = w->tail + (cap - pmq_phys(q, w->tail)) % cap;
    uint64_t left = cap - pmq_phys(q, w->tail);
    if (left < a->size) {
        if (left >= sizeof(pmq_rec)) {
            pmq_rec *pad = (pmq_rec *)(q->data + pmq_phys(q, w->tail));
            memset(pad, 0, sizeof(*pad));
            pad->flags = REC_WRAP;
        }
        w->tail += left;
    }
    uint64_t pos = w->tail;
    pmq_rec *r = (pmq_rec *)(q->data + pmq_phys(q, pos));
    r->klen = a->klen;
    r->vlen = a->vlen;
    r->id = w->next_id;
    r->flags = 0;
    pmq_crash_check(2);
    memcpy((uint8_t *)(r + 1), a->key, a->klen);
    memcpy((uint8_t *)(r + 1) + a->klen, a->val, a->vlen);
    r->check = pmq_rec_check(a->klen, a->vlen, w->next_id);
    return pos;
}

/* Step 4: account for the record at pos (and the one it replaces) in w, update the index,
 * publish, then tombstone the replaced record. */
static int publish_add(pmq_queue *q, pmq_state *w, const add_req *a, uint64_t pos) {
    pmq_header *h = q->h;
    w->next_id++;
    w->tail = pos + a->size;
    w->count++;
    w->bytes += (uint64_t)a->klen + a->vlen;
    w->added++;
    if (q->index != NULL) {
        if (a->victim != PMQ_NONE) {
            const pmq_rec *old = (const pmq_rec *)(q->data + pmq_phys(q, a->victim));
            pmq_index_remove_rec(q, a->victim, old);
            w->count--;
            w->bytes -= (uint64_t)old->klen + old->vlen;
            w->replaced++;
            w->pending_tomb = a->victim;
        }
        if (pmq_index_insert(q, pos, a->hash) != PMQ_OK) return PMQ_E_CORRUPT;
    }
    if (w->count > w->high_water) w->high_water = w->count;
    pmq_crash_check(4);
    pmq_commit(q);
    pmq_crash_check(5);
    if (a->victim != PMQ_NONE) {
        ((pmq_rec *)(q->data + pmq_phys(q, a->victim)))->flags |= REC_TOMB;
        h->st[h->cur].pending_tomb = PMQ_NONE;
    }
    return PMQ_OK;
}

/* Adds one item with the lock held (held again on return, whatever the result). Wakes
 * waiting consumers unless `quiet` (a batch wakes them once at its end). */
static int add_locked(pmq_queue *q, const uint8_t *key, uint32_t klen, const uint8_t *val,
                      uint32_t vlen, const struct timespec *deadline, int forever, int quiet) {
    add_req a = {key, val, klen, vlen, pmq_rec_size(klen, vlen), 0, PMQ_NONE};
    int rc;
    do {
        rc = find_same_key(q, &a);
        if (rc != PMQ_OK) return rc;
        rc = make_room(q, &a, deadline, forever);
    } while (rc == LOOK_AGAIN);
    if (rc != PMQ_OK) return rc;
    pmq_state *w = pmq_begin(q);
    uint64_t count_before = w->count;
    uint64_t pos = write_record(q, w, &a);
    rc = publish_add(q, w, &a, pos);
    if (rc != PMQ_OK) return rc;
    if (!quiet) wake_getters(q, count_before, 1);
    return PMQ_OK;
}

static int check_item(const pmq_queue *q, size_t klen, size_t vlen) {
    if (klen > UINT32_MAX || vlen > UINT32_MAX) return PMQ_E_TOOBIG;
    if (pmq_rec_size(klen, vlen) > q->h->data_cap) return PMQ_E_TOOBIG;
    return PMQ_OK;
}

static int deadline_for(int64_t timeout_ns, struct timespec *ts, const struct timespec **out,
                        int *forever) {
    *forever = timeout_ns < 0;
    *out = NULL;
    if (timeout_ns > 0) {
        if (pmq_deadline(timeout_ns, ts) != PMQ_OK) return PMQ_E_SYS;
        *out = ts;
    }
    return PMQ_OK;
}

int pmq_add(pmq_queue *q, const void *key, size_t klen, const void *val, size_t vlen,
            int64_t timeout_ns) {
    int rc = check_item(q, klen, vlen);
    if (rc != PMQ_OK) return rc;
    struct timespec ts;
    const struct timespec *deadline;
    int forever;
    if ((rc = deadline_for(timeout_ns, &ts, &deadline, &forever)) != PMQ_OK) return rc;
    if ((rc = pmq_lock(q)) != PMQ_OK) return rc;
    pmq_crash_check(1);
    rc = add_locked(q, key, (uint32_t)klen, val, (uint32_t)vlen, deadline, forever, 0);
    pmq_unlock(q);
    return rc;
}

int pmq_add_many(pmq_queue *q, const uint32_t *lens, const uint8_t *data, size_t n,
                 size_t *done, int64_t timeout_ns) {
    *done = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = check_item(q, lens[2 * i], lens[2 * i + 1]);
        if (rc != PMQ_OK) return rc; /* nothing added: the batch is refused whole */
    }
    struct timespec ts;
    const struct timespec *deadline;
    int forever, rc;
    if ((rc = deadline_for(timeout_ns, &ts, &deadline, &forever)) != PMQ_OK) return rc;
    if ((rc = pmq_lock(q)) != PMQ_OK) return rc;
    uint64_t count_before = pmq_published(q)->count;
    const uint8_t *p = data;
    rc = PMQ_OK;
    for (size_t i = 0; i < n; i++) {
        uint32_t klen = lens[2 * i], vlen = lens[2 * i + 1];
        rc = add_locked(q, p, klen, p + klen, vlen, deadline, forever, 1);
        if (rc < PMQ_OK) break;
        p += (size_t)klen + vlen;
        *done = i + 1;
    }
    uint64_t count_after = pmq_published(q)->count;
    if (count_after > count_before) wake_getters(q, count_before, count_after - count_before);
    pmq_unlock(q);
    return rc == PMQ_DUPLICATE ? PMQ_OK : rc;
}

/* ---- fetch -------------------------------------------------------------------------- */

/* Waits until an item is available. Returns with the lock held on PMQ_OK / PMQ_E_EMPTY. */
static int wait_item(pmq_queue *q, const struct timespec *deadline, int forever) {
    for (;;) {
        pmq_state *w = pmq_begin(q);
        int rc = skip_dead(q, w);
        if (rc != PMQ_OK) return rc;
        if (w->count > 0) return PMQ_OK; /* w is the working copy to fetch from */
        rc = wait_or_give_up(q, &q->h->not_empty, &q->h->getters_waiting, deadline, forever,
                             PMQ_E_EMPTY);
        if (rc != PMQ_OK) return rc;
    }
}

/* Appends record r to a batch output (buf: keys and values, lens: their lengths). Returns
 * 1 if it does not fit in what is left of buf (the lengths are then reported in lens[0..1]
 * when the batch is still empty, with PMQ_E_BUFSMALL), else PMQ_OK. */
static int copy_out(const pmq_rec *r, uint8_t *buf, size_t cap, size_t *used, uint32_t *lens,
                    size_t n) {
    size_t len = (size_t)r->klen + r->vlen;
    if (len > cap - *used) {
        if (n > 0) return 1;
        lens[0] = r->klen;
        lens[1] = r->vlen;
        return PMQ_E_BUFSMALL;
    }
    memcpy(buf + *used, pmq_rec_key(r), len);
    lens[2 * n] = r->klen;
    lens[2 * n + 1] = r->vlen;
    *used += len;
    return PMQ_OK;
}

int pmq_fetch_many(pmq_queue *q, uint8_t *buf, size_t cap, uint32_t *lens, size_t max_n,
                   size_t *got, int64_t timeout_ns) {
    *got = 0;
    if (max_n == 0) return PMQ_OK;
    struct timespec ts;
    const struct timespec *deadline;
    int forever, rc;
    if ((rc = deadline_for(timeout_ns, &ts, &deadline, &forever)) != PMQ_OK) return rc;
    if ((rc = pmq_lock(q)) != PMQ_OK) return rc;
    rc = wait_item(q, deadline, forever);
    if (rc == PMQ_OK) {
        pmq_state *w = &q->h->st[1u - q->h->cur];
        const pmq_state *s = pmq_published(q);
        uint64_t count_before = s->count, used_before = s->tail - s->head;
        size_t used = 0, n = 0;
        while (n < max_n && w->count > 0) {
            pmq_rec_ref ref;
            rc = pmq_read_rec(q, w->head, w->tail, &ref);
            if (rc == PMQ_OK && ref.rec == NULL) rc = PMQ_E_CORRUPT;
            if (rc != PMQ_OK) break;
            int fit = copy_out(ref.rec, buf, cap, &used, lens, n);
            if (fit != PMQ_OK) {
                if (fit < 0) rc = fit;
                break;
            }
            n++;
            pmq_rec *popped;
            rc = pop_head(q, w, &popped);
            if (rc == PMQ_OK) rc = skip_dead(q, w);
            if (rc != PMQ_OK) break;
            w->fetched++;
        }
        if (n > 0 && rc != PMQ_E_CORRUPT) {
            rc = PMQ_OK;
            pmq_crash_check(6);
            pmq_commit(q);
            *got = n;
            wake_putters(q, count_before, used_before);
        }
    }
    pmq_unlock(q);
    return rc;
}

/* One item: a batch of one. */
int pmq_fetch(pmq_queue *q, uint8_t *buf, size_t cap, uint32_t *lens, int64_t timeout_ns) {
    size_t got;
    return pmq_fetch_many(q, buf, cap, lens, 1, &got, timeout_ns);
}

/* ---- reading without removing -------------------------------------------------------- */

/* Copies up to max_n live items, oldest first, starting at the cursor: the first item whose
 * id is >= *cursor_id. *cursor_pos is a hint where it lies (checked, never trusted); both
 * are advanced past the last item copied, so successive calls walk the queue in O(items). */
int pmq_peek_many(pmq_queue *q, uint8_t *buf, size_t cap, uint32_t *lens, size_t max_n,
                  uint64_t *cursor_pos, uint64_t *cursor_id, size_t *got) {
    *got = 0;
    int rc = pmq_lock(q);
    if (rc != PMQ_OK) return rc;
    const pmq_state *s = pmq_published(q);
    uint64_t pos = s->head;
    if (*cursor_pos > s->head && *cursor_pos < s->tail && (*cursor_pos & 7u) == 0) {
        pmq_rec_ref hint;
        if (pmq_read_rec(q, *cursor_pos, s->tail, &hint) == PMQ_OK && hint.rec != NULL &&
            hint.rec->id <= *cursor_id)
            pos = *cursor_pos;
    }
    size_t used = 0, n = 0;
    while (pos < s->tail && n < max_n) {
        pmq_rec_ref ref;
        rc = pmq_read_rec(q, pos, s->tail, &ref);
        if (rc != PMQ_OK) break;
        const pmq_rec *r = ref.rec;
        if (r != NULL && !(r->flags & REC_TOMB) && r->id >= *cursor_id) {
            int fit = copy_out(r, buf, cap, &used, lens, n);
            if (fit != PMQ_OK) {
                if (fit < 0) rc = fit;
                break;
            }
            n++;
            *cursor_id = r->id + 1;
            *cursor_pos = ref.next;
        }
        pos = ref.next;
    }
    *got = n;
    pmq_unlock(q);
    return rc;
}

/* ---- waiting without consuming (asyncio) -------------------------------------------- */

int pmq_wait(pmq_queue *q, int what, int64_t timeout_ns) {
    if (what != PMQ_WAIT_READABLE && what != PMQ_WAIT_WRITABLE) return PMQ_E_INVAL;
    struct timespec ts;
    const struct timespec *deadline;
    int forever, rc;
    if ((rc = deadline_for(timeout_ns, &ts, &deadline, &forever)) != PMQ_OK) return rc;
    if ((rc = pmq_lock(q)) != PMQ_OK) return rc;
    pmq_header *h = q->h;
    for (;;) {
        const pmq_state *s = pmq_published(q);
        int ready;
        if (what == PMQ_WAIT_READABLE) {
            ready = s->count > 0;
        } else {
            ready = (h->max_items <= 0 || s->count < (uint64_t)h->max_items) &&
                    s->tail - s->head < h->data_cap;
        }
        if (ready) break;
        rc = what == PMQ_WAIT_READABLE
                 ? wait_or_give_up(q, &h->not_empty, &h->getters_waiting, deadline, forever,
                                   PMQ_E_EMPTY)
                 : wait_or_give_up(q, &h->not_full, &h->putters_waiting, deadline, forever,
                                   PMQ_E_FULL);
        if (rc != PMQ_OK) break;
    }
    pmq_unlock(q);
    return rc;
}

/* ---- reading state ------------------------------------------------------------------ */

int pmq_note_rejected(pmq_queue *q, uint64_t n) {
    int rc = pmq_lock(q);
    if (rc != PMQ_OK) return rc;
    pmq_state *w = pmq_begin(q);
    w->rejected += n;
    pmq_commit(q);
    pmq_unlock(q);
    return PMQ_OK;
}

int pmq_count(pmq_queue *q, uint64_t *count) {
    int rc = pmq_lock(q);
    if (rc != PMQ_OK) return rc;
    *count = pmq_published(q)->count;
    pmq_unlock(q);
    return PMQ_OK;
}

int pmq_get_stats(pmq_queue *q, pmq_stats *out) {
    int rc = pmq_lock(q);
    if (rc != PMQ_OK) return rc;
    const pmq_state *s = pmq_published(q);
    out->items = s->count;
    out->bytes = s->bytes;
    out->ring_used = s->tail - s->head;
    out->added = s->added;
    out->fetched = s->fetched;
    out->dropped = s->dropped;
    out->rejected = s->rejected;
    out->replaced = s->replaced;
    out->duplicates = s->duplicates;
    out->high_water = s->high_water;
    out->recoveries = s->recoveries;
    out->next_id = s->next_id;
    out->getters_waiting = q->h->getters_waiting;
    out->putters_waiting = q->h->putters_waiting;
    pmq_unlock(q);
    return PMQ_OK;
}
