/* pymqueue C engine: named (key, value) queues in POSIX shared memory.
 *
 * Public API. Every function returns PMQ_OK (0), a positive informational code, or a
 * negative PMQ_E_* code; none calls back into Python. System errors (PMQ_E_SYS) leave the
 * cause in errno.
 *
 * Timeouts are in nanoseconds (CLOCK_MONOTONIC) and bound the WHOLE call, lock acquisitions
 * included: < 0 waits forever for the condition (each lock wait then bounded by the process
 * lock timeout), 0 does not wait for the condition, > 0 is a deadline. A lock wait is bounded
 * by max(time left, PMQ_LOCK_FLOOR_NS) and never by more than the process lock timeout; a
 * lock not obtained in time answers PMQ_E_LOCKTIMEOUT. At the deadline the condition is
 * checked once more under the lock. Callers that must stay interruptible (Python) wait in
 * short slices and treat PMQ_E_LOCKTIMEOUT as "try again" until their own deadline.
 *
 * Waits use futex eventcounts (no pthread condvars): a waiter killed at any instant leaves
 * nothing another process waits for.
 */
#ifndef PMQ_H
#define PMQ_H

#include <stddef.h>
#include <stdint.h>

/* pmq_build.py: cdef begins */

#define PMQ_OK 0
#define PMQ_DUPLICATE 1 /* addmode 1: an item with this key exists; nothing added */
#define PMQ_READY 1     /* pmq_bell_arm: the queue has items now; the bell was not armed */

#define PMQ_E_EMPTY (-1)       /* nothing to fetch within the timeout */
#define PMQ_E_FULL (-2)        /* no room within the timeout (reject/block policy) */
#define PMQ_E_TOOBIG (-3)      /* the item can never fit */
#define PMQ_E_BUFSMALL (-4)    /* caller's buffer too small; lengths were reported */
#define PMQ_E_NOTFOUND (-5)    /* no segment of that name */
#define PMQ_E_EXISTS (-6)      /* segment exists and exclusive creation was asked */
#define PMQ_E_BADSEG (-7)      /* not a pymqueue segment, truncated, or inconsistent */
#define PMQ_E_VERSION (-8)     /* a pymqueue segment of another layout version */
#define PMQ_E_SYS (-9)         /* system call failed; see errno */
#define PMQ_E_INVAL (-10)      /* invalid argument */
#define PMQ_E_LOCKTIMEOUT (-11) /* lock held by a live process longer than the lock timeout */
#define PMQ_E_CORRUPT (-12)    /* a record, the state or the lock failed validation, or a
                                * failed recovery poisoned the segment */
#define PMQ_E_CLOSED (-13)     /* the handle was shut down (pmq_shutdown) */
#define PMQ_E_UNTRUSTED (-14)  /* the segment's owner or mode is not allowed (pmq_trust);
                                * nothing in it was read */
#define PMQ_E_NOTASK (-15)     /* pmq_task_done: fewer unfinished items than asked; no change */
#define PMQ_E_PENDING (-16)    /* pmq_join: unfinished items remain at the deadline */

#define PMQ_POLICY_DROP_OLDEST 0
#define PMQ_POLICY_REJECT 1
#define PMQ_POLICY_BLOCK 2

#define PMQ_ADDMODE_APPEND 0
#define PMQ_ADDMODE_KEEP_OLDEST 1
#define PMQ_ADDMODE_KEEP_NEWEST 2

#define PMQ_PEEK_HELD 1   /* pmq_peek_many: only the held items */
#define PMQ_ADD_RELEASED 1 /* pmq_add_many_flags: never held, even while the queue holds */

#define PMQ_WAIT_READABLE 1
#define PMQ_WAIT_WRITABLE 2

#define PMQ_NAME_MAX 255
#define PMQ_MIN_CAPACITY 4096
#define PMQ_RECORD_OVERHEAD 24
#define PMQ_LOCK_FLOOR_NS 10000000   /* 10 ms: the shortest lock wait of a bounded call */
#define PMQ_DEFAULT_SPIN_NS 20000    /* 20 us of spinning before a waiter sleeps */
#define PMQ_TRUST_MAX_OWNERS 16
#define PMQ_BELLS 64                 /* doorbells a queue can hold (bits of a uint64_t) */
#define PMQ_BELL_NAME_MAX 32         /* bytes of a doorbell's abstract socket address */

