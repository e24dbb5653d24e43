/* Matrix products of quantized weights with f32 activations, split across the pool.
 *
 * The activations are quantized once per call to the weight type's vec_dot_type (as llama.cpp
 * does). Then:
 *   - few tokens (decode): GEMV, every weight row dotted with every token by the type's
 *     vec_dot, or by an ISA's row kernel over activations prepared once (gemm.h's el_gemv);
 *     memory-bound, so the goal is to stream each weight byte once with little work per byte;
 *   - a batch (prefill): GEMM, register tiles of rows x tokens over weights unpacked per row
 *     tile and activations packed once (gemm.h), so each weight block loaded from memory
 *     meets every token of a block of up to TOKEN_BLOCK_MAX tokens. On AVX2 the k-quants,
 *     q4_1 and q5_1 take el_ktile instead, tiles read straight from the blocks in llama.cpp's
 *     orders.
 *
 * A copy the runtime makes of a matrix (an LM head requantized to q4_0 or q5_0 at load) may
 * have its rows interleaved eight at a time instead, for a GEMV that streams it at memory
 * speed (el_matmul_x8, at the end).
 *
 * On AVX2 every product is llama.cpp's bit for bit (its CPU backend built for AVX2, weights
 * not repacked): the GEMV and GEMM kernels sum each one in the order of the kernel llama.cpp
 * runs for that type and token count (tests/test_kernels_ggml.py).
 */
#define _DEFAULT_SOURCE  /* pread */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "gemm.h"
#include "quants.h"
#include "threadpool.h"

/* Weight bytes per chunk of rows in a GEMV (see el_matmul). */
#define GEMV_CHUNK_BYTES (32 * 1024)
/* Fewer tokens than this take the GEMV path: unpacking a row tile costs about as much as
 * dotting it with a few tokens. */
#define GEMM_MIN_TOKENS 9
/* Packed activations a row tile meets before the next row tile: they stay in L2 (~1.4 bytes
 * per element: 512 tokens of 640, or 256 of 2048, fill ~0.7 MB) while every row tile's
 * unpacking is amortised over as many tokens as possible. */
#define TOKEN_BLOCK_BYTES (768 * 1024)
#define TOKEN_BLOCK_MAX 512

static size_t align_up(size_t n) { return (n + EL_GEMM_ALIGN - 1) / EL_GEMM_ALIGN * EL_GEMM_ALIGN; }

static inline int use_gemv(int type, int64_t n_cols) {
#if defined(EL_ARCH_GEMV)
    return el_gemv_supported(type) && (type == EL_TYPE_F16 || type == EL_TYPE_BF16 || n_cols % 32 == 0);
#else
    (void)type, (void)n_cols;
    return 0;
#endif
}

/* GEMM through el_ktile (no packing), for the types and ISAs that have it */
static int use_ktile(int type) {
#if defined(EL_ARCH_GEMV)
    return el_ktile_supported(type);
#else
    (void)type;
    return 0;
#endif
}

/* Tiles from GEMM_MIN_TOKENS tokens; el_ktile's types from two (read in place, its tiles
 * cost nothing to set up, and below EL_KTILE_BATCH tokens they sum in vec_dot's order). */
static int use_gemm(int type, int64_t n_cols, int64_t n_tokens) {
    const el_type_traits *t = el_get_type_traits(type);
    return n_tokens >= (use_ktile(type) ? 2 : GEMM_MIN_TOKENS) && el_gemm_supported(type) && n_cols % 32 == 0 &&
           n_cols % t->blck_size == 0;
}

/* ---- GEMV: one vec_dot per (row, token) ---- */

typedef struct {
    el_vec_dot_fn vec_dot;
    const char *w;         /* (n_rows, w_row) bytes */
    size_t w_row;
    const char *xq;        /* (n_tokens, x_row) bytes in vec_dot_type */
    size_t x_row;
    int64_t n_rows, n_cols, n_tokens;
    float *y;              /* (n_tokens, n_rows) */
    int type;
    const char *xp;        /* (n_tokens, xp_row) activations prepared for el_gemv, or NULL */
    size_t xp_row;
} gemv_job;

