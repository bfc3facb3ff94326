"""The sum of a split reduction's fp32 partials, in a fixed order, inside the splitting kernel
(``split_arrive``: the last program of a tile to finish sums them; ``store_tile``: a tile's
store, split or not).

Every program of a split tile writes its fp32 partial, then counts itself in on the tile's
arrival counter (one atomic, acquire-release at GPU scope, after a barrier so the whole
program's stores come first: the serial split-K pattern of GEMM libraries). The program that
arrives last reads the tile's partials back in the order 0, 1, ..., SPLIT - 1, whatever order
the programs finished in, so the result is bitwise-reproducible without a second launch, and
resets the counter to 0 for the next launch on the stream. The forward and grad_x store
through ``store_tile``; the parameter pass stores its three partial planes itself and sums them
with ``split_arrive`` and ``split_sum`` before its epilogue.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def split_arrive(counter_ptr, tile_id, SPLIT):
    """True in the program that finishes its split tile last (``counter_ptr[tile_id]`` counts
    arrivals); its loads of the other programs' partials must bypass L1 (``.cg``)."""
    tl.debug_barrier()  # every thread's partial stores before the release
    arrived = tl.atomic_add(counter_ptr + tile_id, 1, sem="acq_rel", scope="gpu")
    return arrived == SPLIT - 1


@triton.jit
def split_sum(acc, part_ptr, part_offs, stride_part, mask, SPLIT):
    """The tile's partials summed in split order (0, 1, ...); ``acc``: a zero tile of their shape."""
    for k in range(0, SPLIT):
        acc += tl.load(part_ptr + k * stride_part + part_offs, mask=mask, other=0.0, cache_modifier=".cg")
    return acc


@triton.jit
def store_tile(acc, dst_ptrs, mask, part_ptr, part_offs, STRIDE_PART, counter_ptr, SPLIT,
               SPLIT_SUM: tl.constexpr):
    """Store a program's (M, N) fp32 tile ``acc`` at ``dst_ptrs`` (in their dtype). Split
    (SPLIT_SUM, a constexpr so that unsplit binaries carry none of this): store it as partial
    program_id(2) of SPLIT, ``STRIDE_PART`` elements apart at ``part_offs``, and let the
    tile's last program sum them in order into ``dst_ptrs``."""
    if not SPLIT_SUM:
        tl.store(dst_ptrs, acc.to(dst_ptrs.dtype.element_ty), mask=mask)
    else:
        stride_part = tl.cast(STRIDE_PART, tl.int64)
        tl.store(part_ptr + tl.program_id(2).to(tl.int64) * stride_part + part_offs, acc, mask=mask)
        tile = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        if split_arrive(counter_ptr, tile, SPLIT):
            total = split_sum(tl.zeros(acc.shape, dtype=tl.float32), part_ptr, part_offs, stride_part, mask, SPLIT)
            tl.store(dst_ptrs, total.to(dst_ptrs.dtype.element_ty), mask=mask)
            tl.store(counter_ptr + tile, 0)
