"""The edgellm command line, run as a user would run it (a real subprocess)."""

import re
import subprocess
import sys

import pytest


def edgellm(*args, input=None, env=None):
    return subprocess.run([sys.executable, "-m", "edgellm.cli", *args], capture_output=True,
                          text=True, input=input, timeout=600, env=env)


@pytest.mark.parametrize("make_path, message", [
    (lambda tmp: tmp / "missing.gguf", "model file not found"),
    (lambda tmp: tmp, "is a directory"),
    (lambda tmp: (tmp / "notes.txt").write_text("hello, not a model") and tmp / "notes.txt", "not a GGUF file"),
])
def test_bad_model_path_is_one_clear_line_and_exit_2(tmp_path, make_path, message):
    r = edgellm("run", "-m", str(make_path(tmp_path)), "hi")
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_bench_of_a_malformed_file_is_one_clear_line(tmp_path):
    """bench loads the model in a worker process: its error comes back as the one line run
    prints, not the worker's traceback."""
    path = tmp_path / "cut.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    r = edgellm("bench", str(path), "-r", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"edgellm: {path}: file is truncated: 15 bytes is shorter "
                                             "than the 24-byte GGUF header"]


def test_unsupported_architecture_is_named(tmp_path):
    import gguf

    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>", "a"])
    w.add_token_scores([0.0] * 4)
    w.add_token_types([2, 3, 3, 1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = edgellm("run", "-m", str(path), "hi")
    assert r.returncode == 2
    assert "architecture 'mamba' is not supported (supported: gemma3, llama, mistral, phi3, qwen2, qwen3)" in r.stderr


def test_run_streams_a_greedy_answer_with_the_default_model(default_model_path):
    r = edgellm("run", "-m", str(default_model_path), "--temp", "0", "-n", "8", "The capital of France is")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(" the capital of the country of France")


def test_plan_shows_the_parallel_slots_asked(default_model_path):
    r = edgellm("plan", str(default_model_path), "--device", "pi4:2G", "--memory-budget", "512M",
                "--parallel", "2")
    assert r.returncode == 0, r.stderr
    assert "parallel slots               2: KV cache 2 x 27.0 MiB, logits 2 x 1.0 MiB" in r.stdout
    r = edgellm("plan", str(default_model_path), "--parallel", "0")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "edgellm: the number of parallel slots must be at least 1, got 0"]


def test_info_describes_the_default_model(default_model_path):
    r = edgellm("info", str(default_model_path))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "architecture:  gemma3" in out
    assert "block_count:" in out and "18" in out
    assert "Q8_0" in out and "Q4_K" in out and "Q6_K" in out and "Q5_0" in out
    assert "262144 tokens" in out


def test_info_system_names_the_kernel_variant():
    r = edgellm("info", "--system")
    assert r.returncode == 0, r.stderr
    assert "kernels:" in r.stdout


def test_bench_compares_with_both_llamacpp_configurations(default_model_path):
    """`edgellm bench --compare llama.cpp`: our row, llama.cpp with plain CPU buffers and with
    its defaults (repacked weights; its prompt run may crash on AMX CPUs, then the bench says
    so and times its decode alone), and the ratios against each. Speeds are not asserted."""
    pytest.importorskip("llama_cpp")
    r = edgellm("bench", str(default_model_path), "--compare", "llama.cpp", "-r", "1", "-p", "16", "-n", "8")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("edgellm (") for line in lines)
    assert any("(plain CPU buffers)" in line and "tok/s" not in line for line in lines)
    assert any("(defaults: repacked)" in line and "tok/s" not in line for line in lines)
    ratios = [line for line in lines if line.startswith("ratio edgellm / llama.cpp")]
    assert len(ratios) == 2 and all(" tg " in line and "peak RSS" in line for line in ratios)


def test_bench_compares_two_memory_budgets_by_bytes_read_per_token(default_model_path):
    """`edgellm bench --memory-budget 300M --compare-budget unlimited`: a row per plan and a
    ratio line that sets the decode ratio beside the bytes each plan reads per token (the
    300M plan requantizes the LM head: fewer bytes). Speeds are not asserted."""
    r = edgellm("bench", str(default_model_path), "--memory-budget", "300M", "--compare-budget", "unlimited",
                "-r", "1", "-p", "16", "-n", "8")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("edgellm (") and "budget 300M)" in line for line in lines)
    assert any(line.startswith("edgellm (") and "budget unlimited)" in line for line in lines)
    ratio = [line for line in lines if line.startswith("ratio edgellm budget 300M / budget unlimited: tg ")]
    # 194.7 MiB: the 300M plan since the vocabulary costs less (issue 19) and speculation's
    # logits rows are counted (174.7 before)
    assert len(ratio) == 1 and "fewer bytes per token (194.7 vs 254.7 MiB)" in ratio[0], r.stdout


def test_bench_parallel_compares_batched_streams_with_one_and_their_texts(default_model_path):
    """`edgellm bench --parallel 2`: medians for one stream and two at once, the ratio line,
    and the greedy batched texts equal to the same prompts run alone. Speeds are not asserted."""
    r = edgellm("bench", str(default_model_path), "--parallel", "2", "-r", "1", "-n", "8")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"parallel 2: aggregate decode \d+\.\d\dx one stream \(per stream \d+\.\d\dx\)",
                        next(line for line in lines if line.startswith("parallel 2:")))
    assert any(line.startswith("texts identical 2/2 ") for line in lines), r.stdout
    assert len([line for line in r.stderr.splitlines() if line.startswith("  round ")]) == 1


def test_bench_parallel_needs_two_streams():
    r = edgellm("bench", "--parallel", "1", "-r", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["edgellm: --parallel takes 2 or more streams, got 1"]


def test_bench_with_a_bad_compare_budget_is_one_clear_line():
    r = edgellm("bench", "--compare-budget", "lots", "-r", "1")
    assert r.returncode == 2
    assert "invalid size 'lots'" in r.stderr and "Traceback" not in r.stderr


def test_an_unexpected_error_is_one_line_and_its_traceback_is_behind_v(monkeypatch, capsys):
    """A bug anywhere in a command (here: info raising a TypeError) prints one line naming it
    and how to see more; -v shows the traceback."""
    from edgellm.cli import main as cli

    def broken(args):
        raise TypeError("StreamedBlock.__call__() takes 4 positional arguments but 5 were given")

    monkeypatch.setattr(cli, "cmd_info", broken)
    assert cli.main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["edgellm: unexpected error: TypeError: StreamedBlock.__call__() takes 4 "
                                        "positional arguments but 5 were given (rerun with -v for the traceback)"]
    with pytest.raises(TypeError):
        cli.main(["info", "-v"])
