/* Internal layout of a pymqueue segment. See docs/architecture.md.
 *
 *   [ header (page-aligned size) ][ record ring: data_cap bytes ][ key index (addmode 1/2) ]
 *
 * All mutations happen with the header's robust mutex held. The queue's state (positions and
 * counters) exists twice: st[cur] is the published state; a mutation copies it into
 * st[1 - cur], changes the copy and any bytes outside the published records, then publishes
 * with one release store of `cur`. A process killed at any instant therefore leaves either
 * the old or the new state, never a mix; the next locker (EOWNERDEAD) recovers.
 */
#ifndef PMQ_INTERNAL_H
#define PMQ_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "pmq.h"

#define PMQ_MAGIC 0x3145555145554d50ULL /* "PMQUEUE1" read little-endian */
#define PMQ_LAYOUT_VERSION 1u
#define PMQ_NONE UINT64_MAX
#define PMQ_PAGE 4096u
#define PMQ_MAX_CAPACITY (1ULL << 40)

#define REC_TOMB 1u /* removed in place (addmode 2): skipped by readers */
#define REC_WRAP 2u /* padding to the end of the ring */

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
    uint8_t name[PMQ_NAME_MAX + 1];

    pthread_mutex_t lock;
    pthread_cond_t not_empty;
    pthread_cond_t not_full;
    uint32_t getters_waiting;
    uint32_t putters_waiting;
    uint32_t cur;
    uint32_t reserved;
    pmq_state st[2];
} pmq_header;

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
    return (uint32_t)(sizeof(pthread_mutex_t) | (sizeof(pthread_cond_t) << 8) |
                      (sizeof(pmq_state) << 16));
}

/* ---- helpers shared by ring.c, index.c and recover.c ------------------------------- */

static inline const pmq_state *pmq_published(const pmq_queue *q) { return &q->h->st[q->h->cur]; }

/* Offset in the ring of monotonic position pos. */
static inline uint64_t pmq_phys(const pmq_queue *q, uint64_t pos) { return pos % q->h->data_cap; }

/* Position where the next record boundary after `pos` may start (skips padding). */
static inline uint64_t pmq_to_boundary(const pmq_queue *q, uint64_t pos) {
    return pos + (q->h->data_cap - pmq_phys(q, pos));
}

static inline const uint8_t *pmq_rec_key(const pmq_rec *r) { return (const uint8_t *)(r + 1); }

typedef struct pmq_rec_ref {
    pmq_rec *rec; /* NULL: padding, skip to `next` */
    uint64_t next;
} pmq_rec_ref;

/* lock.c */
int pmq_lock(pmq_queue *q);
void pmq_unlock(pmq_queue *q);
/* Wait on cond until deadline (absolute CLOCK_MONOTONIC; NULL = forever). Returns PMQ_OK,
 * 1 on timeout, or a negative PMQ_E_* code; the lock is held again on return (robust
 * mutexes make the caller's unlock harmless in the one case where it is not). */
int pmq_cond_wait(pmq_queue *q, pthread_cond_t *cond, const struct timespec *deadline);
int pmq_deadline(int64_t timeout_ns, struct timespec *out);

/* ring.c */
pmq_state *pmq_begin(pmq_queue *q);
void pmq_commit(pmq_queue *q);
/* Reads the record at pos (< tail). Returns PMQ_E_CORRUPT if it does not fit. */
int pmq_read_rec(const pmq_queue *q, uint64_t pos, uint64_t tail, pmq_rec_ref *out);

/* index.c: the key index of addmodes 1 and 2 (open addressing, linear probing) */
uint64_t pmq_hash_key(const uint8_t *k, size_t n);
/* The slot holding key, or -1. */
int64_t pmq_index_find(const pmq_queue *q, const uint8_t *key, size_t klen, uint64_t hash);
int pmq_index_insert(pmq_queue *q, uint64_t pos, uint64_t hash);
/* Removes the entry of the record r at pos, if the index has one. */
void pmq_index_remove_rec(pmq_queue *q, uint64_t pos, const pmq_rec *r);

/* recover.c */
int pmq_recover_locked(pmq_queue *q);

/* test hooks */
extern int pmq_crash_point;
void pmq_crash_check(int point);

#endif
