"""Fused forward: y[b, o] = sum_i w[o, i] psi((x[b, i] - t[o, i]) * a[o, i]), a = 1/s (in the
kernel a carries the wavelet's k as well: see the staging below).

One program owns a (BLOCK_B, BLOCK_OUT) tile of y in fp32 registers and walks its share of
the ``in`` loop: per step it loads one column of x (BLOCK_B) and one row of each packed edge
constant (BLOCK_OUT), then does one wavelet evaluation per tile element. Nothing of size
B x out x in exists. SPLIT programs may share a tile's ``in`` loop (``config.balanced_split``:
to fill the SMs at small B, to balance them over several waves at large B, at most 4 splits
there) and write fp32 partials that are summed in a fixed order afterwards (deterministic, no
atomics).

Both operands are staged once per call so that the loop body is only wide, unmasked,
aligned loads and arithmetic:

- x goes to an fp32 (in, B_PAD) buffer, transposed and zero-padded to whole tiles (any input
  dtype and strides are handled here, once, instead of per step);
- the edge constants go to a (3, in, OUT_PAD) fp32 buffer [k/s, t, w m] (zero weight in
  the padding), so the inner step needs no division; (k, m) = ``Wavelet.fold`` fold the
  Gaussian's log2(e)/2 and the wavelet's constant factor into the edge.

z is computed as (x - t) * (k/s), one FADD and one FMUL, not as x (k/s) - t (k/s) in one FFMA:
where |t/s| is large the two products are large and nearly cancel, and fp32 loses all of z
(|t/s| = 1e5 gave 2% error in y, 1e7 the wrong sign). x - t is exact where x and t are close
(Sterbenz), so z keeps fp32's relative accuracy for every |t/s|.

Both buffers are O(B in + out in), and a split's partials at most 4 x y's size in fp32 at
large B (more only where y is small: fewer tiles than SMs); all are freed on return.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import cdiv, launch_split
from .tuning import KernelConfig, default_config, loop_unroll
from .device import wavelet_psi_folded
from .staging import pack_edge_constants, plane_offsets, stage_transposed


@triton.jit
def _fwd_operands(xt_ptr, pack_ptr, i, B_PAD, OUT_PAD, PLANE, PLANE2, offs_b, offs_o):
    """Step i's operands: x[:, i] (BLOCK_B) and row i of the three edge planes [k/s, t, w m]
    (BLOCK_OUT)."""
    row = tl.cast(i, tl.int64)
    edge = pack_ptr + row * OUT_PAD + offs_o
    return tl.load(xt_ptr + row * B_PAD + offs_b), tl.load(edge), tl.load(edge + PLANE), tl.load(edge + PLANE2)


# The split's ints are not specialised on, so that one binary serves every split (and, for
# configs with the "fill" rule, the compile ahead of the first launch in
# config.resident_programs is the launch's binary).
@triton.jit(do_not_specialize=["stride_yk", "IN_PER_SPLIT"])
def _wavkan_fwd_kernel(
    xt_ptr, pack_ptr, y_ptr,
    B, IN, OUT, B_PAD, OUT_PAD, PLANE, PLANE2,
    stride_yk, stride_yb,
    IN_PER_SPLIT,
    WAVELET: tl.constexpr, FAST: tl.constexpr, PREFETCH: tl.constexpr, UNROLL: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_OUT: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_o = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_o = pid_o * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    i_start = pid_k * IN_PER_SPLIT
    i_end = tl.minimum(i_start + IN_PER_SPLIT, IN)
    acc = tl.zeros((BLOCK_B, BLOCK_OUT), dtype=tl.float32)
    # Row offsets in 64 bits (in * B_PAD can pass 2^31); both pads are whole tiles, so the
    # loads need no mask and stay 16-byte aligned.
    x_next, a_next, t_next, w_next = _fwd_operands(xt_ptr, pack_ptr, i_start, B_PAD, OUT_PAD, PLANE, PLANE2, offs_b, offs_o)
    for i in tl.range(i_start, i_end, loop_unroll_factor=UNROLL):
        if PREFETCH:
            # Issue the next step's loads before this step's arithmetic, so their latency
            # hides behind it (Triton does not pipeline loads that feed no dot).
            x, a, t, w = x_next, a_next, t_next, w_next
            x_next, a_next, t_next, w_next = _fwd_operands(
                xt_ptr, pack_ptr, tl.minimum(i + 1, i_end - 1), B_PAD, OUT_PAD, PLANE, PLANE2, offs_b, offs_o)
        else:
            x, a, t, w = _fwd_operands(xt_ptr, pack_ptr, i, B_PAD, OUT_PAD, PLANE, PLANE2, offs_b, offs_o)
        zs = (x[:, None] - t[None, :]) * a[None, :]  # k z, exact for any |t/s| (module docstring)
        acc += w[None, :] * wavelet_psi_folded(zs, WAVELET, FAST)

    mask_b = offs_b < B
    mask_o = offs_o < OUT
    y_ptrs = y_ptr + pid_k.to(tl.int64) * stride_yk + offs_b[:, None].to(tl.int64) * stride_yb + offs_o[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_b[:, None] & mask_o[None, :])


def wavkan_fwd(x, scale, translation, weights, wavelet, config: KernelConfig | None = None) -> torch.Tensor:
    """Fused forward. x: (B, in), any strides and float dtype; scale, translation, weights:
    (out, in). Returns y: (B, out) in x's dtype, accumulated in fp32."""
    B, IN = x.shape
    OUT = scale.shape[0]
    y = torch.empty((B, OUT), dtype=x.dtype, device=x.device)
    if B == 0:
        return y
    cfg = config or default_config("fwd", x.device, B)
    b_pad = cdiv(B, cfg.block_m) * cfg.block_m
    out_pad = cdiv(OUT, cfg.block_n) * cfg.block_n
    xt = stage_transposed(x, b_pad)
    z_scale, w_scale = wavelet.fold
    pack = pack_edge_constants(scale, translation, weights, out_pad, for_grad_x=False, z_scale=z_scale, w_scale=w_scale)
    meta = dict(
        WAVELET=wavelet.code, FAST=x.is_cuda, PREFETCH=cfg.prefetch, UNROLL=loop_unroll(cfg, wavelet),
        BLOCK_B=cfg.block_m, BLOCK_OUT=cfg.block_n, **cfg.launch_options(),
    )

    def args(out, stride_yk, in_per_split):
        return (xt, pack, out, B, IN, OUT, b_pad, out_pad, *plane_offsets(pack), stride_yk, OUT, in_per_split)

    tiles = (b_pad // cfg.block_m, out_pad // cfg.block_n)
    return launch_split(_wavkan_fwd_kernel, tiles, IN, args, meta, y, cfg)
