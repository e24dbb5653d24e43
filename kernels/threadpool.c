/* The persistent thread pool (threadpool.h).
 *
 * A job is published as one 64-bit word, `state` = (generation << 32) | next chunk index.
 * Threads claim a chunk with a compare-and-swap on the whole word, so a claim can only
 * succeed for the job whose parameters the thread read: a worker that wakes late, after the
 * caller already finished the job (or started the next one), fails its CAS and claims
 * nothing. Before a caller writes the next job's parameters it closes the finished job (an odd
 * generation whose chunk index no job reaches): otherwise a worker that read the finished
 * job's exhausted word and then the next job's chunk count could still claim "chunk
 * n_chunks" of the old word and run it with a mix of the two jobs' parameters. The caller therefore waits only for chunks that were claimed (`done` counts them
 * in), never for workers to check in: on an oversubscribed machine a descheduled worker costs
 * nothing unless it holds a chunk, and chunks are small.
 *
 * Idle workers spin (pause, then yield) for a short while, long enough to bridge the gap
 * between the kernels of a decode step, then sleep on a condition variable.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "threadpool.h"

#define MAX_THREADS 64
/* Chunks per thread: enough for the caller to take over the share of a descheduled worker. */
#define CHUNKS_PER_THREAD 8
/* Idle workers spin with `pause` this long, then with sched_yield() until SPIN_NS. */
#define PAUSE_NS 50000
#define SPIN_NS 2000000
/* The chunk index of a closed job's word: above any job's chunk count. */
#define CLOSED 0xFFFFFFFFu

static struct {
    int n_threads;                      /* workers + the caller */
    pthread_t workers[MAX_THREADS];
    pthread_mutex_t mutex;              /* with `wake`: sleeping workers */
    pthread_cond_t wake;
    pthread_mutex_t job_lock;           /* one job at a time (callers from several threads) */
    atomic_int sleepers;
    atomic_int stop;
    _Atomic uint64_t state;             /* generation << 32 | next chunk */
    atomic_llong done;                  /* chunks of the current job finished */
    /* the current job; written only between jobs, read before a claim's CAS validates them */
    _Atomic(el_task_fn) fn;
    _Atomic(void *) ctx;
    atomic_llong n, chunk, n_chunks;
} pool = {
    .n_threads = 1,
    .mutex = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .job_lock = PTHREAD_MUTEX_INITIALIZER,
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline uint32_t gen_of(uint64_t s) { return (uint32_t)(s >> 32); }

/* Claim and run chunks of the job whose state word was s, until none is left or the job is
 * no longer current. */
static void run_chunks(uint64_t s, int ith) {
    const uint32_t g = gen_of(s);
    const el_task_fn fn = atomic_load_explicit(&pool.fn, memory_order_relaxed);
    void *const ctx = atomic_load_explicit(&pool.ctx, memory_order_relaxed);
    const int64_t n = atomic_load_explicit(&pool.n, memory_order_relaxed);
    const int64_t chunk = atomic_load_explicit(&pool.chunk, memory_order_relaxed);
    const int64_t n_chunks = atomic_load_explicit(&pool.n_chunks, memory_order_relaxed);
    /* pairs with the caller's fence: if the parameters read above are a later job's, the CAS
     * below sees the word that closed this one, and fails */
    atomic_thread_fence(memory_order_acquire);
    for (;;) {
        const int64_t c = (int64_t)(uint32_t)s;
        if (gen_of(s) != g || c >= n_chunks) return;
        /* success means the word did not change since it was read: the job is still g, so the
         * parameters read above are g's */
        if (!atomic_compare_exchange_weak_explicit(&pool.state, &s, s + 1, memory_order_acquire,
                                                   memory_order_acquire))
            continue;
        const int64_t begin = c * chunk;
        const int64_t end = begin + chunk < n ? begin + chunk : n;
        fn(ctx, begin, end, ith);
        atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
        s = atomic_load_explicit(&pool.state, memory_order_acquire);
    }
}

static void *worker_main(void *arg) {
    const int ith = (int)(intptr_t)arg;
    uint32_t seen = gen_of(atomic_load(&pool.state));
    for (;;) {
        uint64_t s = atomic_load_explicit(&pool.state, memory_order_acquire);
        if (gen_of(s) == seen && !atomic_load_explicit(&pool.stop, memory_order_relaxed)) {
            const int64_t t0 = now_ns();
            for (int64_t spins = 1;; spins++) {
                if (spins % 64 == 0) {
                    const int64_t dt = now_ns() - t0;
                    if (dt > SPIN_NS) break;
                    if (dt > PAUSE_NS) sched_yield();
                }
                cpu_relax();
                s = atomic_load_explicit(&pool.state, memory_order_acquire);
                if (gen_of(s) != seen || atomic_load_explicit(&pool.stop, memory_order_relaxed)) break;
            }
            if (gen_of(s) == seen && !atomic_load(&pool.stop)) {
                pthread_mutex_lock(&pool.mutex);
                atomic_fetch_add(&pool.sleepers, 1);  /* seq_cst: pairs with the caller's check */
                while (gen_of(atomic_load(&pool.state)) == seen && !atomic_load(&pool.stop))
                    pthread_cond_wait(&pool.wake, &pool.mutex);
                atomic_fetch_sub(&pool.sleepers, 1);
                pthread_mutex_unlock(&pool.mutex);
            }
        }
        if (atomic_load(&pool.stop)) return NULL;
        s = atomic_load_explicit(&pool.state, memory_order_acquire);
        seen = gen_of(s);
        run_chunks(s, ith);
    }
}

static void stop_workers(void) {
    pthread_mutex_lock(&pool.mutex);
    atomic_store(&pool.stop, 1);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mutex);
    for (int i = 1; i < pool.n_threads; i++) pthread_join(pool.workers[i], NULL);
    atomic_store(&pool.stop, 0);
    pool.n_threads = 1;
}

