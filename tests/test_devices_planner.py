"""The memory planner on the real default model (Gemma 3 270M Q4_K_M)."""

import argparse
from pathlib import Path

import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from edgellm.cli.main import cmd_plan
from edgellm.devices.commands import add_plan_arguments, describe_system, resolve_device
from edgellm.devices.detect import detect_device
from edgellm.devices.planner import (DEFAULT_BATCH, MIN_AUTO_CTX, SPECULATION_ROWS, UNLIMITED, MemoryBudgetError,
                                     parse_size, plan_memory)
from edgellm.devices.profiles import get_profile
from edgellm.errors import EdgeLLMError
from edgellm.runtime.gguf_file import GGUFFile

FIXTURES = Path(__file__).parent / "fixtures" / "devices"
MiB, GiB = 1 << 20, 1 << 30
PI4 = get_profile("pi4")


@pytest.fixture(scope="module")
def gguf(default_model_path):
    with GGUFFile(default_model_path) as f:
        yield f


@pytest.fixture(scope="module")
def above(gguf):
    """above(x): a budget x MiB above the plan's fixed overhead (the process, the vocabulary,
    the header), so that the budgets of these tests keep their meaning when the overhead
    changes. They were set as whole MiB when the overhead was 61.7 MiB: 268M is above(206.3)."""
    fixed = sum(plan_memory(gguf, PI4, UNLIMITED).overhead.values())
    return lambda mib: fixed + int(mib * MiB)


def test_parse_size_reads_binary_units():
    assert parse_size("512M") == 512 * MiB
    assert parse_size("1G") == GiB
    assert parse_size("1.5GiB") == 1536 * MiB
    assert parse_size("800MB") == 800 * MiB
    assert parse_size("64k") == 64 * 1024
    assert parse_size("123456") == 123456
    assert parse_size("unlimited") == UNLIMITED


@pytest.mark.parametrize("text", ["", "12X", "-1M", "1.5Gi", "M", "0", "1 G B"])
def test_parse_size_rejects_malformed_sizes(text):
    with pytest.raises(EdgeLLMError, match="invalid size"):
        parse_size(text)


def test_512m_budget_gets_a_plan_that_fits(gguf):
    plan = plan_memory(gguf, PI4, parse_size("512M"))
    assert plan.budget == 512 * MiB
    assert plan.total <= 512 * MiB
    assert plan.offload == "resident"
    assert plan.n_ctx == 4096 and plan.kv_type == "F16"
    parts = (plan.weights_bytes + plan.kv_bytes + sum(plan.buffers.values())
             + sum(plan.overhead.values()))
    assert plan.total == parts


def test_unlimited_budget_keeps_original_types(gguf):
    plan = plan_memory(gguf, PI4, UNLIMITED)
    assert plan.tensor_types == {}
    assert all(g.chosen_type == g.source_type for g in plan.groups)
    assert plan.buffers["requantize scratch"] == 0
    # every weight is mapped and counted: the tensor bytes of the file
    assert plan.weights_bytes == sum(t.n_bytes for t in gguf.tensors.values())
    assert plan.quality_cost == 0.0


def test_impossible_budget_is_refused_naming_the_smallest_budget_that_fits(gguf):
    with pytest.raises(MemoryBudgetError) as info:
        plan_memory(gguf, PI4, parse_size("64M"))
    need = info.value.min_budget
    assert f"--memory-budget {-(-need // MiB)}M" in str(info.value)
    assert "64.0 MiB" in str(info.value)
    plan = plan_memory(gguf, PI4, need)  # that budget is enough...
    assert plan.total <= need
    with pytest.raises(MemoryBudgetError):  # ...and the smallest
        plan_memory(gguf, PI4, need - 1)


