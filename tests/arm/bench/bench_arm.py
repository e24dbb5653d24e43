"""ARM speed without a board (issue 18): edgellm's ARM kernels against ggml's, per core.

    python tests/arm/bench/bench_arm.py [--full]      (make bench-arm)

1. Cycles per 256 weights, from llvm-mca's scheduling models, of decode GEMV (each type's
   vec_dot on one row) and prefill GEMM (one register tile), ours against ggml's from the
   llama.cpp that llama-cpp-python 0.3.36 vendors, both cross-compiled with the same flags:
     Pi 4  Cortex-A72  -march=armv8-a -mcpu=cortex-a72               llvm-mca cortex-a72
     Pi 5  Cortex-A76  -march=armv8.2-a+dotprod+fp16 -mcpu=cortex-a76 llvm-mca cortex-a76, or
                       neoverse-n1 where the llvm at hand gives cortex-a76 no model of its own
   Method: a harness (harness_ours.c, harness_ggml.c) makes one kernel call between two marker
   functions; qemu-aarch64 runs it one instruction per translation block with `-d exec`, which
   logs the address of every instruction executed; the addresses between the markers, mapped
   to their disassembly, are the dynamic instruction trace of the call (loops unrolled as they
   ran, nested loops, tails, prologue and reduction included), and llvm-mca simulates that
   straight-line trace once. cycles / weights * 256 is the figure.
   Limits: llvm-mca assumes every load hits L1 and every branch is predicted, and models the
   core's pipelines, not its memory system: these are compute costs, the floor under which a
   kernel cannot go, not tok/s. The prologue and the final reduction are amortised over a row
   of 4096 weights (16 super-blocks), longer rows cost slightly less per weight. Our prefill
   tile starts from the weight tile unpacked to int8 (gemm.h), done once per row tile and up
   to 512 tokens, not counted; ggml's repacked gemm reads its load-time interleaved blocks.
   GEMM figures are per 256 weights per token (cycles / (rows * tokens * k) * 256).
2. Instructions per decoded and prefilled token under qemu-aarch64 (--full): needs a qemu
   TCG plugin that counts instructions; see instruction_counter() for what is checked.
3. Predicted decode tok/s per board: `edgellm plan --device <board>`'s bytes per token over
   the board's bandwidth, next to the compute bound from part 1's GEMV cycles over 4 cores.

Builds go to $EDGELLM_CACHE/bench-arm (default ~/.cache/edgellm); the llama.cpp sources come
from the llama-cpp-python sdist that tests/llamacpp_assets.py downloads.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
KERNELS = ROOT / "kernels"
sys.path.insert(0, str(ROOT / "tests"))

CC, CXX = "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++"
OBJDUMP, QEMU = "aarch64-linux-gnu-objdump", "qemu-aarch64"
K = 4096  # weights per row in the harnesses (BENCH_K)
TYPES = ["q4_0", "q5_0", "q8_0", "q4_K", "q5_K", "q6_K", "f16"]
# bytes per weight of each type, to turn the planner's bytes into weights
BYTES_PER_WEIGHT = {"Q4_0": 18 / 32, "Q5_0": 22 / 32, "Q8_0": 34 / 32, "Q4_K": 144 / 256,
                    "Q5_K": 176 / 256, "Q6_K": 210 / 256, "F16": 2.0}


@dataclass(frozen=True)
class Core:
    board: str      # edgellm plan --device name
    cpu: str        # qemu -cpu and the gcc -mcpu
    variant: str    # our kernel variant for this core (kernels/build_kernels.py)
    march: str
    ghz: float
    bandwidth: tuple[float, float]  # GB/s: theoretical, sustained in LLM decode


CORES = [
    Core("pi4", "cortex-a72", "neon", "armv8-a", 1.8, (12.8, 5.5)),
    Core("pi5", "cortex-a76", "dotprod", "armv8.2-a+dotprod+fp16", 2.4, (17.0, 11.4)),
]
# ggml's repacked gemm per type on a dotprod core without i8mm (repack.cpp's
# ggml_repack_get_optimal_repack_type): Q5_0 and F16 are not repacked.
GGML_REPACK_A76 = {"q4_0": "4x4", "q8_0": "4x4", "q4_K": "8x4", "q5_K": "8x4", "q6_K": "8x4"}


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return result


# ---- pure helpers (tests/test_bench_arm.py) ----

def parse_exec_log(text: str) -> list[int]:
    """Guest addresses of the `Trace` lines of a qemu `-d exec` log, in order."""
    return [int(m.group(1), 16) for m in re.finditer(r"^Trace \d+: \S+ \[[0-9a-f]+/([0-9a-f]+)/", text, re.M)]


def parse_objdump(text: str) -> dict[int, str]:
    """address -> instruction text, from `objdump -d --no-show-raw-insn`."""
    out = {}
    for m in re.finditer(r"^\s*([0-9a-f]+):\s+(\S[^\n]*)$", text, re.M):
        out[int(m.group(1), 16)] = m.group(2)
    return out


def mca_line(insn: str) -> str:
    """objdump's disassembly as llvm-mca's assembler takes it: comments dropped, every
    address operand (`401288 <sym+0x10>`) pointed at one label (the trace is straight-line:
    llvm-mca does not follow branches, so the target does not matter)."""
    insn = insn.split("//")[0].split(";")[0].strip()
    insn = re.sub(r"\b[0-9a-f]+ <[^>]*>", ".Ltrace", insn)
    return re.sub(r"\s+", " ", insn)


def window(pcs: list[int], begin: int, end: int) -> list[int]:
    """The addresses executed after the call of `begin` returned and before `end` was entered."""
    start = pcs.index(begin)
    # skip bench_begin's own instructions (up to its ret), then stop at bench_end
    i = start
    while pcs[i] in range(begin, begin + 8):
        i += 1
    stop = pcs.index(end, i)
    return pcs[i:stop]


def harness_type(gguf_type: str) -> str:
    """GGUF type name (Q4_K) -> the harnesses' (q4_K)."""
    return gguf_type.lower()[:-1] + "K" if gguf_type.endswith("_K") else gguf_type.lower()


