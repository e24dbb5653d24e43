/* aarch64 NEON dot products and activation quantizers, for the neon (ARMv8.0: Cortex-A72,
 * Raspberry Pi 4) and dotprod (ARMv8.2 + dotprod + fp16: Cortex-A76, Raspberry Pi 5)
 * variants. The int8 products go through dot16() (sdot, or smull + sadalp); f16 weights
 * multiply in native fp16 where the variant has it (see el_vec_dot_f16_f16).
 *
 * NEON multiplies signed by signed bytes, so every weight quant is unpacked to its signed
 * value (q4_0: nibble - 8, q6_K: q - 32, ...). Quantizers are bit-exact with the _ref ones:
 * vrndaq rounds half away from zero (roundf), vcvtnq half to even (nearest_int).
 */
#include <math.h>
#include <string.h>

#include "neon.h"
#include "quants-arch.h"

/* ======================================================================================
 * 32-element block formats
 * ====================================================================================== */

/* the fp16 scales d of 4 consecutive blocks of `size` bytes (d first), as f32 */
static inline float32x4_t scales_4(const void *blocks, size_t size) {
    uint64_t d = 0;
    for (int k = 0; k < 4; k++) {
        el_fp16_t h;
        memcpy(&h, (const uint8_t *)blocks + k * size, 2);
        d |= (uint64_t)h << (16 * k);
    }
    return vcvt_f32_f16(vreinterpret_f16_u64(vcreate_u64(d)));
}

/* lane k: the sum of p[k]'s lanes */
static inline int32x4_t sums_4(const int32x4_t p[4]) {
    return vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]));
}

/* The 32-element formats take four blocks a step: their int32 sums side by side (sums_4),
 * scaled by one vector of d products (scales_4). */

void el_vec_dot_q8_0_q8_0(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const block_q8_0 *restrict w = vw;
    const block_q8_0 *restrict x = vx;
    const int64_t nb = n / QK8_0;
    float32x4_t acc = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= nb; i += 4) {
        int32x4_t p[4];
        for (int k = 0; k < 4; k++)
            p[k] = dot16(dot16(vdupq_n_s32(0), vld1q_s8(w[i + k].qs), vld1q_s8(x[i + k].qs)),
                         vld1q_s8(w[i + k].qs + 16), vld1q_s8(x[i + k].qs + 16));
        const float32x4_t d = vmulq_f32(scales_4(&w[i], sizeof(block_q8_0)), scales_4(&x[i], sizeof(block_q8_0)));
        acc = vfmaq_f32(acc, vcvtq_f32_s32(sums_4(p)), d);
    }
    float sum = vaddvq_f32(acc);
    for (; i < nb; i++) {
        const int32x4_t p = dot16(dot16(vdupq_n_s32(0), vld1q_s8(w[i].qs), vld1q_s8(x[i].qs)),
                                  vld1q_s8(w[i].qs + 16), vld1q_s8(x[i].qs + 16));
        sum += (float)vaddvq_s32(p) * (fp16(w[i].d) * fp16(x[i].d));
    }
    *s = sum;
}

/* block b's 32 quants, signed (nibble - 8): elements 0..15 and 16..31 */
static inline void q4_0_quants(const block_q4_0 *b, int8x16_t *lo, int8x16_t *hi) {
    int8x16_t l, h;
    nibbles(b->qs, &l, &h);
    *lo = vsubq_s8(l, vdupq_n_s8(8));
    *hi = vsubq_s8(h, vdupq_n_s8(8));
}

