/* Every kernel of one variant against the reference, on random inputs: a test driver that
 * is cross-compiled with the kernel sources (tests/test_kernels_arm.py) and run under
 * qemu-aarch64, where Python and cffi are not available.
 *
 *   quantizers   el_from_float (the variant's) == el_from_float_ref (reference), bit for bit,
 *                for the activation types f16, bf16, q8_0, q8_1, q8_K;
 *   vec_dot      el_vec_dot vs el_vec_dot_ref, every type;
 *   matmul       el_matmul vs el_matmul_ref: n_tokens 1..17 (GEMV and every GEMM tile edge),
 *                37 rows (odd: a partial row tile), rows of 512 and 608 (19 blocks), 1..3
 *                threads;
 *   interleaved  el_matmul_x8 over el_pack_x8's layout vs el_matmul_ref on the q4_0 and
 *                q5_0 rows: 88 rows (11 groups of 8), 1, 2, 5 and 17 tokens, 1..3 threads;
 *   attention    el_attention vs a double-precision softmax(q k^T) v over the f16 cache, q
 *                and the weights rounded to f16 as the kernel does;
 *   ops          GELU (on the f16 grid), SiLU, RMS norm, softmax vs double-precision formulas.
 *
 * Tolerances, relative to S = sum |w_i x_i| of the dequantized operands (the size of the sum
 * before cancellation): integer sums are exact, only the f32 scaling and accumulation order
 * differ from the reference, ~1e-7 S measured; 1e-5 S leaves a margin while a wrong nibble,
 * scale or sign is O(S). q4_1 / q5_1 add the fp16 rounding of q8_1's s (2^-11 of |m s|) when
 * the GEMM path computes the same term from the quants. f16 weights on fp16-arithmetic cores
 * accumulate in fp16 (as llama.cpp there): each lane sums at most 16 products per span before
 * it is flushed to f32, so the error is at most 16 * 2^-11 S.
 *
 * Prints one line per failure and a summary; exit status 0 iff everything passed.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "quants.h"  /* the EL_TYPE_ ids */

static int failures, checks;

#define CHECK(cond, ...)                  \
    do {                                  \
        checks++;                         \
        if (!(cond)) {                    \
            failures++;                   \
            if (failures <= 40) {         \
                printf("FAIL ");          \
                printf(__VA_ARGS__);      \
                printf("\n");             \
            }                             \
        }                                 \
    } while (0)

/* ---- random numbers: xorshift64*, Box-Muller ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static double uniform(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static float gauss(void) {
    const double u = uniform() + 1e-12, v = uniform();
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* weights-like rows: gaussian with a per-row scale, a zero block, an outlier */
static void random_rows(float *x, int rows, int n) {
    for (int r = 0; r < rows; r++) {
        const float scale = (float)exp(uniform() * 4 - 2);
        for (int i = 0; i < n; i++) x[r * n + i] = gauss() * scale;
        if (n >= 64) {
            memset(x + r * n + 32, 0, 32 * sizeof(float));
            x[r * n + 7] = 12 * scale;
        }
    }
}

/* ---- the types ---- */

static const struct { const char *name; int type; } TYPES[] = {
    {"f32", 0}, {"f16", 1}, {"bf16", 30}, {"q4_0", 2}, {"q4_1", 3}, {"q5_0", 6}, {"q5_1", 7},
    {"q8_0", 8}, {"q2_K", 10}, {"q3_K", 11}, {"q4_K", 12}, {"q5_K", 13}, {"q6_K", 14},
};
#define N_TYPES ((int)(sizeof TYPES / sizeof TYPES[0]))

static int fp16_arithmetic(void) {
    return strcmp(el_kernels_variant(), "dotprod") == 0;
}

/* allowed |got - want| for one dot product of `type` whose |w_i x_i| sum to S */
static double tolerance(int type, double S, double min_term) {
    if (type == 1 && fp16_arithmetic()) return 16 * 0x1p-11 * S;
    return 1e-5 * S + 0x1p-11 * min_term + 1e-30;
}

