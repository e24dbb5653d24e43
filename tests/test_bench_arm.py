"""The pure parsers of tests/arm/bench/bench_arm.py (no cross toolchain needed), and its
instruction-counting qemu plugin on a program of known length (with the cross toolchain)."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_arm", Path(__file__).resolve().parent / "arm" / "bench" / "bench_arm.py")
bench_arm = importlib.util.module_from_spec(_spec)
sys.modules["bench_arm"] = bench_arm  # dataclasses look their module up
_spec.loader.exec_module(bench_arm)


def test_exec_log_gives_guest_addresses_in_order():
    log = ("Trace 0: 0x7ff3178b93c0 [0000000000001001/0000000000400860/00000001/00000201] f\n"
           "Trace 0: 0x7ff3178b9500 [0000000000001001/0000000000400864/00000001/00000201] f\n")
    assert bench_arm.parse_exec_log(log) == [0x400860, 0x400864]


def test_objdump_lines_become_mca_lines_with_one_branch_label():
    disasm = bench_arm.parse_objdump("  401288:\tb.ne\t4012a0 <ggml_vec_dot_q4_0_q8_0+0x18>  // b.any\n"
                                     "  40128c:\tsdot\tv0.4s, v1.16b, v2.16b\n")
    assert [bench_arm.mca_line(disasm[a]) for a in (0x401288, 0x40128c)] == [
        "b.ne .Ltrace", "sdot v0.4s, v1.16b, v2.16b"]


def test_window_is_what_runs_between_the_markers():
    begin, end = 0x100, 0x104
    pcs = [0x50, 0x100, 0x200, 0x204, 0x200, 0x104, 0x60]
    assert bench_arm.window(pcs, begin, end) == [0x200, 0x204, 0x200]


def test_plan_weights_per_type_and_bytes_per_token():
    text = ("  token_embd (tied output)        1  Q8_0   -> Q8_0     170.0 MiB  mmap\n"
            "  blk.*.ffn_down                  9  Q6_K   -> Q6_K       9.2 MiB  mmap\n"
            "  norms and other vectors       109  F32    -> F32      218.5 KiB  mmap\n"
            "  decode ~33.7 tokens/s (254.7 MiB read per token at 9 GB/s); ~20.2 when thermally throttled\n")
    plan = bench_arm.parse_plan(text)
    assert set(plan["weights"]) == {"Q8_0", "Q6_K"}
    assert plan["weights"]["Q8_0"] == 170.0 * 2**20 * 32 / 34
    assert plan["bytes_per_token"] == 254.7 * 2**20
    assert bench_arm.harness_type("Q6_K") == "q6_K" and bench_arm.harness_type("F16") == "f16"


def test_total_cycles_from_llvm_mca():
    assert bench_arm.parse_total_cycles("Iterations:        1\nTotal Cycles:      409\n") == 409


def test_parse_count_output_and_per_token():
    assert bench_arm.parse_count_output("9 length 667,236764,640\nkernels: neon\n") == (
        9, "length", [667, 236764, 640])
    assert bench_arm.parse_count_output("1 length \nrepacked: 0\n") == (1, "length", [])
    assert bench_arm.per_token(1000, 1800, 8) == 100.0


@pytest.mark.skipif(not (shutil.which(bench_arm.QEMU) and shutil.which(bench_arm.CC)),
                    reason="needs qemu-aarch64 and aarch64-linux-gnu-gcc (make bench-arm installs them)")
@pytest.mark.parametrize("loops", [1, 1000, 123457])
def test_insn_count_plugin_counts_a_known_loop_exactly(loops, tmp_path, monkeypatch):
    # counted_loop.S executes 1 + 2 * LOOPS + 3 instructions and nothing else (no libc)
    monkeypatch.setenv("EDGELLM_CACHE", str(tmp_path))
    plugin = bench_arm.build_insn_counter()
    program = tmp_path / "counted_loop"
    bench_arm.run([bench_arm.CC, "-nostdlib", "-static", f"-DLOOPS={loops}", "-o", str(program),
                   str(bench_arm.HERE / "counted_loop.S")])
    count, _ = bench_arm.count_instructions(plugin, "cortex-a72", [str(program)])
    assert count == 1 + 2 * loops + 3
