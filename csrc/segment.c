/* Segment lifecycle: create (unnamed, linked to its name only when whole), attach (owner
 * and mode checked before anything is read, then the whole header validated and its
 * geometry copied), close, unlink.
 *
 * Segments live in /dev/shm, the directory glibc's shm_open() uses on Linux, so the names
 * are the same as shm_open()'s: "/name" is /dev/shm/name.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pmq_internal.h"

#define SHM_DIR "/dev/shm"

static uint64_t next_pow2(uint64_t n) {
    uint64_t p = 1;
    while (p < n) p <<= 1;
    return p;
}

/* Index slots: twice the most live items the queue can hold, so probes stay short. */
static uint64_t index_slots_for(int64_t max_items, uint32_t addmode, uint64_t cap) {
    if (addmode == PMQ_ADDMODE_APPEND) return 0;
    uint64_t most = cap / sizeof(pmq_rec);
    if (max_items > 0 && (uint64_t)max_items < most) most = (uint64_t)max_items;
    return next_pow2(2 * most + 2);
}

/* "/name" -> "/dev/shm/name"; the name may hold no other slash. */
static int shm_path(const char *shm_name, char *out, size_t cap) {
    if (shm_name == NULL || shm_name[0] != '/') return PMQ_E_INVAL;
    const char *base = shm_name + 1;
    size_t n = strlen(base);
    if (n == 0 || n > PMQ_NAME_MAX || strchr(base, '/') != NULL || strcmp(base, ".") == 0 ||
        strcmp(base, "..") == 0)
        return PMQ_E_INVAL;
    if ((size_t)snprintf(out, cap, "%s/%s", SHM_DIR, base) >= cap) return PMQ_E_INVAL;
    return PMQ_OK;
}

static int open_errno(void) {
    if (errno == ENOENT) return PMQ_E_NOTFOUND;
    return errno == EINVAL || errno == ENAMETOOLONG ? PMQ_E_INVAL : PMQ_E_SYS;
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
    q->spin_ns = pmq_default_spin();
    *out = q;
    return PMQ_OK;
}

/* Copies the validated geometry g into the handle; from here on only the copy is used. */
static void take_geometry(pmq_queue *q, const pmq_header *h) {
    q->seg_size = h->seg_size;
    q->data_off = h->data_off;
    q->data_cap = h->data_cap;
    q->index_off = h->index_off;
    q->index_slots = h->index_slots;
    q->max_items = h->max_items;
    q->policy = h->policy;
    q->addmode = h->addmode;
    q->epoch = h->epoch;
    q->name_len = h->name_len;
    memcpy(q->name, h->name, q->name_len);
    uint8_t *base = (uint8_t *)q->h;
    q->data = base + q->data_off;
    q->index = q->index_slots ? (pmq_slot *)(base + q->index_off) : NULL;
}