void el_vec_dot_q4_0_q8_0(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const block_q4_0 *restrict w = vw;
    const block_q8_0 *restrict x = vx;
    const int64_t nb = n / QK8_0;
    float32x4_t acc = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= nb; i += 4) {
        int32x4_t p[4];
        for (int k = 0; k < 4; k++) {
            int8x16_t lo, hi;
            q4_0_quants(&w[i + k], &lo, &hi);
            p[k] = dot16(dot16(vdupq_n_s32(0), lo, vld1q_s8(x[i + k].qs)), hi, vld1q_s8(x[i + k].qs + 16));
        }
        const float32x4_t d = vmulq_f32(scales_4(&w[i], sizeof(block_q4_0)), scales_4(&x[i], sizeof(block_q8_0)));
        acc = vfmaq_f32(acc, vcvtq_f32_s32(sums_4(p)), d);
    }
    float sum = vaddvq_f32(acc);
    for (; i < nb; i++) {
        int8x16_t lo, hi;
        q4_0_quants(&w[i], &lo, &hi);
        const int32x4_t p = dot16(dot16(vdupq_n_s32(0), lo, vld1q_s8(x[i].qs)), hi, vld1q_s8(x[i].qs + 16));
        sum += (float)vaddvq_s32(p) * (fp16(w[i].d) * fp16(x[i].d));
    }
    *s = sum;
}

void el_vec_dot_q4_1_q8_1(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const block_q4_1 *restrict w = vw;
    const block_q8_1 *restrict x = vx;
    float32x4_t acc = vdupq_n_f32(0.0f);
    float summ = 0.0f;  /* the weights' mins times the activations' sums (q8_1's s) */
    for (int64_t i = 0; i < n / QK8_1; i++) {
        int8x16_t lo, hi;
        nibbles(w[i].qs, &lo, &hi);
        int32x4_t p = dot16(vdupq_n_s32(0), lo, vld1q_s8(x[i].qs));
        p = dot16(p, hi, vld1q_s8(x[i].qs + 16));
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(p), fp16(w[i].d) * fp16(x[i].d));
        summ += fp16(w[i].m) * fp16(x[i].s);
    }
    *s = vaddvq_f32(acc) + summ;
}

/* q5_0's fifth bits through a table, 8 bits to an entry: byte j of Q5_0_HIGH[b] is 0xF0 where
 * bit j of b is clear, 0 where it is set. The signed quant q - 16 is then nibble | that byte
 * (nibble - 16 = nibble | 0xF0 for a nibble < 16): one bit-select for the low nibbles and one
 * shift-right-and-add for the high ones (ggml looks its 5th bits up too, as 0x10 bytes that
 * it subtracts). */
#define Q5_B1(c, s, n) 0x##n##c, 0x##n##s
#define Q5_B2(c, s, n) Q5_B1(c, s, n##c), Q5_B1(c, s, n##s)
#define Q5_B3(c, s, n) Q5_B2(c, s, n##c), Q5_B2(c, s, n##s)
#define Q5_B4(c, s, n) Q5_B3(c, s, n##c), Q5_B3(c, s, n##s)
#define Q5_B5(c, s, n) Q5_B4(c, s, n##c), Q5_B4(c, s, n##s)
#define Q5_B6(c, s, n) Q5_B5(c, s, n##c), Q5_B5(c, s, n##s)
#define Q5_B7(c, s, n) Q5_B6(c, s, n##c), Q5_B6(c, s, n##s)
#define Q5_B8(c, s) Q5_B7(c, s, c), Q5_B7(c, s, s)
static const uint64_t Q5_0_HIGH[256] = {Q5_B8(F0, 00)};

/* block b's 32 quants, signed (q - 16): elements 0..15 and 16..31 */
static inline void q5_0_quants(const block_q5_0 *b, int8x16_t *lo, int8x16_t *hi) {
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    const uint8x16_t h0 = vcombine_u8(vld1_u8((const uint8_t *)&Q5_0_HIGH[qh & 0xFF]),
                                      vld1_u8((const uint8_t *)&Q5_0_HIGH[(qh >> 8) & 0xFF]));
    const uint8x16_t h1 = vcombine_u8(vld1_u8((const uint8_t *)&Q5_0_HIGH[(qh >> 16) & 0xFF]),
                                      vld1_u8((const uint8_t *)&Q5_0_HIGH[qh >> 24]));
    const uint8x16_t qs = vld1q_u8(b->qs);
    *lo = vreinterpretq_s8_u8(vbslq_u8(vdupq_n_u8(0x0F), qs, h0));
    *hi = vreinterpretq_s8_u8(vsraq_n_u8(h1, qs, 4));
}

