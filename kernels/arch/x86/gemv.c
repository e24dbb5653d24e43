/* Decode GEMV on AVX-512 and on AVX2 for the 32-element block types with q8_0 activations (q8_0, q4_0,
 * q5_0) and for f16 and bf16 weights, with the activations prepared once per matmul call
 * instead of once per row (which is all a vec_dot can do).
 *
 * f16 / bf16: the activations (rounded to f16 / bf16 by the reference quantizer) are widened
 * to f32 once, so a row costs one conversion and one FMA per 16 weights.
 *
 * Block types: two blocks per 512-bit step, the activations prepared as
 *
 *   q     (K)    the int8 quants, contiguous;
 *   corr  (K/4)  -bias * (sum of each 4 quants): the weights go in unsigned (quant + bias, the
 *                form vpdpbusd / vpmaddubsw multiply), and starting each 4-lane sum at corr
 *                takes the bias back out exactly, in integers;
 *   d     (K/32) each block's scale, then zeros to a multiple of 16 blocks.
 *
 * A row's weight scales are gathered 16 blocks at a time and multiplied by the activations'
 * once. So a step per row is: load and unsign two weight blocks, one integer dot starting
 * from corr, convert, and one FMA with the pair's two combined scales (a permute of the 16).
 * Four rows go together, sharing the activation loads and the final horizontal sums. q8_0 without VNNI would
 * saturate vpmaddubsw's 16-bit pair sums with unsigned quants up to 255: it keeps the signed
 * form and the sign trick.
 *
 * AVX2 (x86 mini PCs, Zen without AVX-512) runs the same scheme one block per 256-bit step,
 * over fewer rows at a time (STEP_ROWS): the 8 scales of a group of blocks come from 8 scalar
 * f16 loads, and each block's scale is broadcast from a small stack copy (a load, no shuffle).
 *
 * The sums are the reference's (integer block sums, f32 scaling). On AVX2 each row's are in
 * llama.cpp's order (its vec_dot: a block's 8 lane sums scaled into 8 float lanes, the lanes
 * reduced as its hsum_float_8), so decode matches it bit for bit; on AVX-512 in our own.
 */

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../../api.h"
#include "../../gemm.h"
#include "../../quants.h"
#include "avx2.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define GEMV_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define GEMV_AVX2 1
#endif

#if defined(GEMV_AVX512) || defined(GEMV_AVX2)

#if defined(__AVX512VNNI__)
#define HAVE_VNNI 1
#else
#define HAVE_VNNI 0
#endif

#define PAD64(n) (((n) + 63) / 64 * 64)

int el_gemv_supported(int type) {
    return type == EL_TYPE_Q8_0 || type == EL_TYPE_Q4_0 || type == EL_TYPE_Q5_0 || type == EL_TYPE_F16 ||
           type == EL_TYPE_BF16;
}

/* block types: q, corr and d, each padded by one block pair (an odd last block reads a zero
 * half); f16, bf16: k floats */
size_t el_gemv_xbytes(int64_t k) {
    return PAD64((size_t)k + 128) * 4;
}

static int bias_of(int type) {
    if (type == EL_TYPE_Q8_0) return HAVE_VNNI ? 128 : 0;
    return type == EL_TYPE_Q4_0 ? 8 : 16;
}

