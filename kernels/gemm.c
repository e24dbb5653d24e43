/* Unpacking weights and packing activations for the tile kernels (see gemm.h).
 *
 * Shared by every variant and compiled with its flags: the loops are written so the compiler
 * vectorises them (fixed trip counts, constant shifts, no element-dependent branches). A row
 * is unpacked once per row tile and block of up to 512 tokens, so this is not the hot loop;
 * the tiles are. */
#include "gemm.h"

#include <string.h>

#include "api.h"
#include "quants.h"

#define PAD(n) (((n) + EL_GEMM_ALIGN - 1) / EL_GEMM_ALIGN * EL_GEMM_ALIGN)

/* Each byte b -> 8 bytes whose byte i is bit i of b, times 16: the 5th bit of 8 q5 quants.
 * Built by the preprocessor so the table is const data. */
#define QH5(b) ((((uint64_t)(b) >> 0 & 1) << 4) | (((uint64_t)(b) >> 1 & 1) << 12) | \
                (((uint64_t)(b) >> 2 & 1) << 20) | (((uint64_t)(b) >> 3 & 1) << 28) | \
                (((uint64_t)(b) >> 4 & 1) << 36) | (((uint64_t)(b) >> 5 & 1) << 44) | \
                (((uint64_t)(b) >> 6 & 1) << 52) | (((uint64_t)(b) >> 7 & 1) << 60))
#define QH5_4(b) QH5(b), QH5(b + 1), QH5(b + 2), QH5(b + 3)
#define QH5_16(b) QH5_4(b), QH5_4(b + 4), QH5_4(b + 8), QH5_4(b + 12)
#define QH5_64(b) QH5_16(b), QH5_16(b + 16), QH5_16(b + 32), QH5_16(b + 48)
static const uint64_t qh5_table[256] = {QH5_64(0), QH5_64(64), QH5_64(128), QH5_64(192)};

int el_gemm_supported(int type) {
    switch (type) {
    case EL_TYPE_F32: case EL_TYPE_F16: case EL_TYPE_BF16:
    case EL_TYPE_Q4_0: case EL_TYPE_Q4_1: case EL_TYPE_Q5_0: case EL_TYPE_Q5_1: case EL_TYPE_Q8_0:
    case EL_TYPE_Q2_K: case EL_TYPE_Q3_K: case EL_TYPE_Q4_K: case EL_TYPE_Q5_K: case EL_TYPE_Q6_K:
        return 1;
    default:
        return 0;
    }
}

static int is_float(int type) {
    return type == EL_TYPE_F32 || type == EL_TYPE_F16 || type == EL_TYPE_BF16;
}

int el_gemm_scale32(int type) {
    return !(type == EL_TYPE_Q2_K || type == EL_TYPE_Q3_K || type == EL_TYPE_Q6_K);
}

/* What the unsigned form adds to the signed quants of a type (q4_0: nibble - 8 + 8), for ISAs
 * that want unsigned weights; 0 for types whose quants are unsigned already. */
static int type_bias(int type) {
    switch (type) {
    case EL_TYPE_Q4_0: return 8;
    case EL_TYPE_Q5_0: return 16;
    case EL_TYPE_Q8_0: return 128;
    case EL_TYPE_Q3_K: return 4;
    case EL_TYPE_Q6_K: return 32;
    default: return 0;
    }
}

/* Types whose weights carry a min: x = d q + m (q4_1, q5_1) or d q - dmin m (k-quants). */
static int has_min(int type) {
    return type == EL_TYPE_Q4_1 || type == EL_TYPE_Q5_1 || type == EL_TYPE_Q2_K ||
           type == EL_TYPE_Q4_K || type == EL_TYPE_Q5_K;
}

/* f16 weights stay f16 on ISAs with fp16 arithmetic; every other float type becomes f32 */
static int f16_path(int type) { return el_gemm_float_is_f16 && type == EL_TYPE_F16; }
static size_t float_elem(int type) { return f16_path(type) ? 2 : 4; }

/* k padded to a whole number of tile steps */
static int64_t padded(int64_t k) { return (k + el_gemm_step - 1) / el_gemm_step * el_gemm_step; }

size_t el_gemm_wtile_bytes(int type, int64_t k) {
    const size_t rm = (size_t)el_gemm_rm;
    if (is_float(type)) return rm * PAD((size_t)k * float_elem(type));
    /* q (Kp * RM bytes), ls (Kp / 4 * RM floats), mn (RM rows of k / 16 floats) */
    return rm * PAD((size_t)padded(k)) * 2 + rm * PAD((size_t)k / 4);
}

