"""The request engine on the real default model: one terminal reply per accepted request."""

import threading
import time

import pytest
from services_fixtures import make_engine  # noqa: F401  (fixture)

from edgellm.services.protocol import Limits, Request, ServiceError


class Collector:
    """A sink that records every message and signals the terminal one."""

    def __init__(self, fail_on_chunk: bool = False):
        self.messages = []
        self.done = threading.Event()
        self.fail_on_chunk = fail_on_chunk
        self.first_chunk = threading.Event()

    def __call__(self, job, message):
        self.messages.append(message)
        if message["type"] == "chunk":
            self.first_chunk.set()
            if self.fail_on_chunk:
                raise BrokenPipeError("client went away")
        else:
            self.done.set()

    def terminal(self, timeout=120):
        assert self.done.wait(timeout), "no terminal message"
        time.sleep(0.05)   # a second terminal message, if there were one, would land now
        terminals = [m for m in self.messages if m["type"] != "chunk"]
        assert len(terminals) == 1, terminals
        return terminals[0]


GREEDY = {"temperature": 0}


def req(**kw):
    kw.setdefault("sampling", GREEDY)
    kw.setdefault("max_tokens", 2)
    return Request(**kw)


def test_prompt_request_gets_one_final_with_stats(make_engine):
    engine = make_engine(node="n1")
    sink = Collector()
    engine.submit(req(id="r1", prompt="The capital of France is"), sink)
    final = sink.terminal()
    assert final["type"] == "final" and final["id"] == "r1"
    assert final["finish_reason"] in ("stop", "length") and final["chunks"] == 0
    stats = final["stats"]
    assert 1 <= stats["completion_tokens"] <= 2 and stats["prompt_tokens"] >= 5
    assert stats["node"] == "n1" and isinstance(final["text"], str)
    assert engine.counts["accepted"] == 1 and engine.counts["answered"] == 1


