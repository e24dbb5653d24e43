/* Quantization formats: reference quantizers, dequantizers and dot products for every type, the
 * dispatch table, and the "quantization formats" section of api.h.
 *
 * Rounding follows ggml's reference code operation for operation, so quantized bytes match
 * llama.cpp's quantize_row_*_ref bit for bit. That relies on IEEE f32 arithmetic evaluated as
 * written: no -ffast-math, and no contraction of a*b+c into an fma (GCC's default under
 * -std=c11; clang needs the pragma below).
 */
#include "quants.h"

#include <float.h>
#include <math.h>

#include "api.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#if defined(EL_ARCH_QUANTS_H)
#include EL_ARCH_QUANTS_H
#endif

#define EL_MIN(a, b) ((a) < (b) ? (a) : (b))
#define EL_MAX(a, b) ((a) > (b) ? (a) : (b))

/* A group whose largest magnitude is below this quantizes to zeros (ggml's GROUP_MAX_EPS). */
#define GROUP_MAX_EPS 1e-15f

/* Round to nearest, ties to even, for |x| < 2^22: adding 1.5 * 2^23 leaves the rounded integer in
 * the low mantissa bits (ggml's nearest_int; same results as lrintf in the default mode). */
static inline int nearest_int(float x) {
    const float shifted = x + 12582912.0f;
    return (int)(el_fp32_to_bits(shifted) & 0x007fffff) - 0x00400000;
}

/* ======================================================================================
 * f32 / f16 / bf16 rows
 * ====================================================================================== */

void el_quantize_row_f32_ref(const float *restrict x, void *restrict vy, int64_t n) {
    memcpy(vy, x, (size_t)n * sizeof(float));
}

void el_dequantize_row_f32(const void *restrict vx, float *restrict y, int64_t n) {
    memcpy(y, vx, (size_t)n * sizeof(float));
}

void el_quantize_row_f16_ref(const float *restrict x, void *restrict vy, int64_t n) {
    el_fp16_t *y = vy;
    for (int64_t i = 0; i < n; i++) {
        y[i] = el_fp32_to_fp16(x[i]);
    }
}

void el_dequantize_row_f16(const void *restrict vx, float *restrict y, int64_t n) {
    const el_fp16_t *x = vx;
    for (int64_t i = 0; i < n; i++) {
        y[i] = el_fp16_to_fp32(x[i]);
    }
}

void el_quantize_row_bf16_ref(const float *restrict x, void *restrict vy, int64_t n) {
    el_bf16_t *y = vy;
    for (int64_t i = 0; i < n; i++) {
        y[i] = el_fp32_to_bf16(x[i]);
    }
}

void el_dequantize_row_bf16(const void *restrict vx, float *restrict y, int64_t n) {
    const el_bf16_t *x = vx;
    for (int64_t i = 0; i < n; i++) {
        y[i] = el_bf16_to_fp32(x[i]);
    }
}

/* api.h's conversions: an ISA file may provide faster ones (they are exact either way) */
void el_f32_to_f16(const float *x, uint16_t *y, int64_t n) {
    el_quantize_row_f16(x, y, n);
}

#ifndef EL_ARCH_F16_TO_F32
void el_f16_to_f32(const uint16_t *x, float *y, int64_t n) {
    el_dequantize_row_f16(x, y, n);
}
#endif

/* ======================================================================================
 * 32-element block formats: q4_0 q4_1 q5_0 q5_1 q8_0 q8_1
 * ====================================================================================== */

/* The element of largest magnitude, signed (the first one on ties). The symmetric formats map it
 * to the most negative quant, which has one more step than the positive side. */