void el_vec_dot_q5_0_q8_0(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const block_q5_0 *restrict w = vw;
    const block_q8_0 *restrict x = vx;
    const int64_t nb = n / QK8_0;
    float32x4_t acc = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= nb; i += 4) {
        int32x4_t p[4];
        for (int k = 0; k < 4; k++) {
            int8x16_t lo, hi;
            q5_0_quants(&w[i + k], &lo, &hi);
            p[k] = dot16(dot16(vdupq_n_s32(0), lo, vld1q_s8(x[i + k].qs)), hi, vld1q_s8(x[i + k].qs + 16));
        }
        const float32x4_t d = vmulq_f32(scales_4(&w[i], sizeof(block_q5_0)), scales_4(&x[i], sizeof(block_q8_0)));
        acc = vfmaq_f32(acc, vcvtq_f32_s32(sums_4(p)), d);
    }
    float sum = vaddvq_f32(acc);
    for (; i < nb; i++) {
        int8x16_t lo, hi;
        q5_0_quants(&w[i], &lo, &hi);
        const int32x4_t p = dot16(dot16(vdupq_n_s32(0), lo, vld1q_s8(x[i].qs)), hi, vld1q_s8(x[i].qs + 16));
        sum += (float)vaddvq_s32(p) * (fp16(w[i].d) * fp16(x[i].d));
    }
    *s = sum;
}

void el_vec_dot_q5_1_q8_1(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const block_q5_1 *restrict w = vw;
    const block_q8_1 *restrict x = vx;
    const uint8x16_t sixteen = vdupq_n_u8(16);
    float32x4_t acc = vdupq_n_f32(0.0f);
    float summ = 0.0f;
    for (int64_t i = 0; i < n / QK8_1; i++) {
        int8x16_t lo, hi;
        uint8x16_t b0, b1;
        nibbles(w[i].qs, &lo, &hi);
        bits_32(w[i].qh, &b0, &b1);
        lo = vorrq_s8(lo, vreinterpretq_s8_u8(vandq_u8(sixteen, b0)));
        hi = vorrq_s8(hi, vreinterpretq_s8_u8(vandq_u8(sixteen, b1)));
        int32x4_t p = dot16(vdupq_n_s32(0), lo, vld1q_s8(x[i].qs));
        p = dot16(p, hi, vld1q_s8(x[i].qs + 16));
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(p), fp16(w[i].d) * fp16(x[i].d));
        summ += fp16(w[i].m) * fp16(x[i].s);
    }
    *s = vaddvq_f32(acc) + summ;
}

/* acc + 4 lanes, lane l the sum of the products of bytes 4l .. 4l + 3 (dot16's lanes mix
 * bytes without dotprod) */
static inline int32x4_t dot_lanes4(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    /* pairs of products fit 16 bits: |a| <= 31 here, 2 * 31 * 127 < 2^15 */
    return vpadalq_s16(acc, vpaddq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)), vmull_high_s8(a, b)));
#endif
}

/* Rows interleaved eight at a time (block_q4_0x8, block_q5_0x8): 16 bytes of a chunk are
 * four rows' 4 bytes, one row per i32 lane, so dot_lanes4 with the 4 activation bytes
 * broadcast gives each row's sum. The quants go in as they are (0..31, signed bytes all the
 * same), and xc takes their bias back out. q5_0's fifth bits: bit k of each qh byte, for
 * vector k (chunk k / 2's low or high nibbles), moved to bit 4. */
static inline int8x16_t x8_quants(uint8x16_t chunk, const uint8x16_t *qh, int k) {
    uint8x16_t q = k % 2 ? vshrq_n_u8(chunk, 4) : vandq_u8(chunk, vdupq_n_u8(0x0F));
    if (qh) {
        const uint8x16_t bit = vandq_u8(*qh, vdupq_n_u8((uint8_t)(1u << k)));
        q = vorrq_u8(q, vshlq_u8(bit, vdupq_n_s8((int8_t)(4 - k))));  /* a negative count shifts right */
    }
    return vreinterpretq_s8_u8(q);
}