/* q4_1 / q5_1: sum over blocks of |m * s| (the min term's size) */
static double min_term(int type, const void *w, const void *xq, int n) {
    if (type != 3 && type != 7) return 0;
    const int wsize = el_type_size(type);
    double sum = 0;
    for (int b = 0; b < n / 32; b++) {
        uint16_t m, s;
        memcpy(&m, (const char *)w + b * wsize + 2, 2);
        memcpy(&s, (const char *)xq + b * 36 + 2, 2);
        float mf, sf;
        el_f16_to_f32(&m, &mf, 1);
        el_f16_to_f32(&s, &sf, 1);
        sum += fabs((double)mf * sf);
    }
    return sum;
}

static void check_quantizers(void) {
    const int acts[] = {1, 30, 8, 9, 15}, n = 1024;
    float *x = malloc(4 * n * sizeof(float));
    random_rows(x, 4, n);
    x[5] = 1000.0f;  /* a tie for the largest magnitude (q8_K keeps the first) */
    x[6] = -1000.0f;
    for (int a = 0; a < 5; a++) {
        const size_t size = el_row_size(acts[a], n);
        char *want = malloc(size), *got = malloc(size);
        for (int r = 0; r < 4; r++) {
            el_from_float_ref(acts[a], x + r * n, want, n);
            el_from_float(acts[a], x + r * n, got, n);
            CHECK(memcmp(want, got, size) == 0, "quantizer of type %d row %d differs from the reference", acts[a], r);
        }
        free(want);
        free(got);
    }
    free(x);
}

static void check_vec_dot(void) {
    const int n = 1024, rows = 6;
    float *w = malloc(rows * n * sizeof(float)), *x = malloc(n * sizeof(float));
    float *wd = malloc(n * sizeof(float)), *xd = malloc(n * sizeof(float));
    for (int t = 0; t < N_TYPES; t++) {
        const int type = TYPES[t].type, vt = el_vec_dot_type(type);
        random_rows(w, rows, n);
        for (int i = 0; i < n; i++) x[i] = gauss();
        const size_t wrow = el_row_size(type, n);
        char *wq = malloc(rows * wrow), *xq = malloc(el_row_size(vt, n));
        for (int r = 0; r < rows; r++) el_quantize_row(type, w + r * n, wq + r * wrow, n);
        el_from_float_ref(vt, x, xq, n);
        el_dequantize_row(vt, xq, xd, n);
        for (int r = 0; r < rows; r++) {
            el_dequantize_row(type, wq + r * wrow, wd, n);
            double S = 0;
            for (int i = 0; i < n; i++) S += fabs((double)wd[i] * xd[i]);
            const float got = el_vec_dot(type, n, wq + r * wrow, xq);
            const float want = el_vec_dot_ref(type, n, wq + r * wrow, xq);
            const double tol = tolerance(type, S, min_term(type, wq + r * wrow, xq, n));
            CHECK(fabs((double)got - want) <= tol, "vec_dot %s row %d: %.9g vs reference %.9g (tolerance %.3g)",
                  TYPES[t].name, r, got, want, tol);
        }
        free(wq);
        free(xq);
    }
    free(w);
    free(x);
    free(wd);
    free(xd);
}

