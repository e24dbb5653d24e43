/* A small f32 vector layer for the elementwise kernels (ops.c, attention.c), one branch per
 * ISA picked by the variant's compiler flags: AVX-512 (16 lanes), AVX2 + FMA + F16C (8),
 * NEON (4), or plain C (1). Loops run EL_VW lanes at a time and finish with a scalar tail.
 * vf_hsum4 reduces four vectors at once (a tree of pairwise adds), for dot products in tiles;
 * on AVX2 each in the order of ggml's hsum_float_8, as vf_hsum.
 *
 * vf_exp: exp(x) by 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2] split in two parts, p the
 * degree-7 Taylor polynomial (truncation error < 1e-8 relative): within 2 ulp of expf over
 * [-87.3, 88.3]; below -87.3 it returns 0, above 88.3 it saturates at e^88.3. Softmax, GELU
 * and SiLU only need the finite range.
 */
#ifndef EDGELLM_SIMD_H
#define EDGELLM_SIMD_H

#include <math.h>
#include <stdint.h>

#include "quants.h"

#define EL_EXP_LO -87.33654f
#define EL_EXP_HI 88.37626f
#define EL_LOG2E 1.44269504088896341f
#define EL_LN2_HI 0.693359375f          /* ln 2 = hi + lo, hi with 10 significant bits */
#define EL_LN2_LO -2.12194440e-4f

/* Horner steps of the exp polynomial; FMA(a, b, c) = a * b + c */
#define EL_EXP_POLY(FMA, SET1, r)                                                           \
    FMA(FMA(FMA(FMA(FMA(FMA(FMA(SET1(1.0f / 5040), r, SET1(1.0f / 720)), r, SET1(1.0f / 120)), \
                            r, SET1(1.0f / 24)), r, SET1(1.0f / 6)), r, SET1(0.5f)), r,      \
            SET1(1.0f)), r, SET1(1.0f))

#if defined(__AVX512F__)

