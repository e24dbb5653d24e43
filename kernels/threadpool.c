#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "threadpool.h"

#define MAX_THREADS 64
/* How long an idle worker spins before sleeping: long enough to bridge the gap between
 * two kernels of one decode step (a few microseconds of Python), short enough not to
 * burn a core while the process waits for requests. */
#define SPIN_ITERS 200000

static struct {
    int n_threads;                 /* workers + the caller */
    pthread_t workers[MAX_THREADS];
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    atomic_int generation;         /* bumped once per job */
    atomic_int busy;               /* workers still inside the current job */
    int stop;
    /* the current job */
    el_task_fn fn;
    void *ctx;
    int64_t n, chunk;
    atomic_llong next;             /* next unclaimed item */
} pool = {
    .n_threads = 1,
    .mutex = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void run_chunks(int ith) {
    for (;;) {
        int64_t begin = atomic_fetch_add(&pool.next, pool.chunk);
        if (begin >= pool.n) break;
        int64_t end = begin + pool.chunk < pool.n ? begin + pool.chunk : pool.n;
        pool.fn(pool.ctx, begin, end, ith);
    }
}

static void *worker_main(void *arg) {
    int ith = (int)(intptr_t)arg;
    /* every worker is created between jobs, when generation is 0 (reset below) */
    int seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&pool.generation, memory_order_acquire) == seen) {
            if (++spins < SPIN_ITERS) { cpu_relax(); continue; }
            pthread_mutex_lock(&pool.mutex);
            while (atomic_load(&pool.generation) == seen && !pool.stop)
                pthread_cond_wait(&pool.wake, &pool.mutex);
            pthread_mutex_unlock(&pool.mutex);
            break;
        }
        if (pool.stop) return NULL;
        seen = atomic_load(&pool.generation);
        run_chunks(ith);
        atomic_fetch_sub_explicit(&pool.busy, 1, memory_order_release);
    }
}

static void stop_workers(void) {
    pthread_mutex_lock(&pool.mutex);
    pool.stop = 1;
    atomic_fetch_add(&pool.generation, 1);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mutex);
    for (int i = 1; i < pool.n_threads; i++) pthread_join(pool.workers[i], NULL);
    pool.stop = 0;
    pool.n_threads = 1;
    atomic_store(&pool.generation, 0);
}

int el_set_threads(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > MAX_THREADS) n_threads = MAX_THREADS;
    if (n_threads == pool.n_threads) return n_threads;
    stop_workers();
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&pool.workers[i], NULL, worker_main, (void *)(intptr_t)i) != 0) {
            n_threads = i;  /* keep the threads we got */
            break;
        }
    }
    pool.n_threads = n_threads;
    return n_threads;
}

int el_get_threads(void) { return pool.n_threads; }

void el_parallel_for(el_task_fn fn, void *ctx, int64_t n, int64_t min_chunk) {
    if (n <= 0) return;
    int nth = pool.n_threads;
    /* ~4 chunks per thread balance load without much contention on the counter */
    int64_t chunk = (n + 4 * nth - 1) / (4 * nth);
    if (chunk < min_chunk) chunk = min_chunk;
    if (nth == 1 || chunk >= n) {
        fn(ctx, 0, n, 0);
        return;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.chunk = chunk;
    atomic_store(&pool.next, 0);
    atomic_store(&pool.busy, nth - 1);
    pthread_mutex_lock(&pool.mutex);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mutex);
    run_chunks(0);
    while (atomic_load_explicit(&pool.busy, memory_order_acquire) > 0) cpu_relax();
}
