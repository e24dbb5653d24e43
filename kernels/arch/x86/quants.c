/* x86-64 dot products and activation quantizers: AVX2 + FMA + F16C, with AVX-512 VNNI's
 * vpdpbusd for the int8 dot products when the variant is built with it.
 *
 * Compiled for the avx2, avx512 and avx512vnni variants (build_kernels.py), beside quants.c
 * which leaves these names to this file (quants-arch.h). The dot products read the ggml block
 * layouts as they are, 32 elements (one 256-bit vector) at a time; decode is memory-bound, so
 * wider vectors would only add shuffles. The GEMM tiles (gemm_tiles.c) use 512 bits.
 *
 * Integer products: vpmaddubsw multiplies unsigned by signed bytes, so signed weights go
 * through the sign trick (|w| times x with w's sign), and unsigned ones (q4_1, q5_1, k-quants)
 * go in directly. Activations are in [-127, 127], so no pair sum saturates 16 bits.
 * Quantizers are bit-exact with the _ref ones (same IEEE operations, same rounding).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../../gemm.h"
#include "../../quants.h"
#include "avx2.h"
#include "quants-arch.h"

#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "arch/x86/quants.c needs -mavx2 -mfma -mf16c"
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define HAVE_VNNI 1
#else
#define HAVE_VNNI 0
#endif

static inline float fp16(el_fp16_t h) { return _cvtsh_ss(h); }

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* 8 x i32, each the sum of 4 products u8 a * s8 b */
static inline __m256i dot_u8s8(__m256i a, __m256i b) {
#if HAVE_VNNI
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
#endif
}

/* the same for two signed operands: |a| * (b with a's sign) */
static inline __m256i dot_s8s8(__m256i a, __m256i b) {
    return dot_u8s8(_mm256_abs_epi8(a), _mm256_sign_epi8(b, a));
}

/* ======================================================================================
 * 32-element block formats
 * ====================================================================================== */

void el_vec_dot_q8_0_q8_0(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const block_q8_0 *restrict w = vw;
    const block_q8_0 *restrict x = vx;
    const int64_t nb = n / QK8_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        const __m256i p0 = dot_s8s8(loadu(w[i].qs), loadu(x[i].qs));
        const __m256i p1 = dot_s8s8(loadu(w[i + 1].qs), loadu(x[i + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(w[i].d) * fp16(x[i].d)), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(w[i + 1].d) * fp16(x[i + 1].d)), _mm256_cvtepi32_ps(p1), acc1);
    }
    for (; i < nb; i++) {
        const __m256i p = dot_s8s8(loadu(w[i].qs), loadu(x[i].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(w[i].d) * fp16(x[i].d)), _mm256_cvtepi32_ps(p), acc0);
    }
    *s = hsum_ps(_mm256_add_ps(acc0, acc1));
}

void el_vec_dot_q4_0_q8_0(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const block_q4_0 *restrict w = vw;
    const block_q8_0 *restrict x = vx;
    const int64_t nb = n / QK8_0;
    const __m256i eight = _mm256_set1_epi8(8);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        const __m256i p0 = dot_s8s8(_mm256_sub_epi8(nibbles(w[i].qs), eight), loadu(x[i].qs));
        const __m256i p1 = dot_s8s8(_mm256_sub_epi8(nibbles(w[i + 1].qs), eight), loadu(x[i + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(w[i].d) * fp16(x[i].d)), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(w[i + 1].d) * fp16(x[i + 1].d)), _mm256_cvtepi32_ps(p1), acc1);
    }
    for (; i < nb; i++) {
        const __m256i p = dot_s8s8(_mm256_sub_epi8(nibbles(w[i].qs), eight), loadu(x[i].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(w[i].d) * fp16(x[i].d)), _mm256_cvtepi32_ps(p), acc0);
    }
    *s = hsum_ps(_mm256_add_ps(acc0, acc1));
}

