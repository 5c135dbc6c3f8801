"""cffi builder for ``pymqueue._pmq_c`` (API, out-of-line mode).

Run by setuptools through ``cffi_modules`` in setup.py; never imports pymqueue. Our own C files
in ``csrc/`` are compiled into the extension. The cdef declares constants with ``...`` so the
compiler, not this file, supplies their values.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["segment.c", "lock.c", "ring.c"]

CDEF = """
#define PMQ_OK ...
#define PMQ_DUPLICATE ...
#define PMQ_E_EMPTY ...
#define PMQ_E_FULL ...
#define PMQ_E_TOOBIG ...
#define PMQ_E_BUFSMALL ...
#define PMQ_E_NOTFOUND ...
#define PMQ_E_EXISTS ...
#define PMQ_E_BADSEG ...
#define PMQ_E_VERSION ...
#define PMQ_E_SYS ...
#define PMQ_E_INVAL ...
#define PMQ_E_LOCKTIMEOUT ...
#define PMQ_E_CORRUPT ...
#define PMQ_POLICY_DROP_OLDEST ...
#define PMQ_POLICY_REJECT ...
#define PMQ_POLICY_BLOCK ...
#define PMQ_WAIT_READABLE ...
#define PMQ_WAIT_WRITABLE ...
#define PMQ_NAME_MAX ...
#define PMQ_MIN_CAPACITY ...
#define PMQ_RECORD_OVERHEAD ...

typedef struct pmq_queue pmq_queue;
typedef struct pmq_config {
    int64_t max_items; uint64_t capacity; uint32_t policy; uint32_t addmode; uint32_t mode;
} pmq_config;
typedef struct pmq_stats {
    uint64_t items; uint64_t bytes; uint64_t ring_used; uint64_t added; uint64_t fetched;
    uint64_t dropped; uint64_t rejected; uint64_t replaced; uint64_t duplicates;
    uint64_t high_water; uint64_t recoveries; uint64_t next_id;
    uint32_t getters_waiting; uint32_t putters_waiting;
} pmq_stats;

int pmq_create(const char *shm_name, const uint8_t *qname, size_t qname_len,
               const pmq_config *cfg, int exclusive, pmq_queue **out, int *created);
int pmq_open(const char *shm_name, pmq_queue **out);
void pmq_close(pmq_queue *q);
int pmq_unlink(const char *shm_name);
int pmq_get_config(const pmq_queue *q, pmq_config *cfg);
int pmq_get_name(const pmq_queue *q, uint8_t *buf, size_t cap);
int pmq_add(pmq_queue *q, const void *key, size_t klen, const void *val, size_t vlen,
            int64_t timeout_ns);
int pmq_fetch(pmq_queue *q, uint8_t *buf, size_t cap, uint32_t *lens, int64_t timeout_ns);
int pmq_add_many(pmq_queue *q, const uint32_t *lens, const uint8_t *data, size_t n,
                 size_t *done, int64_t timeout_ns);
int pmq_fetch_many(pmq_queue *q, uint8_t *buf, size_t cap, uint32_t *lens, size_t max_n,
                   size_t *got, int64_t timeout_ns);
int pmq_peek_many(pmq_queue *q, uint8_t *buf, size_t cap, uint32_t *lens, size_t max_n,
                  uint64_t *cursor_pos, uint64_t *cursor_id, size_t *got);
int pmq_wait(pmq_queue *q, int what, int64_t timeout_ns);
int pmq_count(pmq_queue *q, uint64_t *count);
int pmq_note_rejected(pmq_queue *q, uint64_t n);
int pmq_get_stats(pmq_queue *q, pmq_stats *out);
void pmq_set_lock_timeout(int64_t timeout_ns);
void pmq_test_crash_at(int point);
int pmq_test_hold_lock(pmq_queue *q);
"""

# PMQ_CFLAGS adds flags (the sanitizer build uses it); the warnings are never optional.
EXTRA = shlex.split(os.environ.get("PMQ_CFLAGS", ""))

ffi = FFI()
ffi.cdef(CDEF)
ffi.set_source(
    "pymqueue._pmq_c",
    '#include "pmq.h"',
    sources=[str((HERE / s).relative_to(Path.cwd())) if HERE.is_relative_to(Path.cwd())
             else str(HERE / s) for s in SOURCES],
    include_dirs=[str(HERE)],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", *EXTRA],
    extra_link_args=shlex.split(os.environ.get("PMQ_LDFLAGS", "")),
    libraries=["pthread", "rt"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