static inline float signed_absmax(const float *x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

static inline void min_max(const float *x, int n, float *min, float *max) {
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *min = lo;
    *max = hi;
}

void el_quantize_row_q4_0_ref(const float *restrict x, void *restrict vy, int64_t n) {
    block_q4_0 *restrict y = vy;
    const int64_t nb = n / QK4_0;
    for (int64_t i = 0; i < nb; i++, x += QK4_0) {
        const float d = signed_absmax(x, QK4_0) / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = el_fp32_to_fp16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            /* +8.5 then truncation: round half up into [0, 16], clamped to 15 */
            const int q0 = EL_MIN(15, (int)(x[j] * id + 8.5f));
            const int q1 = EL_MIN(15, (int)(x[j + QK4_0 / 2] * id + 8.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void el_dequantize_row_q4_0(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q4_0 *restrict x = vx;
    const int64_t nb = n / QK4_0;
    for (int64_t i = 0; i < nb; i++, y += QK4_0) {
        const float d = el_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[j] = ((x[i].qs[j] & 0x0F) - 8) * d;
            y[j + QK4_0 / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void el_quantize_row_q4_1_ref(const float *restrict x, void *restrict vy, int64_t n) {
    block_q4_1 *restrict y = vy;
    const int64_t nb = n / QK4_1;
    for (int64_t i = 0; i < nb; i++, x += QK4_1) {
        float min, max;
        min_max(x, QK4_1, &min, &max);
        const float d = (max - min) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = el_fp32_to_fp16(d);
        y[i].m = el_fp32_to_fp16(min);
        for (int j = 0; j < QK4_1 / 2; j++) {
            const int q0 = EL_MIN(15, (int)((x[j] - min) * id + 0.5f));
            const int q1 = EL_MIN(15, (int)((x[j + QK4_1 / 2] - min) * id + 0.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void el_dequantize_row_q4_1(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q4_1 *restrict x = vx;
    const int64_t nb = n / QK4_1;
    for (int64_t i = 0; i < nb; i++, y += QK4_1) {
        const float d = el_fp16_to_fp32(x[i].d);
        const float m = el_fp16_to_fp32(x[i].m);
        for (int j = 0; j < QK4_1 / 2; j++) {
            y[j] = (x[i].qs[j] & 0x0F) * d + m;
            y[j + QK4_1 / 2] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}

static inline uint32_t load_u32_le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void store_u32_le(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* The 5-bit quants (0..31) of a q5_0 / q5_1 block from its nibbles and qh bits. */
static inline void unpack_q5(const uint8_t *qs, const uint8_t *qhb, int8_t *q) {
    const uint32_t qh = load_u32_le(qhb);
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)((qs[j] & 0x0F) | ((qh >> j) & 1) << 4);
        q[j + 16] = (int8_t)((qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4);
    }
}

void el_quantize_row_q5_0_ref(const float *restrict x, void *restrict vy, int64_t n) {
    block_q5_0 *restrict y = vy;
    const int64_t nb = n / QK5_0;
    for (int64_t i = 0; i < nb; i++, x += QK5_0) {
        const float d = signed_absmax(x, QK5_0) / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = el_fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            const int q0 = EL_MIN(31, (int)(x[j] * id + 16.5f));
            const int q1 = EL_MIN(31, (int)(x[j + QK5_0 / 2] * id + 16.5f));
            y[i].qs[j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + QK5_0 / 2);
        }
        store_u32_le(y[i].qh, qh);
    }
}

void el_dequantize_row_q5_0(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q5_0 *restrict x = vx;
    const int64_t nb = n / QK5_0;
    int8_t q[QK5_0];
    for (int64_t i = 0; i < nb; i++, y += QK5_0) {
        const float d = el_fp16_to_fp32(x[i].d);
        unpack_q5(x[i].qs, x[i].qh, q);
        for (int j = 0; j < QK5_0; j++) {
            y[j] = (q[j] - 16) * d;
        }
    }
}

void el_quantize_row_q5_1_ref(const float *restrict x, void *restrict vy, int64_t n) {
    block_q5_1 *restrict y = vy;
    const int64_t nb = n / QK5_1;
    for (int64_t i = 0; i < nb; i++, x += QK5_1) {
        float min, max;
        min_max(x, QK5_1, &min, &max);
        const float d = (max - min) / 31;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = el_fp32_to_fp16(d);
        y[i].m = el_fp32_to_fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_1 / 2; j++) {
            const int q0 = EL_MIN(31, (int)((x[j] - min) * id + 0.5f));
            const int q1 = EL_MIN(31, (int)((x[j + QK5_1 / 2] - min) * id + 0.5f));
            y[i].qs[j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + QK5_1 / 2);
        }
        store_u32_le(y[i].qh, qh);
    }
}

void el_dequantize_row_q5_1(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q5_1 *restrict x = vx;
    const int64_t nb = n / QK5_1;
    int8_t q[QK5_1];
    for (int64_t i = 0; i < nb; i++, y += QK5_1) {
        const float d = el_fp16_to_fp32(x[i].d);
        const float m = el_fp16_to_fp32(x[i].m);
        unpack_q5(x[i].qs, x[i].qh, q);
        for (int j = 0; j < QK5_1; j++) {
            y[j] = q[j] * d + m;
        }
    }
}

static inline float absmax(const float *x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; j++) {
        amax = EL_MAX(amax, fabsf(x[j]));
    }
    return amax;
}

void el_quantize_row_q8_0_ref(const float *restrict x, void *restrict vy, int64_t n) {
    block_q8_0 *restrict y = vy;
    const int64_t nb = n / QK8_0;
    for (int64_t i = 0; i < nb; i++, x += QK8_0) {
        const float d = absmax(x, QK8_0) / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = el_fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++) {
            y[i].qs[j] = (int8_t)roundf(x[j] * id); /* half away from zero */
        }
    }
}

void el_dequantize_row_q8_0(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q8_0 *restrict x = vx;
    const int64_t nb = n / QK8_0;
    for (int64_t i = 0; i < nb; i++, y += QK8_0) {
        const float d = el_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK8_0; j++) {
            y[j] = x[i].qs[j] * d;
        }
    }
}

void el_quantize_row_q8_1_ref(const float *restrict x, void *restrict vy, int64_t n) {
    block_q8_1 *restrict y = vy;
    const int64_t nb = n / QK8_1;
    for (int64_t i = 0; i < nb; i++, x += QK8_1) {
        const float d = absmax(x, QK8_1) / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = el_fp32_to_fp16(d);
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) {
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].s = el_fp32_to_fp16(sum * d);
    }
}

/* Activations to q8_0 / q8_1 the way ggml-cpu's x86 kernels quantize them, which is not its
 * reference above: the scale is 127 / amax rather than 1 / d, and rounding is to nearest, ties
 * to even. The two rules differ in about one quant in a few hundred, enough to move Gemma 3's
 * logits by ~1 (of ~20) through its large activations. Every variant here quantizes activations
 * this way, so they agree with each other and with llama.cpp on x86; weights keep the reference
 * rule (what llama-quantize writes). Returns the block's scale; the quants' sum in *sum. */
static inline float quantize_block_q8_act(const float *x, int8_t *qs, int *sum) {
    const float amax = absmax(x, 32);
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int s = 0;
    for (int j = 0; j < 32; j++) {
        qs[j] = (int8_t)nearest_int(x[j] * id);
        s += qs[j];
    }
    *sum = s;
    return amax / 127;
}

void el_quantize_row_q8_0_act_ref(const float *restrict x, void *restrict vy, int64_t n) {
    block_q8_0 *restrict y = vy;
    int sum;
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        y[i].d = el_fp32_to_fp16(quantize_block_q8_act(x, y[i].qs, &sum));
    }
}

void el_quantize_row_q8_1_act_ref(const float *restrict x, void *restrict vy, int64_t n) {
    block_q8_1 *restrict y = vy;
    int sum;
    for (int64_t i = 0; i < n / QK8_1; i++, x += QK8_1) {
        const float d = quantize_block_q8_act(x, y[i].qs, &sum);
        y[i].d = el_fp32_to_fp16(d);
        y[i].s = el_fp32_to_fp16(sum * d);
    }
}

void el_dequantize_row_q8_1(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q8_1 *restrict x = vx;
    const int64_t nb = n / QK8_1;
    for (int64_t i = 0; i < nb; i++, y += QK8_1) {
        const float d = el_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK8_1; j++) {
            y[j] = x[i].qs[j] * d;
        }
    }
}

/* ======================================================================================
 * k-quant scale search (ggml's make_*_quants): choose a sub-block's scale (and min) and its
 * quants L. Each is a small search that keeps the candidate of least weighted error.
 * ====================================================================================== */

/* Symmetric: quants l in [-nmax, nmax) stored as l + nmax. Starts from the scale that maps the
 * largest magnitude to -nmax, then tries 18 nearby scales, keeping the one that maximises
 * sumlx^2 / suml2 (least weighted squared error with weights x^2). Returns the scale. */
static float make_qx_quants(int n, int nmax, const float *restrict x, int8_t *restrict L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = EL_MAX(-nmax, EL_MIN(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            const int l = EL_MAX(-nmax, EL_MIN(nmax - 1, nearest_int(iscale * x[i])));
            const float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                const int l = EL_MAX(-nmax, EL_MIN(nmax - 1, nearest_int(iscale * x[i])));
                L[i] = (int8_t)(l + nmax);
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Symmetric for q3_K: start as make_qx_quants does, then up to 5 passes of moving single quants
 * to the value the current least-squares scale prefers, keeping moves that lower the error.
 * L is stored with the +nmax offset. Returns the scale. */
static float make_q3_quants(int n, int nmax, const float *restrict x, int8_t *restrict L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    const float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = EL_MAX(-nmax, EL_MIN(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)l;
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int n_changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int new_l = nearest_int(x[i] * sl2 / slx);
                new_l = EL_MAX(-nmax, EL_MIN(nmax - 1, new_l));
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed++;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    for (int i = 0; i < n; i++) {
        L[i] = (int8_t)(L[i] + nmax);
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Asymmetric: x ~ scale * L + min with L in [0, nmax] and min <= 0. Tries nstep + 1 scales
 * spanning (max - min) / (nmax + rmin .. nmax + rmin + nstep * rdelta), solves the weighted
 * least squares for scale and min at each set of quants, and keeps the least weighted error
 * (absolute if use_mad, else squared). Returns the scale; *the_min = -min (>= 0). */
static float make_qkx2_quants(int n, int nmax, const float *restrict x, const float *restrict weights,
                              uint8_t *restrict L, float *restrict the_min, uint8_t *restrict Laux,
                              float rmin, float rdelta, int nstep, int use_mad) {
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.0f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; i++) {
        const int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)EL_MAX(0, EL_MIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_error += weights[i] * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            const int l = EL_MAX(0, EL_MIN(nmax, nearest_int(iscale * (x[i] - min))));
            Laux[i] = (uint8_t)l;
            const float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                cur_error += weights[i] * diff;
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* ======================================================================================
 * k-quants
 * ====================================================================================== */

/* Pack 2-bit quants L[0..QK_K) as q2_K / q3_K store them: per 128 elements, byte l holds
 * l, l + 32, l + 64, l + 96 at bit offsets 0, 2, 4, 6. */
static void pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; l++) {
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                      (L[j + l + 96] << 6));
        }
    }
}

/* The inverse of pack_2bit: QK_K quants in 0..3. */
static inline void unpack_2bit(const uint8_t *qs, int8_t *q) {
    for (int j = 0; j < QK_K; j += 128, qs += 32) {
        for (int shift = 0; shift < 8; shift += 2, q += 32) {
            for (int l = 0; l < 32; l++) q[l] = (int8_t)((qs[l] >> shift) & 3);
        }
    }
}

/* q3_K's quants in -4..3: the 2 low bits, minus 4 where the hmask bit is clear. */
static inline void unpack_q3_K(const block_q3_K *b, int8_t *q) {
    unpack_2bit(b->qs, q);
    for (int g = 0; g < QK_K / 32; g++) {
        for (int l = 0; l < 32; l++) {
            q[32 * g + l] = (int8_t)(q[32 * g + l] - (((b->hmask[l] >> g) & 1) ? 0 : 4));
        }
    }
}

void el_quantize_row_q2_K_ref(const float *restrict x, void *restrict vy, int64_t n) {
    block_q2_K *restrict y = vy;
    const int64_t nb = n / QK_K;
    uint8_t L[QK_K], Laux[16];
    float weights[16], mins[QK_K / 16], scales[QK_K / 16];
    const float q4scale = 15.f;

    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float max_scale = 0, max_min = 0; /* the min is subtracted, so scales are >= 0 */
        for (int j = 0; j < QK_K / 16; j++) {
            for (int l = 0; l < 16; l++) weights[l] = fabsf(x[16 * j + l]);
            scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux,
                                         -0.5f, 0.1f, 15, 1);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        if (max_scale > 0) {
            const float iscale = q4scale / max_scale;
            for (int j = 0; j < QK_K / 16; j++) {
                y[i].scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
            }
            y[i].d = el_fp32_to_fp16(max_scale / q4scale);
        } else {
            memset(y[i].scales, 0, sizeof y[i].scales);
            y[i].d = el_fp32_to_fp16(0.f);
        }
        if (max_min > 0) {
            const float iscale = q4scale / max_min;
            for (int j = 0; j < QK_K / 16; j++) {
                y[i].scales[j] |= (uint8_t)(nearest_int(iscale * mins[j]) << 4);
            }
            y[i].dmin = el_fp32_to_fp16(max_min / q4scale);
        } else {
            y[i].dmin = el_fp32_to_fp16(0.f);
        }
        /* requantize against the scales as stored */
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = el_fp16_to_fp32(y[i].d) * (y[i].scales[j] & 0xF);
            if (!d) continue;
            const float dm = el_fp16_to_fp32(y[i].dmin) * (y[i].scales[j] >> 4);
            for (int ii = 0; ii < 16; ii++) {
                const int l = nearest_int((x[16 * j + ii] + dm) / d);
                L[16 * j + ii] = (uint8_t)EL_MAX(0, EL_MIN(3, l));
            }
        }
        pack_2bit(L, y[i].qs);
    }
}

void el_dequantize_row_q2_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q2_K *restrict x = vx;
    const int64_t nb = n / QK_K;
    int8_t q[QK_K];
    for (int64_t i = 0; i < nb; i++, y += QK_K) {
        const float d = el_fp16_to_fp32(x[i].d);
        const float dmin = el_fp16_to_fp32(x[i].dmin);
        unpack_2bit(x[i].qs, q);
        for (int j = 0; j < QK_K / 16; j++) {
            const float dl = d * (x[i].scales[j] & 0xF);
            const float ml = dmin * (x[i].scales[j] >> 4);
            for (int l = 0; l < 16; l++) {
                y[16 * j + l] = dl * q[16 * j + l] - ml;
            }
        }
    }
}

/* The 16 signed 6-bit scales of a q3_K block (without the -32 offset applied). */
static inline void q3_K_scales(const uint8_t *packed, int *sc) {
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? packed[j] & 0xF : packed[j - 8] >> 4;
        const int hi = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        sc[j] = lo | (hi << 4);
    }
}

void el_quantize_row_q3_K_ref(const float *restrict x, void *restrict vy, int64_t n) {
    block_q3_K *restrict y = vy;
    const int64_t nb = n / QK_K;
    int8_t L[QK_K];
    float scales[QK_K / 16];

    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float max_scale = 0, amax = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
            if (fabsf(scales[j]) > amax) {
                amax = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        memset(y[i].scales, 0, 12);
        if (max_scale) {
            const float iscale = -32.f / max_scale;
            for (int j = 0; j < QK_K / 16; j++) {
                const int l = EL_MAX(-32, EL_MIN(31, nearest_int(iscale * scales[j]))) + 32;
                if (j < 8) {
                    y[i].scales[j] = (uint8_t)(l & 0xF);
                } else {
                    y[i].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
                }
                y[i].scales[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
            }
            y[i].d = el_fp32_to_fp16(1 / iscale);
        } else {
            y[i].d = el_fp32_to_fp16(0.f);
        }
        int sc[16];
        q3_K_scales(y[i].scales, sc);
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = el_fp16_to_fp32(y[i].d) * (sc[j] - 32);
            if (!d) continue;
            for (int ii = 0; ii < 16; ii++) {
                const int l = nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)(EL_MAX(-4, EL_MIN(3, l)) + 4);
            }
        }
        /* 3rd bit of element j to bit j / 32 of hmask[j % 32]; the low 2 bits stay in L */
        memset(y[i].hmask, 0, QK_K / 8);
        uint8_t L2[QK_K];
        for (int j = 0; j < QK_K; j++) {
            if (L[j] > 3) {
                y[i].hmask[j % 32] |= (uint8_t)(1 << (j / 32));
            }
            L2[j] = (uint8_t)(L[j] & 3);
        }
        pack_2bit(L2, y[i].qs);
    }
}

void el_dequantize_row_q3_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q3_K *restrict x = vx;
    const int64_t nb = n / QK_K;
    int sc[16];
    int8_t q[QK_K];
    for (int64_t i = 0; i < nb; i++, y += QK_K) {
        const float d = el_fp16_to_fp32(x[i].d);
        q3_K_scales(x[i].scales, sc);
        unpack_q3_K(&x[i], q);
        for (int j = 0; j < QK_K / 16; j++) {
            const float dl = d * (sc[j] - 32);
            for (int l = 0; l < 16; l++) {
                y[16 * j + l] = dl * q[16 * j + l];
            }
        }
    }
}

/* Shared by q4_K and q5_K: per 32-element sub-block make_qkx2_quants with weights
 * av_x + |x| (av_x the sub-block's rms), then 6-bit scales and mins against the super-block's d
 * and dmin, then requantization of every element against the stored scales. L gets quants in
 * [0, nmax]. */
static void quantize_k_asym_superblock(const float *x, int nmax, float rmin, int nstep,
                                       el_fp16_t *d_out, el_fp16_t *dmin_out, uint8_t *packed,
                                       uint8_t *L) {
    uint8_t Laux[32];
    float weights[32], mins[QK_K / 32], scales[QK_K / 32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux,
                                     rmin, 0.1f, nstep, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < QK_K / 32; j++) {
        /* as ggml: the int result is narrowed to 8 bits before the clamp */
        const uint8_t ls = (uint8_t)EL_MIN(63, (uint8_t)nearest_int(inv_scale * scales[j]));
        const uint8_t lm = (uint8_t)EL_MIN(63, (uint8_t)nearest_int(inv_min * mins[j]));
        if (j < 4) {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            packed[j - 4] |= (uint8_t)((ls >> 4) << 6);
            packed[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d_out = el_fp32_to_fp16(max_scale / 63.f);
    *dmin_out = el_fp32_to_fp16(max_min / 63.f);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t sc, m;
        el_get_scale_min_k4(j, packed, &sc, &m);
        const float d = el_fp16_to_fp32(*d_out) * sc;
        if (!d) continue;
        const float dm = el_fp16_to_fp32(*dmin_out) * m;
        for (int ii = 0; ii < 32; ii++) {
            const int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)EL_MAX(0, EL_MIN(nmax, l));
        }
    }
}

void el_quantize_row_q4_K_ref(const float *restrict x, void *restrict vy, int64_t n) {
    block_q4_K *restrict y = vy;
    const int64_t nb = n / QK_K;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        memset(y[i].scales, 0, K_SCALE_SIZE);
        quantize_k_asym_superblock(x, 15, -1.f, 20, &y[i].d, &y[i].dmin, y[i].scales, L);
        for (int j = 0; j < QK_K; j += 64) {
            for (int l = 0; l < 32; l++) {
                y[i].qs[j / 2 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
            }
        }
    }
}

void el_dequantize_row_q4_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q4_K *restrict x = vx;
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const float d = el_fp16_to_fp32(x[i].d);
        const float dmin = el_fp16_to_fp32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        for (int j = 0; j < QK_K / 32; j += 2, q += 32) {
            uint8_t sc, m;
            el_get_scale_min_k4(j, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            el_get_scale_min_k4(j + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

void el_quantize_row_q5_K_ref(const float *restrict x, void *restrict vy, int64_t n) {
    block_q5_K *restrict y = vy;
    const int64_t nb = n / QK_K;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        memset(y[i].scales, 0, K_SCALE_SIZE);
        quantize_k_asym_superblock(x, 31, -0.5f, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
        memset(y[i].qh, 0, QK_K / 8);
        for (int j = 0; j < QK_K; j += 64) {
            for (int l = 0; l < 32; l++) {
                const int l1 = L[j + l], l2 = L[j + l + 32];
                y[i].qs[j / 2 + l] = (uint8_t)((l1 & 0xF) | ((l2 & 0xF) << 4));
                y[i].qh[l] |= (uint8_t)(((l1 >> 4) << (j / 32)) | ((l2 >> 4) << (j / 32 + 1)));
            }
        }
    }
}

void el_dequantize_row_q5_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q5_K *restrict x = vx;
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const float d = el_fp16_to_fp32(x[i].d);
        const float dmin = el_fp16_to_fp32(x[i].dmin);
        const uint8_t *ql = x[i].qs, *qh = x[i].qh;
        for (int j = 0; j < QK_K / 32; j += 2, ql += 32) {
            uint8_t sc, m;
            el_get_scale_min_k4(j, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            el_get_scale_min_k4(j + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * ((ql[l] & 0xF) | ((qh[l] >> j) & 1) << 4) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * ((ql[l] >> 4) | ((qh[l] >> (j + 1)) & 1) << 4) - m2;
        }
    }
}

/* q6_K's quants in -32..31: per 128-element half, element l + 32 k (k = 0..3) has its low
 * nibble in ql[l + 32 (k & 1)] (low half for k < 2) and its high 2 bits at 2 k of qh[l]. */
static inline void unpack_q6_K(const block_q6_K *b, int8_t *q) {
    const uint8_t *ql = b->ql, *qh = b->qh;
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32, q += 128) {
        for (int l = 0; l < 32; l++) {
            q[l] = (int8_t)(((ql[l] & 0xF) | ((qh[l] >> 0) & 3) << 4) - 32);
            q[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | ((qh[l] >> 2) & 3) << 4) - 32);
            q[l + 64] = (int8_t)(((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32);
            q[l + 96] = (int8_t)(((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32);
        }
    }
}

void el_quantize_row_q6_K_ref(const float *restrict x, void *restrict vy, int64_t n) {
    block_q6_K *restrict y = vy;
    const int64_t nb = n / QK_K;
    int8_t L[QK_K];
    float scales[QK_K / 16];

    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < QK_K / 16; ib++) {
            scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
            if (fabsf(scales[ib]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[ib]);
                max_scale = scales[ib];
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof(block_q6_K));
            continue;
        }
        const float iscale = -128.f / max_scale;
        y[i].d = el_fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < QK_K / 16; ib++) {
            y[i].scales[ib] = (int8_t)EL_MIN(127, nearest_int(iscale * scales[ib]));
        }
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = el_fp16_to_fp32(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ii++) {
                const int l = nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)(EL_MAX(-32, EL_MIN(31, l)) + 32);
            }
        }
        for (int half = 0; half < 2; half++) {
            const int8_t *Lh = L + 128 * half;
            uint8_t *ql = y[i].ql + 64 * half, *qh = y[i].qh + 32 * half;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((Lh[l] & 0xF) | ((Lh[l + 64] & 0xF) << 4));
                ql[l + 32] = (uint8_t)((Lh[l + 32] & 0xF) | ((Lh[l + 96] & 0xF) << 4));
                qh[l] = (uint8_t)((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                                  ((Lh[l + 96] >> 4) << 6));
            }
        }
    }
}

void el_dequantize_row_q6_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q6_K *restrict x = vx;
    const int64_t nb = n / QK_K;
    int8_t q[QK_K];
    for (int64_t i = 0; i < nb; i++, y += QK_K) {
        const float d = el_fp16_to_fp32(x[i].d);
        unpack_q6_K(&x[i], q);
        for (int e = 0; e < QK_K; e++) {
            y[e] = d * x[i].scales[e / 16] * q[e];
        }
    }
}

void el_quantize_row_q8_K_ref(const float *restrict x, void *restrict vy, int64_t n) {
    block_q8_K *restrict y = vy;
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        const float max = signed_absmax(x, QK_K);
        if (!max) {
            memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        /* -127 (not -128) keeps the quants symmetric, as ggml does for its SIMD kernels */
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) {
            y[i].qs[j] = (int8_t)EL_MIN(127, nearest_int(iscale * x[j]));
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[i].qs[16 * j + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

void el_dequantize_row_q8_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q8_K *restrict x = vx;
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i++, y += QK_K) {
        for (int j = 0; j < QK_K; j++) {
            y[j] = x[i].d * x[i].qs[j];
        }
    }
}

/* ======================================================================================
 * Reference dot products: integer sums inside a block, scaled once per block, accumulated in
 * f32 across blocks as ggml's CPU kernels do (the float formats accumulate in f64 as ggml's
 * scalar path does).
 * ====================================================================================== */

void el_vec_dot_f32_f32_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const float *w = vw, *x = vx;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)w[i] * x[i];
    *s = (float)sum;
}

void el_vec_dot_f16_f16_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const el_fp16_t *w = vw, *x = vx;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)el_fp16_to_fp32(w[i]) * el_fp16_to_fp32(x[i]);
    *s = (float)sum;
}

void el_vec_dot_bf16_bf16_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const el_bf16_t *w = vw, *x = vx;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)el_bf16_to_fp32(w[i]) * el_bf16_to_fp32(x[i]);
    *s = (float)sum;
}

