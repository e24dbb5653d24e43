"""Our forward pass against llama.cpp's (llama-cpp-python built from source) on the same
file and the same token ids: greedy continuations of the real default model, and the
last-position logits of synthetic llama and qwen2 models in every weight type."""

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three primary colors are",
    "To make a cup of tea, first",
    "Water boils at a temperature of",
    "The Raspberry Pi is a small computer that",
    "Q: What is the largest planet in the solar system?\nA:",
    "In 1969, Neil Armstrong",
    "My favourite recipe for pancakes needs flour, eggs,",
]
N_TOKENS = 32


def llamacpp_greedy(llm, ids, n):
    """Greedy continuation by llama.cpp, with its top-2 logits at each step."""
    llm.reset()
    llm.eval(ids)
    out, top2 = [], []
    for _ in range(n):
        logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        order = np.argsort(-logits)[:2]
        out.append(int(order[0]))
        top2.append((float(logits[order[0]]), float(logits[order[1]])))
        llm.eval([out[-1]])
    return out, top2


def our_greedy(model, ids, n):
    model.reset()
    logits = model.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = model.eval_token(out[-1])
    return out


@pytest.fixture(scope="module")
def llamacpp_default(default_model_path):
    return llama_cpp.Llama(str(default_model_path), n_ctx=1024, n_threads=2, n_batch=512,
                           logits_all=True, verbose=False)


def test_greedy_decoding_matches_llamacpp_on_default_model(default_model, llamacpp_default):
    matched, report = 0, []
    for prompt in PROMPTS:
        ids = default_model.tokenize(prompt)
        ref, top2 = llamacpp_greedy(llamacpp_default, ids, N_TOKENS)
        ours = our_greedy(default_model, ids, N_TOKENS)
        if ours == ref:
            matched += 1
            continue
        at = next(i for i, (a, b) in enumerate(zip(ours, ref)) if a != b)
        gap = top2[at][0] - top2[at][1]
        report.append(f"{prompt!r}: diverges at token {at}; llama.cpp top-2 logits "
                      f"{top2[at][0]:.4f} vs {top2[at][1]:.4f} (gap {gap:.4f})")
        # a divergence is acceptable only where llama.cpp itself nearly tied
        assert gap < 0.1, report[-1]
    print(f"\n{matched}/{len(PROMPTS)} prompts identical for {N_TOKENS} tokens", *report, sep="\n")
    assert matched >= 9, "\n".join(report)
