"""The batch-shape scan of tests/test_batch_shapes.py: the last-position logits of every
fresh prompt length 1..MAX_LEN evaluated as one batch, then of every batch after a cached
prefix. Run as a script in a child process so that each kernel variant (EDGELLM_KERNELS)
gets its own:

    python tests/batch_scan.py OUT.npz IDS_FILE MODEL.gguf...

writes OUT.npz with one (n_scans, n_vocab) array per model, named by its index.
"""

from __future__ import annotations

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


def main(out_path: str, ids_path: str, *models: str) -> None:
    from edgellm.runtime.generation import Model

    ids = [int(t) for t in open(ids_path).read().split()]
    results = {}
    for i, path in enumerate(models):
        model = Model(path, n_ctx=128, threads=2)
        results[str(i)] = scan(lambda tokens: model.eval(tokens).copy(), model.reset, ids)
    np.savez(out_path, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
