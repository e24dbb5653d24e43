/* Quantization formats: block layouts, fp16/bf16 conversions, and the per-type dispatch table.
 *
 * Layouts and rounding are ggml's (ggml-common.h, ggml-quants.c), so GGUF tensor bytes are used
 * as they are and our quantizers produce the bytes llama.cpp's reference quantizers produce.
 *
 * Three tiers, as in ggml:
 *   - `*_ref`: portable reference implementations in quants.c. Deterministic; the oracle for tests.
 *   - `el_vec_dot_<w>_<a>` and the activation quantizers `el_quantize_row_q8_{0,1,K}`: the names the
 *     dispatch table calls. quants.c defines each as its `_ref` unless a per-ISA file replaces it.
 *   - per-ISA files (arch/<isa>/...): a build for an ISA level compiles its file beside quants.c and
 *     passes -DEL_ARCH_QUANTS_H='"arch/<isa>/quants-arch.h"'. That header defines EL_ARCH_<NAME>
 *     (e.g. EL_ARCH_VEC_DOT_Q4_0_Q8_0) for every kernel the file provides, and quants.c then leaves
 *     that name to it. Every replaceable kernel has one signature per kind (el_vec_dot_fn,
 *     el_from_float_fn), so a SIMD kernel's tail loop can call the `_ref` one.
 *
 * Every symbol carries the el_ prefix: llama.cpp's libggml (the test reference) exports
 * `dequantize_row_q4_0`, `quantize_row_q8_0_ref`, ... and may share the process with us.
 */
#ifndef EDGELLM_QUANTS_H
#define EDGELLM_QUANTS_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Type ids: ggml's enum ggml_type values, which GGUF stores per tensor. */
enum el_type {
    EL_TYPE_F32  = 0,
    EL_TYPE_F16  = 1,
    EL_TYPE_Q4_0 = 2,
    EL_TYPE_Q4_1 = 3,
    EL_TYPE_Q5_0 = 6,
    EL_TYPE_Q5_1 = 7,
    EL_TYPE_Q8_0 = 8,
    EL_TYPE_Q8_1 = 9,
    EL_TYPE_Q2_K = 10,
    EL_TYPE_Q3_K = 11,
    EL_TYPE_Q4_K = 12,
    EL_TYPE_Q5_K = 13,
    EL_TYPE_Q6_K = 14,
    EL_TYPE_Q8_K = 15,
    EL_TYPE_BF16 = 30,
    EL_TYPE_COUNT = 31, /* size of tables indexed by type id */
};

typedef uint16_t el_fp16_t; /* IEEE half, raw bits */
typedef uint16_t el_bf16_t; /* bfloat16 (top half of an f32), raw bits */

/* ---- block layouts ----
 * A row of n elements is n / QK blocks laid end to end. Element j of a block is stored as the
 * comments say; "d" is the scale, "m" the min (x = d * q + m), both fp16. */

#define QK4_0 32
typedef struct {
    el_fp16_t d;            /* scale: x = d * (q - 8) */
    uint8_t qs[QK4_0 / 2];  /* q of element j in low nibble of qs[j], of j + 16 in high nibble */
} block_q4_0;
static_assert(sizeof(block_q4_0) == 2 + QK4_0 / 2, "block_q4_0 size");

#define QK4_1 32
typedef struct {
    el_fp16_t d;            /* scale: x = d * q + m */
    el_fp16_t m;            /* min */
    uint8_t qs[QK4_1 / 2];  /* nibbles as in q4_0 */
} block_q4_1;
static_assert(sizeof(block_q4_1) == 4 + QK4_1 / 2, "block_q4_1 size");

#define QK5_0 32
typedef struct {
    el_fp16_t d;            /* scale: x = d * (q - 16) */
    uint8_t qh[4];          /* bit j of this little-endian u32: the 5th bit of element j */
    uint8_t qs[QK5_0 / 2];  /* low 4 bits, nibbles as in q4_0 */
} block_q5_0;
static_assert(sizeof(block_q5_0) == 2 + 4 + QK5_0 / 2, "block_q5_0 size");

