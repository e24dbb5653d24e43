/* KV cache writes and causal attention over an f16 or q8_0 cache.
 *
 * Work is split by (block of query tokens, kv head): the heads that share a kv head
 * (grouped-query attention) and up to QUERIES_PER_ITEM queries of consecutive tokens are done
 * together, so each cached K and V row is read once per block of queries, in chunks of slots
 * that stay in L1, and meets every query of the block. A q8_0 cache (the memory planner's
 * choice on a tight budget) holds each head's row in 34 bytes per 32 values instead of 64;
 * its chunks are dequantized to f32 first.
 *
 * Two layouts of the scores:
 * - decode (a few queries): a row of slots per query. Score tiles are dot products over the
 *   head dimension, reduced four at a time; f16 K and V rows are read in place.
 * - prefill (a block of at least QV vectors of queries): the queries go across the vector
 *   lanes. They are transposed once per block, the scores are kept transposed (a row of
 *   queries per slot), and a score tile is plain FMAs of query vectors with broadcast K
 *   elements (K chunks converted to f32): no horizontal sums, and the softmax runs down the
 *   slot rows, a query per lane. pp512 attention of a 12-head, 4-kv-head, head_dim 64 layer,
 *   2 threads on AVX2: 7.8 -> 4.0 ms (head_dim 256: 5.9 -> 4.3).
 *
 * The queries and the softmax weights are rounded to f16 before they meet the f16 cache, as
 * llama.cpp's CPU backend does (its K.Q and V.p matmuls convert the f32 side to the f16
 * cache's type); the sums themselves are f32. On AVX2 an f16 cache (head size a multiple of
 * 32) takes attend_exact instead, which sums everything in llama.cpp's orders; it gives up
 * the prefill layout (pp512 attention of Gemma 3 270M's layer 4.2 -> 6.1 ms, 2 threads). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "scratch.h"
#include "simd.h"
#include "threadpool.h"

/* Queries per work item (tokens x heads of one kv head): each K/V chunk is read (and
 * converted) once per this many queries. 64 rather than 16: pp512 attention of a 12-head,
 * 4-kv-head, head_dim 64 layer 7.3 -> 6.3 ms in the row layout, and whole prefill tiles. */
#define QUERIES_PER_ITEM 64
/* Slots read at a time: 16 rows of head_dim 256 in f32 is 16 KB, so a converted chunk stays
 * in L1 between the conversion and the tiles (64 rows, in L2, took 1.9x as long in decode). */
#define SLOT_CHUNK 16

/* Register tiles. Scores: QS queries x 4 keys of dot products (vf_hsum4 reduces a query's
 * four sums together), or in prefill QV vectors of queries (across the lanes) x KT keys.
 * Output: QB queries x DB vectors. 32 vector registers (AVX-512, NEON) hold 16
 * accumulators; AVX2's 16 hold 8 score accumulators, or 12 output ones (6 queries x 2: 8% faster
 * exact prefill attention than 4 x 2). */
#if EL_VW == 16
#define QS 4
#define QV 2  /* 32 queries: an item of 64 queries may hold only 63 (21 tokens of 3 heads) */
#define KT 8
#define QB 4
#define DB 4
#elif EL_VW == 4 && defined(__aarch64__)
#define QS 4
#define QV 4
#define KT 4
#define QB 4
#define DB 4
#else
#define QS 2
#define QV 2
#define KT 4
#define QB 6
#define DB 2
#endif
/* queries padded to whole prefill tiles */
#define ROUND_QV(n) (((n) + QV * EL_VW - 1) / (QV * EL_VW) * (QV * EL_VW))

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

/* One chunk's cached rows of kv head g, as tile operands: pointers into an f16 cache (read in
 * place and converted as loaded, if in_place), or the rows converted to f32 into buf. */
