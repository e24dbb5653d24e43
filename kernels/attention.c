/* KV cache writes and causal attention over an f16 or q8_0 cache.
 *
 * Work is split by (block of query tokens, kv head): the heads that share a kv head
 * (grouped-query attention) and a few consecutive tokens are done together, so each cached K
 * and V row is converted to f32 (from f16 by F16C / NEON fcvt, or from q8_0 blocks) once per
 * block of queries, in chunks of slots that stay in L1, and then meets every query of the
 * block. A q8_0 cache (the memory planner's choice on a tight budget) holds each head's row
 * in 34 bytes per 32 values instead of 64.
 *
 * The queries and the softmax weights are rounded to f16 before they meet the f16 cache, as
 * llama.cpp's CPU backend does (its K.Q and V.p matmuls convert the f32 side to the f16
 * cache's type); the sums themselves are f32. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "simd.h"
#include "threadpool.h"

/* Queries per work item (tokens x heads of one kv head): K/V conversion is amortised over
 * this many queries. */
#define QUERIES_PER_ITEM 16
/* Slots converted to f32 at a time: 16 rows of head_dim 256 is 16 KB, so they stay in L1
 * between the conversion and the tiles (64 rows, in L2, took 1.9x as long in decode). */
#define SLOT_CHUNK 16

/* Register tiles: QB queries x KB keys of dot products, QB queries x DB vectors of output.
 * 32 vector registers (AVX-512, NEON) hold 16 accumulators, AVX2's 16 hold 8. */
#if EL_VW == 16 || (EL_VW == 4 && defined(__aarch64__))
#define QB 4
#define KB 4
#define DB 4
#else
#define QB 4
#define KB 2
#define DB 2
#endif

static int kv_type_ok(int kv_type, int64_t head_dim) {
    return kv_type == EL_TYPE_F16 || (kv_type == EL_TYPE_Q8_0 && head_dim % 32 == 0);
}

int el_kv_store(int kv_type, const float *k, const float *v, void *k_cache, void *v_cache,
                const int32_t *slots, int64_t n_tokens, int64_t row) {
    if (!kv_type_ok(kv_type, row)) return -1;
    const size_t row_bytes = el_row_size(kv_type, row);
    for (int64_t t = 0; t < n_tokens; t++) {
        char *kc = (char *)k_cache + slots[t] * row_bytes, *vc = (char *)v_cache + slots[t] * row_bytes;
        if (kv_type == EL_TYPE_F16) {
            el_row_f32_to_f16(k + t * row, (uint16_t *)kc, row);
            el_row_f32_to_f16(v + t * row, (uint16_t *)vc, row);
        } else {
            const el_from_float_fn quantize = el_get_type_traits(EL_TYPE_Q8_0)->from_float;
            quantize(k + t * row, kc, row);
            quantize(v + t * row, vc, row);
        }
    }
    return 0;
}

/* kv head g of cache row `slot` as hd f32 */
static inline void cache_row_f32(int kv_type, const void *cache, size_t row_bytes, int64_t slot, int64_t g,
                                 int64_t hd, float *out) {
    const char *row = (const char *)cache + slot * row_bytes;
    if (kv_type == EL_TYPE_F16) {
        el_row_f16_to_f32((const uint16_t *)row + g * hd, out, hd);
        return;
    }
    const block_q8_0 *b = (const block_q8_0 *)row + g * hd / 32;
    for (int64_t i = 0; i < hd / 32; i++) {
        const float d = el_fp16_to_fp32(b[i].d);
        for (int e = 0; e < 32; e++) out[32 * i + e] = d * b[i].qs[e];
    }
}

/* Per-thread scratch, grown rarely (a longer context), so the decode path does not
 * allocate: scores (queries, n_slots), visible slot list, and a chunk of f32 K or V rows. */
static _Thread_local float *scratch;
static _Thread_local size_t scratch_cap;

static float *thread_scratch(size_t n) {
    if (n > scratch_cap) {
        free(scratch);
        scratch = malloc(n * sizeof(float));
        scratch_cap = scratch ? n : 0;
    }
    return scratch;
}

typedef struct {
    const float *q;
    const int32_t *q_pos;
    int64_t n_tokens, n_head, n_kv_head, head_dim;
    int kv_type;
    const void *k_cache, *v_cache;
    const int32_t *slot_pos;
    int64_t n_slots, window;
    float scale;
    float *out;
    int64_t tokens_per_item, n_token_blocks;
} attention_job;

static inline int attends(const attention_job *j, int32_t q_pos, int32_t p) {
    return p >= 0 && p <= q_pos && (j->window == 0 || q_pos - p < j->window);
}