static void gemv_rows(void *ctx, int64_t r0, int64_t r1, int ith) {
    (void)ith;
    const gemv_job *j = ctx;
#if defined(EL_ARCH_GEMV)
    if (j->xp) {
        el_gemv_tokens(j->type, j->w + r0 * j->w_row, j->w_row, r1 - r0, j->n_cols, j->xp, j->xp_row,
                       j->n_tokens, j->y + r0, j->n_rows);
        return;
    }
#endif
    /* the hot loop of decode; row-outer: a weight row stays in L1 while it meets every token */
    for (int64_t r = r0; r < r1; r++) {
        const char *w = j->w + r * j->w_row;
        for (int64_t t = 0; t < j->n_tokens; t++)
            j->vec_dot(j->n_cols, &j->y[t * j->n_rows + r], w, j->xq + t * j->x_row);
    }
}

typedef struct {
    el_from_float_fn from_float;  /* NULL: the activations are used as they are (f32) */
    const float *x;
    char *xq;
    int64_t n_cols;
    size_t x_row;
    /* GEMM only: pack the quantized rows for the tiles */
    int type;
    const el_xpack *xpack;
    /* GEMV kernels only: prepare the quantized rows for them */
    char *xp;
    size_t xp_row;
} quantize_job;

static void quantize_rows(void *ctx, int64_t t0, int64_t t1, int ith) {
    (void)ith;
    quantize_job *j = ctx;
    if (j->from_float)
        for (int64_t t = t0; t < t1; t++)
            j->from_float(j->x + t * j->n_cols, j->xq + t * j->x_row, j->n_cols);
    if (j->xpack) el_gemm_pack_x(j->type, j->xq, j->x_row, t0, t1, j->n_cols, j->xpack);
#if defined(EL_ARCH_GEMV)
    if (j->xp)
        for (int64_t t = t0; t < t1; t++)
            el_gemv_prepare(j->type, j->xq + t * j->x_row, j->n_cols, j->xp + t * j->xp_row);
#endif
}

/* ---- GEMM: (token block, row tile) tasks ---- */

typedef struct {
    int type;
    const char *w;
    size_t w_row;
    int64_t n_rows, n_cols, n_tokens;
    int64_t n_tiles;       /* row tiles of el_gemm_rm rows */
    int64_t token_block;   /* tokens per task, a multiple of el_gemm_rn */
    const el_xpack *x;
    int has_scale32;
    float *y;
    /* fallback when a thread cannot get its unpack buffer */
    const gemv_job *gemv;
} gemm_job;

/* Each thread's unpacked row tile; grows to the widest matrix it meets. */
static _Thread_local void *tile_buf;
static _Thread_local size_t tile_cap;

static void *thread_tile_buf(size_t n) {
    if (n > tile_cap) {
        free(tile_buf);
        tile_buf = aligned_alloc(EL_GEMM_ALIGN, align_up(n));
        tile_cap = tile_buf ? n : 0;
    }
    return tile_buf;
}

/* Float weights: f32 rows take 4x the bytes of int8 ones, so a task is a block of
 * FLOAT_ROWS rows (unpacked once) and FLOAT_TOKENS tokens, both L2-sized (64 x 2048 f32 is
 * 512 KB), rather than a row tile against up to 512 tokens. Measured on the F16 synthetic
 * model: ~20% faster than the int8 blocking. */
#define FLOAT_ROWS 64
#define FLOAT_TOKENS 32

