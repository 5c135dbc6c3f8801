/* The record ring: add, fetch, batches, overflow policies (the index is in index.c,
 * recovery in recover.c, waiting in wait.c).
 *
 * Positions (head, tail) grow monotonically; a record lives at position % data_cap and never
 * straddles the end of the ring (a WRAP record, or fewer than sizeof(pmq_rec) bytes, pads to
 * the end). Every record read is validated against the ring's bounds and the published
 * tail before its lengths are trusted, and its header fields are read once.
 *
 * Every public operation is a loop: take the lock within the call's budget, do what can be
 * done, and if it must wait, note the eventcount, unlock and wait, then look again. Nothing
 * waits with the lock held; at the deadline the condition is checked once more.
 */
#define _GNU_SOURCE
#include <string.h>
#include <time.h>

#include "pmq_internal.h"

/* ---- state publication ------------------------------------------------------------- */

pmq_state *pmq_begin(pmq_queue *q) {
    pmq_header *h = q->h;
    uint32_t cur = pmq_cur(q);
    pmq_state *w = &h->st[1u - cur];
    *w = h->st[cur];
    return w;
}

void pmq_commit(pmq_queue *q) {
    __atomic_store_n(&q->h->cur, 1u - pmq_cur(q), __ATOMIC_RELEASE);
}

int pmq_state_ok(const pmq_queue *q, const pmq_state *s) {
    uint64_t head = s->head, tail = s->tail;
    return head <= tail && tail - head <= q->data_cap && (head & 7u) == 0 && (tail & 7u) == 0 &&
           s->count <= (tail - head) / sizeof(pmq_rec) && s->hold <= 1 && s->held <= s->count;
}

/* ---- records ----------------------------------------------------------------------- */

int pmq_read_rec(const pmq_queue *q, uint64_t pos, uint64_t tail, pmq_rec_ref *out) {
    uint64_t cap = q->data_cap, off = pmq_phys(q, pos);
    out->rec = NULL;
    out->next = pmq_to_boundary(q, pos);
    if (cap - off < sizeof(pmq_rec)) return out->next <= tail ? PMQ_OK : PMQ_E_CORRUPT;
    pmq_rec *r = (pmq_rec *)(q->data + off);
    uint32_t klen = __atomic_load_n(&r->klen, __ATOMIC_RELAXED);
    uint32_t vlen = __atomic_load_n(&r->vlen, __ATOMIC_RELAXED);
    uint32_t flags = __atomic_load_n(&r->flags, __ATOMIC_RELAXED);
    uint32_t check = __atomic_load_n(&r->check, __ATOMIC_RELAXED);
    uint64_t id = __atomic_load_n(&r->id, __ATOMIC_RELAXED);
    if (flags & REC_WRAP) return out->next <= tail ? PMQ_OK : PMQ_E_CORRUPT;
    uint64_t size = pmq_rec_size(klen, vlen);
    if (check != pmq_rec_check(klen, vlen, id) || size > cap - off || size > tail - pos ||
        (flags & ~(uint32_t)(REC_TOMB | REC_HELD)) != 0)
        return PMQ_E_CORRUPT;
    out->rec = r;
    out->next = pos + size;
    out->id = id;
    out->klen = klen;
    out->vlen = vlen;
    out->flags = flags;
    return PMQ_OK;
}

static inline int is_live(const pmq_rec_ref *ref) {
    return ref->rec != NULL && !(ref->flags & REC_TOMB);
}

/* ---- removal from the head ---------------------------------------------------------- */

/* Skips padding and tombstones at w->head. */
static int skip_dead(pmq_queue *q, pmq_state *w) {
    while (w->head < w->tail) {
        pmq_rec_ref ref;
        int rc = pmq_read_rec(q, w->head, w->tail, &ref);
        if (rc != PMQ_OK) return rc;
        if (is_live(&ref)) break;
        w->head = ref.next;
    }
    if (w->head == w->tail && pmq_phys(q, w->head) != 0) {
        /* Empty: restart at the ring's start so any item up to data_cap fits. */
        w->head = w->tail = pmq_to_boundary(q, w->head);
    }
    return PMQ_OK;
}