static void check_matmul_n(int n) {
    const int rows = 37, max_tokens = 17;
    float *w = malloc(rows * n * sizeof(float)), *x = malloc(max_tokens * n * sizeof(float));
    float *y = malloc(max_tokens * rows * sizeof(float)), *yr = malloc(max_tokens * rows * sizeof(float));
    float *wd = malloc(rows * n * sizeof(float)), *xd = malloc(n * sizeof(float));
    for (int t = 0; t < N_TYPES; t++) {
        const int type = TYPES[t].type, vt = el_vec_dot_type(type);
        if (n % el_block_size(type)) continue;
        random_rows(w, rows, n);
        const size_t wrow = el_row_size(type, n);
        char *wq = malloc(rows * wrow);
        for (int r = 0; r < rows; r++) el_quantize_row(type, w + r * n, wq + r * wrow, n);
        for (int r = 0; r < rows; r++) el_dequantize_row(type, wq + r * wrow, wd + r * n, n);
        for (int nt = 1; nt <= max_tokens; nt++) {
            el_set_threads(1 + nt % 3);
            for (int i = 0; i < nt * n; i++) x[i] = gauss() * 2;
            char *ws = malloc(el_matmul_wsize(type, n, nt) + 64);
            el_matmul(type, wq, rows, n, x, nt, y, ws);
            el_matmul_ref(type, wq, rows, n, x, nt, yr, ws);
            for (int tok = 0; tok < nt; tok++) {
                char *xq = malloc(el_row_size(vt, n) + 1);
                if (vt != 0) {
                    el_from_float_ref(vt, x + tok * n, xq, n);
                    el_dequantize_row(vt, xq, xd, n);
                } else {
                    memcpy(xd, x + tok * n, n * sizeof(float));
                }
                for (int r = 0; r < rows; r++) {
                    double S = 0;
                    for (int i = 0; i < n; i++) S += fabs((double)wd[r * n + i] * xd[i]);
                    const double tol = tolerance(type, S, vt ? min_term(type, wq + r * wrow, xq, n) : 0);
                    const float got = y[tok * rows + r], want = yr[tok * rows + r];
                    CHECK(fabs((double)got - want) <= tol,
                          "matmul %s, %d x %d, %d tokens, %d threads: y[%d, %d] = %.9g vs reference %.9g (tolerance %.3g)",
                          TYPES[t].name, rows, n, nt, el_get_threads(), tok, r, got, want, tol);
                }
                free(xq);
            }
            free(ws);
        }
        free(wq);
    }
    el_set_threads(1);
    free(w);
    free(x);
    free(y);
    free(yr);
    free(wd);
    free(xd);
}

static void check_matmul(void) {
    check_matmul_n(512);
    check_matmul_n(608);  /* 19 blocks of 32: an odd block count (block types only) */
}

static void check_interleaved_type(int type, const char *name) {
    const int rows = 88, n = 640, max_tokens = 17;
    float *w = malloc(rows * n * sizeof(float)), *x = malloc(max_tokens * n * sizeof(float));
    float *y = malloc(max_tokens * rows * sizeof(float)), *yr = malloc(max_tokens * rows * sizeof(float));
    float *wd = malloc(rows * n * sizeof(float)), *xd = malloc(n * sizeof(float));
    const size_t wrow = el_row_size(type, n);
    char *wq = malloc(rows * wrow), *packed = malloc(rows * wrow), *xq = malloc(el_row_size(8, n));
    random_rows(w, rows, n);
    for (int r = 0; r < rows; r++) el_quantize_row(type, w + r * n, wq + r * wrow, n);
    for (int r = 0; r < rows; r++) el_dequantize_row(type, wq + r * wrow, wd + r * n, n);
    CHECK(el_pack_x8(type, wq, rows, n, packed) == 0, "el_pack_x8 refused %d rows of %d %s", rows, n, name);
    static const int token_counts[] = {1, 2, 5, 17};
    for (int c = 0; c < 4; c++) {
        const int nt = token_counts[c];
        el_set_threads(1 + nt % 3);
        for (int i = 0; i < nt * n; i++) x[i] = gauss() * 2;
        char *ws = malloc(el_matmul_x8_wsize(n, nt) + el_matmul_wsize(type, n, nt));
        el_matmul_x8(type, packed, rows, n, x, nt, y, ws);
        el_matmul_ref(type, wq, rows, n, x, nt, yr, ws);
        for (int tok = 0; tok < nt; tok++) {
            el_from_float_ref(8, x + tok * n, xq, n);
            el_dequantize_row(8, xq, xd, n);
            for (int r = 0; r < rows; r++) {
                double S = 0;
                for (int i = 0; i < n; i++) S += fabs((double)wd[r * n + i] * xd[i]);
                const float got = y[tok * rows + r], want = yr[tok * rows + r];
                CHECK(fabs((double)got - want) <= tolerance(type, S, 0),
                      "interleaved %s, %d x %d, %d tokens, %d threads: y[%d, %d] = %.9g vs reference %.9g",
                      name, rows, n, nt, el_get_threads(), tok, r, got, want);
            }
        }
        free(ws);
    }
    el_set_threads(1);
    free(w), free(x), free(y), free(yr), free(wd), free(xd), free(wq), free(packed), free(xq);
}