static void gemm_float_tasks(void *ctx, int64_t i0, int64_t i1, int ith) {
    const gemm_job *j = ctx;
    const int rm = el_gemm_rm, rn = el_gemm_rn_f;
    const size_t tile_bytes = el_gemm_wtile_bytes(j->type, j->n_cols);
    const int64_t n_groups = (j->n_rows + FLOAT_ROWS - 1) / FLOAT_ROWS;
    char *buf = thread_tile_buf(tile_bytes * (FLOAT_ROWS / rm));
    el_wpack wp[FLOAT_ROWS];  /* one per row tile of the block */
    (void)ith;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t tb = i / n_groups, r_begin = i % n_groups * FLOAT_ROWS;
        const int64_t r_end = r_begin + FLOAT_ROWS < j->n_rows ? r_begin + FLOAT_ROWS : j->n_rows;
        const int64_t t_begin = tb * FLOAT_TOKENS;
        const int64_t t_end = t_begin + FLOAT_TOKENS < j->n_tokens ? t_begin + FLOAT_TOKENS : j->n_tokens;
        if (!buf) {  /* out of memory: the GEMV kernels need no buffer */
            for (int64_t r = r_begin; r < r_end; r++)
                for (int64_t t = t_begin; t < t_end; t++)
                    j->gemv->vec_dot(j->n_cols, &j->y[t * j->n_rows + r], j->w + r * j->w_row,
                                     j->gemv->xq + t * j->gemv->x_row);
            continue;
        }
        for (int64_t r0 = r_begin; r0 < r_end; r0 += rm) {
            const int nr = (int)(r_end - r0 < rm ? r_end - r0 : rm);
            el_gemm_unpack_w(j->type, j->w + r0 * j->w_row, j->w_row, nr, j->n_cols,
                             buf + (r0 - r_begin) / rm * tile_bytes, &wp[(r0 - r_begin) / rm]);
        }
        for (int64_t r0 = r_begin; r0 < r_end; r0 += rm) {  /* the hot loop of float prefill */
            const int nr = (int)(r_end - r0 < rm ? r_end - r0 : rm);
            for (int64_t t = t_begin; t < t_end; t += rn) {
                const int nt = (int)(t_end - t < rn ? t_end - t : rn);
                el_gemm_tile_f(&wp[(r0 - r_begin) / rm], nr, j->x, t, nt, j->n_cols, j->y + r0, j->n_rows);
            }
        }
    }
}

static void gemm_tasks(void *ctx, int64_t i0, int64_t i1, int ith) {
    const gemm_job *j = ctx;
    const int rm = el_gemm_rm, rn = el_gemm_rn;
    void *buf = thread_tile_buf(el_gemm_wtile_bytes(j->type, j->n_cols));
    for (int64_t i = i0; i < i1; i++) {
        const int64_t tb = i / j->n_tiles, tile = i % j->n_tiles;
        const int64_t r0 = tile * rm, t_begin = tb * j->token_block;
        const int64_t t_end = t_begin + j->token_block < j->n_tokens ? t_begin + j->token_block : j->n_tokens;
        const int nr = (int)(j->n_rows - r0 < rm ? j->n_rows - r0 : rm);
        if (!buf) {  /* out of memory: the GEMV kernels need no buffer */
            for (int64_t r = r0; r < r0 + nr; r++)
                for (int64_t t = t_begin; t < t_end; t++)
                    j->gemv->vec_dot(j->n_cols, &j->y[t * j->n_rows + r], j->w + r * j->w_row,
                                     j->gemv->xq + t * j->gemv->x_row);
            continue;
        }
        el_wpack wp;
        const int has_mn = el_gemm_unpack_w(j->type, j->w + r0 * j->w_row, j->w_row, nr, j->n_cols, buf, &wp);
        /* the hot loop of prefill */
        for (int64_t t = t_begin; t < t_end; t += rn) {
            const int nt = (int)(t_end - t < rn ? t_end - t : rn);
            el_gemm_tile_q(&wp, nr, j->x, t, nt, j->n_cols, has_mn, j->has_scale32, j->y + r0, j->n_rows);
        }
    }
    (void)ith;
}

#if defined(EL_ARCH_GEMV)
/* a task: a row tile against a block of tokens, read in place (el_ktile) */
static void ktile_tasks(void *ctx, int64_t i0, int64_t i1, int ith) {
    const gemm_job *j = ctx;
    const int rm = el_ktile_rm, rn = el_ktile_rn;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t tb = i / j->n_tiles, r0 = i % j->n_tiles * rm, t_begin = tb * j->token_block;
        const int64_t t_end = t_begin + j->token_block < j->n_tokens ? t_begin + j->token_block : j->n_tokens;
        const int nr = (int)(j->n_rows - r0 < rm ? j->n_rows - r0 : rm);
        for (int64_t t = t_begin; t < t_end; t += rn) {
            const int nt = (int)(t_end - t < rn ? t_end - t : rn);
            el_ktile(j->type, j->w + r0 * j->w_row, j->w_row, nr, j->gemv->xq + t * j->gemv->x_row, j->gemv->x_row,
                     nt, j->n_cols, j->n_tokens >= EL_KTILE_BATCH, j->y + t * j->n_rows + r0, j->n_rows);
        }
    }
    (void)ith;
}
#endif