/* Removes the live record at w->head (after skip_dead) from w and the index; the caller
 * counts it (fetched, dropped) and publishes w. */
static int pop_head(pmq_queue *q, pmq_state *w) {
    pmq_rec_ref ref;
    int rc = pmq_read_rec(q, w->head, w->tail, &ref);
    if (rc != PMQ_OK) return rc;
    if (ref.rec == NULL || w->count == 0) return PMQ_E_CORRUPT;
    if (ref.flags & REC_HELD) {
        if (w->held == 0) return PMQ_E_CORRUPT;
        w->held--;
    }
    pmq_index_remove(q, w->head, pmq_ref_key(&ref), ref.klen);
    w->count--;
    w->bytes -= (uint64_t)ref.klen + ref.vlen;
    w->head = ref.next;
    return PMQ_OK;
}

/* An item can be fetched from w (after skip_dead): there is one and the head is not held.
 * Records are read only when some are held. */
static int can_fetch(const pmq_queue *q, const pmq_state *w) {
    if (w->count == 0) return 0;
    if (w->held == 0) return 1;
    pmq_rec_ref ref;
    if (pmq_read_rec(q, w->head, w->tail, &ref) != PMQ_OK || ref.rec == NULL)
        return 1; /* the fetch reports the damage */
    return !(ref.flags & REC_HELD);
}

int pmq_fetchable(pmq_queue *q) {
    const pmq_state *s = pmq_published(q);
    if (s->held == 0) return s->count > 0;
    pmq_state *w = pmq_begin(q); /* a scratch copy: never published */
    return skip_dead(q, w) != PMQ_OK || can_fetch(q, w); /* damage: let a fetch report it */
}

/* ---- room ----------------------------------------------------------------------------- */

static inline uint64_t room_needed(const pmq_queue *q, const pmq_state *w, uint64_t size) {
    if (w->head == w->tail) return size; /* the write restarts an empty ring at 0 */
    uint64_t left = q->data_cap - pmq_phys(q, w->tail);
    return left >= size ? size : left + size;
}

static inline int has_room(const pmq_queue *q, const pmq_state *w, uint64_t size, int extra) {
    int64_t max = q->max_items;
    if (max > 0 && w->count + (uint64_t)extra > (uint64_t)max) return 0;
    return q->data_cap - (w->tail - w->head) >= room_needed(q, w, size);
}

/* ---- add ---------------------------------------------------------------------------- */

/* One item being added: what it is and what it may replace. */
typedef struct add_req {
    const uint8_t *key, *val;
    uint32_t klen, vlen;
    uint64_t size;   /* bytes of its record */
    uint64_t hash;   /* of its key (addmodes 1 and 2) */
    uint64_t victim; /* position of the live record with the same key (addmode 2), or NONE */
    uint32_t victim_klen, victim_vlen;
    uint32_t victim_flags;
    uint32_t flags; /* of the new record: 0 or REC_HELD */
} add_req;

#define LOOK_AGAIN 1 /* the published state changed: start the add over */
#define WAIT_ROOM 2  /* block policy: wait for room, then start over */

/* Step 1 (addmodes 1 and 2): look the key up. Keep-oldest ignores a duplicate (counted);
 * keep-newest remembers the record the new one replaces (checked: it comes from the index
 * in shared memory). */
static int find_same_key(pmq_queue *q, add_req *a) {
    a->victim = PMQ_NONE;
    if (q->index == NULL) return PMQ_OK;
    a->hash = pmq_hash_key(a->key, a->klen);
    int64_t slot = pmq_index_find(q, a->key, a->klen, a->hash);
    if (slot < 0) return PMQ_OK;
    if (q->addmode == PMQ_ADDMODE_KEEP_OLDEST) {
        pmq_state *w = pmq_begin(q);
        w->duplicates++;
        pmq_commit(q);
        return PMQ_DUPLICATE;
    }
    const pmq_state *s = pmq_published(q);
    uint64_t pos = __atomic_load_n(&q->index[slot].pos1, __ATOMIC_RELAXED) - 1;
    pmq_rec_ref ref;
    if (pos < s->head || pos >= s->tail || pmq_read_rec(q, pos, s->tail, &ref) != PMQ_OK ||
        !is_live(&ref))
        return PMQ_E_CORRUPT;
    a->victim = pos;
    a->victim_klen = ref.klen;
    a->victim_vlen = ref.vlen;
    a->victim_flags = ref.flags;
    return PMQ_OK;
}