#define QK5_1 32
typedef struct {
    el_fp16_t d;            /* scale: x = d * q + m */
    el_fp16_t m;            /* min */
    uint8_t qh[4];          /* 5th bits as in q5_0 */
    uint8_t qs[QK5_1 / 2];  /* low 4 bits as in q4_0 */
} block_q5_1;
static_assert(sizeof(block_q5_1) == 4 + 4 + QK5_1 / 2, "block_q5_1 size");

#define QK8_0 32
typedef struct {
    el_fp16_t d;            /* scale: x = d * q */
    int8_t qs[QK8_0];       /* quants */
} block_q8_0;
static_assert(sizeof(block_q8_0) == 2 + QK8_0, "block_q8_0 size");

#define QK8_1 32
typedef struct {
    el_fp16_t d;            /* scale: x = d * q */
    el_fp16_t s;            /* d * sum(qs): lets q4_1/q5_1 dots add the weights' min in one step */
    int8_t qs[QK8_1];       /* quants */
} block_q8_1;
static_assert(sizeof(block_q8_1) == 4 + QK8_1, "block_q8_1 size");

/* q4_0 and q5_0 with rows interleaved eight at a time: the layout of the copies the runtime
 * makes of a matrix (an LM head requantized at load), never a file's. Rows 8g .. 8g + 7
 * (group g) keep their blocks together: block b of the group holds the eight rows' block b,
 * their scales, then the nibble bytes so that each 32-byte chunk j holds bytes 4j .. 4j + 3 of
 * every row's qs (row i at 4i): a GEMV takes the eight rows one per 32-bit vector lane, with
 * one integer sum per row and one scale vector per block. A group has the bytes of its eight
 * rows. q5_0's fifth bits are bit-sliced to match: bit 2j of qh[4i + t] is the fifth bit of
 * row i's element 4j + t (the low nibble at chunk j, byte 4i + t), bit 2j + 1 that of element
 * 16 + 4j + t (the high nibble there). */
typedef struct {
    el_fp16_t d[8];         /* row i's scale */
    uint8_t qs[8 * QK4_0 / 2];
} block_q4_0x8;
static_assert(sizeof(block_q4_0x8) == 8 * sizeof(block_q4_0), "block_q4_0x8 size");

typedef struct {
    el_fp16_t d[8];
    uint8_t qh[8 * QK5_0 / 8];
    uint8_t qs[8 * QK5_0 / 2];
} block_q5_0x8;
static_assert(sizeof(block_q5_0x8) == 8 * sizeof(block_q5_0), "block_q5_0x8 size");

/* k-quants: super-blocks of QK_K elements made of 16 or 32-element sub-blocks whose scales (and
 * mins) are themselves quantized against the super-block's fp16 d (and dmin). */
#define QK_K 256
#define K_SCALE_SIZE 12

typedef struct {
    uint8_t scales[QK_K / 16]; /* sub-block j (16 elements): scale in low nibble, min in high */
    uint8_t qs[QK_K / 4];      /* 2-bit quants; in each 128-element half, byte l holds elements
                                  l, l + 32, l + 64, l + 96 at bits 0, 2, 4, 6 */
    el_fp16_t d;               /* x = d * scale * q - dmin * min */
    el_fp16_t dmin;
} block_q2_K;
static_assert(sizeof(block_q2_K) == QK_K / 16 + QK_K / 4 + 4, "block_q2_K size");

typedef struct {
    uint8_t hmask[QK_K / 8]; /* 3rd bit: element i at bit i / 32 of byte i % 32; set means q >= 0 */
    uint8_t qs[QK_K / 4];    /* low 2 bits, packed as in q2_K */
    uint8_t scales[12];      /* 16 signed 6-bit scales (+32 offset): low nibbles in bytes 0..7
                                (j < 8 low half, j >= 8 high half), top 2 bits in bytes 8..11 */
    el_fp16_t d;             /* x = d * (scale - 32) * (q - 4) */
} block_q3_K;
static_assert(sizeof(block_q3_K) == QK_K / 8 + QK_K / 4 + 12 + 2, "block_q3_K size");