void el_vec_dot_q4_0_q8_0_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const block_q4_0 *restrict w = vw;
    const block_q8_0 *restrict x = vx;
    const int64_t nb = n / QK8_0;
    float sumf = 0;
    for (int64_t i = 0; i < nb; i++) {
        int sumi = 0;
        for (int j = 0; j < QK8_0 / 2; j++) {
            sumi += ((w[i].qs[j] & 0x0F) - 8) * x[i].qs[j];
            sumi += ((w[i].qs[j] >> 4) - 8) * x[i].qs[j + QK8_0 / 2];
        }
        sumf += sumi * (el_fp16_to_fp32(w[i].d) * el_fp16_to_fp32(x[i].d));
    }
    *s = sumf;
}

/* sum_j (d q_j + m) * dy y_j = d dy sum_j q_j y_j + m * (dy sum_j y_j), the last factor is q8_1's s */
void el_vec_dot_q4_1_q8_1_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const block_q4_1 *restrict w = vw;
    const block_q8_1 *restrict x = vx;
    const int64_t nb = n / QK8_1;
    float sumf = 0;
    for (int64_t i = 0; i < nb; i++) {
        int sumi = 0;
        for (int j = 0; j < QK8_1 / 2; j++) {
            sumi += (w[i].qs[j] & 0x0F) * x[i].qs[j];
            sumi += (w[i].qs[j] >> 4) * x[i].qs[j + QK8_1 / 2];
        }
        sumf += (el_fp16_to_fp32(w[i].d) * el_fp16_to_fp32(x[i].d)) * sumi +
                el_fp16_to_fp32(w[i].m) * el_fp16_to_fp32(x[i].s);
    }
    *s = sumf;
}

