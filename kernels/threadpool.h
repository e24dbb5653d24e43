/* A persistent pool of worker threads for the kernels (internal; not part of api.h).
 *
 * el_parallel_for() splits [0, n) into chunks that the caller and the workers claim in
 * turn, so a slow or preempted core does not hold the others up, and the caller never waits
 * for a worker that has not claimed anything. Workers spin briefly between calls (a decode
 * step issues ~150 back-to-back kernels) and then sleep on a condition variable. Jobs from
 * two caller threads at once do not mix: the second runs on its own thread.
 */
#pragma once
#include <stdint.h>

/* fn(ctx, begin, end, ith): process items [begin, end) on thread ith (0 = caller). */
typedef void (*el_task_fn)(void *ctx, int64_t begin, int64_t end, int ith);

/* Run fn over [0, n) in chunks of at least min_chunk items, on all threads. */
void el_parallel_for(el_task_fn fn, void *ctx, int64_t n, int64_t min_chunk);