def test_tight_budget_requantizes_the_tied_embedding_first(gguf, above):
    plan = plan_memory(gguf, PI4, above(206.3))
    assert plan.total <= above(206.3)
    assert plan.offload == "resident"
    embd = plan.groups[0]
    assert embd.name == "token_embd (tied output)"
    assert embd.source_type == "Q8_0" and embd.chosen_type in ("Q5_0", "Q4_0")
    assert embd.memory.startswith("anon")
    assert plan.tensor_types["token_embd.weight"] == GGMLQuantizationType[embd.chosen_type]
    # the biggest saving of the plan is the embedding's
    savings = {g.name: g.source_bytes - g.bytes for g in plan.groups}
    assert max(savings, key=savings.get) == "token_embd (tied output)"
    assert plan.tokens_per_s > plan_memory(gguf, PI4, UNLIMITED).tokens_per_s


def test_requantized_types_are_smaller_and_fit_the_row_length(gguf, above):
    plan = plan_memory(gguf, PI4, above(176.3))
    assert plan.tensor_types
    for name, t in plan.tensor_types.items():
        info = gguf.tensors[name]
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(t)]
        assert info.shape[0] % block == 0  # 640-wide rows never get a 256-block K-quant
        assert info.n_elements // block * size < info.n_bytes


def test_kv_cache_counts_window_slots_for_gemma3_local_layers(gguf):
    plan = plan_memory(gguf, PI4, UNLIMITED, n_ctx=2048, n_batch=64)
    # 18 layers, 1 kv head x (256 + 256) f16 per slot: layers 5, 11, 17 are global (2048 slots),
    # the 15 others keep window 512 + batch 64 slots
    assert plan.kv_bytes == 3 * 2048 * 1024 + 15 * (512 + 64) * 1024
    assert (plan.n_ctx, plan.n_batch) == (2048, 64)


def test_tight_budget_shrinks_the_prompt_batch_before_anything_else(gguf):
    roomy = plan_memory(gguf, PI4, UNLIMITED)
    assert roomy.n_batch == DEFAULT_BATCH
    # just under what the default batch needs: a smaller batch alone makes it fit
    plan = plan_memory(gguf, PI4, roomy.total - 1)
    assert plan.n_batch < DEFAULT_BATCH
    assert plan.tensor_types == {} and plan.kv_type == "F16" and plan.n_ctx == roomy.n_ctx
    fixed = plan_memory(gguf, PI4, roomy.total - 1, n_batch=DEFAULT_BATCH)
    assert fixed.n_batch == DEFAULT_BATCH and fixed.tensor_types


def test_budget_below_the_resident_minimum_streams_the_weights(gguf, above):
    plan = plan_memory(gguf, PI4, above(156.3))
    assert plan.offload == "stream"
    assert plan.total <= above(156.3)
    assert plan.stream_window > 0
    assert plan.tensor_types == {}  # streamed weights stay as they are in the file
    assert plan.streamed_per_token > 0
    assert plan.tokens_per_s < 1.0  # microSD at 45 MB/s


def test_explicit_context_is_never_shortened(gguf, above):
    # fully requantized with a Q8_0 cache, the model needs ~above(175) resident at ctx 4096
    # and ~above(169) at ctx 512: in between, only a shorter context keeps it resident
    auto = plan_memory(gguf, PI4, above(172.3))
    fixed = plan_memory(gguf, PI4, above(172.3), n_ctx=4096)
    assert auto.n_ctx < 4096 and auto.n_ctx >= MIN_AUTO_CTX and auto.offload == "resident"
    assert fixed.n_ctx == 4096 and fixed.offload == "stream"


def test_context_longer_than_the_model_is_refused(gguf):
    with pytest.raises(EdgeLLMError, match="outside 1..32768"):
        plan_memory(gguf, PI4, UNLIMITED, n_ctx=65536)


def test_default_budget_is_the_detected_available_memory(gguf):
    device = detect_device(FIXTURES / "pi-zero-2w")
    plan = plan_memory(gguf, device)
    assert plan.budget == device.default_budget()
    assert plan.total <= plan.budget
    assert plan.device == "pi-zero-2w"
    # Less the HTTP server `serve` runs, 260 MiB holds the weights once the embedding is
    # requantized (it did not while the vocabulary was Python objects, 32 MiB more).
    assert plan.offload == "resident" and plan.tensor_types


