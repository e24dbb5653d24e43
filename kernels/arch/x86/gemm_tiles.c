/* x86-64 GEMM tiles over the packed forms of gemm.h.
 *
 * AVX-512 variants: 4 rows x 4 tokens of 512-bit accumulators, 64 elements (two 32-element
 * scale groups) per step; vpdpbusd with VNNI, else vpmaddubsw + vpmaddwd. AVX2: 4 x 2 tiles
 * of 256-bit accumulators (16 registers), 32 elements per step; its float tiles take 4 x 3.
 *
 * Per (row, token) and step: int8 dot -> i32 lanes (4 elements each), to f32, times the
 * row's lane scales times the token's block scale, accumulated in f32. Weights come unsigned
 * (quant + bias, the bias folded into the min term) except q8_0 without VNNI, whose full
 * 8-bit range would saturate vpmaddubsw's 16-bit pair sums: it stays signed and takes the sign
 * trick (|w| times x with w's sign). On AVX2 q4_0 and q5_0 stay signed too: each lane's
 * integer sum, and so the product, is then llama.cpp's (tinyBLAS) bit for bit, where the
 * min term would round differently (Zen 3, 512 tokens x 640 -> 2048 q5_0: 8.5 -> 9.4 ms).
 *
 * Every (rows, tokens) shape up to the tile is its own function, generated from one
 * always-inline body with constant loop bounds, so the accumulators live in registers.
 */
#include <immintrin.h>

#include "../../gemm.h"
#include "../../quants.h"

#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 4")

#if defined(__AVX512VNNI__)
#define HAVE_VNNI 1
#else
#define HAVE_VNNI 0
#endif

int el_gemm_wants_signed(int type) {
#if defined(__AVX512F__)
    return !HAVE_VNNI && type == EL_TYPE_Q8_0;
#else
    /* AVX2: q4_0 and q5_0 signed too, so each lane's integer sum is llama.cpp's (tinyBLAS
     * takes them signed) and a product is bit for bit its prefill's */
    return type == EL_TYPE_Q8_0 || type == EL_TYPE_Q4_0 || type == EL_TYPE_Q5_0;
#endif
}

const int el_gemm_float_is_f16 = 0;

#if defined(__AVX512F__) && defined(__AVX512BW__)

#define RM 4
#define RN 4
#define RN_F 4
#define STEP 64

const int el_gemm_reads_f16 = 0;

INLINE __m512i dot_u8s8(__m512i a, __m512i b) {
#if HAVE_VNNI
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), a, b);
#else
    return _mm512_madd_epi16(_mm512_maddubs_epi16(a, b), _mm512_set1_epi16(1));
#endif
}

INLINE void tile_q(const el_wpack *w, const int nr, const el_xpack *x, int64_t t0, const int nt,
                   int64_t k, int has_mn, const int is_signed, float *y, int64_t ldy) {
    __m512 acc[RM][RN];
    UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++) acc[i][j] = _mm512_setzero_ps();
    const __m512i d_idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const int8_t *wq = w->q, *xq = (const int8_t *)x->q + t0 / RN * x->gq;
    const float *wl = w->ls, *xd = x->d + t0 / RN * x->gd;
    const int64_t steps = (k + STEP - 1) / STEP;  /* the packing pads k with zeros */
    for (int64_t s = 0; s < steps; s++, wq += RM * STEP, wl += RM * STEP / 4, xq += RN * STEP, xd += RN * 2) {
        /* the hot loop of prefill */
        __m512i wv[RM];
        __m512 ws[RM];
        __mmask64 wneg[RM];
        UNROLL for (int i = 0; i < nr; i++) {
            const __m512i q = _mm512_loadu_si512(wq + i * STEP);
            wv[i] = is_signed ? _mm512_abs_epi8(q) : q;
            wneg[i] = is_signed ? _mm512_movepi8_mask(q) : 0;
            ws[i] = _mm512_loadu_ps(wl + i * STEP / 4);
        }
        UNROLL for (int j = 0; j < nt; j++) {
            const __m512i xv = _mm512_loadu_si512(xq + j * STEP);
            /* [d of the first 32] x 8, [d of the second 32] x 8 */
            const __m512 xs = _mm512_permutexvar_ps(d_idx, _mm512_castps128_ps512(
                                  _mm_castpd_ps(_mm_load_sd((const double *)(xd + 2 * j)))));
            UNROLL for (int i = 0; i < nr; i++) {
                /* the sign trick: x negated where w < 0 */
                const __m512i xi = is_signed ? _mm512_mask_sub_epi8(xv, wneg[i], _mm512_setzero_si512(), xv) : xv;
                const __m512 p = _mm512_cvtepi32_ps(dot_u8s8(wv[i], xi));
                acc[i][j] = _mm512_fmadd_ps(p, _mm512_mul_ps(ws[i], xs), acc[i][j]);
            }
        }
    }
    if (has_mn) {
        const int64_t ng = k / 16;  /* 16-element groups */
        for (int64_t g = 0; g < ng; g += 16) {
            const __mmask16 m = g + 16 <= ng ? 0xFFFF : (__mmask16)((1u << (ng - g)) - 1);
            UNROLL for (int j = 0; j < nt; j++) {
                const __m512 s = _mm512_maskz_loadu_ps(m, x->s + (t0 + j) * x->lds + g);
                UNROLL for (int i = 0; i < nr; i++)
                    acc[i][j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w->mn + i * w->ldm + g), s, acc[i][j]);
            }
        }
    }
    UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++)
        y[(t0 + j) * ldy + i] = _mm512_reduce_add_ps(acc[i][j]);
}

