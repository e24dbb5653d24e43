/* Elementwise ops, norms, softmax and rope: f32 in, f32 out. Vectorised through simd.h; the
 * ones a prefill batch makes large (GELU/SiLU over (tokens, ffn_dim), norms and rope over
 * tokens) are split across the pool, the rest are too cheap to be worth a wake-up. */
#include <math.h>
#include <pthread.h>

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "simd.h"
#include "threadpool.h"

/* Below these sizes one thread is faster than waking the others. */
#define PAR_ELEMENTS 32768
#define PAR_ROWS_ELEMENTS 16384

typedef struct {
    const float *x, *w;
    float *y;
    int64_t n;
    float eps;
} rmsnorm_job;

static void rmsnorm_rows(void *ctx, int64_t r0, int64_t r1, int ith) {
    (void)ith;
    const rmsnorm_job *j = ctx;
    const int64_t n = j->n;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = j->x + r * n;
        float *y = j->y + r * n;
        /* f32 squares summed in double, as llama.cpp (ggml_float); 8 partial sums so the
         * compiler vectorises the loop (the order changes the sum by ~1e-16 relative) */
        double part[8] = {0};
        int64_t i = 0;
        for (; i + 8 <= n; i += 8)
            for (int l = 0; l < 8; l++) part[l] += (double)(x[i + l] * x[i + l]);
        double ss = 0.0;
        for (; i < n; i++) ss += (double)(x[i] * x[i]);
        for (int l = 0; l < 8; l++) ss += part[l];
        const float scale = 1.0f / sqrtf((float)(ss / n) + j->eps);
        if (j->w) for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale * j->w[i];
        else      for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale;
    }
}

void el_rmsnorm(const float *x, const float *w, float *y, int64_t n, int64_t n_rows, float eps) {
    rmsnorm_job j = {x, w, y, n, eps};
    el_parallel_for(rmsnorm_rows, &j, n_rows, (PAR_ROWS_ELEMENTS + n - 1) / n);
}

void el_layernorm(const float *x, const float *w, const float *b, float *y, int64_t n,
                  int64_t n_rows, float eps) {
    for (int64_t r = 0; r < n_rows; r++, x += n, y += n) {
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < n; i++) mean += x[i];
        mean /= n;
        for (int64_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
        float scale = 1.0f / sqrtf((float)(var / n) + eps);
        for (int64_t i = 0; i < n; i++) {
            float v = (float)(x[i] - mean) * scale;
            y[i] = v * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
        }
    }
}

/* GELU, tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the way ggml's
 * CPU backend computes it for GEGLU: from a table over every f16 input, the result rounded to
 * f16 (x beyond +-10: x or 0). This costs ~5e-4 relative, but Gemma's FFN inputs reach the
 * hundreds and llama.cpp's greedy tokens follow from exactly these values. */
#define GELU_C 0.79788456080286535587989211986876f
#define GELU_A 0.044715f

static uint16_t gelu_table[(1 << 16) + 1];  /* + 1: vf_gelu_f16's gather reads 4 bytes */
static pthread_once_t gelu_once = PTHREAD_ONCE_INIT;

static void gelu_table_init(void) {
    for (uint32_t h = 0; h < (1u << 16); h++) {
        const float x = el_fp16_to_fp32((uint16_t)h);
        /* 1 + a x^2 fused, as llama.cpp's compiler fuses it (ggml builds with FP contraction) */
        gelu_table[h] = el_fp32_to_fp16(0.5f * x * (1.0f + tanhf(GELU_C * x * fmaf(GELU_A * x, x, 1.0f))));
    }
}

static inline float gelu1(float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    return el_fp16_to_fp32(gelu_table[el_fp32_to_fp16(x)]);
}

static inline float silu1(float x) { return x / (1.0f + el_exp1(-x)); }

typedef struct {
    float *gate;
    const float *up;
    int gelu;
} glu_job;