void el_vec_dot_q5_0_q8_0(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const block_q5_0 *restrict w = vw;
    const block_q8_0 *restrict x = vx;
    const int64_t nb = n / QK8_0;
    const __m256i f0 = _mm256_set1_epi8((char)0xF0);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        /* q - 16 as s8: a clear 5th bit puts 0xF0 over the nibble (nibble - 16), a set one
         * leaves the nibble */
        const __m256i hi = _mm256_andnot_si256(bytes_from_bits_32(w[i].qh), f0);
        const __m256i q = _mm256_or_si256(nibbles(w[i].qs), hi);
        const __m256i p = dot_s8s8(q, loadu(x[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(w[i].d) * fp16(x[i].d)), _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_ps(acc);
}

/* ======================================================================================
 * k-quants: unsigned quants through vpmaddubsw (16-bit pair sums), then vpmaddwd with the
 * sub-block's integer scale, which widens to 32 bits and scales in one step.
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

/* lane l: m[2l] * (bsums[4l] + bsums[4l+1]) + m[2l+1] * (bsums[4l+2] + bsums[4l+3]) */
static inline __m128i mins_bsums4(const uint8_t m[8], const int16_t *bsums) {
    const __m256i bs = loadu(bsums);
    const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    uint64_t m64;
    memcpy(&m64, m, 8);
    return _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)m64)), pairs);
}

/* sum_j m[j] * (bsums[2j] + bsums[2j+1]) */
static inline int mins_dot_bsums(const uint8_t m[8], const int16_t *bsums) {
    const __m128i p = mins_bsums4(m, bsums);
    __m128i t = _mm_add_epi32(p, _mm_shuffle_epi32(p, _MM_SHUFFLE(1, 0, 3, 2)));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(t);
}

/* v's int16 a of the low 128-bit lane in all of that lane, and int16 b of the high lane in all
 * of that one: q6_K's two sub-block scales in one vpshufb, instead of two broadcasts and an
 * insert (cache-hot q6_K rows of 2048, 1 thread: 127 -> 93 ns; q4_K / q5_K's single
 * broadcasts from memory stay, a shuffle was slower there) */
static inline __m256i int16_pair(__m256i v, int a, int b) {
#define SEL(j) _mm_set1_epi16((short)(0x0100 * (2 * (j) + 1) + 2 * (j)))
    return _mm256_shuffle_epi8(v, _mm256_set_m128i(SEL(b), SEL(a)));
#undef SEL
}

/* the integer dot of q and x, each pair scaled by the int16 in every lane of scale */
static inline __m256i scaled_dot(__m256i q, __m256i x, __m256i scale) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), scale);
}

/* The k-quant dot products, as a tile of nr rows x nt tokens (at most KT_RM x KT_RN) straight
 * from the blocks: a weight chunk is unpacked once for nt tokens, an activation chunk loaded
 * once for nr rows. Per super-block, each (row, token) gets the integer sums of its 8 lanes
 * of 4 elements with the sub-block scales applied in integers (q6_K's +32 taken out of each
 * lane in integers, two groups of bsums a lane). Then, in one of llama.cpp's two orders on
 * AVX2, so a product is its bit for bit:
 * - batch 0, its vec_dot (decode, and batches of fewer than EL_KTILE_BATCH tokens): one FMA of
 *   the lanes by d_w * d_x into 8 float lanes, the lanes added at the end (halves, then
 *   (0 + 2) + (1 + 3)); q4_K's mins by -dmin_w * d_x into 4 lanes of two sub-blocks each,
 *   q5_K's into one float by an FMA (llama.cpp's compiler fuses that one). vec_dot is the
 *   1 x 1 tile.
 * - batch 1, its tiled k-quant matmul: the super-block's integer sum S and mins sum M, then
 *   d_w S - dmin_w M in one rounding, times d_x into one float per (row, token); four rows at
 *   a time across the lanes.
 * y[j * ldy + i] is row i . token j. */
#define KT_RM 4
#define KT_RN 3