INLINE void tile_f(const el_wpack *w, const int nr, const el_xpack *x, int64_t t0, const int nt,
                   int64_t k, float *y, int64_t ldy) {
    __m512 acc[RM][RN];
    const float *wp[RM], *xp[RN];
    UNROLL for (int i = 0; i < nr; i++) wp[i] = (const float *)w->q + i * w->ldq;
    UNROLL for (int j = 0; j < nt; j++) xp[j] = (const float *)x->q + (t0 + j) * x->ldq;
    UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++) acc[i][j] = _mm512_setzero_ps();
    int64_t e = 0;
    for (; e + 16 <= k; e += 16) {  /* the hot loop of float prefill */
        __m512 wv[RM];
        UNROLL for (int i = 0; i < nr; i++) wv[i] = _mm512_loadu_ps(wp[i] + e);
        UNROLL for (int j = 0; j < nt; j++) {
            const __m512 xv = _mm512_loadu_ps(xp[j] + e);
            UNROLL for (int i = 0; i < nr; i++) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    if (e < k) {
        const __mmask16 m = (__mmask16)((1u << (k - e)) - 1);
        __m512 wv[RM];
        UNROLL for (int i = 0; i < nr; i++) wv[i] = _mm512_maskz_loadu_ps(m, wp[i] + e);
        UNROLL for (int j = 0; j < nt; j++) {
            const __m512 xv = _mm512_maskz_loadu_ps(m, xp[j] + e);
            UNROLL for (int i = 0; i < nr; i++) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++)
        y[(t0 + j) * ldy + i] = _mm512_reduce_add_ps(acc[i][j]);
}

#else /* AVX2 */

#define RM 4
#define RN 2
#define RN_F 3  /* float tiles: 12 accumulators, 7 loads per 12 FMAs (4 x 2 took 6 per 8) */
#define STEP 32

/* f16 weights are read in place, 8 per vcvtph2ps (no f32 copy of every row for every block
 * of tokens; that unpacking took a tenth of F16 prefill) */
const int el_gemm_reads_f16 = 1;

INLINE __m256i dot_u8s8(__m256i a, __m256i b) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
}

INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE void tile_q(const el_wpack *w, const int nr, const el_xpack *x, int64_t t0, const int nt,
                   int64_t k, int has_mn, const int is_signed, float *y, int64_t ldy) {
    __m256 acc[RM][RN];
    UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++) acc[i][j] = _mm256_setzero_ps();
    const int8_t *wq = w->q, *xq = (const int8_t *)x->q + t0 / RN * x->gq;
    const float *wl = w->ls, *xd = x->d + t0 / RN * x->gd;
    for (int64_t s = 0; s < k / STEP; s++, wq += RM * STEP, wl += RM * STEP / 4, xq += RN * STEP, xd += RN) {
        /* the hot loop of prefill */
        __m256i wv[RM];
        UNROLL for (int i = 0; i < nr; i++) wv[i] = _mm256_loadu_si256((const __m256i *)(wq + i * STEP));
        UNROLL for (int j = 0; j < nt; j++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + j * STEP));
            const __m256 xs = _mm256_broadcast_ss(xd + j);
            UNROLL for (int i = 0; i < nr; i++) {
                const __m256i d = is_signed ? dot_u8s8(_mm256_abs_epi8(wv[i]), _mm256_sign_epi8(xv, wv[i]))
                                            : dot_u8s8(wv[i], xv);
                const __m256 ws = _mm256_loadu_ps(wl + i * STEP / 4);
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(ws, xs), acc[i][j]);
            }
        }
    }
    if (has_mn) {
        const int64_t ng = k / 16;
        int64_t g = 0;
        for (; g + 8 <= ng; g += 8) {
            UNROLL for (int j = 0; j < nt; j++) {
                const __m256 s = _mm256_loadu_ps(x->s + (t0 + j) * x->lds + g);
                UNROLL for (int i = 0; i < nr; i++)
                    acc[i][j] = _mm256_fmadd_ps(_mm256_loadu_ps(w->mn + i * w->ldm + g), s, acc[i][j]);
            }
        }
        float tail[RM][RN] = {{0}};
        for (; g < ng; g++)
            UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++)
                tail[i][j] += w->mn[i * w->ldm + g] * x->s[(t0 + j) * x->lds + g];
        UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++)
            acc[i][j] = _mm256_add_ps(acc[i][j], _mm256_setr_ps(tail[i][j], 0, 0, 0, 0, 0, 0, 0));
    }
    UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++)
        y[(t0 + j) * ldy + i] = hsum256(acc[i][j]);
}