#include <immintrin.h>
#define EL_VW 16
typedef __m512 vf;
static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vf_set1(float a) { return _mm512_set1_ps(a); }
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline float vf_hsum(vf v) { return _mm512_reduce_add_ps(v); }
static inline float vf_hmax(vf v) { return _mm512_reduce_max_ps(v); }
static inline void vf_hsum4(vf a, vf b, vf c, vf d, float out[4]) {
#define HALVES(v) _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(HALVES(a), HALVES(b)), _mm256_hadd_ps(HALVES(c), HALVES(d)));
#undef HALVES
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}
static inline vf vf_load_f16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static inline void vf_store_f16(uint16_t *p, vf v) {
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
/* ggml's GELU from a table over every f16 input (ops.c): table[f16(x)] widened, x from 10 up,
 * 0 from -10 down. The table has one entry of padding: a gather reads 4 bytes. */
#define EL_VF_GELU_F16 1
static inline vf vf_gelu_f16(const uint16_t *table, vf x) {
    const __m512i h = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const vf g = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(h, (const void *)table, 2)));
    const vf y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, vf_set1(10.0f), _CMP_GE_OQ), g, x);
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, vf_set1(-10.0f), _CMP_GT_OQ), y);
}
static inline vf vf_exp(vf x) {
    const __mmask16 tiny = _mm512_cmp_ps_mask(x, vf_set1(EL_EXP_LO), _CMP_LT_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, vf_set1(EL_EXP_LO)), vf_set1(EL_EXP_HI));
    const vf n = _mm512_roundscale_ps(vf_mul(x, vf_set1(EL_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = vf_fma(n, vf_set1(-EL_LN2_HI), x);
    r = vf_fma(n, vf_set1(-EL_LN2_LO), r);
    const vf p = EL_EXP_POLY(vf_fma, vf_set1, r);
    return _mm512_maskz_scalef_ps((__mmask16)~tiny, p, n);
}

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>
#define EL_VW 8
typedef __m256 vf;
static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vf_set1(float a) { return _mm256_set1_ps(a); }
static inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline float vf_hsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
/* each vector summed as vf_hsum does (ggml's hsum_float_8: the halves, then lanes 0 + 2 and
 * 1 + 3, then those two), the four sums in one vector */
static inline __m128 vf_hsum4_x(vf a, vf b, vf c, vf d) {
    const __m256 s01 = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
    const __m256 s23 = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
    const __m256 p01 = _mm256_permute_ps(s01, _MM_SHUFFLE(3, 1, 2, 0)), p23 = _mm256_permute_ps(s23, _MM_SHUFFLE(3, 1, 2, 0));
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(p01, p23), _mm256_setzero_ps());  /* [a, c, 0, 0 | b, d, 0, 0] */
    return _mm_unpacklo_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
static inline void vf_hsum4(vf a, vf b, vf c, vf d, float out[4]) { _mm_storeu_ps(out, vf_hsum4_x(a, b, c, d)); }
static inline float vf_hmax(vf v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline vf vf_load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static inline void vf_store_f16(uint16_t *p, vf v) {
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#define EL_VF_GELU_F16 1
static inline vf vf_gelu_f16(const uint16_t *table, vf x) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i g = _mm256_and_si256(_mm256_i32gather_epi32((const int *)table, h, 2), _mm256_set1_epi32(0xFFFF));
    const vf t = _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(g), _mm256_extracti128_si256(g, 1)));
    const vf y = _mm256_blendv_ps(t, x, _mm256_cmp_ps(x, vf_set1(10.0f), _CMP_GE_OQ));
    return _mm256_and_ps(y, _mm256_cmp_ps(x, vf_set1(-10.0f), _CMP_GT_OQ));
}
static inline vf vf_exp(vf x) {
    const vf tiny = _mm256_cmp_ps(x, vf_set1(EL_EXP_LO), _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, vf_set1(EL_EXP_LO)), vf_set1(EL_EXP_HI));
    const vf n = _mm256_round_ps(vf_mul(x, vf_set1(EL_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = vf_fma(n, vf_set1(-EL_LN2_HI), x);
    r = vf_fma(n, vf_set1(-EL_LN2_LO), r);
    const vf p = EL_EXP_POLY(vf_fma, vf_set1, r);
    /* 2^n for n in [-126, 127]: the exponent field */
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(tiny, vf_mul(p, _mm256_castsi256_ps(e)));
}
/* exp(x) the way ggml's AVX2 softmax computes it (its ggml_v_expf), operation for operation,
 * so attention weights are llama.cpp's to the bit: n = round(x / ln2) by the 1.5 * 2^23
 * trick, b = x - n ln2 in two steps, 2^n * (1 + a polynomial in b of degree 5), with 2^n
 * split in two factors where |n| > 126 (0 below about -150, inf above about 128). */
#define EL_VF_EXP_GGML 1
static inline vf vf_exp_ggml(vf x) {
    const vf shift = vf_set1(0x1.8p23f);
    const vf z = vf_fma(x, vf_set1(0x1.715476p+0f), shift);
    const vf n = vf_sub(z, shift);
    const vf b = _mm256_fnmadd_ps(n, vf_set1(0x1.7f7d1cp-20f), _mm256_fnmadd_ps(n, vf_set1(0x1.62e4p-1f), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const vf k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(vf_set1(1.0f))));
    const vf abs_n = _mm256_andnot_ps(vf_set1(-0.0f), n);
    const vf big = _mm256_cmp_ps(abs_n, vf_set1(126.0f), _CMP_GT_OQ);
    const vf u = vf_mul(b, b);
    const vf j = vf_fma(vf_fma(vf_fma(vf_set1(0x1.0e4020p-7f), b, vf_set1(0x1.573e2ep-5f)), u,
                               vf_fma(vf_set1(0x1.555e66p-3f), b, vf_set1(0x1.fffdb6p-2f))),
                        u, vf_mul(vf_set1(0x1.ffffecp-1f), b));
    if (!_mm256_movemask_ps(big)) return vf_fma(j, k, k);
    const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                       _mm256_set1_epi32((int)0x82000000u));
    const vf s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
    const vf s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const vf huge = _mm256_cmp_ps(abs_n, vf_set1(192.0f), _CMP_GT_OQ);
    const vf scaled = _mm256_or_ps(_mm256_and_ps(big, vf_mul(vf_fma(s2, j, s2), s1)), _mm256_andnot_ps(big, vf_fma(k, j, k)));
    return _mm256_or_ps(_mm256_and_ps(huge, vf_mul(s1, s1)), _mm256_andnot_ps(huge, scaled));
}

#elif defined(__ARM_NEON) && defined(__aarch64__)

#include <arm_neon.h>
#define EL_VW 4
typedef float32x4_t vf;
static inline vf vf_load(const float *p) { return vld1q_f32(p); }
static inline void vf_store(float *p, vf v) { vst1q_f32(p, v); }
static inline vf vf_set1(float a) { return vdupq_n_f32(a); }
static inline vf vf_add(vf a, vf b) { return vaddq_f32(a, b); }
static inline vf vf_sub(vf a, vf b) { return vsubq_f32(a, b); }
static inline vf vf_mul(vf a, vf b) { return vmulq_f32(a, b); }
static inline vf vf_div(vf a, vf b) { return vdivq_f32(a, b); }
static inline vf vf_fma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
static inline vf vf_max(vf a, vf b) { return vmaxq_f32(a, b); }
static inline float vf_hsum(vf v) { return vaddvq_f32(v); }
static inline void vf_hsum4(vf a, vf b, vf c, vf d, float out[4]) {
    vst1q_f32(out, vpaddq_f32(vpaddq_f32(a, b), vpaddq_f32(c, d)));
}
static inline float vf_hmax(vf v) { return vmaxvq_f32(v); }
static inline vf vf_load_f16(const uint16_t *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
static inline void vf_store_f16(uint16_t *p, vf v) { vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(v))); }
static inline vf vf_exp(vf x) {
    const uint32x4_t tiny = vcltq_f32(x, vf_set1(EL_EXP_LO));
    x = vminq_f32(vmaxq_f32(x, vf_set1(EL_EXP_LO)), vf_set1(EL_EXP_HI));
    const vf n = vrndnq_f32(vf_mul(x, vf_set1(EL_LOG2E)));
    vf r = vf_fma(n, vf_set1(-EL_LN2_HI), x);
    r = vf_fma(n, vf_set1(-EL_LN2_LO), r);
    const vf p = EL_EXP_POLY(vf_fma, vf_set1, r);
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    const vf y = vf_mul(p, vreinterpretq_f32_s32(e));
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(y), tiny));
}