size_t el_matmul_wsize(int type, int64_t n_cols, int64_t n_tokens) {
    const int vt = el_vec_dot_type(type);
    if (vt < 0) return 0;
    size_t n = vt == EL_TYPE_F32 ? 0 : (size_t)n_tokens * el_row_size(vt, n_cols);
    if (use_gemm(type, n_cols, n_tokens) && use_ktile(type))
        return n;
    if (use_gemm(type, n_cols, n_tokens))
        n = align_up(n) + EL_GEMM_ALIGN + el_gemm_xpack_bytes(type, n_tokens, n_cols);
#if defined(EL_ARCH_GEMV)
    else if (use_gemv(type, n_cols))
        n = align_up(n) + EL_GEMM_ALIGN + (size_t)n_tokens * el_gemv_xbytes(n_cols);
#endif
    return n;
}

void el_matmul(int type, const void *w, int64_t n_rows, int64_t n_cols,
               const float *x, int64_t n_tokens, float *y, void *wdata) {
    const el_type_traits *wt = el_get_type_traits(type);
    const el_type_traits *xt = el_get_type_traits(wt->vec_dot_type);
    const size_t x_row = el_row_size(wt->vec_dot_type, n_cols);
    const int gemm = use_gemm(type, n_cols, n_tokens), ktile = gemm && use_ktile(type);
    const int quantize = wt->vec_dot_type != EL_TYPE_F32;  /* F32 weights take x as it is */

    el_xpack xpack;
    quantize_job q = {quantize ? xt->from_float : NULL, x, quantize ? wdata : (char *)x, n_cols, x_row,
                      type, NULL, NULL, 0};
    /* after the quantized rows: the packed or prepared forms */
    const size_t xq_bytes = quantize ? (size_t)n_tokens * x_row : 0;
    const uintptr_t p = (uintptr_t)wdata + align_up(xq_bytes);
    void *extra = (void *)((p + EL_GEMM_ALIGN - 1) / EL_GEMM_ALIGN * EL_GEMM_ALIGN);
    if (gemm && !ktile) {
        el_gemm_xpack_layout(type, n_tokens, n_cols, extra, &xpack);
        q.xpack = &xpack;
    }
#if defined(EL_ARCH_GEMV)
    else if (use_gemv(type, n_cols)) {
        q.xp = extra;
        q.xp_row = el_gemv_xbytes(n_cols);
    }
#endif
    if (quantize || gemm) el_parallel_for(quantize_rows, &q, n_tokens, 1);

    gemv_job v = {wt->vec_dot, w, el_row_size(type, n_cols), q.xq, x_row, n_rows, n_cols, n_tokens, y,
                  type, q.xp, q.xp_row};
    if (!gemm) {
        /* chunks of at least GEMV_CHUNK_BYTES of weights: small matrices (a decode step has
         * many) split into few chunks, so claiming them costs less than it saves */
        const int64_t min_rows = (int64_t)(GEMV_CHUNK_BYTES / v.w_row) + 1;
        el_parallel_for(gemv_rows, &v, n_rows, min_rows < 16 ? 16 : min_rows);
        return;
    }
#if defined(EL_ARCH_GEMV)
    if (ktile) {
        const int64_t n_tiles = (n_rows + el_ktile_rm - 1) / el_ktile_rm;
        int64_t token_block = TOKEN_BLOCK_BYTES / (int64_t)x_row / el_ktile_rn * el_ktile_rn;
        if (token_block < el_ktile_rn) token_block = el_ktile_rn;
        if (token_block > TOKEN_BLOCK_MAX) token_block = TOKEN_BLOCK_MAX;
        gemm_job g = {type, w, el_row_size(type, n_cols), n_rows, n_cols, n_tokens, n_tiles, token_block,
                      NULL, 0, y, &v};
        el_parallel_for(ktile_tasks, &g, (n_tokens + token_block - 1) / token_block * n_tiles, 1);
        return;
    }
#endif
    const int64_t n_tiles = (n_rows + el_gemm_rm - 1) / el_gemm_rm;
    const int64_t per_token = (int64_t)el_gemm_xpack_bytes(type, el_gemm_rn, n_cols) / el_gemm_rn;
    int64_t token_block = TOKEN_BLOCK_BYTES / per_token / el_gemm_rn * el_gemm_rn;
    if (token_block < el_gemm_rn) token_block = el_gemm_rn;
    if (token_block > TOKEN_BLOCK_MAX) token_block = TOKEN_BLOCK_MAX;
    const int64_t n_blocks = (n_tokens + token_block - 1) / token_block;
    gemm_job g = {type, w, el_row_size(type, n_cols), n_rows, n_cols, n_tokens, n_tiles, token_block,
                  &xpack, el_gemm_scale32(type), y, &v};
    if (type == EL_TYPE_F32 || type == EL_TYPE_F16 || type == EL_TYPE_BF16) {
        const int64_t n_groups = (n_rows + FLOAT_ROWS - 1) / FLOAT_ROWS;
        el_parallel_for(gemm_float_tasks, &g, (n_tokens + FLOAT_TOKENS - 1) / FLOAT_TOKENS * n_groups, 1);
        return;
    }
    el_parallel_for(gemm_tasks, &g, n_blocks * n_tiles, 1);
}