/* Items the add brings: a replacement keeps the count. */
static inline int extra_items(const add_req *a) { return a->victim == PMQ_NONE ? 1 : 0; }

/* Reject policy: refuse (counted). Block policy: the caller waits for room; it reports its
 * final refusal with pmq_note_rejected(). */
static int refuse_or_wait(pmq_queue *q) {
    if (q->policy == PMQ_POLICY_BLOCK) return WAIT_ROOM;
    pmq_state *w = pmq_begin(q);
    w->rejected++;
    pmq_commit(q);
    return PMQ_E_FULL;
}

/* Drop-oldest policy: remove items from the head of the working state w until the new one
 * fits, then publish, before any byte of the dropped records is overwritten. On an error
 * what was dropped is published too (the index already forgot those records). */
static int drop_oldest(pmq_queue *q, pmq_state *w, add_req *a, pmq_wakes *wk) {
    int rc = PMQ_OK;
    uint64_t dropped = 0;
    while (!has_room(q, w, a->size, extra_items(a))) {
        rc = skip_dead(q, w);
        if (rc != PMQ_OK) break;
        if (w->count == 0) break; /* an empty ring always has room */
        uint64_t pos = w->head;
        rc = pop_head(q, w);
        if (rc != PMQ_OK) break;
        w->dropped++;
        dropped++;
        if (pos == a->victim) a->victim = PMQ_NONE; /* dropped: nothing left to replace */
        rc = skip_dead(q, w);
        if (rc != PMQ_OK) break;
    }
    if (rc == PMQ_OK && !has_room(q, w, a->size, extra_items(a))) rc = PMQ_E_CORRUPT;
    if (rc == PMQ_OK || dropped > 0) {
        pmq_commit(q);
        pmq_signal_room(q, wk);
    }
    pmq_crash_check(3);
    return rc;
}

/* Step 2: make room for the record under the queue's policy. PMQ_OK: it fits now. */
static int make_room(pmq_queue *q, add_req *a, pmq_wakes *wk) {
    const pmq_state *s = pmq_published(q);
    if (has_room(q, s, a->size, extra_items(a))) return PMQ_OK;
    /* Padding and tombstones at the head are free to reclaim under any policy. */
    pmq_state *w = pmq_begin(q);
    int rc = skip_dead(q, w);
    if (rc != PMQ_OK) return rc;
    if (w->head != s->head) {
        pmq_commit(q);
        pmq_signal_room(q, wk);
        return LOOK_AGAIN;
    }
    if (q->policy != PMQ_POLICY_DROP_OLDEST) return refuse_or_wait(q);
    return drop_oldest(q, w, a, wk);
}

/* Step 3: write the record into the free space past the tail of the working state w (pads
 * to the ring's end first if it does not fit there). Nothing is visible yet. */
static uint64_t write_record(pmq_queue *q, pmq_state *w, const add_req *a) {
    uint64_t cap = q->data_cap;
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
    r->flags = a->flags;
    pmq_crash_check(2);
    memcpy((uint8_t *)(r + 1), a->key, a->klen);
    memcpy((uint8_t *)(r + 1) + a->klen, a->val, a->vlen);
    r->check = pmq_rec_check(a->klen, a->vlen, w->next_id);
    return pos;
}

/* Step 4: account for the record at pos (and the one it replaces) in w, update the index,
 * publish, then tombstone the replaced record. The new entry goes in before the old one
 * goes out, so a failure leaves the index as it was. */