void el_gemv_prepare(int type, const void *vxq, int64_t k, void *xp) {
    if (type == EL_TYPE_F16 || type == EL_TYPE_BF16) {
        if (type == EL_TYPE_F16) el_f16_to_f32(vxq, xp, k);
        else el_dequantize_row_bf16(vxq, xp, k);
        return;
    }
    const block_q8_0 *x = vxq;
    const size_t stride = PAD64((size_t)k + 128);
    int8_t *q = xp;
    int32_t *corr = (int32_t *)((char *)xp + stride);
    float *d = (float *)((char *)xp + 2 * stride);
    const int bias = bias_of(type);
    const int64_t nb = k / 32;
    /* zeros from the last (maybe half-filled) pair on: an odd block count reads one more */
    const int64_t tail = 64 * (nb / 2);
    memset(q + tail, 0, 128);
    memset(corr + tail / 4, 0, 128);
    memset(d + nb, 0, 64);
    for (int64_t b = 0; b < nb; b++) {
        d[b] = el_fp16_to_fp32(x[b].d);
        for (int h = 0; h < 2; h++) {  /* the block's two 16-element halves */
            const int64_t at = 32 * b + 16 * h;
            memcpy(q + at, x[b].qs + 16 * h, 16);
            for (int l = 0; l < 4; l++) {
                const int8_t *g = x[b].qs + 16 * h + 4 * l;
                corr[at / 4 + l] = -bias * (g[0] + g[1] + g[2] + g[3]);
            }
        }
    }
}

/* Rows per step (at most): they share each load of the prepared activations, and their sums
 * reduce together. STEP_ROWS(type), per ISA, is how many a step takes. */
#define ROWS 4
/* Tokens a row meets per pass of el_gemv_tokens (their accumulators stay in registers). */
#define TOKENS 4
/* Rows ahead that a step prefetches: a decode step's matrices are small and the hardware
 * prefetcher starts late on each thread's chunk. */
#define PREFETCH_ROWS 16

static inline size_t block_bytes(int type) {
    return type == EL_TYPE_Q8_0 ? sizeof(block_q8_0) : type == EL_TYPE_Q4_0 ? sizeof(block_q4_0) : sizeof(block_q5_0);
}

#if defined(GEMV_AVX512)

#define STEP_ROWS(type) ROWS

/* The f16 scales (each block's first field) of blocks b0 .. b0 + n (n <= 16) of a row, as
 * 16 floats (zero past n): one gather for 8 block pairs. */
static inline __m512 block_scales(const char *row, size_t bsize, int64_t b0, int64_t n) {
    const __m512i at = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32((int)bsize));
    const __mmask16 m = n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
    const __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, at, row + b0 * bsize, 1);
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));  /* the low 16 bits of each: the scale */
}

/* block_scales from 16 scalar loads instead of a gather (which waits for every line) */
static inline __m512 block_scales_loads(const char *row, size_t bsize, int64_t b0, int64_t n) {
    const char *p = row + b0 * bsize;
    __m128i lo = _mm_setzero_si128(), hi = _mm_setzero_si128();
    uint16_t s;
#define SCALE(v, j, at) if ((at) < n) memcpy(&s, p + (at) * bsize, 2), v = _mm_insert_epi16(v, s, (j))
    SCALE(lo, 0, 0); SCALE(lo, 1, 1); SCALE(lo, 2, 2); SCALE(lo, 3, 3);
    SCALE(lo, 4, 4); SCALE(lo, 5, 5); SCALE(lo, 6, 6); SCALE(lo, 7, 7);
    SCALE(hi, 0, 8); SCALE(hi, 1, 9); SCALE(hi, 2, 10); SCALE(hi, 3, 11);
    SCALE(hi, 4, 12); SCALE(hi, 5, 13); SCALE(hi, 6, 14); SCALE(hi, 7, 15);
#undef SCALE
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
}

/* two 32-byte halves from two addresses */
static inline __m512i load_pair(const void *a, const void *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}

/* 16 nibble bytes of each of two blocks -> their 64 quants in order: a block's low nibbles
 * are its elements 0..15, its high nibbles 16..31 */
static inline __m512i nibbles_pair(const uint8_t *qs0, const uint8_t *qs1) {
    const __m512i v = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs0))),
        _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs1)), 1);
    /* each block's second copy shifts its high nibbles down */
    return _mm512_and_si512(_mm512_srlv_epi64(v, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0)), _mm512_set1_epi8(0x0F));
}