def parse_total_cycles(mca_output: str) -> int:
    m = re.search(r"^Total Cycles:\s+(\d+)", mca_output, re.M)
    if not m:
        raise ValueError("no 'Total Cycles' in llvm-mca output")
    return int(m.group(1))


def parse_plan(text: str) -> dict:
    """From `edgellm plan` output: weights per type read per token and the bytes per token."""
    units = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}
    weights: dict[str, float] = {}
    for m in re.finditer(r"^\s+(\S+(?: \(tied output\))?)\s+\d+\s+\S+\s+->\s+(\S+)\s+([\d.]+) (\w+)\s", text, re.M):
        name, typ, size, unit = m.groups()
        if typ not in BYTES_PER_WEIGHT:
            continue  # f32 vectors: norms, not GEMV work
        weights[typ] = weights.get(typ, 0.0) + float(size) * units[unit] / BYTES_PER_WEIGHT[typ]
    m = re.search(r"decode ~([\d.]+) tokens/s \(([\d.]+) (\w+) read per token", text)
    if not m:
        raise ValueError("no 'read per token' in edgellm plan output")
    return {"weights": weights, "bytes_per_token": float(m.group(2)) * units[m.group(3)],
            "plan_tok_s": float(m.group(1))}


# ---- builds ----

def cache() -> Path:
    base = Path(os.environ.get("EDGELLM_CACHE", Path.home() / ".cache" / "edgellm")) / "bench-arm"
    base.mkdir(parents=True, exist_ok=True)
    return base


