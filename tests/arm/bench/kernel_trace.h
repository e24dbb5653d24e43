/* Shared by the two bench harnesses (bench_arm.py traces what runs between the markers).
 *
 * One kernel call runs between bench_begin() and bench_end(); bench_arm.py records every
 * instruction executed in between under qemu-aarch64 (-singlestep -d exec) and feeds that
 * trace to llvm-mca. The buffers hold pseudo-random bytes: the kernels' instruction streams
 * do not depend on the values (no data-dependent branches in the SIMD paths). */
#pragma once

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_K 4096            /* weights per row: 16 super-blocks of 256 */
#define BENCH_BUF (1 << 20)     /* bytes per buffer: more than any layout below needs */

__attribute__((noinline)) void bench_begin(void) { __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void bench_end(void) { __asm__ volatile("" ::: "memory"); }

static void *bench_buffer(uint32_t seed) {
    uint8_t *p = aligned_alloc(64, BENCH_BUF);
    for (size_t i = 0; i < BENCH_BUF; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (uint8_t)(seed >> 24);
    }
    return p;
}