static inline __m512i dot_u8s8(__m512i acc, __m512i a, __m512i b) {
#if HAVE_VNNI
    return _mm512_dpbusd_epi32(acc, a, b);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(a, b), _mm512_set1_epi16(1)));
#endif
}

/* One row's blocks b and b + 1 (b + 1 only if `two`) as the unsigned bytes the dot takes, in
 * the order the activations were prepared in. */
static inline __attribute__((always_inline)) __m512i weight_pair(int type, const char *row, int64_t b, int two) {
    if (type == EL_TYPE_Q8_0) {
        const block_q8_0 *w = (const block_q8_0 *)row;
        const __m512i v = two ? load_pair(w[b].qs, w[b + 1].qs)
                              : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)w[b].qs));
        return HAVE_VNNI ? _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80)) : v;
    }
    if (type == EL_TYPE_Q4_0) {
        const block_q4_0 *w = (const block_q4_0 *)row;
        return nibbles_pair(w[b].qs, two ? w[b + 1].qs : w[b].qs);
    }
    const block_q5_0 *w = (const block_q5_0 *)row;
    uint32_t h0, h1 = 0;
    memcpy(&h0, w[b].qh, 4);
    if (two) memcpy(&h1, w[b + 1].qh, 4);
    /* qh's bit j is element j's 5th bit */
    const __m512i nib = nibbles_pair(w[b].qs, two ? w[b + 1].qs : w[b].qs);
    return _mm512_mask_add_epi8(nib, (__mmask64)(h0 | (uint64_t)h1 << 32), nib, _mm512_set1_epi8(0x10));
}

/* the 16 four-element integer sums of a weight pair and the prepared activations */
static inline __attribute__((always_inline)) __m512i dot_pair(int type, __m512i corr, __m512i w, __m512i x) {
#if !HAVE_VNNI
    if (type == EL_TYPE_Q8_0) {  /* signed weights: move their signs onto the activations */
        const __m512i xs = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
        return dot_u8s8(_mm512_setzero_si512(), _mm512_abs_epi8(w), xs);
    }
#endif
    return dot_u8s8(corr, w, x);
}

/* the sums of four accumulators, in one vector */
static inline __m128 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
#define HALVES(a) _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)))
    const __m256 h01 = _mm256_hadd_ps(HALVES(a0), HALVES(a1)), h23 = _mm256_hadd_ps(HALVES(a2), HALVES(a3));
#undef HALVES
    const __m256 h = _mm256_hadd_ps(h01, h23);  /* [a0 a1 a2 a3] of each 128-bit half */
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
/* y[0 .. n) for n (ROWS, or 1) consecutive rows; inlined with constant type and n */
static inline __attribute__((always_inline)) void block_rows(int type, int n, const char *row, size_t w_row,
                                                            int64_t nb, const int8_t *q, const int32_t *corr,
                                                            const float *d, float *y) {
    /* lanes of a pair: [block b x 8, block b + 1 x 8], from the 16 scales of its group */
    const __m512i pair_lanes = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    __m512 acc[ROWS];
    for (int i = 0; i < n; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t b0 = 0; b0 < nb; b0 += 16) {
        const int64_t b1 = b0 + 16 < nb ? b0 + 16 : nb;
        __m512 scales[ROWS];
        const __m512 dx = _mm512_loadu_ps(d + b0);
        for (int i = 0; i < n; i++)
            scales[i] = _mm512_mul_ps(block_scales(row + i * w_row, block_bytes(type), b0, b1 - b0), dx);
        for (int64_t b = b0; b < b1; b += 2) {
            const int two = b + 1 < nb;
            const __m512i xv = _mm512_loadu_si512(q + 32 * b), cv = _mm512_loadu_si512(corr + 8 * b);
            const __m512i lanes = _mm512_add_epi32(pair_lanes, _mm512_set1_epi32((int)(b - b0)));
            for (int i = 0; i < n; i++) {
                const __m512i wv = weight_pair(type, row + i * w_row, b, two);
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot_pair(type, cv, wv, xv)),
                                         _mm512_permutexvar_ps(lanes, scales[i]), acc[i]);
            }
        }
    }
    /* a row sums in the same order wherever it falls */
    if (n == ROWS) _mm_storeu_ps(y, reduce4(acc[0], acc[1], acc[2], acc[3]));
    else y[0] = _mm_cvtss_f32(reduce4(acc[0], acc[0], acc[0], acc[0]));
}

