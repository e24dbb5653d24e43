/* The kernels' public API: every function Python calls through cffi.
 *
 * This header is read twice: by the C compiler, and by cffi's cdef (build_kernels.py), so it
 * holds plain declarations only (no #include, no macros, no inline code).
 *
 * Type ids are ggml's (enum ggml_type), so a GGUF tensor's type field indexes the tables:
 *   F32=0 F16=1 Q4_0=2 Q4_1=3 Q5_0=6 Q5_1=7 Q8_0=8 Q8_1=9 Q2_K=10 Q3_K=11 Q4_K=12 Q5_K=13
 *   Q6_K=14 Q8_K=15 BF16=30
 * Matrices are row-major the ggml way: a weight of GGUF shape [n_cols, n_rows] is n_rows rows
 * of n_cols elements, each row el_row_size(type, n_cols) bytes.
 */

/* ---- quantization formats (quants.c) ---- */

/* 1 if the kernels know this type, else 0. */
int el_type_supported(int type);
/* Elements per block and bytes per block of a type (0 if unsupported). */
int el_block_size(int type);
int el_type_size(int type);
/* Bytes of a row of n elements; n must be a multiple of the block size. */
size_t el_row_size(int type, int64_t n);
/* The type activations are quantized to before a dot product with weights of `type`
 * (llama.cpp's vec_dot_type): Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for
 * k-quants, F16 for F16, BF16 for BF16, F32 for F32. */
int el_vec_dot_type(int type);

/* float -> type, n elements (n a multiple of the block size). Reference implementations,
 * deterministic; rounding matches ggml's quantize_row_*_ref. Returns 0, or -1 if the type
 * cannot be quantized to. */
int el_quantize_row(int type, const float *x, void *y, int64_t n);
/* type -> float, n elements. Returns 0, or -1 for an unsupported type. */
int el_dequantize_row(int type, const void *x, float *y, int64_t n);
/* Dot product of one weight row of `type` with activations already quantized to
 * el_vec_dot_type(type); n elements. el_vec_dot runs this variant's kernel, el_vec_dot_ref the
 * portable reference (NAN for an unsupported type or a partial block). */
float el_vec_dot(int type, int64_t n, const void *w, const void *xq);
float el_vec_dot_ref(int type, int64_t n, const void *w, const void *xq);
/* float -> type as the matmul quantizes activations: el_from_float runs this variant's
 * kernel, el_from_float_ref the portable reference, bit for bit the same. For q8_0 and q8_1
 * this is ggml-cpu's rule on x86 (scale 127 / amax, ties to even), which differs from
 * el_quantize_row's (ggml's reference, for weights). Returns 0 or -1. */
int el_from_float(int type, const float *x, void *y, int64_t n);
int el_from_float_ref(int type, const float *x, void *y, int64_t n);

/* ---- the build ---- */

/* This module's kernel variant ("generic", "avx2", "avx512", "avx512vnni", "neon", "dotprod"). */
const char *el_kernels_variant(void);

/* ---- thread pool and matrix products (matmul.c) ---- */

/* Threads used by el_matmul and el_attention (the caller counts as one); the pool's
 * threads are created once and persist. Returns the count in effect. */
int el_set_threads(int n_threads);
int el_get_threads(void);

/* Bytes of scratch el_matmul needs for n_tokens activation rows of n_cols. */
size_t el_matmul_wsize(int type, int64_t n_cols, int64_t n_tokens);
/* y[t * n_rows + r] = dot(W row r, x row t) for r < n_rows, t < n_tokens.
 * w: n_rows rows of `type`; x: (n_tokens, n_cols) f32; y: (n_tokens, n_rows) f32;
 * wdata: el_matmul_wsize(...) bytes of scratch for the quantized activations. */
void el_matmul(int type, const void *w, int64_t n_rows, int64_t n_cols,
               const float *x, int64_t n_tokens, float *y, void *wdata);
/* Several products of the same activations, y_i = W_i x for i < n (n <= EL_MULTI_MAX; a
 * layer's q, k and v, or its gate and up), each W_i of n_rows[i] rows of types[i] and n_cols
 * columns, y[i]: (n_tokens, n_rows[i]). For a few tokens (decode) with weights that take the
 * same activation type, the activations are quantized once and the rows of all the matrices
 * are split across the pool as one job: a decode step's small matrices cost one dispatch,
 * not three. Otherwise el_matmul on each. wdata: el_matmul_multi_wsize(...) bytes. */
#define EL_MULTI_MAX 4
size_t el_matmul_multi_wsize(int n, const int *types, int64_t n_cols, int64_t n_tokens);
void el_matmul_multi(int n, const int *types, void *const *w, const int64_t *n_rows, int64_t n_cols,
                     const float *x, int64_t n_tokens, float *const *y, void *wdata);
/* The same product the slow, obvious way: reference quantizer and reference dot product for
 * every (row, token). The oracle the tests hold el_matmul to. */
void el_matmul_ref(int type, const void *w, int64_t n_rows, int64_t n_cols,
                   const float *x, int64_t n_tokens, float *y, void *wdata);
/* For each of n_tokens f32 rows x of n_cols and its row y of n_rows: the k (at most
 * EL_RESCORE_MAX) largest of y recomputed as dot(W row, x). An LM head requantized at load
 * recomputes its top candidates from the stored rows, so greedy choices keep the file's
 * precision. W's rows are in memory at w, or (fd >= 0, w unused) in the file fd from byte
 * w_offset on, read with pread: the few rows a token needs are neither mapped nor kept, so
 * a long generation does not pile them up in RSS (a row that cannot be read keeps its y).
 * wdata: el_rescore_top_wsize(type, n_cols) bytes. */
