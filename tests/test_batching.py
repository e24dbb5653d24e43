"""Several sequences in one forward pass (runtime/batching.py, kv_cache.Batch): each row sees
its own sequence only, a decode step of several sequences gives each the logits it gets
alone, a prefix copied from another sequence is that sequence's cache, and the Scheduler
runs generations to the texts they get one at a time.

A decode step of up to 7 sequences runs the GEMV kernels, which give every row bit for bit
what it gets alone (tests/test_kernels_variants.py), on every variant. Prompt chunks beside
others' rows run the GEMM tiles, whose sums depend on the batch on the AVX-512 variants:
there a text may leave the one-at-a-time text only at a near-tie, as in test_prefix_reuse.py.
"""

import numpy as np
import pytest

from edgellm import kernels
from edgellm.runtime.batching import Scheduler
from edgellm.runtime.generation import load_model
from edgellm.runtime.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0)
PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea,",
           "Q: What is the boiling point of water at sea level?", "The three primary colors are"]


@pytest.fixture(scope="module")
def model(default_model_path):
    """The default model with four sequences and a small batch: its sliding-window layers keep
    rings of 512 + 16 slots, which the long prompts below wrap."""
    return load_model(default_model_path, n_ctx=1024, n_batch=16, parallel=4)


def test_a_decode_step_of_four_sequences_gives_each_its_logits_alone(model):
    seqs = model.sequences
    ids = [model.tokenize(p) for p in PROMPTS]
    for seq, p in zip(seqs, ids):
        seq.reset()
        model.eval(p, seq=seq)
    nxt = [int(np.argmax(model.eval(p[-1:], seq=seq))) for seq, p in zip(seqs, ids)]
    together = model.eval_batch([(seq, (t,), True) for seq, t in zip(seqs, nxt)]).copy()
    for i, (seq, t) in enumerate(zip(seqs, nxt)):
        seq.truncate(len(seq.tokens) - 1)
        alone = model.eval_token(t, seq)
        assert np.array_equal(together[i], alone), i


def test_rows_attend_to_their_own_sequence_only(model):
    """Two sequences holding different texts, stepped together with the same token, get
    different logits; a third holding the first's text gets the first's logits exactly."""
    a, b, c = model.sequences[:3]
    for seq, text in ((a, PROMPTS[0]), (b, PROMPTS[1]), (c, PROMPTS[0])):
        seq.reset()
        model.eval(model.tokenize(text), seq=seq)
    out = model.eval_batch([(a, (1234,), True), (b, (1234,), True), (c, (1234,), True)])
    assert not np.array_equal(out[0], out[1])
    assert np.array_equal(out[0], out[2])


def test_a_prefix_copied_from_another_sequence_is_that_sequence_evaluating_it(model, default_model_path):
    """A long shared prompt (past the sliding-window rings' 528 slots) evaluated in one
    sequence, which then goes on past it, and copied into another: the copy's logits are those
    of a sequence that evaluated the prefix itself, bit for bit."""
    words = " ".join(f"item {i} is {i * 7 % 13}." for i in range(80))
    shared = model.tokenize("Inventory: " + words)
    assert 600 < len(shared) < 900
    src, dst, ref = model.sequences[:3]
    for seq in (src, dst, ref):
        seq.reset()
    model.eval(shared + model.tokenize(" First question", add_special=False), seq=src)
    model.eval(shared, seq=ref)
    assert dst.copy_prefix(src, len(shared))
    assert dst.tokens == shared
    question = model.tokenize(" What is item 12?", add_special=False)
    got = model.eval(question, seq=dst).copy()
    assert np.array_equal(got, model.eval(question, seq=ref))


def test_a_prefix_a_ring_has_overwritten_cannot_be_copied(model):
    src, dst = model.sequences[:2]
    src.reset()
    dst.reset()
    ids = model.tokenize(" ".join(f"word{i}" for i in range(250)))
    assert 600 < len(ids) < 1024
    model.eval(ids, seq=src)
    # positions 0..99 are long gone from src's 528-slot rings
    assert not dst.copy_prefix(src, 100)
    assert dst.tokens == [] and dst.cache.n_past == 0