typedef struct pmq_queue pmq_queue;

typedef struct pmq_config {
    int64_t max_items;  /* Kamailio's `size`: <= 0 unbounded */
    uint64_t capacity;  /* bytes of the record ring (rounded up to 8) */
    uint32_t policy;    /* PMQ_POLICY_* */
    uint32_t addmode;   /* PMQ_ADDMODE_* */
    uint32_t mode;      /* permission bits of the shm object, e.g. 0600 */
} pmq_config;

typedef struct pmq_stats {
    uint64_t items;       /* live items */
    uint64_t bytes;       /* key + value bytes of the live items */
    uint64_t ring_used;   /* bytes of the ring in use (records, padding, tombstones) */
    uint64_t added;
    uint64_t fetched;
    uint64_t dropped;     /* removed by the drop-oldest policy */
    uint64_t rejected;    /* refused by the reject / block policy */
    uint64_t replaced;    /* removed by addmode 2 (keep newest) */
    uint64_t duplicates;  /* ignored by addmode 1 (keep oldest) */
    uint64_t high_water;  /* most live items ever */
    uint64_t recoveries;  /* lock recoveries after a holder died */
    uint64_t next_id;
    uint64_t held;            /* live items held back (pmq_set_hold) */
    uint64_t unfinished;      /* added and not yet done (pmq_task_done), dropped or replaced */
    uint32_t hold;            /* 1: items added now are held */
    uint32_t getters_waiting; /* 1: a fetcher may be asleep waiting for items (a hint) */
    uint32_t putters_waiting; /* 1: a putter may be asleep waiting for room (a hint) */
    uint32_t bells;           /* doorbells registered (some may belong to dead processes) */
    uint32_t bells_armed;     /* doorbells waiting for a ring */
} pmq_stats;

/* Who may have made a segment this process uses. Checked with fstat() right after opening,
 * before anything in it is read. NULL means the default: owned by geteuid(), no permission
 * bits beyond 0600. */
typedef struct pmq_trust {
    uint32_t allowed_mode; /* permission bits a segment may carry; 0 = 0600 */
    uint32_t n_owners;     /* extra uids trusted besides geteuid() */
    uint32_t owners[PMQ_TRUST_MAX_OWNERS];
} pmq_trust;

/* Create (exclusive != 0: fail if it exists) or create-or-attach. *created tells which.
 * The segment is built unnamed and linked to shm_name ("/name") only when whole, so no one
 * ever opens a half-made queue and a creator killed mid-way leaves nothing. */
int pmq_create(const char *shm_name, const uint8_t *qname, size_t qname_len,
               const pmq_config *cfg, int exclusive, const pmq_trust *trust, pmq_queue **out,
               int *created);
/* Attach to an existing queue: owner and mode checked (trust), then the whole header
 * validated and its geometry copied into the handle (never read from shared memory again). */
int pmq_open(const char *shm_name, const pmq_trust *trust, pmq_queue **out);
/* Wakes this handle's waiting calls, which return PMQ_E_CLOSED (as do later calls). */
void pmq_shutdown(pmq_queue *q);
/* Releases the mapping; no call may be using the handle. */
void pmq_close(pmq_queue *q);
int pmq_unlink(const char *shm_name);

int pmq_get_config(const pmq_queue *q, pmq_config *cfg);
/* Copies the queue's name into buf (PMQ_NAME_MAX bytes at most); returns its length. */
int pmq_get_name(const pmq_queue *q, uint8_t *buf, size_t cap);
/* The queue's epoch: random, non-zero, fixed when the segment was created (a new segment of
 * the same name has another), so that (name, epoch, record id) names one item for ever. */
uint64_t pmq_epoch(const pmq_queue *q);

int pmq_add(pmq_queue *q, const void *key, size_t klen, const void *val, size_t vlen,
            int64_t timeout_ns);
