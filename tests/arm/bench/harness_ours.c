/* edgellm's ARM kernels, one call each, for bench_arm.py: `harness_ours <kernel> <type>`.
 *   gemv: el_vec_dot_<type>_<vec_dot_type> on one row of BENCH_K weights
 *   gemm: el_gemm_tile_q / el_gemm_tile_f on a full tile (el_gemm_rm rows x el_gemm_rn
 *         tokens) of BENCH_K, from the unpacked weight tile (the unpack itself is amortised
 *         over up to 512 tokens and not counted) */
#include <stdio.h>

#include "kernel_trace.h"
#include "quants.h"
#include "gemm.h"

typedef void (*vec_dot)(int64_t n, float *s, const void *w, const void *x);

static const struct { const char *name; vec_dot fn; int has_mn, scale32; } KERNELS[] = {
    {"q4_0", el_vec_dot_q4_0_q8_0, 0, 1}, {"q5_0", el_vec_dot_q5_0_q8_0, 0, 1},
    {"q8_0", el_vec_dot_q8_0_q8_0, 0, 1}, {"q4_K", el_vec_dot_q4_K_q8_K, 1, 1},
    {"q5_K", el_vec_dot_q5_K_q8_K, 1, 1}, {"q6_K", el_vec_dot_q6_K_q8_K, 0, 0},
    {"f16", el_vec_dot_f16_f16, 0, 0},
};

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    void *w = bench_buffer(1), *x = bench_buffer(2), *aux = bench_buffer(3), *aux2 = bench_buffer(4);
    float *y = bench_buffer(5);
    for (size_t i = 0; i < sizeof KERNELS / sizeof KERNELS[0]; i++) {
        if (strcmp(argv[2], KERNELS[i].name)) continue;
        if (!strcmp(argv[1], "gemv")) {
            bench_begin();
            KERNELS[i].fn(BENCH_K, y, w, x);
            bench_end();
        } else if (!strcmp(argv[1], "gemm")) {
            int is_float = !strcmp(argv[2], "f16");
            el_wpack wp = {w, aux, KERNELS[i].has_mn ? aux2 : NULL, BENCH_K, BENCH_K / 16, 1,
                           el_gemm_float_is_f16};
            el_xpack xp = {x, aux, aux2, el_gemm_rn * BENCH_K, el_gemm_rn * BENCH_K / 32, BENCH_K, BENCH_K / 16};
            int rn = is_float ? el_gemm_rn_f : el_gemm_rn;
            bench_begin();
            if (is_float) el_gemm_tile_f(&wp, el_gemm_rm, &xp, 0, rn, BENCH_K, y, el_gemm_rm);
            else el_gemm_tile_q(&wp, el_gemm_rm, &xp, 0, rn, BENCH_K, KERNELS[i].has_mn, KERNELS[i].scale32,
                                y, el_gemm_rm);
            bench_end();
            printf("tile %d %d\n", el_gemm_rm, rn);
        } else return 2;
        return 0;
    }
    return 2;
}