size_t el_gemm_xpack_bytes(int type, int64_t n_tokens, int64_t k) {
    if (is_float(type)) return (size_t)n_tokens * PAD((size_t)k * float_elem(type));
    const size_t groups = (size_t)((n_tokens + el_gemm_rn - 1) / el_gemm_rn), rn = (size_t)el_gemm_rn;
    const size_t kp = (size_t)padded(k);
    /* q (Kp * RN per group), d (Kp / 32 * RN floats per group), s (k / 16 floats per token) */
    return groups * PAD(kp * rn) + groups * PAD(kp / 32 * rn * 4) + (size_t)n_tokens * PAD((size_t)k / 4);
}

/* ---- weights ---- */

/* Where one row of a tile goes: element e of row r is at (e / STEP) * RM * STEP + r * STEP +
 * e % STEP in q, and at that offset / 4 in ls (one scale per 4 elements). A 32-element chunk
 * (STEP is a multiple of 32) stays contiguous. */
typedef struct {
    uint8_t *q;
    float *ls;
    int64_t row_off;  /* r * STEP */
} tile_row;

static inline size_t offset(const tile_row *t, int64_t e) {
    return (size_t)(e / el_gemm_step * el_gemm_rm * el_gemm_step + t->row_off + e % el_gemm_step);
}
static inline uint8_t *Q(const tile_row *t, int64_t e) { return t->q + offset(t, e); }
static inline float *LS(const tile_row *t, int64_t e) { return t->ls + offset(t, e) / 4; }

static inline void set_lanes(float *ls, float d, int n_lanes) {
    for (int l = 0; l < n_lanes; l++) ls[l] = d;
}

/* One row of k elements into its tile place, mn (k/16) into its own row. `bias` is added to
 * every quant (0 for the signed form); mn then holds min - bias * scale. */
