/* KV cache writes and causal attention over an f16 cache.
 *
 * Work is split by (query token, kv head): the heads that share a kv head (grouped-query
 * attention) are done together, so each cached K and V row is converted from f16 once
 * and used by the whole group. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "threadpool.h"

void el_kv_store(const float *k, const float *v, uint16_t *k_cache, uint16_t *v_cache,
                 const int32_t *slots, int64_t n_tokens, int64_t row) {
    for (int64_t t = 0; t < n_tokens; t++) {
        el_f32_to_f16(k + t * row, k_cache + (int64_t)slots[t] * row, row);
        el_f32_to_f16(v + t * row, v_cache + (int64_t)slots[t] * row, row);
    }
}

/* Per-thread scratch: (group, n_slots) scores and one (head_dim) row. Grows rarely (a
 * longer context), so the decode path does not allocate. */
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
    int64_t n_head, n_kv_head, head_dim;
    const uint16_t *k_cache, *v_cache;
    const int32_t *slot_pos;
    int64_t n_slots, window;
    float scale;
    float *out;
} attention_job;

static inline int attends(const attention_job *j, int32_t q_pos, int64_t s) {
    int32_t p = j->slot_pos[s];
    return p >= 0 && p <= q_pos && (j->window == 0 || q_pos - p < j->window);
}

static void attention_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    const attention_job *j = ctx;
    const int64_t group = j->n_head / j->n_kv_head, hd = j->head_dim;
    const int64_t kv_row = j->n_kv_head * hd;
    (void)ith;
    float *scores = thread_scratch((size_t)(group * j->n_slots + hd));  /* (group, n_slots) */
    if (!scores) return;  /* out of memory: leave out untouched rather than crash */
    float *row = scores + group * j->n_slots;                           /* (head_dim) */
    for (int64_t i = i0; i < i1; i++) {
        const int64_t t = i / j->n_kv_head, g = i % j->n_kv_head;
        const int32_t qp = j->q_pos[t];
        const float *q = j->q + (t * j->n_head + g * group) * hd;   /* (group, head_dim) */
        float *out = j->out + (t * j->n_head + g * group) * hd;     /* (group, head_dim) */

        /* scores = scale * q . k for every slot this query may see */
        float max[group];
        for (int64_t h = 0; h < group; h++) max[h] = -INFINITY;
        for (int64_t s = 0; s < j->n_slots; s++) {
            if (!attends(j, qp, s)) continue;
            el_f16_to_f32(j->k_cache + s * kv_row + g * hd, row, hd);
            for (int64_t h = 0; h < group; h++) {
                const float *qh = q + h * hd;
                float d = 0.0f;
                for (int64_t e = 0; e < hd; e++) d += qh[e] * row[e];
                d *= j->scale;
                scores[h * j->n_slots + s] = d;
                if (d > max[h]) max[h] = d;
            }
        }
        /* softmax over the visible slots */
        float sum[group];
        for (int64_t h = 0; h < group; h++) sum[h] = 0.0f;
        for (int64_t s = 0; s < j->n_slots; s++) {
            if (!attends(j, qp, s)) continue;
            for (int64_t h = 0; h < group; h++) {
                float p = expf(scores[h * j->n_slots + s] - max[h]);
                scores[h * j->n_slots + s] = p;
                sum[h] += p;
            }
        }
        /* out = sum_s p_s v_s / sum_s p_s */
        memset(out, 0, (size_t)(group * hd) * sizeof(float));
        for (int64_t s = 0; s < j->n_slots; s++) {
            if (!attends(j, qp, s)) continue;
            el_f16_to_f32(j->v_cache + s * kv_row + g * hd, row, hd);
            for (int64_t h = 0; h < group; h++) {
                const float p = scores[h * j->n_slots + s];
                float *oh = out + h * hd;
                for (int64_t e = 0; e < hd; e++) oh[e] += p * row[e];
            }
        }
        for (int64_t h = 0; h < group; h++) {
            const float inv = sum[h] > 0.0f ? 1.0f / sum[h] : 0.0f;
            for (int64_t e = 0; e < hd; e++) out[h * hd + e] *= inv;
        }
    }
}

void el_attention(const float *q, const int32_t *q_pos, int64_t n_tokens, int64_t n_head,
                  int64_t n_kv_head, int64_t head_dim, const uint16_t *k_cache,
                  const uint16_t *v_cache, const int32_t *slot_pos, int64_t n_slots,
                  int64_t window, float scale, float *out) {
    attention_job j = {q, q_pos, n_head, n_kv_head, head_dim, k_cache, v_cache,
                       slot_pos, n_slots, window, scale, out};
    el_parallel_for(attention_task, &j, n_tokens * n_kv_head, 1);
}