/* ---- several matrices, one job (decode) ---- */

/* Whether el_matmul_multi fuses these: every matrix on the GEMV path, one activation type. */
static int can_fuse(int n, const int *types, int64_t n_cols, int64_t n_tokens) {
    if (n < 1 || n > EL_MULTI_MAX) return 0;
    for (int i = 0; i < n; i++) {
        const el_type_traits *t = el_get_type_traits(types[i]);
        if (!t || !t->vec_dot || n_cols % t->blck_size || use_gemm(types[i], n_cols, n_tokens) ||
            t->vec_dot_type != el_get_type_traits(types[0])->vec_dot_type)
            return 0;
    }
    return 1;
}

/* the activations prepared for matrix i's GEMV kernel, or -1 (its vec_dot reads xq) */
static int64_t prepared_slot(const int *types, int i, int64_t n_cols) {
#if defined(EL_ARCH_GEMV)
    if (!use_gemv(types[i], n_cols)) return -1;
    int slot = 0;
    for (int j = 0; j < i; j++) {
        if (!use_gemv(types[j], n_cols)) continue;
        if (types[j] == types[i]) return slot;  /* the same type: the same preparation */
        slot++;
    }
    return slot;
#else
    (void)types, (void)i, (void)n_cols;
    return -1;
#endif
}

size_t el_matmul_multi_wsize(int n, const int *types, int64_t n_cols, int64_t n_tokens) {
    if (!can_fuse(n, types, n_cols, n_tokens)) {
        size_t m = 0;
        for (int i = 0; i < n && i < EL_MULTI_MAX; i++) {
            const size_t s = el_matmul_wsize(types[i], n_cols, n_tokens);
            m = s > m ? s : m;
        }
        return m;
    }
    const int vt = el_vec_dot_type(types[0]);
    size_t bytes = align_up(vt == EL_TYPE_F32 ? 0 : (size_t)n_tokens * el_row_size(vt, n_cols)) + EL_GEMM_ALIGN;
#if defined(EL_ARCH_GEMV)
    for (int i = 0; i < n; i++)
        if (prepared_slot(types, i, n_cols) >= 0) bytes += align_up((size_t)n_tokens * el_gemv_xbytes(n_cols));
#endif
    return bytes;
}

typedef struct {
    int n;
    gemv_job jobs[EL_MULTI_MAX];
    int64_t start[EL_MULTI_MAX + 1];  /* matrix i has rows start[i] .. start[i + 1] of the job */
} multi_job;

