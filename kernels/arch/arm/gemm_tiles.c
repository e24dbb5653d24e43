/* aarch64 GEMM tiles over the packed forms of gemm.h: signed int8 weights (NEON multiplies
 * signed by signed), 4 rows x 4 tokens (dotprod) or 4 x 2 (ARMv8.0, whose dot16 needs
 * temporaries) of f32x4 accumulators.
 *
 * Per (row, token) and 32-element step: dot16 -> i32 lanes, to f32, times the row's lane
 * scales times the token's block scale. Types whose scales cover 32 elements (all but q2_K,
 * q3_K, q6_K) sum both 16-element halves into one i32 accumulator first.
 *
 * The dotprod variant keeps f16 weights in f16 and multiplies in fp16 (8 lanes per FMA),
 * flushing the fp16 partial sums into f32 every F16_SPAN elements, as llamafile does on the
 * Raspberry Pi 5.
 */
#include "neon.h"

#include "../../gemm.h"

#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 4")

#define RM 4
#if defined(__ARM_FEATURE_DOTPROD)
#define RN 4
#else
#define RN 2
#endif

#define STEP 32

const int el_gemm_rm = RM, el_gemm_rn = RN, el_gemm_rn_f = RN, el_gemm_step = STEP;

int el_gemm_wants_signed(int type) {
    (void)type;
    return 1;
}

const int el_gemm_reads_f16 = 0;

#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
const int el_gemm_float_is_f16 = 1;
#define F16_SPAN 128  /* 16 products per lane of the 8-lane accumulators */
#else
const int el_gemm_float_is_f16 = 0;
#endif

INLINE void tile_q(const el_wpack *w, const int nr, const el_xpack *x, int64_t t0, const int nt,
                   int64_t k, int has_mn, const int scale32, float *y, int64_t ldy) {
    float32x4_t acc[RM][RN];
    UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++) acc[i][j] = vdupq_n_f32(0);
    const int8_t *wq = w->q, *xq = (const int8_t *)x->q + t0 / RN * x->gq;
    const float *wl = w->ls, *xd = x->d + t0 / RN * x->gd;
    for (int64_t s = 0; s < k / STEP; s++, wq += RM * STEP, wl += RM * STEP / 4, xq += RN * STEP, xd += RN) {
        /* the hot loop of prefill */
        int8x16_t w0[RM], w1[RM];
        UNROLL for (int i = 0; i < nr; i++) {
            w0[i] = vld1q_s8(wq + i * STEP);
            w1[i] = vld1q_s8(wq + i * STEP + 16);
        }
        UNROLL for (int j = 0; j < nt; j++) {
            const int8x16_t x0 = vld1q_s8(xq + j * STEP), x1 = vld1q_s8(xq + j * STEP + 16);
            const float xs = xd[j];
            UNROLL for (int i = 0; i < nr; i++) {
                /* lane scales of the first and second 16 elements */
                const float32x4_t s0 = vmulq_n_f32(vld1q_f32(wl + i * STEP / 4), xs);
                if (scale32) {
                    const int32x4_t p = dot16(dot16(vdupq_n_s32(0), w0[i], x0), w1[i], x1);
                    acc[i][j] = vfmaq_f32(acc[i][j], vcvtq_f32_s32(p), s0);
                } else {
                    const float32x4_t s1 = vmulq_n_f32(vld1q_f32(wl + i * STEP / 4 + 4), xs);
                    acc[i][j] = vfmaq_f32(acc[i][j], vcvtq_f32_s32(dot16(vdupq_n_s32(0), w0[i], x0)), s0);
                    acc[i][j] = vfmaq_f32(acc[i][j], vcvtq_f32_s32(dot16(vdupq_n_s32(0), w1[i], x1)), s1);
                }
            }
        }
    }
    if (has_mn) {
        for (int64_t g = 0; g < k / 16; g += 4) {  /* k / 16 is even: k is a multiple of 32 */
            UNROLL for (int j = 0; j < nt; j++) {
                const float32x4_t s = vld1q_f32(x->s + (t0 + j) * x->lds + g);
                UNROLL for (int i = 0; i < nr; i++) {
                    if (g + 4 <= k / 16)
                        acc[i][j] = vfmaq_f32(acc[i][j], vld1q_f32(w->mn + i * w->ldm + g), s);
                    else  /* the last 2 groups */
                        acc[i][j] = vcombine_f32(vfma_f32(vget_low_f32(acc[i][j]), vld1_f32(w->mn + i * w->ldm + g),
                                                          vget_low_f32(s)), vget_high_f32(acc[i][j]));
                }
            }
        }
    }
    UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++)
        y[(t0 + j) * ldy + i] = vaddvq_f32(acc[i][j]);
}

