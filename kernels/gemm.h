/* Prefill as GEMM (internal; not part of api.h).
 *
 * llamafile's tinyBLAS idea: a register tile of RM weight rows x RN tokens keeps RM * RN
 * accumulators, so each weight vector loaded is used RN times and each activation vector RM
 * times. To give every quant type one tile kernel per ISA, a tile's weight rows are first
 * unpacked (once per row tile and block of tokens, amortised over up to 512 tokens) into a
 * common form, and the batch's activations are packed once per call. Both are laid out in
 * the order the tile reads them: per STEP elements (el_gemm_step: one vector of int8), the
 * RM rows (or RN tokens) one after the other, so a tile walks two pointers.
 *
 *   weight tile (el_wpack, RM rows of K = n_cols, K padded with zeros to Kp, a multiple of STEP):
 *     q  (Kp/STEP, RM, STEP)    int8 quants, either signed values v or, for ISAs whose int8
 *                               dot wants unsigned weights (x86 vpdpbusd / vpmaddubsw),
 *                               v + bias with bias >= 0;
 *     ls (Kp/STEP, RM, STEP/4)  f32 scale of each 4-element lane (w = ls * v): a lane is the
 *                               unit of one int8 dot-product step (vpdpbusd, sdot); every
 *                               scale covers >= 16 elements;
 *     mn (RM, ldm >= K/16)      f32 per 16 elements, the weight's min less bias * scale:
 *                               w = ls * v + mn; only for types with a min or a bias.
 *   tokens (el_xpack, q8_0 / q8_1 / q8_K activations as the reference quantized them, in
 *   groups of RN tokens):
 *     q  (groups, Kp/STEP, RN, STEP)     int8 quants;
 *     d  (groups, Kp/STEP, RN, STEP/32)  f32 scale of each 32;
 *     s  (n_tokens, lds >= K/16)         f32 d * (sum of the 16 quants): the min term's
 *                                        factor (for q8_1 the block's fp16 s in the first 16
 *                                        of each 32 and 0 in the second, as ggml uses it).
 *
 *   y[t, r] = sum over lanes l of ls_r[l] * d_t[l / 8] * dot4(q_r, q_t, l)
 *           + sum over 16-groups g of mn_r[g] * s_t[g]
 *
 * Float types (f32, f16, bf16) unpack to row-major f32 rows (f16 on ISAs with fp16
 * arithmetic) and multiply row-major f32 (f16) activations, as rounded to the weight's
 * vec_dot_type.
 */
#ifndef EDGELLM_GEMM_H
#define EDGELLM_GEMM_H

#include <stddef.h>
#include <stdint.h>

/* Packed arrays start 64-byte aligned. */
#define EL_GEMM_ALIGN 64

typedef struct {
    const void *q;      /* see above; float types: (RM, ldq) f32 or f16 rows */
    const float *ls;
    const float *mn;    /* or NULL */
    int64_t ldq, ldm;   /* ldq: float rows only */
    int is_signed;      /* quants are signed values (no bias) */
    int is_f16;         /* float rows are f16 (fp16 arithmetic, or el_gemm_reads_f16), not f32 */
} el_wpack;

typedef struct {
    const void *q;      /* see above; float types: (n_tokens, ldq) f32 or f16 rows */
    const float *d;
    const float *s;
    int64_t gq, gd;     /* int8 / floats per group of RN tokens in q / d */
    int64_t ldq, lds;   /* ldq: float rows only */
} el_xpack;

/* ---- provided by every variant's tile file (gemm_tiles.c or arch/<isa>/gemm_tiles.c) ---- */

/* Tile shape: up to el_gemm_rm rows x el_gemm_rn tokens (el_gemm_rn_f for float tiles);
 * el_gemm_step int8 per vector step. */
extern const int el_gemm_rm, el_gemm_rn, el_gemm_rn_f, el_gemm_step;
/* How this ISA wants the weight quants of `type`: 1 signed, 0 unsigned with bias. */
int el_gemm_wants_signed(int type);
/* 1 if f16 weights stay f16 and multiply in fp16 (ARMv8.2 fp16); else every float type
 * unpacks to f32, except as el_gemm_reads_f16 says. */
extern const int el_gemm_float_is_f16;
/* 1 if the float tiles read f16 weight rows in place, converting as they load (f32
 * activations): f16 weights are not unpacked at all. */
