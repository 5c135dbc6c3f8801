/* The record ring: add, fetch, batches, overflow policies, addmode index, recovery.
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

static inline const pmq_state *published(const pmq_queue *q) { return &q->h->st[q->h->cur]; }

/* ---- records ----------------------------------------------------------------------- */

static inline uint64_t phys(const pmq_queue *q, uint64_t pos) { return pos % q->h->data_cap; }

/* Position where the next record boundary after `pos` may start (skips padding). */
static inline uint64_t to_boundary(const pmq_queue *q, uint64_t pos) {
    return pos + (q->h->data_cap - phys(q, pos));
}

typedef struct {
    pmq_rec *rec; /* NULL: padding, skip to `next` */
    uint64_t next;
} rec_ref;

/* Reads the record at pos (< tail). Returns PMQ_E_CORRUPT if it does not fit. */
static int read_rec(const pmq_queue *q, uint64_t pos, uint64_t tail, rec_ref *out) {
    uint64_t cap = q->h->data_cap, off = phys(q, pos);
    if (cap - off < sizeof(pmq_rec)) {
        out->rec = NULL;
        out->next = to_boundary(q, pos);
        return out->next <= tail ? PMQ_OK : PMQ_E_CORRUPT;
    }
    pmq_rec *r = (pmq_rec *)(q->data + off);
    if (r->flags & REC_WRAP) {
        out->rec = NULL;
        out->next = to_boundary(q, pos);
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

static inline const uint8_t *rec_key(const pmq_rec *r) { return (const uint8_t *)(r + 1); }

/* ---- key index (addmode 1 and 2) --------------------------------------------------- */

static uint64_t hash_key(const uint8_t *k, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0xC2B2AE3D27D4EB4FULL);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, k, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 29;
        k += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, k, n);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 32;
    return h;
}

/* Whether the record at pos has this key. The position comes from the index, so the
 * record's length is checked against the ring before its bytes are compared. */
static int key_at(const pmq_queue *q, uint64_t pos, const uint8_t *key, size_t klen) {
    uint64_t off = phys(q, pos), room = q->h->data_cap - off;
    if (room < sizeof(pmq_rec)) return 0;
    const pmq_rec *r = (const pmq_rec *)(q->data + off);
    return r->klen == klen && klen <= room - sizeof(pmq_rec) &&
           memcmp(rec_key(r), key, klen) == 0;
}

/* Finds the slot holding key; returns its index or -1. */
static int64_t index_find(const pmq_queue *q, const uint8_t *key, size_t klen, uint64_t hash) {
    uint64_t mask = q->h->index_slots - 1;
    for (uint64_t i = hash & mask, n = 0; n <= mask; i = (i + 1) & mask, n++) {
        const pmq_slot *s = &q->index[i];
        if (s->pos1 == 0) return -1;
        if (s->hash == hash && key_at(q, s->pos1 - 1, key, klen)) return (int64_t)i;
    }
    return -1;
}

/* The table is sized for twice the most live items, so a free slot always exists; the
 * bound only matters for a segment whose bytes were forged. */
static int index_insert(pmq_queue *q, uint64_t pos, uint64_t hash) {
    uint64_t mask = q->h->index_slots - 1;
    uint64_t i = hash & mask;
    for (uint64_t n = 0; q->index[i].pos1 != 0; i = (i + 1) & mask)
        if (++n > mask) return PMQ_E_CORRUPT;
    q->index[i].pos1 = pos + 1;
    q->index[i].hash = hash;
    return PMQ_OK;
}

/* Removes slot i, shifting later entries of the probe run back (no tombstones). */
static void index_remove_slot(pmq_queue *q, uint64_t i) {
    uint64_t mask = q->h->index_slots - 1;
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (q->index[j].pos1 == 0) break;
        uint64_t k = q->index[j].hash & mask;
        int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (stays) continue;
        q->index[i] = q->index[j];
        i = j;
    }
    q->index[i].pos1 = 0;
    q->index[i].hash = 0;
}