static inline void chunk_rows(int kv_type, const void *cache, size_t row_bytes, const int32_t *slots, int64_t nc,
                              int64_t g, int64_t hd, float *buf, const int in_place, const void *out[]) {
    for (int64_t c = 0; c < nc; c++) {
        const char *row = (const char *)cache + slots[c] * row_bytes;
        if (kv_type == EL_TYPE_F16 && in_place) {
            out[c] = (const uint16_t *)row + g * hd;
            continue;
        }
        if (kv_type == EL_TYPE_F16) {
            el_row_f16_to_f32((const uint16_t *)row + g * hd, buf + c * hd, hd);
            out[c] = buf + c * hd;
            continue;
        }
        const block_q8_0 *b = (const block_q8_0 *)row + g * hd / 32;
        float *o = buf + c * hd;
        for (int64_t i = 0; i < hd / 32; i++) {
            const float d = el_fp16_to_fp32(b[i].d);
            for (int e = 0; e < 32; e++) o[32 * i + e] = d * b[i].qs[e];
        }
        out[c] = o;
    }
}

/* EL_VW values of a chunk row from element e, and one value: f16 or f32 */
static inline vf kv_load(const void *row, int64_t e, const int f16) {
    return f16 ? vf_load_f16((const uint16_t *)row + e) : vf_load((const float *)row + e);
}
static inline float kv_at(const void *row, int64_t e, const int f16) {
    return f16 ? el_fp16_to_fp32(((const uint16_t *)row)[e]) : ((const float *)row)[e];
}

/* Per-thread scratch (scratch.h), grown rarely (a longer context), so the decode path does
 * not allocate. */
static _Thread_local el_scratch scratch;

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
static inline __attribute__((always_inline)) void score_tile(const float *const q[QS], const void *const k[4],
                                                             int64_t hd, const int f16, float out[QS][4]) {
    vf acc[QS][4];
    for (int a = 0; a < QS; a++)
        for (int b = 0; b < 4; b++) acc[a][b] = vf_set1(0.0f);
    int64_t e = 0;
    for (; e + EL_VW <= hd; e += EL_VW) {
        vf kv[4];
        for (int b = 0; b < 4; b++) kv[b] = kv_load(k[b], e, f16);
        for (int a = 0; a < QS; a++) {
            const vf qv = vf_load(q[a] + e);
            for (int b = 0; b < 4; b++) acc[a][b] = vf_fma(qv, kv[b], acc[a][b]);
        }
    }
    for (int a = 0; a < QS; a++) {
        vf_hsum4(acc[a][0], acc[a][1], acc[a][2], acc[a][3], out[a]);
        for (int b = 0; b < 4; b++)
            for (int64_t r = e; r < hd; r++) out[a][b] += q[a][r] * kv_at(k[b], r, f16);
    }
}

/* Prefill scores, queries across the lanes: st[c][v * EL_VW + l] = scale * sum_e qt[e][v *
 * EL_VW + l] * k[c][e], with qt the queries transposed (rows of ldq). Each key element is
 * broadcast once per QV query vectors; no horizontal sums. */
static inline void score_tile_t(const float *qt, int64_t ldq, const float *const k[KT], int64_t hd, float scale,
                                float *const st[KT]) {
    vf acc[KT][QV];
    for (int c = 0; c < KT; c++)
        for (int v = 0; v < QV; v++) acc[c][v] = vf_set1(0.0f);
    for (int64_t e = 0; e < hd; e++) {
        vf qv[QV];
        for (int v = 0; v < QV; v++) qv[v] = vf_load(qt + e * ldq + v * EL_VW);
        for (int c = 0; c < KT; c++) {
            const vf kc = vf_set1(k[c][e]);
            for (int v = 0; v < QV; v++) acc[c][v] = vf_fma(qv[v], kc, acc[c][v]);
        }
    }
    for (int c = 0; c < KT; c++)
        for (int v = 0; v < QV; v++) vf_store(st[c] + v * EL_VW, vf_mul(acc[c][v], vf_set1(scale)));
}