static void unpack_row(int type, const void *vrow, int64_t k, int bias, const tile_row *t,
                       float *restrict mn) {
    const int64_t nb32 = k / 32;
    switch (type) {
    case EL_TYPE_Q8_0: {
        const block_q8_0 *b = vrow;
        const uint8_t flip = bias ? 0x80 : 0;  /* two's complement + 128 = flip the sign bit */
        for (int64_t i = 0; i < nb32; i++, mn += 2) {
            const float d = el_fp16_to_fp32(b[i].d);
            uint8_t *restrict q = Q(t, 32 * i);
            for (int j = 0; j < 32; j++) q[j] = (uint8_t)b[i].qs[j] ^ flip;
            set_lanes(LS(t, 32 * i), d, 8);
            mn[0] = mn[1] = -(float)bias * d;
        }
        break;
    }
    case EL_TYPE_Q4_0: {
        const block_q4_0 *b = vrow;
        const uint8_t sub = (uint8_t)(8 - bias);
        for (int64_t i = 0; i < nb32; i++, mn += 2) {
            const float d = el_fp16_to_fp32(b[i].d);
            uint8_t *restrict q = Q(t, 32 * i);
            for (int j = 0; j < 16; j++) {
                q[j] = (uint8_t)((b[i].qs[j] & 0xF) - sub);
                q[j + 16] = (uint8_t)((b[i].qs[j] >> 4) - sub);
            }
            set_lanes(LS(t, 32 * i), d, 8);
            mn[0] = mn[1] = -(float)bias * d;
        }
        break;
    }
    case EL_TYPE_Q4_1: {
        const block_q4_1 *b = vrow;
        for (int64_t i = 0; i < nb32; i++, mn += 2) {
            uint8_t *restrict q = Q(t, 32 * i);
            for (int j = 0; j < 16; j++) {
                q[j] = b[i].qs[j] & 0xF;
                q[j + 16] = b[i].qs[j] >> 4;
            }
            set_lanes(LS(t, 32 * i), el_fp16_to_fp32(b[i].d), 8);
            mn[0] = mn[1] = el_fp16_to_fp32(b[i].m);
        }
        break;
    }
    case EL_TYPE_Q5_0:
    case EL_TYPE_Q5_1: {
        /* the two layouts differ only in q5_1's min after d */
        const int q51 = type == EL_TYPE_Q5_1;
        const size_t bsize = q51 ? sizeof(block_q5_1) : sizeof(block_q5_0);
        const uint8_t sub = (uint8_t)(q51 ? 0 : 16 - bias);
        for (int64_t i = 0; i < nb32; i++, mn += 2) {
            const uint8_t *blk = (const uint8_t *)vrow + i * bsize;
            el_fp16_t dh, mh = 0;
            memcpy(&dh, blk, 2);
            if (q51) memcpy(&mh, blk + 2, 2);
            const uint8_t *qh = blk + (q51 ? 4 : 2), *qs = qh + 4;
            uint64_t hi[4];
            for (int j = 0; j < 4; j++) hi[j] = qh5_table[qh[j]];
            uint8_t h[32];
            memcpy(h, hi, 32);
            uint8_t *restrict q = Q(t, 32 * i);
            for (int j = 0; j < 16; j++) {
                q[j] = (uint8_t)(((qs[j] & 0xF) | h[j]) - sub);
                q[j + 16] = (uint8_t)(((qs[j] >> 4) | h[j + 16]) - sub);
            }
            const float d = el_fp16_to_fp32(dh);
            set_lanes(LS(t, 32 * i), d, 8);
            mn[0] = mn[1] = q51 ? el_fp16_to_fp32(mh) : -(float)bias * d;
        }
        break;
    }
    case EL_TYPE_Q2_K: {
        const block_q2_K *b = vrow;
        for (int64_t i = 0; i < k / QK_K; i++) {
            const float d = el_fp16_to_fp32(b[i].d), dmin = el_fp16_to_fp32(b[i].dmin);
            for (int half = 0; half < 2; half++) {
                const uint8_t *qs = b[i].qs + 32 * half;
                for (int s = 0; s < 4; s++) {
                    uint8_t *restrict q = Q(t, QK_K * i + 128 * half + 32 * s);
                    for (int l = 0; l < 32; l++) q[l] = (qs[l] >> (2 * s)) & 3;
                }
            }
            for (int g = 0; g < 16; g++, mn++) {
                set_lanes(LS(t, QK_K * i + 16 * g), d * (b[i].scales[g] & 0xF), 4);
                *mn = -dmin * (b[i].scales[g] >> 4);
            }
        }
        break;
    }
    case EL_TYPE_Q3_K: {
        const block_q3_K *b = vrow;
        const uint8_t sub = (uint8_t)(4 - bias);
        for (int64_t i = 0; i < k / QK_K; i++) {
            const float d = el_fp16_to_fp32(b[i].d);
            for (int half = 0; half < 2; half++) {
                const uint8_t *qs = b[i].qs + 32 * half;
                for (int s = 0; s < 4; s++) {
                    const int bit = 4 * half + s;  /* hmask bit of this 32 */
                    uint8_t *restrict q = Q(t, QK_K * i + 128 * half + 32 * s);
                    for (int l = 0; l < 32; l++)
                        q[l] = (uint8_t)((((qs[l] >> (2 * s)) & 3) | (((b[i].hmask[l] >> bit) & 1) << 2)) - sub);
                }
            }
            const uint8_t *p = b[i].scales;
            for (int g = 0; g < 16; g++, mn++) {
                const int lo = g < 8 ? p[g] & 0xF : p[g - 8] >> 4;
                const int hi = (p[8 + g % 4] >> (2 * (g / 4))) & 3;
                const float sc = d * ((lo | hi << 4) - 32);
                set_lanes(LS(t, QK_K * i + 16 * g), sc, 4);
                *mn = -(float)bias * sc;
            }
        }
        break;
    }
    case EL_TYPE_Q4_K:
    case EL_TYPE_Q5_K: {
        const int q5 = type == EL_TYPE_Q5_K;
        const size_t bsize = q5 ? sizeof(block_q5_K) : sizeof(block_q4_K);
        for (int64_t i = 0; i < k / QK_K; i++) {
            const uint8_t *blk = (const uint8_t *)vrow + i * bsize;
            el_fp16_t dh, mh;
            memcpy(&dh, blk, 2);
            memcpy(&mh, blk + 2, 2);
            const float d = el_fp16_to_fp32(dh), dmin = el_fp16_to_fp32(mh);
            const uint8_t *scales = blk + 4;
            const uint8_t *qh = blk + 4 + K_SCALE_SIZE;            /* q5_K only */
            const uint8_t *qs = blk + 4 + K_SCALE_SIZE + (q5 ? QK_K / 8 : 0);
            for (int j = 0; j < QK_K / 32; j += 2, qs += 32) {
                uint8_t *restrict lo = Q(t, QK_K * i + 32 * j), *restrict hi = Q(t, QK_K * i + 32 * j + 32);
                if (q5) {
                    for (int l = 0; l < 32; l++) {
                        lo[l] = (uint8_t)((qs[l] & 0xF) | (((qh[l] >> j) & 1) << 4));
                        hi[l] = (uint8_t)((qs[l] >> 4) | (((qh[l] >> (j + 1)) & 1) << 4));
                    }
                } else {
                    for (int l = 0; l < 32; l++) {
                        lo[l] = qs[l] & 0xF;
                        hi[l] = qs[l] >> 4;
                    }
                }
            }
            for (int j = 0; j < QK_K / 32; j++, mn += 2) {
                uint8_t sc, m;
                el_get_scale_min_k4(j, scales, &sc, &m);
                set_lanes(LS(t, QK_K * i + 32 * j), d * sc, 8);
                mn[0] = mn[1] = -dmin * m;
            }
        }
        break;
    }
    case EL_TYPE_Q6_K: {
        const block_q6_K *b = vrow;
        const uint8_t sub = (uint8_t)(32 - bias);
        for (int64_t i = 0; i < k / QK_K; i++) {
            const uint8_t *ql = b[i].ql, *qh = b[i].qh;
            for (int half = 0; half < 2; half++, ql += 64, qh += 32) {
                const int64_t e = QK_K * i + 128 * half;
                uint8_t *restrict q0 = Q(t, e), *restrict q1 = Q(t, e + 32);
                uint8_t *restrict q2 = Q(t, e + 64), *restrict q3 = Q(t, e + 96);
                for (int l = 0; l < 32; l++) {
                    q0[l] = (uint8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - sub);
                    q1[l] = (uint8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - sub);
                    q2[l] = (uint8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - sub);
                    q3[l] = (uint8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - sub);
                }
            }
            const float d = el_fp16_to_fp32(b[i].d);
            for (int g = 0; g < 16; g++, mn++) {
                const float sc = d * b[i].scales[g];
                set_lanes(LS(t, QK_K * i + 16 * g), sc, 4);
                *mn = -(float)bias * sc;
            }
        }
        break;
    }
    default:
        break;
    }
}

