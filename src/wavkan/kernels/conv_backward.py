"""Fused convolutional backward: grad_x and the three parameter gradients, deterministic.

With g = dL/dy, z = (x - t)/s at input pixel q of channel i of o's group, and
G[b,o,i,q] = sum_k w[o,i,k] g[b,o,p(q,k)] over the taps k for which q = p*stride + k*dilation - pad
has an output pixel p (the transposed convolution of g):

    grad_x[b, g(o) IG + i, q] = sum_{o in group} dpsi(z) G / s[o,i]
    grad_w[o,i,k]             = sum_{b,q} psi(z) g[b,o,p(q,k)]
    grad_t[o,i]               = -sum_{b,q} dpsi(z) G / s[o,i]
    grad_s[o,i]               = -sum_{b,q} dpsi(z) z G / s[o,i]

Both passes tile the INPUT plane (``conv_tiles.plan_backward_tiles``): input tiles partition
the image, so psi and dpsi are evaluated exactly once per (o, i, input pixel) in each pass (one
exp), and the taps combine grad_y at shifted positions: a program loads the halo of grad_y that
reads its tile once per output channel and realises each tap as a ``tl.gather`` of it (valid
where the tap's stride divides the offset), one FMA per tap for G, one more for grad_w.

- ``_wavkan_conv_bwd_dx_kernel``: one program per (batch row, input tile, BLOCK_C input
  channels); loops over the output channels of the group and writes its grad_x block once.
- ``_wavkan_conv_bwd_dparams_kernel``: one program per (split, BLOCK_C input channels, output
  channel of the group), each (o, i) pair owned by one program per split; it walks its split's
  share of the (batch row, input tile) items and writes per-split fp32 partial sums, which are
  summed over the splits in a fixed order afterwards (no atomics).

Cost per (o, i, input pixel): one MUFU.EX2 and the wavelet's psi/dpsi instructions; per tap: one
gathered grad_y element and one FMA (grad_x) or two FMAs and a share of one row reduction
(parameters). Extra memory: the per-split partials, splits x out x in/groups x (taps + 2) fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv_tiles import backward_constants, next_pow2, plan_backward_tiles
from .device import FOLD_BWD, wavelet_psi_dpsi_folded
from .launch import sm_count

BLOCK_C_MAX = 8
NUM_WARPS = 4
# Parameter-pass programs per SM to aim for when choosing the split.
_PROGRAMS_PER_SM = 4


@triton.jit
def _tap_index(qh, qw, q_ok, ph0, pw0, PAD_T, PAD_L, kh: tl.constexpr, kw: tl.constexpr,
               SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, HALO_W: tl.constexpr):  # fmt: skip
    """For input pixels (qh, qw): whether tap (kh, kw) maps them to an output pixel, and that
    pixel's index in the grad_y halo whose origin is (ph0, pw0)."""
    rr = qh + PAD_T - kh * DH - ph0 * SH  # >= 0 by the choice of ph0
    rc = qw + PAD_L - kw * DW - pw0 * SW
    valid = q_ok & (rr % SH == 0) & (rc % SW == 0)
    return valid, tl.where(valid, (rr // SH) * HALO_W + rc // SW, 0)


@triton.jit
def _grad_halo(g_ptr, b, o, mask_c, qh0, qw0, HO, WO, PAD_T, PAD_L, stride_gb, stride_go, stride_gh, stride_gw,
               SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr,
               KW: tl.constexpr, SHIFT_H: tl.constexpr, SHIFT_W: tl.constexpr, HALO_H: tl.constexpr,
               HALO_W: tl.constexpr, HALO_BLOCK: tl.constexpr):  # fmt: skip
    """grad_y of output channels o (BLOCK_C,) on the halo that reads the input tile at (qh0, qw0):
    (BLOCK_C, HALO_BLOCK) fp32, zero outside the output; and the halo's origin (ph0, pw0)."""
    # floor((q0 + pad - (K-1) D) / S), the numerator made non-negative by a multiple of S.
    ph0 = (qh0 + PAD_T - (KH - 1) * DH + SHIFT_H) // SH - SHIFT_H // SH
    pw0 = (qw0 + PAD_L - (KW - 1) * DW + SHIFT_W) // SW - SHIFT_W // SW
    hh = tl.arange(0, HALO_BLOCK)
    gr = ph0 + hh // HALO_W
    gc = pw0 + hh % HALO_W
    ok = (hh < HALO_H * HALO_W) & (gr >= 0) & (gr < HO) & (gc >= 0) & (gc < WO)
    pix = tl.where(ok, gr, 0).to(tl.int64) * stride_gh + tl.where(ok, gc, 0).to(tl.int64) * stride_gw
    ptrs = g_ptr + b.to(tl.int64) * stride_gb + o.to(tl.int64)[:, None] * stride_go + pix[None, :]
    g = tl.load(ptrs, mask=mask_c[:, None] & ok[None, :], other=0.0).to(tl.float32)
    return g, ph0, pw0


@triton.jit
def _input_tile(x_ptr, b, offs_c, mask_c, tile, TILES_W, H, W, stride_xb, stride_xc, stride_xh, stride_xw,
                TILE_H: tl.constexpr, TILE_W: tl.constexpr, TILE_BLOCK: tl.constexpr):  # fmt: skip
    """x on one input tile: (BLOCK_C, TILE_BLOCK) fp32, the tile's pixel rows and cols, the mask
    of its pixels inside the image, and its origin."""
    qh0 = (tile // TILES_W) * TILE_H
    qw0 = (tile % TILES_W) * TILE_W
    j = tl.arange(0, TILE_BLOCK)
    qh = qh0 + j // TILE_W
    qw = qw0 + j % TILE_W
    q_ok = (j < TILE_H * TILE_W) & (qh < H) & (qw < W)
    pix = tl.where(q_ok, qh, 0).to(tl.int64) * stride_xh + tl.where(q_ok, qw, 0).to(tl.int64) * stride_xw
    ptrs = x_ptr + b.to(tl.int64) * stride_xb + offs_c.to(tl.int64)[:, None] * stride_xc + pix[None, :]
    x = tl.load(ptrs, mask=mask_c[:, None] & q_ok[None, :], other=0.0).to(tl.float32)
    return x, qh, qw, q_ok, qh0, qw0


@triton.jit
def _wavkan_conv_bwd_dx_kernel(
    x_ptr, g_ptr, planes_ptr, wx_ptr, gx_ptr,
    C, H, W, IG, OG, HO, WO, TILES_W, TILES_PER_IMAGE, PLANE,
    stride_xb, stride_xc, stride_xh, stride_xw, stride_gb, stride_go, stride_gh, stride_gw,
    PAD_T, PAD_L,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
    TILE_BLOCK: tl.constexpr, HALO_BLOCK: tl.constexpr, SHIFT_H: tl.constexpr, SHIFT_W: tl.constexpr,
    BLOCK_C: tl.constexpr, WAVELET: tl.constexpr, FAST: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    b = pid // TILES_PER_IMAGE
    tile = pid % TILES_PER_IMAGE
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_c = tl.where(mask_c, offs_c, 0)
    i_c = offs_c % IG
    o_first = (offs_c // IG) * OG
    x, qh, qw, q_ok, qh0, qw0 = _input_tile(x_ptr, b, offs_c, mask_c, tile, TILES_W, H, W, stride_xb, stride_xc,
                                            stride_xh, stride_xw, TILE_H, TILE_W, TILE_BLOCK)  # fmt: skip
    KK: tl.constexpr = KH * KW
    acc = tl.zeros((BLOCK_C, TILE_BLOCK), dtype=tl.float32)
    for oo in range(OG):
        o = o_first + oo
        edge = o * IG + i_c
        a = tl.load(planes_ptr + edge)[:, None]
        t = tl.load(planes_ptr + PLANE + edge)[:, None]
        _, dpsi = wavelet_psi_dpsi_folded((x - t) * a, WAVELET, FAST)
        g, ph0, pw0 = _grad_halo(g_ptr, b, o, mask_c, qh0, qw0, HO, WO, PAD_T, PAD_L, stride_gb, stride_go,
                                 stride_gh, stride_gw, SH, SW, DH, DW, KH, KW, SHIFT_H, SHIFT_W, HALO_H, HALO_W,
                                 HALO_BLOCK)  # fmt: skip
        big_g = tl.zeros((BLOCK_C, TILE_BLOCK), dtype=tl.float32)
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                valid, idx = _tap_index(qh, qw, q_ok, ph0, pw0, PAD_T, PAD_L, kh, kw, SH, SW, DH, DW, HALO_W)
                tap = tl.gather(g, tl.broadcast_to(idx[None, :], (BLOCK_C, TILE_BLOCK)), 1)
                w = tl.load(wx_ptr + edge * KK + (kh * KW + kw))
                big_g += w[:, None] * tl.where(valid[None, :], tap, 0.0)
        acc += dpsi * big_g
    pix = (qh * W + qw)[None, :]
    gx_ptrs = gx_ptr + (b.to(tl.int64) * C + offs_c[:, None]) * (H * W) + pix
    tl.store(gx_ptrs, acc.to(gx_ptr.dtype.element_ty), mask=mask_c[:, None] & q_ok[None, :])


@triton.jit
def _wavkan_conv_bwd_dparams_kernel(
    x_ptr, g_ptr, planes_ptr, w_ptr, part_ptr,
    C, H, W, IG, OG, HO, WO, TILES_W, TILES_PER_IMAGE, PLANE, ITEMS, ITEMS_PER_SPLIT, stride_ps,
    stride_xb, stride_xc, stride_xh, stride_xw, stride_gb, stride_go, stride_gh, stride_gw,
    PAD_T, PAD_L,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
    TILE_BLOCK: tl.constexpr, HALO_BLOCK: tl.constexpr, SHIFT_H: tl.constexpr, SHIFT_W: tl.constexpr,
    BLOCK_C: tl.constexpr, K_BLOCK: tl.constexpr, WAVELET: tl.constexpr, FAST: tl.constexpr,
):  # fmt: skip
    pid_s = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_c = tl.where(mask_c, offs_c, 0)
    i_c = offs_c % IG
    o = (offs_c // IG) * OG + tl.program_id(2)
    edge = o * IG + i_c
    a = tl.load(planes_ptr + edge)[:, None]
    t = tl.load(planes_ptr + PLANE + edge)[:, None]
    KK: tl.constexpr = KH * KW
    k_ids = tl.arange(0, K_BLOCK)[None, :]
    acc_w = tl.zeros((BLOCK_C, K_BLOCK), dtype=tl.float32)
    acc_t = tl.zeros((BLOCK_C, TILE_BLOCK), dtype=tl.float32)
    acc_s = tl.zeros((BLOCK_C, TILE_BLOCK), dtype=tl.float32)
    start = pid_s * ITEMS_PER_SPLIT
    for item in range(start, tl.minimum(start + ITEMS_PER_SPLIT, ITEMS)):
        b = item // TILES_PER_IMAGE
        x, qh, qw, q_ok, qh0, qw0 = _input_tile(x_ptr, b, offs_c, mask_c, item % TILES_PER_IMAGE, TILES_W, H, W,
                                                stride_xb, stride_xc, stride_xh, stride_xw, TILE_H, TILE_W,
                                                TILE_BLOCK)  # fmt: skip
        zs = (x - t) * a
        psi, dpsi = wavelet_psi_dpsi_folded(zs, WAVELET, FAST)
        psi = tl.where(q_ok[None, :], psi, 0.0)
        g, ph0, pw0 = _grad_halo(g_ptr, b, o, mask_c, qh0, qw0, HO, WO, PAD_T, PAD_L, stride_gb, stride_go,
                                 stride_gh, stride_gw, SH, SW, DH, DW, KH, KW, SHIFT_H, SHIFT_W, HALO_H, HALO_W,
                                 HALO_BLOCK)  # fmt: skip
        big_g = tl.zeros((BLOCK_C, TILE_BLOCK), dtype=tl.float32)
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                valid, idx = _tap_index(qh, qw, q_ok, ph0, pw0, PAD_T, PAD_L, kh, kw, SH, SW, DH, DW, HALO_W)
                tap = tl.where(valid[None, :], tl.gather(g, tl.broadcast_to(idx[None, :], (BLOCK_C, TILE_BLOCK)), 1), 0.0)
                w = tl.load(w_ptr + edge * KK + (kh * KW + kw))
                big_g += w[:, None] * tap
                acc_w += tl.where(k_ids == kh * KW + kw, tl.sum(psi * tap, axis=1)[:, None], 0.0)
        q = tl.where(q_ok[None, :], big_g * dpsi, 0.0)
        acc_t += q
        acc_s += q * zs
    # Partials: [k] = sum psi' g (the taps), [KK] = sum G dpsi', [KK + 1] = sum G dpsi' zs.
    row = part_ptr + pid_s.to(tl.int64) * stride_ps + edge.to(tl.int64)[:, None] * (KK + 2)
    tl.store(row + k_ids, acc_w, mask=mask_c[:, None] & (k_ids < KK))
    tl.store(row + KK, tl.sum(acc_t, axis=1)[:, None], mask=mask_c[:, None])
    tl.store(row + KK + 1, tl.sum(acc_s, axis=1)[:, None], mask=mask_c[:, None])


def wavkan_conv_bwd(grad, x, scale, translation, weights, wavelet, stride, padding, dilation, groups: int,
                    need_x: bool = True, need_params: bool = True):  # fmt: skip
    """(grad_x, grad_scale, grad_translation, grad_weights) for grad = dL/dy (B, OUT, HO, WO), any
    strides; arguments as ``wavkan_conv_fwd``. Each gradient in the dtype of what it
    differentiates (grad_x contiguous); None where not needed."""
    B, C, H, W = x.shape
    OUT, IG = scale.shape
    KH, KW = weights.shape[2:]
    (SH, SW), (DH, DW) = stride, dilation
    pt, _, pl, _ = padding
    HO, WO = grad.shape[2:]
    OG = OUT // groups
    tiles = plan_backward_tiles(H, W, KH, KW, SH, SW, DH, DW)
    planes, w, w_x = backward_constants(scale, translation, weights, wavelet.code)
    block_c = min(BLOCK_C_MAX, next_pow2(C))
    tiles_per_image = tiles.tiles_h * tiles.tiles_w
    common = dict(
        SH=SH, SW=SW, DH=DH, DW=DW, KH=KH, KW=KW, TILE_H=tiles.tile_h, TILE_W=tiles.tile_w,
        HALO_H=tiles.halo_h, HALO_W=tiles.halo_w, TILE_BLOCK=tiles.tile_block, HALO_BLOCK=tiles.halo_block,
        SHIFT_H=tiles.origin_shift_h, SHIFT_W=tiles.origin_shift_w, BLOCK_C=block_c, WAVELET=wavelet.code,
        FAST=x.is_cuda, num_warps=NUM_WARPS,
    )  # fmt: skip
    grad_x = None
    if need_x:
        grad_x = torch.empty((B, C, H, W), dtype=x.dtype, device=x.device)
        if B > 0:
            grid = (B * tiles_per_image, triton.cdiv(C, block_c))
            _wavkan_conv_bwd_dx_kernel[grid](
                x, grad, planes, w_x, grad_x,
                C, H, W, IG, OG, HO, WO, tiles.tiles_w, tiles_per_image, OUT * IG,
                *x.stride(), *grad.stride(), pt, pl, **common,
            )  # fmt: skip
    if not need_params:
        return grad_x, None, None, None
    items = B * tiles_per_image
    c_blocks = triton.cdiv(C, block_c)
    split = max(1, min(items, triton.cdiv(_PROGRAMS_PER_SM * sm_count(x.device), c_blocks * OG)))
    per_split = triton.cdiv(items, split) if items else 0
    split = triton.cdiv(items, per_split) if items else 1
    KK = KH * KW
    part = torch.zeros((split, OUT * IG, KK + 2), dtype=torch.float32, device=x.device)
    if items:
        _wavkan_conv_bwd_dparams_kernel[(split, c_blocks, OG)](
            x, grad, planes, w, part,
            C, H, W, IG, OG, HO, WO, tiles.tiles_w, tiles_per_image, OUT * IG, items, per_split, part.stride(0),
            *x.stride(), *grad.stride(), pt, pl, K_BLOCK=next_pow2(KK), **common,
        )  # fmt: skip
    sums = part.sum(0).view(OUT, IG, KK + 2)
    z_scale, p_scale, d_scale = FOLD_BWD[wavelet.code]
    inv_s = scale.float().reciprocal()
    grad_w = (sums[..., :KK] * p_scale).view(OUT, IG, KH, KW)
    grad_t = -inv_s * d_scale * sums[..., KK]
    grad_s = -inv_s * (d_scale / z_scale) * sums[..., KK + 1]
    return grad_x, grad_s.to(scale.dtype), grad_t.to(translation.dtype), grad_w.to(weights.dtype)
