"""Weights larger than memory: stream each block's tensors from storage through the mmap,
reading the next block ahead and dropping each block's pages after use, so resident file
pages stay near two blocks instead of the whole model. And the opposite: lock them in."""

import ctypes
import mmap

from edgellm.errors import EdgeLLMError


class StreamedBlock:
    """Wraps a transformer block: prefetch the next block, run, drop this block's pages."""

    def __init__(self, block, gguf, ranges, next_ranges):
        self.block, self.gguf = block, gguf
        self.ranges, self.next_ranges = ranges, next_ranges

    def __call__(self, *args):  # whatever the block takes (state, cache, rows, rows kept)
        for offset, size in self.next_ranges:
            self.gguf.advise_pages(offset, size, mmap.MADV_WILLNEED)
        self.block(*args)
        for offset, size in self.ranges:
            self.gguf.drop_pages(offset, size)


def block_ranges(gguf, il: int) -> list[tuple[int, int]]:
    prefix = f"blk.{il}."
    return [(t.offset, t.n_bytes) for name, t in gguf.tensors.items() if name.startswith(prefix)]


def stream_weights(net, gguf) -> None:
    ranges = [block_ranges(gguf, il) for il in range(len(net.layers))]
    net.layers = [StreamedBlock(block, gguf, ranges[il], ranges[(il + 1) % len(ranges)])
                  for il, block in enumerate(net.layers)]


def lock_weights(gguf) -> None:
    """mlock the mapped file so weights are never paged out (needs RLIMIT_MEMLOCK or
    CAP_IPC_LOCK; systemd's LimitMEMLOCK= grants it)."""
    if not gguf.tensors:
        return
    t = next(iter(gguf.tensors.values()))
    start = t.data.ctypes.data - t.offset  # the mapping's first byte
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlock(ctypes.c_void_p(start), ctypes.c_size_t(gguf.file_size)) != 0:
        err = ctypes.get_errno()
        raise EdgeLLMError(f"cannot lock the model in memory (mlock: errno {err}); raise "
                           "RLIMIT_MEMLOCK (ulimit -l, or LimitMEMLOCK= in the unit) or drop --mlock")