/* o[a][v0 .. v0 + DB vectors] += sum_c p[a][c * ldp] * v[c][same], for c < nc */
static inline __attribute__((always_inline)) void pv_tile(float *const o[QB], const float *const p[QB], int64_t ldp,
                                                          const void *const v[], const int f16, int64_t nc,
                                                          int64_t v0) {
    vf acc[QB][DB];
    for (int a = 0; a < QB; a++)
        for (int d = 0; d < DB; d++) acc[a][d] = vf_load(o[a] + v0 + d * EL_VW);
    for (int64_t c = 0; c < nc; c++) {
        vf vv[DB];
        for (int d = 0; d < DB; d++) vv[d] = kv_load(v[c], v0 + d * EL_VW, f16);
        for (int a = 0; a < QB; a++) {
            const vf pa = vf_set1(p[a][c * ldp]);
            for (int d = 0; d < DB; d++) acc[a][d] = vf_fma(pa, vv[d], acc[a][d]);
        }
    }
    for (int a = 0; a < QB; a++)
        for (int d = 0; d < DB; d++) vf_store(o[a] + v0 + d * EL_VW, acc[a][d]);
}

/* items i0 .. i1 over an f16 cache (f16 = 1) or q8_0 rows dequantized per chunk (f16 = 0) */
static inline __attribute__((always_inline)) void attend(const attention_job *j, int64_t i0, int64_t i1,
                                                         const int f16) {
    const int64_t group = j->n_head / j->n_kv_head, hd = j->head_dim;
    const size_t row_bytes = el_row_size(j->kv_type, j->n_kv_head * hd);
    const int64_t max_q = j->tokens_per_item * group, max_qp = ROUND_QV(max_q);
    const int64_t pad = hd > QV * EL_VW ? hd : QV * EL_VW;  /* a zero row, a sink row */
    /* scores (max_qp, n_slots) | slot list (n_slots) | f32 rows (SLOT_CHUNK, hd) | a zero row
     * and a sink row for what pads a tile | the block's queries rounded to f16 (max_q, hd) |
     * the same transposed (hd, max_qp) */
    const size_t F = sizeof(float);
    const size_t sizes[] = {max_qp * j->n_slots * F, j->n_slots * sizeof(int32_t), SLOT_CHUNK * hd * F, pad * F,
                            pad * F, max_q * hd * F, hd * max_qp * F};
    void *reg[7];
    if (el_scratch_carve(&scratch, 7, sizes, reg)) return;  /* out of memory: leave out untouched rather than crash */
    float *scores = reg[0], *rows = reg[2], *zero = reg[3], *sink = reg[4], *qh = reg[5], *qt = reg[6];
    int32_t *vis = reg[1];
    memset(zero, 0, (size_t)pad * sizeof(float));

    for (int64_t item = i0; item < i1; item++) {
        const int64_t g = item / j->n_token_blocks, tb = item % j->n_token_blocks;
        const int64_t t0 = tb * j->tokens_per_item;
        const int64_t t1 = t0 + j->tokens_per_item < j->n_tokens ? t0 + j->tokens_per_item : j->n_tokens;
        const int64_t nq = (t1 - t0) * group;  /* query r: token t0 + r / group, head g*group + r % group */
        /* prefill (enough queries to fill QV vectors) puts the queries across the lanes: the
         * scores are stored transposed, a row of nqp per slot */
        const int trans = nq >= QV * EL_VW;
        const int64_t nqp = trans ? ROUND_QV(nq) : nq;
        const int64_t sa = trans ? 1 : j->n_slots, sc = trans ? nqp : 1;  /* score (a, c) at a * sa + c * sc */
#define QROW(r) (qh + (r) * hd)
#define OROW(r) (j->out + ((t0 + (r) / group) * j->n_head + g * group + (r) % group) * hd)
#define QPOS(r) (j->q_pos[t0 + (r) / group])
        for (int64_t r = 0; r < nq; r++) {
            memcpy(QROW(r), j->q + ((t0 + r / group) * j->n_head + g * group + r % group) * hd, hd * sizeof(float));
            el_row_round_f16(QROW(r), hd);
        }
        if (trans) {
            for (int64_t e = 0; e < hd; e++) memset(qt + e * nqp + nq, 0, (size_t)(nqp - nq) * sizeof(float));
            for (int64_t r = 0; r < nq; r++)
                for (int64_t e = 0; e < hd; e++) qt[e * nqp + r] = QROW(r)[e];
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
            const void *kr[SLOT_CHUNK];
            chunk_rows(j->kv_type, j->k_cache, row_bytes, vis + c0, nc, g, hd, rows, !trans, kr);
            if (trans) {
                for (int64_t v0 = 0; v0 < nqp; v0 += QV * EL_VW)
                    for (int64_t b0 = 0; b0 < nc; b0 += KT) {
                        const float *k[KT];
                        float *st[KT];
                        for (int c = 0; c < KT; c++) {
                            k[c] = b0 + c < nc ? kr[b0 + c] : zero;
                            st[c] = b0 + c < nc ? scores + (c0 + b0 + c) * nqp + v0 : sink;
                        }
                        score_tile_t(qt + v0, nqp, k, hd, j->scale, st);
                    }
            } else {
                for (int64_t r0 = 0; r0 < nq; r0 += QS) {
                    const float *q[QS];
                    for (int a = 0; a < QS; a++) q[a] = r0 + a < nq ? QROW(r0 + a) : zero;
                    for (int64_t b0 = 0; b0 < nc; b0 += 4) {
                        const void *k[4];
                        for (int b = 0; b < 4; b++) k[b] = b0 + b < nc ? kr[b0 + b] : zero;
                        float out[QS][4];
                        score_tile(q, k, hd, f16, out);
                        for (int a = 0; a < QS && r0 + a < nq; a++)
                            for (int b = 0; b < 4 && b0 + b < nc; b++)
                                scores[(r0 + a) * sa + c0 + b0 + b] = j->scale * out[a][b];
                    }
                }
            }
            /* the mask, unless every query of the block sees every slot of the chunk (all but
             * a causal block's last chunks) */
            for (int64_t c = 0; c < nc; c++) {
                const int32_t p = j->slot_pos[vis[c0 + c]];
                if (p <= lo && (j->window == 0 || (int64_t)hi - p < j->window)) continue;
                for (int64_t r = 0; r < nq; r++)
                    if (!attends(j, QPOS(r), p)) scores[r * sa + (c0 + c) * sc] = -INFINITY;
            }
        }
        /* softmax over the visible slots; a query that sees nothing gets zeros */
        if (trans) {
            for (int64_t v0 = 0; v0 < nqp; v0 += EL_VW) {  /* EL_VW queries at a time, one per lane */
                float lane[EL_VW];
                vf m = vf_set1(-INFINITY), sum = vf_set1(0.0f);
                for (int64_t c = 0; c < n_vis; c++) m = vf_max(m, vf_load(scores + c * nqp + v0));
                vf_store(lane, m);
                for (int l = 0; l < EL_VW; l++) lane[l] = lane[l] == -INFINITY ? 0.0f : lane[l];
                m = vf_load(lane);
                for (int64_t c = 0; c < n_vis; c++) {
                    const vf e = vf_exp(vf_sub(vf_load(scores + c * nqp + v0), m));
                    vf_store(scores + c * nqp + v0, e);
                    sum = vf_add(sum, e);
                }
                vf_store(lane, sum);
                for (int l = 0; l < EL_VW; l++) lane[l] = lane[l] > 0.0f ? 1.0f / lane[l] : 0.0f;
                const vf inv = vf_load(lane);
                for (int64_t c = 0; c < n_vis; c++)
                    vf_store(scores + c * nqp + v0, vf_mul(vf_load(scores + c * nqp + v0), inv));
            }
            for (int64_t c = 0; c < n_vis; c++) el_row_round_f16(scores + c * nqp, nqp);
        } else {
            for (int64_t r = 0; r < nq; r++) {
                float *row = scores + r * sa;
                const float max = el_row_max(row, n_vis);
                if (max == -INFINITY) {
                    memset(row, 0, (size_t)n_vis * sizeof(float));
                    continue;
                }
                const float sum = el_row_exp_sum(row, max, n_vis);
                el_row_scale(row, 1.0f / sum, n_vis);
                el_row_round_f16(row, n_vis);
            }
        }
        /* out = sum_s p_s v_s */
        for (int64_t r = 0; r < nq; r++) memset(OROW(r), 0, (size_t)hd * sizeof(float));
        for (int64_t c0 = 0; c0 < n_vis; c0 += SLOT_CHUNK) {
            const int64_t nc = n_vis - c0 < SLOT_CHUNK ? n_vis - c0 : SLOT_CHUNK;
            const void *vr[SLOT_CHUNK];
            chunk_rows(j->kv_type, j->v_cache, row_bytes, vis + c0, nc, g, hd, rows, 1, vr);
            for (int64_t r0 = 0; r0 < nq; r0 += QB) {
                float *o[QB];
                const float *p[QB];
                for (int a = 0; a < QB; a++) {
                    o[a] = r0 + a < nq ? OROW(r0 + a) : sink;
                    /* a row past the block's weighs the first query's weights into the sink
                     * (weights read with the stride of the scores' layout, so from scores) */
                    p[a] = scores + (r0 + a < nqp ? r0 + a : 0) * sa + c0 * sc;
                }
                int64_t v0 = 0;
                for (; v0 + DB * EL_VW <= hd; v0 += DB * EL_VW) pv_tile(o, p, sc, vr, f16, nc, v0);
                for (int a = 0; a < QB && r0 + a < nq; a++)  /* dims past the last whole tile */
                    for (int64_t c = 0; c < nc; c++)
                        for (int64_t e = v0; e < hd; e++) o[a][e] += p[a][c * sc] * kv_at(vr[c], e, f16);
            }
        }
#undef QROW
#undef OROW
#undef QPOS
    }
}