def ggml_sources() -> Path:
    """llama.cpp's ggml/ folder from the llama-cpp-python sdist (downloaded once)."""
    from llamacpp_assets import PINNED_VERSION, _download_sdist, _extract_tree

    dest = cache() / f"llamacpp-{PINNED_VERSION}" / "ggml"
    if (dest / "src" / "ggml-cpu" / "arch" / "arm" / "repack.cpp").exists():
        return dest
    work = Path(tempfile.mkdtemp(dir=cache()))
    try:
        sdist = _download_sdist(PINNED_VERSION, work / "download")
        _extract_tree(sdist, "vendor/llama.cpp/ggml/", work / "ggml")
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        (work / "ggml").rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def build_harnesses(core: Core, ggml: Path) -> dict[str, Path]:
    """harness_ours (our `core.variant` sources and flags, as kernels/build_kernels.py
    builds them) and harness_ggml (ggml's ARM quants.c, repack.cpp, vec.cpp), both with
    -march=<core.march> -mcpu=<core.cpu>, static."""
    out = cache() / core.cpu
    out.mkdir(exist_ok=True)
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_kernels_arm", KERNELS / "build_kernels.py")
    bk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bk)
    extra, _, header = bk.variants("aarch64")[core.variant]
    arch = [f"-march={core.march}", f"-mcpu={core.cpu}"]
    ours = out / "harness_ours"
    run([CC, "-static", "-pthread", f"-I{KERNELS}", f"-I{HERE}", *bk.CFLAGS, *arch,
         f'-DEL_VARIANT="{core.variant}"', f'-DEL_ARCH_QUANTS_H="{header}"', "-o", str(ours),
         str(HERE / "harness_ours.c"), *[str(KERNELS / s) for s in bk.SOURCES + extra], "-lm"])
    # ggml's Release flags; only the kernels are linked (their unused fallbacks stay unresolved)
    inc = [f"-I{ggml / 'include'}", f"-I{ggml / 'src'}", f"-I{ggml / 'src' / 'ggml-cpu'}", "-D_GNU_SOURCE",
           "-DNDEBUG", "-O3", *arch]
    objs = []
    for src, tool, std in [("arch/arm/quants.c", CC, "c11"), ("arch/arm/repack.cpp", CXX, "c++17"),
                           ("vec.cpp", CXX, "c++17")]:
        obj = out / (Path(src).stem + "_ggml.o")
        run([tool, "-c", f"-std={std}", *inc, str(ggml / "src" / "ggml-cpu" / src), "-o", str(obj)])
        objs.append(str(obj))
    theirs = out / "harness_ggml"
    run([CXX, "-static", "-O3", *arch, f"-I{HERE}", "-x", "c", str(HERE / "harness_ggml.c"), "-x", "none",
         *objs, "-Wl,--unresolved-symbols=ignore-all", "-o", str(theirs), "-lm"])
    return {"ours": ours, "ggml": theirs}


# ---- part 1: traces and llvm-mca ----

