"""Prints the edgellm.service drop-in that sets MemoryHigh= and MemoryMax= from the memory plan.

    python deploy/memory_limits.py --config /etc/edgellm/config.toml [--device pi4:2G]
        > /etc/systemd/system/edgellm.service.d/memory.conf

install.sh runs it with the venv's Python after installing the package. The plan is the one
`edgellm serve` makes for the same config on the same board (devices.commands.plan_from_args
with the config's model, n_ctx, threads and [engine] parallel), so the limits follow what the
service will use.

How the plan's peak RSS becomes cgroup limits. The cgroup is charged for anonymous memory
(KV cache, requantized tensors, buffers, Python) and for the page cache of the mmap'd model,
which is clean and can be dropped and re-read at any time:
  MemoryHigh = total + 15%   the planner's accuracy bar is +-15% of measured peak RSS; above
                             this the kernel reclaims the service's own cache pages (weights
                             are re-read from storage) and throttles it instead of letting it
                             push the rest of the board into swap;
  MemoryMax  = total + 50%   the hard wall: only a leak or a plan badly off gets here, the
                             OOM killer ends the service and Restart=on-failure brings it back.
"""

from __future__ import annotations

import argparse
import math
import sys

MIB = 1 << 20
HIGH_MARGIN = 0.15
MAX_MARGIN = 0.50


def memory_limits(plan_total: int) -> tuple[int, int]:
    """(MemoryHigh, MemoryMax) in bytes for a plan's peak RSS, rounded up to whole MiB."""
    high = math.ceil(plan_total * (1 + HIGH_MARGIN) / MIB) * MIB
    hard = math.ceil(plan_total * (1 + MAX_MARGIN) / MIB) * MIB
    return high, hard


def dropin_text(plan) -> str:
    high, hard = memory_limits(plan.total)
    mib = lambda n: f"{n // MIB}M"  # noqa: E731 - systemd takes K/M/G suffixes
    return (
        "# Written by deploy/install.sh (deploy/memory_limits.py); rerun it after changing the\n"
        "# model, n_ctx or parallel. From the memory plan:\n"
        f"#   {plan.model} on {plan.device_title}: ctx {plan.n_ctx}, KV {plan.kv_type}, "
        f"{plan.parallel} parallel slots, "
        f"{plan.offload}, peak RSS {plan.total / MIB:.1f} MiB\n"
        f"# MemoryHigh = peak + {HIGH_MARGIN:.0%}, MemoryMax = peak + {MAX_MARGIN:.0%}.\n"
        "[Service]\n"
        f"MemoryHigh={mib(high)}\n"
        f"MemoryMax={mib(hard)}\n"
    )


def plan_for_config(config_path: str, device: str | None = None,
                    memory_budget: str | None = None):
    """The plan `edgellm serve --config config_path` makes on this board (or on `device`)."""
    from edgellm.runtime.gguf_file import GGUFFile
    from edgellm.runtime.model_store import resolve_model
    from edgellm.services.config import load_config
    from edgellm.services.serve import plan_for

    cfg = load_config(config_path)
    path = resolve_model(cfg.model.path)  # a file, or an Ollama model name as serve takes it
    if path is None:
        from edgellm.runtime.default_model import default_model_path
        path = default_model_path(progress=False)
    with GGUFFile(path) as gguf:
        return plan_for(cfg, gguf, device, memory_budget)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the service's config.toml")
    parser.add_argument("--device", help="plan for this board (NAME[:RAM]) instead of this one")
    parser.add_argument("--memory-budget", help="peak memory allowed, e.g. 512M")
    args = parser.parse_args(argv)
    from edgellm.errors import EdgeLLMError
    try:
        plan = plan_for_config(args.config, args.device, args.memory_budget)
    except EdgeLLMError as exc:
        print(f"memory_limits: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(dropin_text(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
