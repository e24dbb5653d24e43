/* aarch64 NEON helpers shared by arch/arm/quants.c and gemm_tiles.c.
 *
 * The int8 dot product is the one instruction that differs between the two ARM variants:
 * ARMv8.2 dotprod has sdot (4 products per i32 lane), ARMv8.0 widens with smull and adds
 * pairs with sadalp. Either way each i32 lane sums 4 products of the same 16-byte vector,
 * so a scale per 16 elements applies to whole lanes. */
#pragma once

#include <arm_neon.h>
#include <string.h>

#include "../../quants.h"

#if !defined(__aarch64__) || !defined(__ARM_NEON)
#error "arch/arm needs aarch64 NEON"
#endif

/* acc + 4 lanes of sums of 4 products a * b (|a| <= 128, |b| <= 127) */
static inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    /* pairs of products fit 16 bits: 2 * 128 * 127 < 2^15 */
    int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    p = vmlal_high_s8(p, a, b);
    return vpadalq_s16(acc, p);
#endif
}

static inline float fp16(el_fp16_t h) {
    __fp16 f;
    memcpy(&f, &h, 2);
    return (float)f;
}

/* 16 bytes -> low nibbles (elements 0..15) and high nibbles (16..31), as s8 */
static inline void nibbles(const uint8_t *qs, int8x16_t *lo, int8x16_t *hi) {
    const uint8x16_t b = vld1q_u8(qs);
    *lo = vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F)));
    *hi = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
}

/* 0xFF in byte j where bit j of the little-endian u32 at p is set: elements 0..15, 16..31 */
static inline void bits_32(const uint8_t *p, uint8x16_t *b0, uint8x16_t *b1) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t m = vld1q_u8(bit);
    *b0 = vtstq_u8(vcombine_u8(vdup_n_u8(p[0]), vdup_n_u8(p[1])), m);
    *b1 = vtstq_u8(vcombine_u8(vdup_n_u8(p[2]), vdup_n_u8(p[3])), m);
}