void el_vec_dot_q5_0_q8_0_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const block_q5_0 *restrict w = vw;
    const block_q8_0 *restrict x = vx;
    const int64_t nb = n / QK8_0;
    int8_t q[QK5_0];
    float sumf = 0;
    for (int64_t i = 0; i < nb; i++) {
        unpack_q5(w[i].qs, w[i].qh, q);
        int sumi = 0;
        for (int j = 0; j < QK8_0; j++) sumi += (q[j] - 16) * x[i].qs[j];
        sumf += sumi * (el_fp16_to_fp32(w[i].d) * el_fp16_to_fp32(x[i].d));
    }
    *s = sumf;
}

void el_vec_dot_q5_1_q8_1_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const block_q5_1 *restrict w = vw;
    const block_q8_1 *restrict x = vx;
    const int64_t nb = n / QK8_1;
    int8_t q[QK5_1];
    float sumf = 0;
    for (int64_t i = 0; i < nb; i++) {
        unpack_q5(w[i].qs, w[i].qh, q);
        int sumi = 0;
        for (int j = 0; j < QK8_1; j++) sumi += q[j] * x[i].qs[j];
        sumf += (el_fp16_to_fp32(w[i].d) * el_fp16_to_fp32(x[i].d)) * sumi +
                el_fp16_to_fp32(w[i].m) * el_fp16_to_fp32(x[i].s);
    }
    *s = sumf;
}

