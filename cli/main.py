"""The `edgellm` command line: run, chat, info, list, quantize, serve, plan and bench.

It sits above every layer and imports them downward: the runtime (models, generation),
the devices (memory plans) and the services (serve). Nothing imports this module.
"""

import argparse
import importlib
import sys
import time
from collections import Counter

from edgellm import kernels
from edgellm.devices.commands import add_memory_arguments, add_plan_arguments, describe_system, plan_from_args
from edgellm.devices.overhead import peak_rss_bytes
from edgellm.errors import EdgeLLMError
from edgellm.runtime.default_model import default_model_path
from edgellm.runtime.generation import load_model
from edgellm.runtime.gguf_file import GGUFFile
from edgellm.runtime.model_store import list_ollama_models, ollama_models_dir, resolve_model
from edgellm.runtime.sampling import SamplingParams
from edgellm.runtime.tokenizer import Tokenizer


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", help="GGUF file, or an Ollama model NAME[:TAG] (default: Gemma 3 270M Q4_K_M)")
    p.add_argument("-c", "--ctx", type=int, default=None, help="context length in tokens")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    add_memory_arguments(p, ctx=False)


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    d = SamplingParams()
    p.add_argument("-n", "--max-tokens", type=int, default=256)
    p.add_argument("--temp", type=float, default=d.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--min-p", type=float, default=d.min_p)
    p.add_argument("--repeat-penalty", type=float, default=d.repeat_penalty)
    p.add_argument("--repeat-last-n", type=int, default=d.repeat_last_n)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--no-speculate", dest="speculate", action="store_false",
                   help="decode one token per pass, without verifying tokens proposed from the text "
                        "so far (the output is the same either way)")


def sampling_from(args) -> SamplingParams:
    return SamplingParams(temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                          min_p=args.min_p, repeat_penalty=args.repeat_penalty,
                          repeat_last_n=args.repeat_last_n, seed=args.seed)


def open_model(args):
    """Load the model (a file or an Ollama name) under the memory plan for this device
    (--device, --memory-budget)."""
    path = resolve_model(args.model)

    def plan(gguf):
        p = plan_from_args(args, gguf)
        if args.show_plan:
            print(p.explain(), file=sys.stderr)
        return p

    return load_model(path, n_ctx=args.ctx, threads=args.threads, plan=plan)


def cmd_run(args) -> int:
    model = open_model(args)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    options = dict(max_tokens=args.max_tokens, sampling=sampling_from(args), stop=args.stop,
                   speculate=args.speculate)
    gen = (model.chat([{"role": "user", "content": prompt}], **options) if args.chat else
           model.generate(prompt, **options))
    if args.echo:
        sys.stdout.write(prompt)
    for piece in gen:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.verbose:
        print_stats(gen)
    return 0


def print_stats(gen) -> None:
    pp = gen.n_prompt_tokens - gen.n_cached_tokens
    peak = peak_rss_bytes() / 2**20
    # tokens proposed and verified in decode passes (runtime/speculation.py): none with --no-speculate
    spec = (f"speculation: accepted {gen.n_accepted} of {gen.n_proposed} proposed | "
            if gen.n_proposed else "")
    print(f"prompt: {gen.n_prompt_tokens} tokens ({gen.n_cached_tokens} cached), "
          f"{pp / max(gen.prompt_ms, 1e-9) * 1000:.1f} tok/s | "
          f"generated: {gen.n_generated} tokens, {gen.n_generated / max(gen.generate_ms, 1e-9) * 1000:.1f} tok/s | "
          f"finish: {gen.finish_reason} | {spec}peak RSS {peak:.1f} MiB", file=sys.stderr)