static void index_remove_rec(pmq_queue *q, uint64_t pos, const pmq_rec *r) {
    if (q->index == NULL) return;
    uint64_t hash = hash_key(rec_key(r), r->klen);
    uint64_t mask = q->h->index_slots - 1;
    for (uint64_t i = hash & mask, n = 0; n <= mask; i = (i + 1) & mask, n++) {
        if (q->index[i].pos1 == 0) return;
        if (q->index[i].pos1 == pos + 1) {
            index_remove_slot(q, i);
            return;
        }
    }
}

/* ---- removal from the head ---------------------------------------------------------- */

/* Skips padding and tombstones at w->head. */
static int skip_dead(pmq_queue *q, pmq_state *w) {
    while (w->head < w->tail) {
        rec_ref ref;
        int rc = read_rec(q, w->head, w->tail, &ref);
        if (rc != PMQ_OK) return rc;
        if (ref.rec != NULL && !(ref.rec->flags & REC_TOMB)) break;
        w->head = ref.next;
    }
    if (w->head == w->tail && phys(q, w->head) != 0) {
        /* Empty: restart at the ring's start so any item up to data_cap fits. */
        w->head = w->tail = to_boundary(q, w->head);
    }
    return PMQ_OK;
}

/* Removes the live record at w->head (after skip_dead); counts it by the caller. */
static int pop_head(pmq_queue *q, pmq_state *w, pmq_rec **out) {
    rec_ref ref;
    int rc = read_rec(q, w->head, w->tail, &ref);
    if (rc != PMQ_OK) return rc;
    if (ref.rec == NULL) return PMQ_E_CORRUPT;
    index_remove_rec(q, w->head, ref.rec);
    w->count--;
    w->bytes -= (uint64_t)ref.rec->klen + ref.rec->vlen;
    w->head = ref.next;
    *out = ref.rec;
    return PMQ_OK;
}

/* ---- add ---------------------------------------------------------------------------- */