def symbols(binary: Path) -> dict[str, tuple[int, int]]:
    out = run(["aarch64-linux-gnu-nm", "-S", str(binary)]).stdout
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4:
            syms[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
    return syms


def trace(binary: Path, cpu: str, args: list[str], disasm: dict[int, str], syms: dict) -> list[str]:
    """The instructions one kernel call executes, in order (see the module docstring)."""
    fill, fill_size = syms["bench_buffer"]
    # log everything but the buffer filling (most of the program's instructions)
    dfilter = f"0x400000..0x{fill:x},0x{fill + fill_size:x}..0x7fffffff"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "exec.log"
        result = subprocess.run([QEMU, "-cpu", cpu, "-singlestep", "-d", "exec,nochain", "-dfilter", dfilter,
                                 "-D", str(log), str(binary), *args], capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"{binary.name} {' '.join(args)} on {cpu}: exit {result.returncode}\n{result.stderr}")
        pcs = parse_exec_log(log.read_text())
    return [mca_line(disasm[pc]) for pc in window(pcs, syms["bench_begin"][0], syms["bench_end"][0])]


def mca_cycles(lines: list[str], mcpu: str) -> int:
    with tempfile.NamedTemporaryFile("w", suffix=".s") as f:
        f.write(".Ltrace:\n" + "\n".join(lines) + "\n")
        f.flush()
        out = run([LLVM_MCA, "-mtriple=aarch64", f"-mcpu={mcpu}", "-iterations=1", f.name]).stdout
    return parse_total_cycles(out)


def mca_model(core: Core) -> str:
    """The llvm-mca CPU that models `core`: the core itself unless this llvm maps it to the
    same scheduling model as the Cortex-A72 (LLVM <= 19 has no Cortex-A76 model and falls back
    to the A57 one), then its server sibling, Neoverse-N1."""
    if core.cpu != "cortex-a76":
        return core.cpu
    probe = ["sdot v0.4s, v1.16b, v2.16b", "fmla v3.8h, v4.8h, v5.8h", "ldr q1, [x0, #16]", "add x0, x0, #32"]
    def stats(mcpu):
        with tempfile.NamedTemporaryFile("w", suffix=".s") as f:
            f.write("\n".join(probe) + "\n")
            f.flush()
            return run([LLVM_MCA, "-mtriple=aarch64", f"-mcpu={mcpu}", "-mattr=+dotprod,+fullfp16",
                        "-iterations=100", f.name]).stdout.split("\n\n")[0]
    return "neoverse-n1" if stats("cortex-a76") == stats("cortex-a72") else "cortex-a76"


def part1(cores: list[Core], ggml: Path) -> dict:
    """{(board, kind, type): (ours cycles per 256, ggml's or None, note)}"""
    rows = {}
    for core in cores:
        model = mca_model(core)
        print(f"{core.board}: {core.cpu}, -march={core.march} -mcpu={core.cpu}, llvm-mca -mcpu={model}"
              + (" (this llvm has no Cortex-A76 scheduling model)" if model != core.cpu else ""), flush=True)
        bins = build_harnesses(core, ggml)
        info = {side: (parse_objdump(run([OBJDUMP, "-d", "--no-show-raw-insn", str(b)]).stdout), symbols(b))
                for side, b in bins.items()}

        def cycles(side, args):
            lines = trace(bins[side], core.cpu, args, *info[side])
            return mca_cycles(lines, model)

        for t in TYPES:
            ours = cycles("ours", ["gemv", t]) * 256 / K
            theirs = cycles("ggml", ["gemv", t]) * 256 / K
            rows[(core.board, "gemv", t)] = (ours, theirs, "")
            # GEMM: one full register tile each
            rm, rn = (4, 4) if core.variant == "dotprod" else (4, 2)
            ours_mm = cycles("ours", ["gemm", t]) * 256 / (K * rm * rn)
            if core.variant != "dotprod":
                rows[(core.board, "gemm", t)] = (ours_mm, None, "ggml repacks only on dotprod/i8mm cores")
            elif t not in GGML_REPACK_A76:
                rows[(core.board, "gemm", t)] = (ours_mm, None, f"ggml has no ARM repack for {t} without i8mm")
            else:
                cols = int(GGML_REPACK_A76[t].split("x")[0])
                theirs_mm = cycles("ggml", ["gemm", t]) * 256 / (K * cols * 4)
                rows[(core.board, "gemm", t)] = (ours_mm, theirs_mm, f"ggml {t}_{GGML_REPACK_A76[t]} repacked")
    return rows


def print_part1(rows: dict) -> float:
    print("\n1. cycles per 256 weights (GEMM: per 256 weights per token), llvm-mca over the executed trace")
    print(f"{'board':5} {'kind':4} {'type':5} {'edgellm':>9} {'ggml':>9} {'ratio':>6}  note")
    worst = 0.0
    for (board, kind, t), (ours, theirs, note) in rows.items():
        if theirs is None:
            print(f"{board:5} {kind:4} {t:5} {ours:9.1f} {'-':>9} {'-':>6}  {note}")
            continue
        ratio = ours / theirs
        worst = max(worst, ratio)
        print(f"{board:5} {kind:4} {t:5} {ours:9.1f} {theirs:9.1f} {ratio:6.2f}  {note}")
    return worst


# ---- part 2: instructions per token ----

def instruction_counter() -> str | None:
    """Path of a qemu TCG plugin that counts instructions (contrib/plugins' libinsn.so), or
    None. Debian's qemu-user is built with plugin support (-plugin) but ships no plugins, and
    no package ships qemu-plugin.h to build one against."""
    for d in ["/usr/lib/qemu/plugins", "/usr/libexec/qemu/plugins", "/usr/lib/x86_64-linux-gnu/qemu"]:
        p = Path(d) / "libinsn.so"
        if p.exists():
            return str(p)
    return None


def part2(full: bool) -> None:
    print("\n2. instructions per token under qemu-aarch64, edgellm vs llama.cpp")
    plugin = instruction_counter()
    if plugin is None:
        print("   skipped: no instruction counter. Debian's qemu-user 7.2 accepts -plugin but ships no "
              "libinsn.so (contrib/plugins) and no qemu-plugin.h to build one; qemu's -d in_asm/exec "
              "logging of a whole model run is too slow, and perf/valgrind do not run under qemu-user.")
        return
    if not full:
        print(f"   {plugin} found; run with --full to count (cross-builds llama.cpp, ~30+ min)")
        return
    print("   --full with a plugin: not implemented yet (issue 18)")


# ---- part 3: bandwidth and compute bounds ----

def part3(cores: list[Core], rows: dict) -> None:
    print("\n3. predicted decode tok/s per board (default model, 4 cores)")
    print(f"{'board':5} {'MiB/token':>9} {'bw theo':>8} {'bw sust':>8} {'compute ours':>12} {'compute ggml':>12} "
          f"{'predicted':>9}")
    for core in cores:
        plan = parse_plan(run([EDGELLM, "plan", "--device", core.board]).stdout)
        per_token = plan["bytes_per_token"]
        theo, sust = (bw * 1e9 / per_token for bw in core.bandwidth)
        compute = {}
        for side in (0, 1):
            cyc = sum(w / 256 * rows[(core.board, "gemv", harness_type(typ))][side]
                      for typ, w in plan["weights"].items())
            compute[side] = core.ghz * 1e9 * 4 / cyc
        predicted = min(sust, compute[0])
        print(f"{core.board:5} {per_token / 2**20:9.1f} {theo:8.1f} {sust:8.1f} {compute[0]:12.1f} {compute[1]:12.1f} "
              f"{predicted:9.1f}")
    print("   bw: bytes per token (edgellm plan) over the board's theoretical / sustained bandwidth "
          "(Pi 4 12.8 / 5.5 GB/s, Pi 5 17 / 11.4); compute: GEMV cycles per token from part 1 at "
          "1.8 / 2.4 GHz over 4 cores (weights only: attention, norms and threading not counted); "
          "predicted: the lower of sustained bandwidth and our compute bound.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="also count instructions per token (part 2)")
    args = parser.parse_args()
    ggml = ggml_sources()
    llvm = re.search(r"LLVM version (\S+)", run([LLVM_MCA, "--version"]).stdout)
    print(f"llvm-mca: {LLVM_MCA} (LLVM {llvm.group(1) if llvm else '?'}); "
          f"qemu: {run([QEMU, '--version']).stdout.splitlines()[0]}; gcc: "
          f"{run([CC, '-dumpfullversion']).stdout.strip()}; ggml from llama-cpp-python 0.3.36")
    rows = part1(CORES, ggml)
    worst = print_part1(rows)
    part2(args.full)
    part3(CORES, rows)
    print(f"\nworst ratio edgellm/llama.cpp on ARM: {worst:.2f}")


LLVM_MCA = shutil.which("llvm-mca-19") or "llvm-mca"
EDGELLM = str(Path(sys.executable).parent / "edgellm")

if __name__ == "__main__":
    main()