def test_streamed_chunks_come_in_order_and_match_the_unstreamed_text(make_engine):
    engine = make_engine()
    warm, plain, streamed = Collector(), Collector(), Collector()
    messages = [{"role": "user", "content": "Count: one, two,"}]
    # Sent twice first: the streamed run and the second plain run then start from the same
    # cached prefix. (Batched prefill and a cached prefix differ in the last float bits,
    # which can flip a greedy choice between two near-equal tokens.)
    engine.submit(req(messages=messages, max_tokens=3), warm)
    engine.submit(req(messages=messages, max_tokens=3), plain)
    engine.submit(req(messages=messages, max_tokens=3, stream=True), streamed)
    warm.terminal()
    text = plain.terminal()["text"]
    final = streamed.terminal()
    chunks = [m for m in streamed.messages if m["type"] == "chunk"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert final["chunks"] == len(chunks) and "text" not in final
    assert "".join(c["text"] for c in chunks) == text
    assert streamed.messages[-1] is final


def test_full_queue_is_an_immediate_busy_error(make_engine):
    engine = make_engine(queue_size=1)
    running, queued = Collector(), Collector()
    job_a = engine.submit(req(prompt="Once upon a time", max_tokens=200, stream=True), running)
    assert running.first_chunk.wait(120)
    job_b = engine.submit(req(prompt="Hello"), queued)
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as info:
        engine.submit(req(prompt="Hello again"), Collector())
    assert info.value.code == "busy" and time.monotonic() - t0 < 0.1
    engine.cancel(job_b)
    assert queued.terminal(5)["code"] == "cancelled"
    engine.cancel(job_a)
    assert running.terminal()["code"] == "cancelled"
    assert engine.counts["busy"] == 1 and engine.counts["cancelled"] == 2


def test_running_request_past_its_deadline_gets_a_deadline_error(make_engine):
    engine = make_engine()
    sink = Collector()
    t0 = time.monotonic()
    engine.submit(req(prompt="Write a long story.", max_tokens=400, deadline_s=1.0), sink)
    err = sink.terminal()
    assert (err["type"], err["code"]) == ("error", "deadline")
    assert time.monotonic() - t0 < 30


def test_queued_request_past_its_deadline_ends_without_running(make_engine):
    engine = make_engine(queue_size=2)
    first, late = Collector(), Collector()
    job = engine.submit(req(prompt="Once upon a time", max_tokens=200, stream=True), first)
    assert first.first_chunk.wait(120)
    engine.submit(req(prompt="Hi", deadline_s=0.3), late)
    err = late.terminal(5)
    assert err["code"] == "deadline"
    engine.cancel(job)
    first.terminal()


def test_prompt_over_the_limit_or_the_context_is_prompt_too_long(make_engine, default_model):
    engine = make_engine(limits=Limits(max_prompt_tokens=8, default_max_tokens=2))
    sink = Collector()
    engine.submit(req(prompt="one two three four five six seven eight nine ten"), sink)
    err = sink.terminal()
    assert (err["code"], err["field"]) == ("prompt_too_long", "prompt")
    assert "limit is 8" in err["message"]

    engine2 = make_engine(limits=Limits(max_prompt_tokens=10**6, default_max_tokens=2))
    sink2 = Collector()
    engine2.submit(req(prompt="word " * (default_model.n_ctx + 10)), sink2)
    assert sink2.terminal()["code"] == "prompt_too_long"


def test_fixed_system_prompt_is_served_from_the_kv_cache(make_engine, default_model):
    system = ("You are the information kiosk of the Central Library. Answer visitors in one "
              "short sentence. Opening hours are nine to five, Monday to Saturday.")
    engine = make_engine(system_prompt=system)
    finals = []
    for question in ("Hello", "When do you open?"):
        sink = Collector()
        engine.submit(req(messages=[{"role": "user", "content": question}], max_tokens=1), sink)
        finals.append(sink.terminal())
    n_system = len(default_model.tokenizer.encode(system, add_special=False))
    second = finals[1]["stats"]
    assert second["cached_tokens"] >= n_system
    assert second["cached_tokens"] < second["prompt_tokens"]


def test_schema_request_returns_parsed_json_that_matches(make_engine):
    engine = make_engine()
    schema = {"type": "object", "properties": {"light": {"enum": ["on", "off"]}},
              "required": ["light"]}
    sink = Collector()
    engine.submit(req(messages=[{"role": "user", "content": "Turn the light on. Reply in "
                                 "JSON."}], schema=schema, max_tokens=12), sink)
    final = sink.terminal()
    assert final["type"] == "final", final
    assert set(final["json"]) == {"light"} and final["json"]["light"] in ("on", "off")


def test_schema_reply_cut_by_max_tokens_is_json_incomplete(make_engine):
    engine = make_engine()
    sink = Collector()
    engine.submit(req(prompt="JSON:", schema={"type": "object", "properties": {
        "a_rather_long_key_name": {"type": "string"}}}, max_tokens=1), sink)
    err = sink.terminal()
    assert err["code"] == "json_incomplete" and err["stats"]["completion_tokens"] == 1


def test_cancelled_running_request_gets_exactly_one_cancelled_error(make_engine):
    engine = make_engine()
    sink = Collector()
    job = engine.submit(req(prompt="Tell me a story.", max_tokens=300, stream=True), sink)
    assert sink.first_chunk.wait(120)
    job.cancel()
    job.cancel()
    assert sink.terminal()["code"] == "cancelled"


def test_client_failing_mid_stream_is_cancelled_and_the_engine_goes_on(make_engine):
    engine = make_engine()
    broken, ok = Collector(fail_on_chunk=True), Collector()
    engine.submit(req(prompt="Tell me a story.", max_tokens=300, stream=True), broken)
    engine.submit(req(prompt="Hi"), ok)
    assert broken.terminal()["code"] == "cancelled"
    assert len([m for m in broken.messages if m["type"] == "chunk"]) == 1
    assert ok.terminal()["type"] == "final"


def test_stop_answers_queued_and_running_requests_and_refuses_new_ones(make_engine):
    engine = make_engine(queue_size=4)
    running, queued = Collector(), Collector()
    engine.submit(req(prompt="Tell me a story.", max_tokens=300, stream=True), running)
    assert running.first_chunk.wait(120)
    engine.submit(req(prompt="Hi"), queued)
    t0 = time.monotonic()
    engine.stop()
    assert time.monotonic() - t0 < 5
    assert running.terminal(1)["code"] == "shutting_down"
    assert queued.terminal(1)["code"] == "shutting_down"
    with pytest.raises(ServiceError) as info:
        engine.submit(req(prompt="Hi"), Collector())
    assert info.value.code == "shutting_down"


def test_health_follows_progress(make_engine):
    engine = make_engine(stall_timeout_s=0.001)
    assert engine.is_healthy()          # idle is healthy
    sink = Collector()
    engine.submit(req(prompt="Tell me a story.", max_tokens=300, stream=True), sink)
    assert sink.first_chunk.wait(120)
    # Busy and no token within a millisecond: the watchdog would hold back its ping.
    seen = set()
    for _ in range(200):
        seen.add(engine.is_healthy())
        time.sleep(0.002)
    assert False in seen
    engine.stop()
    assert not engine.is_healthy()      # a stopped engine makes no progress