static void check_interleaved(void) {
    check_interleaved_type(2, "q4_0");
    check_interleaved_type(6, "q5_0");
}

/* x rounded to the nearest f16 */
static float round_f16(float x) {
    uint16_t h;
    float y;
    el_f32_to_f16(&x, &h, 1);
    el_f16_to_f32(&h, &y, 1);
    return y;
}

static void check_attention(void) {
    /* 11 tokens of 2 heads per kv head: 22 queries, enough for the prefill layout (queries
     * across the lanes); each token alone is the decode one */
    enum { N_HEAD = 4, N_KV = 2, HD = 64, N_SLOTS = 40, N_TOK = 11 };
    const int group = N_HEAD / N_KV, row = N_KV * HD;
    float *kf = malloc(N_SLOTS * row * sizeof(float)), *vf = malloc(N_SLOTS * row * sizeof(float));
    uint16_t *kc = malloc(N_SLOTS * row * 2), *vc = malloc(N_SLOTS * row * 2);
    float q[N_TOK * N_HEAD * HD], out[N_TOK * N_HEAD * HD];
    int32_t slot_pos[N_SLOTS], q_pos[N_TOK];
    for (int i = 0; i < N_SLOTS * row; i++) kf[i] = gauss(), vf[i] = gauss();
    el_f32_to_f16(kf, kc, N_SLOTS * row);
    el_f32_to_f16(vf, vc, N_SLOTS * row);
    el_f16_to_f32(kc, kf, N_SLOTS * row);  /* the reference reads what the cache holds */
    el_f16_to_f32(vc, vf, N_SLOTS * row);
    for (int s = 0; s < N_SLOTS; s++) slot_pos[s] = s < 33 ? (s * 7) % 33 : -1;  /* a shuffled ring */
    for (int t = 0; t < N_TOK; t++) q_pos[t] = 22 + t;
    for (int i = 0; i < N_TOK * N_HEAD * HD; i++) q[i] = gauss();
    const int windows[2] = {0, 9};
    for (int wi = 0; wi < 2; wi++) {
        const int window = windows[wi];
        el_set_threads(1 + wi);
        el_attention(q, q_pos, N_TOK, N_HEAD, N_KV, HD, EL_TYPE_F16, kc, vc, slot_pos, N_SLOTS, window, 0.125f, out);
        for (int t = 0; t < N_TOK; t++)
            for (int h = 0; h < N_HEAD; h++) {
                const int g = h / group;
                /* the kernel rounds the query and the softmax weights to f16 (llama.cpp's CPU
                 * backend does): a weight at a rounding boundary may go the other way, 2^-11 p|v| */
                double sc[N_SLOTS], max = -INFINITY, sum = 0, o[HD] = {0}, flip[HD] = {0};
                float qh[HD];
                for (int e = 0; e < HD; e++) qh[e] = round_f16(q[(t * N_HEAD + h) * HD + e]);
                for (int s = 0; s < N_SLOTS; s++) {
                    const int p = slot_pos[s];
                    const int vis = p >= 0 && p <= q_pos[t] && (window == 0 || q_pos[t] - p < window);
                    sc[s] = -INFINITY;
                    if (!vis) continue;
                    double d = 0;
                    for (int e = 0; e < HD; e++) d += (double)qh[e] * kf[s * row + g * HD + e];
                    sc[s] = d * 0.125;
                    max = sc[s] > max ? sc[s] : max;
                }
                for (int s = 0; s < N_SLOTS; s++)
                    if (sc[s] != -INFINITY) sum += exp(sc[s] - max);
                for (int s = 0; s < N_SLOTS; s++) {
                    if (sc[s] == -INFINITY) continue;
                    const double p = round_f16((float)(exp(sc[s] - max) / sum));
                    for (int e = 0; e < HD; e++) {
                        o[e] += p * vf[s * row + g * HD + e];
                        flip[e] = fmax(flip[e], p * fabs(vf[s * row + g * HD + e]));
                    }
                }
                for (int e = 0; e < HD; e++) {
                    const double want = o[e], got = out[(t * N_HEAD + h) * HD + e];
                    CHECK(fabs(got - want) <= 1e-5 + ldexp(flip[e], -10),
                          "attention window %d token %d head %d dim %d: %.9g vs %.9g", window, t, h, e, got, want);
                }
            }
    }
    el_set_threads(1);
    free(kf);
    free(vf);
    free(kc);
    free(vc);
}