static inline __attribute__((always_inline)) void gemv_x8(int five, const void *w, int64_t n_groups, int64_t nb,
                                                         const block_q8_0 *x, const float *xd, const int32_t *xc,
                                                         float *y) {
    const size_t bsize = five ? sizeof(block_q5_0x8) : sizeof(block_q4_0x8);
    const size_t qs_at = five ? offsetof(block_q5_0x8, qs) : offsetof(block_q4_0x8, qs);
    for (int64_t g = 0; g < n_groups; g++) {
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;  /* rows 0..3, 4..7 */
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = (const uint8_t *)w + (g * nb + b) * bsize;
            const int32x4_t xlo = vreinterpretq_s32_s8(vld1q_s8(x[b].qs));
            const int32x4_t xhi = vreinterpretq_s32_s8(vld1q_s8(x[b].qs + 16));
            uint8x16_t qh[2];  /* rows 0..3, 4..7 */
            if (five) qh[0] = vld1q_u8(blk + offsetof(block_q5_0x8, qh)), qh[1] = vld1q_u8(blk + offsetof(block_q5_0x8, qh) + 16);
            int32x4_t s[2] = {vdupq_n_s32(xc[b]), vdupq_n_s32(xc[b])};
#define CHUNK(j)                                                                                    \
    for (int r = 0; r < 2; r++) {                                                                   \
        const uint8x16_t v = vld1q_u8(blk + qs_at + 32 * (j) + 16 * r);                             \
        s[r] = dot_lanes4(s[r], x8_quants(v, five ? &qh[r] : NULL, 2 * (j)),                        \
                          vreinterpretq_s8_s32(vdupq_laneq_s32(xlo, j)));                           \
        s[r] = dot_lanes4(s[r], x8_quants(v, five ? &qh[r] : NULL, 2 * (j) + 1),                    \
                          vreinterpretq_s8_s32(vdupq_laneq_s32(xhi, j)));                           \
    }
            CHUNK(0)
            CHUNK(1)
            CHUNK(2)
            CHUNK(3)
#undef CHUNK
            const float16x8_t d16 = vreinterpretq_f16_u16(vld1q_u16((const uint16_t *)blk));
            acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(s[0]), vmulq_n_f32(vcvt_f32_f16(vget_low_f16(d16)), xd[b]));
            acc1 = vfmaq_f32(acc1, vcvtq_f32_s32(s[1]), vmulq_n_f32(vcvt_high_f32_f16(d16), xd[b]));
        }
        vst1q_f32(y + 8 * g, acc0);
        vst1q_f32(y + 8 * g + 4, acc1);
    }
}

void el_gemv_q4_0x8(const void *w, int64_t n_groups, int64_t nb, const block_q8_0 *x, const float *xd,
                    const int32_t *xc, float *y) {
    gemv_x8(0, w, n_groups, nb, x, xd, xc, y);
}

void el_gemv_q5_0x8(const void *w, int64_t n_groups, int64_t nb, const block_q8_0 *x, const float *xd,
                    const int32_t *xc, float *y) {
    gemv_x8(1, w, n_groups, nb, x, xd, xc, y);
}

/* ======================================================================================
 * k-quants: per sub-block int32 dot, scaled by the integer sub-block scale in int32
 * ====================================================================================== */

/* q4_K / q5_K's 8 six-bit scales and 8 mins (el_get_scale_min_k4, four at a time) */
static inline void scales_mins_k4(const uint8_t *q, uint8_t sc[8], uint8_t m[8]) {
    uint32_t a[3];
    memcpy(a, q, 12);
    const uint32_t k6 = 0x3f3f3f3f, k4 = 0x0f0f0f0f, k2 = 0x03030303;
    const uint32_t s[2] = {a[0] & k6, (a[2] & k4) | (((a[0] >> 6) & k2) << 4)};
    const uint32_t mm[2] = {a[1] & k6, ((a[2] >> 4) & k4) | (((a[1] >> 6) & k2) << 4)};
    memcpy(sc, s, 8);
    memcpy(m, mm, 8);
}