static void multi_rows(void *ctx, int64_t r0, int64_t r1, int ith) {
    const multi_job *m = ctx;
    for (int i = 0; i < m->n; i++) {
        const int64_t a = r0 > m->start[i] ? r0 : m->start[i];
        const int64_t b = r1 < m->start[i + 1] ? r1 : m->start[i + 1];
        if (a < b) gemv_rows((void *)&m->jobs[i], a - m->start[i], b - m->start[i], ith);
    }
}

void el_matmul_multi(int n, const int *types, void *const *w, const int64_t *n_rows, int64_t n_cols,
                     const float *x, int64_t n_tokens, float *const *y, void *wdata) {
    if (!can_fuse(n, types, n_cols, n_tokens)) {
        for (int i = 0; i < n && i < EL_MULTI_MAX; i++) el_matmul(types[i], w[i], n_rows[i], n_cols, x, n_tokens, y[i], wdata);
        return;
    }
    const int vt = el_get_type_traits(types[0])->vec_dot_type;
    const size_t x_row = el_row_size(vt, n_cols);
    const char *xq = (const char *)x;
    if (vt != EL_TYPE_F32) {  /* one token or a few: quantized here, once for every matrix */
        for (int64_t t = 0; t < n_tokens; t++)
            el_get_type_traits(vt)->from_float(x + t * n_cols, (char *)wdata + t * x_row, n_cols);
        xq = wdata;
    }
    multi_job m = {.n = n};
#if defined(EL_ARCH_GEMV)
    /* after the quantized rows: each distinct type's prepared activations */
    char *extra = (char *)(((uintptr_t)wdata + align_up(vt == EL_TYPE_F32 ? 0 : (size_t)n_tokens * x_row) +
                            EL_GEMM_ALIGN - 1) / EL_GEMM_ALIGN * EL_GEMM_ALIGN);
#endif
    m.start[0] = 0;
    for (int i = 0; i < n; i++) {
        const el_type_traits *t = el_get_type_traits(types[i]);
        m.jobs[i] = (gemv_job){t->vec_dot, w[i], el_row_size(types[i], n_cols), xq, x_row, n_rows[i], n_cols,
                               n_tokens, y[i], types[i], NULL, 0};
#if defined(EL_ARCH_GEMV)
        const int64_t slot = prepared_slot(types, i, n_cols);
        if (slot >= 0) {
            const size_t xp_row = el_gemv_xbytes(n_cols);
            m.jobs[i].xp = extra + slot * align_up((size_t)n_tokens * xp_row);
            m.jobs[i].xp_row = xp_row;
        }
#endif
        m.start[i + 1] = m.start[i] + n_rows[i];
    }
#if defined(EL_ARCH_GEMV)
    for (int i = 0; i < n; i++) {  /* each distinct type's preparation, once */
        int first = m.jobs[i].xp != NULL;
        for (int j = 0; j < i && first; j++) first = m.jobs[j].xp != m.jobs[i].xp;
        if (first)
            for (int64_t t = 0; t < n_tokens; t++)
                el_gemv_prepare(types[i], xq + t * x_row, n_cols, (char *)m.jobs[i].xp + t * m.jobs[i].xp_row);
    }
#endif
    /* chunks as el_matmul's, by the first matrix's row size */
    const int64_t min_rows = (int64_t)(GEMV_CHUNK_BYTES / m.jobs[0].w_row) + 1;
    el_parallel_for(multi_rows, &m, m.start[n], min_rows < 16 ? 16 : min_rows);
}

/* ---- rows interleaved eight at a time (an LM head's copy: quants.h's block_q4_0x8, ...) ---- */

/* Groups of 8 rows a thread takes through every token before the next: they stay in L1/L2
 * (8 groups of 2048 columns are 74 KB). */
#define X8_GROUPS 8

typedef struct {
    void (*gemv)(const void *, int64_t, int64_t, const block_q8_0 *, const float *, const int32_t *, float *);
    const char *w;
    size_t group_bytes;    /* of one group's nb blocks */
    int64_t n_rows, nb, n_tokens;
    const block_q8_0 *xq;  /* (n_tokens, nb) */
    float *xd;             /* (n_tokens, nb) each block's scale */
    int32_t *xc;           /* (n_tokens, nb) -bias times each block's quant sum */
    float *y;
} x8_job;