/* the sums of four vectors of int32: [sum a, sum b, sum c, sum d] */
static inline __m128i hsum4_epi32(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

/* A super-block's integer lanes s[i][j] into the sums. vec_dot order: acc[i][j] += d_w d_x s
 * (8 lanes). Batch order: accb[j] (rows across the lanes) += (d_w S - dmin_w M) d_x, S the sum
 * of s[i][j]'s lanes, M of mins[i][j]'s (the mins' products, 4 lanes; NULL for q6_K). */
static inline __attribute__((always_inline)) void superblock_sums(const int batch, const int nr, const int nt,
                                                                 __m256i s[KT_RM][KT_RN], __m128i mins[KT_RM][KT_RN],
                                                                 const float dw[KT_RM], const float dmw[KT_RM],
                                                                 const block_q8_K *const xb[KT_RN],
                                                                 __m256 acc[KT_RM][KT_RN], __m128 accb[KT_RN]) {
    if (!batch) {
        for (int i = 0; i < nr; i++)
            for (int j = 0; j < nt; j++)
                acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(dw[i] * xb[j]->d), _mm256_cvtepi32_ps(s[i][j]), acc[i][j]);
        return;
    }
    for (int j = 0; j < nt; j++) {
        __m128 res = _mm_mul_ps(_mm_loadu_ps(dw), _mm_cvtepi32_ps(hsum4_epi32(s[0][j], s[1][j], s[2][j], s[3][j])));
        if (mins) {
            const __m128i m = _mm_hadd_epi32(_mm_hadd_epi32(mins[0][j], mins[1][j]), _mm_hadd_epi32(mins[2][j], mins[3][j]));
            res = _mm_fnmadd_ps(_mm_loadu_ps(dmw), _mm_cvtepi32_ps(m), res);
        }
        accb[j] = _mm_fmadd_ps(res, _mm_set1_ps(xb[j]->d), accb[j]);
    }
}

static inline void store_batch(const int nr, const int nt, const __m128 accb[KT_RN], float *y, int64_t ldy) {
    for (int j = 0; j < nt; j++) {
        float r[4];
        _mm_storeu_ps(r, accb[j]);
        for (int i = 0; i < nr; i++) y[j * ldy + i] = r[i];
    }
}

static inline __attribute__((always_inline)) void ktile_q45(const int q5, const int batch, const int nr, const int nt,
                                                           const char *w, size_t w_row, const char *xq,
                                                           size_t x_row, int64_t nb, float *y, int64_t ldy) {
    const size_t bsize = q5 ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const __m256i m4 = _mm256_set1_epi8(0x0F), b4 = _mm256_set1_epi8(0x10);
    __m256 acc[KT_RM][KT_RN];
    __m128 acc_m[KT_RM][KT_RN], accb[KT_RN];
    float summ[KT_RM][KT_RN];
    for (int j = 0; j < nt; j++) {
        accb[j] = _mm_setzero_ps();
        for (int i = 0; i < nr; i++) acc[i][j] = _mm256_setzero_ps(), acc_m[i][j] = _mm_setzero_ps(), summ[i][j] = 0.0f;
    }
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk[KT_RM];
        const block_q8_K *xb[KT_RN];
        uint8_t sc[KT_RM][8], m[KT_RM][8];
        float dw[KT_RM] = {0}, dmw[KT_RM] = {0};
        __m256i hb[KT_RM], isum[KT_RM][KT_RN];
        __m128i mins[KT_RM][KT_RN];
        for (int j = 0; j < nt; j++) xb[j] = (const block_q8_K *)(xq + j * x_row) + b;
        for (int i = 0; i < KT_RM; i++)
            for (int j = 0; j < nt; j++) isum[i][j] = _mm256_setzero_si256(), mins[i][j] = _mm_setzero_si128();
        for (int i = 0; i < nr; i++) {
            blk[i] = (const uint8_t *)(w + i * w_row) + b * bsize;  /* d, dmin, scales, (qh), qs */
            el_fp16_t dh, mh;
            memcpy(&dh, blk[i], 2);
            memcpy(&mh, blk[i] + 2, 2);
            dw[i] = fp16(dh), dmw[i] = fp16(mh);
            scales_mins_k4(blk[i] + 4, sc[i], m[i]);
            if (q5) hb[i] = loadu(blk[i] + 4 + K_SCALE_SIZE);  /* element l of 32-chunk c: bit c of qh[l] */
            for (int j = 0; j < nt; j++) {
                if (batch) mins[i][j] = mins_bsums4(m[i], xb[j]->bsums);
                else if (q5) summ[i][j] = fmaf(dmw[i] * xb[j]->d, (float)mins_dot_bsums(m[i], xb[j]->bsums), summ[i][j]);
                else acc_m[i][j] = _mm_fmadd_ps(_mm_set1_ps(-(dmw[i] * xb[j]->d)), _mm_cvtepi32_ps(mins_bsums4(m[i], xb[j]->bsums)), acc_m[i][j]);
            }
        }
        for (int c = 0; c < 4; c++) {  /* 64 elements: a byte's low nibble, then its high */
            __m256i lo[KT_RM], hi[KT_RM];
            for (int i = 0; i < nr; i++) {
                const __m256i bits = loadu(blk[i] + 4 + K_SCALE_SIZE + (q5 ? QK_K / 8 : 0) + 32 * c);
                lo[i] = _mm256_and_si256(bits, m4);
                hi[i] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                if (q5) {
                    const __m256i h = _mm256_srli_epi16(hb[i], 2 * c);
                    lo[i] = _mm256_or_si256(lo[i], _mm256_and_si256(_mm256_slli_epi16(h, 4), b4));
                    hi[i] = _mm256_or_si256(hi[i], _mm256_and_si256(_mm256_slli_epi16(h, 3), b4));
                }
            }
            for (int j = 0; j < nt; j++) {
                const __m256i xl = loadu(xb[j]->qs + 64 * c), xh = loadu(xb[j]->qs + 64 * c + 32);
                for (int i = 0; i < nr; i++)
                    isum[i][j] = _mm256_add_epi32(isum[i][j],
                                                  _mm256_add_epi32(scaled_dot(lo[i], xl, _mm256_set1_epi16(sc[i][2 * c])),
                                                                   scaled_dot(hi[i], xh, _mm256_set1_epi16(sc[i][2 * c + 1]))));
            }
        }
        superblock_sums(batch, nr, nt, isum, mins, dw, dmw, xb, acc, accb);
    }
    if (batch) {
        store_batch(nr, nt, accb, y, ldy);
        return;
    }
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nt; j++) {
            if (q5) {
                y[j * ldy + i] = hsum_ps(acc[i][j]) - summ[i][j];
            } else {
                __m128 t = _mm_add_ps(acc_m[i][j], _mm_movehl_ps(acc_m[i][j], acc_m[i][j]));
                t = _mm_add_ss(t, _mm_movehdup_ps(t));
                y[j * ldy + i] = hsum_ps(acc[i][j]) + _mm_cvtss_f32(t);
            }
        }
}

