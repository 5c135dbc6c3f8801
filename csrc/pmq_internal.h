/* Internal layout of a pymqueue segment. See docs/architecture.md.
 *
 *   [ header (page-aligned size) ][ record ring: data_cap bytes ][ key index (addmode 1/2) ]
 *
 * All mutations happen with the header's robust mutex held. The queue's state (positions and
 * counters) exists twice: st[cur] is the published state; a mutation copies it into
 * st[1 - cur], changes the copy and any bytes outside the published records, then publishes
 * with one release store of `cur`. A process killed at any instant therefore leaves either
 * the old or the new state, never a mix; the next locker (EOWNERDEAD) recovers.
 *
 * Waits are futex eventcounts (wait.c): items_seq / room_seq are bumped under the lock after
 * every publish that adds items / changes room; items_sleep / room_sleep say someone may be
 * asleep on them.
 *
 * The geometry (sizes, offsets, limits, policies) is validated once at attach and copied into
 * struct pmq_queue; nothing reads it from shared memory again. What is still read from shared
 * memory (state, records, index slots) is bounds-checked where it is used.
 */
#ifndef PMQ_INTERNAL_H
#define PMQ_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "pmq.h"

#define PMQ_MAGIC 0x3145555145554d50ULL /* "PMQUEUE1" read little-endian */
#define PMQ_LAYOUT_VERSION 3u
#define PMQ_NONE UINT64_MAX
#define PMQ_PAGE 4096u
#define PMQ_MAX_CAPACITY (1ULL << 40)

#define REC_TOMB 1u /* removed in place (addmode 2): skipped by readers */
#define REC_WRAP 2u /* padding to the end of the ring */
#define REC_HELD 4u /* held back (pmq_set_hold): not fetchable until released */

typedef struct pmq_state {
    uint64_t head;         /* monotonic byte position of the oldest record */
    uint64_t tail;         /* monotonic byte position one past the newest record */
    uint64_t count;        /* live items */
    uint64_t bytes;        /* key + value bytes of live items */
    uint64_t next_id;      /* id of the next record */
    uint64_t added, fetched, dropped, rejected, replaced, duplicates;
    uint64_t high_water;
    uint64_t recoveries;
    uint64_t pending_tomb; /* record to mark REC_TOMB (rolled forward on recovery) */
    uint64_t tasks_done;   /* task_done() calls (tasks.c): unfinished = added - dropped -
                            * replaced - tasks_done, published with the items it counts */
    uint64_t hold;         /* 1: items added from now on are held (REC_HELD) */
    uint64_t held;         /* live held records */
} pmq_state;

typedef struct pmq_header {
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;   /* sizeof(pmq_header) */
    uint32_t abi;           /* sizes of the pthread types, to refuse a foreign ABI */
    uint32_t name_len;
    uint64_t seg_size;
    uint64_t data_off;
    uint64_t data_cap;
    uint64_t index_off;
    uint64_t index_slots;   /* 0 or a power of two */
    int64_t max_items;
    uint32_t policy;
    uint32_t addmode;
    uint64_t epoch;         /* random, non-zero, fixed at creation: names this incarnation */
    uint8_t name[PMQ_NAME_MAX + 1];

    pthread_mutex_t lock;
    uint32_t poisoned; /* a recovery failed: the segment is unusable */
    uint32_t cur;      /* which of st[] is published (read masked with 1) */
    pmq_state st[2];

    /* join() waiters' eventcount (tasks.c), on its own cache line */
    _Alignas(64) uint32_t tasks_seq; /* bumped when the unfinished count falls to 0 */
    uint32_t tasks_sleep;            /* 1: someone may sleep on tasks_seq */

    /* eventcounts, each on its own cache line: waiters spin reading them, and producers
     * (items) and consumers (room) bump them, so they do not share a line */
    _Alignas(64) uint32_t items_seq; /* bumped after every publish that adds items */
    uint32_t items_sleep;            /* 1: someone may sleep on items_seq */
    _Alignas(64) uint32_t room_seq;  /* bumped after every publish that changes room */
    uint32_t room_sleep;             /* 1: someone may sleep on room_seq */
    uint64_t room_need;              /* smallest record a sleeping putter needs (a hint) */

    /* doorbells (bell.c), on their own cache line: every publish of items reads bells_armed */
    _Alignas(64) uint64_t bells_armed; /* bit i: bell i wants a ring at the next publish */
    uint64_t bells[PMQ_BELLS];         /* tokens naming the bells' sockets; 0 = free */
} pmq_header;