extern const int el_gemm_reads_f16;
/* y[(t0 + j) * ldy + i] = row i of w . token t0 + j of x, for i < nr, j < nt; k elements;
 * t0 is a multiple of el_gemm_rn. has_mn: add the min term. scale32: every ls is constant
 * over 32 elements (a hint). */
void el_gemm_tile_q(const el_wpack *w, int nr, const el_xpack *x, int64_t t0, int nt,
                    int64_t k, int has_mn, int scale32, float *y, int64_t ldy);
/* The same for float rows (t0 any token, nt <= el_gemm_rn_f): y = dot(w row i, x row t0 + j). */
void el_gemm_tile_f(const el_wpack *w, int nr, const el_xpack *x, int64_t t0, int nt,
                    int64_t k, float *y, int64_t ldy);

/* ---- gemm.c: shared by every variant ---- */

/* 1 if el_matmul can run `type` through the tile kernels. */
int el_gemm_supported(int type);
/* Bytes of one unpacked tile of el_gemm_rm rows / of n_tokens packed tokens, k elements. */
size_t el_gemm_wtile_bytes(int type, int64_t k);
size_t el_gemm_xpack_bytes(int type, int64_t n_tokens, int64_t k);
/* Unpack nr <= el_gemm_rm rows (row_bytes apart) of a weight of `type` into buf
 * (el_gemm_wtile_bytes), filling *w. Returns has_mn. */
int el_gemm_unpack_w(int type, const void *rows, size_t row_bytes, int nr, int64_t k,
                     void *buf, el_wpack *w);
/* The layout of n_tokens packed tokens of k elements in buf (el_gemm_xpack_bytes). */
void el_gemm_xpack_layout(int type, int64_t n_tokens, int64_t k, void *buf, el_xpack *x);
/* Pack tokens [t0, t1) of activations xq (already in the weight's vec_dot_type, xq_row bytes
 * per token) into the layout x; threads pack disjoint token ranges. */
void el_gemm_pack_x(int type, const void *xq, size_t xq_row, int64_t t0, int64_t t1, int64_t k,
                    const el_xpack *x);
/* 1 if the ls of `type` are constant over each 32 elements. */
int el_gemm_scale32(int type);

/* ---- decode GEMV kernels an ISA may add (EL_ARCH_GEMV: arch/x86/gemv.c) ----
 * For some types a row kernel that reads activations prepared once per call beats vec_dot,
 * which must redo that work for every row. */
#if defined(EL_ARCH_GEMV)
int el_gemv_supported(int type);
/* bytes of one token's prepared activations (k elements) */
size_t el_gemv_xbytes(int64_t k);
/* prepare one token's activations, already quantized to the type's vec_dot_type */
void el_gemv_prepare(int type, const void *xq, int64_t k, void *xp);
/* y[r] = row r of w . the prepared token, r < n_rows */
void el_gemv(int type, const void *w, size_t w_row, int64_t n_rows, int64_t k, const void *xp, float *y);
/* el_gemv for n_tokens tokens, token t's prepared activations at xp + t * xp_row and its
 * outputs at y + t * y_stride: each weight row is unpacked once for several tokens, and every
 * output is bit for bit what el_gemv gives that token alone. */
void el_gemv_tokens(int type, const void *w, size_t w_row, int64_t n_rows, int64_t k, const void *xp,
                    size_t xp_row, int64_t n_tokens, float *y, int64_t y_stride);

/* k-quant (and q4_1 / q5_1) products of a tile of rows x tokens straight from the blocks and
 * the q8_K (q8_1) activations (arch/x86/quants.c): on AVX2 prefill takes these instead of the
 * unpacked tiles above, so it computes what llama.cpp's does, bit for bit (q4_1 / q5_1 have
 * one order, vec_dot's, whatever the batch). batch = 0: each product is the
 * variant's vec_dot (llama.cpp's path for fewer than EL_KTILE_BATCH tokens); 1: in the order
 * of llama.cpp's tiled k-quant matmul (its path for batches of EL_KTILE_BATCH tokens or more).
 * y[j * ldy + i] = row i (w_row bytes apart) . token j (x_row bytes apart), i < nr <=
 * el_ktile_rm, j < nt <= el_ktile_rn. */
#define EL_KTILE_BATCH 8
extern const int el_ktile_rm, el_ktile_rn;
int el_ktile_supported(int type);
void el_ktile(int type, const void *w, size_t w_row, int nr, const void *xq, size_t x_row, int nt, int64_t k,
              int batch, float *y, int64_t ldy);
#endif

#endif /* EDGELLM_GEMM_H */