static inline __attribute__((always_inline)) void ktile_q6(const int batch, const int nr, const int nt, const char *w,
                                                          size_t w_row, const char *xq, size_t x_row, int64_t nb,
                                                          float *y, int64_t ldy) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x30);
    __m256 acc[KT_RM][KT_RN];
    __m128 accb[KT_RN];
    for (int j = 0; j < nt; j++) {
        accb[j] = _mm_setzero_ps();
        for (int i = 0; i < nr; i++) acc[i][j] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        const block_q6_K *blk[KT_RM];
        const block_q8_K *xb[KT_RN];
        float dw[KT_RM] = {0};
        __m256i sc16[KT_RM], isum[KT_RM][KT_RN];
        for (int j = 0; j < nt; j++) xb[j] = (const block_q8_K *)(xq + j * x_row) + b;
        for (int i = 0; i < KT_RM; i++)
            for (int j = 0; j < nt; j++) isum[i][j] = _mm256_setzero_si256();
        for (int i = 0; i < nr; i++) {
            blk[i] = (const block_q6_K *)(w + i * w_row) + b;
            dw[i] = fp16(blk[i]->d);
            sc16[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)blk[i]->scales));
            /* q6 is stored + 32: 32 * scale_g * bsums_g out of each lane in integers, two
             * groups a lane */
            for (int j = 0; j < nt; j++)
                isum[i][j] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                              _mm256_slli_epi32(_mm256_madd_epi16(sc16[i], loadu(xb[j]->bsums)), 5));
        }
        for (int half = 0; half < 2; half++) {
            for (int k = 0; k < 4; k++) {  /* elements 32k..32k+31 of this half: sub-blocks 2k, 2k + 1 */
                __m256i q[KT_RM], scale[KT_RM];
                for (int i = 0; i < nr; i++) {
                    const __m256i l = loadu(blk[i]->ql + 64 * half + 32 * (k & 1)), h = loadu(blk[i]->qh + 32 * half);
                    const __m256i lo4 = k < 2 ? _mm256_and_si256(l, m4) : _mm256_and_si256(_mm256_srli_epi16(l, 4), m4);
                    const __m256i hi2 = k == 0 ? _mm256_slli_epi16(h, 4) : k == 1 ? _mm256_slli_epi16(h, 2)
                                      : k == 2 ? h : _mm256_srli_epi16(h, 2);
                    q[i] = _mm256_or_si256(lo4, _mm256_and_si256(hi2, m2));
                    /* this half's 8 scales as int16 in both lanes */
                    const __m256i sch = half ? _mm256_permute4x64_epi64(sc16[i], 0xEE) : _mm256_permute4x64_epi64(sc16[i], 0x44);
                    scale[i] = int16_pair(sch, 2 * k, 2 * k + 1);
                }
                for (int j = 0; j < nt; j++) {
                    const __m256i xv = loadu(xb[j]->qs + 128 * half + 32 * k);
                    for (int i = 0; i < nr; i++) isum[i][j] = _mm256_add_epi32(isum[i][j], scaled_dot(q[i], xv, scale[i]));
                }
            }
        }
        superblock_sums(batch, nr, nt, isum, NULL, dw, dw, xb, acc, accb);
    }
    if (batch) {
        store_batch(nr, nt, accb, y, ldy);
        return;
    }
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nt; j++) y[j * ldy + i] = hsum_ps(acc[i][j]);
}

