"""Generation on the real default model: streaming, stops, limits, prefix reuse, sampling."""

import numpy as np
import pytest

from edgellm import kernels
from edgellm.runtime import EdgeLLMError
from edgellm.runtime.sampling import SamplingParams, candidates, draw

GREEDY = SamplingParams(temperature=0)


def test_streamed_pieces_join_to_the_generation_text(default_model):
    gen = default_model.generate("The capital of France is", max_tokens=12, sampling=GREEDY)
    pieces = list(gen)
    assert "".join(pieces) == gen.text
    assert gen.n_generated == 12 and gen.finish_reason == "length"
    assert gen.text.startswith(" the capital of")   # what this base model says (llama.cpp agrees)


def test_greedy_generation_is_deterministic_and_independent_of_cache_state(default_model):
    prompt = "Water boils at a temperature of"
    first = default_model.generate(prompt, max_tokens=10, sampling=GREEDY)
    a = "".join(first)
    default_model.generate("Something unrelated entirely", max_tokens=3, sampling=GREEDY).text
    list(default_model.generate("Something unrelated entirely", max_tokens=3, sampling=GREEDY))
    second = default_model.generate(prompt, max_tokens=10, sampling=GREEDY)
    assert "".join(second) == a


def test_prompt_prefix_is_reused_from_the_kv_cache(default_model):
    system = "You are a helpful assistant on a Raspberry Pi. Answer briefly. " * 3
    list(default_model.generate(system + "What is 2+2?", max_tokens=4, sampling=GREEDY))
    again = default_model.generate(system + "What is 3+3?", max_tokens=4, sampling=GREEDY)
    text = "".join(again)
    shared = len(default_model.tokenize(system)) - 1
    assert again.n_cached_tokens >= shared
    # the reused cache gives the same answer as a cold start: bit for bit on avx2; on the
    # AVX-512 variants (prefill tiles sum in another order than decode) it may leave it only
    # at a near-tie of the cold run (tests/test_prefix_reuse.py)
    default_model.reset()
    cold = default_model.generate(system + "What is 3+3?", max_tokens=4, sampling=GREEDY)
    assert cold.n_cached_tokens == 0
    if "".join(cold) != text:
        default_model.reset()
        logits = default_model.eval(default_model.tokenize(system + "What is 3+3?"))
        margins = []
        for _ in range(4):
            top = np.argsort(-logits)[:2]
            margins.append(float(logits[top[0]] - logits[top[1]]))
            logits = default_model.eval_token(int(top[0]))
        assert kernels.VARIANT != "avx2" and min(margins) < 0.5, (text, cold.text, margins)


def test_stop_string_ends_generation_and_is_not_emitted(default_model):
    gen = default_model.generate("Count: 1, 2, 3, 4,", max_tokens=30, sampling=GREEDY, stop=[" 7"])
    text = "".join(gen)
    assert gen.finish_reason == "stop"
    assert " 7" not in text and text == gen.text
    assert "6" in text


def test_seeded_sampling_is_reproducible(default_model):
    # from the same cache state: a reused prefix is evaluated in another batch split, whose
    # rounding can differ slightly (llama.cpp's batched and token-by-token logits differ too)
    params = SamplingParams(temperature=1.0, top_k=40, top_p=0.95, seed=1234)
    default_model.reset()
    a = "".join(default_model.generate("Once upon a time", max_tokens=16, sampling=params))
    default_model.reset()
    b = "".join(default_model.generate("Once upon a time", max_tokens=16, sampling=params))
    assert a == b


def test_cancel_stops_after_the_current_token(default_model):
    gen = default_model.generate("Tell me a long story.", max_tokens=100, sampling=GREEDY)
    for i, _ in enumerate(gen):
        if i == 2:
            gen.cancel()
    assert gen.finish_reason == "cancelled" and gen.n_generated <= 4


