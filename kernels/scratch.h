/* Per-thread scratch carved into regions, for kernels that lay several arrays out in one
 * buffer (attention's scores, query copies, row lists, ...).
 *
 * A region sized too small spills into its neighbour without touching anything the allocator
 * or AddressSanitizer can see, and reads back whatever the neighbour holds: wrong values that
 * change from run to run, or NaN. So the debug build of the kernels (EL_DEBUG, built by
 * EDGELLM_KERNELS_DEBUG=1 with ASan and UBSan: edgellm.kernels) follows every region with a
 * poisoned red zone, so a write or read past its end is reported where it happens, and fills
 * every region with NaN bytes each time it is carved, so a value read before it was written
 * shows up as NaN. Regions start on 64-byte boundaries (cache lines) in every build. */
#ifndef EL_SCRATCH_H
#define EL_SCRATCH_H

#include <stdlib.h>
#include <string.h>

#include <stddef.h>

#if defined(EL_DEBUG)
#include <sanitizer/asan_interface.h>
#define EL_REDZONE 64
#else
#define ASAN_POISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#define ASAN_UNPOISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#define EL_REDZONE 0
#endif

#define EL_SCRATCH_ALIGN 64

typedef struct {
    char *buf;
    size_t cap;
} el_scratch;

static inline size_t el_scratch_round(size_t n, size_t to) { return (n + to - 1) / to * to; }

/* Regions of sizes[0..n) bytes out of s (grown if they do not fit, never shrunk): out[i]
 * gets region i. Returns 0, or -1 out of memory (s is left empty). */
static inline int el_scratch_carve(el_scratch *s, int n, const size_t sizes[], void *out[]) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += el_scratch_round(sizes[i], EL_SCRATCH_ALIGN) + EL_REDZONE;
    if (total > s->cap) {
        if (s->buf) ASAN_UNPOISON_MEMORY_REGION(s->buf, s->cap);
        free(s->buf);
        s->buf = aligned_alloc(EL_SCRATCH_ALIGN, el_scratch_round(total, EL_SCRATCH_ALIGN));
        s->cap = s->buf ? total : 0;
        if (!s->buf) return -1;
    }
    char *p = s->buf;
#if defined(EL_DEBUG)
    ASAN_UNPOISON_MEMORY_REGION(s->buf, s->cap);
    memset(s->buf, 0xff, s->cap);  /* NaN as f32 and as f16 */
#endif
    for (int i = 0; i < n; i++) {
        out[i] = p;
        const size_t used = el_scratch_round(sizes[i], 8);  /* ASan poisons 8-byte granules */
        p += el_scratch_round(sizes[i], EL_SCRATCH_ALIGN) + EL_REDZONE;
        ASAN_POISON_MEMORY_REGION((char *)out[i] + used, (size_t)(p - (char *)out[i]) - used);
    }
    return 0;
}

#endif
