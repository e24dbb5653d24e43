"""Speculation (runtime/speculation.py): proposals from the text so far, verified in the pass
that evaluates the last token; the output is plain decoding's, token for token."""

import numpy as np
import pytest

from edgellm.runtime.json_constraint import JSONSchemaConstraint
from edgellm.runtime.sampling import SamplingParams, draw
from edgellm.runtime.speculation import MAX_DRAFT, DraftLength, lookup_draft

GREEDY = SamplingParams(temperature=0)
TABLE = ("Sensor readings:\nsensor=temp1 value=21.5 unit=C status=ok\nsensor=temp2 value=22.1 unit=C status=ok\n"
         "sensor=hum1 value=40 unit=% status=ok\nsensor=temp3 value=19.8 unit=C status=ok\n"
         "Repeat the readings:\nsensor=temp1")
JSON_LINES = ('Devices as JSON:\n{"id": "lamp-1", "room": "kitchen", "on": true, "level": 40}\n'
              '{"id": "lamp-2", "room": "hall", "on": false, "level": 0}\n'
              '{"id": "lamp-3", "room": "bedroom", "on": true, "level": 75}\n{"id": "lamp-4",')


def h(*tokens):
    return np.array(tokens, dtype=np.int32)


def test_lookup_proposes_what_followed_the_latest_occurrence_of_the_longest_tail():
    #            0  1  2  3  4  5  6  7  8  9 10
    history = h(5, 6, 7, 8, 9, 1, 6, 7, 2, 3, 6, 7)
    # the tail (6, 7) last occurred at 6..7, followed by 2, 3, 6
    assert lookup_draft(history, 12, 3).tolist() == [2, 3, 6]
    # the longest recurring tail, (9, 1, 6, 7), last occurred at 7..10, followed by 5, 9
    history = h(8, 9, 1, 6, 7, 4, 4, 9, 1, 6, 7, 5, 9, 1, 6, 7)
    assert lookup_draft(history, 16, 2).tolist() == [5, 9]
    # proposals stop at the end of what is known
    assert lookup_draft(h(3, 4, 9, 3, 4), 5, 5).tolist() == [9, 3, 4]


def test_lookup_proposes_nothing_without_a_recurring_tail():
    assert lookup_draft(h(1, 2, 3, 4, 5, 6), 6, 4).size == 0
    assert lookup_draft(h(1, 2, 1), 3, 4).size == 0      # a single-token match is not enough
    assert lookup_draft(h(1, 2, 1, 2), 4, 0).size == 0
    assert lookup_draft(h(1, 2, 1, 2, 7, 7), 4, 3).tolist() == [1, 2]   # only history[:n] counts


def test_draft_length_grows_on_whole_acceptance_and_falls_to_what_was_accepted():
    d = DraftLength(start=2)
    d.update(2, 2)
    assert d.k == 3
    for _ in range(10):
        d.update(d.k, d.k)
    assert d.k == MAX_DRAFT
    d.update(MAX_DRAFT, 1)
    assert d.k == 1
    d.update(1, 0)
    assert d.k == 1 and d.proposed == 2 + 3 + 4 + 5 * 8 + 5 + 1 and d.accepted == d.proposed - 4 - 1


def test_accepting_a_proposal_iff_it_is_the_sampled_token_keeps_the_distribution():
    """The verify rule on a toy distribution: for a proposal d made with certainty, accept
    with probability p(d), else draw from p without d (speculative sampling). Sampling p and
    accepting iff the sample is d is that rule: the accept rate is p(d) and the tokens that
    come out are distributed as p."""
    p = np.array([0.05, 0.4, 0.25, 0.2, 0.1])
    rng = np.random.default_rng(7)
    for d in (1, 4):
        n, accepted, counts = 40000, 0, np.zeros(5)
        for _ in range(n):
            t = draw(p.copy(), rng.random())
            accepted += t == d
            counts[t] += 1
        assert abs(accepted / n - p[d]) < 4 * np.sqrt(p[d] * (1 - p[d]) / n)
        assert np.all(np.abs(counts / n - p) < 4 * np.sqrt(p * (1 - p) / n))
        rejected = counts.copy()
        rejected[d] = 0
        want = np.where(np.arange(5) == d, 0, p) / (1 - p[d])
        assert np.all(np.abs(rejected / rejected.sum() - want) < 0.02)


def run(model, prompt, speculate, **kw):
    model.reset()
    gen = model.generate(prompt, speculate=speculate, **kw)
    return "".join(gen), gen