/* sum_j m[j] * (bsums[2j] + bsums[2j+1]) */
static inline int32_t mins_dot_bsums(const uint8_t m[8], const int16_t *bsums) {
    const int16x8_t pairs = vpaddq_s16(vld1q_s16(bsums), vld1q_s16(bsums + 8));
    const int16x8_t mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(m)));
    return vaddvq_s32(vmlal_high_s16(vmull_s16(vget_low_s16(mins), vget_low_s16(pairs)), mins, pairs));
}

void el_vec_dot_q4_K_q8_K(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const block_q4_K *restrict w = vw;
    const block_q8_K *restrict x = vx;
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8_t sc[8], m[8];
        scales_mins_k4(w[i].scales, sc, m);
        const float d = fp16(w[i].d) * x[i].d, dmin = fp16(w[i].dmin) * x[i].d;
        const uint8_t *q4 = w[i].qs;
        const int8_t *q8 = x[i].qs;
        int32x4_t isum = vdupq_n_s32(0);
        for (int j = 0; j < 4; j++, q4 += 32, q8 += 64) {
            const uint8x16_t b0 = vld1q_u8(q4), b1 = vld1q_u8(q4 + 16);
            int32x4_t p = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(vandq_u8(b0, m4)), vld1q_s8(q8));
            p = dot16(p, vreinterpretq_s8_u8(vandq_u8(b1, m4)), vld1q_s8(q8 + 16));
            isum = vmlaq_n_s32(isum, p, sc[2 * j]);
            p = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(vshrq_n_u8(b0, 4)), vld1q_s8(q8 + 32));
            p = dot16(p, vreinterpretq_s8_u8(vshrq_n_u8(b1, 4)), vld1q_s8(q8 + 48));
            isum = vmlaq_n_s32(isum, p, sc[2 * j + 1]);
        }
        sum += d * (float)vaddvq_s32(isum) - dmin * (float)mins_dot_bsums(m, x[i].bsums);
    }
    *s = sum;
}

void el_vec_dot_q5_K_q8_K(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const block_q5_K *restrict w = vw;
    const block_q8_K *restrict x = vx;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), b4 = vdupq_n_u8(0x10);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8_t sc[8], m[8];
        scales_mins_k4(w[i].scales, sc, m);
        const float d = fp16(w[i].d) * x[i].d, dmin = fp16(w[i].dmin) * x[i].d;
        const uint8_t *q5 = w[i].qs;
        const int8_t *q8 = x[i].qs;
        const uint8x16_t h0 = vld1q_u8(w[i].qh), h1 = vld1q_u8(w[i].qh + 16);
        int32x4_t isum = vdupq_n_s32(0);
        for (int j = 0; j < 4; j++, q5 += 32, q8 += 64) {
            const uint8x16_t b0 = vld1q_u8(q5), b1 = vld1q_u8(q5 + 16);
            /* 32-chunk c = 2j + k takes bit c of qh[l] as its 5th bit */
            const uint8x16_t mlo = vdupq_n_u8((uint8_t)(1 << (2 * j))), mhi = vdupq_n_u8((uint8_t)(2 << (2 * j)));
            const uint8x16_t l0 = vorrq_u8(vandq_u8(b0, m4), vandq_u8(vtstq_u8(h0, mlo), b4));
            const uint8x16_t l1 = vorrq_u8(vandq_u8(b1, m4), vandq_u8(vtstq_u8(h1, mlo), b4));
            const uint8x16_t u0 = vorrq_u8(vshrq_n_u8(b0, 4), vandq_u8(vtstq_u8(h0, mhi), b4));
            const uint8x16_t u1 = vorrq_u8(vshrq_n_u8(b1, 4), vandq_u8(vtstq_u8(h1, mhi), b4));
            int32x4_t p = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(l0), vld1q_s8(q8));
            p = dot16(p, vreinterpretq_s8_u8(l1), vld1q_s8(q8 + 16));
            isum = vmlaq_n_s32(isum, p, sc[2 * j]);
            p = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(u0), vld1q_s8(q8 + 32));
            p = dot16(p, vreinterpretq_s8_u8(u1), vld1q_s8(q8 + 48));
            isum = vmlaq_n_s32(isum, p, sc[2 * j + 1]);
        }
        sum += d * (float)vaddvq_s32(isum) - dmin * (float)mins_dot_bsums(m, x[i].bsums);
    }
    *s = sum;
}

