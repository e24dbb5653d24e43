"""Continuous batching through the services (issue 17), for correctness, not speed: requests
that run at once in `parallel` slots get the texts they get alone, every accepted request gets
exactly one terminal reply, and each slot's request can be cancelled, time out or stream
without touching the others.

At temperature 0 a request's text is the greedy path of its logits. In a batch its rows share
each forward pass with other sequences' rows, and the AVX-512 kernel variants sum a batch of
rows in another order than one row alone, so the last float bits may differ. Where a batched
text leaves the one the request got alone, the alone run's top two logits at the first
differing token must be within NEAR_TIE (the rule of tests/test_prefix_reuse.py); each test
prints how often that happened. The margins are computed in this process on a model loaded
with the same plan as the server (`reference`), never on a model an engine is running.
"""

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from services_fixtures import (MOSQUITTO, REQ, Broker, MQTTProbe, free_port,  # noqa: F401
                               make_engine, serve_process, wait_for)

from edgellm.services.config import parse_config
from edgellm.services.engine import RequestEngine
from edgellm.services.protocol import Limits, ServiceError, parse_request
from edgellm.services.serve import plan_for

openai = pytest.importorskip("openai")

PARALLEL = 4
N_CTX = 1024
NEAR_TIE = 0.5
N_TOKENS = 40
# Prompts whose greedy answers run well past N_TOKENS (no early end of sequence).
PROMPTS = [
    "Write a long story about a dragon who learns to bake bread:",
    "Explain in detail how a steam engine works, step by step:",
    "List the planets of the solar system and describe each one:",
    "Here is a recipe for a chocolate cake, with every ingredient and step:",
]
MQTT_PROMPTS = [
    "The history of the Roman Empire, told year by year:",
    "A travel guide to the cities of Italy, one paragraph per city:",
    "The rules of chess, explained for a beginner:",
    "How to grow tomatoes in a garden, from seed to harvest:",
]
LONG_PROMPT = "A letter to a friend describing a summer holiday in the mountains:"
# Longer than batching.MIN_COPIED_PREFIX tokens, so a busy sequence's copy of it is reused.
KIOSK = ("You are the lobby kiosk of the Grand Hotel. Answer guests politely in one or two "
         "short sentences. Breakfast is served from seven to ten in the garden room, the pool "
         "is open until nine in the evening, and checkout is at eleven.")
KIOSK_QUESTIONS = ["When is breakfast served?", "Where is the pool?",
                   "What time is checkout?", "Can I get a taxi to the airport?"]
ENGINE_LIMITS = Limits(default_max_tokens=N_TOKENS, max_tokens=512)


def config_text(http_port: int | None = None, broker_port: int | None = None, parallel=PARALLEL):
    text = (f'[engine]\nnode = "par"\nparallel = {parallel}\nqueue_size = 8\n'
            f'[model]\nn_ctx = {N_CTX}\n')
    if http_port:
        text += f"[http]\nport = {http_port}\n"
    if broker_port:
        text += f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\nstatus_interval_s = 1\n'
    return text


def load_as_serve(default_model_path):
    """The default model loaded as `edgellm serve` loads it with parallel = 4 (serve.plan_for)."""
    from edgellm.runtime import load_model

    cfg = parse_config({"engine": {"parallel": PARALLEL}, "model": {"n_ctx": N_CTX},
                        "http": {"port": 1}})
    model = load_model(default_model_path, n_ctx=N_CTX, plan=lambda gguf: plan_for(cfg, gguf))
    assert model.parallel == PARALLEL
    return model


@pytest.fixture(scope="module")
def reference(default_model_path):
    """Only for top-2 margins, computed in this thread: no engine runs on it."""
    return load_as_serve(default_model_path)


@pytest.fixture(scope="module")
def model4(default_model_path):
    """The model the engine tests' engines run on (one engine at a time)."""
    return load_as_serve(default_model_path)


# ---- texts and near-ties --------------------------------------------------------------------