static void unpack_float_row(int type, const void *row, int64_t k, void *out) {
    if (f16_path(type)) {
        memcpy(out, row, (size_t)k * 2);
        return;
    }
    float *y = out;
    switch (type) {
    case EL_TYPE_F32: memcpy(y, row, (size_t)k * 4); break;
    case EL_TYPE_F16: el_f16_to_f32(row, y, k); break;  /* the ISA's exact conversion */
    case EL_TYPE_BF16: el_dequantize_row_bf16(row, y, k); break;
    default: break;
    }
}

int el_gemm_unpack_w(int type, const void *rows, size_t row_bytes, int nr, int64_t k, void *buf,
                     el_wpack *w) {
    const int rm = el_gemm_rm;
    if (type == EL_TYPE_F16 && el_gemm_reads_f16) {  /* the rows as stored */
        *w = (el_wpack){rows, NULL, NULL, (int64_t)(row_bytes / 2), 0, 1, 1};
        return 0;
    }
    if (is_float(type)) {
        const size_t stride = PAD((size_t)k * float_elem(type));
        for (int r = 0; r < nr; r++)
            unpack_float_row(type, (const char *)rows + r * row_bytes, k, (char *)buf + r * stride);
        *w = (el_wpack){buf, NULL, NULL, (int64_t)(stride / float_elem(type)), 0, 1, f16_path(type)};
        return 0;
    }
    const int is_signed = el_gemm_wants_signed(type);
    const int bias = is_signed ? 0 : type_bias(type);
    const int mins = has_min(type) || bias != 0;
    const int64_t kp = padded(k);
    uint8_t *q = buf;
    float *ls = (float *)(q + rm * PAD((size_t)kp));
    float *mn = ls + rm * PAD((size_t)kp) / 4;
    const size_t ldm = PAD((size_t)k / 4) / 4;
    if (kp > k) {  /* the padding multiplies as zero */
        for (int r = 0; r < nr; r++) {
            const tile_row t = {q, ls, (int64_t)r * el_gemm_step};
            memset(Q(&t, k), 0, (size_t)(kp - k));
            memset(LS(&t, k), 0, (size_t)(kp - k));
        }
    }
    for (int r = 0; r < nr; r++) {
        const tile_row t = {q, ls, (int64_t)r * el_gemm_step};
        unpack_row(type, (const char *)rows + r * row_bytes, k, bias, &t, mn + r * ldm);
    }
    *w = (el_wpack){q, ls, mins ? mn : NULL, 0, (int64_t)ldm, is_signed, 0};
    return mins;
}

/* ---- activations ---- */