static void x8_groups(void *ctx, int64_t g0, int64_t g1, int ith) {
    const x8_job *j = ctx;
    (void)ith;
    if (j->n_tokens == 1) {  /* decode: one pass over the rows */
        j->gemv(j->w + g0 * j->group_bytes, g1 - g0, j->nb, j->xq, j->xd, j->xc, j->y + 8 * g0);
        return;
    }
    for (int64_t g = g0; g < g1; g += X8_GROUPS) {
        const int64_t n = g1 - g < X8_GROUPS ? g1 - g : X8_GROUPS;
        for (int64_t t = 0; t < j->n_tokens; t++)
            j->gemv(j->w + g * j->group_bytes, n, j->nb, j->xq + t * j->nb, j->xd + t * j->nb, j->xc + t * j->nb,
                    j->y + t * j->n_rows + 8 * g);
    }
}

size_t el_matmul_x8_wsize(int64_t n_cols, int64_t n_tokens) {
    const int64_t nb = n_cols / QK8_0;
    return (size_t)(n_tokens * nb) * (sizeof(block_q8_0) + sizeof(float) + sizeof(int32_t)) + 16;
}

void el_matmul_x8(int type, const void *w, int64_t n_rows, int64_t n_cols, const float *x, int64_t n_tokens,
                  float *y, void *wdata) {
    const int64_t nb = n_cols / QK8_0;
    const int bias = type == EL_TYPE_Q4_0 ? 8 : 16;
    block_q8_0 *xq = wdata;
    /* after the quantized rows (2-byte aligned), 4-byte aligned */
    float *xd = (float *)(((uintptr_t)(xq + n_tokens * nb) + 3) / 4 * 4);
    int32_t *xc = (int32_t *)(xd + n_tokens * nb);
    quantize_job q = {el_get_type_traits(EL_TYPE_Q8_0)->from_float, x, (char *)xq, n_cols, nb * sizeof(block_q8_0),
                      EL_TYPE_Q8_0, NULL, NULL, 0};
    el_parallel_for(quantize_rows, &q, n_tokens, 1);
    for (int64_t i = 0; i < n_tokens * nb; i++) {
        int sum = 0;
        for (int e = 0; e < QK8_0; e++) sum += xq[i].qs[e];
        xd[i] = el_fp16_to_fp32(xq[i].d);
        xc[i] = -bias * sum;
    }
    x8_job j = {type == EL_TYPE_Q4_0 ? el_gemv_q4_0x8 : el_gemv_q5_0x8, w, (size_t)nb * el_type_size(type) * 8,
                n_rows, nb, n_tokens, xq, xd, xc, y};
    const int64_t min_groups = (int64_t)(GEMV_CHUNK_BYTES / j.group_bytes) + 1;
    el_parallel_for(x8_groups, &j, n_rows / 8, min_groups);
}

/* The oracle for tests: reference activation quantizer and reference dot product, one pair
 * at a time. */
void el_matmul_ref(int type, const void *w, int64_t n_rows, int64_t n_cols,
                   const float *x, int64_t n_tokens, float *y, void *wdata) {
    const el_type_traits *wt = el_get_type_traits(type);
    const el_type_traits *xt = el_get_type_traits(wt->vec_dot_type);
    const size_t x_row = el_row_size(wt->vec_dot_type, n_cols), w_row = el_row_size(type, n_cols);
    const char *xq = (const char *)x;
    if (wt->vec_dot_type != EL_TYPE_F32) {
        for (int64_t t = 0; t < n_tokens; t++)
            xt->from_float_act_ref(x + t * n_cols, (char *)wdata + t * x_row, n_cols);
        xq = wdata;
    }
    for (int64_t t = 0; t < n_tokens; t++)
        for (int64_t r = 0; r < n_rows; r++)
            wt->vec_dot_ref(n_cols, &y[t * n_rows + r], (const char *)w + r * w_row, xq + t * x_row);
}