def margins_along(model, ids, tokens):
    """The top-2 logit margin before each of `tokens` (and after the last), when they follow
    the prompt `ids` from an empty cache: the alone run's margins along its own path."""
    seq = model.sequences[0]
    seq.reset()
    logits = model.eval(ids, seq=seq)
    margins = []
    for token in [*tokens, None]:
        top2 = np.partition(logits, -2)[-2:]
        margins.append(float(top2[1] - top2[0]))
        if token is not None:
            logits = model.eval_token(token, seq)
    return margins


class Differences:
    """Checks batched texts against alone texts with the near-tie rule; keeps a report."""

    def __init__(self, model, label):
        self.model, self.label = model, label
        self.compared, self.lines = 0, []

    def check(self, ids, alone: str, batched: str, what: str) -> None:
        self.compared += 1
        if batched == alone:
            return
        tok = self.model.tokenizer
        a = tok.encode(alone, add_special=False, parse_special=False)
        b = tok.encode(batched, add_special=False, parse_special=False)
        at = next(i for i in range(len(a) + 1) if i == len(a) or i == len(b) or a[i] != b[i])
        margin = margins_along(self.model, ids, a)[at]
        line = (f"{what!r}: leaves the alone text at token {at} of {len(a)}, where the alone "
                f"run's top-2 margin is {margin:.3f}")
        self.lines.append(line)
        assert margin < NEAR_TIE, f"{line}\nalone:   {alone!r}\nbatched: {batched!r}"

    def print(self, capsys):
        with capsys.disabled():
            print(f"\n{self.label}: {len(self.lines)} of {self.compared} texts left the alone "
                  f"text at a near-tie (< {NEAR_TIE})")
            for line in self.lines:
                print("  " + line)


# ---- `edgellm serve` with parallel = 4: HTTP and MQTT ---------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One `edgellm serve` child process, parallel = 4, HTTP and MQTT on a real Mosquitto."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    workdir = tmp_path_factory.mktemp("parallel")
    broker = Broker(workdir).start()
    http_port = free_port()
    proc = serve_process(config_text(http_port, broker.port), workdir)
    try:
        wait_for(lambda: proc.poll() is not None or health(http_port), 180, 0.2,
                 "serve's HTTP /health")
        assert proc.poll() is None, proc.log_path.read_text()[-3000:]
        assert health(http_port)["parallel"] == PARALLEL
        yield {"http": http_port, "broker": broker}
    finally:
        proc.terminate()
        proc.wait(30)
        broker.stop()
        broker.log.close()


def health(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


class RunningWatch:
    """Polls /health while requests run: the most that were running at once."""

    def __init__(self, port):
        self.port, self.most, self._stop = port, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.05):
            status = health(self.port)
            if status:
                self.most = max(self.most, status["running"])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def test_four_concurrent_http_completions_get_the_texts_they_get_alone(served, reference,
                                                                        capsys):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{served['http']}/v1", api_key="none",
                           max_retries=0, timeout=300)

    def complete(prompt):
        r = client.completions.create(model="m", prompt=prompt, max_tokens=N_TOKENS,
                                      temperature=0)
        return r.choices[0].text, r.usage.completion_tokens

    alone = {p: complete(p) for p in PROMPTS}
    with RunningWatch(served["http"]) as watch, ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = dict(zip(PROMPTS, pool.map(complete, PROMPTS)))
    assert watch.most == PARALLEL          # the four did run at once

    diffs = Differences(reference, "http, 4 concurrent vs alone")
    for p in PROMPTS:
        assert alone[p][1] == together[p][1] == N_TOKENS
        diffs.check(reference.tokenize(p), alone[p][0], together[p][0], p)
    diffs.print(capsys)