static int publish_add(pmq_queue *q, pmq_state *w, const add_req *a, uint64_t pos) {
    pmq_header *h = q->h;
    if (q->index != NULL) {
        if (pmq_index_insert(q, pos, a->hash) != PMQ_OK) return PMQ_E_CORRUPT;
        if (a->victim != PMQ_NONE) {
            pmq_index_remove(q, a->victim, a->key, a->klen);
            w->count--;
            w->bytes -= (uint64_t)a->victim_klen + a->victim_vlen;
            w->replaced++;
            w->pending_tomb = a->victim;
            if (a->victim_flags & REC_HELD) {
                if (w->held == 0) return PMQ_E_CORRUPT;
                w->held--;
            }
        }
    }
    if (a->flags & REC_HELD) w->held++;
    w->next_id++;
    w->tail = pos + a->size;
    w->count++;
    w->bytes += (uint64_t)a->klen + a->vlen;
    w->added++;
    if (w->count > w->high_water) w->high_water = w->count;
    pmq_crash_check(4);
    pmq_commit(q);
    pmq_crash_check(5);
    if (a->victim != PMQ_NONE) {
        pmq_rec *old = (pmq_rec *)(q->data + pmq_phys(q, a->victim)); /* checked in step 1 */
        __atomic_or_fetch(&old->flags, REC_TOMB, __ATOMIC_RELAXED);
        h->st[pmq_cur(q)].pending_tomb = PMQ_NONE;
    }
    return PMQ_OK;
}

/* Adds one item with the lock held (held on return, whatever the result). The caller
 * signals the items eventcount. WAIT_ROOM: the block policy must wait for room. */
static int add_locked(pmq_queue *q, const uint8_t *key, uint32_t klen, const uint8_t *val,
                      uint32_t vlen, uint32_t add_flags, pmq_wakes *wk, uint64_t *need) {
    add_req a = {key, val, klen, vlen, pmq_rec_size(klen, vlen), 0, PMQ_NONE, 0, 0, 0, 0};
    int rc;
    do {
        rc = find_same_key(q, &a);
        if (rc != PMQ_OK) return rc;
        rc = make_room(q, &a, wk);
    } while (rc == LOOK_AGAIN);
    if (rc == WAIT_ROOM) *need = a.size;
    if (rc != PMQ_OK) return rc;
    pmq_state *w = pmq_begin(q);
    if (w->hold && !(add_flags & PMQ_ADD_RELEASED)) a.flags = REC_HELD;
    uint64_t pos = write_record(q, w, &a);
    return publish_add(q, w, &a, pos);
}

static int check_item(const pmq_queue *q, size_t klen, size_t vlen) {
    if (klen > UINT32_MAX || vlen > UINT32_MAX) return PMQ_E_TOOBIG;
    if (pmq_rec_size(klen, vlen) > q->data_cap) return PMQ_E_TOOBIG;
    return PMQ_OK;
}

/* Items to add: a batch (lens: key, value, …; data: the bytes in that order, or, when vdata
 * is not NULL, the keys alone in data and the values in vdata) or, when lens is NULL, one
 * item whose key and value are separate buffers. */
typedef struct add_src {
    const uint32_t *lens;
    const uint8_t *data;
    const uint8_t *key, *val;
    uint32_t klen, vlen;
    const uint8_t *vdata;
    uint32_t flags; /* PMQ_ADD_* */
} add_src;

/* Adds items [*done, n) of src, waiting for room under the block policy within the call's
 * budget; *done counts the items handled (stored or ignored as duplicates). Returns the
 * code of the last item handled (PMQ_DUPLICATE included) or the error that stopped it. */
static int add_items(pmq_queue *q, const add_src *src, size_t n, size_t *done,
                     int64_t timeout_ns) {
    pmq_call c;
    pmq_call_init(&c, timeout_ns);
    const uint8_t *p = src->data, *vp = src->vdata;
    for (;;) {
        int rc = pmq_lock(q, &c);
        if (rc != PMQ_OK) return rc;
        if (*done == 0) pmq_crash_check(1);
        pmq_wakes wk = {0};
        uint64_t added = 0, need = 0;
        while (*done < n) {
            const uint8_t *key = src->key, *val = src->val;
            uint32_t klen = src->klen, vlen = src->vlen;
            if (src->lens != NULL) {
                klen = src->lens[2 * *done];
                vlen = src->lens[2 * *done + 1];
                key = p;
                val = vp != NULL ? vp : p + klen;
            }
            rc = add_locked(q, key, klen, val, vlen, src->flags, &wk, &need);
            if (rc < PMQ_OK || rc == WAIT_ROOM) break;
            if (rc == PMQ_OK) added++;
            if (vp != NULL) {
                p += klen;
                vp += vlen;
            } else if (src->lens != NULL) {
                p += (size_t)klen + vlen;
            }
            (*done)++;
        }
        /* Items added before a wait are published and announced before it. */
        if (added > 0) pmq_signal_items(q, &wk);
        if (rc == WAIT_ROOM) {
            if (!pmq_call_expired(&c)) {
                rc = pmq_wait_room(q, pmq_room_seen(q), need, &c, &wk);
                if (rc != PMQ_OK) return rc;
                continue; /* look again, also once past the deadline */
            }
            rc = PMQ_E_FULL;
        }
        pmq_unlock(q);
        pmq_wake(q, &wk);
        return rc;
    }
}