static void check_ops(void) {
    enum { N = 70001 };  /* odd: every vector loop's scalar tail runs */
    float *g = malloc(N * sizeof(float)), *u = malloc(N * sizeof(float)), *r = malloc(N * sizeof(float));
    for (int i = 0; i < N; i++) g[i] = gauss() * 6, u[i] = gauss();
    for (int act = 0; act < 2; act++) {
        memcpy(r, g, N * sizeof(float));
        el_set_threads(2);
        (act ? el_silu_mul : el_gelu_mul)(r, u, N);
        for (int i = 0; i < N; i++) {
            const double x = g[i];
            if (act) {
                const double want = x / (1 + exp(-x)) * u[i];
                CHECK(fabs(r[i] - want) <= 1e-6 * fabs(x * u[i]) + 1e-30, "silu(%.9g) * %.9g = %.9g vs %.9g", x,
                      u[i], r[i], want);
                continue;
            }
            /* GELU on ggml's f16 grid (ops.c); f32 tanh near -1 cancels, and a value may round
             * to the neighbouring f16 at a boundary (test_kernels_variants.py says the same) */
            const double x16 = round_f16(g[i]);
            const double a = x <= -10 ? 0 : x >= 10 ? x
                           : round_f16((float)(0.5 * x16 * (1 + tanh(0.7978845608028654 * (x16 + 0.044715 * x16 * x16 * x16)))));
            const double want = a * u[i];
            CHECK(fabs(r[i] - want) <= ldexp(fabs(want), -10) + (ldexp(fabs(x), -23) + ldexp(1, -24)) * fabs(u[i]),
                  "gelu(%.9g) * %.9g = %.9g vs %.9g", x, u[i], r[i], want);
        }
    }
    enum { ROWS = 9, DIM = 333 };
    float *w = malloc(DIM * sizeof(float)), *y = malloc(ROWS * DIM * sizeof(float));
    for (int i = 0; i < DIM; i++) w[i] = gauss();
    el_rmsnorm(g, w, y, DIM, ROWS, 1e-6f);
    for (int row = 0; row < ROWS; row++) {
        double ss = 0;
        for (int i = 0; i < DIM; i++) ss += (double)g[row * DIM + i] * g[row * DIM + i];
        const double scale = 1 / sqrt(ss / DIM + 1e-6);
        for (int i = 0; i < DIM; i++) {
            const double want = g[row * DIM + i] * scale * w[i];
            CHECK(fabs(y[row * DIM + i] - want) <= 1e-6 * fabs(want) + 1e-7, "rmsnorm [%d, %d]: %.9g vs %.9g", row, i,
                  y[row * DIM + i], want);
        }
    }
    memcpy(y, g, ROWS * DIM * sizeof(float));
    el_softmax(y, DIM, ROWS);
    for (int row = 0; row < ROWS; row++) {
        double max = -INFINITY, sum = 0;
        for (int i = 0; i < DIM; i++) max = g[row * DIM + i] > max ? g[row * DIM + i] : max;
        for (int i = 0; i < DIM; i++) sum += exp(g[row * DIM + i] - max);
        for (int i = 0; i < DIM; i++) {
            const double want = exp(g[row * DIM + i] - max) / sum;
            CHECK(fabs(y[row * DIM + i] - want) <= 1e-6 * want + 1e-12, "softmax [%d, %d]: %.9g vs %.9g", row, i,
                  y[row * DIM + i], want);
        }
    }
    el_set_threads(1);
    free(g);
    free(u);
    free(r);
    free(w);
    free(y);
}

int main(void) {
    printf("variant %s\n", el_kernels_variant());
    check_quantizers();
    check_vec_dot();
    check_matmul();
    check_interleaved();
    check_attention();
    check_ops();
    printf("%s: %d checks, %d failures\n", el_kernels_variant(), checks, failures);
    return failures != 0;
}