#if defined(EL_VF_EXP_GGML)
/* ---- an f16 cache on AVX2: llama.cpp's arithmetic, bit for bit -----------------------------
 *
 * llama.cpp's CPU backend (flash attention off, its default) computes attention as two f16
 * matmuls around a softmax, over the cache rows in slot order: with more than one token
 * (prefill) through tinyBLAS, one 8-lane FMA accumulator per dot product; with one token
 * (decode) through ggml_vec_dot_f16, four accumulators 32 elements a step. Here every score,
 * softmax weight and output is summed in those orders:
 * - a score (over the head dimension) in one or four accumulators, reduced as ggml does;
 * - the softmax with ggml's exp, summed in double 8 slots at a time, groups aligned to slot 0
 *   (slots a query does not see weigh an exact 0 there, so only the visible groups count);
 * - an output (over the slots) as the same one or four accumulators would hold it: the slots
 *   go into 8 (or 32) streams by slot index, each an FMA chain in slot order (pv_tile over the
 *   stream's rows), and the streams are added in ggml's reduction order.
 * Slot order is position order while the cache has not wrapped (every sequence up to the
 * window, or up to the context in a global layer), as llama.cpp's cells are. */

/* dot products of f16-valued rows of length hd (a multiple of 32), QS queries x 4 keys, a
 * query's four in one vector: prefill in tinyBLAS's order (one accumulator, vf_hsum4's tree),
 * decode in ggml_vec_dot_f16's (four accumulators 32 elements a step) */