def test_threads_follow_the_big_cores(gguf):
    assert plan_memory(gguf, get_profile("android"), UNLIMITED).threads == 5
    assert plan_memory(gguf, detect_device(FIXTURES / "x86-n100"), UNLIMITED).threads == 2


def test_explain_prints_groups_kv_buffers_and_total(gguf):
    text = plan_memory(gguf, PI4, parse_size("300M")).explain()
    for part in ("token_embd (tied output)", "Q8_0   -> Q", "KV cache", "buffers", "overhead",
                 "total (peak RSS)", "of 300.0 MiB budget", "tokens/s"):
        assert part in text


def test_plan_command_prints_the_plan_for_a_named_device(default_model_path, capsys):
    parser = argparse.ArgumentParser()
    add_plan_arguments(parser)
    args = parser.parse_args([str(default_model_path), "--device", "pi4:2G",
                              "--memory-budget", "512M", "--ctx", "2048"])
    assert cmd_plan(args) == 0
    out = capsys.readouterr().out
    assert "Raspberry Pi 4" in out and "ctx 2048" in out and "of 512.0 MiB budget" in out


def test_kv_cache_and_logits_scale_with_parallel_slots(gguf):
    one = plan_memory(gguf, PI4, UNLIMITED, n_ctx=2048, n_batch=64)
    three = plan_memory(gguf, PI4, UNLIMITED, n_ctx=2048, n_batch=64, parallel=3)
    assert (one.parallel, three.parallel) == (1, 3)
    assert three.kv_bytes == 3 * (3 * 2048 * 1024 + 15 * (512 + 64) * 1024)
    assert three.kv_bytes_per_slot == one.kv_bytes
    assert three.buffers["logits"] == 3 * 262144 * 4  # a row of f32 logits per slot
    # a speculated decode step's rows of logits (runtime/speculation.py), the slots' included
    rows = one.buffers["logits"] + one.buffers["speculation"]
    assert rows == three.buffers["logits"] + three.buffers["speculation"] == SPECULATION_ROWS * 262144 * 4
    shared = {k: v for k, v in one.buffers.items() if k not in ("logits", "speculation")}
    assert {k: v for k, v in three.buffers.items() if k not in ("logits", "speculation")} == shared
    assert three.total - one.total == 2 * one.kv_bytes


def test_speculation_rows_are_the_runtimes():
    from edgellm.runtime import speculation

    assert SPECULATION_ROWS == speculation.SPECULATION_ROWS


def test_auto_parallel_takes_four_slots_on_a_roomy_budget(gguf):
    single = plan_memory(gguf, PI4, parse_size("512M"))
    plan = plan_memory(gguf, PI4, parse_size("512M"), parallel=None)
    assert (plan.parallel, plan.n_ctx, plan.kv_type, plan.offload) == (4, 4096, "F16", "resident")
    assert plan.kv_bytes == 4 * single.kv_bytes
    assert plan.total <= 512 * MiB and plan.notes == []
    assert "parallel slots               4: KV cache 4 x 27.0 MiB, logits 4 x 1.0 MiB" \
        in plan.explain()


def test_auto_parallel_takes_fewer_slots_on_a_tight_budget_and_says_why(gguf, above):
    plan = plan_memory(gguf, PI4, above(206.3), parallel=None)
    assert (plan.parallel, plan.n_ctx, plan.offload) == (2, 4096, "resident")
    assert plan.total <= above(206.3)
    assert "- parallel slots lowered to 2 to fit the budget" in plan.explain()
    # one slot already needs a shorter context: the slots never shorten it further
    single = plan_memory(gguf, PI4, above(176.3))
    plan = plan_memory(gguf, PI4, above(176.3), parallel=None)
    assert (plan.parallel, plan.n_ctx) == (1, single.n_ctx) and single.n_ctx < 4096
    assert "parallel slots lowered to 1 to fit the budget" in plan.notes