def generate_alone(model, prompt, n):
    seq = model.sequences[0]
    seq.reset()
    gen = model.generate(prompt, max_tokens=n, sampling=GREEDY)
    text = "".join(gen)
    return text, list(seq.tokens[len(gen.ids):])


def near_tie_at_divergence(model, prompt, tokens, other_text):
    """The top-2 margin of the alone run where `other_text` leaves its tokens."""
    other = model.tokenize(other_text, add_special=False)
    at = next(i for i, t in enumerate(other + [-1]) if i >= len(tokens) or t != tokens[i])
    seq = model.sequences[0]
    seq.reset()
    logits = model.eval(model.tokenize(prompt) + tokens[:at], seq=seq)
    top = np.sort(logits)[-2:]
    return float(top[1] - top[0])


def test_scheduler_runs_four_generations_to_their_texts_alone(model):
    n = 24
    alone = {p: generate_alone(model, p, n) for p in PROMPTS}
    batch = Scheduler(model)
    gens = [model.generate(p, max_tokens=n, sampling=GREEDY) for p in PROMPTS]
    for g in gens:
        batch.add(g)
    pieces = {id(g): [] for g in gens}
    steps = 0
    while batch.running:
        for g, piece, done in batch.step():
            pieces[id(g)].append(piece)
        steps += 1
    # the prompts (6-13 tokens) share the 16-row passes: fewer passes than tokens generated
    assert steps < n + len(PROMPTS) + 2
    for p, g in zip(PROMPTS, gens):
        assert "".join(pieces[id(g)]) == g.text and g.n_generated == n and g.finish_reason == "length"
        text, tokens = alone[p]
        if g.text != text:
            margin = near_tie_at_divergence(model, p, tokens, g.text)
            assert kernels.VARIANT != "avx2" and margin < 0.5, (p, text, g.text, margin)


def test_a_generation_joins_between_steps_and_copies_the_prompt_a_busy_sequence_holds(model):
    for seq in model.sequences:
        seq.reset()
    system = "You are a helpful assistant on a Raspberry Pi in a museum. Answer briefly and clearly."
    batch = Scheduler(model)
    first = model.generate(system + " Where is the cafe?", max_tokens=40, sampling=GREEDY)
    batch.add(first)
    for _ in range(3):
        batch.step()
    # a later request with the same fixed system prompt (a kiosk's): it copies the prefix the
    # busy sequence holds rather than evaluating it again
    again = model.generate(system + " When do you open?", max_tokens=4, sampling=GREEDY)
    batch.add(again)
    shared = first.seq.shared_prefix(again.ids)
    assert again.seq is not first.seq and shared >= 16
    assert again.n_cached_tokens == shared
    while batch.running:
        batch.step()
    assert first.n_generated == 40 and again.n_generated == 4
    # the next one takes the free sequence that holds the most of its prompt: the one that
    # just answered the same question
    third = model.generate(system + " When do you open?", max_tokens=2, sampling=GREEDY)
    batch.add(third)
    assert third.seq is again.seq and third.n_cached_tokens == len(third.ids) - 1


def test_a_generation_cancelled_during_its_prompt_ends_and_frees_its_sequence(model):
    batch = Scheduler(model)
    long_prompt = " ".join(f"line {i}" for i in range(200))   # many 16-token chunks
    gen = model.generate(long_prompt, max_tokens=8, sampling=GREEDY)
    other = model.generate(PROMPTS[0], max_tokens=8, sampling=GREEDY)
    batch.add(gen)
    batch.add(other)
    batch.step()
    gen.cancel()
    ended = {}
    while batch.running:
        for g, piece, done in batch.step():
            if done:
                ended[id(g)] = g.finish_reason
    assert ended == {id(gen): "cancelled", id(other): "length"}
    assert batch.free_slots == model.parallel and gen.n_generated == 0