typedef struct {
    el_fp16_t d;                   /* x = d * scale * q - dmin * min */
    el_fp16_t dmin;
    uint8_t scales[K_SCALE_SIZE];  /* 8 six-bit scales and 8 six-bit mins (el_get_scale_min_k4) */
    uint8_t qs[QK_K / 2];          /* in each 64-element chunk, byte l holds element l (low
                                      nibble) and l + 32 (high nibble) */
} block_q4_K;
static_assert(sizeof(block_q4_K) == 4 + K_SCALE_SIZE + QK_K / 2, "block_q4_K size");

typedef struct {
    el_fp16_t d;                   /* x = d * scale * q - dmin * min */
    el_fp16_t dmin;
    uint8_t scales[K_SCALE_SIZE];  /* as in q4_K */
    uint8_t qh[QK_K / 8];          /* 5th bit: element i at bit i / 32 of byte i % 32 */
    uint8_t qs[QK_K / 2];          /* low 4 bits, as in q4_K */
} block_q5_K;
static_assert(sizeof(block_q5_K) == 4 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2, "block_q5_K size");

typedef struct {
    uint8_t ql[QK_K / 2];      /* low 4 bits; per 128-element half, byte l holds l | (l+64) << 4
                                  and byte l + 32 holds (l+32) | (l+96) << 4 */
    uint8_t qh[QK_K / 4];      /* high 2 bits; per half, byte l holds l, l+32, l+64, l+96 */
    int8_t scales[QK_K / 16];  /* signed 8-bit scale of each 16-element sub-block */
    el_fp16_t d;               /* x = d * scale * (q - 32) */
} block_q6_K;
static_assert(sizeof(block_q6_K) == QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, "block_q6_K size");

/* Activations for k-quant dot products only; never stored in model files. */
typedef struct {
    float d;                  /* x = d * q */
    int8_t qs[QK_K];          /* quants, in [-127, 127] */
    int16_t bsums[QK_K / 16]; /* sum of each 16 quants: dots fold the weights' mins in with these */
} block_q8_K;
static_assert(sizeof(block_q8_K) == 4 + QK_K + QK_K / 16 * 2, "block_q8_K size");

/* ---- fp16 / bf16 <-> fp32 (exact bit manipulation; no FPU mode or ISA dependence) ---- */

static inline uint32_t el_fp32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float el_fp32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Exact, and branch-free so that row conversions vectorize (attention reads the f16 KV cache
 * through this). */
static inline float el_fp16_to_fp32(el_fp16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t em = h & 0x7fff; /* exponent and mantissa */
    /* normal, inf, nan: bits moved into f32 place with exponent + 224, then * 2^-112 rebiases
     * (15 -> 127) exactly; exponent 31 lands on 255, so inf and nan stay inf and nan */
    const float normal = el_fp32_from_bits((em << 13) + (224u << 23)) * 0x1p-112f;
    /* subnormal (exponent 0): 0.5 + man * 2^-24 is exact in f32, minus 0.5 leaves man * 2^-24 */
    const float subnormal = el_fp32_from_bits((126u << 23) | em) - 0.5f;
    return el_fp32_from_bits(sign | el_fp32_to_bits(em < 0x400 ? subnormal : normal));
}

/* Round to nearest, ties to even; overflow gives inf; nan stays nan (quieted), as F16C/NEON do. */
static inline el_fp16_t el_fp32_to_fp16(float f) {
    const uint32_t u = el_fp32_to_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return sign | 0x7e00 | (uint16_t)((a >> 13) & 0x3ff);
    }
    if (a >= 0x477ff000u) { /* >= 65520, halfway past the largest half: rounds to inf */
        return sign | 0x7c00;
    }
    if (a >= 0x38800000u) { /* >= 2^-14: normal half; the carry of rounding may bump the exponent */
        const uint32_t r = a - (112u << 23);
        return sign | (uint16_t)((r + 0xfffu + ((r >> 13) & 1)) >> 13);
    }
    const uint32_t e = a >> 23;
    if (e < 102) { /* < 2^-25: rounds to zero */
        return sign;
    }
    /* subnormal half: the value in units of 2^-24, rounded to nearest even */
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e; /* 14..24 */
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) {
        q++;
    }
    return sign | (uint16_t)q;
}