int pmq_add(pmq_queue *q, const void *key, size_t klen, const void *val, size_t vlen,
            int64_t timeout_ns) {
    int rc = check_item(q, klen, vlen);
    if (rc != PMQ_OK) return rc;
    add_src one = {NULL, NULL, key, val, (uint32_t)klen, (uint32_t)vlen, NULL, 0};
    size_t done = 0;
    return add_items(q, &one, 1, &done, timeout_ns);
}

static int add_batch(pmq_queue *q, const add_src *batch, size_t n, size_t *done,
                     int64_t timeout_ns) {
    *done = 0;
    if (batch->flags & ~(uint32_t)PMQ_ADD_RELEASED) return PMQ_E_INVAL;
    for (size_t i = 0; i < n; i++) {
        int rc = check_item(q, batch->lens[2 * i], batch->lens[2 * i + 1]);
        if (rc != PMQ_OK) return rc; /* nothing added: the batch is refused whole */
    }
    if (n == 0) return PMQ_OK;
    int rc = add_items(q, batch, n, done, timeout_ns);
    return rc == PMQ_DUPLICATE ? PMQ_OK : rc;
}

int pmq_add_many(pmq_queue *q, const uint32_t *lens, const uint8_t *data, size_t n,
                 size_t *done, int64_t timeout_ns) {
    return pmq_add_many_flags(q, lens, data, n, 0, done, timeout_ns);
}

int pmq_add_many_flags(pmq_queue *q, const uint32_t *lens, const uint8_t *data, size_t n,
                       uint32_t flags, size_t *done, int64_t timeout_ns) {
    add_src batch = {lens, data, NULL, NULL, 0, 0, NULL, flags};
    return add_batch(q, &batch, n, done, timeout_ns);
}

int pmq_add_many_split(pmq_queue *q, const uint32_t *lens, const uint8_t *keys,
                       size_t keys_size, const uint8_t *vals, size_t vals_size, size_t n,
                       uint32_t flags, size_t *done, int64_t timeout_ns) {
    *done = 0;
    uint64_t ksum = 0, vsum = 0;
    for (size_t i = 0; i < n; i++) {
        ksum += lens[2 * i];
        vsum += lens[2 * i + 1];
    }
    if (ksum != keys_size || vsum != vals_size) return PMQ_E_INVAL;
    add_src batch = {lens, keys, NULL, NULL, 0, 0, vals, flags};
    return add_batch(q, &batch, n, done, timeout_ns);
}

/* ---- fetch -------------------------------------------------------------------------- */

/* Appends the record of ref to a batch output (buf: keys and values, lens: their lengths).
 * Returns 1 if it does not fit in what is left of buf (the lengths are then reported in
 * lens[0..1] when the batch is still empty, with PMQ_E_BUFSMALL), else PMQ_OK. */
static int copy_out(const pmq_rec_ref *ref, uint8_t *buf, size_t cap, size_t *used,
                    uint32_t *lens, size_t n) {
    size_t len = (size_t)ref->klen + ref->vlen;
    if (len > cap - *used) {
        if (n > 0) return 1;
        lens[0] = ref->klen;
        lens[1] = ref->vlen;
        return PMQ_E_BUFSMALL;
    }
    memcpy(buf + *used, pmq_ref_key(ref), len);
    lens[2 * n] = ref->klen;
    lens[2 * n + 1] = ref->vlen;
    *used += len;
    return PMQ_OK;
}