void el_vec_dot_q8_0_q8_0_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const block_q8_0 *restrict w = vw;
    const block_q8_0 *restrict x = vx;
    const int64_t nb = n / QK8_0;
    float sumf = 0;
    for (int64_t i = 0; i < nb; i++) {
        int sumi = 0;
        for (int j = 0; j < QK8_0; j++) sumi += w[i].qs[j] * x[i].qs[j];
        sumf += sumi * (el_fp16_to_fp32(w[i].d) * el_fp16_to_fp32(x[i].d));
    }
    *s = sumf;
}

/* q8_1 and q8_K are activation formats; their dots complete the table (ggml has none). */
void el_vec_dot_q8_1_q8_1_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const block_q8_1 *restrict w = vw;
    const block_q8_1 *restrict x = vx;
    const int64_t nb = n / QK8_1;
    float sumf = 0;
    for (int64_t i = 0; i < nb; i++) {
        int sumi = 0;
        for (int j = 0; j < QK8_1; j++) sumi += w[i].qs[j] * x[i].qs[j];
        sumf += sumi * (el_fp16_to_fp32(w[i].d) * el_fp16_to_fp32(x[i].d));
    }
    *s = sumf;
}

void el_vec_dot_q8_K_q8_K_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const block_q8_K *restrict w = vw;
    const block_q8_K *restrict x = vx;
    const int64_t nb = n / QK_K;
    float sumf = 0;
    for (int64_t i = 0; i < nb; i++) {
        int sumi = 0;
        for (int j = 0; j < QK_K; j++) sumi += w[i].qs[j] * x[i].qs[j];
        sumf += sumi * (w[i].d * x[i].d);
    }
    *s = sumf;
}

/* k-quants with a min: sum_e (d sc q_e - dmin m) dy y_e
 *   = d dy sum_sub sc sum q_e y_e  -  dmin dy sum_sub m (sum y_e)
 * and q8_K's bsums hold the sums of y over each 16 elements. */
void el_vec_dot_q2_K_q8_K_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const block_q2_K *restrict w = vw;
    const block_q8_K *restrict x = vx;
    const int64_t nb = n / QK_K;
    int8_t q[QK_K];
    float sumf = 0;
    for (int64_t i = 0; i < nb; i++) {
        unpack_2bit(w[i].qs, q);
        int summs = 0, isum = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            summs += x[i].bsums[j] * (w[i].scales[j] >> 4);
            int isuml = 0;
            for (int l = 0; l < 16; l++) isuml += q[16 * j + l] * x[i].qs[16 * j + l];
            isum += (w[i].scales[j] & 0xF) * isuml;
        }
        const float dall = x[i].d * el_fp16_to_fp32(w[i].d);
        const float dmin = x[i].d * el_fp16_to_fp32(w[i].dmin);
        sumf += dall * isum - dmin * summs;
    }
    *s = sumf;
}

