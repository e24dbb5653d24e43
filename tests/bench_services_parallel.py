"""Continuous batching through `edgellm serve` (issue 17): a benchmark, not a test (pytest
does not collect it).

    python tests/bench_services_parallel.py [-r 3] [-n 96]

1. One serve child process with [engine] parallel = 4, HTTP and MQTT on free loopback ports,
   MQTT through a real Mosquitto. Alternating over the rounds (the order flips each round):
   four requests (temperature 0, -n tokens each, distinct prompts that answer at length) sent
   at once vs the same four one after another, over HTTP, then over MQTT with four clients.
   Aggregate decode = completion tokens of the four / wall time of the four; the ratio is
   concurrent over sequential, per round and the median. Each request's own tokens_per_s is
   the engine's (its stats: over HTTP through Ollama's /api/generate, whose reply carries
   them as eval_count / eval_duration; raw, so it is the same prompt as over MQTT).
   "texts identical" counts the prompts whose concurrent text was the sequential one in
   every round (batched rows may round differently: see tests/test_services_parallel.py).
2. Load: 200 requests (max_tokens 16) from 20 HTTP clients at once, against a parallel = 1
   server and a parallel = 4 one (queue_size 8 each, one server at a time). Every accepted
   request must get exactly one final reply (asserted); prints answered, busy, completion
   tokens and the p50 / p95 latency of the answered requests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from services_fixtures import (MOSQUITTO, REQ, Broker, MQTTProbe,  # noqa: E402
                               free_port, serve_process)

PARALLEL = 4
# Greedy answers that run on for well over 96 tokens with the default model (no early end).
PROMPTS = [
    "Write a long story about a dragon who learns to bake bread:",
    "Explain in detail how a steam engine works, step by step:",
    "List the planets of the solar system and describe each one:",
    "Here is a recipe for a chocolate cake, with every ingredient and step:",
    "The history of the Roman Empire, told year by year:",
    "A travel guide to the cities of Italy, one paragraph per city:",
    "The rules of chess, explained for a beginner:",
    "How to grow tomatoes in a garden, from seed to harvest:",
    "Once upon a time, in a small village by the sea,",
    "Ten tips for learning to play the guitar:",
    "A letter to a friend describing a summer holiday in the mountains:",
    "Count from one to one hundred in words: one, two, three,",
]
HTTP_PROMPTS, MQTT_PROMPTS = PROMPTS[:4], PROMPTS[4:8]
LOAD_CLIENTS, LOAD_PER_CLIENT, LOAD_TOKENS = 20, 10, 16
TIMEOUT_S = 600


class Server:
    """`edgellm serve` as a child process (tests/services_fixtures.serve_process)."""

    def __init__(self, workdir: Path, parallel: int, broker_port: int | None = None, speculate: bool = False):
        self.http_port = free_port()
        text = (f'[engine]\nnode = "bench{parallel}"\nparallel = {parallel}\nqueue_size = 8\n'
                f'speculate = {str(speculate).lower()}\n'
                f'max_tokens = 512\n[model]\nn_ctx = 1024\n[http]\nport = {self.http_port}\n')
        if broker_port:
            text += f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n'
        self.proc = serve_process(text, workdir)
        end = time.monotonic() + 180
        while (status := self.get("/health")) is None:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"serve did not start:\n{self.proc.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        if status["parallel"] != parallel:
            raise SystemExit(f"serve runs {status['parallel']} slots, not {parallel}")
        self.model = self.get("/v1/models")["data"][0]["id"]

    def request(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=TIMEOUT_S)
        try:
            conn.request(method, path, None if body is None else json.dumps(body),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def get(self, path):
        try:
            return self.request("GET", path)[1]
        except OSError:
            return None

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


# ---- one request, each way: (text, completion tokens, the engine's tokens_per_s) ------------


def http_ask(server: Server, prompt: str, n: int):
    status, reply = server.request("POST", "/api/generate", {
        "model": server.model, "prompt": prompt, "raw": True, "stream": False,
        "options": {"temperature": 0, "num_predict": n}})
    assert status == 200, reply
    tps = reply["eval_count"] / (reply["eval_duration"] / 1e9) if reply["eval_duration"] else 0.0
    return reply["response"], reply["eval_count"], tps


class MQTTAsker:
    """One MQTT v5 client with its own reply topic."""

    def __init__(self, port: int, i: int):
        self.probe = MQTTProbe(port, client_id=f"bench-{i}")
        self.topic = f"bench/inbox/{i}"
        self.probe.subscribe(self.topic)
        self.n = 0

    def __call__(self, prompt: str, n: int):
        self.n += 1
        rid = f"{self.topic}/{self.n}"
        self.probe.publish(REQ, {"id": rid, "prompt": prompt, "max_tokens": n, "temperature": 0},
                           response_topic=self.topic)
        replies = self.probe.until_terminal(TIMEOUT_S)
        assert [(m["id"], m["type"]) for m in replies] == [(rid, "final")], replies
        stats = replies[0]["stats"]
        return replies[0]["text"], stats["completion_tokens"], stats["tokens_per_s"]


def run_round(askers, prompts, n, concurrent: bool):
    """The four requests at once (a thread each, released together) or one after another:
    (wall seconds, [(text, tokens, tokens_per_s)] in prompt order)."""
    results = [None] * len(prompts)
    if not concurrent:
        t0 = time.perf_counter()
        for i, p in enumerate(prompts):
            results[i] = askers[i](p, n)
        return time.perf_counter() - t0, results
    start = threading.Barrier(len(prompts) + 1)

    def one(i):
        start.wait()
        results[i] = askers[i](prompts[i], n)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    assert all(results), "a request failed"
    return wall, results


def compare(label, askers, prompts, n, rounds):
    print(f"\n== {label}: {len(prompts)} requests of {n} tokens, concurrent vs sequential, "
          f"alternating, {rounds} rounds", flush=True)
    run_round(askers, prompts, 8, True)          # warm-up: pages, caches, the broker
    ratios, identical = [], [True] * len(prompts)
    for r in range(rounds):
        measured = {}
        for concurrent in ((True, False) if r % 2 == 0 else (False, True)):
            wall, results = run_round(askers, prompts, n, concurrent)
            tokens = sum(res[1] for res in results)
            measured[concurrent] = (tokens / wall, results)
            kind = "concurrent" if concurrent else "sequential"
            print(f"  round {r + 1} {kind:10s}: {tokens} tokens in {wall:6.2f} s = "
                  f"{tokens / wall:6.1f} tok/s aggregate; per request tok/s "
                  + " ".join(f"{res[2]:5.1f}" for res in results), flush=True)
        ratio = measured[True][0] / measured[False][0]
        same = [a[0] == b[0] for a, b in zip(measured[True][1], measured[False][1])]
        identical = [x and y for x, y in zip(identical, same)]
        ratios.append(ratio)
        print(f"  round {r + 1}: aggregate decode {ratio:.2f}x sequential, texts identical "
              f"{sum(same)}/{len(same)}", flush=True)
    summary = (f"{label}: aggregate decode {statistics.median(ratios):.2f}x sequential "
               f"(median of {rounds}), texts identical {sum(identical)}/{len(identical)}")
    print(summary, flush=True)
    return summary


# ---- load -------------------------------------------------------------------------------


def load(server: Server, parallel: int) -> str:
    """20 polite clients, 10 requests each: back off after busy, think a little after an
    answer (as tests/test_services_load.py's)."""
    lock = threading.Lock()
    outcomes, latencies, tokens = [], [], []

    def client(idx):
        rng = random.Random(idx)
        for k in range(LOAD_PER_CLIENT):
            prompt = PROMPTS[(idx + k) % len(PROMPTS)]
            t0 = time.perf_counter()
            try:
                status, reply = server.request("POST", "/v1/completions", {
                    "model": "m", "prompt": prompt, "max_tokens": LOAD_TOKENS, "temperature": 0})
            except OSError as exc:
                with lock:
                    outcomes.append(f"lost:{type(exc).__name__}")
                continue
            latency = time.perf_counter() - t0
            if status == 200:
                # One HTTP reply per request: a final, with its one completion in it.
                assert len(reply["choices"]) == 1, reply
                kind = "answered"
            else:
                kind = reply["error"]["code"]
            with lock:
                outcomes.append(kind)
                if kind == "answered":
                    latencies.append(latency)
                    tokens.append(reply["usage"]["completion_tokens"])
            time.sleep(rng.uniform(0.5, 2.0) if kind == "busy" else rng.uniform(0.0, 0.5))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(LOAD_CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    status = server.get("/health")
    counts = {k: outcomes.count(k) for k in sorted(set(outcomes))}
    sent = LOAD_CLIENTS * LOAD_PER_CLIENT
    busy = counts.get("busy", 0)
    answered = counts.get("answered", 0)
    # Every accepted request got exactly one final reply: no error but busy, none lost, and
    # the engine's own count of finals is the clients' count.
    assert len(outcomes) == sent and answered + busy == sent, counts
    assert status["requests"].get("answered", 0) == answered, status["requests"]
    assert status["requests"].get("busy", 0) == busy, status["requests"]
    q = statistics.quantiles(latencies, n=20, method="inclusive")
    line = (f"load parallel={parallel}: sent {sent}, answered {answered}, busy {busy}, "
            f"completion tokens {sum(tokens)} ({min(tokens)}-{max(tokens)} each), "
            f"latency p50 {statistics.median(latencies):.2f} s p95 {q[18]:.2f} s, "
            f"wall {wall:.1f} s = {sum(tokens) / wall:.1f} answered tok/s")
    print(line, flush=True)
    return line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("-n", "--tokens", type=int, default=96)
    ap.add_argument("--speculate", action="store_true",
                    help="serve with speculation (its default); off here unless asked, since a lone "
                         "request gets more proposals per pass than four share: the ratio would mix two gains")
    args = ap.parse_args()
    print(f"speculation {'on' if args.speculate else 'off'}", flush=True)
    if MOSQUITTO is None:
        print("mosquitto is not installed (make system-deps)", file=sys.stderr)
        return 1
    summaries = []
    with tempfile.TemporaryDirectory(prefix="edgellm-bench-parallel-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir).start()
        server = Server(workdir, PARALLEL, broker.port, args.speculate)
        askers = []
        try:
            summaries.append(compare("http", [lambda p, n: http_ask(server, p, n)] * 4,
                                     HTTP_PROMPTS, args.tokens, args.rounds))
            askers = [MQTTAsker(broker.port, i) for i in range(4)]
            summaries.append(compare("mqtt", askers, MQTT_PROMPTS, args.tokens, args.rounds))
        finally:
            for a in askers:
                a.probe.close()
            server.stop()
            broker.stop()
            broker.log.close()
        print(f"\n== load: {LOAD_CLIENTS * LOAD_PER_CLIENT} requests of {LOAD_TOKENS} tokens "
              f"from {LOAD_CLIENTS} HTTP clients, queue_size 8", flush=True)
        for parallel in (1, PARALLEL):
            server = Server(workdir, parallel, speculate=args.speculate)
            try:
                summaries.append(load(server, parallel))
            finally:
                server.stop()
    print("\n" + "\n".join(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