static inline __attribute__((always_inline)) void score_tile_exact(const float *const q[QS], const uint16_t *const k[4],
                                                                   int64_t hd, const int decode, __m128 out[QS]) {
    if (!decode) {
        vf acc[QS][4];
        for (int a = 0; a < QS; a++)
            for (int b = 0; b < 4; b++) acc[a][b] = vf_set1(0.0f);
        for (int64_t e = 0; e < hd; e += EL_VW) {
            vf kv[4];
            for (int b = 0; b < 4; b++) kv[b] = vf_load_f16(k[b] + e);
            for (int a = 0; a < QS; a++) {
                const vf qv = vf_load(q[a] + e);
                for (int b = 0; b < 4; b++) acc[a][b] = vf_fma(qv, kv[b], acc[a][b]);
            }
        }
        for (int a = 0; a < QS; a++) out[a] = vf_hsum4_x(acc[a][0], acc[a][1], acc[a][2], acc[a][3]);
        return;
    }
    float sums[QS][4];
    for (int b = 0; b < 4; b++) {  /* a key's 32 elements converted once for the QS queries */
        vf acc[QS][4];
        for (int a = 0; a < QS; a++)
            for (int r = 0; r < 4; r++) acc[a][r] = vf_set1(0.0f);
        for (int64_t e = 0; e < hd; e += 32)
            for (int r = 0; r < 4; r++) {
                const vf kv = vf_load_f16(k[b] + e + 8 * r);
                for (int a = 0; a < QS; a++) acc[a][r] = vf_fma(kv, vf_load(q[a] + e + 8 * r), acc[a][r]);
            }
        for (int a = 0; a < QS; a++) {
            const vf t = vf_add(vf_add(acc[a][0], acc[a][2]), vf_add(acc[a][1], acc[a][3]));
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
            h = _mm_hadd_ps(h, h);
            sums[a][b] = _mm_cvtss_f32(_mm_hadd_ps(h, h));
        }
    }
    for (int a = 0; a < QS; a++) out[a] = _mm_loadu_ps(sums[a]);
}

