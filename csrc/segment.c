/* Segment lifecycle: create, attach (with full header validation), close, unlink. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pmq_internal.h"

static uint64_t next_pow2(uint64_t n) {
    uint64_t p = 1;
    while (p < n) p <<= 1;
    return p;
}

/* Index slots: twice the most live items the queue can hold, so probes stay short. */
static uint64_t index_slots_for(const pmq_config *cfg, uint64_t cap) {
    if (cfg->addmode == PMQ_ADDMODE_APPEND) return 0;
    uint64_t most = cap / sizeof(pmq_rec);
    if (cfg->max_items > 0 && (uint64_t)cfg->max_items < most) most = (uint64_t)cfg->max_items;
    return next_pow2(2 * most + 2);
}

static int map_fd(int fd, size_t size, pmq_queue **out) {
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) return PMQ_E_SYS;
    pmq_queue *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        munmap(base, size);
        errno = ENOMEM;
        return PMQ_E_SYS;
    }
    q->h = base;
    q->map_size = size;
    *out = q;
    return PMQ_OK;
}

static void bind_regions(pmq_queue *q) {
    uint8_t *base = (uint8_t *)q->h;
    q->data = base + q->h->data_off;
    q->index = q->h->index_slots ? (pmq_slot *)(base + q->h->index_off) : NULL;
}

static int init_sync(pmq_header *h) {
    pthread_mutexattr_t ma;
    pthread_condattr_t ca;
    int rc = pthread_mutexattr_init(&ma);
    if (rc == 0) rc = pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    if (rc == 0) rc = pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    if (rc == 0) rc = pthread_mutex_init(&h->lock, &ma);
    pthread_mutexattr_destroy(&ma);
    if (rc != 0) goto fail;
    rc = pthread_condattr_init(&ca);
    if (rc == 0) rc = pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
    if (rc == 0) rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (rc == 0) rc = pthread_cond_init(&h->not_empty, &ca);
    if (rc == 0) rc = pthread_cond_init(&h->not_full, &ca);
    pthread_condattr_destroy(&ca);
    if (rc == 0) return PMQ_OK;
fail:
    errno = rc;
    return PMQ_E_SYS;
}

static int check_config(const pmq_config *cfg, size_t qname_len) {
    if (cfg == NULL || qname_len == 0 || qname_len > PMQ_NAME_MAX) return PMQ_E_INVAL;
    if (cfg->policy > PMQ_POLICY_BLOCK || cfg->addmode > PMQ_ADDMODE_KEEP_NEWEST)
        return PMQ_E_INVAL;
    if (cfg->capacity < PMQ_MIN_CAPACITY || cfg->capacity > PMQ_MAX_CAPACITY) return PMQ_E_INVAL;
    return PMQ_OK;
}

static int attach_fd(int fd, pmq_queue **out);

int pmq_create(const char *shm_name, const uint8_t *qname, size_t qname_len,
               const pmq_config *cfg, int exclusive, pmq_queue **out, int *created) {
    int rc = check_config(cfg, qname_len);
    if (rc != PMQ_OK) return rc;
    *created = 0;
    mode_t mode = cfg->mode ? (mode_t)(cfg->mode & 0777) : 0600;
    int fd = shm_open(shm_name, O_RDWR | O_CREAT | O_EXCL, mode);
    if (fd < 0) {
        if (errno != EEXIST) return errno == EINVAL || errno == ENAMETOOLONG ? PMQ_E_INVAL : PMQ_E_SYS;
        if (exclusive) return PMQ_E_EXISTS;
        fd = shm_open(shm_name, O_RDWR, 0);
        if (fd < 0) return errno == ENOENT ? PMQ_E_NOTFOUND : PMQ_E_SYS;
        rc = attach_fd(fd, out);
        close(fd);
        return rc;
    }
    /* fchmod: shm_open's mode is filtered by the umask; we want exactly what was asked. */
    (void)fchmod(fd, mode);

    uint64_t cap = pmq_align8(cfg->capacity);
    uint64_t slots = index_slots_for(cfg, cap);
    uint64_t header_size = (sizeof(pmq_header) + PMQ_PAGE - 1) / PMQ_PAGE * PMQ_PAGE;
    uint64_t index_off = (header_size + cap + PMQ_PAGE - 1) / PMQ_PAGE * PMQ_PAGE;
    uint64_t seg_size = index_off + slots * sizeof(pmq_slot);
    if (ftruncate(fd, (off_t)seg_size) != 0) goto fail_unlink;
    pmq_queue *q = NULL;
    if (map_fd(fd, (size_t)seg_size, &q) != PMQ_OK) goto fail_unlink;
    close(fd);
    fd = -1;

    pmq_header *h = q->h; /* fresh pages read as zero: only non-zero fields are set */
    h->header_size = sizeof(pmq_header);
    h->abi = pmq_abi();
    h->seg_size = seg_size;
    h->data_off = header_size;
    h->data_cap = cap;
    h->index_off = index_off;
    h->index_slots = slots;
    h->max_items = cfg->max_items > 0 ? cfg->max_items : 0;
    h->policy = cfg->policy;
    h->addmode = cfg->addmode;
    h->name_len = (uint32_t)qname_len;
    memcpy(h->name, qname, qname_len);
    h->st[0].pending_tomb = PMQ_NONE;
    h->st[1].pending_tomb = PMQ_NONE;
    h->st[0].next_id = 1;
    rc = init_sync(h);
    if (rc != PMQ_OK) {
        int saved = errno;
        pmq_close(q);
        shm_unlink(shm_name);
        errno = saved;
        return rc;
    }
    h->version = PMQ_LAYOUT_VERSION;
    /* The magic is the publishing store: an attacher that sees it sees a whole header. */
    __atomic_store_n(&h->magic, PMQ_MAGIC, __ATOMIC_RELEASE);
    bind_regions(q);
    *out = q;
    *created = 1;
    return PMQ_OK;

fail_unlink: {
    int saved = errno;
    if (fd >= 0) close(fd);
    shm_unlink(shm_name);
    errno = saved;
    return PMQ_E_SYS;
}
}

