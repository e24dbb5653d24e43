/* Matrix products of quantized weights with f32 activations, split across the pool.
 *
 * The activations are quantized once per call to the weight type's vec_dot_type (as
 * llama.cpp does), then every weight row is dotted with every activation row. */
#include <string.h>

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "quants.h"
#include "threadpool.h"

typedef struct {
    el_vec_dot_fn vec_dot;
    const char *w;         /* (n_rows, w_row) bytes */
    size_t w_row;
    const char *xq;        /* (n_tokens, x_row) bytes in vec_dot_type */
    size_t x_row;
    int64_t n_rows, n_cols, n_tokens;
    float *y;              /* (n_tokens, n_rows) */
} matmul_job;

static void matmul_rows(void *ctx, int64_t r0, int64_t r1, int ith) {
    (void)ith;
    const matmul_job *j = ctx;
    /* row-outer: a weight row stays in L1 while it meets every activation row */
    for (int64_t r = r0; r < r1; r++) {
        const char *w = j->w + r * j->w_row;
        for (int64_t t = 0; t < j->n_tokens; t++)
            j->vec_dot(j->n_cols, &j->y[t * j->n_rows + r], w, j->xq + t * j->x_row);
    }
}

typedef struct {
    el_from_float_fn from_float;
    const float *x;
    char *xq;
    int64_t n_cols;
    size_t x_row;
} quantize_job;

static void quantize_rows(void *ctx, int64_t t0, int64_t t1, int ith) {
    (void)ith;
    const quantize_job *j = ctx;
    for (int64_t t = t0; t < t1; t++)
        j->from_float(j->x + t * j->n_cols, j->xq + t * j->x_row, j->n_cols);
}

size_t el_matmul_wsize(int type, int64_t n_cols, int64_t n_tokens) {
    int vt = el_vec_dot_type(type);
    return vt == 0 ? 0 : (size_t)n_tokens * el_row_size(vt, n_cols);
}

void el_matmul(int type, const void *w, int64_t n_rows, int64_t n_cols,
               const float *x, int64_t n_tokens, float *y, void *wdata) {
    const el_type_traits *wt = el_get_type_traits(type);
    const el_type_traits *xt = el_get_type_traits(wt->vec_dot_type);
    size_t x_row = el_row_size(wt->vec_dot_type, n_cols);
    const char *xq = (const char *)x;
    if (wt->vec_dot_type != EL_TYPE_F32) {  /* F32 weights take the activations as they are */
        quantize_job q = {xt->from_float, x, wdata, n_cols, x_row};
        el_parallel_for(quantize_rows, &q, n_tokens, 1);
        xq = wdata;
    }
    matmul_job j = {wt->vec_dot, w, el_row_size(type, n_cols), xq, x_row, n_rows, n_cols, n_tokens, y};
    el_parallel_for(matmul_rows, &j, n_rows, 16);
}

void el_get_rows(int type, const void *table, int64_t n_cols, const int32_t *ids,
                 int64_t n_ids, float *out) {
    size_t row = el_row_size(type, n_cols);
    for (int64_t i = 0; i < n_ids; i++)
        el_dequantize_row(type, (const char *)table + (size_t)ids[i] * row, out + i * n_cols, n_cols);
}