static void attend_exact(const attention_job *j, int64_t i0, int64_t i1) {
    const int64_t group = j->n_head / j->n_kv_head, hd = j->head_dim;
    const size_t row_bytes = el_row_size(EL_TYPE_F16, j->n_kv_head * hd);
    const int decode = j->n_tokens == 1;
    const int n_streams = decode ? 32 : 8;
    const int64_t max_q = j->tokens_per_item * group;
    /* the softmax sums slots in groups of 8 aligned to slot 0: a query's scores span up to
     * n_slots rounded up to 8 */
    const int64_t max_w = (j->n_slots + 7) / 8 * 8;
    /* scores / weights (max_q, max_w) | stream rows (n_slots) | zero row (hd) | the block's
     * queries rounded to f16 (max_q, hd) | stream partials (n_streams, QB, hd) | a stream's
     * weights (QB, n_slots) */
    const size_t F = sizeof(float);
    const size_t sizes[] = {max_q * max_w * F, j->n_slots * sizeof(void *), hd * F, max_q * hd * F,
                            n_streams * QB * hd * F, QB * j->n_slots * F};
    void *reg[6];
    if (el_scratch_carve(&scratch, 6, sizes, reg)) return;
    float *scores = reg[0], *zero = reg[2], *qh = reg[3], *part = reg[4], *sp = reg[5];
    const void **srows = reg[1];
    memset(zero, 0, (size_t)hd * sizeof(float));

    for (int64_t item = i0; item < i1; item++) {
        const int64_t g = item / j->n_token_blocks, tb = item % j->n_token_blocks;
        const int64_t t0 = tb * j->tokens_per_item;
        const int64_t t1 = t0 + j->tokens_per_item < j->n_tokens ? t0 + j->tokens_per_item : j->n_tokens;
        const int64_t nq = (t1 - t0) * group;  /* query r: token t0 + r / group, head g*group + r % group */
#define QROW(r) (qh + (r) * hd)
#define OROW(r) (j->out + ((t0 + (r) / group) * j->n_head + g * group + (r) % group) * hd)
#define QPOS(r) (j->q_pos[t0 + (r) / group])
#define KROW(s) ((const uint16_t *)((const char *)j->k_cache + (s) * row_bytes) + g * hd)
#define VROW(s) ((const uint16_t *)((const char *)j->v_cache + (s) * row_bytes) + g * hd)
        for (int64_t r = 0; r < nq; r++) {
            memcpy(QROW(r), j->q + ((t0 + r / group) * j->n_head + g * group + r % group) * hd, hd * sizeof(float));
            el_row_round_f16(QROW(r), hd);
        }
        /* the slots any query of the block sees: [s_lo, s_hi) */
        int64_t s_lo = j->n_slots, s_hi = 0;
        for (int64_t s = 0; s < j->n_slots; s++)
            for (int64_t t = t0; t < t1; t++)
                if (attends(j, j->q_pos[t], j->slot_pos[s])) {
                    s_lo = s < s_lo ? s : s_lo;
                    s_hi = s + 1;
                    break;
                }
        if (s_lo >= s_hi) {  /* nothing to see: zeros */
            for (int64_t r = 0; r < nq; r++) memset(OROW(r), 0, (size_t)hd * sizeof(float));
            continue;
        }
        /* groups of 8 slots aligned to slot 0, as the softmax sums them */
        const int64_t w_lo = s_lo / 8 * 8, w_hi = (s_hi + 7) / 8 * 8, nw = w_hi - w_lo;
        float *const S = scores;  /* S[r * nw + s - w_lo] */
        for (int64_t r = 0; r < nq; r++)
            for (int64_t s = w_lo; s < w_hi; s++) S[r * nw + s - w_lo] = -INFINITY;
        /* scores of the slots each query sees, scaled as ggml's softmax scales them */
        for (int64_t r0 = 0; r0 < nq; r0 += QS) {
            const float *q[QS];
            for (int a = 0; a < QS; a++) q[a] = r0 + a < nq ? QROW(r0 + a) : zero;
            for (int64_t b0 = s_lo; b0 < s_hi; b0 += 4) {
                const uint16_t *k[4];
                for (int b = 0; b < 4; b++) k[b] = b0 + b < s_hi ? KROW(b0 + b) : KROW(s_lo);
                __m128 out[QS];
                if (decode) score_tile_exact(q, k, hd, 1, out);
                else score_tile_exact(q, k, hd, 0, out);
                for (int a = 0; a < QS && r0 + a < nq; a++) {
                    float *row = S + (r0 + a) * nw + b0 - w_lo, o[4];
                    const __m128 v = _mm_mul_ps(out[a], _mm_set1_ps(j->scale));
                    if (b0 + 4 <= s_hi) {
                        _mm_storeu_ps(row, v);
                    } else {
                        _mm_storeu_ps(o, v);
                        for (int b = 0; b < s_hi - b0; b++) row[b] = o[b];
                    }
                }
            }
        }
        /* the mask, on the slots some query of the block may not see (near the diagonal, the
         * window's edge, empty slots) */
        int32_t lo = INT32_MAX, hi = INT32_MIN;
        for (int64_t t = t0; t < t1; t++) {
            lo = j->q_pos[t] < lo ? j->q_pos[t] : lo;
            hi = j->q_pos[t] > hi ? j->q_pos[t] : hi;
        }
        for (int64_t s = s_lo; s < s_hi; s++) {
            const int32_t p = j->slot_pos[s];
            if (p >= 0 && p <= lo && (j->window == 0 || (int64_t)hi - p < j->window)) continue;
            for (int64_t r = 0; r < nq; r++)
                if (!attends(j, QPOS(r), p)) S[r * nw + s - w_lo] = -INFINITY;
        }
        /* softmax: exp(s - max), summed in double a group of 8 at a time, times (float)
         * (1 / sum), rounded to f16 */
        for (int64_t r = 0; r < nq; r++) {
            float *row = S + r * nw;
            const float max = el_row_max(row, nw);
            if (max == -INFINITY) {
                memset(row, 0, (size_t)nw * sizeof(float));
                continue;
            }
            double sum = 0.0;
            for (int64_t c = 0; c < nw; c += 8) {
                const vf e = vf_exp_ggml(vf_sub(vf_load(row + c), vf_set1(max)));
                vf_store(row + c, e);
                sum += (double)vf_hsum(e);
            }
            el_row_scale(row, (float)(1.0 / sum), nw);
            el_row_round_f16(row, nw);
        }
        /* out = the streams' sums of p_s v_s, QB queries at a time */
        for (int64_t r0 = 0; r0 < nq; r0 += QB) {
            const int nb = nq - r0 < QB ? (int)(nq - r0) : QB;
            for (int c = 0; c < n_streams; c++) {
                /* stream c: slots s = c (mod n_streams) in the window, in order */
                int64_t n_s = 0;
                const int64_t first = w_lo + ((c - w_lo) % n_streams + n_streams) % n_streams;
                for (int64_t s = first; s < w_hi; s += n_streams) {
                    /* a slot no query of the block weighs adds exact zeros: left out, so a
                     * row never written (NaN bits, say) is never read */
                    int any = 0;
                    for (int a = 0; a < QB; a++) {
                        const float w = a < nb ? S[(r0 + a) * nw + s - w_lo] : 0.0f;
                        sp[a * j->n_slots + n_s] = w;
                        any |= w != 0.0f;
                    }
                    if (any) srows[n_s++] = VROW(s);
                }
                float *o[QB];
                const float *p[QB];
                for (int a = 0; a < QB; a++) {
                    o[a] = part + (c * QB + a) * hd;
                    p[a] = sp + a * j->n_slots;
                    memset(o[a], 0, (size_t)hd * sizeof(float));
                }
                for (int64_t v0 = 0; v0 < hd; v0 += DB * EL_VW) pv_tile(o, p, 1, srows, 1, n_s, v0);
            }
            /* the streams added as ggml reduces its accumulators' lanes */
            for (int a = 0; a < nb; a++) {
                float *out = OROW(r0 + a);
#define P(c) vf_load(part + ((c) * QB + a) * hd + e)
                for (int64_t e = 0; e < hd; e += EL_VW) {
                    vf y;
                    if (!decode) {  /* tinyBLAS: lane l + lane l + 4, then (0 + 2) + (1 + 3) */
                        y = vf_add(vf_add(vf_add(P(0), P(4)), vf_add(P(2), P(6))), vf_add(vf_add(P(1), P(5)), vf_add(P(3), P(7))));
                    } else {  /* vec_dot_f16: accumulators (0 + 2) + (1 + 3), then lanes as tinyBLAS's but (0 + 1) + (2 + 3) */
                        vf R[8];
                        for (int l = 0; l < 8; l++) R[l] = vf_add(vf_add(P(l), P(16 + l)), vf_add(P(8 + l), P(24 + l)));
                        y = vf_add(vf_add(vf_add(R[0], R[4]), vf_add(R[1], R[5])), vf_add(vf_add(R[2], R[6]), vf_add(R[3], R[7])));
                    }
                    vf_store(out + e, y);
                }
#undef P
            }
        }
#undef QROW
#undef OROW
#undef QPOS
#undef KROW
#undef VROW
    }
}
#endif

static void attention_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    const attention_job *j = ctx;
    (void)ith;
#if defined(EL_VF_EXP_GGML)
    if (j->kv_type == EL_TYPE_F16 && j->head_dim % 32 == 0) {
        attend_exact(j, i0, i1);
        return;
    }
#endif
    if (j->kv_type == EL_TYPE_F16) attend(j, i0, i1, 1);
    else attend(j, i0, i1, 0);
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