/* 8 weights of a float row from element e: f32, or f16 converted as loaded */
INLINE __m256 load_w(const void *row, int64_t e, const int f16) {
    return f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + e)))
               : _mm256_loadu_ps((const float *)row + e);
}

INLINE void tile_fw(const el_wpack *w, const int nr, const el_xpack *x, int64_t t0, const int nt,
                    int64_t k, const int f16, float *y, int64_t ldy) {
    __m256 acc[RM][RN_F];
    const char *wp[RM];
    const float *xp[RN_F];
    const size_t w_row = (size_t)w->ldq * (f16 ? 2 : 4);
    UNROLL for (int i = 0; i < nr; i++) wp[i] = (const char *)w->q + i * w_row;
    UNROLL for (int j = 0; j < nt; j++) xp[j] = (const float *)x->q + (t0 + j) * x->ldq;
    UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++) acc[i][j] = _mm256_setzero_ps();
    int64_t e = 0;
    for (; e + 8 <= k; e += 8) {
        /* the tokens stay in registers, each row's weights are loaded once and used nt times */
        __m256 xv[RN_F];
        UNROLL for (int j = 0; j < nt; j++) xv[j] = _mm256_loadu_ps(xp[j] + e);
        UNROLL for (int i = 0; i < nr; i++) {
            const __m256 wv = load_w(wp[i], e, f16);
            UNROLL for (int j = 0; j < nt; j++) acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
        }
    }
    UNROLL for (int i = 0; i < nr; i++) UNROLL for (int j = 0; j < nt; j++) {
        float s = hsum256(acc[i][j]);
        for (int64_t r = e; r < k; r++)
            s += (f16 ? el_fp16_to_fp32(((const uint16_t *)wp[i])[r]) : ((const float *)wp[i])[r]) * xp[j][r];
        y[(t0 + j) * ldy + i] = s;
    }
}

/* f32 weights / f16 weights read in place (w->is_f16) */
INLINE void tile_f(const el_wpack *w, const int nr, const el_xpack *x, int64_t t0, const int nt,
                   int64_t k, float *y, int64_t ldy) {
    tile_fw(w, nr, x, t0, nt, k, 0, y, ldy);
}
INLINE void tile_h(const el_wpack *w, const int nr, const el_xpack *x, int64_t t0, const int nt,
                   int64_t k, float *y, int64_t ldy) {
    tile_fw(w, nr, x, t0, nt, k, 1, y, ldy);
}
#define READS_F16 1

#endif

const int el_gemm_rm = RM, el_gemm_rn = RN, el_gemm_rn_f = RN_F, el_gemm_step = STEP;

/* one function per (rows, tokens, signedness) shape */
typedef void (*tile_q_fn)(const el_wpack *, const el_xpack *, int64_t, int64_t, int, float *, int64_t);
typedef void (*tile_f_fn)(const el_wpack *, const el_xpack *, int64_t, int64_t, float *, int64_t);