_Static_assert(PMQ_BELLS == 64, "bells_armed has one bit per bell");

typedef struct pmq_rec {
    uint32_t klen;
    uint32_t vlen;
    uint64_t id;
    uint32_t flags;
    uint32_t check; /* rec_check(): catches records that were never written */
} pmq_rec;

typedef struct pmq_slot {
    uint64_t pos1; /* record position + 1; 0 = empty */
    uint64_t hash;
} pmq_slot;

struct pmq_queue {
    pmq_header *h;
    uint8_t *data;
    pmq_slot *index;
    size_t map_size;
    /* the validated geometry: a private copy */
    uint64_t seg_size, data_off, data_cap, index_off, index_slots;
    int64_t max_items;
    uint32_t policy, addmode;
    uint64_t epoch;
    uint32_t name_len;
    uint8_t name[PMQ_NAME_MAX + 1];
    /* this handle */
    int64_t spin_ns;
    int closing; /* atomic: pmq_shutdown() was called */
};

_Static_assert(sizeof(pmq_rec) == PMQ_RECORD_OVERHEAD, "record header size");

static inline uint64_t pmq_align8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

static inline uint64_t pmq_rec_size(uint64_t klen, uint64_t vlen) {
    return pmq_align8(sizeof(pmq_rec) + klen + vlen);
}

static inline uint32_t pmq_rec_check(uint32_t klen, uint32_t vlen, uint64_t id) {
    return (klen * 0x9E3779B1u) ^ (vlen + 0x7F4A7C15u) ^ (uint32_t)id ^ (uint32_t)(id >> 32) ^
           0xA5A5A5A5u;
}

static inline uint32_t pmq_abi(void) {
    return (uint32_t)(sizeof(pthread_mutex_t) | (sizeof(pmq_state) << 16));
}

/* ---- helpers shared by ring.c, index.c and recover.c ------------------------------- */

static inline uint32_t pmq_cur(const pmq_queue *q) {
    return __atomic_load_n(&q->h->cur, __ATOMIC_ACQUIRE) & 1u;
}

static inline const pmq_state *pmq_published(const pmq_queue *q) { return &q->h->st[pmq_cur(q)]; }

/* Offset in the ring of monotonic position pos. */
static inline uint64_t pmq_phys(const pmq_queue *q, uint64_t pos) { return pos % q->data_cap; }

/* Position where the next record boundary after `pos` may start (skips padding). */
static inline uint64_t pmq_to_boundary(const pmq_queue *q, uint64_t pos) {
    return pos + (q->data_cap - pmq_phys(q, pos));
}

/* A record read from the ring: its header fields read once and validated. */
typedef struct pmq_rec_ref {
    pmq_rec *rec; /* NULL: padding, skip to `next` */
    uint64_t next;
    uint64_t id;
    uint32_t klen, vlen, flags;
} pmq_rec_ref;

static inline const uint8_t *pmq_ref_key(const pmq_rec_ref *ref) {
    return (const uint8_t *)(ref->rec + 1);
}

static inline int64_t pmq_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* One call's time budget. */
typedef struct pmq_call {
    int64_t end; /* CLOCK_MONOTONIC ns after which the call stops waiting for its condition */
    int forever; /* timeout < 0: end is never reached */
} pmq_call;

static inline void pmq_call_init(pmq_call *c, int64_t timeout_ns) {
    c->forever = timeout_ns < 0;
    c->end = c->forever ? INT64_MAX : pmq_now_ns() + timeout_ns;
}

static inline int pmq_call_expired(const pmq_call *c) {
    return !c->forever && pmq_now_ns() >= c->end;
}

/* Wake-ups owed once the lock is released (see wait.c): futex words, and the doorbells to
 * ring (bell.c). Start with {0}. */
typedef struct pmq_wakes {
    uint8_t items, room;
    uint64_t bells;
} pmq_wakes;

/* lock.c */
/* Takes the lock within the call's budget (max(time left, PMQ_LOCK_FLOOR_NS), never more
 * than the process lock timeout; c == NULL: the process lock timeout). Runs recovery after a
 * holder died; refuses a poisoned segment or a lock whose owner does not exist. */