/* R (<= 2) consecutive rows against T (<= TOKENS) tokens' prepared activations (token t at
 * xp + t * xp_row), each block pair unpacked once for all the tokens and each activation load
 * shared by the rows; y[t * y_stride + i]. Each (row, token) sums as block_rows gives it
 * alone, in the same order. */
#define TOKEN_ROWS 2
static inline __attribute__((always_inline)) void rows_tokens(int type, int R, int T, const char *row, size_t w_row,
                                                             int64_t nb, const char *xp, size_t xp_row,
                                                             size_t stride, float *y, int64_t y_stride) {
    const __m512i pair_lanes = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    __m512 acc[TOKEN_ROWS][TOKENS];
    for (int i = 0; i < R; i++)
        for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
    for (int64_t b0 = 0; b0 < nb; b0 += 16) {
        const int64_t b1 = b0 + 16 < nb ? b0 + 16 : nb;
        __m512 scales[TOKEN_ROWS][TOKENS];
        for (int i = 0; i < R; i++) {
            const __m512 ws = block_scales_loads(row + i * w_row, block_bytes(type), b0, b1 - b0);
            for (int t = 0; t < T; t++)
                scales[i][t] = _mm512_mul_ps(ws, _mm512_loadu_ps((const float *)(xp + t * xp_row + 2 * stride) + b0));
        }
        for (int64_t b = b0; b < b1; b += 2) {
            const __m512i lanes = _mm512_add_epi32(pair_lanes, _mm512_set1_epi32((int)(b - b0)));
            __m512i wv[TOKEN_ROWS];
            for (int i = 0; i < R; i++) wv[i] = weight_pair(type, row + i * w_row, b, b + 1 < nb);
            for (int t = 0; t < T; t++) {
                const char *x = xp + t * xp_row;
                const __m512i xv = _mm512_loadu_si512(x + 32 * b);
                const __m512i cv = _mm512_loadu_si512((const int32_t *)(x + stride) + 8 * b);
                for (int i = 0; i < R; i++)
                    acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot_pair(type, cv, wv[i], xv)),
                                                _mm512_permutexvar_ps(lanes, scales[i][t]), acc[i][t]);
            }
        }
    }
    for (int i = 0; i < R; i++) {
        if (T == 4) {  /* each lane of reduce4 sums as reduce4 of one accumulator does */
            float s[4];
            _mm_storeu_ps(s, reduce4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
            for (int t = 0; t < 4; t++) y[t * y_stride + i] = s[t];
        } else {
            for (int t = 0; t < T; t++)
                y[t * y_stride + i] = _mm_cvtss_f32(reduce4(acc[i][t], acc[i][t], acc[i][t], acc[i][t]));
        }
    }
}

/* 16 f16 or bf16 weights -> f32 */
static inline __m512 widen(__m256i h, int bf16) {
    return bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
}

