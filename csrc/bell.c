/* Doorbells: a file descriptor an event loop can poll for "this queue may have items".
 *
 * A doorbell is an AF_UNIX datagram socket that its owner binds to an abstract address
 * derived from a random 64-bit token (pmq_bell_name): no file to leak, and the name vanishes
 * with the last descriptor of the socket, so a dead owner's bell answers ECONNREFUSED.
 * The header holds PMQ_BELLS tokens (0 = free) and `bells_armed`, one bit per bell that
 * wants a ring:
 *
 *   registrant                                    producer (lock held, after publishing)
 *   lock; count == 0 ? set bit : PMQ_READY        if (armed) { mask = xchg(armed, 0) }
 *   unlock                                        unlock
 *   poll(fd) ... readable: drain, look, arm again sendto(each bell of mask)   (no wait)
 *
 * The arm and the publish both hold the lock, so a bell is either armed before the publish
 * (and rung by it) or sees its items when it arms. A bell is rung once per arm.
 *
 * Nothing read from shared memory is trusted: a slot index is always < PMQ_BELLS (it is a
 * bit of a uint64_t or checked), and a token only ever names a socket in our own abstract
 * namespace ("pymqueue.bell.*"): the worst a forged token does is send one spurious
 * datagram to another doorbell, whose owner then looks at its queue and finds nothing.
 * Tokens freed outside the lock (a ring that found nobody) are freed with a compare-and-swap,
 * so a slot re-registered meanwhile keeps its new token.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "pmq_internal.h"

#define BELL_PREFIX "pymqueue.bell."

_Static_assert(1 + sizeof(BELL_PREFIX) - 1 + 16 <= PMQ_BELL_NAME_MAX, "bell name fits");

/* One unbound datagram socket per process sends every ring; made at the first ring. A
 * forked child shares it (sending needs no state); close-on-exec keeps it out of execs. */
static int send_fd = -1;

static int sender(void) {
    int fd = __atomic_load_n(&send_fd, __ATOMIC_ACQUIRE);
    if (fd >= 0) return fd;
    int fresh = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fresh < 0) return -1;
    int expected = -1;
    if (__atomic_compare_exchange_n(&send_fd, &expected, fresh, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE))
        return fresh;
    close(fresh); /* another thread was first */
    return expected;
}

static socklen_t bell_addr(uint64_t token, struct sockaddr_un *a) {
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    /* sun_path[0] stays 0: the abstract namespace */
    int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, BELL_PREFIX "%016llx",
                     (unsigned long long)token);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

int pmq_bell_name(uint64_t token, uint8_t *buf, size_t cap) {
    struct sockaddr_un a;
    size_t n = bell_addr(token, &a) - offsetof(struct sockaddr_un, sun_path);
    if (n > cap) return PMQ_E_BUFSMALL;
    memcpy(buf, a.sun_path, n);
    return (int)n;
}

enum { RUNG, GONE, FAILED };

/* One datagram, never waiting: RUNG (delivered, or the bell's buffer is full so it has
 * rings pending), GONE (nobody is bound to that name: its owner died or closed it), FAILED
 * (anything else: the ring is owed still). */
static int ring(uint64_t token) {
    int fd = sender();
    if (fd < 0) return FAILED;
    struct sockaddr_un a;
    socklen_t len = bell_addr(token, &a);
    static const uint8_t byte = '!';
    if (sendto(fd, &byte, 1, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&a, len) >= 0)
        return RUNG;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return RUNG;
    return errno == ECONNREFUSED || errno == ENOENT ? GONE : FAILED;
}

static void free_slot(pmq_queue *q, uint32_t i, uint64_t token) {
    __atomic_compare_exchange_n(&q->h->bells[i], &token, 0, 0, __ATOMIC_ACQ_REL,
                                __ATOMIC_RELAXED);
}

void pmq_bells_ring(pmq_queue *q, uint64_t mask) {
    pmq_crash_check(8); /* a producer killed after its unlock, before its rings */
    int saved = errno;
    uint64_t owed = 0;
    while (mask != 0) {
        uint32_t i = (uint32_t)__builtin_ctzll(mask); /* < 64 == PMQ_BELLS */
        mask &= mask - 1;
        uint64_t token = __atomic_load_n(&q->h->bells[i], __ATOMIC_ACQUIRE);
        if (token == 0) continue;
        int r = ring(token);
        if (r == GONE)
            free_slot(q, i, token);
        else if (r == FAILED)
            owed |= 1ULL << i;
    }
    /* No socket to send from (EMFILE …) or a transient error: arm them again, so the next
     * publish (perhaps another process's) rings them. At worst a spurious ring later. */
    if (owed != 0) __atomic_fetch_or(&q->h->bells_armed, owed, __ATOMIC_RELAXED);
    errno = saved;
}