/* On PMQ_OK and PMQ_E_BUFSMALL, lens[0] and lens[1] hold the key and value lengths;
 * the key then the value are copied to buf (only on PMQ_OK). */
int pmq_fetch(pmq_queue *q, uint8_t *buf, size_t cap, uint32_t *lens, int64_t timeout_ns);

/* The facade's fast path: pmq_fetch with timeout 0 and the lengths in the return value,
 * (klen << 32) | vlen when >= 0 (so one cffi call carries 3 arguments and no out-array),
 * else a negative PMQ_E_* code (PMQ_E_BUFSMALL: call pmq_fetch to learn the lengths). */
int64_t pmq_try_fetch(pmq_queue *q, uint8_t *buf, size_t cap);

/* Batch add: lens holds 2*n lengths (key, value, key, value …) and data the bytes in that
 * order. *done counts the items handled (stored or ignored as duplicate); on an error the
 * first *done items were handled and the rest were not. */
int pmq_add_many(pmq_queue *q, const uint32_t *lens, const uint8_t *data, size_t n,
                 size_t *done, int64_t timeout_ns);
/* pmq_add_many with the keys back to back in keys and the values in vals (lens as above):
 * a caller holding keys and values apart joins each once instead of interleaving them.
 * PMQ_E_INVAL (nothing added) unless the lengths add up to keys_size and vals_size.
 * flags: as for pmq_add_many_flags. */
int pmq_add_many_split(pmq_queue *q, const uint32_t *lens, const uint8_t *keys,
                       size_t keys_size, const uint8_t *vals, size_t vals_size, size_t n,
                       uint32_t flags, size_t *done, int64_t timeout_ns);
/* Batch fetch of up to max_n items into buf (key, value, key, value …) and lens; waits
 * (per timeout) for the first item only. *got counts the items fetched. */
int pmq_fetch_many(pmq_queue *q, uint8_t *buf, size_t cap, uint32_t *lens, size_t max_n,
                   size_t *got, int64_t timeout_ns);

/* Copy up to max_n items, oldest first, without removing them, from a cursor (start with
 * both at 0); the cursor is advanced for the next call. ids (NULL: not wanted) receives
 * each item's record id. */
int pmq_peek_many(pmq_queue *q, uint8_t *buf, size_t cap, uint32_t *lens, uint64_t *ids,
                  size_t max_n, uint32_t only, uint64_t *cursor_pos, uint64_t *cursor_id,
                  size_t *got);

/* Removes the live items at the head whose record id is <= last_id, stopping at the first
 * with a larger id (ids grow in queue order): what a forwarder peeked, sent and had
 * acknowledged. Counted as fetched; wakes putters waiting for room. *removed: how many. */
int pmq_discard_through(pmq_queue *q, uint64_t last_id, uint64_t *removed);

/* Held items (a mirror queue: a forwarder must see every local add before any consumer).
 * While the queue holds (pmq_set_hold(q, 1)), every item added is held: it counts as an item
 * but no fetch takes it, and none behind it (order is kept), until it is released. Items
 * added with PMQ_ADD_RELEASED are never held. pmq_set_hold(q, 0) stops holding and
 * releases every held item. Releasing wakes fetchers and rings doorbells. */
int pmq_set_hold(pmq_queue *q, int on);
/* Releases the held items whose id is <= last_id; *released: how many. */
int pmq_release_through(pmq_queue *q, uint64_t last_id, uint64_t *released);
int pmq_add_many_flags(pmq_queue *q, const uint32_t *lens, const uint8_t *data, size_t n,
                       uint32_t flags, size_t *done, int64_t timeout_ns);

/* Wait until the queue is readable (has an item) or writable (an item of need_bytes key +
 * value bytes fits under the count limit and in the ring; 0: the smallest item). Nothing is
 * taken. PMQ_E_TOOBIG if such an item can never fit. */
int pmq_wait(pmq_queue *q, int what, uint64_t need_bytes, int64_t timeout_ns);