static int valid_state(const pmq_header *h, const pmq_state *s) {
    return s->head <= s->tail && s->tail - s->head <= h->data_cap && (s->head & 7u) == 0 &&
           (s->tail & 7u) == 0 && s->count <= s->tail - s->head;
}

/* Everything read here comes from a file anybody with access could have written. */
static int validate(const pmq_header *h, uint64_t file_size) {
    if (file_size < sizeof(pmq_header)) return PMQ_E_BADSEG;
    if (h->magic != PMQ_MAGIC) return PMQ_E_BADSEG;
    if (h->version != PMQ_LAYOUT_VERSION) return PMQ_E_VERSION;
    if (h->header_size != sizeof(pmq_header) || h->abi != pmq_abi()) return PMQ_E_BADSEG;
    if (h->seg_size != file_size) return PMQ_E_BADSEG;
    if (h->data_off < sizeof(pmq_header) || h->data_off % PMQ_PAGE != 0) return PMQ_E_BADSEG;
    if (h->data_cap < PMQ_MIN_CAPACITY || h->data_cap > PMQ_MAX_CAPACITY || h->data_cap % 8 != 0)
        return PMQ_E_BADSEG;
    if (h->data_off > file_size || h->data_cap > file_size - h->data_off) return PMQ_E_BADSEG;
    if (h->policy > PMQ_POLICY_BLOCK || h->addmode > PMQ_ADDMODE_KEEP_NEWEST) return PMQ_E_BADSEG;
    if (h->name_len == 0 || h->name_len > PMQ_NAME_MAX || h->max_items < 0) return PMQ_E_BADSEG;
    if (h->addmode == PMQ_ADDMODE_APPEND) {
        if (h->index_slots != 0) return PMQ_E_BADSEG;
    } else {
        uint64_t n = h->index_slots;
        pmq_config cfg = {h->max_items, h->data_cap, h->policy, h->addmode, 0};
        if (n != index_slots_for(&cfg, h->data_cap)) return PMQ_E_BADSEG;
        if (h->index_off < h->data_off + h->data_cap || h->index_off % 8 != 0) return PMQ_E_BADSEG;
        if (h->index_off > file_size || n * sizeof(pmq_slot) > file_size - h->index_off)
            return PMQ_E_BADSEG;
    }
    if (h->cur > 1 || !valid_state(h, &h->st[h->cur])) return PMQ_E_BADSEG;
    return PMQ_OK;
}

static int attach_fd(int fd, pmq_queue **out) {
    struct stat st;
    /* A creator publishes the header last; give one that is mid-way a moment to finish. */
    for (int tries = 0;; tries++) {
        if (fstat(fd, &st) != 0) return PMQ_E_SYS;
        if (st.st_size >= (off_t)sizeof(pmq_header)) {
            pmq_header probe;
            if (pread(fd, &probe, sizeof(probe), 0) == (ssize_t)sizeof(probe) &&
                __atomic_load_n(&probe.magic, __ATOMIC_ACQUIRE) != 0)
                break;
        }
        if (tries >= 200) return PMQ_E_BADSEG; /* ~1 s: empty or never initialised */
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    pmq_queue *q = NULL;
    int rc = map_fd(fd, (size_t)st.st_size, &q);
    if (rc != PMQ_OK) return rc;
    rc = validate(q->h, (uint64_t)st.st_size);
    if (rc != PMQ_OK) {
        pmq_close(q);
        return rc;
    }
    bind_regions(q);
    *out = q;
    return PMQ_OK;
}

int pmq_open(const char *shm_name, pmq_queue **out) {
    int fd = shm_open(shm_name, O_RDWR, 0);
    if (fd < 0) {
        if (errno == ENOENT) return PMQ_E_NOTFOUND;
        return errno == EINVAL || errno == ENAMETOOLONG ? PMQ_E_INVAL : PMQ_E_SYS;
    }
    int rc = attach_fd(fd, out);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

void pmq_close(pmq_queue *q) {
    if (q == NULL) return;
    munmap(q->h, q->map_size);
    free(q);
}

int pmq_unlink(const char *shm_name) {
    if (shm_unlink(shm_name) == 0) return PMQ_OK;
    if (errno == ENOENT) return PMQ_E_NOTFOUND;
    return errno == EINVAL || errno == ENAMETOOLONG ? PMQ_E_INVAL : PMQ_E_SYS;
}

int pmq_get_config(const pmq_queue *q, pmq_config *cfg) {
    cfg->max_items = q->h->max_items;
    cfg->capacity = q->h->data_cap;
    cfg->policy = q->h->policy;
    cfg->addmode = q->h->addmode;
    cfg->mode = 0;
    return PMQ_OK;
}

int pmq_get_name(const pmq_queue *q, uint8_t *buf, size_t cap) {
    size_t n = q->h->name_len;
    if (n > cap) return PMQ_E_BUFSMALL;
    memcpy(buf, q->h->name, n);
    return (int)n;
}