void el_vec_dot_q3_K_q8_K_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const block_q3_K *restrict w = vw;
    const block_q8_K *restrict x = vx;
    const int64_t nb = n / QK_K;
    int sc[16];
    int8_t q[QK_K];
    float sumf = 0;
    for (int64_t i = 0; i < nb; i++) {
        q3_K_scales(w[i].scales, sc);
        unpack_q3_K(&w[i], q);
        int isum = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            int isuml = 0;
            for (int l = 0; l < 16; l++) isuml += q[16 * j + l] * x[i].qs[16 * j + l];
            isum += (sc[j] - 32) * isuml;
        }
        sumf += (el_fp16_to_fp32(w[i].d) * x[i].d) * isum;
    }
    *s = sumf;
}

void el_vec_dot_q4_K_q8_K_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const block_q4_K *restrict w = vw;
    const block_q8_K *restrict x = vx;
    const int64_t nb = n / QK_K;
    float sumf = 0;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *q4 = w[i].qs;
        const int8_t *q8 = x[i].qs;
        int isum = 0, summs = 0;
        for (int j = 0; j < QK_K / 32; j += 2, q4 += 32, q8 += 64) {
            uint8_t sc1, m1, sc2, m2;
            el_get_scale_min_k4(j, w[i].scales, &sc1, &m1);
            el_get_scale_min_k4(j + 1, w[i].scales, &sc2, &m2);
            int s1 = 0, s2 = 0;
            for (int l = 0; l < 32; l++) {
                s1 += (q4[l] & 0xF) * q8[l];
                s2 += (q4[l] >> 4) * q8[l + 32];
            }
            isum += sc1 * s1 + sc2 * s2;
            summs += m1 * (x[i].bsums[2 * j] + x[i].bsums[2 * j + 1]) +
                     m2 * (x[i].bsums[2 * j + 2] + x[i].bsums[2 * j + 3]);
        }
        const float d = el_fp16_to_fp32(w[i].d) * x[i].d;
        const float dmin = el_fp16_to_fp32(w[i].dmin) * x[i].d;
        sumf += d * isum - dmin * summs;
    }
    *s = sumf;
}

void el_vec_dot_q5_K_q8_K_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const block_q5_K *restrict w = vw;
    const block_q8_K *restrict x = vx;
    const int64_t nb = n / QK_K;
    float sumf = 0;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *ql = w[i].qs, *qh = w[i].qh;
        const int8_t *q8 = x[i].qs;
        int isum = 0, summs = 0;
        for (int j = 0; j < QK_K / 32; j += 2, ql += 32, q8 += 64) {
            uint8_t sc1, m1, sc2, m2;
            el_get_scale_min_k4(j, w[i].scales, &sc1, &m1);
            el_get_scale_min_k4(j + 1, w[i].scales, &sc2, &m2);
            int s1 = 0, s2 = 0;
            for (int l = 0; l < 32; l++) {
                s1 += ((ql[l] & 0xF) | ((qh[l] >> j) & 1) << 4) * q8[l];
                s2 += ((ql[l] >> 4) | ((qh[l] >> (j + 1)) & 1) << 4) * q8[l + 32];
            }
            isum += sc1 * s1 + sc2 * s2;
            summs += m1 * (x[i].bsums[2 * j] + x[i].bsums[2 * j + 1]) +
                     m2 * (x[i].bsums[2 * j + 2] + x[i].bsums[2 * j + 3]);
        }
        const float d = el_fp16_to_fp32(w[i].d) * x[i].d;
        const float dmin = el_fp16_to_fp32(w[i].dmin) * x[i].d;
        sumf += d * isum - dmin * summs;
    }
    *s = sumf;
}

void el_vec_dot_q6_K_q8_K_ref(int64_t n, float *restrict s,
                          const void *restrict vw, const void *restrict vx) {
    const block_q6_K *restrict w = vw;
    const block_q8_K *restrict x = vx;
    const int64_t nb = n / QK_K;
    int8_t q[QK_K];
    float sumf = 0;
    for (int64_t i = 0; i < nb; i++) {
        unpack_q6_K(&w[i], q);
        int isum = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            int isuml = 0;
            for (int l = 0; l < 16; l++) isuml += q[16 * j + l] * x[i].qs[16 * j + l];
            isum += w[i].scales[j] * isuml;
        }
        sumf += (el_fp16_to_fp32(w[i].d) * x[i].d) * isum;
    }
    *s = sumf;
}

/* ======================================================================================
 * Rows interleaved eight at a time (block_q4_0x8, block_q5_0x8: quants.h)
 * ====================================================================================== */

/* row i's qs (16 bytes) into its slots of a block's interleaved chunks */
static void interleave_qs(uint8_t *out, int i, const uint8_t *qs) {
    for (int j = 0; j < 4; j++) memcpy(out + 32 * j + 4 * i, qs + 4 * j, 4);
}

int el_pack_x8(int type, const void *w, int64_t n_rows, int64_t n_cols, void *out) {
    if ((type != EL_TYPE_Q4_0 && type != EL_TYPE_Q5_0) || n_rows % 8 || n_cols % 32) return -1;
    const int64_t nb = n_cols / 32;
    for (int64_t g = 0; g < n_rows / 8; g++)
        for (int64_t b = 0; b < nb; b++)
            for (int i = 0; i < 8; i++) {
                const int64_t src = (8 * g + i) * nb + b, dst = g * nb + b;
                if (type == EL_TYPE_Q4_0) {
                    const block_q4_0 *blk = (const block_q4_0 *)w + src;
                    block_q4_0x8 *o = (block_q4_0x8 *)out + dst;
                    o->d[i] = blk->d;
                    interleave_qs(o->qs, i, blk->qs);
                    continue;
                }
                const block_q5_0 *blk = (const block_q5_0 *)w + src;
                block_q5_0x8 *o = (block_q5_0x8 *)out + dst;
                uint32_t qh;
                memcpy(&qh, blk->qh, 4);
                o->d[i] = blk->d;
                interleave_qs(o->qs, i, blk->qs);
                for (int t = 0; t < 4; t++) {
                    uint8_t bits = 0;
                    for (int j = 0; j < 4; j++)
                        bits |= (uint8_t)(((qh >> (4 * j + t)) & 1) << (2 * j) | ((qh >> (16 + 4 * j + t)) & 1) << (2 * j + 1));
                    o->qh[4 * i + t] = bits;
                }
            }
    return 0;
}

/* one row (i) of an interleaved block: its quants, low nibbles then high, and the block's
 * integer dot with the activations' quants */
static int x8_block_dot(const uint8_t *qs, const uint8_t *qh, int i, const int8_t *x) {
    int sum = 0;
    for (int j = 0; j < 4; j++)
        for (int t = 0; t < 4; t++) {
            const uint8_t q = qs[32 * j + 4 * i + t], h = qh ? qh[4 * i + t] : 0;
            sum += ((q & 0x0F) | ((h >> (2 * j)) & 1) << 4) * x[4 * j + t];
            sum += ((q >> 4) | ((h >> (2 * j + 1)) & 1) << 4) * x[16 + 4 * j + t];
        }
    return sum;
}