def test_four_concurrent_mqtt_clients_each_get_one_final_with_the_alone_text(served, reference,
                                                                             capsys):
    port = served["broker"].port
    clients = [MQTTProbe(port) for _ in MQTT_PROMPTS]
    try:
        for i, c in enumerate(clients):
            c.subscribe(f"par/inbox/{i}")

        def ask(i, prompt, rid):
            clients[i].publish(REQ, {"id": rid, "prompt": prompt, "max_tokens": N_TOKENS,
                                     "temperature": 0}, response_topic=f"par/inbox/{i}")

        def replies(i):
            got = clients[i].until_terminal(300)
            # exactly one final: nothing follows it (the request was not streamed)
            time.sleep(0.5)
            while not clients[i].messages.empty():
                got.append(clients[i].get_json(1))
            return got

        alone = {}
        for i, p in enumerate(MQTT_PROMPTS):
            ask(i, p, f"alone-{i}")
            alone[p] = replies(i)
        with RunningWatch(served["http"]) as watch:
            for i, p in enumerate(MQTT_PROMPTS):
                ask(i, p, f"together-{i}")
            together = {p: replies(i) for i, p in enumerate(MQTT_PROMPTS)}
        assert watch.most == PARALLEL
    finally:
        for c in clients:
            c.close()

    diffs = Differences(reference, "mqtt, 4 concurrent clients vs alone")
    for i, p in enumerate(MQTT_PROMPTS):
        for kind, got in (("alone", alone[p]), ("together", together[p])):
            assert [(m["id"], m["type"]) for m in got] == [(f"{kind}-{i}", "final")], got
            assert got[0]["stats"]["completion_tokens"] == N_TOKENS
        diffs.check(reference.tokenize(p), alone[p][0]["text"], together[p][0]["text"], p)
    diffs.print(capsys)


# ---- the engine's slots ---------------------------------------------------------------------


class Replies:
    """A sink for every job: each job's messages in order, and when its terminal one came."""

    def __init__(self):
        self.cond = threading.Condition()
        self.messages: dict = {}
        self.ended: dict = {}

    def __call__(self, job, message):
        with self.cond:
            self.messages.setdefault(job.id, []).append(message)
            if message["type"] != "chunk":
                self.ended.setdefault(job.id, time.monotonic())
            self.cond.notify_all()

    def wait(self, ids, timeout=300):
        with self.cond:
            assert self.cond.wait_for(lambda: all(i in self.ended for i in ids), timeout)
            return {i: list(self.messages[i]) for i in ids}


def submit(engine, sink, rid, prompt=None, **fields):
    body = {"id": rid, "temperature": 0, **fields}
    body["messages" if isinstance(prompt, list) else "prompt"] = prompt
    request, _ = parse_request(body, engine.limits)
    return engine.submit(request, sink)


def only_final(messages):
    assert [m["type"] for m in messages] == ["final"], messages
    return messages[0]


@pytest.fixture(scope="module")
def alone_texts(model4):
    """Each prompt's text through an engine on model4, one request at a time."""
    engine = RequestEngine(model4, ENGINE_LIMITS).start()
    try:
        sink = Replies()
        texts = {}
        for n, p in enumerate(PROMPTS):
            submit(engine, sink, f"alone-{n}", p)
            texts[p] = only_final(sink.wait([f"alone-{n}"])[f"alone-{n}"])["text"]
        return texts
    finally:
        engine.stop()


def wait_running(engine, n):
    wait_for(lambda: engine.status()["running"] == n, 120, what=f"{n} running jobs")


def test_cancelling_one_of_four_running_jobs_ends_only_that_one(make_engine, model4, reference,
                                                                alone_texts, capsys):
    engine = make_engine(ENGINE_LIMITS, model=model4)
    sink = Replies()
    jobs = [submit(engine, sink, f"c{n}", p) for n, p in enumerate(PROMPTS)]
    wait_running(engine, PARALLEL)
    engine.cancel(jobs[1])
    got = sink.wait([j.id for j in jobs])
    engine.stop()
    assert got["c1"] == [{"id": "c1", "type": "error", "code": "cancelled",
                          "message": "the request was cancelled"}]
    diffs = Differences(reference, "the three beside a cancelled job vs alone")
    for n in (0, 2, 3):
        final = only_final(got[f"c{n}"])
        assert final["finish_reason"] == "length"
        diffs.check(reference.tokenize(PROMPTS[n]), alone_texts[PROMPTS[n]], final["text"],
                    PROMPTS[n])
    diffs.print(capsys)
    assert engine.counts["cancelled"] == 1 and engine.counts["answered"] == 3