static int init_lock(pmq_header *h) {
    pthread_mutexattr_t ma;
    int rc = pthread_mutexattr_init(&ma);
    if (rc == 0) rc = pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    if (rc == 0) rc = pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    if (rc == 0) rc = pthread_mutex_init(&h->lock, &ma);
    pthread_mutexattr_destroy(&ma);
    if (rc == 0) return PMQ_OK;
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

/* ---- trust -------------------------------------------------------------------------- */

static int check_trust(int fd, const pmq_trust *trust, struct stat *st) {
    if (fstat(fd, st) != 0) return PMQ_E_SYS;
    if (!S_ISREG(st->st_mode)) return PMQ_E_UNTRUSTED;
    mode_t allowed = trust != NULL && trust->allowed_mode != 0 ? trust->allowed_mode & 07777
                                                               : 0600;
    if ((st->st_mode & 07777 & ~allowed) != 0) return PMQ_E_UNTRUSTED;
    if (st->st_uid == geteuid()) return PMQ_OK;
    if (trust != NULL)
        for (uint32_t i = 0; i < trust->n_owners; i++)
            if (st->st_uid == (uid_t)trust->owners[i]) return PMQ_OK;
    return PMQ_E_UNTRUSTED;
}

static int check_trust_arg(const pmq_trust *trust) {
    return trust != NULL && trust->n_owners > PMQ_TRUST_MAX_OWNERS ? PMQ_E_INVAL : PMQ_OK;
}

/* ---- attach ------------------------------------------------------------------------- */

static int valid_state(const pmq_header *h, const pmq_state *s) {
    return s->head <= s->tail && s->tail - s->head <= h->data_cap && (s->head & 7u) == 0 &&
           (s->tail & 7u) == 0 && s->count <= (s->tail - s->head) / sizeof(pmq_rec) &&
           s->hold <= 1 && s->held <= s->count &&
           (h->max_items == 0 || s->count <= (uint64_t)h->max_items);
}

/* Everything read here comes from a file its owner could have written. Each field is
 * read from a private snapshot of the header, so it cannot change between check and use. */
static int validate(const pmq_header *h, uint64_t file_size) {
    if (h->magic != PMQ_MAGIC) return PMQ_E_BADSEG;
    if (h->version != PMQ_LAYOUT_VERSION) return PMQ_E_VERSION;
    if (h->header_size != sizeof(pmq_header) || h->abi != pmq_abi()) return PMQ_E_BADSEG;
    if (h->seg_size != file_size) return PMQ_E_BADSEG;
    if (h->data_off < sizeof(pmq_header) || h->data_off % PMQ_PAGE != 0) return PMQ_E_BADSEG;
    if (h->data_cap < PMQ_MIN_CAPACITY || h->data_cap > PMQ_MAX_CAPACITY || h->data_cap % 8 != 0)
        return PMQ_E_BADSEG;
    if (h->data_off > file_size || h->data_cap > file_size - h->data_off) return PMQ_E_BADSEG;
    if (h->policy > PMQ_POLICY_BLOCK || h->addmode > PMQ_ADDMODE_KEEP_NEWEST || h->epoch == 0)
        return PMQ_E_BADSEG;
    if (h->name_len == 0 || h->name_len > PMQ_NAME_MAX || h->max_items < 0) return PMQ_E_BADSEG;
    if (h->addmode == PMQ_ADDMODE_APPEND) {
        if (h->index_slots != 0) return PMQ_E_BADSEG;
    } else {
        uint64_t n = h->index_slots;
        if (n != index_slots_for(h->max_items, h->addmode, h->data_cap)) return PMQ_E_BADSEG;
        if (h->index_off < h->data_off + h->data_cap || h->index_off % 8 != 0) return PMQ_E_BADSEG;
        if (h->index_off > file_size || n * sizeof(pmq_slot) > file_size - h->index_off)
            return PMQ_E_BADSEG;
    }
    if (h->cur > 1 || !valid_state(h, &h->st[h->cur])) return PMQ_E_BADSEG;
    if (h->poisoned) return PMQ_E_CORRUPT; /* a recovery failed */
    return PMQ_OK;
}

/* The segment is linked to its name only when whole: a header that is not valid now never
 * will be. */
static int attach_fd(int fd, const pmq_trust *trust, pmq_queue **out) {
    struct stat st;
    int rc = check_trust(fd, trust, &st);
    if (rc != PMQ_OK) return rc;
    if (st.st_size < (off_t)sizeof(pmq_header)) return PMQ_E_BADSEG;
    pmq_queue *q = NULL;
    rc = map_fd(fd, (size_t)st.st_size, &q);
    if (rc != PMQ_OK) return rc;
    pmq_header *snap = malloc(sizeof(*snap));
    if (snap == NULL) {
        pmq_close(q);
        errno = ENOMEM;
        return PMQ_E_SYS;
    }
    memcpy(snap, q->h, sizeof(*snap));
    rc = validate(snap, (uint64_t)st.st_size);
    if (rc == PMQ_OK) take_geometry(q, snap);
    free(snap);
    if (rc != PMQ_OK) {
        pmq_close(q);
        return rc;
    }
    *out = q;
    return PMQ_OK;
}

static int open_existing(const char *path, const pmq_trust *trust, pmq_queue **out) {
    int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return errno == ELOOP ? PMQ_E_UNTRUSTED : open_errno();
    int rc = attach_fd(fd, trust, out);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int pmq_open(const char *shm_name, const pmq_trust *trust, pmq_queue **out) {
    char path[sizeof(SHM_DIR) + PMQ_NAME_MAX + 2];
    int rc = shm_path(shm_name, path, sizeof(path));
    if (rc == PMQ_OK) rc = check_trust_arg(trust);
    if (rc != PMQ_OK) return rc;
    return open_existing(path, trust, out);
}

/* ---- create ------------------------------------------------------------------------- */

/* An unnamed file in /dev/shm (O_TMPFILE); where that is refused, a file under a random
 * temporary name (*tmp_path set) that the caller links to the real name and removes. */
static int open_unnamed(mode_t mode, char *tmp_path, size_t cap) {
    tmp_path[0] = '\0';
    int fd = open(SHM_DIR, O_TMPFILE | O_RDWR | O_CLOEXEC, mode);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)) return fd;
    for (int tries = 0; tries < 16; tries++) {
        uint64_t r = 0;
        if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
            r = (uint64_t)pmq_now_ns() ^ ((uint64_t)getpid() << 32);
        snprintf(tmp_path, cap, "%s/.pmq-new.%016llx", SHM_DIR, (unsigned long long)r);
        fd = open(tmp_path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
        if (fd >= 0 || errno != EEXIST) break;
    }
    if (fd < 0) tmp_path[0] = '\0';
    return fd;
}

/* Gives the whole segment its name. 0, or -1 with errno (EEXIST: the name is taken). */
static int link_name(int fd, const char *tmp_path, const char *path) {
    if (tmp_path[0] != '\0') {
        int rc = link(tmp_path, path);
        int saved = errno;
        unlink(tmp_path);
        errno = saved;
        return rc;
    }
    char self[64];
    snprintf(self, sizeof(self), "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, self, AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0) return 0;
    if (errno == ENOENT && access("/proc/self/fd", F_OK) != 0) /* no /proc: needs a capability */
        return linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH);
    return -1;
}

/* A random non-zero number naming one incarnation of a queue (a new segment of the same
 * name gets another), so that (queue, epoch, record id) names an item for ever. */
static uint64_t new_epoch(void) {
    uint64_t r = 0;
    if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
        r = (uint64_t)pmq_now_ns() * 0x9E3779B97F4A7C15ULL ^ (uint64_t)getpid();
    return r ? r : 1;
}

/* Fills a fresh (zeroed) mapping; the magic is stored last. */
static int init_header(pmq_queue *q, const pmq_config *cfg, const uint8_t *qname,
                       size_t qname_len, uint64_t header_size, uint64_t index_off,
                       uint64_t seg_size, uint64_t cap, uint64_t slots) {
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
    h->epoch = new_epoch();
    h->name_len = (uint32_t)qname_len;
    memcpy(h->name, qname, qname_len);
    h->st[0].pending_tomb = PMQ_NONE;
    h->st[1].pending_tomb = PMQ_NONE;
    h->st[0].next_id = 1;
    h->room_need = PMQ_NONE;
    int rc = init_lock(h);
    if (rc != PMQ_OK) return rc;
    h->version = PMQ_LAYOUT_VERSION;
    __atomic_store_n(&h->magic, PMQ_MAGIC, __ATOMIC_RELEASE);
    take_geometry(q, h);
    return PMQ_OK;
}

int pmq_create(const char *shm_name, const uint8_t *qname, size_t qname_len,
               const pmq_config *cfg, int exclusive, const pmq_trust *trust, pmq_queue **out,
               int *created) {
    *created = 0;
    char path[sizeof(SHM_DIR) + PMQ_NAME_MAX + 2];
    int rc = check_config(cfg, qname_len);
    if (rc == PMQ_OK) rc = shm_path(shm_name, path, sizeof(path));
    if (rc == PMQ_OK) rc = check_trust_arg(trust);
    if (rc != PMQ_OK) return rc;
    if (!exclusive) {
        rc = open_existing(path, trust, out);
        if (rc != PMQ_E_NOTFOUND) return rc;
    }

    mode_t mode = cfg->mode ? (mode_t)(cfg->mode & 0777) : 0600;
    char tmp_path[sizeof(SHM_DIR) + 64];
    int fd = open_unnamed(mode, tmp_path, sizeof(tmp_path));
    if (fd < 0) return PMQ_E_SYS;
    pmq_queue *q = NULL;
    uint64_t cap = pmq_align8(cfg->capacity);
    uint64_t slots = index_slots_for(cfg->max_items, cfg->addmode, cap);
    uint64_t header_size = (sizeof(pmq_header) + PMQ_PAGE - 1) / PMQ_PAGE * PMQ_PAGE;
    uint64_t index_off = (header_size + cap + PMQ_PAGE - 1) / PMQ_PAGE * PMQ_PAGE;
    uint64_t seg_size = index_off + slots * sizeof(pmq_slot);
    /* fchmod: the open mode is filtered by the umask; we want exactly what was asked. */
    rc = fchmod(fd, mode) == 0 && ftruncate(fd, (off_t)seg_size) == 0 ? PMQ_OK : PMQ_E_SYS;
    if (rc == PMQ_OK) rc = map_fd(fd, (size_t)seg_size, &q);
    if (rc == PMQ_OK)
        rc = init_header(q, cfg, qname, qname_len, header_size, index_off, seg_size, cap, slots);
    pmq_crash_check(7); /* a creator killed here leaves no name behind */
    if (rc == PMQ_OK && link_name(fd, tmp_path, path) != 0) {
        rc = errno == EEXIST ? PMQ_E_EXISTS : PMQ_E_SYS;
        tmp_path[0] = '\0'; /* link_name removed it */
    }
    int saved = errno;
    if (tmp_path[0] != '\0' && rc != PMQ_OK) unlink(tmp_path);
    close(fd);
    if (rc != PMQ_OK) {
        pmq_close(q);
        if (rc == PMQ_E_EXISTS && !exclusive) return open_existing(path, trust, out);
        errno = saved;
        return rc;
    }
    *out = q;
    *created = 1;
    return PMQ_OK;
}

/* ---- the rest ----------------------------------------------------------------------- */

void pmq_close(pmq_queue *q) {
    if (q == NULL) return;
    munmap(q->h, q->map_size);
    free(q);
}

int pmq_unlink(const char *shm_name) {
    char path[sizeof(SHM_DIR) + PMQ_NAME_MAX + 2];
    int rc = shm_path(shm_name, path, sizeof(path));
    if (rc != PMQ_OK) return rc;
    if (unlink(path) == 0) return PMQ_OK;
    return open_errno();
}

int pmq_get_config(const pmq_queue *q, pmq_config *cfg) {
    cfg->max_items = q->max_items;
    cfg->capacity = q->data_cap;
    cfg->policy = q->policy;
    cfg->addmode = q->addmode;
    cfg->mode = 0;
    return PMQ_OK;
}

int pmq_get_name(const pmq_queue *q, uint8_t *buf, size_t cap) {
    size_t n = q->name_len;
    if (n > cap) return PMQ_E_BUFSMALL;
    memcpy(buf, q->name, n);
    return (int)n;
}

uint64_t pmq_epoch(const pmq_queue *q) { return q->epoch; }
