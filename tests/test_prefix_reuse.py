"""The same prompt at temperature 0 gives the same text however the KV cache got there: from a
fresh `edgellm run` process, or asked again through one loaded model between other prompts,
where every request after the first keeps the cached prefix it shares with the last one
(Model.reuse_prefix) and truncates the rest: through the Python API, `edgellm chat` and
`edgellm serve` over its socket. And a truncated cache leaves no trace in what follows.

A cached prefix and the rest are two batches where a fresh prompt is one, so each position's
sums may run in another order. The avx2 variant sums as llama.cpp does on AVX2, where that
order depends on the batch only below 8 tokens (k-quants); these prompts' splits then give
the fresh logits bit for bit, and the texts are equal. The AVX-512 variants' prefill tiles sum
in another order than their decode: there a text may leave the fresh one only where the fresh
run's top two tokens are within 0.5 (a near-tie, as tests/test_llamacpp_parity.py allows).
The CLI and serve tests run the avx2 variant wherever the CPU has it."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from services_fixtures import serve_process, wait_for

from edgellm import kernels

PROMPTS = [
    "The capital of France is",
    "The capital of Spain is",  # shares all but its last words with the one before
    "Q: What is the boiling point of water at sea level? The answer, as every student of physics "
    "and chemistry knows, depends on the pressure of the air above it.",
    "Q: What is the boiling point of water at sea level?",  # a prefix of the one before
    "Once upon a time, in a small village by the sea,",
]
N_TOKENS = 24
N_CTX = 1024  # the default_model fixture's


AVX2 = "avx2" in [v["name"] for v in kernels.variants() if v["supported"] and v["built"]]
ENV = dict(os.environ, EDGELLM_KERNELS="avx2") if AVX2 else dict(os.environ)
needs_avx2 = pytest.mark.skipif(not AVX2, reason="the texts are exact with the avx2 variant")


def cli(*args, input=None):
    r = subprocess.run([sys.executable, "-m", "edgellm.cli", *args], capture_output=True, text=True,
                       input=input, timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def fresh_texts():
    """Each prompt's continuation by a fresh `edgellm run`, a process of its own (avx2)."""
    return {p: cli("run", "-c", str(N_CTX), "--temp", "0", "-n", str(N_TOKENS), p)[:-1] for p in PROMPTS}


def fresh_greedy(model, prompt):
    """The greedy tokens from an empty cache, with the top-2 margin at each."""
    model.reset()
    logits = model.eval(model.tokenize(prompt))
    tokens, margins = [], []
    for _ in range(N_TOKENS):
        top = np.argsort(-logits)[:2]
        tokens.append(int(top[0]))
        margins.append(float(logits[top[0]] - logits[top[1]]))
        logits = model.eval_token(tokens[-1])
    return tokens, margins


def test_generate_after_generate_gives_the_fresh_texts(default_model):
    from edgellm.runtime.sampling import SamplingParams

    fresh = {p: fresh_greedy(default_model, p) for p in PROMPTS}
    cached, report = 0, []
    for order in (PROMPTS, PROMPTS[::-1], PROMPTS[1::2] + PROMPTS[::2]):
        for prompt in order:
            gen = default_model.generate(prompt, max_tokens=N_TOKENS, sampling=SamplingParams(temperature=0))
            text = "".join(gen)
            cached += gen.n_cached_tokens
            tokens, margins = fresh[prompt]
            if text == default_model.tokenizer.decode(tokens):
                continue
            at = next(i for i, t in enumerate(default_model.tokenize(text, add_special=False) + [-1])
                      if i >= len(tokens) or t != tokens[i])
            report.append(f"{prompt!r} after {gen.n_cached_tokens} cached tokens: leaves the fresh text at "
                          f"token {at}, where the fresh top-2 margin is {margins[min(at, N_TOKENS - 1)]:.3f}")
            if kernels.VARIANT == "avx2" or margins[min(at, N_TOKENS - 1)] >= 0.5:
                raise AssertionError("\n".join(report))
    print("\n".join(report))
    assert cached > 0  # the cache was reused, not just refilled


def test_truncated_cache_then_new_tokens_equals_the_kept_prefix_alone(default_model):
    """A, B evaluated, cut back to A, then C: the same logits, bit for bit, as A then C on an
    empty cache (the slots B held are never read again)."""
    m = default_model
    a, b, c = (m.tokenize(t, add_special=False) for t in (
        "The quick brown fox jumps over the lazy dog, and then",
        " it runs into the forest where the tall trees grow and the owls call at night",
        " she sleeps in the warm sun all afternoon"))
    a = [m.tokenizer.bos_id] + a
    m.reset()
    m.eval(a + b)
    assert m.reuse_prefix(a + c) == len(a)
    after_truncate = m.eval(c).copy()
    m.reset()
    m.eval(a)
    assert np.array_equal(m.eval(c), after_truncate)


@needs_avx2
def test_chat_after_reset_gives_the_answer_of_a_fresh_chat():
    """`edgellm chat`: a question asked after other turns and /reset (the cache keeps the chat
    template's opening and truncates the rest) gets the answer a fresh chat gives."""
    questions = ["What is the capital of France?", "Tell me about the sea.", "Why is the sky blue?"]
    args = ("chat", "-c", str(N_CTX), "--temp", "0", "-n", "16")
    fresh = [cli(*args, input=q + "\n") for q in questions]
    again = cli(*args, input="\n/reset\n".join(questions[::-1] + questions) + "\n")
    for q, out in zip(questions, fresh):
        answer = out.split("> ")[1].strip()
        assert answer and again.count(answer) == 2, (q, answer, again)


@needs_avx2
def test_serve_answers_a_repeated_prompt_as_a_fresh_run(tmp_path, fresh_texts):
    path = tmp_path / "reuse.sock"
    proc = serve_process(f'[engine]\nnode = "reuse"\n[model]\nn_ctx = {N_CTX}\n[socket]\npath = "{path}"\n',
                         tmp_path, {"EDGELLM_KERNELS": ENV.get("EDGELLM_KERNELS", "")})
    try:
        wait_for(lambda: path.exists() or proc.poll() is not None, 120, what="the socket")
        assert proc.poll() is None, proc.log_path.read_text()[-2000:]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        s.settimeout(120)
        lines = s.makefile("rb")
        for i, prompt in enumerate(PROMPTS + PROMPTS[::-1]):
            s.sendall(json.dumps({"id": i, "prompt": prompt, "max_tokens": N_TOKENS, "temperature": 0}).encode()
                      + b"\n")
            reply = json.loads(lines.readline())
            assert reply["type"] == "final", reply
            assert reply["text"] == fresh_texts[prompt], prompt
        s.close()
    finally:
        proc.terminate()
        proc.wait(30)