void el_vec_dot_q4_K_q8_K(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    ktile_q45(0, 0, 1, 1, vw, 0, vx, 0, n / QK_K, s, 1);
}

void el_vec_dot_q5_K_q8_K(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    ktile_q45(1, 0, 1, 1, vw, 0, vx, 0, n / QK_K, s, 1);
}

void el_vec_dot_q6_K_q8_K(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    ktile_q6(0, 1, 1, vw, 0, vx, 0, n / QK_K, s, 1);
}

/* q4_1 / q5_1 (q5 = 1) x q8_1 as a tile of nr rows x nt tokens (as the k-quant tiles above),
 * each product in the order of llama.cpp's vec_dot, which is also its order for a batch (its
 * tinyBLAS takes neither type): per block, the integer dot of the unsigned quants (the 4-bit
 * q, for q5_1 with its fifth bit) as 8 lanes, to f32, times d_w * d_x by an FMA into 8 float
 * lanes, and m_w * s_x into one float; the lanes added at the end, then that float. vec_dot is
 * the 1 x 1 tile. y[j * ldy + i] is row i . token j. */
static inline __attribute__((always_inline)) void ktile_q1(const int q5, const int nr, const int nt, const char *w,
                                                          size_t w_row, const char *xq, size_t x_row, int64_t nb,
                                                          float *y, int64_t ldy) {
    const __m256i b4 = _mm256_set1_epi8(0x10);
    __m256 acc[KT_RM][KT_RN];
    float summ[KT_RM][KT_RN];
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nt; j++) {
            acc[i][j] = _mm256_setzero_ps();
            summ[i][j] = 0.0f;
        }
    for (int64_t b = 0; b < nb; b++) {
        __m256i q[KT_RM];
        float dw[KT_RM], mw[KT_RM];
        for (int i = 0; i < nr; i++) {
            if (q5) {
                const block_q5_1 *blk = (const block_q5_1 *)(w + i * w_row) + b;
                q[i] = _mm256_or_si256(nibbles(blk->qs), _mm256_and_si256(bytes_from_bits_32(blk->qh), b4));
                dw[i] = fp16(blk->d), mw[i] = fp16(blk->m);
            } else {
                const block_q4_1 *blk = (const block_q4_1 *)(w + i * w_row) + b;
                q[i] = nibbles(blk->qs);
                dw[i] = fp16(blk->d), mw[i] = fp16(blk->m);
            }
        }
        for (int j = 0; j < nt; j++) {
            const block_q8_1 *xb = (const block_q8_1 *)(xq + j * x_row) + b;
            const __m256i xv = loadu(xb->qs);
            const float dx = fp16(xb->d), sx = fp16(xb->s);
            for (int i = 0; i < nr; i++) {
                const __m256 p = _mm256_cvtepi32_ps(dot_u8s8(q[i], xv));
                acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(dw[i] * dx), p, acc[i][j]);
                summ[i][j] += mw[i] * sx;
            }
        }
    }
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nt; j++) y[j * ldy + i] = hsum_ps(acc[i][j]) + summ[i][j];
}

void el_vec_dot_q4_1_q8_1(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    ktile_q1(0, 1, 1, vw, 0, vx, 0, n / QK8_1, s, 1);
}

void el_vec_dot_q5_1_q8_1(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    ktile_q1(1, 1, 1, vw, 0, vx, 0, n / QK8_1, s, 1);
}