def test_a_deadline_passing_while_others_run_ends_only_that_job(make_engine, model4):
    engine = make_engine(ENGINE_LIMITS, model=model4)
    sink = Replies()
    # The others need 128 steps; the short deadline passes long before they end.
    others = [submit(engine, sink, f"d{n}", p, max_tokens=128) for n, p in enumerate(PROMPTS[:3])]
    late = submit(engine, sink, "late", LONG_PROMPT, max_tokens=500, deadline_s=1.0)
    got = sink.wait(["late", *(j.id for j in others)])
    assert got["late"] == [{"id": "late", "type": "error", "code": "deadline",
                            "message": "deadline of 1 s passed"}]
    assert late.generation is not None      # it was running beside the others, not queued
    for job in others:
        assert only_final(got[job.id])["stats"]["completion_tokens"] == 128
        assert sink.ended[job.id] > sink.ended["late"]    # they were still running then
    assert engine.counts["deadline"] == 1 and engine.counts["answered"] == 3


def test_a_streamed_job_among_three_plain_ones_gets_its_chunks_in_order(make_engine, model4,
                                                                        reference, alone_texts,
                                                                        capsys):
    engine = make_engine(ENGINE_LIMITS, model=model4)
    sink = Replies()
    jobs = [submit(engine, sink, f"s{n}", p, stream=(n == 2)) for n, p in enumerate(PROMPTS)]
    got = sink.wait([j.id for j in jobs])
    engine.stop()
    streamed = got["s2"]
    chunks, final = streamed[:-1], streamed[-1]
    assert [m["type"] for m in streamed] == ["chunk"] * len(chunks) + ["final"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks))) and final["chunks"] == len(chunks)
    assert "text" not in final and len(chunks) > 1
    diffs = Differences(reference, "a streamed job and three plain ones vs alone")
    for n, p in enumerate(PROMPTS):
        text = "".join(c["text"] for c in chunks) if n == 2 else only_final(got[f"s{n}"])["text"]
        diffs.check(reference.tokenize(p), alone_texts[p], text, p)
    diffs.print(capsys)


def test_a_job_beyond_the_slots_waits_and_runs_when_a_slot_frees(make_engine, model4,
                                                                 reference, capsys):
    engine = make_engine(ENGINE_LIMITS, model=model4, queue_size=2)
    sink = Replies()
    jobs = [submit(engine, sink, f"q{n}", p) for n, p in enumerate(PROMPTS)]
    wait_running(engine, PARALLEL)
    queued = submit(engine, sink, "queued", LONG_PROMPT)
    assert engine.status()["queue_depth"] == 1
    got = sink.wait([j.id for j in jobs] + ["queued"])
    # The worker starts a queued job only after a running one ended and freed its sequence.
    assert queued.started >= min(sink.ended[j.id] for j in jobs)
    final = only_final(got["queued"])
    assert final["stats"]["completion_tokens"] == N_TOKENS
    submit(engine, sink, "queued-alone", LONG_PROMPT)
    alone = only_final(sink.wait(["queued-alone"])["queued-alone"])["text"]
    engine.stop()
    diffs = Differences(reference, "a queued job vs the same prompt alone")
    diffs.check(reference.tokenize(LONG_PROMPT), alone, final["text"], LONG_PROMPT)
    diffs.print(capsys)