#define EL_RESCORE_MAX 64
size_t el_rescore_top_wsize(int type, int64_t n_cols);
void el_rescore_top(int type, const void *w, int fd, int64_t w_offset, int64_t n_rows, int64_t n_cols,
                    const float *x, int64_t n_tokens, float *y, int k, void *wdata);
/* Rows interleaved eight at a time (quants.h's block_q4_0x8, block_q5_0x8): the layout the
 * runtime gives a Q4_0 or Q5_0 copy it makes of a matrix (its LM head requantized at load),
 * which decode streams at memory speed. el_pack_x8 writes n_rows (a multiple of 8) rows of
 * n_cols of `type` in it (returns 0, or -1 for another type or shape); el_matmul_x8 is
 * el_matmul over such a matrix (the type it was packed from), with
 * el_matmul_x8_wsize(n_cols, n_tokens) bytes of wdata.
 * Its sums are not in llama.cpp's order. */
int el_pack_x8(int type, const void *w, int64_t n_rows, int64_t n_cols, void *out);
size_t el_matmul_x8_wsize(int64_t n_cols, int64_t n_tokens);
void el_matmul_x8(int type, const void *w, int64_t n_rows, int64_t n_cols, const float *x, int64_t n_tokens,
                  float *y, void *wdata);
/* out[i, :] = dequantized row ids[i] of a table of n_rows rows (embedding lookup). */
void el_get_rows(int type, const void *table, int64_t n_cols, const int32_t *ids,
                 int64_t n_ids, float *out);
/* The same from a table in the file fd at byte `offset`, each row read with pread into
 * row_buf (el_row_size(type, n_cols) bytes): a lookup table whose pages the process does
 * not otherwise hold (the tied embedding of an LM head requantized at load) is never mapped,
 * so lookups do not fault in 64 KB around every row they read. 0, or -1 if a row could not be
 * read. */
int el_get_rows_fd(int type, int fd, int64_t offset, int64_t n_cols, const int32_t *ids,
                   int64_t n_ids, float *out, void *row_buf);

/* ---- elementwise and normalisation (ops.c); all f32, n_rows rows of n ---- */

/* y = x / sqrt(mean(x^2) + eps) * w   (w may be NULL; y may alias x) */
void el_rmsnorm(const float *x, const float *w, float *y, int64_t n, int64_t n_rows, float eps);
/* y = (x - mean) / sqrt(var + eps) * w + b   (w, b may be NULL) */
void el_layernorm(const float *x, const float *w, const float *b, float *y, int64_t n,
                  int64_t n_rows, float eps);
/* gate = act(gate) * up, n elements; act is GELU (tanh approximation, on ggml's f16 grid:
 * ops.c) or SiLU. */
void el_gelu_mul(float *gate, const float *up, int64_t n);
void el_silu_mul(float *gate, const float *up, int64_t n);
/* y += x;  y *= s;  y += bias broadcast over n_rows rows of n */
void el_add(float *y, const float *x, int64_t n);
void el_scale(float *y, float s, int64_t n);
void el_add_bias(float *y, const float *bias, int64_t n, int64_t n_rows);
/* In-place softmax of n_rows rows of n. */
void el_softmax(float *x, int64_t n, int64_t n_rows);
/* Rotary embedding in place on x: (n_tokens, n_heads, head_dim). The first n_rot dims of
 * each head rotate; theta_i = pos * freq_scale * freq_base^(-2i/n_rot) / freq_factors[i]
 * (freq_factors: n_rot/2 floats, Llama 3.1's rope_freqs, or NULL).
 * neox=0: pairs (2i, 2i+1) (llama); neox=1: pairs (i, i + n_rot/2) (gemma, qwen2). */
void el_rope(float *x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t n_rot,
             const int32_t *pos, float freq_base, float freq_scale, const float *freq_factors,
             int neox);

/* ---- KV cache and attention (attention.c) ---- */

/* Write n_tokens rows of k and v, each (n_kv_head * head_dim) f32, into cache rows
 * slots[0..n_tokens) of type kv_type: EL_TYPE_F16, or EL_TYPE_Q8_0 (quantized as activations
 * are, el_from_float; head_dim a multiple of 32). Returns 0, or -1 for another type. */
int el_kv_store(int kv_type, const float *k, const float *v, void *k_cache, void *v_cache,
                const int32_t *slots, int64_t n_tokens, int64_t row);
/* Causal attention of n_tokens queries over a cache of n_slots rows.
 * q: (n_tokens, n_head, head_dim) f32, q_pos[t] the position of query t;
 * k_cache, v_cache: (n_slots, n_kv_head, head_dim) of kv_type (as el_kv_store); slot_pos[s]
 * the position held by slot s, or -1 if empty. Query t attends slot s iff
 * 0 <= slot_pos[s] <= q_pos[t] and (window == 0 or q_pos[t] - slot_pos[s] < window). Heads
 * share kv heads in groups (n_head / n_kv_head). out: (n_tokens, n_head, head_dim). Each
 * thread keeps its own score buffer, grown when a longer cache needs it. Returns 0, or -1
 * for a kv_type el_kv_store does not write. */
int el_attention(const float *q, const int32_t *q_pos, int64_t n_tokens, int64_t n_head,
                 int64_t n_kv_head, int64_t head_dim, int kv_type, const void *k_cache,
                 const void *v_cache, const int32_t *slot_pos, int64_t n_slots,
                 int64_t window, float scale, float *out);

/* f32 <-> f16 / bf16 conversion of n values. */
void el_f32_to_f16(const float *x, uint16_t *y, int64_t n);
void el_f16_to_f32(const uint16_t *x, float *y, int64_t n);