void el_vec_dot_q6_K_q8_K(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const block_q6_K *restrict w = vw;
    const block_q8_K *restrict x = vx;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m2 = vdupq_n_u8(0x30);
    const int8x16_t off = vdupq_n_s8(32);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *ql = w[i].ql, *qh = w[i].qh;
        const int8_t *sc = w[i].scales, *q8 = x[i].qs;
        int32x4_t isum = vdupq_n_s32(0);
        for (int half = 0; half < 2; half++, ql += 64, qh += 32, q8 += 128, sc += 8) {
            for (int h = 0; h < 2; h++) {  /* the two 16-byte halves of each 32 */
                const uint8x16_t hb = vld1q_u8(qh + 16 * h);
                const uint8x16_t l0 = vld1q_u8(ql + 16 * h), l1 = vld1q_u8(ql + 32 + 16 * h);
                /* element 16h + l of each 32-chunk k of this half; signed: q - 32 */
                const int8x16_t q[4] = {
                    vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(l0, m4), vandq_u8(vshlq_n_u8(hb, 4), m2))), off),
                    vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(l1, m4), vandq_u8(vshlq_n_u8(hb, 2), m2))), off),
                    vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(hb, m2))), off),
                    vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(vshrq_n_u8(hb, 2), m2))), off),
                };
                for (int k = 0; k < 4; k++) {
                    const int32x4_t p = dot16(vdupq_n_s32(0), q[k], vld1q_s8(q8 + 32 * k + 16 * h));
                    isum = vmlaq_n_s32(isum, p, sc[2 * k + h]);  /* sub-block of 16: 2k + h */
                }
            }
        }
        sum += fp16(w[i].d) * x[i].d * (float)vaddvq_s32(isum);
    }
    *s = sum;
}

/* ======================================================================================
 * float formats
 * ====================================================================================== */

void el_vec_dot_f32_f32(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const float *w = vw, *x = vx;
    float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = vfmaq_f32(a0, vld1q_f32(w + i), vld1q_f32(x + i));
        a1 = vfmaq_f32(a1, vld1q_f32(w + i + 4), vld1q_f32(x + i + 4));
        a2 = vfmaq_f32(a2, vld1q_f32(w + i + 8), vld1q_f32(x + i + 8));
        a3 = vfmaq_f32(a3, vld1q_f32(w + i + 12), vld1q_f32(x + i + 12));
    }
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) sum += w[i] * x[i];
    *s = sum;
}

static inline float16x8_t load_f16x8(const el_fp16_t *p) { return vreinterpretq_f16_u16(vld1q_u16(p)); }

#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
/* fp16 products accumulate in fp16, as llama.cpp does on these cores: 8 vectors of 8 lanes,
 * each lane summing 8 products per F16_SPAN elements; the 8 vectors are then added in fp16 (a
 * tree of 3) and the result flushed into f32. A flushed lane has been rounded at most 8 + 3
 * times, so the error stays below 11 * 2^-11 of the sum of |products| instead of growing with
 * n (llama.cpp converts once at the end of the row), and converting one vector a span instead
 * of eight keeps fcvtl, a single-pipe instruction, off the critical path. */
#define F16_SPAN 512