#else

#define EL_VW 1
typedef float vf;
static inline vf vf_load(const float *p) { return *p; }
static inline void vf_store(float *p, vf v) { *p = v; }
static inline vf vf_set1(float a) { return a; }
static inline vf vf_add(vf a, vf b) { return a + b; }
static inline vf vf_sub(vf a, vf b) { return a - b; }
static inline vf vf_mul(vf a, vf b) { return a * b; }
static inline vf vf_div(vf a, vf b) { return a / b; }
static inline vf vf_fma(vf a, vf b, vf c) { return a * b + c; }
static inline vf vf_max(vf a, vf b) { return a > b ? a : b; }
static inline float vf_hsum(vf v) { return v; }
static inline void vf_hsum4(vf a, vf b, vf c, vf d, float out[4]) { out[0] = a, out[1] = b, out[2] = c, out[3] = d; }
static inline float vf_hmax(vf v) { return v; }
static inline vf vf_load_f16(const uint16_t *p) { return el_fp16_to_fp32(*p); }
static inline void vf_store_f16(uint16_t *p, vf v) { *p = el_fp32_to_fp16(v); }
static inline vf vf_exp(vf x) { return expf(x); }

#endif

/* The scalar tail of every loop: the same formula one lane at a time. */
static inline float el_exp1(float x) { return expf(x); }