#define SHAPE_Q(m, n)                                                                                \
    static void tq_##m##_##n##_u(const el_wpack *w, const el_xpack *x, int64_t t0, int64_t k,        \
                                 int has_mn, float *y, int64_t ldy) {                                \
        tile_q(w, m, x, t0, n, k, has_mn, 0, y, ldy);                                                \
    }                                                                                                \
    static void tq_##m##_##n##_s(const el_wpack *w, const el_xpack *x, int64_t t0, int64_t k,        \
                                 int has_mn, float *y, int64_t ldy) {                                \
        tile_q(w, m, x, t0, n, k, has_mn, 1, y, ldy);                                                \
    }
#if defined(READS_F16)
#define SHAPE_H(m, n)                                                                                \
    static void th_##m##_##n(const el_wpack *w, const el_xpack *x, int64_t t0, int64_t k, float *y,  \
                             int64_t ldy) {                                                          \
        tile_h(w, m, x, t0, n, k, y, ldy);                                                           \
    }
#else
#define SHAPE_H(m, n)
#endif
#define SHAPE_F(m, n)                                                                                \
    static void tf_##m##_##n(const el_wpack *w, const el_xpack *x, int64_t t0, int64_t k, float *y,  \
                             int64_t ldy) {                                                          \
        tile_f(w, m, x, t0, n, k, y, ldy);                                                           \
    }                                                                                                \
    SHAPE_H(m, n)

#if RN == 4
#define ROW(m) SHAPE_Q(m, 1) SHAPE_Q(m, 2) SHAPE_Q(m, 3) SHAPE_Q(m, 4)
#define ROW_Q(m, s) {tq_##m##_1_##s, tq_##m##_2_##s, tq_##m##_3_##s, tq_##m##_4_##s}
#else
#define ROW(m) SHAPE_Q(m, 1) SHAPE_Q(m, 2)
#define ROW_Q(m, s) {tq_##m##_1_##s, tq_##m##_2_##s}
#endif
#if RN_F == 4
#define ROW_F(m) SHAPE_F(m, 1) SHAPE_F(m, 2) SHAPE_F(m, 3) SHAPE_F(m, 4)
#define TILES_F(p, m) {p##m##_1, p##m##_2, p##m##_3, p##m##_4}
#else
#define ROW_F(m) SHAPE_F(m, 1) SHAPE_F(m, 2) SHAPE_F(m, 3)
#define TILES_F(p, m) {p##m##_1, p##m##_2, p##m##_3}
#endif

ROW(1) ROW(2) ROW(3) ROW(4)
ROW_F(1) ROW_F(2) ROW_F(3) ROW_F(4)

static const tile_q_fn tiles_u[RM][RN] = {ROW_Q(1, u), ROW_Q(2, u), ROW_Q(3, u), ROW_Q(4, u)};
static const tile_q_fn tiles_s[RM][RN] = {ROW_Q(1, s), ROW_Q(2, s), ROW_Q(3, s), ROW_Q(4, s)};
static const tile_f_fn tiles_f[RM][RN_F] = {TILES_F(tf_, 1), TILES_F(tf_, 2), TILES_F(tf_, 3), TILES_F(tf_, 4)};
#if defined(READS_F16)
static const tile_f_fn tiles_h[RM][RN_F] = {TILES_F(th_, 1), TILES_F(th_, 2), TILES_F(th_, 3), TILES_F(th_, 4)};
#endif

void el_gemm_tile_q(const el_wpack *w, int nr, const el_xpack *x, int64_t t0, int nt, int64_t k,
                    int has_mn, int scale32, float *y, int64_t ldy) {
    (void)scale32;
    (w->is_signed ? tiles_s : tiles_u)[nr - 1][nt - 1](w, x, t0, k, has_mn, y, ldy);
}

void el_gemm_tile_f(const el_wpack *w, int nr, const el_xpack *x, int64_t t0, int nt, int64_t k,
                    float *y, int64_t ldy) {
#if defined(READS_F16)
    if (w->is_f16) {
        tiles_h[nr - 1][nt - 1](w, x, t0, k, y, ldy);
        return;
    }
#endif
    tiles_f[nr - 1][nt - 1](w, x, t0, k, y, ldy);
}
