/* The key index of addmodes 1 and 2: an open-addressing table (linear probing, deletion by
 * backward shift) from a key's hash to the position of its live record.
 *
 * The table lives in shared memory, so every position read from it is checked against the
 * ring before the record's bytes are compared.
 */
#define _GNU_SOURCE
#include <string.h>

#include "pmq_internal.h"

uint64_t pmq_hash_key(const uint8_t *k, size_t n) {
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
    uint64_t off = pmq_phys(q, pos), room = q->data_cap - off;
    if (room < sizeof(pmq_rec)) return 0;
    const pmq_rec *r = (const pmq_rec *)(q->data + off);
    uint32_t rklen = __atomic_load_n(&r->klen, __ATOMIC_RELAXED);
    return rklen == klen && klen <= room - sizeof(pmq_rec) &&
           memcmp((const uint8_t *)(r + 1), key, klen) == 0;
}

int64_t pmq_index_find(const pmq_queue *q, const uint8_t *key, size_t klen, uint64_t hash) {
    uint64_t mask = q->index_slots - 1;
    for (uint64_t i = hash & mask, n = 0; n <= mask; i = (i + 1) & mask, n++) {
        uint64_t pos1 = q->index[i].pos1;
        if (pos1 == 0) return -1;
        if (q->index[i].hash == hash && key_at(q, pos1 - 1, key, klen)) return (int64_t)i;
    }
    return -1;
}

/* The table is sized for twice the most live items, so a free slot always exists; the
 * bound only matters for a segment whose bytes were forged. */
int pmq_index_insert(pmq_queue *q, uint64_t pos, uint64_t hash) {
    uint64_t mask = q->index_slots - 1;
    uint64_t i = hash & mask;
    for (uint64_t n = 0; q->index[i].pos1 != 0; i = (i + 1) & mask)
        if (++n > mask) return PMQ_E_CORRUPT;
    q->index[i].pos1 = pos + 1;
    q->index[i].hash = hash;
    return PMQ_OK;
}

/* Removes slot i, shifting later entries of the probe run back (no tombstones). */
static void remove_slot(pmq_queue *q, uint64_t i) {
    uint64_t mask = q->index_slots - 1;
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

void pmq_index_remove(pmq_queue *q, uint64_t pos, const uint8_t *key, uint32_t klen) {
    if (q->index == NULL) return;
    uint64_t hash = pmq_hash_key(key, klen);
    uint64_t mask = q->index_slots - 1;
    for (uint64_t i = hash & mask, n = 0; n <= mask; i = (i + 1) & mask, n++) {
        if (q->index[i].pos1 == 0) return;
        if (q->index[i].pos1 == pos + 1) {
            remove_slot(q, i);
            return;
        }
    }
}