static inline float row_half(const uint16_t *w, int64_t k, const float *x, const int bf16) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t e = 0;
    for (; e + 64 <= k; e += 64) {
        a0 = _mm512_fmadd_ps(widen(_mm256_loadu_si256((const __m256i *)(w + e)), bf16), _mm512_loadu_ps(x + e), a0);
        a1 = _mm512_fmadd_ps(widen(_mm256_loadu_si256((const __m256i *)(w + e + 16)), bf16), _mm512_loadu_ps(x + e + 16), a1);
        a2 = _mm512_fmadd_ps(widen(_mm256_loadu_si256((const __m256i *)(w + e + 32)), bf16), _mm512_loadu_ps(x + e + 32), a2);
        a3 = _mm512_fmadd_ps(widen(_mm256_loadu_si256((const __m256i *)(w + e + 48)), bf16), _mm512_loadu_ps(x + e + 48), a3);
    }
    for (; e < k; e += 16) {
        const __mmask16 m = e + 16 <= k ? 0xFFFF : (__mmask16)((1u << (k - e)) - 1);
        a0 = _mm512_fmadd_ps(widen(_mm256_maskz_loadu_epi16(m, w + e), bf16), _mm512_maskz_loadu_ps(m, x + e), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

#else /* GEMV_AVX2 */

/* Rows per step on Zen 3, decode from DRAM: four interleaved rows of q8_0 were slower than
 * per-row vec_dot (165 vs 205 tokens/s), so q8_0 takes one. q4_0 takes four: 2048 x 640
 * matrices back to back 20.1 -> 23.9 GB/s, the 262144 x 640 LM head 3.75 -> 3.60 ms (medians
 * of 4 alternating runs; model decode moved within the noise). q5_0, whose weights cost more
 * to unpack, gained nothing from four and keeps two. */
#define STEP_ROWS(type) ((type) == EL_TYPE_Q8_0 ? 1 : (type) == EL_TYPE_Q4_0 ? 4 : 2)

/* one row's block b as the bytes dot_weights takes: q8_0 signed as stored, q4_0 / q5_0
 * unsigned (quant + bias) */
static inline __attribute__((always_inline)) __m256i block_weights(int type, const char *row, int64_t b) {
    if (type == EL_TYPE_Q8_0) return loadu(((const block_q8_0 *)row)[b].qs);
    if (type == EL_TYPE_Q4_0) return nibbles(((const block_q4_0 *)row)[b].qs);
    const block_q5_0 *blk = (const block_q5_0 *)row + b;
    return _mm256_or_si256(nibbles(blk->qs), _mm256_and_si256(bytes_from_bits_32(blk->qh), _mm256_set1_epi8(0x10)));
}

/* a block's weights and the prepared activations: the 8 four-element integer sums */
static inline __attribute__((always_inline)) __m256i dot_weights(int type, __m256i w, __m256i x, __m256i corr) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (type == EL_TYPE_Q8_0)  /* signed weights: move their signs onto the activations */
        return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w)), ones);
    return _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones), corr);
}

static inline __attribute__((always_inline)) __m256i dot_block(int type, const char *row, int64_t b, __m256i x,
                                                              __m256i corr) {
    return dot_weights(type, block_weights(type, row, b), x, corr);
}

/* the f16 scales of blocks b0 .. b0 + n (n <= 8) of a row, as 8 floats (zero past n); built
 * in a register (8 narrow stores read back as one vector would stall store forwarding) */
static inline __m256 block_scales(const char *row, size_t bsize, int64_t b0, int64_t n) {
    const char *p = row + b0 * bsize;
    __m128i h = _mm_setzero_si128();
    uint16_t s;
#define SCALE(j) if ((j) < n) memcpy(&s, p + (j) * bsize, 2), h = _mm_insert_epi16(h, s, (j))
    SCALE(0); SCALE(1); SCALE(2); SCALE(3); SCALE(4); SCALE(5); SCALE(6); SCALE(7);
#undef SCALE
    return _mm256_cvtph_ps(h);
}

/* the sums of four accumulators, in one vector, each in ggml's order (hsum_float_8: the two
 * halves added, then lanes 0 + 2 and 1 + 3, then those two), so a row's sum is bit for bit
 * llama.cpp's vec_dot on AVX2 */
