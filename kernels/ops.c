/* Elementwise ops, norms, softmax and rope: f32 in, f32 out. Cheap next to the matmuls,
 * so single-threaded and plain C the compiler can vectorise. */
#include <math.h>

#include <stddef.h>
#include <stdint.h>

#include "api.h"

void el_rmsnorm(const float *x, const float *w, float *y, int64_t n, int64_t n_rows, float eps) {
    for (int64_t r = 0; r < n_rows; r++, x += n, y += n) {
        double ss = 0.0;  /* double: llama.cpp sums squares in ggml_float (double) too */
        for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
        float scale = 1.0f / sqrtf((float)(ss / n) + eps);
        if (w) for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale * w[i];
        else   for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale;
    }
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

void el_gelu_mul(float *gate, const float *up, int64_t n) {
    /* GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
    const float c = 0.7978845608028654f;
    for (int64_t i = 0; i < n; i++) {
        float x = gate[i];
        gate[i] = 0.5f * x * (1.0f + tanhf(c * x * (1.0f + 0.044715f * x * x))) * up[i];
    }
}

void el_silu_mul(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float x = gate[i];
        gate[i] = x / (1.0f + expf(-x)) * up[i];
    }
}

void el_add(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

void el_scale(float *y, float s, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] *= s;
}

void el_add_bias(float *y, const float *bias, int64_t n, int64_t n_rows) {
    for (int64_t r = 0; r < n_rows; r++, y += n)
        for (int64_t i = 0; i < n; i++) y[i] += bias[i];
}

void el_softmax(float *x, int64_t n, int64_t n_rows) {
    for (int64_t r = 0; r < n_rows; r++, x += n) {
        float max = -INFINITY;
        for (int64_t i = 0; i < n; i++) max = x[i] > max ? x[i] : max;
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) { x[i] = expf(x[i] - max); sum += x[i]; }
        float inv = (float)(1.0 / sum);
        for (int64_t i = 0; i < n; i++) x[i] *= inv;
    }
}

void el_rope(float *x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t n_rot,
             const int32_t *pos, float freq_base, float freq_scale, const float *freq_factors,
             int neox) {
    /* theta for pair i is pos * freq_scale * base^(-2i/n_rot), built by repeated
     * multiplication in float as llama.cpp does, so angles agree to the last bit. */
    const float theta_scale = powf(freq_base, -2.0f / (float)n_rot);
    const int64_t half = n_rot / 2;
    for (int64_t t = 0; t < n_tokens; t++) {
        float theta = (float)pos[t] * freq_scale;
        for (int64_t i = 0; i < half; i++, theta *= theta_scale) {
            float th = freq_factors ? theta / freq_factors[i] : theta;
            float c = cosf(th), s = sinf(th);
            for (int64_t h = 0; h < n_heads; h++) {
                float *v = x + (t * n_heads + h) * head_dim;
                int64_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
                float x0 = v[a], x1 = v[b];
                v[a] = x0 * c - x1 * s;
                v[b] = x0 * s + x1 * c;
            }
        }
    }
}