/* Takes up to max_n items from the head of w into buf. Every item taken is also gone from
 * the index, so whatever happens after the first one, the batch is published. */
static int take_items(pmq_queue *q, pmq_state *w, uint8_t *buf, size_t cap, uint32_t *lens,
                      size_t max_n, size_t *got) {
    size_t used = 0, n = 0;
    int rc = PMQ_OK;
    while (n < max_n && w->count > 0) {
        pmq_rec_ref ref;
        rc = pmq_read_rec(q, w->head, w->tail, &ref);
        if (rc == PMQ_OK && ref.rec == NULL) rc = PMQ_E_CORRUPT;
        if (rc != PMQ_OK) break;
        if (ref.flags & REC_HELD) {
            if (n == 0) rc = PMQ_E_CORRUPT; /* can_fetch said the head was not held */
            break;
        }
        int fit = copy_out(&ref, buf, cap, &used, lens, n);
        if (fit != PMQ_OK) {
            if (fit < 0) rc = fit;
            break;
        }
        rc = pop_head(q, w);
        if (rc != PMQ_OK) break;
        n++;
        w->fetched++;
        rc = skip_dead(q, w);
        if (rc != PMQ_OK) break;
    }
    *got = n;
    /* n > 0: the items are returned; a bad record after them answers the next call. */
    return n > 0 ? PMQ_OK : rc;
}

int pmq_fetch_many(pmq_queue *q, uint8_t *buf, size_t cap, uint32_t *lens, size_t max_n,
                   size_t *got, int64_t timeout_ns) {
    *got = 0;
    if (max_n == 0) return PMQ_OK;
    pmq_call c;
    pmq_call_init(&c, timeout_ns);
    for (;;) {
        int rc = pmq_lock(q, &c);
        if (rc != PMQ_OK) return rc;
        pmq_wakes wk = {0};
        pmq_state *w = pmq_begin(q);
        rc = skip_dead(q, w);
        if (rc == PMQ_OK && !can_fetch(q, w)) {
            if (!pmq_call_expired(&c)) {
                rc = pmq_wait_items(q, pmq_items_seen(q), &c, &wk);
                if (rc != PMQ_OK) return rc;
                continue; /* look again, also once past the deadline */
            }
            rc = PMQ_E_EMPTY;
        }
        if (rc == PMQ_OK) {
            size_t n = 0;
            rc = take_items(q, w, buf, cap, lens, max_n, &n);
            if (n > 0) {
                pmq_crash_check(6);
                pmq_commit(q);
                pmq_signal_room(q, &wk);
                *got = n;
            }
        }
        pmq_unlock(q);
        pmq_wake(q, &wk);
        return rc;
    }
}

/* One item: a batch of one. */
int pmq_fetch(pmq_queue *q, uint8_t *buf, size_t cap, uint32_t *lens, int64_t timeout_ns) {
    size_t got;
    return pmq_fetch_many(q, buf, cap, lens, 1, &got, timeout_ns);
}

int64_t pmq_try_fetch(pmq_queue *q, uint8_t *buf, size_t cap) {
    uint32_t lens[2];
    size_t got;
    int rc = pmq_fetch_many(q, buf, cap, lens, 1, &got, 0);
    return rc == PMQ_OK ? (int64_t)lens[0] << 32 | lens[1] : rc;
}

/* ---- reading without removing -------------------------------------------------------- */

/* Copies up to max_n live items, oldest first, starting at the cursor: the first item whose
 * id is >= *cursor_id. *cursor_pos is a hint where it lies (checked, never trusted); both
 * are advanced past the last item copied, so successive calls walk the queue in O(items). */