static inline __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    /* [a0 lo + hi | a1 lo + hi], [a2 .. | a3 ..], each half reordered to lanes 0 2 1 3 */
    const __m256 s01 = _mm256_add_ps(_mm256_permute2f128_ps(a0, a1, 0x20), _mm256_permute2f128_ps(a0, a1, 0x31));
    const __m256 s23 = _mm256_add_ps(_mm256_permute2f128_ps(a2, a3, 0x20), _mm256_permute2f128_ps(a2, a3, 0x31));
    const __m256 p01 = _mm256_permute_ps(s01, _MM_SHUFFLE(3, 1, 2, 0)), p23 = _mm256_permute_ps(s23, _MM_SHUFFLE(3, 1, 2, 0));
    /* [a0, a2, 0, 0 | a1, a3, 0, 0] */
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(p01, p23), _mm256_setzero_ps());
    return _mm_unpacklo_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* y[0 .. n) for n (<= ROWS) consecutive rows; inlined with constant type and n */
static inline __attribute__((always_inline)) void block_rows(int type, int n, const char *row, size_t w_row,
                                                            int64_t nb, const int8_t *q, const int32_t *corr,
                                                            const float *d, float *y) {
    __m256 acc[ROWS];
    float scales[ROWS][8];  /* the group's combined scales, broadcast from here block by block */
    for (int i = 0; i < n; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t b0 = 0; b0 < nb; b0 += 8) {
        const int64_t b1 = b0 + 8 < nb ? b0 + 8 : nb;
        const __m256 dx = _mm256_loadu_ps(d + b0);
        for (int i = 0; i < n; i++)
            _mm256_storeu_ps(scales[i], _mm256_mul_ps(block_scales(row + i * w_row, block_bytes(type), b0, b1 - b0), dx));
        for (int64_t b = b0; b < b1; b++) {
            const __m256i xv = loadu(q + 32 * b), cv = loadu(corr + 8 * b);
            for (int i = 0; i < n; i++)
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_block(type, row + i * w_row, b, xv, cv)),
                                         _mm256_broadcast_ss(&scales[i][b - b0]), acc[i]);
        }
    }
    /* a row sums in the same order wherever it falls */
    if (n == 4) _mm_storeu_ps(y, reduce4(acc[0], acc[1], acc[2], acc[3]));
    else  /* each row's lane 0 of reduce4: the same order */
        for (int i = 0; i < n; i++) y[i] = _mm_cvtss_f32(reduce4(acc[i], acc[i], acc[i], acc[i]));
}

/* One row against T (<= TOKENS) tokens' prepared activations (token t at xp + t * xp_row),
 * each block unpacked once for all of them; y[t * y_stride]. Each token's sums are those
 * block_rows gives it alone, in the same order. */
static inline __attribute__((always_inline)) void row_tokens(int type, int T, const char *row, int64_t nb,
                                                            const char *xp, size_t xp_row, size_t stride,
                                                            float *y, int64_t y_stride) {
    __m256 acc[TOKENS];
    float scales[TOKENS][8];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b0 = 0; b0 < nb; b0 += 8) {
        const int64_t b1 = b0 + 8 < nb ? b0 + 8 : nb;
        const __m256 ws = block_scales(row, block_bytes(type), b0, b1 - b0);
        for (int t = 0; t < T; t++)
            _mm256_storeu_ps(scales[t], _mm256_mul_ps(ws, _mm256_loadu_ps((const float *)(xp + t * xp_row + 2 * stride) + b0)));
        for (int64_t b = b0; b < b1; b++) {
            const __m256i w = block_weights(type, row, b);
            for (int t = 0; t < T; t++) {
                const char *x = xp + t * xp_row;
                const __m256i xv = loadu(x + 32 * b), cv = loadu((const int32_t *)(x + stride) + 8 * b);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_weights(type, w, xv, cv)),
                                         _mm256_broadcast_ss(&scales[t][b - b0]), acc[t]);
            }
        }
    }
    for (int t = 0; t < T; t++) y[t * y_stride] = _mm_cvtss_f32(reduce4(acc[t], acc[t], acc[t], acc[t]));
}