@pytest.mark.parametrize("prompt", [TABLE, JSON_LINES])
def test_greedy_output_is_the_same_with_speculation_and_proposals_stand(default_model, prompt):
    plain, _ = run(default_model, prompt, False, max_tokens=64, sampling=GREEDY)
    fast, gen = run(default_model, prompt, True, max_tokens=64, sampling=GREEDY)
    assert fast == plain
    assert gen.n_generated == 64 and gen.n_accepted > 20 and gen.n_accepted <= gen.n_proposed
    print(f"\naccepted {gen.n_accepted} of {gen.n_proposed} proposed")


def test_seeded_sampling_gives_the_same_text_with_speculation(default_model):
    """Each verified row is sampled with the draw plain decoding makes there, so a seeded
    sampled text is the same token for token."""
    sampling = SamplingParams(temperature=0.8, top_k=40, seed=11, repeat_penalty=1.1)
    plain, _ = run(default_model, TABLE, False, max_tokens=48, sampling=sampling)
    fast, gen = run(default_model, TABLE, True, max_tokens=48, sampling=sampling)
    assert fast == plain and gen.n_proposed > 0


def test_stop_strings_and_max_tokens_end_a_speculated_reply_where_plain_ends(default_model):
    for kw in (dict(stop=["status=ok\nsensor=hum1"]), dict(max_tokens=7), dict(max_tokens=23)):
        kw = dict(dict(max_tokens=64, sampling=GREEDY), **kw)
        plain, a = run(default_model, TABLE, False, **kw)
        held = list(a.seq.tokens)
        fast, b = run(default_model, TABLE, True, **kw)
        assert (fast, b.finish_reason, b.n_generated) == (plain, a.finish_reason, a.n_generated), kw
        # the cache holds what plain decoding leaves: the proposals after the end were dropped
        assert b.seq.tokens == held and b.n_proposed > 0


def test_constrained_json_reply_is_the_same_with_speculation(default_model):
    schema = {"type": "object", "properties": {"id": {"type": "string"}, "room": {"type": "string"},
                                               "on": {"type": "boolean"}, "level": {"type": "integer"}},
              "required": ["id", "room", "on", "level"]}
    prompt = JSON_LINES.rsplit("\n", 1)[0] + "\n"
    texts = [run(default_model, prompt, spec, max_tokens=48, sampling=GREEDY,
                 constraint=JSONSchemaConstraint(schema))[0] for spec in (False, True)]
    assert texts[0] == texts[1] and texts[0].startswith('{"id": "lamp-')


def test_logits_after_a_rejected_proposal_equal_a_fresh_evaluation(default_model):
    """Proposals evaluated and then dropped (the sequence truncated back) leave no trace:
    the next token's logits are those of the sequence evaluated without them."""
    m = default_model
    ids = m.tokenize(TABLE)
    seq = m.sequences[0]
    seq.reset()
    m.eval(ids, seq=seq)
    wrong = [1000, 2000, 3000, 4000]
    m.eval_batch([(seq, (ids[-1], *wrong), 5)])   # the last token again, with four proposals
    seq.truncate(len(ids) + 1)
    after = m.eval_token(ids[-2], seq).copy()
    seq.reset()
    m.eval(ids, seq=seq)
    m.eval_token(ids[-1], seq)
    assert np.array_equal(m.eval_token(ids[-2], seq), after)


NESTED = {"type": "object", "properties": {
    "device": {"type": "string"}, "room": {"type": "string"},
    "state": {"type": "object", "properties": {"on": {"type": "boolean"}, "brightness": {"type": "integer"},
                                               "color": {"enum": ["warm", "cold", "red"]}},
              "required": ["on", "brightness", "color"]},
    "sensors": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "value": {"type": "number"}}, "required": ["name", "value"]}}},
    "required": ["device", "room", "state", "sensors"]}


def test_a_schema_skeleton_is_proposed_from_and_nested_replies_stay_the_same(default_model):
    """A constrained reply also gets proposals from its schema's skeleton (keys in order,
    placeholder values): keys and punctuation the prompt never showed. The model verifies
    each, so the reply is the unspeculated one."""
    assert JSONSchemaConstraint(NESTED).skeleton() == (
        '{"device": "", "room": "", "state": {"on": true, "brightness": 0, "color": "warm"}, '
        '"sensors": [{"name": "", "value": 0}]}')
    prompt = ("The kitchen lamp is on at 60% brightness with a warm color; its sensors read temperature "
              "21.5 and humidity 40. As JSON:\n")
    texts, gens = [], []
    for spec in (False, True):
        text, gen = run(default_model, prompt, spec, max_tokens=80, sampling=GREEDY,
                        constraint=JSONSchemaConstraint(NESTED))
        texts.append(text)
        gens.append(gen)
    assert texts[0] == texts[1] and texts[0].lstrip().startswith("{")
    assert gens[1].n_proposed > 0 and gens[0].n_proposed == 0