int pmq_count(pmq_queue *q, uint64_t *count);
/* The item count without taking the lock (never waits): a hint for displays (repr, top). */
uint64_t pmq_count_hint(const pmq_queue *q);
/* Block policy: count items whose caller gave up waiting for room. */
int pmq_note_rejected(pmq_queue *q, uint64_t n);
int pmq_get_stats(pmq_queue *q, pmq_stats *out);

/* JoinableQueue. The unfinished count is the number of items added to the queue (by any
 * handle) and neither marked done, dropped (drop-oldest) nor replaced (addmode 2). It lives
 * in the published state, so it moves in the same store as the items it counts and a
 * process killed at any instant leaves it exact (a consumer killed between its fetch and
 * its task_done leaves its item unfinished for ever). */
int pmq_task_done(pmq_queue *q, uint64_t n);
/* PMQ_OK once the unfinished count is 0; PMQ_E_PENDING if it is not at the deadline. */
int pmq_join(pmq_queue *q, int64_t timeout_ns);
int pmq_unfinished(pmq_queue *q, uint64_t *out);

/* How long a live lock holder may keep others waiting (default 5 s). */
void pmq_set_lock_timeout(int64_t timeout_ns);
int64_t pmq_get_lock_timeout(void);
/* Calls that only need the lock (no deadline of their own: counts, stats, peeks, doorbell
 * arming, task_done, releases) give up after this slice with PMQ_E_LOCKTIMEOUT instead of
 * the whole lock timeout (0, the default: no slice), so that a caller can run signal
 * handlers between tries and stop trying at the lock timeout itself (the Python facade). */
void pmq_set_lock_slice(int64_t ns);

/* How long a waiter spins (watching for the change it waits for) before it sleeps:
 * the process default, read when a handle is opened, and one handle's. 0 = never spin. */
void pmq_set_default_spin(int64_t ns);
void pmq_set_spin(pmq_queue *q, int64_t ns);

/* Doorbells (bell.c): a file descriptor an event loop can poll for "this queue may have
 * items now". A doorbell is an AF_UNIX datagram socket the caller binds to the abstract
 * address pmq_bell_name(token) (token: a random non-zero 64-bit number); the queue's header
 * keeps PMQ_BELLS tokens and a bitmask of the armed ones. A producer that publishes items
 * rings (one datagram, never blocking) every armed bell once, after unlocking, and disarms
 * it; a bell whose socket is gone (its process died) is freed by the first ring or probe
 * that finds it so. With no bell armed, a publish costs one load more.
 *
 * The abstract address of a token's doorbell (starting with a NUL byte, not terminated);
 * returns its length, or PMQ_E_BUFSMALL. */
int pmq_bell_name(uint64_t token, uint8_t *buf, size_t cap);
/* Registers a bound doorbell; *slot receives its place. A full table is first probed (one
 * datagram to each bell; those nobody is bound to any more are freed): PMQ_E_FULL if no
 * slot is free after that. */
int pmq_bell_register(pmq_queue *q, uint64_t token, uint32_t *slot);
/* Asks for one ring at the next publish of items: PMQ_OK (armed), PMQ_READY (the queue has
 * items now: not armed, look at once), PMQ_E_INVAL (the slot no longer holds this token: a
 * ring found its socket gone; register again). */
int pmq_bell_arm(pmq_queue *q, uint32_t slot, uint64_t token);
/* The same for a forwarder of held items: PMQ_READY when the queue holds items now. */
int pmq_bell_arm_held(pmq_queue *q, uint32_t slot, uint64_t token);
/* Frees the slot if it still holds this token. */
int pmq_bell_unregister(pmq_queue *q, uint32_t slot, uint64_t token);

/* Test hooks: make this process kill itself with SIGKILL at a numbered point inside the
 * next mutating operation (7: pmq_create, segment whole but not yet named; 8: an add that
 * disarmed doorbells, after its unlock and before its rings; 9: a release of held items
 * with one flag cleared and the count not yet published), or take the lock and return
 * without releasing it. */
void pmq_test_crash_at(int point);
int pmq_test_hold_lock(pmq_queue *q);

/* pmq_build.py: cdef ends */

#endif