#define TOKEN_ROWS 1
static inline __attribute__((always_inline)) void rows_tokens(int type, int R, int T, const char *row, size_t w_row,
                                                             int64_t nb, const char *xp, size_t xp_row,
                                                             size_t stride, float *y, int64_t y_stride) {
    (void)R, (void)w_row;
    row_tokens(type, T, row, nb, xp, xp_row, stride, y, y_stride);
}

/* 8 f16 or bf16 weights -> f32 */
static inline __m256 widen(const uint16_t *w, int bf16) {
    const __m128i h = _mm_loadu_si128((const __m128i *)w);
    return bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
}

/* ggml's vec_dot_f16 order on AVX2: four accumulators over 32 elements a step, added 0 + 2,
 * 1 + 3, then together; the halves added, then lanes (0 + 1) + (2 + 3); the leftovers in
 * double */
static inline float row_half(const uint16_t *w, int64_t k, const float *x, const int bf16) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t e = 0;
    for (; e + 32 <= k; e += 32) {
        a0 = _mm256_fmadd_ps(widen(w + e, bf16), _mm256_loadu_ps(x + e), a0);
        a1 = _mm256_fmadd_ps(widen(w + e + 8, bf16), _mm256_loadu_ps(x + e + 8), a1);
        a2 = _mm256_fmadd_ps(widen(w + e + 16, bf16), _mm256_loadu_ps(x + e + 16), a2);
        a3 = _mm256_fmadd_ps(widen(w + e + 24, bf16), _mm256_loadu_ps(x + e + 24), a3);
    }
    const __m256 a = _mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3));
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    t = _mm_hadd_ps(t, t);
    double s = _mm_cvtss_f32(_mm_hadd_ps(t, t));
    for (; e < k; e++) s += (double)((bf16 ? el_bf16_to_fp32(w[e]) : el_fp16_to_fp32(w[e])) * x[e]);
    return (float)s;
}

#endif /* GEMV_AVX512 / GEMV_AVX2 */

static inline __attribute__((always_inline)) void block_gemv(int type, const char *w, size_t w_row, int64_t n_rows,
                                                            int64_t nb, const int8_t *q, const int32_t *corr,
                                                            const float *d, float *y) {
    const int step = STEP_ROWS(type);
    int64_t r = 0;
    for (; r + step <= n_rows; r += step) {  /* the hot loop of decode */
        const char *row = w + r * w_row;
        for (size_t o = 0; o < step * w_row; o += 64) _mm_prefetch(row + PREFETCH_ROWS * w_row + o, _MM_HINT_T0);
        block_rows(type, step, row, w_row, nb, q, corr, d, y + r);
    }
    for (; r < n_rows; r++) block_rows(type, 1, w + r * w_row, w_row, nb, q, corr, d, y + r);
}

void el_gemv(int type, const void *w, size_t w_row, int64_t n_rows, int64_t k, const void *xp, float *y) {
    if (type == EL_TYPE_F16 || type == EL_TYPE_BF16) {
        const char *row = w;
        if (type == EL_TYPE_F16)
            for (int64_t r = 0; r < n_rows; r++, row += w_row) y[r] = row_half((const uint16_t *)row, k, xp, 0);
        else
            for (int64_t r = 0; r < n_rows; r++, row += w_row) y[r] = row_half((const uint16_t *)row, k, xp, 1);
        return;
    }
    const size_t stride = PAD64((size_t)k + 128);
    const int8_t *q = xp;
    const int32_t *corr = (const int32_t *)((const char *)xp + stride);
    const float *d = (const float *)((const char *)xp + 2 * stride);
    const int64_t nb = k / 32;
    switch (type) {
    case EL_TYPE_Q8_0: block_gemv(EL_TYPE_Q8_0, w, w_row, n_rows, nb, q, corr, d, y); break;
    case EL_TYPE_Q4_0: block_gemv(EL_TYPE_Q4_0, w, w_row, n_rows, nb, q, corr, d, y); break;
    default: block_gemv(EL_TYPE_Q5_0, w, w_row, n_rows, nb, q, corr, d, y); break;
    }
}

