"""The sum of a split reduction's fp32 partials, in a fixed order: inside the splitting kernel
(``split_arrive``: the last program of a tile to finish sums them), or as a kernel of its own
(``sum_partials``, for ``launch.launch_split``).

In-kernel: every program of a split tile writes its fp32 partial, then counts itself in on
the tile's arrival counter (one atomic, acquire-release at GPU scope, after a barrier so the
whole program's stores come first: the serial split-K pattern of GEMM libraries). The
program that arrives last reads the tile's partials back in the order 0, 1, ..., SPLIT - 1,
whatever order the programs finished in, so the result is bitwise-reproducible without a
second launch, and resets the counter to 0 for the next launch on the stream.

A launcher that splits a tile's loop over SPLIT programs gets SPLIT fp32 partials of its
output; ``sum_partials`` adds them into the output, rounded once to its dtype (the forward's
and grad_x's through ``launch.launch_split``; the parameter pass's (split, 3, out, in) partials
into its three fp32 sums, before its epilogue). One kernel instead of ``torch.sum(dim=0)``:
it reads the partials once with several loads in flight, where torch's reduction was slower on
the forward's and grad_x's splits (benchmarks/HISTORY.md).

Each program owns BLOCK contiguous outputs and adds the partials in chunks of CHUNK splits,
each chunk a (CHUNK, BLOCK) load summed by ``tl.sum`` (CHUNK independent loads in flight per
thread, instead of one per step of a serial loop); the chunks in order 0, 1, ... CHUNK grows
with the split (up to 32) and BLOCK shrinks with it (at most 1024), a program holding at most 4096
elements: a 64-split sum of a small output (the 1024 -> 128 layer's partials) then runs many
programs of two chunks instead of a few programs walking many chunks in series, which had made
that sum the slow one.
The order depends only on SPLIT, so a result is bitwise-reproducible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_TILE, _MAX_CHUNK, _MAX_BLOCK, _WARPS = 4096, 32, 1024, 4


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
        stride_part = STRIDE_PART.to(tl.int64)
        tl.store(part_ptr + tl.program_id(2).to(tl.int64) * stride_part + part_offs, acc, mask=mask)
        tile = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        if split_arrive(counter_ptr, tile, SPLIT):
            total = split_sum(tl.zeros(acc.shape, dtype=tl.float32), part_ptr, part_offs, stride_part, mask, SPLIT)
            tl.store(dst_ptrs, total.to(dst_ptrs.dtype.element_ty), mask=mask)
            tl.store(counter_ptr + tile, 0)


@triton.jit(do_not_specialize=["SPLIT"])
def _sum_partials_kernel(part_ptr, dst_ptr, N, SPLIT, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, SPLIT, CHUNK):
        ks = k0 + tl.arange(0, CHUNK)
        ptrs = part_ptr + ks[:, None].to(tl.int64) * N + offs[None, :]  # split k's partial starts at k N
        acc += tl.sum(tl.load(ptrs, mask=(ks[:, None] < SPLIT) & in_range[None, :], other=0.0), axis=0)
    tl.store(dst_ptr + offs, acc.to(dst_ptr.dtype.element_ty), mask=in_range)


def sum_partials(partials: torch.Tensor, dst: torch.Tensor) -> None:
    """dst = partials.sum(0) for contiguous fp32 ``partials`` (split, *dst.shape) and a
    contiguous ``dst`` of any float dtype, written in place."""
    if partials.dtype != torch.float32 or not partials.is_contiguous() or partials.shape[1:] != dst.shape:
        raise ValueError(f"partials must be contiguous fp32 of shape (split, *{tuple(dst.shape)}), "
                         f"got {partials.dtype} {tuple(partials.shape)}")  # fmt: skip
    if not dst.is_contiguous():
        raise ValueError("dst must be contiguous")
    if partials.shape[0] < 1:
        raise ValueError("need at least one partial, got a split of 0")
    n = dst.numel()
    if n == 0:
        return
    split = partials.shape[0]
    chunk = min(triton.next_power_of_2(split), _MAX_CHUNK)
    block = min(_TILE // chunk, _MAX_BLOCK)
    _sum_partials_kernel[(triton.cdiv(n, block),)](partials, dst, n, split, BLOCK=block, CHUNK=chunk, num_warps=_WARPS)