static inline float32x4_t flush_f16(float32x4_t sum, float16x8_t a) {
    return vaddq_f32(vaddq_f32(sum, vcvt_f32_f16(vget_low_f16(a))), vcvt_high_f32_f16(a));
}

/* sum + the fp16 dot of `len` elements (a multiple of 64, at most F16_SPAN); the hot loop of an
 * f16 decode */
static inline __attribute__((always_inline)) float32x4_t dot_f16_span(float32x4_t sum, const el_fp16_t *w,
                                                                       const el_fp16_t *x, int64_t len) {
    float16x8_t a[8];  /* the first products start the sums (as an FMA onto 0 would round them) */
    for (int k = 0; k < 8; k++) a[k] = vmulq_f16(load_f16x8(w + 8 * k), load_f16x8(x + 8 * k));
    for (int64_t i = 64; i < len; i += 64)
        for (int k = 0; k < 8; k++) a[k] = vfmaq_f16(a[k], load_f16x8(w + i + 8 * k), load_f16x8(x + i + 8 * k));
    for (int k = 0; k < 4; k++) a[k] = vaddq_f16(a[k], a[k + 4]);
    a[0] = vaddq_f16(vaddq_f16(a[0], a[2]), vaddq_f16(a[1], a[3]));
    return flush_f16(sum, a[0]);
}

void el_vec_dot_f16_f16(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const el_fp16_t *w = vw, *x = vx;
    float32x4_t sum = vdupq_n_f32(0);
    int64_t i = 0;
    for (; i + F16_SPAN <= n; i += F16_SPAN) sum = dot_f16_span(sum, w + i, x + i, F16_SPAN);
    if (i + 64 <= n) {
        const int64_t len = (n - i) & ~(int64_t)63;
        sum = dot_f16_span(sum, w + i, x + i, len);
        i += len;
    }
    float r = vaddvq_f32(sum);
    for (; i < n; i++) r += fp16(w[i]) * fp16(x[i]);
    *s = r;
}
#else
/* 4 f16 at p as f32 */
static inline float32x4_t load_f16x4_f32(const el_fp16_t *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

void el_vec_dot_f16_f16(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const el_fp16_t *w = vw, *x = vx;
    float r = 0.0f;
    int64_t i = 0;
    if (n >= 16) {
        /* the first products start the sums (as an FMA onto 0 would round them) */
        float32x4_t a[4];
        for (int k = 0; k < 4; k++) a[k] = vmulq_f32(load_f16x4_f32(w + 4 * k), load_f16x4_f32(x + 4 * k));
        for (i = 16; i + 16 <= n; i += 16)
            for (int k = 0; k < 4; k++) a[k] = vfmaq_f32(a[k], load_f16x4_f32(w + i + 4 * k), load_f16x4_f32(x + i + 4 * k));
        r = vaddvq_f32(vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3])));
    }
    for (; i < n; i++) r += fp16(w[i]) * fp16(x[i]);
    *s = r;
}
#endif

static inline float32x4_t bf16_lo(uint16x8_t v) { return vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v), 16)); }
static inline float32x4_t bf16_hi(uint16x8_t v) { return vreinterpretq_f32_u32(vshll_high_n_u16(v, 16)); }

void el_vec_dot_bf16_bf16(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const el_bf16_t *w = vw, *x = vx;
    float32x4_t a0 = vdupq_n_f32(0), a1 = a0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint16x8_t wv = vld1q_u16(w + i), xv = vld1q_u16(x + i);
        a0 = vfmaq_f32(a0, bf16_lo(wv), bf16_lo(xv));
        a1 = vfmaq_f32(a1, bf16_hi(wv), bf16_hi(xv));
    }
    float r = vaddvq_f32(vaddq_f32(a0, a1));
    for (; i < n; i++) r += el_bf16_to_fp32(w[i]) * el_bf16_to_fp32(x[i]);
    *s = r;
}

void el_f16_to_f32(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i))));
    for (; i < n; i++) y[i] = el_fp16_to_fp32(x[i]);
}