/* out[a][b] = q[a] . k[b] over hd elements */
static inline void score_tile(const float *const q[QB], const float *const k[KB], int64_t hd, float out[QB][KB]) {
    vf acc[QB][KB];
    for (int a = 0; a < QB; a++)
        for (int b = 0; b < KB; b++) acc[a][b] = vf_set1(0.0f);
    int64_t e = 0;
    for (; e + EL_VW <= hd; e += EL_VW) {
        vf kv[KB];
        for (int b = 0; b < KB; b++) kv[b] = vf_load(k[b] + e);
        for (int a = 0; a < QB; a++) {
            const vf qv = vf_load(q[a] + e);
            for (int b = 0; b < KB; b++) acc[a][b] = vf_fma(qv, kv[b], acc[a][b]);
        }
    }
    for (int a = 0; a < QB; a++)
        for (int b = 0; b < KB; b++) {
            float s = vf_hsum(acc[a][b]);
            for (int64_t r = e; r < hd; r++) s += q[a][r] * k[b][r];
            out[a][b] = s;
        }
}

/* o[a][v0 .. v0 + DB vectors] += sum_c p[a][c] * rows[c][same], for c < nc */
static inline void pv_tile(float *const o[QB], const float *const p[QB], const float *rows, int64_t hd,
                           int64_t nc, int64_t v0) {
    vf acc[QB][DB];
    for (int a = 0; a < QB; a++)
        for (int d = 0; d < DB; d++) acc[a][d] = vf_load(o[a] + v0 + d * EL_VW);
    for (int64_t c = 0; c < nc; c++) {
        vf vv[DB];
        for (int d = 0; d < DB; d++) vv[d] = vf_load(rows + c * hd + v0 + d * EL_VW);
        for (int a = 0; a < QB; a++) {
            const vf pa = vf_set1(p[a][c]);
            for (int d = 0; d < DB; d++) acc[a][d] = vf_fma(pa, vv[d], acc[a][d]);
        }
    }
    for (int a = 0; a < QB; a++)
        for (int d = 0; d < DB; d++) vf_store(o[a] + v0 + d * EL_VW, acc[a][d]);
}

