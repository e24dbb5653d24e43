"""arm64 smoke check, run inside the rootfs under qemu: the cffi module built by gcc there
loads, numpy works, and the emulated CPU reports the features its core has.

    QEMU_CPU=cortex-a76 python check_smoke.py BUILD_DIR --expect asimddp=1 --expect asimd=1

Prints one JSON line (machine, features) and exits 1 if an expectation fails.
"""

import argparse
import json
import platform
import sys

FEATURES = ("fp", "asimd", "fphp", "asimdhp", "asimddp", "sve", "i8mm")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("build_dir")
    parser.add_argument("--expect", action="append", default=[], metavar="FEATURE=0|1")
    args = parser.parse_args()
    sys.path.insert(0, args.build_dir)
    import numpy as np
    from _hwcaps import lib

    # numpy's own arm64 build must compute, not just import: a dot with an exact answer.
    a = np.arange(1, 65, dtype=np.float32)
    assert float(a @ a) == 89440.0, float(a @ a)   # sum of k^2 for k = 1..64

    found = {name: lib.hw_has(name.encode()) for name in FEATURES}
    print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                      "numpy": np.__version__, "hwcap": hex(lib.hw_hwcap()),
                      "features": found}))
    if platform.machine() != "aarch64":
        print(f"expected aarch64, running on {platform.machine()}", file=sys.stderr)
        return 1
    failed = []
    for item in args.expect:
        name, _, want = item.partition("=")
        if found.get(name) != int(want):
            failed.append(f"{name}: expected {want}, found {found.get(name)}")
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