void el_quantize_row_f16(const float *restrict x, void *restrict vy, int64_t n) {
    el_fp16_t *y = vy;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1_u16(y + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
    for (; i < n; i++) y[i] = el_fp32_to_fp16(x[i]);
}

/* ======================================================================================
 * activation quantizers, bit-exact with quants.c's (from_float_act_ref)
 * ====================================================================================== */

static inline float absmax32(const float *x) {
    float32x4_t m = vabsq_f32(vld1q_f32(x));
    for (int j = 4; j < 32; j += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + j)));
    return vmaxvq_f32(m);
}

/* 8 x int32x4 (elements 0..31 in order, all in [-128, 127]) -> 32 bytes; returns their sum */
static inline int32_t store_i8_32(const int32x4_t q[8], int8_t *out) {
    for (int k = 0; k < 2; k++) {
        const int16x8_t a = vcombine_s16(vmovn_s32(q[4 * k]), vmovn_s32(q[4 * k + 1]));
        const int16x8_t b = vcombine_s16(vmovn_s32(q[4 * k + 2]), vmovn_s32(q[4 * k + 3]));
        vst1q_s8(out + 16 * k, vcombine_s8(vmovn_s16(a), vmovn_s16(b)));
    }
    int32x4_t s = vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3]));
    s = vaddq_s32(s, vaddq_s32(vaddq_s32(q[4], q[5]), vaddq_s32(q[6], q[7])));
    return vaddvq_s32(s);
}

/* one 32-element block of q8_0 / q8_1: quants, returns their sum */
static inline int32_t quantize_block_32(const float *x, float id, int8_t *qs) {
    int32x4_t q[8];
    for (int k = 0; k < 8; k++)  /* vcvtnq: to nearest, ties to even */
        q[k] = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + 4 * k), id));
    return store_i8_32(q, qs);
}

void el_quantize_row_q8_0(const float *restrict x, void *restrict vy, int64_t n) {
    block_q8_0 *restrict y = vy;
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        const float amax = absmax32(x), d = amax / 127;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;  /* quants.c: *_act_ref */
        y[i].d = el_fp32_to_fp16(d);
        quantize_block_32(x, id, y[i].qs);
    }
}

void el_quantize_row_q8_1(const float *restrict x, void *restrict vy, int64_t n) {
    block_q8_1 *restrict y = vy;
    for (int64_t i = 0; i < n / QK8_1; i++, x += QK8_1) {
        const float amax = absmax32(x), d = amax / 127;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;  /* quants.c: *_act_ref */
        y[i].d = el_fp32_to_fp16(d);
        const int32_t sum = quantize_block_32(x, id, y[i].qs);
        y[i].s = el_fp32_to_fp16(sum * d);
    }
}

void el_quantize_row_q8_K(const float *restrict x, void *restrict vy, int64_t n) {
    block_q8_K *restrict y = vy;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float amax = 0.0f;
        for (int j = 0; j < QK_K; j += 32) amax = fmaxf(amax, absmax32(x + j));
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        /* the element of largest magnitude, signed: the first one, as the reference */
        float max = 0.0f;
        for (int j = 0; j < QK_K; j++)
            if (fabsf(x[j]) == amax) {
                max = x[j];
                break;
            }
        const float iscale = -127.f / max;
        const int32x4_t top = vdupq_n_s32(127);
        for (int j = 0; j < QK_K; j += 32) {
            int32x4_t q[8];
            for (int k = 0; k < 8; k++)  /* vcvtnq: to nearest, ties to even, as nearest_int */
                q[k] = vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + j + 4 * k), iscale)), top);
            store_i8_32(q, y[i].qs + j);
            y[i].bsums[j / 16] = (int16_t)vaddvq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])));
            y[i].bsums[j / 16 + 1] = (int16_t)vaddvq_s32(vaddq_s32(vaddq_s32(q[4], q[5]), vaddq_s32(q[6], q[7])));
        }
        y[i].d = 1 / iscale;
    }
}