/* every (type, order, shape) its own function, the loops unrolled at constant bounds */
typedef void (*ktile_fn)(const char *, size_t, const char *, size_t, int64_t, float *, int64_t);
#define KSHAPE(bt, m, n)                                                                                      \
    static void kt4_##bt##_##m##_##n(const char *w, size_t wr, const char *x, size_t xr, int64_t nb, float *y, \
                                     int64_t ldy) { ktile_q45(0, bt, m, n, w, wr, x, xr, nb, y, ldy); }       \
    static void kt5_##bt##_##m##_##n(const char *w, size_t wr, const char *x, size_t xr, int64_t nb, float *y, \
                                     int64_t ldy) { ktile_q45(1, bt, m, n, w, wr, x, xr, nb, y, ldy); }       \
    static void kt6_##bt##_##m##_##n(const char *w, size_t wr, const char *x, size_t xr, int64_t nb, float *y, \
                                     int64_t ldy) { ktile_q6(bt, m, n, w, wr, x, xr, nb, y, ldy); }
#define KROW(bt, m) KSHAPE(bt, m, 1) KSHAPE(bt, m, 2) KSHAPE(bt, m, 3)
KROW(0, 1) KROW(0, 2) KROW(0, 3) KROW(0, 4)
KROW(1, 1) KROW(1, 2) KROW(1, 3) KROW(1, 4)
#define KR(p, bt, m) {p##bt##_##m##_1, p##bt##_##m##_2, p##bt##_##m##_3}
#define KTILES(p) {{KR(p, 0, 1), KR(p, 0, 2), KR(p, 0, 3), KR(p, 0, 4)}, {KR(p, 1, 1), KR(p, 1, 2), KR(p, 1, 3), KR(p, 1, 4)}}
static const ktile_fn ktiles4[2][KT_RM][KT_RN] = KTILES(kt4_), ktiles5[2][KT_RM][KT_RN] = KTILES(kt5_),
                      ktiles6[2][KT_RM][KT_RN] = KTILES(kt6_);
/* q4_1 and q5_1: one order */
#define K1SHAPE(m, n)                                                                                             static void kt41_##m##_##n(const char *w, size_t wr, const char *x, size_t xr, int64_t nb, float *y,                                     int64_t ldy) { ktile_q1(0, m, n, w, wr, x, xr, nb, y, ldy); }                      static void kt51_##m##_##n(const char *w, size_t wr, const char *x, size_t xr, int64_t nb, float *y,                                     int64_t ldy) { ktile_q1(1, m, n, w, wr, x, xr, nb, y, ldy); }
#define K1ROW(m) K1SHAPE(m, 1) K1SHAPE(m, 2) K1SHAPE(m, 3)
K1ROW(1) K1ROW(2) K1ROW(3) K1ROW(4)
#define K1R(p, m) {p##m##_1, p##m##_2, p##m##_3}
static const ktile_fn ktiles1[2][KT_RM][KT_RN] = {{K1R(kt41_, 1), K1R(kt41_, 2), K1R(kt41_, 3), K1R(kt41_, 4)},
                                                  {K1R(kt51_, 1), K1R(kt51_, 2), K1R(kt51_, 3), K1R(kt51_, 4)}};

const int el_ktile_rm = KT_RM, el_ktile_rn = KT_RN;

int el_ktile_supported(int type) {
#if defined(__AVX512F__)
    (void)type;
    return 0;  /* the AVX-512 variants keep their 512-bit GEMM tiles */
#else
    return type == EL_TYPE_Q4_K || type == EL_TYPE_Q5_K || type == EL_TYPE_Q6_K || type == EL_TYPE_Q4_1 ||
           type == EL_TYPE_Q5_1;
#endif
}

void el_ktile(int type, const void *w, size_t w_row, int nr, const void *xq, size_t x_row, int nt, int64_t k,
              int batch, float *y, int64_t ldy) {
    if (type == EL_TYPE_Q4_1 || type == EL_TYPE_Q5_1) {
        ktiles1[type == EL_TYPE_Q5_1][nr - 1][nt - 1](w, w_row, xq, x_row, k / QK8_1, y, ldy);
        return;
    }
    const ktile_fn f = (type == EL_TYPE_Q4_K ? ktiles4 : type == EL_TYPE_Q5_K ? ktiles5 : ktiles6)[batch != 0][nr - 1][nt - 1];
    f(w, w_row, xq, x_row, k / QK_K, y, ldy);
}