static void attention_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    const attention_job *j = ctx;
    const int64_t group = j->n_head / j->n_kv_head, hd = j->head_dim;
    const size_t row_bytes = el_row_size(j->kv_type, j->n_kv_head * hd);
    const int64_t max_q = j->tokens_per_item * group;
    (void)ith;
    /* scores (max_q, n_slots) | slot list (n_slots, as int32) | f32 rows (SLOT_CHUNK, hd) |
     * a zero row and a scratch output row for the queries that pad a tile | zero weights
     * (n_slots) | the block's queries rounded to f16 (max_q, hd) */
    float *scores = thread_scratch((size_t)(max_q * j->n_slots + j->n_slots + (SLOT_CHUNK + 2) * hd + j->n_slots +
                                            max_q * hd));
    if (!scores) return;  /* out of memory: leave out untouched rather than crash */
    int32_t *vis = (int32_t *)(scores + max_q * j->n_slots);
    float *rows = (float *)(vis + j->n_slots);
    float *zero = rows + SLOT_CHUNK * hd, *sink = zero + hd, *zero_p = sink + hd, *qh = zero_p + j->n_slots;
    memset(zero, 0, (size_t)hd * sizeof(float));
    memset(zero_p, 0, (size_t)j->n_slots * sizeof(float));

    for (int64_t item = i0; item < i1; item++) {
        const int64_t g = item / j->n_token_blocks, tb = item % j->n_token_blocks;
        const int64_t t0 = tb * j->tokens_per_item;
        const int64_t t1 = t0 + j->tokens_per_item < j->n_tokens ? t0 + j->tokens_per_item : j->n_tokens;
        const int64_t nq = (t1 - t0) * group;  /* query r: token t0 + r / group, head g*group + r % group */
#define QROW(r) (qh + (r) * hd)
#define OROW(r) (j->out + ((t0 + (r) / group) * j->n_head + g * group + (r) % group) * hd)
#define QPOS(r) (j->q_pos[t0 + (r) / group])
        for (int64_t r = 0; r < nq; r++) {
            memcpy(QROW(r), j->q + ((t0 + r / group) * j->n_head + g * group + r % group) * hd, hd * sizeof(float));
            el_row_round_f16(QROW(r), hd);
        }

        /* the slots any query of the block may see */
        int32_t lo = INT32_MAX, hi = INT32_MIN;
        for (int64_t t = t0; t < t1; t++) {
            lo = j->q_pos[t] < lo ? j->q_pos[t] : lo;
            hi = j->q_pos[t] > hi ? j->q_pos[t] : hi;
        }
        int64_t n_vis = 0;
        for (int64_t s = 0; s < j->n_slots; s++) {
            const int32_t p = j->slot_pos[s];
            if (p >= 0 && p <= hi && (j->window == 0 || (int64_t)lo - p < j->window)) vis[n_vis++] = (int32_t)s;
        }

        /* scores = scale * q . k, or -inf where a query may not look */
        for (int64_t c0 = 0; c0 < n_vis; c0 += SLOT_CHUNK) {
            const int64_t nc = n_vis - c0 < SLOT_CHUNK ? n_vis - c0 : SLOT_CHUNK;
            for (int64_t c = 0; c < nc; c++)
                cache_row_f32(j->kv_type, j->k_cache, row_bytes, vis[c0 + c], g, hd, rows + c * hd);
            for (int64_t r0 = 0; r0 < nq; r0 += QB) {
                const float *q[QB];
                for (int a = 0; a < QB; a++) q[a] = r0 + a < nq ? QROW(r0 + a) : zero;
                for (int64_t b0 = 0; b0 < nc; b0 += KB) {
                    const float *k[KB];
                    for (int b = 0; b < KB; b++) k[b] = b0 + b < nc ? rows + (b0 + b) * hd : zero;
                    float sc[QB][KB];
                    score_tile(q, k, hd, sc);
                    for (int a = 0; a < QB && r0 + a < nq; a++)
                        for (int b = 0; b < KB && b0 + b < nc; b++)
                            scores[(r0 + a) * j->n_slots + c0 + b0 + b] =
                                attends(j, QPOS(r0 + a), j->slot_pos[vis[c0 + b0 + b]]) ? j->scale * sc[a][b] : -INFINITY;
                }
            }
        }
        /* softmax over the visible slots; a query that sees nothing gets zeros */
        for (int64_t r = 0; r < nq; r++) {
            float *sc = scores + r * j->n_slots;
            const float max = el_row_max(sc, n_vis);
            if (max == -INFINITY) {
                memset(sc, 0, (size_t)n_vis * sizeof(float));
                continue;
            }
            const float sum = el_row_exp_sum(sc, max, n_vis);
            el_row_scale(sc, 1.0f / sum, n_vis);
            el_row_round_f16(sc, n_vis);
        }
        /* out = sum_s p_s v_s */
        for (int64_t r = 0; r < nq; r++) memset(OROW(r), 0, (size_t)hd * sizeof(float));
        for (int64_t c0 = 0; c0 < n_vis; c0 += SLOT_CHUNK) {
            const int64_t nc = n_vis - c0 < SLOT_CHUNK ? n_vis - c0 : SLOT_CHUNK;
            for (int64_t c = 0; c < nc; c++)
                cache_row_f32(j->kv_type, j->v_cache, row_bytes, vis[c0 + c], g, hd, rows + c * hd);
            for (int64_t r0 = 0; r0 < nq; r0 += QB) {
                float *o[QB];
                const float *p[QB];
                for (int a = 0; a < QB; a++) {
                    o[a] = r0 + a < nq ? OROW(r0 + a) : sink;
                    p[a] = r0 + a < nq ? scores + (r0 + a) * j->n_slots + c0 : zero_p;
                }
                int64_t v0 = 0;
                for (; v0 + DB * EL_VW <= hd; v0 += DB * EL_VW) pv_tile(o, p, rows, hd, nc, v0);
                for (int a = 0; a < QB && r0 + a < nq; a++)  /* dims past the last whole tile */
                    for (int64_t c = 0; c < nc; c++)
                        for (int64_t e = v0; e < hd; e++) o[a][e] += p[a][c] * rows[c * hd + e];
            }
        }
#undef QROW
#undef OROW
#undef QPOS
    }
}

int el_attention(const float *q, const int32_t *q_pos, int64_t n_tokens, int64_t n_head,
                 int64_t n_kv_head, int64_t head_dim, int kv_type, const void *k_cache,
                 const void *v_cache, const int32_t *slot_pos, int64_t n_slots,
                 int64_t window, float scale, float *out) {
    if (!kv_type_ok(kv_type, head_dim)) return -1;
    const int64_t group = n_head / n_kv_head;
    int64_t tpi = QUERIES_PER_ITEM / group;
    if (tpi < 1) tpi = 1;
    const int64_t n_blocks = (n_tokens + tpi - 1) / tpi;
    attention_job j = {q, q_pos, n_tokens, n_head, n_kv_head, head_dim, kv_type, k_cache, v_cache,
                       slot_pos, n_slots, window, scale, out, tpi, n_blocks};
    el_parallel_for(attention_task, &j, n_kv_head * n_blocks, 1);
    return 0;
}
