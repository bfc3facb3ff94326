"""Fused forward: y[b, o] = sum_i w[o, i] psi(x[b, i] * a[o, i] + c[o, i]), a = 1/s, c = -t/s.

One program owns a (BLOCK_B, BLOCK_OUT) tile of y in fp32 registers and walks its share of
the ``in`` loop: per step it loads one x column (BLOCK_B) and one row of each packed edge
constant (BLOCK_OUT, contiguous), then does one wavelet evaluation per tile element. Nothing
of size B x out x in exists. When the tiles alone cannot fill the GPU (small B), SPLIT
programs share a tile's ``in`` loop and write fp32 partials that are summed in a fixed
order afterwards (deterministic, no atomics).

The edge constants are packed once per call by ``_wavkan_pack_kernel`` into a (3, in, out)
fp32 buffer [k/s, -k t/s, w m], transposed so the kernel's per-step loads are coalesced and
the inner step needs no division; (k, m) = ``device.FOLD[wavelet]`` fold the Gaussian's
log2(e)/2 and the wavelet's constant factor into the edge, so that mexican_hat costs one
MUFU.EX2 and five fp32 instructions per evaluation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import KernelConfig, cdiv, choose_split, default_config
from .device import FOLD, wavelet_psi_folded


@triton.jit
def _wavkan_pack_kernel(
    s_ptr, t_ptr, w_ptr, pack_ptr,
    IN, OUT, PLANE, z_scale, w_scale,
    stride_so, stride_si, stride_to, stride_ti, stride_wo, stride_wi,
    BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr,
):
    offs_o = tl.program_id(0) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    offs_i = tl.program_id(1) * BLOCK_IN + tl.arange(0, BLOCK_IN)
    mask = (offs_o[:, None] < OUT) & (offs_i[None, :] < IN)
    o = offs_o[:, None].to(tl.int64)
    i = offs_i[None, :].to(tl.int64)
    s = tl.load(s_ptr + o * stride_so + i * stride_si, mask=mask, other=1.0).to(tl.float32)
    t = tl.load(t_ptr + o * stride_to + i * stride_ti, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + o * stride_wo + i * stride_wi, mask=mask, other=0.0).to(tl.float32)
    a = z_scale / s
    dst = pack_ptr + i * OUT + o
    tl.store(dst, a, mask=mask)
    tl.store(dst + PLANE, -t * a, mask=mask)
    tl.store(dst + 2 * PLANE, w * w_scale, mask=mask)


@triton.jit
def _wavkan_fwd_kernel(
    x_ptr, pack_ptr, y_ptr,
    B, IN, OUT, PLANE,
    stride_xb, stride_xi, stride_yk, stride_yb,
    IN_PER_SPLIT,
    WAVELET: tl.constexpr, FAST: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_OUT: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_o = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_o = pid_o * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    mask_b = offs_b < B
    mask_o = offs_o < OUT
    i_start = pid_k * IN_PER_SPLIT
    i_end = tl.minimum(i_start + IN_PER_SPLIT, IN)
    # Pointers advance by one input column per step; 64-bit so B*in beyond 2^31 is fine.
    x_ptrs = x_ptr + offs_b.to(tl.int64) * stride_xb + i_start.to(tl.int64) * stride_xi
    a_ptrs = pack_ptr + i_start.to(tl.int64) * OUT + offs_o
    acc = tl.zeros((BLOCK_B, BLOCK_OUT), dtype=tl.float32)
    for _ in range(i_start, i_end):
        x = tl.load(x_ptrs, mask=mask_b, other=0.0).to(tl.float32)
        a = tl.load(a_ptrs, mask=mask_o, other=0.0)
        c = tl.load(a_ptrs + PLANE, mask=mask_o, other=0.0)
        w = tl.load(a_ptrs + 2 * PLANE, mask=mask_o, other=0.0)
        z = x[:, None] * a[None, :] + c[None, :]
        acc += w[None, :] * wavelet_psi_folded(z, WAVELET, FAST)
        x_ptrs += stride_xi
        a_ptrs += OUT

    y_ptrs = y_ptr + pid_k.to(tl.int64) * stride_yk + offs_b[:, None].to(tl.int64) * stride_yb + offs_o[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_b[:, None] & mask_o[None, :])


def pack_edge_constants(scale, translation, weights, wavelet) -> torch.Tensor:
    """(3, in, out) fp32: [k/scale, -k translation/scale, weights m], each transposed,
    with (k, m) = FOLD[wavelet.code]."""
    OUT, IN = scale.shape
    z_scale, w_scale = FOLD[wavelet.code]
    pack = torch.empty((3, IN, OUT), dtype=torch.float32, device=scale.device)
    block = 32
    grid = (cdiv(OUT, block), cdiv(IN, block))
    _wavkan_pack_kernel[grid](
        scale, translation, weights, pack, IN, OUT, IN * OUT, z_scale, w_scale,
        scale.stride(0), scale.stride(1), translation.stride(0), translation.stride(1),
        weights.stride(0), weights.stride(1),
        BLOCK_OUT=block, BLOCK_IN=block,
    )
    return pack


def wavkan_fwd(x, scale, translation, weights, wavelet, config: KernelConfig | None = None) -> torch.Tensor:
    """Fused forward. x: (B, in), any strides and float dtype; scale, translation, weights:
    (out, in). Returns y: (B, out) in x's dtype, accumulated in fp32."""
    B, IN = x.shape
    OUT = scale.shape[0]
    y = torch.empty((B, OUT), dtype=x.dtype, device=x.device)
    if B == 0:
        return y
    cfg = config or default_config("fwd", x.device)
    pack = pack_edge_constants(scale, translation, weights, wavelet)
    tiles = cdiv(B, cfg.block_m) * cdiv(OUT, cfg.block_n)
    split = choose_split(cfg, tiles, IN, x.device)
    in_per_split = cdiv(IN, split)
    split = cdiv(IN, in_per_split)
    out = y if split == 1 else torch.empty((split, B, OUT), dtype=torch.float32, device=x.device)
    grid = (cdiv(B, cfg.block_m), cdiv(OUT, cfg.block_n), split)
    _wavkan_fwd_kernel[grid](
        x, pack, out, B, IN, OUT, IN * OUT,
        x.stride(0), x.stride(1), B * OUT if split > 1 else 0, OUT,
        in_per_split,
        WAVELET=wavelet.code, FAST=x.is_cuda, BLOCK_B=cfg.block_m, BLOCK_OUT=cfg.block_n,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if split > 1:
        torch.sum(out, dim=0, out=y) if x.dtype == torch.float32 else y.copy_(out.sum(dim=0))
    return y