/* ---- rows ---- */

static inline void el_row_f16_to_f32(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + EL_VW <= n; i += EL_VW) vf_store(y + i, vf_load_f16(x + i));
    for (; i < n; i++) y[i] = el_fp16_to_fp32(x[i]);
}

static inline void el_row_f32_to_f16(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + EL_VW <= n; i += EL_VW) vf_store_f16(y + i, vf_load(x + i));
    for (; i < n; i++) y[i] = el_fp32_to_fp16(x[i]);
}

/* x rounded to f16 precision, in place */
static inline void el_row_round_f16(float *x, int64_t n) {
    uint16_t h[EL_VW];
    int64_t i = 0;
    for (; i + EL_VW <= n; i += EL_VW) {
        vf_store_f16(h, vf_load(x + i));
        vf_store(x + i, vf_load_f16(h));
    }
    for (; i < n; i++) x[i] = el_fp16_to_fp32(el_fp32_to_fp16(x[i]));
}

/* sum a[i] * b[i] in f32, 4 vector accumulators */
static inline float el_row_dot(const float *a, const float *b, int64_t n) {
    vf s0 = vf_set1(0), s1 = vf_set1(0), s2 = vf_set1(0), s3 = vf_set1(0);
    int64_t i = 0;
    for (; i + 4 * EL_VW <= n; i += 4 * EL_VW) {
        s0 = vf_fma(vf_load(a + i), vf_load(b + i), s0);
        s1 = vf_fma(vf_load(a + i + EL_VW), vf_load(b + i + EL_VW), s1);
        s2 = vf_fma(vf_load(a + i + 2 * EL_VW), vf_load(b + i + 2 * EL_VW), s2);
        s3 = vf_fma(vf_load(a + i + 3 * EL_VW), vf_load(b + i + 3 * EL_VW), s3);
    }
    for (; i + EL_VW <= n; i += EL_VW) s0 = vf_fma(vf_load(a + i), vf_load(b + i), s0);
    float s = vf_hsum(vf_add(vf_add(s0, s1), vf_add(s2, s3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* y += a * x */
static inline void el_row_axpy(float *y, float a, const float *x, int64_t n) {
    const vf va = vf_set1(a);
    int64_t i = 0;
    for (; i + EL_VW <= n; i += EL_VW) vf_store(y + i, vf_fma(va, vf_load(x + i), vf_load(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

/* y *= a */
static inline void el_row_scale(float *y, float a, int64_t n) {
    const vf va = vf_set1(a);
    int64_t i = 0;
    for (; i + EL_VW <= n; i += EL_VW) vf_store(y + i, vf_mul(va, vf_load(y + i)));
    for (; i < n; i++) y[i] *= a;
}

static inline float el_row_max(const float *x, int64_t n) {
    float m = -INFINITY;
    int64_t i = 0;
    if (n >= EL_VW) {
        vf vm = vf_load(x);
        for (i = EL_VW; i + EL_VW <= n; i += EL_VW) vm = vf_max(vm, vf_load(x + i));
        m = vf_hmax(vm);
    }
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* x = exp(x - max) in place; returns the sum */
static inline float el_row_exp_sum(float *x, float max, int64_t n) {
    const vf vm = vf_set1(max);
    vf s = vf_set1(0);
    int64_t i = 0;
    for (; i + EL_VW <= n; i += EL_VW) {
        const vf e = vf_exp(vf_sub(vf_load(x + i), vm));
        vf_store(x + i, e);
        s = vf_add(s, e);
    }
    float sum = vf_hsum(s);
    for (; i < n; i++) {
        x[i] = el_exp1(x[i] - max);
        sum += x[i];
    }
    return sum;
}

#endif /* EDGELLM_SIMD_H */
