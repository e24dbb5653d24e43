"""One counted run of edgellm inside the arm64 guest (bench_arm.py part 2).

    count_ours.py MODEL N_PREDICT ID,ID,...

Loads MODEL on one thread, evaluates the prompt token ids as given (no tokenizer: both sides
of the comparison read exactly the same tokens), then decodes N_PREDICT tokens greedily through
Model.generate without speculation (llama.cpp's side does not speculate either). Generate
evaluates every token it samples, the last one too (its KV cache then holds the whole reply),
so N_PREDICT tokens cost N_PREDICT decode passes; count_llamacpp.c does the same.

Prints the number generated, the finish reason and the evaluated generated ids
(comma-separated), so the caller can check the count, and on a second line the kernel variant
edgellm chose for the emulated core. It runs under qemu-aarch64 with the instruction-counting
plugin, which counts the whole process: bench_arm takes differences between runs to get
per-token figures.
"""

import sys

from edgellm import kernels
from edgellm.runtime.generation import load_model
from edgellm.runtime.sampling import SamplingParams


def main() -> None:
    model_path, n_predict, ids = sys.argv[1], int(sys.argv[2]), [int(t) for t in sys.argv[3].split(",")]
    model = load_model(model_path, n_ctx=512, threads=1, progress=False)
    gen = model.generate(ids, max_tokens=n_predict, sampling=SamplingParams(temperature=0.0), speculate=False)
    "".join(gen)
    # the KV cache holds the prompt and every generated token
    print(gen.n_generated, gen.finish_reason, ",".join(map(str, model.tokens[len(ids):])))
    print(f"kernels: {kernels.VARIANT}")


if __name__ == "__main__":
    main()
