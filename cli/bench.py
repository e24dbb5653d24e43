"""`edgellm bench`: prompt processing (pp) and generation (tg) speed like llama-bench, with
load time, peak RSS, kernel variant and threads; `--compare llama.cpp` runs llama.cpp
(llama-cpp-python) on the same file, threads and context, alternating runs in one
invocation, and prints the ratios. `--parallel N` instead measures continuous batching:
decode speed of one stream against N streams at once (runtime/batching.py), see
run_parallel_bench; `--speculate` measures decode with and without speculation
(runtime/speculation.py) on structured replies, see run_speculation_bench.

llama.cpp runs in two configurations: with plain CPU buffers (the weights used in place from
the file, as we do), and with its defaults, which add "extra buffer types": on x86 and ARM
its CPU backend repacks Q4_0/Q4_K/IQ4_NL/Q8_0 weights into interleaved rows at load (a copy:
more RSS, faster GEMV), and on CPUs with AMX uses AMX tiles. On this AMX machine
llama-cpp-python 0.3.36 crashes in its AMX matmul for any batch of more than one token, so
when the defaults' prompt run dies the bench says so and measures their decode alone.

Each run is a fresh worker process (`python -m edgellm.cli.bench --worker ...`), so
peak RSS and load time are measured per run and neither side warms the other's caches
beyond what the page cache does for both.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

# A worker imports all of this (the kernels included) before its clock starts, for both
# engines alike; load time is the model's, not Python's.
from edgellm import kernels
from edgellm.devices.commands import plan_from_args
from edgellm.devices.overhead import peak_rss_bytes
from edgellm.devices.planner import parse_size
from edgellm.errors import EdgeLLMError
from edgellm.runtime.batching import Scheduler
from edgellm.runtime.default_model import default_model_path
from edgellm.runtime.generation import default_threads, load_model
from edgellm.runtime.json_constraint import JSONSchemaConstraint
from edgellm.runtime.model_store import resolve_model
from edgellm.runtime.sampling import SamplingParams


def random_tokens(n: int, n_vocab: int, seed: int = 0) -> list[int]:
    # llama-bench feeds random tokens too; avoid the low ids where control tokens live
    rng = np.random.default_rng(seed)
    return rng.integers(1000, n_vocab, size=n).tolist()


def worker_edgellm(model_path: str, threads: int, n_ctx: int, pp: int, tg: int,
                   memory_budget: str | None = None, device: str | None = None) -> dict:
    t0 = time.perf_counter()
    # the same plan `edgellm run` would apply (a budget may requantize tensors)
    plan_args = argparse.Namespace(device=device, memory_budget=memory_budget, ctx=n_ctx,
                                   threads=threads, mlock=False)
    model = load_model(model_path, n_ctx=n_ctx, threads=threads, progress=False,
                       plan=lambda gguf: plan_from_args(plan_args, gguf))
    logits = model.eval([model.tokenizer.bos_id or 1])
    model.eval_token(int(np.argmax(logits)))
    ttft = time.perf_counter() - t0
    model.reset()
    tokens = random_tokens(pp, model.n_vocab)
    t = time.perf_counter()
    model.eval(tokens)
    pp_s = time.perf_counter() - t
    model.reset()
    token = tokens[0]
    t = time.perf_counter()
    for _ in range(tg):   # the decode path, one token at a time
        model.eval_token(token)
    tg_s = time.perf_counter() - t
    return {"pp_tps": pp / pp_s, "tg_tps": tg / tg_s, "load_s": ttft, "rss": peak_rss_bytes(),
            "variant": kernels.VARIANT, "threads": model.threads,
            "bytes_per_token": model.plan.bytes_per_token}


def worker_llamacpp(model_path: str, threads: int, n_ctx: int, pp: int, tg: int,
                    extra_bufts: bool = False, **_) -> dict:
    """llama.cpp through llama-cpp-python's low-level API: llama_decode on token batches,
    no Python work per token beyond the call (its high-level eval copies logits).
    extra_bufts: llama.cpp's defaults (repacked weights, AMX) instead of plain CPU buffers."""
    t0 = time.perf_counter()
    # llama-cpp-python is optional (the test extra): imported only by its own worker
    import llama_cpp
    from llama_cpp import llama_cpp as ll

    default_params = ll.llama_model_default_params

    def params():
        p = default_params()
        p.use_extra_bufts = extra_bufts
        return p

    ll.llama_model_default_params = params
    try:
        llm = llama_cpp.Llama(model_path, n_ctx=n_ctx, n_batch=min(512, n_ctx), n_threads=threads,
                              n_threads_batch=threads, verbose=False)
    finally:
        ll.llama_model_default_params = default_params
    ctx = llm._ctx.ctx
    mem = ll.llama_get_memory(ctx)

    def decode(ids):
        arr = (ll.llama_token * len(ids))(*ids)
        if ll.llama_decode(ctx, ll.llama_batch_get_one(arr, len(ids))) != 0:
            raise RuntimeError("llama_decode failed")

    decode([llm.token_bos()])
    decode([1000])
    ttft = time.perf_counter() - t0
    ll.llama_memory_clear(mem, True)
    tokens = random_tokens(max(pp, 1), llm.n_vocab())
    t = time.perf_counter()
    for i in range(0, pp, 512):
        decode(tokens[i:i + 512])
    pp_s = time.perf_counter() - t
    ll.llama_memory_clear(mem, True)
    t = time.perf_counter()
    for _ in range(tg):
        decode([tokens[0]])
    tg_s = time.perf_counter() - t
    return {"pp_tps": pp / pp_s if pp else None, "tg_tps": tg / tg_s, "load_s": ttft, "rss": peak_rss_bytes(),
            "variant": "llama.cpp " + llama_cpp.__version__, "threads": threads}