def test_explicit_parallel_that_does_not_fit_is_lowered_before_the_context(gguf, above):
    plan = plan_memory(gguf, PI4, above(206.3), parallel=4)
    assert (plan.parallel, plan.n_ctx, plan.offload) == (3, 4096, "resident")
    assert plan.total <= above(206.3)
    assert "- parallel slots lowered to 3 to fit the budget (4 asked)" in plan.explain()
    # a budget that needs the weights streamed keeps one slot
    plan = plan_memory(gguf, PI4, above(156.3), parallel=4)
    assert (plan.parallel, plan.offload) == (1, "stream")


def test_explicit_parallel_is_never_raised(gguf):
    plan = plan_memory(gguf, PI4, UNLIMITED, parallel=2)
    assert plan.parallel == 2 and plan.notes == []


def test_parallel_below_one_is_refused(gguf):
    with pytest.raises(EdgeLLMError, match="parallel slots must be at least 1, got 0"):
        plan_memory(gguf, PI4, UNLIMITED, parallel=0)


def test_device_spec_with_ram_not_sold_is_refused():
    assert resolve_device("pi4:2G") == (PI4, 2 * GiB)
    with pytest.raises(EdgeLLMError, match="not 3.00 GiB"):
        resolve_device("pi4:3G")
    with pytest.raises(EdgeLLMError, match="unknown device 'pi9'"):
        resolve_device("pi9")


def test_describe_system_reports_cgroup_limit_and_thermal():
    text = describe_system(FIXTURES / "x86-n100")
    assert "profile x86-mini-pc" in text
    assert "v1 /system.slice/edgellm.service: limit 2.00 GiB" in text
    assert "x86_pkg_temp 45.0 C (throttles at 100 C)" in text
    assert "avx2" in text


def test_process_overhead_is_measured_once_and_cached(tmp_path, monkeypatch, gguf):
    """The plan's process line on this machine is a measurement of a fresh interpreter that
    imported what `run` (or `serve`) imports, cached by interpreter, libraries and sources."""
    import subprocess

    from edgellm.devices import overhead

    monkeypatch.setenv("EDGELLM_CACHE", str(tmp_path))
    run, measured = overhead.process_overhead("run")
    serve, _ = overhead.process_overhead("serve")
    assert measured and 20 * MiB < run < serve < 80 * MiB
    assert (tmp_path / "process-overhead.json").exists()

    def no_child(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(subprocess, "run", no_child)
    assert overhead.process_overhead("run") == (run, True)
    plan = plan_memory(gguf, detect_device(), UNLIMITED)
    assert plan.overhead["python + edgellm (measured)"] == run
    assert plan_memory(gguf, detect_device(), UNLIMITED, serve=True).overhead[
        "python + edgellm serve (measured)"] == serve
    assert "python + edgellm (estimated)" in plan_memory(gguf, PI4, UNLIMITED).overhead


def test_a_run_imports_neither_the_services_nor_the_heavy_optional_libraries():
    """What `edgellm run` on an SPM model does not need stays unimported: the services, the
    gguf package (4.6 MiB), jinja2 and OpenSSL (5 MiB), regex, numpy.random."""
    import subprocess
    import sys

    code = ("import sys\nfrom edgellm.cli.main import build_parser\n"
            "from edgellm.runtime.default_model import default_model_path\n"
            "from edgellm.runtime.generation import load_model\n"
            "build_parser('run')\nm = load_model(default_model_path())\n"
            "''.join(m.generate('Hello', max_tokens=2))\n"
            "print(sorted(n for n in ('gguf', 'jinja2', 'hashlib', 'regex', 'numpy.random', 'yaml', "
            "'edgellm.services', 'edgellm.cli.bench', 'edgellm.runtime.quantize') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "[]"
