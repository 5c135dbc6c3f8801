/* C futex ping-pong: the reference for the hand-off benchmark (bench/bench_handoff.py).
 *
 *     futex_pingpong ROUND_TRIPS WARMUP SPIN_NS [CPU_A CPU_B]
 *
 * Two processes (fork) share an anonymous mapping with two 32-bit sequence words: A stores
 * i in `ping` and wakes B; B waits until `ping` is i, stores i in `pong` and wakes A; A times
 * each round trip with CLOCK_MONOTONIC. A waiter first watches its word for up to SPIN_NS
 * (0: never spins), then announces itself in a waiter count and sleeps in FUTEX_WAIT; a poster
 * calls FUTEX_WAKE only when the count says someone may sleep. No payload is copied.
 * CPU_A / CPU_B (optional, -1: not pinned): the CPU each process is pinned to after fork.
 * Prints one line: round_trips=... median_ns=... p90_ns=... p99_ns=... mean_ns=... min_ns=...
 * max_ns=...
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct shared {
    _Atomic uint32_t ping;
    _Atomic uint32_t ping_waiters;
    char pad[56]; /* the two directions on different cache lines */
    _Atomic uint32_t pong;
    _Atomic uint32_t pong_waiters;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long futex(_Atomic uint32_t *word, int op, uint32_t val) {
    /* not FUTEX_PRIVATE_FLAG: the word is shared between two processes */
    return syscall(SYS_futex, (uint32_t *)word, op, val, NULL, NULL, 0);
}

static void wait_for(_Atomic uint32_t *word, _Atomic uint32_t *waiters, uint32_t want,
                     long spin_ns) {
    if (atomic_load(word) == want)
        return;
    if (spin_ns > 0) {
        uint64_t end = now_ns() + (uint64_t)spin_ns;
        do {
            cpu_relax();
            if (atomic_load(word) == want)
                return;
        } while (now_ns() < end);
    }
    atomic_fetch_add(waiters, 1);
    for (;;) {
        uint32_t v = atomic_load(word);
        if (v == want)
            break;
        if (futex(word, FUTEX_WAIT, v) == -1 && errno != EAGAIN && errno != EINTR) {
            perror("FUTEX_WAIT");
            exit(1);
        }
    }
    atomic_fetch_sub(waiters, 1);
}

static void post(_Atomic uint32_t *word, _Atomic uint32_t *waiters, uint32_t val) {
    atomic_store(word, val); /* seq_cst: ordered before the load of the waiter count */
    if (atomic_load(waiters) > 0 && futex(word, FUTEX_WAKE, 1) == -1) {
        perror("FUTEX_WAKE");
        exit(1);
    }
}

static void pin(long cpu) {
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((int)cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) == -1) {
        perror("sched_setaffinity");
        exit(1);
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static uint64_t pct(const uint64_t *sorted, long n, double p) {
    long i = (long)(p * (double)(n - 1) + 0.5);
    return sorted[i];
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 6) {
        fprintf(stderr, "usage: %s ROUND_TRIPS WARMUP SPIN_NS [CPU_A CPU_B]\n", argv[0]);
        return 2;
    }
    long n = strtol(argv[1], NULL, 10);
    long warm = strtol(argv[2], NULL, 10);
    long spin_ns = strtol(argv[3], NULL, 10);
    long cpu_a = argc == 6 ? strtol(argv[4], NULL, 10) : -1;
    long cpu_b = argc == 6 ? strtol(argv[5], NULL, 10) : -1;
    if (n <= 0 || warm < 0 || spin_ns < 0 || n + warm >= (long)UINT32_MAX) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memset(sh, 0, sizeof *sh);
    uint32_t total = (uint32_t)(n + warm);

    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) { /* B: echo every ping */
        pin(cpu_b);
        for (uint32_t i = 1; i <= total; i++) {
            wait_for(&sh->ping, &sh->ping_waiters, i, spin_ns);
            post(&sh->pong, &sh->pong_waiters, i);
        }
        _exit(0);
    }

    pin(cpu_a);
    uint64_t *rt = malloc((size_t)n * sizeof *rt);
    if (rt == NULL) {
        perror("malloc");
        return 1;
    }
    double sum = 0;
    for (uint32_t i = 1; i <= total; i++) {
        uint64_t t0 = now_ns();
        post(&sh->ping, &sh->ping_waiters, i);
        wait_for(&sh->pong, &sh->pong_waiters, i, spin_ns);
        uint64_t dt = now_ns() - t0;
        if (i > (uint32_t)warm) {
            rt[i - (uint32_t)warm - 1] = dt;
            sum += (double)dt;
        }
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "responder failed\n");
        return 1;
    }
    qsort(rt, (size_t)n, sizeof *rt, cmp_u64);
    printf("round_trips=%ld median_ns=%llu p90_ns=%llu p99_ns=%llu mean_ns=%.0f min_ns=%llu "
           "max_ns=%llu\n",
           n, (unsigned long long)pct(rt, n, 0.5), (unsigned long long)pct(rt, n, 0.9),
           (unsigned long long)pct(rt, n, 0.99), sum / (double)n,
           (unsigned long long)rt[0], (unsigned long long)rt[n - 1]);
    free(rt);
    munmap(sh, sizeof *sh);
    return 0;
}