INLINE void tile_f32(const el_wpack *w, const int nr, const el_xpack *x, int64_t t0, const int nt,
                     int64_t k, float *y, int64_t ldy) {
    float32x4_t acc[RM][RN];
    const float *wp[RM], *xp[RN];
    UNROLL for (int i = 0; i < nr; i++) wp[i] = (const float *)w->q + i * w->ldq;
    UNROLL for (int j = 0; j < nt; j++) xp[j] = (const float *)x->q + (t0 + j) * x->ldq;
    UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++) acc[i][j] = vdupq_n_f32(0);
    int64_t e = 0;
    for (; e + 4 <= k; e += 4) {
        float32x4_t wv[RM];
        UNROLL for (int i = 0; i < nr; i++) wv[i] = vld1q_f32(wp[i] + e);
        UNROLL for (int j = 0; j < nt; j++) {
            const float32x4_t xv = vld1q_f32(xp[j] + e);
            UNROLL for (int i = 0; i < nr; i++) acc[i][j] = vfmaq_f32(acc[i][j], wv[i], xv);
        }
    }
    UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++) {
        float s = vaddvq_f32(acc[i][j]);
        for (int64_t r = e; r < k; r++) s += wp[i][r] * xp[j][r];
        y[(t0 + j) * ldy + i] = s;
    }
}

#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
INLINE void tile_f16(const el_wpack *w, const int nr, const el_xpack *x, int64_t t0, const int nt,
                     int64_t k, float *y, int64_t ldy) {
    const uint16_t *wp[RM], *xp[RN];
    UNROLL for (int i = 0; i < nr; i++) wp[i] = (const uint16_t *)w->q + i * w->ldq;
    UNROLL for (int j = 0; j < nt; j++) xp[j] = (const uint16_t *)x->q + (t0 + j) * x->ldq;
    float tot[RM][RN];
    UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++) tot[i][j] = 0.0f;
    int64_t e = 0;
    while (e + 8 <= k) {
        float16x8_t acc[RM][RN];
        UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++) acc[i][j] = vdupq_n_f16(0);
        const int64_t end = e + F16_SPAN < k ? e + F16_SPAN : k;
        for (; e + 8 <= end; e += 8) {
            float16x8_t wv[RM];
            UNROLL for (int i = 0; i < nr; i++) wv[i] = vreinterpretq_f16_u16(vld1q_u16(wp[i] + e));
            UNROLL for (int j = 0; j < nt; j++) {
                const float16x8_t xv = vreinterpretq_f16_u16(vld1q_u16(xp[j] + e));
                UNROLL for (int i = 0; i < nr; i++) acc[i][j] = vfmaq_f16(acc[i][j], wv[i], xv);
            }
        }
        UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++)
            tot[i][j] += vaddvq_f32(vaddq_f32(vcvt_f32_f16(vget_low_f16(acc[i][j])), vcvt_high_f32_f16(acc[i][j])));
    }
    UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++) {
        float s = tot[i][j];
        for (int64_t r = e; r < k; r++) s += fp16(wp[i][r]) * fp16(xp[j][r]);
        y[(t0 + j) * ldy + i] = s;
    }
}
#endif

