"""The scans of tests/test_batch_shapes.py, run as a script in a child process (so that each
kernel variant, EDGELLM_KERNELS, gets its own, and so that two processes can be compared):

    python tests/batch_scan.py shapes OUT.npz IDS_FILE MODEL.gguf...

the last-position logits of every fresh prompt length 1..MAX_LEN evaluated as one batch, then
of every batch after a cached prefix: OUT.npz holds one (n_scans, n_vocab) array per model,
named by its index;

    python tests/batch_scan.py splits OUT.npz SPLITS.json

the default model's last-position logits after evaluating ids[:k], then ids[k:], for each
{"ids": [...], "splits": [k, ...]} of SPLITS.json's list: arrays named "<i>-<k>".
"""

from __future__ import annotations

import json
import sys

import numpy as np

MAX_LEN = 80
PREFIX = 13  # a cached prefix, then batches of 1 .. MAX_LEN - PREFIX


def scan_shapes() -> list[tuple[str, int]]:
    """(kind, batch length) of each scanned evaluation, in scan order."""
    return ([("fresh", n) for n in range(1, MAX_LEN + 1)]
            + [(f"after {PREFIX} cached", n) for n in range(1, MAX_LEN - PREFIX + 1)])


def scan_ends() -> list[int]:
    """The sequence length at the end of each scanned evaluation."""
    return [n if kind == "fresh" else PREFIX + n for kind, n in scan_shapes()]


def scan(evaluate, reset, ids) -> np.ndarray:
    """(len(scan_shapes()), n_vocab): evaluate(tokens) appends tokens to the sequence and
    returns the last position's logits; reset() empties it."""
    out = []
    for kind, n in scan_shapes():
        reset()
        if kind == "fresh":
            out.append(evaluate(ids[:n]))
        else:
            evaluate(ids[:PREFIX])
            out.append(evaluate(ids[PREFIX:PREFIX + n]))
    return np.stack(out)


def split(evaluate, reset, ids, k: int) -> np.ndarray:
    """The last position's logits after ids[:k] is cached and ids[k:] evaluated as one batch."""
    reset()
    evaluate(ids[:k])
    return evaluate(ids[k:])


def main(mode: str, out_path: str, *args: str) -> None:
    from edgellm.runtime.generation import Model, load_model

    results = {}
    if mode == "shapes":
        ids = [int(t) for t in open(args[0]).read().split()]
        for i, path in enumerate(args[1:]):
            model = Model(path, n_ctx=128, threads=2)
            results[str(i)] = scan(lambda tokens: model.eval(tokens).copy(), model.reset, ids)
    else:
        model = load_model(n_ctx=1024, progress=False)
        for i, case in enumerate(json.loads(open(args[0]).read())):
            for k in case["splits"]:
                results[f"{i}-{k}"] = split(lambda t: model.eval(t).copy(), model.reset, case["ids"], k)
    np.savez(out_path, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