static inline float el_bf16_to_fp32(el_bf16_t h) {
    return el_fp32_from_bits((uint32_t)h << 16);
}

/* Round to nearest, ties to even; nan is quieted (ggml_compute_fp32_to_bf16). */
static inline el_bf16_t el_fp32_to_bf16(float f) {
    const uint32_t u = el_fp32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (el_bf16_t)((u >> 16) | 64);
    }
    return (el_bf16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

/* Sub-block j's 6-bit scale and min from the 12 packed bytes of q4_K / q5_K: j < 4 in the low 6
 * bits of bytes j and j + 4; j >= 4 split into a nibble of byte j + 4 and the top 2 bits of bytes
 * j - 4 (scale) and j (min). */
static inline void el_get_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* ---- kernels: one signature per kind ---- */

/* type -> f32, n elements (a multiple of the block size) */
typedef void (*el_to_float_fn)(const void *x, float *y, int64_t n);
/* f32 -> type, n elements */
typedef void (*el_from_float_fn)(const float *x, void *y, int64_t n);
/* *s = dot(weight row w, activation row x already quantized to the weight's vec_dot_type) */
typedef void (*el_vec_dot_fn)(int64_t n, float *s, const void *w, const void *x);

/* The dispatch table: formats as data. */
typedef struct {
    const char *name;                /* ggml's type name: "q4_K" */
    int blck_size;                   /* elements per block */
    int type_size;                   /* bytes per block */
    int vec_dot_type;                /* activations are quantized to this before vec_dot */
    el_to_float_fn to_float;         /* dequantize (reference) */
    el_from_float_fn from_float_ref; /* reference quantizer (weights); NULL if the type has none */
    el_from_float_fn from_float_act_ref; /* reference quantizer for activations */
    el_from_float_fn from_float;     /* quantizer for activations: may be an ISA kernel, bit-exact
                                        with from_float_act_ref */
    el_vec_dot_fn vec_dot;           /* dot with activations of vec_dot_type: may be an ISA kernel */
    el_vec_dot_fn vec_dot_ref;       /* the same dot, reference implementation (the oracle) */
} el_type_traits;

/* The traits of a type id, or NULL if the kernels do not know it. */
const el_type_traits *el_get_type_traits(int type);

/* reference quantizers (ggml's quantize_row_*_ref, bit for bit) */
void el_quantize_row_f32_ref(const float *x, void *y, int64_t n);
void el_quantize_row_f16_ref(const float *x, void *y, int64_t n);
void el_quantize_row_bf16_ref(const float *x, void *y, int64_t n);
void el_quantize_row_q4_0_ref(const float *x, void *y, int64_t n);
void el_quantize_row_q4_1_ref(const float *x, void *y, int64_t n);
void el_quantize_row_q5_0_ref(const float *x, void *y, int64_t n);
void el_quantize_row_q5_1_ref(const float *x, void *y, int64_t n);
void el_quantize_row_q8_0_ref(const float *x, void *y, int64_t n);
void el_quantize_row_q8_1_ref(const float *x, void *y, int64_t n);
void el_quantize_row_q2_K_ref(const float *x, void *y, int64_t n);
void el_quantize_row_q3_K_ref(const float *x, void *y, int64_t n);
void el_quantize_row_q4_K_ref(const float *x, void *y, int64_t n);
void el_quantize_row_q5_K_ref(const float *x, void *y, int64_t n);
void el_quantize_row_q6_K_ref(const float *x, void *y, int64_t n);
void el_quantize_row_q8_K_ref(const float *x, void *y, int64_t n);
/* q8_0 / q8_1 activations as ggml-cpu quantizes them on x86 (quants.c says why) */
void el_quantize_row_q8_0_act_ref(const float *x, void *y, int64_t n);
void el_quantize_row_q8_1_act_ref(const float *x, void *y, int64_t n);

/* activation quantizers the table calls (replaceable per ISA; bit-exact with the
 * from_float_act_ref ones) */
void el_quantize_row_f16(const float *x, void *y, int64_t n);
void el_quantize_row_bf16(const float *x, void *y, int64_t n);
void el_quantize_row_q8_0(const float *x, void *y, int64_t n);
void el_quantize_row_q8_1(const float *x, void *y, int64_t n);
void el_quantize_row_q8_K(const float *x, void *y, int64_t n);

/* dequantizers */
void el_dequantize_row_f32(const void *x, float *y, int64_t n);
void el_dequantize_row_f16(const void *x, float *y, int64_t n);
void el_dequantize_row_bf16(const void *x, float *y, int64_t n);
void el_dequantize_row_q4_0(const void *x, float *y, int64_t n);
void el_dequantize_row_q4_1(const void *x, float *y, int64_t n);
void el_dequantize_row_q5_0(const void *x, float *y, int64_t n);
void el_dequantize_row_q5_1(const void *x, float *y, int64_t n);
void el_dequantize_row_q8_0(const void *x, float *y, int64_t n);
void el_dequantize_row_q8_1(const void *x, float *y, int64_t n);
void el_dequantize_row_q2_K(const void *x, float *y, int64_t n);
void el_dequantize_row_q3_K(const void *x, float *y, int64_t n);
void el_dequantize_row_q4_K(const void *x, float *y, int64_t n);
void el_dequantize_row_q5_K(const void *x, float *y, int64_t n);
void el_dequantize_row_q6_K(const void *x, float *y, int64_t n);
void el_dequantize_row_q8_K(const void *x, float *y, int64_t n);

/* dot products: reference, and the names the table calls (replaceable per ISA) */
#define EL_DECLARE_VEC_DOT(name)                                                  \
    void name##_ref(int64_t n, float *s, const void *w, const void *x);          \
    void name(int64_t n, float *s, const void *w, const void *x);

EL_DECLARE_VEC_DOT(el_vec_dot_f32_f32)
EL_DECLARE_VEC_DOT(el_vec_dot_f16_f16)
EL_DECLARE_VEC_DOT(el_vec_dot_bf16_bf16)
EL_DECLARE_VEC_DOT(el_vec_dot_q4_0_q8_0)
EL_DECLARE_VEC_DOT(el_vec_dot_q4_1_q8_1)
EL_DECLARE_VEC_DOT(el_vec_dot_q5_0_q8_0)
EL_DECLARE_VEC_DOT(el_vec_dot_q5_1_q8_1)
EL_DECLARE_VEC_DOT(el_vec_dot_q8_0_q8_0)
EL_DECLARE_VEC_DOT(el_vec_dot_q8_1_q8_1)
EL_DECLARE_VEC_DOT(el_vec_dot_q2_K_q8_K)
EL_DECLARE_VEC_DOT(el_vec_dot_q3_K_q8_K)
EL_DECLARE_VEC_DOT(el_vec_dot_q4_K_q8_K)
EL_DECLARE_VEC_DOT(el_vec_dot_q5_K_q8_K)
EL_DECLARE_VEC_DOT(el_vec_dot_q6_K_q8_K)
EL_DECLARE_VEC_DOT(el_vec_dot_q8_K_q8_K)

#undef EL_DECLARE_VEC_DOT

/* Interleaved q4_0 / q5_0 (block_q4_0x8, block_q5_0x8) times one token: y[8g + i] = row
 * 8g + i . x for the n_groups groups at w, each of nb blocks. The token is its q8_0 blocks x
 * with, per block, the scale as f32 (xd) and minus the weights' bias (8, 16) times the sum
 * of its quants (xc): the weights go in as unsigned quants, and xc takes their bias back out
 * in integers. */
void el_gemv_q4_0x8_ref(const void *w, int64_t n_groups, int64_t nb, const block_q8_0 *x, const float *xd,
                        const int32_t *xc, float *y);
void el_gemv_q4_0x8(const void *w, int64_t n_groups, int64_t nb, const block_q8_0 *x, const float *xd,
                    const int32_t *xc, float *y);
void el_gemv_q5_0x8_ref(const void *w, int64_t n_groups, int64_t nb, const block_q8_0 *x, const float *xd,
                        const int32_t *xc, float *y);
void el_gemv_q5_0x8(const void *w, int64_t n_groups, int64_t nb, const block_q8_0 *x, const float *xd,
                    const int32_t *xc, float *y);

#endif /* EDGELLM_QUANTS_H */