/* ======================================================================================
 * float formats
 * ====================================================================================== */

void el_vec_dot_f32_f32(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const float *w = vw, *x = vx;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += w[i] * x[i];
    *s = sum;
}

static inline __m256 load_f16(const el_fp16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

static inline __m256 load_bf16(const el_bf16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

void el_vec_dot_f16_f16(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const el_fp16_t *w = vw, *x = vx;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_f16(w + i), load_f16(x + i), a0);
        a1 = _mm256_fmadd_ps(load_f16(w + i + 8), load_f16(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_f16(w + i + 16), load_f16(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_f16(w + i + 24), load_f16(x + i + 24), a3);
    }
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += fp16(w[i]) * fp16(x[i]);
    *s = sum;
}

void el_vec_dot_bf16_bf16(int64_t n, float *restrict s, const void *restrict vw, const void *restrict vx) {
    const el_bf16_t *w = vw, *x = vx;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_bf16(w + i), load_bf16(x + i), a0);
        a1 = _mm256_fmadd_ps(load_bf16(w + i + 8), load_bf16(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_bf16(w + i + 16), load_bf16(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_bf16(w + i + 24), load_bf16(x + i + 24), a3);
    }
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += el_bf16_to_fp32(w[i]) * el_bf16_to_fp32(x[i]);
    *s = sum;
}

void el_f16_to_f32(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load_f16(x + i));
    for (; i < n; i++) y[i] = el_fp16_to_fp32(x[i]);
}

void el_quantize_row_f16(const float *restrict x, void *restrict vy, int64_t n) {
    el_fp16_t *y = vy;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) y[i] = el_fp32_to_fp16(x[i]);
}

void el_quantize_row_bf16(const float *restrict x, void *restrict vy, int64_t n) {
    el_bf16_t *y = vy;
    int64_t i = 0;
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    for (; i + 16 <= n; i += 16) {
        __m256i r[2];
        for (int h = 0; h < 2; h++) {
            const __m256i u = _mm256_loadu_si256((const __m256i *)(x + i + 8 * h));
            /* round to nearest even; nan keeps its top bits and is quieted (| 64) */
            const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
            const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16);
            const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
            const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
            r[h] = _mm256_blendv_epi8(rounded, nan, is_nan);
        }
        /* packus interleaves the 128-bit lanes; put them back in order */
        const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r[0], r[1]), _MM_SHUFFLE(3, 1, 2, 0));
        _mm256_storeu_si256((__m256i *)(y + i), p);
    }
    for (; i < n; i++) y[i] = el_fp32_to_bf16(x[i]);
}

/* ======================================================================================
 * activation quantizers, bit-exact with quants.c's (from_float_act_ref)
 * ====================================================================================== */

/* 4 x 8 int32 in [-128, 127] (elements 0..31 in order) -> 32 bytes in order */
static inline __m256i pack_i32_to_i8(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline float absmax32(const float *x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(x));
    for (int j = 8; j < 32; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* one 32-element block: quants into qs, returns their sum (cvtps rounds ties to even) */
static inline int quantize_block_32(const float *x, float id, int8_t *qs) {
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; k++)
        q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), vid));
    _mm256_storeu_si256((__m256i *)qs, pack_i32_to_i8(q[0], q[1], q[2], q[3]));
    return hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
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
        const int sum = quantize_block_32(x, id, y[i].qs);
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
        const __m256 vis = _mm256_set1_ps(iscale);
        const __m256i top = _mm256_set1_epi32(127);
        for (int j = 0; j < QK_K; j += 32) {
            __m256i q[4];
            /* _mm256_cvtps_epi32 rounds to nearest even, as the reference's nearest_int */
            for (int k = 0; k < 4; k++)
                q[k] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 8 * k), vis)), top);
            _mm256_storeu_si256((__m256i *)(y[i].qs + j), pack_i32_to_i8(q[0], q[1], q[2], q[3]));
            y[i].bsums[j / 16] = (int16_t)hsum_epi32(_mm256_add_epi32(q[0], q[1]));
            y[i].bsums[j / 16 + 1] = (int16_t)hsum_epi32(_mm256_add_epi32(q[2], q[3]));
        }
        y[i].d = 1 / iscale;
    }
}