int pmq_peek_many(pmq_queue *q, uint8_t *buf, size_t cap, uint32_t *lens, uint64_t *ids,
                  size_t max_n, uint32_t only, uint64_t *cursor_pos, uint64_t *cursor_id,
                  size_t *got) {
    *got = 0;
    if (only & ~(uint32_t)PMQ_PEEK_HELD) return PMQ_E_INVAL;
    uint32_t need = only & PMQ_PEEK_HELD ? REC_HELD : 0;
    int rc = pmq_lock(q, NULL);
    if (rc != PMQ_OK) return rc;
    const pmq_state *s = pmq_published(q);
    uint64_t head = s->head, tail = s->tail;
    uint64_t pos = head;
    if (*cursor_pos > head && *cursor_pos < tail && (*cursor_pos & 7u) == 0) {
        pmq_rec_ref hint;
        if (pmq_read_rec(q, *cursor_pos, tail, &hint) == PMQ_OK && hint.rec != NULL &&
            hint.id <= *cursor_id)
            pos = *cursor_pos;
    }
    size_t used = 0, n = 0;
    while (pos < tail && n < max_n) {
        pmq_rec_ref ref;
        rc = pmq_read_rec(q, pos, tail, &ref);
        if (rc != PMQ_OK) break;
        if (is_live(&ref) && ref.id >= *cursor_id && (ref.flags & need) == need) {
            int fit = copy_out(&ref, buf, cap, &used, lens, n);
            if (fit != PMQ_OK) {
                if (fit < 0) rc = fit;
                break;
            }
            if (ids != NULL) ids[n] = ref.id;
            n++;
            *cursor_id = ref.id + 1;
            *cursor_pos = ref.next;
        }
        pos = ref.next;
    }
    *got = n;
    pmq_unlock(q);
    return rc;
}

/* ---- removing what was read ----------------------------------------------------------- */

int pmq_discard_through(pmq_queue *q, uint64_t last_id, uint64_t *removed) {
    *removed = 0;
    int rc = pmq_lock(q, NULL);
    if (rc != PMQ_OK) return rc;
    pmq_wakes wk = {0};
    pmq_state *w = pmq_begin(q);
    uint64_t n = 0;
    rc = skip_dead(q, w);
    while (rc == PMQ_OK && w->count > 0) {
        pmq_rec_ref ref;
        rc = pmq_read_rec(q, w->head, w->tail, &ref);
        if (rc == PMQ_OK && ref.rec == NULL) rc = PMQ_E_CORRUPT;
        if (rc != PMQ_OK || ref.id > last_id) break;
        rc = pop_head(q, w);
        if (rc != PMQ_OK) break;
        n++;
        w->fetched++;
        rc = skip_dead(q, w);
    }
    if (n > 0) {
        pmq_commit(q);
        pmq_signal_room(q, &wk);
    }
    pmq_unlock(q);
    pmq_wake(q, &wk);
    *removed = n;
    /* n > 0: those are gone; a bad record after them answers the next call. */
    return n > 0 ? PMQ_OK : rc;
}

/* ---- held items ------------------------------------------------------------------------ */

/* Clears REC_HELD on the held records of w with id <= last_id (in place: flags are not
 * covered by the record check) and counts them out of w->held; the caller publishes. A
 * holder dying half-way leaves some flags cleared and w unpublished: recovery recounts. */
static int release_held(pmq_queue *q, pmq_state *w, uint64_t last_id, uint64_t *released) {
    uint64_t n = 0;
    int rc = PMQ_OK;
    for (uint64_t pos = w->head; pos < w->tail && n < w->held;) {
        pmq_rec_ref ref;
        rc = pmq_read_rec(q, pos, w->tail, &ref);
        if (rc != PMQ_OK) break;
        if (is_live(&ref)) {
            if (ref.id > last_id) break;
            if (ref.flags & REC_HELD) {
                __atomic_and_fetch(&ref.rec->flags, ~(uint32_t)REC_HELD, __ATOMIC_RELAXED);
                n++;
                pmq_crash_check(9); /* one flag cleared, the count not yet published */
            }
        }
        pos = ref.next;
    }
    w->held -= n;
    *released = n;
    return rc;
}

int pmq_release_through(pmq_queue *q, uint64_t last_id, uint64_t *released) {
    *released = 0;
    int rc = pmq_lock(q, NULL);
    if (rc != PMQ_OK) return rc;
    pmq_wakes wk = {0};
    pmq_state *w = pmq_begin(q);
    rc = release_held(q, w, last_id, released);
    if (*released > 0) {
        pmq_commit(q);
        pmq_signal_items(q, &wk);
    }
    pmq_unlock(q);
    pmq_wake(q, &wk);
    return *released > 0 ? PMQ_OK : rc;
}

