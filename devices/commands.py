"""The device side of the command line: the arguments of `edgellm plan`, the memory
arguments, the plan they ask for, and the `edgellm info --system` text.

cli/main.py owns the parser; it adds add_plan_arguments for `plan` and add_memory_arguments
to the commands that load a model (run, chat, bench), gets their plan from plan_from_args
with the model's open GGUF header (services/serve.py does the same for serve), and prints
describe_system() for `info --system`. Opening the model file is the caller's: devices sit
beside the runtime and do not import it.
"""

from __future__ import annotations

import argparse
import os

from edgellm.devices.detect import DeviceInfo, detect_device
from edgellm.devices.planner import Plan, format_size, parse_size, plan_memory
from edgellm.devices.profiles import PROFILES, DeviceProfile, get_profile
from edgellm.errors import EdgeLLMError

__all__ = ["add_plan_arguments", "add_memory_arguments", "plan_from_args",
           "resolve_device", "describe_system"]


def add_memory_arguments(parser: argparse.ArgumentParser, ctx: bool = True) -> None:
    """--device, --memory-budget, --mlock, --show-plan (and --ctx unless the command has it)."""
    parser.add_argument("--device", metavar="NAME[:RAM]",
                        help="plan for this board instead of the running one, e.g. pi4:2G "
                             f"(devices: {', '.join(PROFILES)})")
    parser.add_argument("--memory-budget", metavar="SIZE",
                        help="peak memory allowed, e.g. 512M, 1.5G or 'unlimited' (default: "
                             "available memory, within any cgroup limit, less a safety margin)")
    if ctx:
        parser.add_argument("--ctx", type=int, metavar="N",
                            help="context length (default: min(4096, the model's); without "
                                 "it the planner may shorten the context to fit)")
    parser.add_argument("--mlock", action="store_true",
                        help="lock resident weights in RAM (needs a memlock limit that big)")
    parser.add_argument("--show-plan", action="store_true", help="print the memory plan")


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `edgellm plan MODEL [--device NAME] [--memory-budget SIZE] [--ctx N]
    [--parallel N] [--serve]`."""
    parser.add_argument("model", nargs="?", help="GGUF model file (default: the default model)")
    add_memory_arguments(parser)
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads (default: the device's big cores)")
    parser.add_argument("--parallel", type=int, metavar="N",
                        help="sequences decoded together, each with its own KV cache (default: "
                             "as many as fit, up to 4; fewer when N does not fit)")
    parser.add_argument("--serve", action="store_true",
                        help="plan for `edgellm serve` (its process also holds the services "
                             "and the HTTP server)")


def resolve_device(spec: str | None) -> tuple[DeviceInfo | DeviceProfile, int | None]:
    """The running device (detected) for None, else a profile and its RAM: "pi4", "pi4:2G"."""
    if not spec:
        return detect_device(), None
    name, _, ram = spec.partition(":")
    profile = get_profile(name)
    if not ram:
        return profile, None
    size = parse_size(ram)
    if size not in profile.ram_options:
        options = ", ".join(format_size(r) for r in profile.ram_options)
        raise EdgeLLMError(f"{profile.title} comes with {options}, not {format_size(size)}")
    return profile, size


def plan_from_args(args: argparse.Namespace, gguf) -> Plan:
    """The plan for a command's --device / --memory-budget / --ctx / --threads / --mlock /
    --parallel.

    gguf: the model's open GGUFFile (best: the one the model loads from, so the header is
    parsed once).
    args.parallel: None lets the plan choose the slot count; commands without the attribute
    (run, chat, bench) decode one sequence and get 1.
    args.serve: plan the process of `edgellm serve` (absent: a command's own process).
    """
    device, ram = resolve_device(getattr(args, "device", None))
    budget = getattr(args, "memory_budget", None)
    return plan_memory(gguf, device, parse_size(budget) if budget else None,
                       getattr(args, "ctx", None), ram_bytes=ram,
                       threads=getattr(args, "threads", None),
                       mlock=bool(getattr(args, "mlock", False)),
                       parallel=getattr(args, "parallel", 1),
                       serve=bool(getattr(args, "serve", False)))


def describe_system(root: str | os.PathLike = "/") -> str:
    """The `edgellm info --system` text: device, features, memory, cgroup, thermal."""
    d = detect_device(root)
    p = d.profile
    cores = ", ".join(f"{c.count}x {c.name} ({c.kind}"
                      + (f", {c.max_mhz} MHz)" if c.max_mhz else ")") for c in d.clusters)
    rows = [
        ("device", f"{d.model} -> profile {p.name} ({p.title})"),
        ("cpu", f"{d.arch}: {cores}; {d.usable_cpus} usable, {d.threads} threads"),
        ("features", (", ".join(sorted(d.features)) or "none detected")
         + f" (from {d.features_source})"),
        ("memory", f"total {format_size(d.mem_total)}, available {format_size(d.mem_available)}"),
    ]
    cg = d.cgroup
    if cg.version is None:
        rows.append(("cgroup", cg.reason))
    else:
        limit = format_size(cg.limit) if cg.limit is not None else "none"
        used = f", usage {format_size(cg.usage)}" if cg.usage is not None else ""
        where = f" (set by {cg.limit_path})" if cg.limit_path else ""
        rows.append(("cgroup", f"v{cg.version} {cg.path}: limit {limit}{where}{used}"))
    rows.append(("effective", f"limit {format_size(d.effective_limit)}, available "
                              f"{format_size(d.effective_available)}, default budget "
                              f"{format_size(d.default_budget())}"))
    swap = f"{format_size(d.swap_total)} ({format_size(d.swap_free)} free)" if d.swap_total \
        else "none"
    for z in d.zram:
        swap += f"; {z.name} {z.algorithm} {format_size(z.disksize)}"
    rows.append(("swap", swap))
    temps = "; ".join(f"{z.name} {z.temp_c:.1f} C"
                      + (f" (throttles at {z.passive_c:g} C)" if z.passive_c else "")
                      for z in d.thermal) or "no thermal zones"
    rows.append(("thermal", temps))
    if d.throttled is not None:
        flags = ", ".join(d.throttled_flags) or "none"
        rows.append(("firmware", f"get_throttled {d.throttled:#x}: {flags}"))
    rows.append(("profile", f"~{p.mem_bandwidth_gbs:g} GB/s memory, {p.storage_class} "
                            f"~{p.storage_mbs:g} MB/s, throttles at {p.throttle_c:g} C, "
                            f"~{p.sustained_fraction:.0%} clock sustained"))
    why = [r for r in d.reasons if r != cg.reason]  # the cgroup line already says it
    rows += [("why" if i == 0 else "", r) for i, r in enumerate(why)]
    return "\n".join(f"{k:<10} {v}" for k, v in rows)