int pmq_lock(pmq_queue *q, const pmq_call *c);
void pmq_unlock(pmq_queue *q);

/* wait.c */
/* Under the lock, after publishing: bump the eventcount; note a wake-up if someone sleeps. */
void pmq_signal_items(pmq_queue *q, pmq_wakes *wk);
void pmq_signal_room(pmq_queue *q, pmq_wakes *wk);
/* After unlocking: the FUTEX_WAKEs owed. */
void pmq_wake(pmq_queue *q, const pmq_wakes *wk);
/* Unlocks, wakes what is owed, then waits (spin, then sleep) for the eventcount to move
 * from `seen` (read under the lock), the call's end, or pmq_shutdown. Always returns
 * without the lock: PMQ_OK (look again) or PMQ_E_CLOSED. need: the ring bytes a putter
 * waits for (room waits). */
uint32_t pmq_items_seen(const pmq_queue *q);
uint32_t pmq_room_seen(const pmq_queue *q);
int pmq_wait_items(pmq_queue *q, uint32_t seen, const pmq_call *c, const pmq_wakes *wk);
int pmq_wait_room(pmq_queue *q, uint32_t seen, uint64_t need, const pmq_call *c,
                  const pmq_wakes *wk);
/* Wakes every sleeper of both eventcounts (recovery, shutdown). */
void pmq_wake_all(pmq_queue *q);
int64_t pmq_default_spin(void);

/* bell.c */
/* Under the lock, after a publish of items: takes (disarms) the armed bells into wk. */
static inline void pmq_bells_take(pmq_queue *q, pmq_wakes *wk) {
    if (__atomic_load_n(&q->h->bells_armed, __ATOMIC_RELAXED) != 0)
        wk->bells |= __atomic_exchange_n(&q->h->bells_armed, 0, __ATOMIC_RELAXED);
}
/* After unlocking: one datagram to each bell of mask; frees the bells nobody is bound to. */
void pmq_bells_ring(pmq_queue *q, uint64_t mask);
/* Rings every registered bell (recovery: a dead holder may have taken armed bits). */
void pmq_bells_ring_all(pmq_queue *q);
uint32_t pmq_bells_count(const pmq_queue *q, uint32_t *armed);

/* wait.c, for tasks.c: the eventcount of join() waiters (tasks_seq / tasks_sleep).
 * pmq_signal_tasks: under the lock, after publishing a count of 0; 1 if a wake is owed. */
int pmq_signal_tasks(pmq_queue *q);
/* added - dropped - replaced - tasks_done of s (0 if the counters do not add up). */
uint64_t pmq_unfinished_of(const pmq_state *s);
void pmq_wake_tasks(pmq_queue *q);
uint32_t pmq_tasks_seen(const pmq_queue *q);
int pmq_wait_tasks(pmq_queue *q, uint32_t seen, const pmq_call *c);

/* ring.c */
pmq_state *pmq_begin(pmq_queue *q);
void pmq_commit(pmq_queue *q);
/* With the lock held: a fetch would find an item now (some may be held back). */
int pmq_fetchable(pmq_queue *q);
/* Reads the record at pos (< tail). Returns PMQ_E_CORRUPT if it does not fit. */
int pmq_read_rec(const pmq_queue *q, uint64_t pos, uint64_t tail, pmq_rec_ref *out);
/* Whether a state's positions are plausible for this ring. */
int pmq_state_ok(const pmq_queue *q, const pmq_state *s);

/* index.c: the key index of addmodes 1 and 2 (open addressing, linear probing) */
uint64_t pmq_hash_key(const uint8_t *k, size_t n);
/* The slot holding key, or -1. */
int64_t pmq_index_find(const pmq_queue *q, const uint8_t *key, size_t klen, uint64_t hash);
int pmq_index_insert(pmq_queue *q, uint64_t pos, uint64_t hash);
/* Removes the entry of the record at pos (key bytes given), if the index has one. */
void pmq_index_remove(pmq_queue *q, uint64_t pos, const uint8_t *key, uint32_t klen);

/* recover.c */
int pmq_recover_locked(pmq_queue *q);

/* test hooks */
extern int pmq_crash_point;
void pmq_crash_check(int point);

#endif