/* one function per (rows, tokens, scale granularity) shape */
typedef void (*tile_q_fn)(const el_wpack *, const el_xpack *, int64_t, int64_t, int, float *, int64_t);
typedef void (*tile_f_fn)(const el_wpack *, const el_xpack *, int64_t, int64_t, float *, int64_t);

#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
#define TILE_F16(m, n)                                                                               \
    static void th_##m##_##n(const el_wpack *w, const el_xpack *x, int64_t t0, int64_t k, float *y,  \
                             int64_t ldy) {                                                          \
        tile_f16(w, m, x, t0, n, k, y, ldy);                                                         \
    }
#else
#define TILE_F16(m, n)
#endif

#define SHAPE(m, n)                                                                                  \
    static void tq_##m##_##n##_32(const el_wpack *w, const el_xpack *x, int64_t t0, int64_t k,       \
                                  int has_mn, float *y, int64_t ldy) {                               \
        tile_q(w, m, x, t0, n, k, has_mn, 1, y, ldy);                                                \
    }                                                                                                \
    static void tq_##m##_##n##_16(const el_wpack *w, const el_xpack *x, int64_t t0, int64_t k,       \
                                  int has_mn, float *y, int64_t ldy) {                               \
        tile_q(w, m, x, t0, n, k, has_mn, 0, y, ldy);                                                \
    }                                                                                                \
    static void tf_##m##_##n(const el_wpack *w, const el_xpack *x, int64_t t0, int64_t k, float *y,  \
                             int64_t ldy) {                                                          \
        tile_f32(w, m, x, t0, n, k, y, ldy);                                                         \
    }                                                                                                \
    TILE_F16(m, n)

#if RN == 4
#define ROW(m) SHAPE(m, 1) SHAPE(m, 2) SHAPE(m, 3) SHAPE(m, 4)
#define ROW_OF(p, m, s) {p##m##_1##s, p##m##_2##s, p##m##_3##s, p##m##_4##s}
#else
#define ROW(m) SHAPE(m, 1) SHAPE(m, 2)
#define ROW_OF(p, m, s) {p##m##_1##s, p##m##_2##s}
#endif

ROW(1) ROW(2) ROW(3) ROW(4)

static const tile_q_fn tiles_32[RM][RN] = {ROW_OF(tq_, 1, _32), ROW_OF(tq_, 2, _32), ROW_OF(tq_, 3, _32),
                                           ROW_OF(tq_, 4, _32)};
static const tile_q_fn tiles_16[RM][RN] = {ROW_OF(tq_, 1, _16), ROW_OF(tq_, 2, _16), ROW_OF(tq_, 3, _16),
                                           ROW_OF(tq_, 4, _16)};
static const tile_f_fn tiles_f[RM][RN] = {ROW_OF(tf_, 1, ), ROW_OF(tf_, 2, ), ROW_OF(tf_, 3, ), ROW_OF(tf_, 4, )};
#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
static const tile_f_fn tiles_h[RM][RN] = {ROW_OF(th_, 1, ), ROW_OF(th_, 2, ), ROW_OF(th_, 3, ), ROW_OF(th_, 4, )};
#endif

void el_gemm_tile_q(const el_wpack *w, int nr, const el_xpack *x, int64_t t0, int nt, int64_t k,
                    int has_mn, int scale32, float *y, int64_t ldy) {
    (scale32 ? tiles_32 : tiles_16)[nr - 1][nt - 1](w, x, t0, k, has_mn, y, ldy);
}

void el_gemm_tile_f(const el_wpack *w, int nr, const el_xpack *x, int64_t t0, int nt, int64_t k,
                    float *y, int64_t ldy) {
#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
    if (w->is_f16) {
        tiles_h[nr - 1][nt - 1](w, x, t0, k, y, ldy);
        return;
    }
#endif
    tiles_f[nr - 1][nt - 1](w, x, t0, k, y, ldy);
}