/* The indices of the k largest of y[0 .. n) into top[0 .. k), ascending (fewer when NaNs
 * leave fewer than k numbers); returns how many. The hot loop scans SCAN_BLOCK values at a
 * time against the smallest kept one (a loop the compiler vectorises): on a vocabulary of
 * logits almost no block has a newcomer. */
#define SCAN_BLOCK 64
static int top_k(const float *y, int64_t n, int k, int64_t *top) {
    int m = 0;
    for (int64_t r0 = 0; r0 < n; r0 += SCAN_BLOCK) {
        const int64_t r1 = r0 + SCAN_BLOCK < n ? r0 + SCAN_BLOCK : n;
        if (m == k) {
            const float least = y[top[0]];
            int any = 0;
            for (int64_t r = r0; r < r1; r++) any |= y[r] > least;
            if (!any) continue;
        }
        for (int64_t r = r0; r < r1; r++) {
            const float v = y[r];
            int at;
            if (m < k && v == v) {  /* not full: insert from the top end */
                for (at = m++; at > 0 && y[top[at - 1]] > v; at--) top[at] = top[at - 1];
            } else if (m == k && v > y[top[0]]) {  /* full: the smallest leaves */
                for (at = 0; at + 1 < k && y[top[at + 1]] < v; at++) top[at] = top[at + 1];
            } else {
                continue;
            }
            top[at] = r;
        }
    }
    return m;
}

size_t el_rescore_top_wsize(int type, int64_t n_cols) {
    const el_type_traits *wt = el_get_type_traits(type);
    if (!wt) return 0;
    return align_up(el_matmul_wsize(type, n_cols, 1)) + el_row_size(type, n_cols);
}

/* the whole row, or 0 (a read error, or the file is shorter) */
static int read_row(int fd, int64_t offset, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        const ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(offset + (int64_t)got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        got += (size_t)r;
    }
    return 1;
}

void el_rescore_top(int type, const void *w, int fd, int64_t w_offset, int64_t n_rows, int64_t n_cols,
                    const float *x, int64_t n_tokens, float *y, int k, void *wdata) {
    const el_type_traits *wt = el_get_type_traits(type);
    if (!wt || n_cols % wt->blck_size || k <= 0) return;
    if (k > EL_RESCORE_MAX) k = EL_RESCORE_MAX;
    if (k > n_rows) k = (int)n_rows;
    const el_type_traits *xt = el_get_type_traits(wt->vec_dot_type);
    const size_t w_row = el_row_size(type, n_cols);
    char *row_buf = (char *)wdata + align_up(el_matmul_wsize(type, n_cols, 1));
    for (int64_t t = 0; t < n_tokens; t++, x += n_cols, y += n_rows) {
        int64_t top[EL_RESCORE_MAX];
        const int n = top_k(y, n_rows, k, top);
        const void *xq = x;
        if (wt->vec_dot_type != EL_TYPE_F32) {
            xt->from_float(x, wdata, n_cols);
            xq = wdata;
        }
        for (int i = 0; i < n; i++) {
            const char *row = (const char *)w + top[i] * w_row;
            if (fd >= 0) {
                if (!read_row(fd, w_offset + top[i] * (int64_t)w_row, row_buf, w_row)) continue;
                row = row_buf;
            }
            wt->vec_dot(n_cols, &y[top[i]], row, xq);
        }
    }
}

void el_get_rows(int type, const void *table, int64_t n_cols, const int32_t *ids,
                 int64_t n_ids, float *out) {
    size_t row = el_row_size(type, n_cols);
    for (int64_t i = 0; i < n_ids; i++)
        el_dequantize_row(type, (const char *)table + (size_t)ids[i] * row, out + i * n_cols, n_cols);
}

int el_get_rows_fd(int type, int fd, int64_t offset, int64_t n_cols, const int32_t *ids,
                   int64_t n_ids, float *out, void *row_buf) {
    const size_t row = el_row_size(type, n_cols);
    for (int64_t i = 0; i < n_ids; i++) {
        if (!read_row(fd, offset + (int64_t)ids[i] * (int64_t)row, row_buf, row)) return -1;
        el_dequantize_row(type, row_buf, out + i * n_cols, n_cols);
    }
    return 0;
}