static uint64_t registered(const pmq_queue *q) {
    uint64_t mask = 0;
    for (uint32_t i = 0; i < PMQ_BELLS; i++)
        if (__atomic_load_n(&q->h->bells[i], __ATOMIC_RELAXED) != 0) mask |= 1ULL << i;
    return mask;
}

void pmq_bells_ring_all(pmq_queue *q) {
    __atomic_store_n(&q->h->bells_armed, 0, __ATOMIC_RELAXED);
    pmq_bells_ring(q, registered(q));
}

uint32_t pmq_bells_count(const pmq_queue *q, uint32_t *armed) {
    *armed = (uint32_t)__builtin_popcountll(__atomic_load_n(&q->h->bells_armed, __ATOMIC_RELAXED));
    return (uint32_t)__builtin_popcountll(registered(q));
}

/* ---- the registrant's calls (each under the lock) ----------------------------------- */

static int free_index(const pmq_queue *q) {
    for (uint32_t i = 0; i < PMQ_BELLS; i++)
        if (__atomic_load_n(&q->h->bells[i], __ATOMIC_RELAXED) == 0) return (int)i;
    return -1;
}

/* The table is full: one datagram to each bell frees those whose owner is gone. A live
 * owner sees one spurious ring. */
static void probe(pmq_queue *q) {
    for (uint32_t i = 0; i < PMQ_BELLS; i++) {
        uint64_t token = __atomic_load_n(&q->h->bells[i], __ATOMIC_RELAXED);
        if (token != 0 && ring(token) == GONE) {
            __atomic_fetch_and(&q->h->bells_armed, ~(1ULL << i), __ATOMIC_RELAXED);
            free_slot(q, i, token);
        }
    }
}

int pmq_bell_register(pmq_queue *q, uint64_t token, uint32_t *slot) {
    if (token == 0) return PMQ_E_INVAL;
    int rc = pmq_lock(q, NULL);
    if (rc != PMQ_OK) return rc;
    int saved = errno;
    int i = free_index(q);
    if (i < 0) {
        probe(q);
        i = free_index(q);
    }
    errno = saved;
    if (i < 0) {
        rc = PMQ_E_FULL;
    } else {
        __atomic_fetch_and(&q->h->bells_armed, ~(1ULL << i), __ATOMIC_RELAXED);
        __atomic_store_n(&q->h->bells[i], token, __ATOMIC_RELEASE);
        *slot = (uint32_t)i;
    }
    pmq_unlock(q);
    return rc;
}

static int holds(const pmq_queue *q, uint32_t slot, uint64_t token) {
    return token != 0 && slot < PMQ_BELLS &&
           __atomic_load_n(&q->h->bells[slot], __ATOMIC_ACQUIRE) == token;
}

/* Arms the bell unless what it waits for is there now (held: held items; else an item a
 * fetch would take). */
static int arm(pmq_queue *q, uint32_t slot, uint64_t token, int held) {
    if (token == 0 || slot >= PMQ_BELLS) return PMQ_E_INVAL;
    int rc = pmq_lock(q, NULL);
    if (rc != PMQ_OK) return rc;
    if (!holds(q, slot, token))
        rc = PMQ_E_INVAL;
    else if (held ? pmq_published(q)->held > 0 : pmq_fetchable(q))
        rc = PMQ_READY;
    else
        __atomic_fetch_or(&q->h->bells_armed, 1ULL << slot, __ATOMIC_RELAXED);
    pmq_unlock(q);
    return rc;
}

int pmq_bell_arm(pmq_queue *q, uint32_t slot, uint64_t token) { return arm(q, slot, token, 0); }

int pmq_bell_arm_held(pmq_queue *q, uint32_t slot, uint64_t token) {
    return arm(q, slot, token, 1);
}

int pmq_bell_unregister(pmq_queue *q, uint32_t slot, uint64_t token) {
    if (token == 0 || slot >= PMQ_BELLS) return PMQ_E_INVAL;
    int rc = pmq_lock(q, NULL);
    if (rc != PMQ_OK) return rc;
    if (holds(q, slot, token)) {
        __atomic_fetch_and(&q->h->bells_armed, ~(1ULL << slot), __ATOMIC_RELAXED);
        __atomic_store_n(&q->h->bells[slot], 0, __ATOMIC_RELEASE);
    } else {
        rc = PMQ_E_INVAL;
    }
    pmq_unlock(q);
    return rc;
}