static inline uint64_t room_needed(const pmq_queue *q, const pmq_state *w, uint64_t size) {
    if (w->head == w->tail) return size; /* the write restarts an empty ring at 0 */
    uint64_t left = q->h->data_cap - phys(q, w->tail);
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
    const pmq_state *s = published(q);
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

/* Adds one item with the lock held (held again on return, whatever the result). Wakes
 * waiting consumers unless `quiet` (a batch wakes them once at its end). */
static int add_locked(pmq_queue *q, const uint8_t *key, uint32_t klen, const uint8_t *val,
                      uint32_t vlen, const struct timespec *deadline, int forever, int quiet) {
    pmq_header *h = q->h;
    uint64_t size = pmq_rec_size(klen, vlen);
    uint64_t hash = 0;
    for (;;) {
        const pmq_state *s = published(q);
        int64_t victim_slot = -1;
        uint64_t victim = PMQ_NONE;
        if (q->index != NULL) {
            hash = hash_key(key, klen);
            victim_slot = index_find(q, key, klen, hash);
            if (victim_slot >= 0) {
                if (h->addmode == PMQ_ADDMODE_KEEP_OLDEST) {
                    pmq_state *w = pmq_begin(q);
                    w->duplicates++;
                    pmq_commit(q);
                    return PMQ_DUPLICATE;
                }
                victim = q->index[victim_slot].pos1 - 1;
            }
        }
        int extra = victim == PMQ_NONE ? 1 : 0;
        if (!has_room(q, s, size, extra)) {
            /* Padding and tombstones at the head are free to reclaim under any policy. */
            pmq_state *w = pmq_begin(q);
            int rc = skip_dead(q, w);
            if (rc != PMQ_OK) return rc;
            if (w->head != s->head) {
                pmq_commit(q);
                continue;
            }
            if (h->policy != PMQ_POLICY_DROP_OLDEST) {
                int rc = h->policy == PMQ_POLICY_BLOCK
                             ? wait_or_give_up(q, &h->not_full, &h->putters_waiting, deadline,
                                               forever, PMQ_E_FULL)
                             : PMQ_E_FULL;
                if (rc == PMQ_OK) continue; /* state changed: look again */
                if (rc == PMQ_E_FULL && h->policy == PMQ_POLICY_REJECT) {
                    /* Under the block policy a caller may try again after a slice; it
                     * reports its final refusal with pmq_note_rejected(). */
                    pmq_state *w = pmq_begin(q);
                    w->rejected++;
                    pmq_commit(q);
                }
                return rc;
            }
            /* Drop the oldest items until the new one fits; published before any byte of
             * the dropped records is overwritten. */
            while (!has_room(q, w, size, extra)) {
                rc = skip_dead(q, w);
                if (rc != PMQ_OK) return rc;
                if (w->count == 0) break; /* an empty ring always has room */
                pmq_rec *r;
                uint64_t pos = w->head;
                rc = pop_head(q, w, &r);
                if (rc != PMQ_OK) return rc;
                w->dropped++;
                if (pos == victim) {
                    victim = PMQ_NONE;
                    extra = 1;
                }
                rc = skip_dead(q, w);
                if (rc != PMQ_OK) return rc;
            }
            if (!has_room(q, w, size, extra)) return PMQ_E_CORRUPT;
            pmq_commit(q);
            pmq_crash_check(3);
        }

        /* Write the record in the free space past the published tail. */
        pmq_state *w = pmq_begin(q);
        if (w->head == w->tail) w->head = w->tail = w->tail + (h->data_cap - phys(q, w->tail)) % h->data_cap;
        uint64_t left = h->data_cap - phys(q, w->tail);
        if (left < size) {
            if (left >= sizeof(pmq_rec)) {
                pmq_rec *pad = (pmq_rec *)(q->data + phys(q, w->tail));
                memset(pad, 0, sizeof(*pad));
                pad->flags = REC_WRAP;
            }
            w->tail += left;
        }
        uint64_t pos = w->tail;
        pmq_rec *r = (pmq_rec *)(q->data + phys(q, pos));
        r->klen = klen;
        r->vlen = vlen;
        r->id = w->next_id;
        r->flags = 0;
        pmq_crash_check(2);
        memcpy((uint8_t *)(r + 1), key, klen);
        memcpy((uint8_t *)(r + 1) + klen, val, vlen);
        r->check = pmq_rec_check(klen, vlen, w->next_id);
        uint64_t count_before = w->count;
        w->next_id++;
        w->tail = pos + size;
        w->count++;
        w->bytes += (uint64_t)klen + vlen;
        w->added++;
        if (q->index != NULL) {
            if (victim != PMQ_NONE) {
                const pmq_rec *old = (const pmq_rec *)(q->data + phys(q, victim));
                index_remove_rec(q, victim, old);
                w->count--;
                w->bytes -= (uint64_t)old->klen + old->vlen;
                w->replaced++;
                w->pending_tomb = victim;
            }
            if (index_insert(q, pos, hash) != PMQ_OK) return PMQ_E_CORRUPT;
        }
        if (w->count > w->high_water) w->high_water = w->count;
        pmq_crash_check(4);
        pmq_commit(q);
        pmq_crash_check(5);
        if (victim != PMQ_NONE) {
            ((pmq_rec *)(q->data + phys(q, victim)))->flags |= REC_TOMB;
            h->st[h->cur].pending_tomb = PMQ_NONE;
        }
        if (!quiet) wake_getters(q, count_before, 1);
        return PMQ_OK;
    }
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
    uint64_t count_before = published(q)->count;
    const uint8_t *p = data;
    rc = PMQ_OK;
    for (size_t i = 0; i < n; i++) {
        uint32_t klen = lens[2 * i], vlen = lens[2 * i + 1];
        rc = add_locked(q, p, klen, p + klen, vlen, deadline, forever, 1);
        if (rc < PMQ_OK) break;
        p += (size_t)klen + vlen;
        *done = i + 1;
    }
    uint64_t count_after = published(q)->count;
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
    memcpy(buf + *used, rec_key(r), len);
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
        const pmq_state *s = published(q);
        uint64_t count_before = s->count, used_before = s->tail - s->head;
        size_t used = 0, n = 0;
        while (n < max_n && w->count > 0) {
            rec_ref ref;
            rc = read_rec(q, w->head, w->tail, &ref);
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
    const pmq_state *s = published(q);
    uint64_t pos = s->head;
    if (*cursor_pos > s->head && *cursor_pos < s->tail && (*cursor_pos & 7u) == 0) {
        rec_ref hint;
        if (read_rec(q, *cursor_pos, s->tail, &hint) == PMQ_OK && hint.rec != NULL &&
            hint.rec->id <= *cursor_id)
            pos = *cursor_pos;
    }
    size_t used = 0, n = 0;
    while (pos < s->tail && n < max_n) {
        rec_ref ref;
        rc = read_rec(q, pos, s->tail, &ref);
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
        const pmq_state *s = published(q);
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
    *count = published(q)->count;
    pmq_unlock(q);
    return PMQ_OK;
}

int pmq_get_stats(pmq_queue *q, pmq_stats *out) {
    int rc = pmq_lock(q);
    if (rc != PMQ_OK) return rc;
    const pmq_state *s = published(q);
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

/* ---- recovery ----------------------------------------------------------------------- */

/* The previous holder died mid-operation. The published state is whole by construction;
 * what may be stale is everything derived from it: a tombstone not yet set, the index,
 * the waiter counts. Rebuild those from a scan of the published records. */
int pmq_recover_locked(pmq_queue *q) {
    pmq_header *h = q->h;
    if (h->cur > 1) return PMQ_E_CORRUPT;
    pmq_state *w = pmq_begin(q);
    if (w->head > w->tail || w->tail - w->head > h->data_cap) return PMQ_E_CORRUPT;
    if (w->pending_tomb != PMQ_NONE) {
        if (w->pending_tomb < w->head || w->pending_tomb >= w->tail) return PMQ_E_CORRUPT;
        rec_ref ref;
        if (read_rec(q, w->pending_tomb, w->tail, &ref) != PMQ_OK || ref.rec == NULL)
            return PMQ_E_CORRUPT;
        ref.rec->flags |= REC_TOMB;
        w->pending_tomb = PMQ_NONE;
    }
    uint64_t count = 0, bytes = 0;
    for (uint64_t pos = w->head; pos < w->tail;) {
        rec_ref ref;
        if (read_rec(q, pos, w->tail, &ref) != PMQ_OK) return PMQ_E_CORRUPT;
        if (ref.rec != NULL && !(ref.rec->flags & REC_TOMB)) {
            count++;
            bytes += (uint64_t)ref.rec->klen + ref.rec->vlen;
        }
        pos = ref.next;
    }
    if (count != w->count || bytes != w->bytes) return PMQ_E_CORRUPT;
    if (h->max_items > 0 && count > (uint64_t)h->max_items) return PMQ_E_CORRUPT;
    if (q->index != NULL) {
        memset(q->index, 0, h->index_slots * sizeof(pmq_slot));
        for (uint64_t pos = w->head; pos < w->tail;) {
            rec_ref ref;
            (void)read_rec(q, pos, w->tail, &ref); /* validated by the pass above */
            if (ref.rec != NULL && !(ref.rec->flags & REC_TOMB) &&
                index_insert(q, pos, hash_key(rec_key(ref.rec), ref.rec->klen)) != PMQ_OK)
                return PMQ_E_CORRUPT;
            pos = ref.next;
        }
    }
    w->recoveries++;
    /* A waiter that died while waiting leaves its count behind: that costs a few needless
     * wake-ups, never a missed one, so the counts are left alone (live waiters own theirs). */
    pmq_commit(q);
    return PMQ_OK;
}