def test_busy_only_when_every_slot_and_the_queue_are_full(make_engine, model4):
    engine = make_engine(ENGINE_LIMITS, model=model4, queue_size=1)
    sink = Replies()
    jobs = [submit(engine, sink, f"b{n}", p, max_tokens=64) for n, p in enumerate(PROMPTS)]
    wait_running(engine, PARALLEL)
    jobs.append(submit(engine, sink, "b-queued", LONG_PROMPT, max_tokens=8))
    with pytest.raises(ServiceError) as info:
        submit(engine, sink, "b-busy", LONG_PROMPT, max_tokens=8)
    assert info.value.code == "busy"
    got = sink.wait([j.id for j in jobs])
    for job in jobs:
        only_final(got[job.id])
    assert "b-busy" not in sink.messages
    assert engine.counts["busy"] == 1 and engine.counts["answered"] == PARALLEL + 1


def test_a_burst_fills_every_slot_and_the_queue_before_busy(make_engine, model4):
    """Requests that arrive together, before the worker has taken any from the queue (here
    the test holds the engine's lock while it submits, so thread timing cannot decide it):
    `parallel` of them go to the free slots and queue_size more wait; only the next is busy."""
    engine = make_engine(ENGINE_LIMITS, model=model4, queue_size=1)
    sink = Replies()
    accepted, busy = [], []
    with engine._cond:
        for n in range(PARALLEL + 2):
            try:
                accepted.append(submit(engine, sink, f"burst{n}", PROMPTS[n % 4], max_tokens=4))
            except ServiceError as err:
                busy.append((n, err.code))
    got = sink.wait([j.id for j in accepted])
    for job in accepted:
        only_final(got[job.id])
    assert busy == [(PARALLEL + 1, "busy")], (
        f"accepted {len(accepted)} of a burst of {PARALLEL + 2} with {PARALLEL} free slots "
        f"and queue_size 1; busy: {busy}")


def test_a_kiosk_system_prompt_is_reused_by_chats_that_join_a_running_one(make_engine, model4,
                                                                          reference, capsys):
    model4.reset()     # no sequence holds anything: what is reused is copied from a busy one
    engine = make_engine(ENGINE_LIMITS, model=model4, system_prompt=KIOSK)
    sink = Replies()
    chats = [[{"role": "user", "content": q}] for q in KIOSK_QUESTIONS]
    ids = [model4.chat([{"role": "system", "content": KIOSK}, *c]).ids for c in chats]
    shared = min(next(i for i, (a, b) in enumerate(zip(ids[0], other)) if a != b)
                 for other in ids[1:])
    assert shared > len(reference.tokenize(KIOSK)) // 2      # the system prompt, at least

    first = submit(engine, sink, "k0", chats[0], max_tokens=64, stream=True)
    # Its first chunk: its sequence holds the system prompt, evaluated.
    wait_for(lambda: sink.messages.get("k0"), 120, what="the first chat's first chunk")
    later = [submit(engine, sink, f"k{n}", c, max_tokens=24) for n, c in enumerate(chats[1:], 1)]
    got = sink.wait(["k0", *(j.id for j in later)])
    assert got["k0"][-1]["type"] == "final" and got["k0"][-1]["stats"]["cached_tokens"] == 0
    cached = [only_final(got[j.id])["stats"]["cached_tokens"] for j in later]
    with capsys.disabled():
        print(f"\nkiosk: {shared} prompt tokens shared; cached_tokens of the chats that joined: "
              f"{cached}")
    assert all(c >= shared for c in cached), cached

    # And a copied prefix gives the text the same chat gets alone.
    diffs = Differences(reference, "kiosk chats that joined vs alone")
    for n, job in enumerate(later, 1):
        submit(engine, sink, f"alone{n}", chats[n], max_tokens=24)
        alone = only_final(sink.wait([f"alone{n}"])[f"alone{n}"])["text"]
        diffs.check(ids[n], alone, only_final(got[job.id])["text"], KIOSK_QUESTIONS[n])
    engine.stop()
    diffs.print(capsys)
