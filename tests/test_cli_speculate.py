"""Speculation on the command line: `--no-speculate` for run, chat and serve, the run's
verbose line, and `edgellm bench --speculate` (its format; speeds are not asserted)."""

import re

from edgellm.cli.bench import SPECULATION_PROMPTS
from edgellm.cli.main import build_parser
from edgellm.services.config import parse_config
from edgellm.services.serve import with_overrides

from test_cli import edgellm

TABLE = dict((name, prompt) for name, prompt, *_ in SPECULATION_PROMPTS)["sensor table"]  # repeats itself


def test_run_gives_the_same_text_without_speculation_and_only_the_speculating_run_reports_it(default_model_path):
    fast = edgellm("run", "-m", str(default_model_path), "--temp", "0", "-n", "32", "-v", TABLE)
    plain = edgellm("run", "-m", str(default_model_path), "--temp", "0", "-n", "32", "-v", "--no-speculate", TABLE)
    assert fast.returncode == 0 and plain.returncode == 0, fast.stderr + plain.stderr
    assert fast.stdout == plain.stdout and fast.stdout.startswith(
        " value=21.5 unit=C status=ok\nsensor=temp2 value=22.1 unit=C status=ok\n")
    line = re.search(r"\| speculation: accepted (\d+) of (\d+) proposed \|", fast.stderr)
    assert line and 0 < int(line[1]) <= int(line[2]), fast.stderr
    assert "generated: 32 tokens" in plain.stderr and "speculation" not in plain.stderr


def test_no_speculate_reaches_run_and_chat_and_defaults_to_speculating():
    parser = build_parser()
    for command in ("run", "chat"):
        assert parser.parse_args([command]).speculate is True
        assert parser.parse_args([command, "--no-speculate"]).speculate is False


def test_serve_no_speculate_overrides_the_config_key_and_its_absence_keeps_it():
    parser = build_parser()
    cfg = parse_config({"engine": {"speculate": True}, "socket": {"path": "/tmp/edgellm-test.sock"}})
    off = with_overrides(cfg, parser.parse_args(["serve", "--config", "x.toml", "--no-speculate"]))
    assert off.engine.speculate is False and off.engine.queue_size == cfg.engine.queue_size
    kept = with_overrides(parse_config({"engine": {"speculate": False}, "socket": {"path": "/tmp/s.sock"}}),
                          parser.parse_args(["serve", "--config", "x.toml"]))
    assert kept.engine.speculate is False


def test_bench_speculate_ends_with_the_speedup_line_and_identical_outputs(default_model_path):
    r = edgellm("bench", str(default_model_path), "--speculate", "-r", "1", "-n", "16")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"free text: \d+\.\d\dx", lines[-2]), r.stdout
    assert re.fullmatch(r"speculation speedup \d+\.\d\dx on structured replies, outputs identical 4/4", lines[-1])
    assert len([line for line in r.stderr.splitlines() if line.startswith("  round 1/1 ")]) == 8


def test_bench_speculate_measures_edgellm_alone():
    r = edgellm("bench", "--speculate", "--parallel", "2", "-r", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["edgellm: --speculate measures edgellm alone, with one plan: "
                                             "leave out --parallel"]