def cmd_chat(args) -> int:
    model = open_model(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print(f"edgellm chat with {model.name} (ctx {model.n_ctx}); /reset clears, Ctrl-D quits",
          file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not line.strip():
            continue
        if line.strip() == "/reset":
            messages = messages[:1] if args.system else []
            continue
        messages.append({"role": "user", "content": line})
        try:
            gen = model.chat(messages, max_tokens=args.max_tokens, sampling=sampling_from(args),
                             stop=args.stop, speculate=args.speculate)
            for piece in gen:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            gen.cancel()
        except EdgeLLMError as e:
            messages.pop()
            print(f"error: {e}", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": gen.text})
        if args.verbose:
            print_stats(gen)


def cmd_info(args) -> int:
    if args.system:
        print(kernels.describe())
        print(describe_system())
        if args.model_path is None:
            return 0
    path = resolve_model(args.model_path) or str(default_model_path())
    f = GGUFFile(path)
    arch = f.get("general.architecture", "?")
    print(f"file:          {path} ({f.file_size / 1e6:.1f} MB, GGUF v{f.version})")
    print(f"name:          {f.get('general.name', '?')}")
    print(f"architecture:  {arch}")
    for key in ("context_length", "embedding_length", "block_count", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv", "attention.key_length",
                "attention.sliding_window", "rope.freq_base"):
        if f"{arch}.{key}" in f.metadata:
            print(f"  {key + ':':26} {f.metadata[arch + '.' + key]}")
    n_params = sum(t.n_elements for t in f.tensors.values())
    print(f"parameters:    {n_params / 1e6:.1f} M in {len(f.tensors)} tensors")
    by_type, count = Counter(), Counter()
    for t in f.tensors.values():
        by_type[t.type_name] += t.n_bytes
        count[t.type_name] += 1
    print("tensor types:")
    for name, nbytes in by_type.most_common():
        print(f"  {name:6} {count[name]:4} tensors {nbytes / 1e6:9.2f} MB")
    tok = Tokenizer.from_metadata(f.metadata)
    print(f"tokenizer:     {f.get('tokenizer.ggml.model')} (pre: {f.get('tokenizer.ggml.pre', 'default')}), "
          f"{tok.vocab_size} tokens, bos={tok.bos_id} eos={tok.eos_id} add_bos={tok.add_bos}")
    print(f"chat template: {'in file' if f.get('tokenizer.chat_template') else 'none in file (built-in used)'}")
    return 0


def cmd_plan(args) -> int:
    """`edgellm plan`: print the plan. EdgeLLMError (including MemoryBudgetError, when nothing
    fits) propagates for main to report."""
    with GGUFFile(resolve_model(args.model) or default_model_path()) as gguf:
        print(plan_from_args(args, gguf).explain())
    return 0


def format_bytes(n: int) -> str:
    """Decimal units, as `ollama list` prints sizes."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 10 * scale else f"{n / scale:.0f} {unit}"
    return f"{n} B"


def cmd_list(args) -> int:
    """`edgellm list`: the models in the Ollama store, with the GGUF each name loads."""
    store = ollama_models_dir()
    models = list_ollama_models(store)
    if not models:
        print(f"edgellm: no Ollama models in {store} (set OLLAMA_MODELS to another store)", file=sys.stderr)
        return 0
    rows = [("NAME", "SIZE", "MODIFIED", "PATH")]
    for m in models:
        rows.append((m.name.display, format_bytes(m.size) if m.size is not None else "-",
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(m.modified)),
                     m.problem or str(m.blob)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])
    return 0


# Commands whose module is imported only when the command runs (or None asks for all): the
# services, the bench's statistics and subprocesses and the gguf package's writer cost a
# process that only answers a prompt 2.9 MiB of RSS (devices/overhead.py measures what is).
LAZY_COMMANDS = {
    "quantize": ("edgellm.runtime.quantize", "add_quantize_arguments", "run_quantize"),
    "serve": ("edgellm.services.serve", "add_serve_arguments", "run_serve"),
    "bench": ("edgellm.cli.bench", "add_bench_arguments", "run_bench"),
}


def add_lazy_command(sub, name: str, command: str | None, help: str) -> None:
    p = sub.add_parser(name, help=help)
    if command in (name, None):
        module, add_arguments, run = LAZY_COMMANDS[name]
        module = importlib.import_module(module)
        getattr(module, add_arguments)(p)
        p.set_defaults(func=getattr(module, run))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, the lazily imported commands other than it get only their
    name and help (enough for `edgellm --help`)."""
    parser = argparse.ArgumentParser(prog="edgellm", description="Run language models on edge devices.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="answer one prompt, streaming to stdout")
    add_model_arguments(p)
    add_sampling_arguments(p)
    p.add_argument("prompt", nargs="?", help="the prompt (default: read stdin)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--echo", action="store_true", help="print the prompt before the answer")
    p.add_argument("-v", "--verbose", action="store_true", help="print timings to stderr")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="interactive chat that keeps the conversation")
    add_model_arguments(p)
    add_sampling_arguments(p)
    p.add_argument("--system", help="system prompt")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="describe a model file, or this system with --system")
    p.add_argument("model_path", nargs="?", help="GGUF file (default: the default model)")
    p.add_argument("--system", action="store_true", help="show the device, kernels and memory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("list", help="list the models in the Ollama store ($OLLAMA_MODELS or ~/.ollama/models)")
    p.set_defaults(func=cmd_list)

    add_lazy_command(sub, "quantize", command, "rewrite a GGUF's weight matrices in another type")
    add_lazy_command(sub, "serve", command, "serve the model over MQTT, serial, a local socket and HTTP")

    p = sub.add_parser("plan", help="plan a model into this device's (or --device's) memory")
    add_plan_arguments(p)
    p.set_defaults(func=cmd_plan)

    add_lazy_command(sub, "bench", command, "measure prompt and generation speed (like llama-bench)")
    for name, p in sub.choices.items():  # -v everywhere: main() shows a bug's traceback with it
        if "--verbose" not in p._option_string_actions:
            p.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an unexpected error")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), "")  # "" imports no lazy command
    args = build_parser(command).parse_args(argv)
    try:
        return args.func(args)
    except EdgeLLMError as e:
        print(f"edgellm: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug, not the user's doing: one line, the traceback with -v
        if args.verbose:
            raise
        print(f"edgellm: unexpected error: {type(e).__name__}: {e} (rerun with -v for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
