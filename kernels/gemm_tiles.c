/* Portable tile kernels (the generic variant): plain C over the packed forms of gemm.h, 32
 * elements per step. Integer sums per 16 elements, scaled once each, so the compiler's
 * vectoriser has simple fixed-length loops to work with. */
#include "gemm.h"

#define RM 4
#define RN 4
#define STEP 32

const int el_gemm_rm = RM, el_gemm_rn = RN, el_gemm_rn_f = RN, el_gemm_step = STEP;
const int el_gemm_float_is_f16 = 0;
const int el_gemm_reads_f16 = 0;

int el_gemm_wants_signed(int type) {
    (void)type;
    return 1;
}

void el_gemm_tile_q(const el_wpack *w, int nr, const el_xpack *x, int64_t t0, int nt, int64_t k,
                    int has_mn, int scale32, float *y, int64_t ldy) {
    (void)scale32;
    float acc[RM][RN] = {{0}};
    const int8_t *wq = w->q, *xq = (const int8_t *)x->q + t0 / RN * x->gq;
    const float *wl = w->ls, *xd = x->d + t0 / RN * x->gd;
    const int64_t steps = (k + STEP - 1) / STEP;
    for (int64_t s = 0; s < steps; s++, wq += RM * STEP, wl += RM * STEP / 4, xq += RN * STEP, xd += RN) {
        for (int i = 0; i < nr; i++)  /* the hot loop */
            for (int j = 0; j < nt; j++) {
                int s0 = 0, s1 = 0;
                for (int e = 0; e < 16; e++) {
                    s0 += wq[i * STEP + e] * xq[j * STEP + e];
                    s1 += wq[i * STEP + 16 + e] * xq[j * STEP + 16 + e];
                }
                acc[i][j] += (wl[i * 8] * xd[j]) * (float)s0 + (wl[i * 8 + 4] * xd[j]) * (float)s1;
            }
    }
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nt; j++) {
            float s = acc[i][j];
            if (has_mn)
                for (int64_t g = 0; g < k / 16; g++)
                    s += w->mn[i * w->ldm + g] * x->s[(t0 + j) * x->lds + g];
            y[(t0 + j) * ldy + i] = s;
        }
}

void el_gemm_tile_f(const el_wpack *w, int nr, const el_xpack *x, int64_t t0, int nt, int64_t k,
                    float *y, int64_t ldy) {
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nt; j++) {
            const float *wr = (const float *)w->q + i * w->ldq;
            const float *xr = (const float *)x->q + (t0 + j) * x->ldq;
            /* 8 partial sums: a vectorisable reduction without reassociating one sum */
            float part[8] = {0};
            int64_t e = 0;
            for (; e + 8 <= k; e += 8)
                for (int l = 0; l < 8; l++) part[l] += wr[e + l] * xr[e + l];
            float s = 0.0f;
            for (; e < k; e++) s += wr[e] * xr[e];
            for (int l = 0; l < 8; l++) s += part[l];
            y[(t0 + j) * ldy + i] = s;
        }
}