/* ======================================================================================
 * rows interleaved eight at a time (block_q4_0x8, block_q5_0x8): one row per 32-bit lane
 * ====================================================================================== */

/* Bytes ahead of a block that the loop prefetches: the hardware prefetcher alone leaves a
 * thread short of the memory's bandwidth. Gemma 3's 262144 x 640 head in q4_0 (94 MB), 2
 * threads, Zen 3: 3.54 ms without, 3.01 at 1 KB, 2.83 at 4 KB, 3.02 at 8 KB (medians of 6
 * alternating runs). */
#define X8_PREFETCH 4096

/* The quants of vector k of a block: chunk k / 2's low (k even) or high nibbles, and for
 * q5_0 the fifth bits, bit k of each qh byte moved to bit 4. */
static inline __m256i x8_quants(__m256i chunk, const __m256i *qh, int k) {
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256i q = _mm256_and_si256(k % 2 ? _mm256_srli_epi16(chunk, 4) : chunk, low);
    if (qh) {
        const __m256i h = k <= 4 ? _mm256_slli_epi16(*qh, 4 - k) : _mm256_srli_epi16(*qh, k - 4);
        q = _mm256_or_si256(q, _mm256_and_si256(h, _mm256_set1_epi8(0x10)));
    }
    return q;
}

/* Per block, vector k meets the 4 activation bytes at 4 (k / 2) (low nibbles) or
 * 16 + 4 (k / 2) (high), broadcast to every lane. Without VNNI, vpmaddubsw's 16-bit pair sums
 * add up over two chunks in 16 bits (at most 4 * 2 * 31 * 127 < 2^15) before vpmaddwd widens
 * them. */
static inline __attribute__((always_inline)) void gemv_x8(int five, const void *w, int64_t n_groups, int64_t nb,
                                                         const block_q8_0 *x, const float *xd, const int32_t *xc,
                                                         float *y) {
    const size_t bsize = five ? sizeof(block_q5_0x8) : sizeof(block_q4_0x8);
    const size_t qs_at = five ? offsetof(block_q5_0x8, qs) : offsetof(block_q4_0x8, qs);
    for (int64_t g = 0; g < n_groups; g++) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const char *blk = (const char *)w + (g * nb + b) * bsize;
            _mm_prefetch(blk + X8_PREFETCH, _MM_HINT_T0);
            _mm_prefetch(blk + X8_PREFETCH + 64, _MM_HINT_T0);
            _mm_prefetch(blk + X8_PREFETCH + 128, _MM_HINT_T0);
            if (five) _mm_prefetch(blk + X8_PREFETCH + 175, _MM_HINT_T0);
            const __m256i qh = five ? loadu(blk + offsetof(block_q5_0x8, qh)) : _mm256_setzero_si256();
            const int8_t *xs = x[b].qs;
            __m256i s = _mm256_set1_epi32(xc[b]);
            for (int half = 0; half < 2; half++) {
#if !HAVE_VNNI
                __m256i s16 = _mm256_setzero_si256();
#endif
                for (int j = 2 * half; j < 2 * half + 2; j++) {
                    const __m256i chunk = loadu(blk + qs_at + 32 * j);
                    int32_t lo, hi;
                    memcpy(&lo, xs + 4 * j, 4);
                    memcpy(&hi, xs + 16 + 4 * j, 4);
                    const __m256i q0 = x8_quants(chunk, five ? &qh : NULL, 2 * j);
                    const __m256i q1 = x8_quants(chunk, five ? &qh : NULL, 2 * j + 1);
#if HAVE_VNNI
                    s = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(s, q0, _mm256_set1_epi32(lo)), q1, _mm256_set1_epi32(hi));
#else
                    s16 = _mm256_add_epi16(s16, _mm256_add_epi16(_mm256_maddubs_epi16(q0, _mm256_set1_epi32(lo)),
                                                                 _mm256_maddubs_epi16(q1, _mm256_set1_epi32(hi))));
#endif
                }
#if !HAVE_VNNI
                s = _mm256_add_epi32(s, _mm256_madd_epi16(s16, _mm256_set1_epi16(1)));
#endif
            }
            const __m256 d = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)blk)), _mm256_set1_ps(xd[b]));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc);
        }
        _mm256_storeu_ps(y + 8 * g, acc);
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
