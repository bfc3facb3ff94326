"""Staging buffers that let the main kernels' loops run on wide, unmasked, aligned loads.

- ``pack_edge_constants``: the per-edge constants as three fp32 planes, either transposed
  (in, out_pad) for the forward, which walks ``in``: [k/s, -k t/s, w m], z = x a + c; or
  as (out, in_pad) for grad_x, which walks ``out``: [1/s, t, w/s], z = (x - t) a, exactly
  0 where x == t (meyer's dpsi jumps at 0). Padding edges get zero weight: they add nothing.
- ``stage_x``: x transposed to fp32 (in, b_pad), padding rows zero.

Each is one pass over O(out in) or O(B in) elements, against B out in evaluations.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import cdiv

_BLOCK = 32


@triton.jit
def _wavkan_pack_kernel(
    s_ptr, t_ptr, w_ptr, pack_ptr,
    IN, OUT, IN_PAD, OUT_PAD, PLANE, stride_pi, stride_po, z_scale, w_scale,
    stride_so, stride_si, stride_to, stride_ti, stride_wo, stride_wi,
    FOR_GRAD_X: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr,
):
    offs_o = tl.program_id(0) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    offs_i = tl.program_id(1) * BLOCK_IN + tl.arange(0, BLOCK_IN)
    valid = (offs_o[:, None] < OUT) & (offs_i[None, :] < IN)
    o = offs_o[:, None].to(tl.int64)
    i = offs_i[None, :].to(tl.int64)
    s = tl.load(s_ptr + o * stride_so + i * stride_si, mask=valid, other=1.0).to(tl.float32)
    t = tl.load(t_ptr + o * stride_to + i * stride_ti, mask=valid, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + o * stride_wo + i * stride_wi, mask=valid, other=0.0).to(tl.float32)
    inv_s = 1.0 / s
    dst = pack_ptr + i * stride_pi + o * stride_po
    inside = (offs_o[:, None] < OUT_PAD) & (offs_i[None, :] < IN_PAD)
    if FOR_GRAD_X:
        tl.store(dst, inv_s, mask=inside)
        tl.store(dst + PLANE, t, mask=inside)
        tl.store(dst + 2 * PLANE, w * inv_s, mask=inside)
    else:
        a = inv_s * z_scale
        tl.store(dst, a, mask=inside)
        tl.store(dst + PLANE, -t * a, mask=inside)
        tl.store(dst + 2 * PLANE, w * w_scale, mask=inside)


@triton.jit
def _wavkan_stage_x_kernel(
    x_ptr, xt_ptr, B, IN, B_PAD, stride_xb, stride_xi,
    BLOCK_B: tl.constexpr, BLOCK_IN: tl.constexpr,
):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_i = tl.program_id(1) * BLOCK_IN + tl.arange(0, BLOCK_IN)
    b = offs_b[:, None].to(tl.int64)
    i = offs_i[None, :].to(tl.int64)
    x = tl.load(x_ptr + b * stride_xb + i * stride_xi, mask=(b < B) & (i < IN), other=0.0)
    tl.store(xt_ptr + i * B_PAD + b, x.to(tl.float32), mask=(b < B_PAD) & (i < IN))


def pack_edge_constants(scale, translation, weights, pad: int, for_grad_x: bool, z_scale=1.0, w_scale=1.0):
    """Edge constants as three fp32 planes.

    for_grad_x=False: (3, in, pad), out padded to ``pad``: [z_scale/s, -z_scale t/s, w w_scale].
    for_grad_x=True: (3, out, pad), in padded to ``pad``: [1/s, t, w/s].
    scale, translation, weights: (out, in), any strides and float dtype.
    """
    OUT, IN = scale.shape
    if not for_grad_x:
        shape, in_pad, out_pad, stride_pi, stride_po = (3, IN, pad), IN, pad, pad, 1
    else:
        shape, in_pad, out_pad, stride_pi, stride_po = (3, OUT, pad), pad, OUT, 1, pad
    pack = torch.empty(shape, dtype=torch.float32, device=scale.device)
    grid = (cdiv(out_pad, _BLOCK), cdiv(in_pad, _BLOCK))
    _wavkan_pack_kernel[grid](
        scale, translation, weights, pack,
        IN, OUT, in_pad, out_pad, shape[1] * shape[2], stride_pi, stride_po, float(z_scale), float(w_scale),
        scale.stride(0), scale.stride(1), translation.stride(0), translation.stride(1),
        weights.stride(0), weights.stride(1),
        FOR_GRAD_X=for_grad_x, BLOCK_OUT=_BLOCK, BLOCK_IN=_BLOCK,
    )
    return pack


def stage_x(x: torch.Tensor, b_pad: int) -> torch.Tensor:
    """(in, b_pad) fp32: x (B, in) transposed, rows past B zero."""
    B, IN = x.shape
    xt = torch.empty((IN, b_pad), dtype=torch.float32, device=x.device)
    grid = (cdiv(b_pad, _BLOCK), cdiv(IN, _BLOCK))
    _wavkan_stage_x_kernel[grid](x, xt, B, IN, b_pad, x.stride(0), x.stride(1), BLOCK_B=_BLOCK, BLOCK_IN=_BLOCK)
    return xt