void el_gemm_xpack_layout(int type, int64_t n_tokens, int64_t k, void *buf, el_xpack *x) {
    if (is_float(type)) {
        *x = (el_xpack){buf, NULL, NULL, 0, 0, (int64_t)(PAD((size_t)k * float_elem(type)) / float_elem(type)), 0};
        return;
    }
    const size_t groups = (size_t)((n_tokens + el_gemm_rn - 1) / el_gemm_rn), rn = (size_t)el_gemm_rn;
    const size_t kp = (size_t)padded(k);
    const size_t gq = PAD(kp * rn), gd = PAD(kp / 32 * rn * 4) / 4;
    int8_t *q = buf;
    float *d = (float *)(q + groups * gq);
    float *s = d + groups * gd;
    *x = (el_xpack){q, d, s, (int64_t)gq, (int64_t)gd, 0, (int64_t)(PAD((size_t)k / 4) / 4)};
}

void el_gemm_pack_x(int type, const void *xq, size_t xq_row, int64_t t0, int64_t t1, int64_t k,
                    const el_xpack *x) {
    const int vt = el_vec_dot_type(type);
    if (is_float(type)) {
        for (int64_t t = t0; t < t1; t++) {
            const void *src = (const char *)xq + t * xq_row;
            void *dst = (char *)x->q + t * x->ldq * (int64_t)float_elem(type);
            if (f16_path(type)) memcpy(dst, src, (size_t)k * 2);
            else if (vt == EL_TYPE_F16) el_f16_to_f32(src, dst, k);
            else if (vt == EL_TYPE_BF16) el_dequantize_row_bf16(src, dst, k);
            else memcpy(dst, src, (size_t)k * 4);
        }
        return;
    }
    const int64_t step = el_gemm_step, rn = el_gemm_rn, kp = padded(k);
    for (int64_t t = t0; t < t1; t++) {
        const char *src = (const char *)xq + t * xq_row;
        /* token t: group t / RN, slot t % RN; element e at (e / STEP) * RN * STEP + slot * STEP
         * + e % STEP in q, and chunk c = e / 32 at (e / STEP) * RN * (STEP / 32) + slot * (STEP
         * / 32) + c % (STEP / 32) in d */
        int8_t *qg = (int8_t *)x->q + t / rn * x->gq;
        float *dg = (float *)x->d + t / rn * x->gd;
        const int64_t slot = t % rn;
#define XQ(e) (qg + (e) / step * rn * step + slot * step + (e) % step)
#define XD(c) (dg + (c) * 32 / step * rn * (step / 32) + slot * (step / 32) + (c) % (step / 32))
        float *st = (float *)x->s + t * x->lds;
        for (int64_t e = k; e < kp; e += 32) {  /* padding */
            memset(XQ(e), 0, 32);
            *XD(e / 32) = 0.0f;
        }
        if (vt == EL_TYPE_Q8_K) {
            const block_q8_K *b = (const block_q8_K *)src;
            for (int64_t i = 0; i < k / QK_K; i++) {
                for (int c = 0; c < QK_K / 32; c++) {
                    memcpy(XQ(QK_K * i + 32 * c), b[i].qs + 32 * c, 32);
                    *XD(8 * i + c) = b[i].d;
                }
                for (int g = 0; g < QK_K / 16; g++) st[i * 16 + g] = b[i].d * b[i].bsums[g];
            }
        } else {  /* q8_0 and q8_1: 32 quants after 2 (q8_0) or 4 (q8_1) bytes of fp16 */
            const int q81 = vt == EL_TYPE_Q8_1;
            const size_t bsize = q81 ? sizeof(block_q8_1) : sizeof(block_q8_0);
            for (int64_t c = 0; c < k / 32; c++) {
                const char *blk = src + c * bsize;
                const int8_t *qs = (const int8_t *)(blk + (q81 ? 4 : 2));
                el_fp16_t dh;
                memcpy(&dh, blk, 2);
                const float dc = el_fp16_to_fp32(dh);
                memcpy(XQ(32 * c), qs, 32);
                *XD(c) = dc;
                if (q81) {
                    el_fp16_t sh;
                    memcpy(&sh, blk + 2, 2);
                    st[2 * c] = el_fp16_to_fp32(sh);
                    st[2 * c + 1] = 0.0f;
                } else {
                    int s0 = 0, s1 = 0;
                    for (int j = 0; j < 16; j++) {
                        s0 += qs[j];
                        s1 += qs[j + 16];
                    }
                    st[2 * c] = dc * s0;
                    st[2 * c + 1] = dc * s1;
                }
            }
        }
#undef XQ
#undef XD
    }
}
