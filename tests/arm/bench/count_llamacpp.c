/* One counted run of llama.cpp for bench_arm.py part 2: count_ours.py's twin.
 *
 *   count_llamacpp [--no-repack] MODEL N_PREDICT ID,ID,...
 *
 * Loads MODEL (llama.cpp's CPU backend, weight repacking at its default, on, unless
 * --no-repack: llama_model_params.use_extra_bufts), one thread,
 * flash attention off (edgellm's attention is llama.cpp's without it), evaluates the prompt
 * token ids as given in one batch, then samples N_PREDICT tokens greedily and evaluates each,
 * the last one too, as edgellm's Model.generate does (count_ours.py). Prints the number
 * generated, "length" or "stop", the evaluated generated ids (comma-separated), and on a second
 * line `repacked: N` with the tensors ggml's CPU backend repacked at load (its debug log says
 * so per tensor).
 * Built against llama.cpp's static libraries with aarch64-linux-gnu-gcc (bench_arm.py).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static int repacked;

/* llama.cpp's and ggml's log: only the repack lines are counted, nothing is printed but errors */
static void on_log(enum ggml_log_level level, const char *text, void *user)
{
    (void)user;
    if (strstr(text, "repack tensor"))
        repacked++;
    if (level == GGML_LOG_LEVEL_ERROR)
        fputs(text, stderr);
}

int main(int argc, char **argv)
{
    bool repack = true;
    if (argc > 1 && strcmp(argv[1], "--no-repack") == 0) {
        repack = false;
        argv++;
        argc--;
    }
    if (argc != 4) {
        fprintf(stderr, "usage: %s [--no-repack] MODEL N_PREDICT ID,ID,...\n", argv[0]);
        return 2;
    }
    int n_predict = atoi(argv[2]);
    llama_token prompt[512];
    int n_prompt = 0;
    for (char *p = argv[3]; *p && n_prompt < 512; n_prompt++) {
        prompt[n_prompt] = (llama_token)strtol(p, &p, 10);
        if (*p == ',')
            p++;
    }

    llama_log_set(on_log, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.use_extra_bufts = repack;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512;
    cp.n_batch = cp.n_ubatch = 512;
    cp.n_threads = cp.n_threads_batch = 1;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.no_perf = true;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    struct llama_sampler *greedy = llama_sampler_init_greedy();

    llama_token generated[512];
    int n_generated = 0;
    const char *reason = "length";
    struct llama_batch batch = llama_batch_get_one(prompt, n_prompt);
    for (;;) {
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "llama_decode failed\n");
            return 1;
        }
        if (n_generated >= n_predict || n_generated >= 512)
            break;
        llama_token t = llama_sampler_sample(greedy, ctx, -1);
        if (llama_vocab_is_eog(vocab, t)) {
            reason = "stop";
            break;
        }
        generated[n_generated++] = t;
        batch = llama_batch_get_one(&generated[n_generated - 1], 1);
    }
    printf("%d %s ", n_generated, reason);
    for (int i = 0; i < n_generated; i++)
        printf(i ? ",%d" : "%d", generated[i]);
    printf("\nrepacked: %d\n", repacked);

    llama_sampler_free(greedy);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