/* rows r .. r + R of every token, T tokens at a time */
static inline __attribute__((always_inline)) void rows_all_tokens(int type, int R, const char *row, size_t w_row,
                                                                 int64_t nb, const char *xp, size_t xp_row,
                                                                 size_t stride, int64_t n_tokens, float *y,
                                                                 int64_t y_stride) {
    for (int64_t t = 0; t < n_tokens; t += TOKENS) {
        const char *x = xp + t * xp_row;
        float *yt = y + t * y_stride;
        switch (n_tokens - t < TOKENS ? n_tokens - t : TOKENS) {
        case 1: rows_tokens(type, R, 1, row, w_row, nb, x, xp_row, stride, yt, y_stride); break;
        case 2: rows_tokens(type, R, 2, row, w_row, nb, x, xp_row, stride, yt, y_stride); break;
        case 3: rows_tokens(type, R, 3, row, w_row, nb, x, xp_row, stride, yt, y_stride); break;
        default: rows_tokens(type, R, TOKENS, row, w_row, nb, x, xp_row, stride, yt, y_stride); break;
        }
    }
}

static inline __attribute__((always_inline)) void block_gemv_tokens(int type, const char *w, size_t w_row,
                                                                   int64_t n_rows, int64_t nb, const char *xp,
                                                                   size_t xp_row, size_t stride, int64_t n_tokens,
                                                                   float *y, int64_t y_stride) {
    int64_t r = 0;
    for (; r + TOKEN_ROWS <= n_rows; r += TOKEN_ROWS) {  /* the hot loop of a decode step of several sequences */
        const char *row = w + r * w_row;
        for (size_t o = 0; o < TOKEN_ROWS * w_row; o += 64) _mm_prefetch(row + PREFETCH_ROWS * w_row + o, _MM_HINT_T0);
        rows_all_tokens(type, TOKEN_ROWS, row, w_row, nb, xp, xp_row, stride, n_tokens, y + r, y_stride);
    }
    for (; r < n_rows; r++)
        rows_all_tokens(type, 1, w + r * w_row, w_row, nb, xp, xp_row, stride, n_tokens, y + r, y_stride);
}

void el_gemv_tokens(int type, const void *w, size_t w_row, int64_t n_rows, int64_t k, const void *xp,
                    size_t xp_row, int64_t n_tokens, float *y, int64_t y_stride) {
    if (type == EL_TYPE_F16 || type == EL_TYPE_BF16 || n_tokens == 1) {
        for (int64_t t = 0; t < n_tokens; t++)
            el_gemv(type, w, w_row, n_rows, k, (const char *)xp + t * xp_row, y + t * y_stride);
        return;
    }
    const size_t stride = PAD64((size_t)k + 128);
    const int64_t nb = k / 32;
    switch (type) {
    case EL_TYPE_Q8_0: block_gemv_tokens(EL_TYPE_Q8_0, w, w_row, n_rows, nb, xp, xp_row, stride, n_tokens, y, y_stride); break;
    case EL_TYPE_Q4_0: block_gemv_tokens(EL_TYPE_Q4_0, w, w_row, n_rows, nb, xp, xp_row, stride, n_tokens, y, y_stride); break;
    default: block_gemv_tokens(EL_TYPE_Q5_0, w, w_row, n_rows, nb, xp, xp_row, stride, n_tokens, y, y_stride); break;
    }
}

#else
#error "arch/x86/gemv.c needs AVX2 + FMA + F16C (the avx2 and avx512 variants)"
#endif