static void gemv_x8_ref(int five, const void *w, int64_t n_groups, int64_t nb, const block_q8_0 *x,
                        const float *xd, const int32_t *xc, float *y) {
    for (int64_t g = 0; g < n_groups; g++)
        for (int i = 0; i < 8; i++) {
            float sumf = 0;
            for (int64_t b = 0; b < nb; b++) {
                const el_fp16_t *d;
                int sumi = xc[b];
                if (five) {
                    const block_q5_0x8 *blk = (const block_q5_0x8 *)w + g * nb + b;
                    d = blk->d, sumi += x8_block_dot(blk->qs, blk->qh, i, x[b].qs);
                } else {
                    const block_q4_0x8 *blk = (const block_q4_0x8 *)w + g * nb + b;
                    d = blk->d, sumi += x8_block_dot(blk->qs, NULL, i, x[b].qs);
                }
                sumf += (float)sumi * (el_fp16_to_fp32(d[i]) * xd[b]);
            }
            y[8 * g + i] = sumf;
        }
}

void el_gemv_q4_0x8_ref(const void *w, int64_t n_groups, int64_t nb, const block_q8_0 *x, const float *xd,
                        const int32_t *xc, float *y) {
    gemv_x8_ref(0, w, n_groups, nb, x, xd, xc, y);
}

void el_gemv_q5_0x8_ref(const void *w, int64_t n_groups, int64_t nb, const block_q8_0 *x, const float *xd,
                        const int32_t *xc, float *y) {
    gemv_x8_ref(1, w, n_groups, nb, x, xd, xc, y);
}

/* ======================================================================================
 * The names the table calls: the reference unless an ISA file provides one (quants.h).
 * ====================================================================================== */

#define EL_VEC_DOT_IS_REF(name)                                                            \
    void name(int64_t n, float *restrict s, const void *restrict w, const void *restrict x) { \
        name##_ref(n, s, w, x);                                                            \
    }
#define EL_FROM_FLOAT_IS_REF(name)                                        \
    void name(const float *restrict x, void *restrict y, int64_t n) {   \
        name##_ref(x, y, n);                                              \
    }

#ifndef EL_ARCH_QUANTIZE_ROW_F16
EL_FROM_FLOAT_IS_REF(el_quantize_row_f16)
#endif
#ifndef EL_ARCH_QUANTIZE_ROW_BF16
EL_FROM_FLOAT_IS_REF(el_quantize_row_bf16)
#endif
#ifndef EL_ARCH_QUANTIZE_ROW_Q8_0
void el_quantize_row_q8_0(const float *restrict x, void *restrict y, int64_t n) {
    el_quantize_row_q8_0_act_ref(x, y, n);
}
#endif
#ifndef EL_ARCH_QUANTIZE_ROW_Q8_1
void el_quantize_row_q8_1(const float *restrict x, void *restrict y, int64_t n) {
    el_quantize_row_q8_1_act_ref(x, y, n);
}
#endif
#ifndef EL_ARCH_QUANTIZE_ROW_Q8_K
EL_FROM_FLOAT_IS_REF(el_quantize_row_q8_K)
#endif
#ifndef EL_ARCH_VEC_DOT_F32_F32
EL_VEC_DOT_IS_REF(el_vec_dot_f32_f32)
#endif
#ifndef EL_ARCH_VEC_DOT_F16_F16
EL_VEC_DOT_IS_REF(el_vec_dot_f16_f16)
#endif
#ifndef EL_ARCH_VEC_DOT_BF16_BF16
EL_VEC_DOT_IS_REF(el_vec_dot_bf16_bf16)
#endif
#ifndef EL_ARCH_VEC_DOT_Q4_0_Q8_0
EL_VEC_DOT_IS_REF(el_vec_dot_q4_0_q8_0)
#endif
#ifndef EL_ARCH_VEC_DOT_Q4_1_Q8_1
EL_VEC_DOT_IS_REF(el_vec_dot_q4_1_q8_1)
#endif
#ifndef EL_ARCH_VEC_DOT_Q5_0_Q8_0
EL_VEC_DOT_IS_REF(el_vec_dot_q5_0_q8_0)
#endif
#ifndef EL_ARCH_VEC_DOT_Q5_1_Q8_1
EL_VEC_DOT_IS_REF(el_vec_dot_q5_1_q8_1)
#endif
#ifndef EL_ARCH_VEC_DOT_Q8_0_Q8_0
EL_VEC_DOT_IS_REF(el_vec_dot_q8_0_q8_0)
#endif
#ifndef EL_ARCH_VEC_DOT_Q8_1_Q8_1
EL_VEC_DOT_IS_REF(el_vec_dot_q8_1_q8_1)
#endif
#ifndef EL_ARCH_VEC_DOT_Q2_K_Q8_K
EL_VEC_DOT_IS_REF(el_vec_dot_q2_K_q8_K)
#endif
#ifndef EL_ARCH_VEC_DOT_Q3_K_Q8_K
EL_VEC_DOT_IS_REF(el_vec_dot_q3_K_q8_K)
#endif
#ifndef EL_ARCH_VEC_DOT_Q4_K_Q8_K
EL_VEC_DOT_IS_REF(el_vec_dot_q4_K_q8_K)
#endif
#ifndef EL_ARCH_VEC_DOT_Q5_K_Q8_K
EL_VEC_DOT_IS_REF(el_vec_dot_q5_K_q8_K)
#endif
#ifndef EL_ARCH_VEC_DOT_Q6_K_Q8_K
EL_VEC_DOT_IS_REF(el_vec_dot_q6_K_q8_K)
#endif
#ifndef EL_ARCH_VEC_DOT_Q8_K_Q8_K
EL_VEC_DOT_IS_REF(el_vec_dot_q8_K_q8_K)
#endif
#ifndef EL_ARCH_GEMV_X8
void el_gemv_q4_0x8(const void *w, int64_t n_groups, int64_t nb, const block_q8_0 *x, const float *xd,
                    const int32_t *xc, float *y) {
    el_gemv_q4_0x8_ref(w, n_groups, nb, x, xd, xc, y);
}
void el_gemv_q5_0x8(const void *w, int64_t n_groups, int64_t nb, const block_q8_0 *x, const float *xd,
                    const int32_t *xc, float *y) {
    el_gemv_q5_0x8_ref(w, n_groups, nb, x, xd, xc, y);
}
#endif

/* ======================================================================================
 * The dispatch table, keyed by type id
 * ====================================================================================== */