def test_chat_uses_the_gemma_turn_template(default_model):
    text = default_model.apply_chat_template([{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Hi"}])
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    # the default model is the pretrained (not instruction-tuned) Gemma 3 270M, so only the
    # prompt is checked: the template's BOS is not doubled and the turn markers are tokens
    gen = default_model.chat([{"role": "user", "content": "What is the capital of France?"}],
                             max_tokens=4, sampling=GREEDY)
    list(gen)
    assert default_model.tokens[:3] == [2, 105, 2364]   # <bos> <start_of_turn> user
    assert gen.n_prompt_tokens == len(default_model.tokenize(
        default_model.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}]),
        add_special=False))


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": []}, "empty"),
    ({"prompt": "x" * 10, "max_tokens": -1}, "max_tokens"),
    ({"prompt": "hi", "sampling": SamplingParams(top_p=0)}, "top_p"),
    ({"prompt": "hi", "sampling": SamplingParams(temperature=float("nan"))}, "temperature"),
    ({"prompt": [1, 2, 10**9]}, "outside the vocabulary"),
    ({"prompt": "hi", "stop": [""]}, "stop"),
])
def test_bad_generation_arguments_raise_clear_errors(default_model, kwargs, message):
    with pytest.raises(EdgeLLMError, match=message):
        default_model.generate(**kwargs)


def test_prompt_longer_than_the_context_is_refused(default_model):
    with pytest.raises(EdgeLLMError, match="context holds 1024"):
        default_model.generate("word " * 2000)


def test_bad_chat_messages_raise_clear_errors(default_model):
    with pytest.raises(EdgeLLMError, match="message 0"):
        default_model.chat([{"role": "user"}])
    with pytest.raises(EdgeLLMError, match="alternate"):
        default_model.chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_sampling_filters_follow_top_k_top_p_min_p():
    logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05], dtype=np.float32))
    ids, probs = candidates(logits, SamplingParams(temperature=1.0, top_k=0, top_p=0.8, min_p=0.0))
    assert ids.tolist() == [0, 1, 2] and probs.sum() == pytest.approx(1.0)
    ids, _ = candidates(logits, SamplingParams(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0))
    assert ids.tolist() == [0, 1]
    ids, _ = candidates(logits, SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.25))
    assert ids.tolist() == [0, 1, 2]   # 0.1 < 0.25 * 0.5
    assert draw(np.array([0.5, 0.3, 0.2]), 0.0) == 0
    assert draw(np.array([0.5, 0.3, 0.2]), 0.79) == 1
    assert draw(np.array([0.5, 0.3, 0.2]), 0.999) == 2


def test_json_schema_constraint_holds_when_sampling(default_model):
    import json

    from edgellm.runtime.json_constraint import JSONSchemaConstraint

    # the string's length bounded, so that a sampled run cannot spend every token inside it
    # (seed 7 on an AVX-512 machine wrote "0,00,0,0,..." for all 48 tokens without the bound)
    schema = {"type": "object",
              "properties": {"room": {"type": "string", "maxLength": 16}, "temp": {"type": "number"}},
              "required": ["room", "temp"]}
    gen = default_model.generate("Sensor report as JSON:", max_tokens=48,
                                 sampling=SamplingParams(temperature=1.0, seed=7),
                                 constraint=JSONSchemaConstraint(schema))
    value = json.loads("".join(gen))
    assert gen.finish_reason == "stop"
    assert set(value) == {"room", "temp"} and isinstance(value["temp"], (int, float))
    assert len(value["room"]) <= 16


def test_constrained_greedy_picks_the_most_likely_allowed_token_as_a_full_sort_would(default_model):
    """The constrained greedy step checks the argmax, then the top 64, then the rest: the
    token it picks is the first allowed one in the stable order of the whole vocabulary,
    ties at the top-64 boundary included."""
    from edgellm.runtime.json_constraint import JSONSchemaConstraint

    gen = default_model.generate("Count:", max_tokens=1, sampling=GREEDY,
                                 constraint=JSONSchemaConstraint({"type": "integer"}))
    rng = np.random.default_rng(5)
    for case in range(6):
        logits = rng.standard_normal(default_model.n_vocab).astype(np.float32)
        if case % 2:   # many ties, some straddling the 64th place
            logits = np.round(logits)
        want = next(int(t) for t in np.argsort(-logits, kind="stable") if gen._allowed(int(t)))
        assert gen._sample_constrained(logits.copy(), None) == want
