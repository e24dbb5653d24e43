/* ggml's ARM kernels (llama.cpp vendored in llama-cpp-python), one call each, for
 * bench_arm.py: `harness_ggml <kernel> <type>`.
 *   gemv: ggml_vec_dot_<type>_<vec_dot_type> (nrc = 1, as decode calls it) on one row of BENCH_K
 *   gemm: the repacked ggml_gemm_<type>_<layout> on 4 tokens x its interleaved columns,
 *         `gemm <type> <layout> <columns>` (what llama.cpp's --repack picks on a dotprod core) */
#include <stddef.h>
#include <stdio.h>

#include "kernel_trace.h"

typedef void (*vec_dot)(int n, float *s, size_t bs, const void *x, size_t bx, const void *y, size_t by, int nrc);
typedef void (*gemm)(int n, float *s, size_t bs, const void *vx, const void *vy, int nr, int nc);

#define VEC_DOT(t, a) void ggml_vec_dot_##t##_##a(int, float *, size_t, const void *, size_t, const void *, size_t, int);
VEC_DOT(q4_0, q8_0) VEC_DOT(q5_0, q8_0) VEC_DOT(q8_0, q8_0) VEC_DOT(q4_K, q8_K) VEC_DOT(q5_K, q8_K) VEC_DOT(q6_K, q8_K)
void ggml_vec_dot_f16(int, float *, size_t, void *, size_t, void *, size_t, int);
#define GEMM(t, l, a) void ggml_gemm_##t##_##l##_##a(int, float *, size_t, const void *, const void *, int, int);
GEMM(q4_0, 4x4, q8_0) GEMM(q8_0, 4x4, q8_0) GEMM(q4_K, 8x4, q8_K) GEMM(q5_K, 8x4, q8_K) GEMM(q6_K, 8x4, q8_K)

static const struct { const char *name; vec_dot dot; gemm mm; int columns; } KERNELS[] = {
    {"q4_0", ggml_vec_dot_q4_0_q8_0, ggml_gemm_q4_0_4x4_q8_0, 4},
    {"q5_0", ggml_vec_dot_q5_0_q8_0, NULL, 0},
    {"q8_0", ggml_vec_dot_q8_0_q8_0, ggml_gemm_q8_0_4x4_q8_0, 4},
    {"q4_K", ggml_vec_dot_q4_K_q8_K, ggml_gemm_q4_K_8x4_q8_K, 8},
    {"q5_K", ggml_vec_dot_q5_K_q8_K, ggml_gemm_q5_K_8x4_q8_K, 8},
    {"q6_K", ggml_vec_dot_q6_K_q8_K, ggml_gemm_q6_K_8x4_q8_K, 8},
    {"f16", (vec_dot)ggml_vec_dot_f16, NULL, 0},
};

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    void *w = bench_buffer(1), *x = bench_buffer(2);
    float *y = bench_buffer(5);
    for (size_t i = 0; i < sizeof KERNELS / sizeof KERNELS[0]; i++) {
        if (strcmp(argv[2], KERNELS[i].name)) continue;
        if (!strcmp(argv[1], "gemv")) {
            bench_begin();
            KERNELS[i].dot(BENCH_K, y, 0, w, 0, x, 0, 1);
            bench_end();
        } else if (!strcmp(argv[1], "gemm") && KERNELS[i].mm) {
            bench_begin();
            KERNELS[i].mm(BENCH_K, y, KERNELS[i].columns, w, x, 4, KERNELS[i].columns);
            bench_end();
            printf("tile %d %d\n", KERNELS[i].columns, 4);
        } else return 2;
        return 0;
    }
    return 2;
}