static const el_type_traits type_traits[EL_TYPE_COUNT] = {
#define TRAITS(name, blck, size, vdt, to, from_ref, from, dot)                          \
    {name, blck, size, vdt, to, from_ref, from_ref, from, dot, dot##_ref}
    /* q8_0 / q8_1 quantize activations by another rule than weights (see *_act_ref) */
#define ACT_TRAITS(name, blck, size, vdt, to, from_ref, act_ref, from, dot)              \
    {name, blck, size, vdt, to, from_ref, act_ref, from, dot, dot##_ref}
    [EL_TYPE_F32] = TRAITS("f32", 1, 4, EL_TYPE_F32, el_dequantize_row_f32, el_quantize_row_f32_ref,
                           el_quantize_row_f32_ref, el_vec_dot_f32_f32),
    [EL_TYPE_F16] = TRAITS("f16", 1, 2, EL_TYPE_F16, el_dequantize_row_f16, el_quantize_row_f16_ref,
                           el_quantize_row_f16, el_vec_dot_f16_f16),
    [EL_TYPE_BF16] = TRAITS("bf16", 1, 2, EL_TYPE_BF16, el_dequantize_row_bf16, el_quantize_row_bf16_ref,
                            el_quantize_row_bf16, el_vec_dot_bf16_bf16),
    [EL_TYPE_Q4_0] = TRAITS("q4_0", QK4_0, sizeof(block_q4_0), EL_TYPE_Q8_0, el_dequantize_row_q4_0,
                            el_quantize_row_q4_0_ref, el_quantize_row_q4_0_ref, el_vec_dot_q4_0_q8_0),
    [EL_TYPE_Q4_1] = TRAITS("q4_1", QK4_1, sizeof(block_q4_1), EL_TYPE_Q8_1, el_dequantize_row_q4_1,
                            el_quantize_row_q4_1_ref, el_quantize_row_q4_1_ref, el_vec_dot_q4_1_q8_1),
    [EL_TYPE_Q5_0] = TRAITS("q5_0", QK5_0, sizeof(block_q5_0), EL_TYPE_Q8_0, el_dequantize_row_q5_0,
                            el_quantize_row_q5_0_ref, el_quantize_row_q5_0_ref, el_vec_dot_q5_0_q8_0),
    [EL_TYPE_Q5_1] = TRAITS("q5_1", QK5_1, sizeof(block_q5_1), EL_TYPE_Q8_1, el_dequantize_row_q5_1,
                            el_quantize_row_q5_1_ref, el_quantize_row_q5_1_ref, el_vec_dot_q5_1_q8_1),
    [EL_TYPE_Q8_0] = ACT_TRAITS("q8_0", QK8_0, sizeof(block_q8_0), EL_TYPE_Q8_0, el_dequantize_row_q8_0,
                                el_quantize_row_q8_0_ref, el_quantize_row_q8_0_act_ref,
                                el_quantize_row_q8_0, el_vec_dot_q8_0_q8_0),
    [EL_TYPE_Q8_1] = ACT_TRAITS("q8_1", QK8_1, sizeof(block_q8_1), EL_TYPE_Q8_1, el_dequantize_row_q8_1,
                                el_quantize_row_q8_1_ref, el_quantize_row_q8_1_act_ref,
                                el_quantize_row_q8_1, el_vec_dot_q8_1_q8_1),
    [EL_TYPE_Q2_K] = TRAITS("q2_K", QK_K, sizeof(block_q2_K), EL_TYPE_Q8_K, el_dequantize_row_q2_K,
                            el_quantize_row_q2_K_ref, el_quantize_row_q2_K_ref, el_vec_dot_q2_K_q8_K),
    [EL_TYPE_Q3_K] = TRAITS("q3_K", QK_K, sizeof(block_q3_K), EL_TYPE_Q8_K, el_dequantize_row_q3_K,
                            el_quantize_row_q3_K_ref, el_quantize_row_q3_K_ref, el_vec_dot_q3_K_q8_K),
    [EL_TYPE_Q4_K] = TRAITS("q4_K", QK_K, sizeof(block_q4_K), EL_TYPE_Q8_K, el_dequantize_row_q4_K,
                            el_quantize_row_q4_K_ref, el_quantize_row_q4_K_ref, el_vec_dot_q4_K_q8_K),
    [EL_TYPE_Q5_K] = TRAITS("q5_K", QK_K, sizeof(block_q5_K), EL_TYPE_Q8_K, el_dequantize_row_q5_K,
                            el_quantize_row_q5_K_ref, el_quantize_row_q5_K_ref, el_vec_dot_q5_K_q8_K),
    [EL_TYPE_Q6_K] = TRAITS("q6_K", QK_K, sizeof(block_q6_K), EL_TYPE_Q8_K, el_dequantize_row_q6_K,
                            el_quantize_row_q6_K_ref, el_quantize_row_q6_K_ref, el_vec_dot_q6_K_q8_K),
    [EL_TYPE_Q8_K] = TRAITS("q8_K", QK_K, sizeof(block_q8_K), EL_TYPE_Q8_K, el_dequantize_row_q8_K,
                            el_quantize_row_q8_K_ref, el_quantize_row_q8_K, el_vec_dot_q8_K_q8_K),
#undef TRAITS
#undef ACT_TRAITS
};

const el_type_traits *el_get_type_traits(int type) {
    if (type < 0 || type >= EL_TYPE_COUNT || type_traits[type].blck_size == 0) {
        return NULL;
    }
    return &type_traits[type];
}

/* ======================================================================================
 * api.h: quantization formats
 * ====================================================================================== */

int el_type_supported(int type) {
    return el_get_type_traits(type) != NULL;
}

int el_block_size(int type) {
    const el_type_traits *t = el_get_type_traits(type);
    return t ? t->blck_size : 0;
}

int el_type_size(int type) {
    const el_type_traits *t = el_get_type_traits(type);
    return t ? t->type_size : 0;
}

size_t el_row_size(int type, int64_t n) {
    const el_type_traits *t = el_get_type_traits(type);
    return t ? (size_t)(n / t->blck_size) * (size_t)t->type_size : 0;
}

int el_vec_dot_type(int type) {
    const el_type_traits *t = el_get_type_traits(type);
    return t ? t->vec_dot_type : -1;
}

int el_quantize_row(int type, const float *x, void *y, int64_t n) {
    const el_type_traits *t = el_get_type_traits(type);
    if (!t || !t->from_float_ref || n % t->blck_size != 0) {
        return -1;
    }
    t->from_float_ref(x, y, n);
    return 0;
}

int el_dequantize_row(int type, const void *x, float *y, int64_t n) {
    const el_type_traits *t = el_get_type_traits(type);
    if (!t || n % t->blck_size != 0) {
        return -1;
    }
    t->to_float(x, y, n);
    return 0;
}

float el_vec_dot(int type, int64_t n, const void *w, const void *xq) {
    const el_type_traits *t = el_get_type_traits(type);
    if (!t || n % t->blck_size != 0) {
        return NAN;
    }
    float s;
    t->vec_dot(n, &s, w, xq);
    return s;
}

float el_vec_dot_ref(int type, int64_t n, const void *w, const void *xq) {
    const el_type_traits *t = el_get_type_traits(type);
    if (!t || n % t->blck_size != 0) {
        return NAN;
    }
    float s;
    t->vec_dot_ref(n, &s, w, xq);
    return s;
}

int el_from_float_ref(int type, const float *x, void *y, int64_t n) {
    const el_type_traits *t = el_get_type_traits(type);
    if (!t || !t->from_float_act_ref || n % t->blck_size != 0) {
        return -1;
    }
    t->from_float_act_ref(x, y, n);
    return 0;
}

int el_from_float(int type, const float *x, void *y, int64_t n) {
    const el_type_traits *t = el_get_type_traits(type);
    if (!t || !t->from_float || n % t->blck_size != 0) {
        return -1;
    }
    t->from_float(x, y, n);
    return 0;
}

#ifndef EL_VARIANT
#define EL_VARIANT "generic"
#endif

const char *el_kernels_variant(void) {
    return EL_VARIANT;
}