int el_set_threads(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > MAX_THREADS) n_threads = MAX_THREADS;
    pthread_mutex_lock(&pool.job_lock);
    if (n_threads != pool.n_threads) {
        stop_workers();
        int made = 1;
        for (int i = 1; i < n_threads; i++) {
            if (pthread_create(&pool.workers[i], NULL, worker_main, (void *)(intptr_t)i) != 0) break;
            made++;  /* keep the threads we got */
        }
        pool.n_threads = made;
    }
    n_threads = pool.n_threads;
    pthread_mutex_unlock(&pool.job_lock);
    return n_threads;
}

int el_get_threads(void) { return pool.n_threads; }

void el_parallel_for(el_task_fn fn, void *ctx, int64_t n, int64_t min_chunk) {
    if (n <= 0) return;
    if (min_chunk < 1) min_chunk = 1;
    /* another thread's job is running (two Python threads calling kernels): run this one here */
    if (pthread_mutex_trylock(&pool.job_lock) != 0) {
        fn(ctx, 0, n, 0);
        return;
    }
    const int nth = pool.n_threads;
    int64_t chunk = (n + (int64_t)CHUNKS_PER_THREAD * nth - 1) / ((int64_t)CHUNKS_PER_THREAD * nth);
    if (chunk < min_chunk) chunk = min_chunk;
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    if (nth == 1 || n_chunks == 1) {
        pthread_mutex_unlock(&pool.job_lock);
        fn(ctx, 0, n, 0);
        return;
    }
    /* close the previous job before its parameters are overwritten (see the top) */
    const uint32_t gen = gen_of(atomic_load(&pool.state));
    atomic_store(&pool.state, (uint64_t)(gen + 1) << 32 | CLOSED);
    atomic_thread_fence(memory_order_seq_cst);
    atomic_store_explicit(&pool.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&pool.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&pool.n, n, memory_order_relaxed);
    atomic_store_explicit(&pool.chunk, chunk, memory_order_relaxed);
    atomic_store_explicit(&pool.n_chunks, n_chunks, memory_order_relaxed);
    atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
    const uint64_t s = (uint64_t)(gen + 2) << 32;
    atomic_store(&pool.state, s);  /* seq_cst: publishes the job; pairs with `sleepers` below */
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.mutex);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.mutex);
    }
    run_chunks(s, 0);
    /* wait for chunks that workers claimed and are still running */
    for (int64_t spins = 1; atomic_load_explicit(&pool.done, memory_order_acquire) < n_chunks; spins++) {
        cpu_relax();
        if (spins % 1024 == 0) sched_yield();  /* the holder may be waiting for this core */
    }
    pthread_mutex_unlock(&pool.job_lock);
}