static void glu_range(void *ctx, int64_t i0, int64_t i1, int ith) {
    (void)ith;
    const glu_job *j = ctx;
    float *g = j->gate;
    const float *up = j->up;
    int64_t i = i0;
    if (j->gelu) {
#if defined(EL_VF_GELU_F16)
        for (; i + EL_VW <= i1; i += EL_VW)
            vf_store(g + i, vf_mul(vf_gelu_f16(gelu_table, vf_load(g + i)), vf_load(up + i)));
#endif
        for (; i < i1; i++) g[i] = gelu1(g[i]) * up[i];
    } else {
        const vf one = vf_set1(1.0f), zero = vf_set1(0.0f);
        for (; i + EL_VW <= i1; i += EL_VW) {
            const vf x = vf_load(g + i);
            vf_store(g + i, vf_mul(vf_div(x, vf_add(one, vf_exp(vf_sub(zero, x)))), vf_load(up + i)));
        }
        for (; i < i1; i++) g[i] = silu1(g[i]) * up[i];
    }
}

void el_gelu_mul(float *gate, const float *up, int64_t n) {
    pthread_once(&gelu_once, gelu_table_init);
    glu_job j = {gate, up, 1};
    el_parallel_for(glu_range, &j, n, PAR_ELEMENTS);
}

void el_silu_mul(float *gate, const float *up, int64_t n) {
    glu_job j = {gate, up, 0};
    el_parallel_for(glu_range, &j, n, PAR_ELEMENTS);
}

void el_add(float *y, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + EL_VW <= n; i += EL_VW) vf_store(y + i, vf_add(vf_load(y + i), vf_load(x + i)));
    for (; i < n; i++) y[i] += x[i];
}

void el_scale(float *y, float s, int64_t n) {
    el_row_scale(y, s, n);
}

void el_add_bias(float *y, const float *bias, int64_t n, int64_t n_rows) {
    for (int64_t r = 0; r < n_rows; r++, y += n) el_add(y, bias, n);
}

void el_softmax(float *x, int64_t n, int64_t n_rows) {
    for (int64_t r = 0; r < n_rows; r++, x += n) {
        const float max = el_row_max(x, n);
        const float sum = el_row_exp_sum(x, max, n);
        el_row_scale(x, 1.0f / sum, n);
    }
}

typedef struct {
    float *x;
    int64_t n_heads, head_dim, n_rot;
    const int32_t *pos;
    float freq_scale, theta_scale;
    const float *freq_factors;
    int neox;
} rope_job;

static void rope_tokens(void *ctx, int64_t t0, int64_t t1, int ith) {
    (void)ith;
    const rope_job *j = ctx;
    const int64_t half = j->n_rot / 2;
    for (int64_t t = t0; t < t1; t++) {
        float theta = (float)j->pos[t];
        for (int64_t i = 0; i < half; i++, theta *= j->theta_scale) {
            const float th = j->freq_scale * (j->freq_factors ? theta / j->freq_factors[i] : theta);
            const float c = cosf(th), s = sinf(th);
            for (int64_t h = 0; h < j->n_heads; h++) {
                float *v = j->x + (t * j->n_heads + h) * j->head_dim;
                const int64_t a = j->neox ? i : 2 * i, b = j->neox ? i + half : 2 * i + 1;
                const float x0 = v[a], x1 = v[b];
                /* fused as llama.cpp's compiler fuses them (its ops.cpp builds with FP
                 * contraction) */
                v[a] = fmaf(x0, c, -(x1 * s));
                v[b] = fmaf(x0, s, x1 * c);
            }
        }
    }
}

void el_rope(float *x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t n_rot,
             const int32_t *pos, float freq_base, float freq_scale, const float *freq_factors,
             int neox) {
    /* theta for pair i is freq_scale * pos * base^(-2i/n_rot), pos * base^(-2i/n_rot) built by
     * repeated multiplication in float as llama.cpp does, so angles agree to the last bit. */
    rope_job j = {x, n_heads, head_dim, n_rot, pos, freq_scale, powf(freq_base, -2.0f / (float)n_rot),
                  freq_factors, neox};
    el_parallel_for(rope_tokens, &j, n_tokens, 8);
}