def worker_llamacpp_defaults(*args, **kwargs) -> dict:
    return worker_llamacpp(*args, extra_bufts=True, **kwargs)


WORKERS = {"edgellm": worker_edgellm, "llama.cpp": worker_llamacpp, "llama.cpp-defaults": worker_llamacpp_defaults}
LABELS = {"llama.cpp": "plain CPU buffers", "llama.cpp-defaults": "defaults: repacked"}


class WorkerCrashed(EdgeLLMError):
    pass


def run_worker(engine: str, args, pp: int) -> dict:
    """One run of `engine`: a WORKERS name, or "edgellm@SIZE" (edgellm planned into SIZE)."""
    engine, _, budget = engine.partition("@")
    cmd = [sys.executable, "-m", "edgellm.cli.bench", "--worker", engine, "--model", args.model,
           "--threads", str(args.threads), "--ctx", str(args.ctx), "--pp", str(pp), "--tg", str(args.tg)]
    for flag, value in (("--memory-budget", budget or args.memory_budget), ("--device", args.device)):
        if value:
            cmd += [flag, value]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode < 0:
        raise WorkerCrashed(f"the {engine} benchmark run died of signal {-proc.returncode}")
    if proc.returncode == 2:  # the worker's own one-line error (main)
        raise EdgeLLMError(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        raise EdgeLLMError(f"the {engine} benchmark run failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def llamacpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def summarize(runs: list[dict], key: str) -> tuple[float, float] | tuple[None, None]:
    values = [r[key] for r in runs if r[key] is not None]
    if not values:
        return None, None
    return statistics.median(values), (max(values) - min(values)) / 2


def run_bench(args) -> int:
    args.model = resolve_model(args.model) or str(default_model_path())
    args.threads = args.threads or default_threads()
    if args.speculate:
        return run_speculation_bench(args)
    if args.tg is None:
        args.tg = 128
    if args.parallel is not None:
        return run_parallel_bench(args)
    engines = ["edgellm"]
    if args.compare:
        if args.compare != "llama.cpp":
            raise EdgeLLMError(f"--compare takes 'llama.cpp', not {args.compare!r}")
        if llamacpp_available():
            engines += ["llama.cpp", "llama.cpp-defaults"]
        else:
            print("llama-cpp-python is not installed: benchmarking edgellm alone "
                  "(pip install llama-cpp-python to compare)", file=sys.stderr)
    if args.compare_budget:
        parse_size(args.compare_budget)  # a bad size is an error before any run
        engines.insert(1, f"edgellm@{args.compare_budget}")
    results = {e: [] for e in engines}
    pp = {e: args.pp for e in engines}
    notes = []
    for rep in range(args.repetitions):
        for engine in engines:  # alternate, so drift on a shared machine hits both alike
            try:
                r = run_worker(engine, args, pp[engine])
            except WorkerCrashed as e:
                if engine != "llama.cpp-defaults" or not pp[engine]:
                    raise
                # llama.cpp's AMX matmul on multi-token batches (see the module's docstring)
                notes.append(f"llama.cpp with its defaults crashed on the {args.pp}-token prompt ({e}); "
                             f"its decode is measured alone")
                pp[engine] = 0
                r = run_worker(engine, args, 0)
            results[engine].append(r)
            pp_text = f"{r['pp_tps']:8.1f}" if r["pp_tps"] is not None else f"{'-':>8}"
            print(f"  run {rep + 1}/{args.repetitions} {engine:18}  pp{args.pp} {pp_text} tok/s  "
                  f"tg{args.tg} {r['tg_tps']:7.1f} tok/s  rss {r['rss'] / 1e6:6.0f} MB", file=sys.stderr)
    print(f"model: {args.model}\nthreads: {args.threads}  ctx: {args.ctx}  repetitions: {args.repetitions}")
    print(f"{'engine':44} {'pp' + str(args.pp) + ' tok/s':>18} {'tg' + str(args.tg) + ' tok/s':>18} "
          f"{'load+1st tok s':>15} {'peak RSS MB':>12}")
    medians = {}
    for engine, runs in results.items():
        pp_tps, pp_spread = summarize(runs, "pp_tps")
        tg, tg_spread = summarize(runs, "tg_tps")
        load, _ = summarize(runs, "load_s")
        rss, _ = summarize(runs, "rss")
        medians[engine] = {"pp": pp_tps, "tg": tg, "load": load, "rss": rss}
        if engine in LABELS:
            label = f"{runs[0]['variant']} ({LABELS[engine]})"
        else:
            budget = engine.partition("@")[2] or args.memory_budget or "detected"
            label = f"edgellm ({runs[0]['variant']}, budget {budget})"
        pp_text = f"{pp_tps:10.1f} ± {pp_spread:5.1f}" if pp_tps is not None else f"{'-':>18}"
        print(f"{label:44} {pp_text} {tg:10.1f} ± {tg_spread:5.1f} {load:15.2f} {rss / 1e6:12.0f}")
    a = medians["edgellm"]
    if args.compare_budget:
        print(budget_ratio(results["edgellm"], results[engines[1]], args.memory_budget or "detected",
                           args.compare_budget))
    for engine in engines[1:]:
        if engine not in LABELS:
            continue
        b = medians[engine]
        pp_ratio = f"pp {a['pp'] / b['pp']:.2f}x" if b["pp"] else "pp -"
        print(f"ratio edgellm / llama.cpp ({LABELS[engine]}): {pp_ratio}  tg {a['tg'] / b['tg']:.2f}x  "
              f"load {a['load'] / b['load']:.2f}x  peak RSS {a['rss'] / b['rss']:.2f}x")
    for note in dict.fromkeys(notes):
        print("note:", note)
    return 0


# Fixed prompts whose greedy continuations run past 128 tokens on the default model (the
# runtime has no ignore-EOS option; the tokens actually generated are what is counted).
PARALLEL_PROMPTS = [
    "Count from 1 to 100: 1, 2, 3, 4,",
    "The alphabet, one letter per line:\nA\nB\nC\n",
    "Here is a long story about a dragon who lived in a castle. Once upon a time,",
    "List of the days of the week, repeated: Monday, Tuesday, Wednesday,",
]


def parallel_prompts(n: int) -> list[str]:
    """n distinct prompts: the fixed ones, numbered again once they run out."""
    k = len(PARALLEL_PROMPTS)
    return [PARALLEL_PROMPTS[i] if i < k else f"({i // k + 1}) {PARALLEL_PROMPTS[i % k]}" for i in range(n)]


def decode_together(model, prompts: list[str], n_tokens: int, speculate: bool = False) -> dict:
    """Greedy generations of n_tokens for every prompt at once through a Scheduler (one
    prompt: a stream alone), from empty caches. Without speculation unless asked: it would
    give the lone stream proposals (six rows a pass) that four streams share, so the ratio
    would mix two gains (bench --speculate measures that one).

    Measured: `decode_s`, the wall time from the end of the step in which the last prompt
    was evaluated (each prompt's last pass also samples its first token) to the end of the
    last step. Each step in it evaluates one generated token per running stream, so the
    tokens generated divided by decode_s is the aggregate decode speed. `per_stream_tps` is
    each generation's own n_generated / generate_ms (the same window, seen by each stream)."""
    model.reset()
    scheduler = Scheduler(model)
    gens = [model.generate(p, max_tokens=n_tokens, sampling=SamplingParams(temperature=0), speculate=speculate)
            for p in prompts]
    for gen in gens:
        scheduler.add(gen)
    prompted = set()
    while len(prompted) < len(gens):  # every generation moves in the step its prompt ends
        prompted.update(gen for gen, _, _ in scheduler.step())
    t = time.perf_counter()
    while scheduler.running:  # the decode steps
        scheduler.step()
    decode_s = time.perf_counter() - t
    generated = sum(gen.n_generated for gen in gens)
    return {"texts": [gen.text for gen in gens], "generated": generated, "tps": generated / decode_s,
            "per_stream_tps": statistics.mean(gen.n_generated / (gen.generate_ms / 1000) for gen in gens)}


def run_parallel_bench(args) -> int:
    """`edgellm bench --parallel N`: the model loaded once with N sequences; rounds that
    alternate one generation alone (each round the next prompt) with N generations at once,
    so drift on a shared machine hits both alike. Prints each round, the medians, the ratios,
    and whether the batched texts equal the same prompts run alone (greedy: they should)."""
    n = args.parallel
    if n < 2:
        raise EdgeLLMError(f"--parallel takes 2 or more streams, got {n}")
    if args.tg < 1 or args.repetitions < 1:
        raise EdgeLLMError("--parallel needs at least 1 generated token (-n) and 1 round (-r)")
    if args.compare_budget:
        raise EdgeLLMError("--parallel measures one plan: leave out --compare-budget")
    plan_args = argparse.Namespace(device=args.device, memory_budget=args.memory_budget, ctx=args.ctx,
                                   threads=args.threads, mlock=False, parallel=n)
    model = load_model(args.model, n_ctx=args.ctx, threads=args.threads, progress=False,
                       plan=lambda gguf: plan_from_args(plan_args, gguf))
    if model.parallel < n:
        raise EdgeLLMError(f"only {model.parallel} parallel sequences fit the memory budget, not {n}: "
                           "lower --parallel or --ctx, or raise --memory-budget")
    prompts = parallel_prompts(n)
    decode_together(model, prompts, 4)  # warm-up, untimed: the weights paged in, the threads started
    alone_texts = {}
    ones, manys = [], []
    for rnd in range(args.repetitions):
        i = rnd % n
        one = decode_together(model, [prompts[i]], args.tg)
        alone_texts[i] = one["texts"][0]
        many = decode_together(model, prompts, args.tg)
        ones.append(one)
        manys.append(many)
        print(f"  round {rnd + 1}/{args.repetitions}  1 stream {one['tps']:7.1f} tok/s ({one['generated']} tokens)  "
              f"{n} streams {many['tps']:7.1f} tok/s aggregate, {many['per_stream_tps']:6.1f} tok/s per stream "
              f"({many['generated']} tokens)", file=sys.stderr)
    for i in range(n):  # prompts the rounds did not run alone, for the text check only
        if i not in alone_texts:
            alone_texts[i] = decode_together(model, [prompts[i]], args.tg)["texts"][0]
    identical = sum(all(m["texts"][i] == alone_texts[i] for m in manys) for i in range(n))
    one_tps = statistics.median(r["tps"] for r in ones)
    many_tps = statistics.median(r["tps"] for r in manys)
    per_stream_tps = statistics.median(r["per_stream_tps"] for r in manys)
    print(f"model: {args.model}\nthreads: {model.threads}  ctx: {model.n_ctx}  rounds: {args.repetitions}  "
          f"tokens per stream: {args.tg} (greedy, speculation off)")
    print(f"decode 1 stream:  median {one_tps:7.1f} tok/s")
    print(f"decode {n} streams: median {many_tps:7.1f} tok/s aggregate, {per_stream_tps:6.1f} tok/s per stream")
    print(f"parallel {n}: aggregate decode {many_tps / one_tps:.2f}x one stream "
          f"(per stream {per_stream_tps / one_tps:.2f}x)")
    print(f"texts identical {identical}/{n} (each batched text against its prompt run alone, in every round)")
    if args.compare or llamacpp_available():
        print("llama.cpp: not compared with --parallel (llama-cpp-python has no API for parallel sequences)")
    return 0


DEVICE_SCHEMA = {"type": "object", "required": ["id", "room", "on", "level"],
                 "properties": {"id": {"type": "string"}, "room": {"type": "string"},
                                "on": {"type": "boolean"}, "level": {"type": "integer"}}}
READING_SCHEMA = {"type": "object", "required": ["name", "value", "unit"],
                  "properties": {"name": {"type": "string"}, "value": {"type": "number"},
                                 "unit": {"type": "string"}}}

# (name, prompt, JSON schema of the reply or None, structured?). The JSON prompts show objects
# of the schema and leave the next one to the model; the table asks to repeat what it shows;
# the free text is the control, an opening the default model continues greedily for 96
# tokens with few repeats of its own (a story or a letter falls into a loop, which
# speculation would speed up).
SPECULATION_PROMPTS = [
    ("json devices",
     'Devices as JSON:\n{"id": "lamp-1", "room": "kitchen", "on": true, "level": 40}\n'
     '{"id": "lamp-2", "room": "hall", "on": false, "level": 0}\n'
     '{"id": "lamp-3", "room": "bedroom", "on": true, "level": 75}\n', DEVICE_SCHEMA, True),
    ("json readings",
     'Sensor readings as JSON:\n{"name": "temp-kitchen", "value": 21.5, "unit": "C"}\n'
     '{"name": "humidity-kitchen", "value": 40, "unit": "%"}\n'
     '{"name": "temp-hall", "value": 19.8, "unit": "C"}\n', READING_SCHEMA, True),
    ("sensor table",
     "Sensor readings:\nsensor=temp1 value=21.5 unit=C status=ok\nsensor=temp2 value=22.1 unit=C status=ok\n"
     "sensor=hum1 value=40 unit=% status=ok\nsensor=temp3 value=19.8 unit=C status=ok\n"
     "Repeat the readings:\nsensor=temp1", None, True),
    ("free text", "The history of the bicycle begins in the early 19th century, when", None, False),
]


def generate_timed(model, prompt: str, schema, n_tokens: int, speculate: bool) -> dict:
    """One greedy generation from an empty cache; its decode speed is the Generation's own
    n_generated / generate_ms (the passes after the prompt's)."""
    model.reset()
    gen = model.generate(prompt, max_tokens=n_tokens, sampling=SamplingParams(temperature=0),
                         constraint=JSONSchemaConstraint(schema) if schema is not None else None,
                         speculate=speculate)
    text = "".join(gen)
    return {"text": text, "generated": gen.n_generated, "tps": gen.n_generated / (gen.generate_ms / 1000),
            "proposed": gen.n_proposed, "accepted": gen.n_accepted}


def run_speculation_bench(args) -> int:
    """`edgellm bench --speculate`: the model loaded once; each round generates every prompt
    of SPECULATION_PROMPTS greedily (-n tokens at most) without and with speculation, back to
    back, the first of the two alternating from round to round, so drift on a shared machine
    hits both alike. Prints each run, per prompt the median decode speeds, their ratio, the
    proposals accepted and whether the texts agree; then the free-text ratio and the
    structured replies' speedup."""
    args.tg = 96 if args.tg is None else args.tg
    if args.tg < 1 or args.repetitions < 1:
        raise EdgeLLMError("--speculate needs at least 1 generated token (-n) and 1 round (-r)")
    for flag, given in (("--parallel", args.parallel is not None), ("--compare", args.compare),
                        ("--compare-budget", args.compare_budget)):
        if given:
            raise EdgeLLMError(f"--speculate measures edgellm alone, with one plan: leave out {flag}")
    plan_args = argparse.Namespace(device=args.device, memory_budget=args.memory_budget, ctx=args.ctx,
                                   threads=args.threads, mlock=False)
    model = load_model(args.model, n_ctx=args.ctx, threads=args.threads, progress=False,
                       plan=lambda gguf: plan_from_args(plan_args, gguf))
    generate_timed(model, SPECULATION_PROMPTS[0][1], None, 4, True)  # warm-up, untimed
    runs = {(name, spec): [] for name, *_ in SPECULATION_PROMPTS for spec in (False, True)}
    for rnd in range(args.repetitions):
        for name, prompt, schema, _ in SPECULATION_PROMPTS:
            for spec in ((False, True) if rnd % 2 == 0 else (True, False)):
                r = generate_timed(model, prompt, schema, args.tg, spec)
                runs[name, spec].append(r)
                accepted = f"  accepted {r['accepted']:3} of {r['proposed']:3} proposed" if spec else ""
                print(f"  round {rnd + 1}/{args.repetitions}  {name:14} {'speculate' if spec else 'plain':9} "
                      f"{r['tps']:7.1f} tok/s ({r['generated']} tokens){accepted}", file=sys.stderr)
    print(f"model: {args.model}\nthreads: {model.threads}  ctx: {model.n_ctx}  rounds: {args.repetitions}  "
          f"max tokens: {args.tg} (greedy)")
    ratios, identical = {}, 0
    for name, _, schema, _ in SPECULATION_PROMPTS:
        plain, spec = runs[name, False], runs[name, True]
        plain_tps = statistics.median(r["tps"] for r in plain)
        spec_tps = statistics.median(r["tps"] for r in spec)
        ratios[name] = spec_tps / plain_tps
        proposed, accepted = sum(r["proposed"] for r in spec), sum(r["accepted"] for r in spec)
        same = len({r["text"] for r in plain + spec}) == 1   # every round, both modes
        identical += same
        rate = f"{accepted / proposed:.0%}" if proposed else "-"
        print(f"{name:14} {'(JSON schema)' if schema else '':13} plain {plain_tps:7.1f} tok/s  "
              f"speculate {spec_tps:7.1f} tok/s  {ratios[name]:.2f}x  accepted {accepted}/{proposed} ({rate})  "
              f"{spec[0]['generated']} tokens  texts {'identical' if same else 'DIFFER'}")
    free = [ratios[name] for name, _, _, structured in SPECULATION_PROMPTS if not structured]
    replies = [ratios[name] for name, _, _, structured in SPECULATION_PROMPTS if structured]
    print(f"free text: {statistics.median(free):.2f}x")
    # The aggregate: the median over the structured prompts of each prompt's median ratio
    # (speculating / plain tok/s), so one prompt's outlier round moves it little.
    print(f"speculation speedup {statistics.median(replies):.2f}x on structured replies, "
          f"outputs identical {identical}/{len(SPECULATION_PROMPTS)}")
    return 0


def budget_ratio(runs: list[dict], other: list[dict], budget: str, other_budget: str) -> str:
    """The decode speed of two plans against the bytes each reads per token: when only
    memory-bound work changes, the time saved per token is the bytes saved at the memory's
    speed, which the line states as a rate."""
    tg, tg_other = summarize(runs, "tg_tps")[0], summarize(other, "tg_tps")[0]
    read, read_other = runs[0]["bytes_per_token"], other[0]["bytes_per_token"]
    saved_s = 1 / tg_other - 1 / tg
    rate = f", the {(read_other - read) / 2**20:.1f} MiB saved at {(read_other - read) / saved_s / 1e9:.1f} GB/s" \
        if saved_s > 0 and read_other > read else ""
    return (f"ratio edgellm budget {budget} / budget {other_budget}: tg {tg / tg_other:.2f}x, reading "
            f"{read_other / read:.2f}x fewer bytes per token ({read / 2**20:.1f} vs {read_other / 2**20:.1f} MiB); "
            f"{1e3 / tg:.2f} vs {1e3 / tg_other:.2f} ms per token{rate}")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="GGUF file (default: the default model)")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("-c", "--ctx", type=int, default=4096)
    p.add_argument("-p", "--pp", type=int, default=512, help="prompt tokens (pp)")
    p.add_argument("-n", "--tg", type=int, default=None,
                   help="generated tokens (tg; default 128, 96 with --speculate)")
    p.add_argument("-r", "--repetitions", type=int, default=5)
    p.add_argument("--compare", metavar="ENGINE", help="also run llama.cpp (llama-cpp-python)")
    p.add_argument("--memory-budget", metavar="SIZE", help="plan edgellm's run into this budget")
    p.add_argument("--device", metavar="NAME[:RAM]", help="plan for this board's profile")
    p.add_argument("--compare-budget", metavar="SIZE",
                   help="also run edgellm planned into SIZE ('unlimited': nothing requantized), alternating, "
                        "and compare decode speed with the bytes each plan reads per token")
    p.add_argument("--parallel", type=int, metavar="N",
                   help="measure continuous batching instead: decode speed of N streams at once against "
                        "one alone, alternating rounds (-r) of -n tokens per stream")
    p.add_argument("--speculate", action="store_true",
                   help="measure speculation instead: decode speed with and without it on structured "
                        "replies (JSON schema, a repeated table) and free text, alternating rounds (-r)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", choices=sorted(WORKERS), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--ctx", type=int, required=True)
    p.add_argument("--pp", type=int, required=True)
    p.add_argument("--tg", type=int, required=True)
    p.add_argument("--memory-budget")
    p.add_argument("--device")
    a = p.parse_args()
    try:
        result = WORKERS[a.worker](a.model, a.threads, a.ctx, a.pp, a.tg,
                                   memory_budget=a.memory_budget, device=a.device)
    except EdgeLLMError as e:  # a bad model file or plan: one line, as the CLI says it
        print(e, file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