int pmq_set_hold(pmq_queue *q, int on) {
    int rc = pmq_lock(q, NULL);
    if (rc != PMQ_OK) return rc;
    pmq_wakes wk = {0};
    pmq_state *w = pmq_begin(q);
    uint64_t released = 0;
    w->hold = on ? 1 : 0;
    if (!on) rc = release_held(q, w, UINT64_MAX, &released);
    if (rc == PMQ_OK && w->held != 0 && !on) rc = PMQ_E_CORRUPT; /* held records missing */
    if (rc == PMQ_OK || released > 0) {
        pmq_commit(q);
        if (released > 0) pmq_signal_items(q, &wk);
    }
    pmq_unlock(q);
    pmq_wake(q, &wk);
    return rc;
}

/* ---- waiting without consuming (asyncio) -------------------------------------------- */

int pmq_wait(pmq_queue *q, int what, uint64_t need_bytes, int64_t timeout_ns) {
    if (what != PMQ_WAIT_READABLE && what != PMQ_WAIT_WRITABLE) return PMQ_E_INVAL;
    uint64_t size = 0;
    if (what == PMQ_WAIT_WRITABLE) {
        if (need_bytes > q->data_cap) return PMQ_E_TOOBIG;
        size = pmq_rec_size(0, need_bytes);
        if (size > q->data_cap) return PMQ_E_TOOBIG;
    }
    pmq_call c;
    pmq_call_init(&c, timeout_ns);
    for (;;) {
        int rc = pmq_lock(q, &c);
        if (rc != PMQ_OK) return rc;
        pmq_wakes wk = {0};
        pmq_state *w = pmq_begin(q); /* a scratch copy: never published */
        rc = skip_dead(q, w);
        if (rc == PMQ_OK) {
            int ready = what == PMQ_WAIT_READABLE ? can_fetch(q, w) : has_room(q, w, size, 1);
            if (!ready) {
                if (!pmq_call_expired(&c)) {
                    rc = what == PMQ_WAIT_READABLE
                             ? pmq_wait_items(q, pmq_items_seen(q), &c, &wk)
                             : pmq_wait_room(q, pmq_room_seen(q), size, &c, &wk);
                    if (rc != PMQ_OK) return rc;
                    continue;
                }
                rc = what == PMQ_WAIT_READABLE ? PMQ_E_EMPTY : PMQ_E_FULL;
            }
        }
        pmq_unlock(q);
        return rc;
    }
}

/* ---- reading state ------------------------------------------------------------------ */

int pmq_note_rejected(pmq_queue *q, uint64_t n) {
    int rc = pmq_lock(q, NULL);
    if (rc != PMQ_OK) return rc;
    pmq_state *w = pmq_begin(q);
    w->rejected += n;
    pmq_commit(q);
    pmq_unlock(q);
    return PMQ_OK;
}

int pmq_count(pmq_queue *q, uint64_t *count) {
    int rc = pmq_lock(q, NULL);
    if (rc != PMQ_OK) return rc;
    *count = pmq_published(q)->count;
    pmq_unlock(q);
    return PMQ_OK;
}

uint64_t pmq_count_hint(const pmq_queue *q) {
    /* No lock: the published state's count, read once (an aligned 64-bit load). A writer
     * may be publishing at that instant, so this is a hint for displays, never for logic. */
    return __atomic_load_n(&pmq_published(q)->count, __ATOMIC_RELAXED);
}

int pmq_get_stats(pmq_queue *q, pmq_stats *out) {
    int rc = pmq_lock(q, NULL);
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
    out->held = s->held;
    out->hold = (uint32_t)s->hold;
    out->unfinished = pmq_unfinished_of(s);
    out->getters_waiting = __atomic_load_n(&q->h->items_sleep, __ATOMIC_RELAXED);
    out->putters_waiting = __atomic_load_n(&q->h->room_sleep, __ATOMIC_RELAXED);
    out->bells = pmq_bells_count(q, &out->bells_armed);
    pmq_unlock(q);
    return PMQ_OK;
}
