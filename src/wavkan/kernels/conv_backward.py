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
exp). The taps need grad_y at shifted positions, g[b, o, p(q, k)], which depends on o but not on
i: a program holding BLOCK_C input channels of one group loads it straight from grad_y, one
(tile-sized) load per (o, tap), shared by its BLOCK_C channels, and forms G with one FMA per
(o, i, q, tap). No data moves between threads and nothing is staged.

- ``_wavkan_conv_bwd_dx_kernel``: one program per (batch row, input tile, BLOCK_C input
  channels); loops over the output channels of the group and writes its grad_x block once.
- ``_wavkan_conv_bwd_dparams_kernel``: one program per (split of the batch rows, BLOCK_C input
  channels, output channel of the group), each (o, i) pair owned by one program per split; it
  walks the input tiles, and inside each its split's batch rows (a tile's pixel and tap offsets
  are computed once per tile), and writes per-split fp32 partial sums, which are summed over the
  splits in a fixed order afterwards (no atomics).

Cost per (o, i, input pixel): one MUFU.EX2 and the wavelet's psi/dpsi instructions; per tap one
FMA for G, and in the parameter pass one more into the tap's weight-gradient accumulator (held
in registers, reduced once per program; its taps' validity masks and grad_y offsets computed
once per tile for all its batch rows). Loads: grad_y once per (o, input pixel, tap) for the
block's channels, and the taps' weights, which for grad_x change with o: Triton's default
layout gives a thread 4 channels x 2 pixels of a (4, 256) block, so a tap costs it 4 weight and
2 grad_y loads for 8 FMAs. When a block's channels span groups (depthwise), each row loads its
own grad_y. Extra memory: the per-split partials, passes x splits x out x in/groups x
(taps + 2) fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv_tiles import index, needs_wide_offsets, next_pow2, plan_backward_tiles, wavelet_folds
from .device import wavelet_psi_dpsi_folded
from .launch import sm_count

NUM_WARPS = 4
# Channels per program: a thread holds 4 channels x 4 pixels of the grad_x pass's (channels,
# pixels) tiles (Triton's default layout spreads the pixel axis over the threads), so a tap
# costs 4 loads of w and 4 of grad_y for 16 FMAs; fewer channels would load more grad_y, more
# channels more w.
BLOCK_C_MAX = 4
# Channels x tile pixels per program: grad_x keeps four fp32 tiles of this size in registers,
# the parameter pass up to 16 tap accumulators and six more. Measured on the H200 (the
# benchmark's CIFAR, 1-D and strided layers): grad_x at 2048 or 512 was 5-37% slower than 1024;
# the parameter pass at 1024 10-23% faster than 512, at 256 mixed.
DX_ELEMENTS, DPARAMS_ELEMENTS = 1024, 1024
TAPS_PER_PASS = 16
# Parameter-pass programs per SM to aim for when choosing the split of the batch rows: 16
# measured 13-32% faster than 4 on the same layers (more programs even out the SMs' work; the
# split's partials are a few hundred KB).
_PROGRAMS_PER_SM = 16


def _blocks(C: int, H: int, W: int, elements: int, on_gpu: bool, taps: int = 9, IG: int = 0) -> tuple:
    """(channels per program, input tiles) for programs of about ``elements`` channel-pixels,
    fewer for kernels of more than 9 taps (each tap's grad_y offsets and loads take registers).
    Where the whole image fits one tile and the block would leave threads idle (a deep net's
    4 x 4 images: 4 channels x 16 pixels for 128 threads) the channel block widens until the
    program holds ``elements`` (measured on the H200: 10.2 -> 5.6 ms for the 512 -> 512 layer's
    backward at batch 128; 8 x 8 images, which fill the threads, measured slower widened). In a
    grouped convolution the block stays inside a group (IG divisible by it), so grad_y stays
    shared by the block's channels. The interpreter, slow per program and per operation, takes
    more channels per program."""
    block_c = min(BLOCK_C_MAX if on_gpu else 4 * BLOCK_C_MAX, next_pow2(C))
    if taps > 9:
        elements = max(128, elements // 4)
    tiles = plan_backward_tiles(H, W, elements // block_c)
    if on_gpu and tiles.tiles_h * tiles.tiles_w == 1 and tiles.tile_block * block_c < 32 * NUM_WARPS:
        wide = min(next_pow2(C), max(block_c, elements // tiles.tile_block))
        while wide > block_c and IG % wide:
            wide //= 2
        block_c = wide
    return block_c, tiles


@triton.jit
def _tap_geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, kh: tl.constexpr, kw: tl.constexpr,
                  SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
                  WIDE: tl.constexpr):  # fmt: skip
    """For input pixels (qh, qw) and tap (kh, kw): whether an output pixel p reads them through
    the tap, and p's offset in a channel plane of grad_y."""
    rr = qh + PAD_T - kh * DH
    rc = qw + PAD_L - kw * DW
    ph = rr // SH
    pw = rc // SW
    valid = q_ok & (rr >= 0) & (rc >= 0) & (rr % SH == 0) & (rc % SW == 0) & (ph < HO) & (pw < WO)
    pix = index(tl.where(valid, ph, 0), WIDE) * stride_gh + index(tl.where(valid, pw, 0), WIDE) * stride_gw
    return valid, pix


@triton.jit
def _load_grad(g_row, o, mask_c, valid, pix, stride_go, G_SHARED: tl.constexpr, WIDE: tl.constexpr):
    """grad_y of output channel o at the pixels ``pix`` (zero where not ``valid``): (TILE_BLOCK,)
    for one output channel (G_SHARED), else (BLOCK_C, TILE_BLOCK) for one per channel row. A
    plain load from grad_y: the taps' shift costs no data movement between threads."""
    if G_SHARED:
        return tl.load(g_row + index(o, WIDE) * stride_go + pix, mask=valid, other=0.0).to(tl.float32)
    else:
        ptrs = g_row + index(o, WIDE)[:, None] * stride_go + pix[None, :]
        return tl.load(ptrs, mask=mask_c[:, None] & valid[None, :], other=0.0).to(tl.float32)


@triton.jit
def _shifted_grad(g_row, o, mask_c, qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_go, stride_gh, stride_gw,
                  kh: tl.constexpr, kw: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr,
                  DW: tl.constexpr, G_SHARED: tl.constexpr, WIDE: tl.constexpr):  # fmt: skip
    """grad_y[b, o, p] at the output pixel p that reads input pixel q through tap (kh, kw), zero
    where there is none."""
    valid, pix = _tap_geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, kh, kw, SH, SW, DH, DW, WIDE)
    return _load_grad(g_row, o, mask_c, valid, pix, stride_go, G_SHARED, WIDE)


@triton.jit
def _as_rows(v, G_SHARED: tl.constexpr):
    if G_SHARED:
        return v[None, :]
    else:
        return v


@triton.jit
def _tile_pixels(tile, TILES_W, H, W, stride_xh, stride_xw, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
                 TILE_BLOCK: tl.constexpr, WIDE: tl.constexpr):  # fmt: skip
    """An input tile's pixel rows and cols, the mask of those inside the image, and their offsets
    in a channel plane of x."""
    qh0 = (tile // TILES_W) * TILE_H
    qw0 = (tile % TILES_W) * TILE_W
    j = tl.arange(0, TILE_BLOCK)
    qh = qh0 + j // TILE_W
    qw = qw0 + j % TILE_W
    q_ok = (j < TILE_H * TILE_W) & (qh < H) & (qw < W)
    pix = index(tl.where(q_ok, qh, 0), WIDE) * stride_xh + index(tl.where(q_ok, qw, 0), WIDE) * stride_xw
    return qh, qw, q_ok, pix


@triton.jit
def _load_x(x_ptr, b, offs_c, mask_c, q_ok, pix, stride_xb, stride_xc, WIDE: tl.constexpr):
    """x of the block's channels on a tile: (BLOCK_C, TILE_BLOCK) fp32."""
    ptrs = x_ptr + tl.cast(b, tl.int64) * stride_xb + index(offs_c, WIDE)[:, None] * stride_xc + pix[None, :]
    return tl.load(ptrs, mask=mask_c[:, None] & q_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _input_tile(x_ptr, b, offs_c, mask_c, tile, TILES_W, H, W, stride_xb, stride_xc, stride_xh, stride_xw,
                TILE_H: tl.constexpr, TILE_W: tl.constexpr, TILE_BLOCK: tl.constexpr, WIDE: tl.constexpr):  # fmt: skip
    """x on one input tile: (BLOCK_C, TILE_BLOCK) fp32, the tile's pixel rows and cols, and the
    mask of its pixels inside the image."""
    qh, qw, q_ok, pix = _tile_pixels(tile, TILES_W, H, W, stride_xh, stride_xw, TILE_H, TILE_W, TILE_BLOCK, WIDE)
    return _load_x(x_ptr, b, offs_c, mask_c, q_ok, pix, stride_xb, stride_xc, WIDE), qh, qw, q_ok


@triton.jit
def _wavkan_conv_bwd_dx_kernel(
    x_ptr, g_ptr, s_ptr, t_ptr, w_ptr, gx_ptr,
    C, H, W, IG, OG, HO, WO, TILES_W, TILES_PER_IMAGE,
    stride_xb, stride_xc, stride_xh, stride_xw, stride_gb, stride_go, stride_gh, stride_gw,
    stride_so, stride_si, stride_to, stride_ti,
    PAD_T, PAD_L,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, TILE_BLOCK: tl.constexpr, BLOCK_C: tl.constexpr,
    G_SHARED: tl.constexpr, Z_SCALE: tl.constexpr, D_SCALE: tl.constexpr, WIDE: tl.constexpr, WAVELET: tl.constexpr,
    FAST: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    b = pid // TILES_PER_IMAGE
    tile = pid % TILES_PER_IMAGE
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_c = tl.where(mask_c, offs_c, 0)
    i_c = offs_c % IG
    x, qh, qw, q_ok = _input_tile(x_ptr, b, offs_c, mask_c, tile, TILES_W, H, W, stride_xb, stride_xc, stride_xh,
                                  stride_xw, TILE_H, TILE_W, TILE_BLOCK, WIDE)  # fmt: skip
    g_row = g_ptr + b.to(tl.int64) * stride_gb
    KK: tl.constexpr = KH * KW
    acc = tl.zeros((BLOCK_C, TILE_BLOCK), dtype=tl.float32)
    for oo in range(OG):
        o = (offs_c // IG) * OG + oo
        if G_SHARED:
            o_g = ((pid_c * BLOCK_C) // IG) * OG + oo  # one group for the whole block
        else:
            o_g = o
        edge = o * IG + i_c
        inv_s = 1.0 / tl.load(s_ptr + o * stride_so + i_c * stride_si).to(tl.float32)[:, None]
        t = tl.load(t_ptr + o * stride_to + i_c * stride_ti).to(tl.float32)[:, None]
        _, dpsi = wavelet_psi_dpsi_folded((x - t) * (inv_s * Z_SCALE), WAVELET, FAST)
        big_g = tl.zeros((BLOCK_C, TILE_BLOCK), dtype=tl.float32)
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                g = _shifted_grad(g_row, o_g, mask_c, qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_go, stride_gh,
                                  stride_gw, kh, kw, SH, SW, DH, DW, G_SHARED, WIDE)  # fmt: skip
                w = tl.load(w_ptr + edge * KK + (kh * KW + kw)).to(tl.float32)
                big_g += w[:, None] * _as_rows(g, G_SHARED)
        acc += dpsi * big_g * (inv_s * D_SCALE)  # d z / d x = 1/s; dpsi carries 1/D
    pix = (qh * W + qw)[None, :]
    gx_ptrs = gx_ptr + (b.to(tl.int64) * C + offs_c[:, None]) * (H * W) + pix
    tl.store(gx_ptrs, acc.to(gx_ptr.dtype.element_ty), mask=mask_c[:, None] & q_ok[None, :])


@triton.jit
def _tap_weight(w_ptr, edge, k: tl.constexpr, K0: tl.constexpr, KK: tl.constexpr, TAPS: tl.constexpr):
    """w[o, i, K0 + k] as a (BLOCK_C, 1) column; zero for a tap that does not exist (unused)."""
    if K0 + k < KK:
        if k < TAPS:
            return tl.load(w_ptr + edge * KK + (K0 + k)).to(tl.float32)[:, None]
    return tl.zeros_like(edge)[:, None].to(tl.float32)


@triton.jit
def _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, k: tl.constexpr, K0: tl.constexpr,
              KK: tl.constexpr, TAPS: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
              DH: tl.constexpr, DW: tl.constexpr, WIDE: tl.constexpr):  # fmt: skip
    """``_tap_geometry`` of tap K0 + k where it exists (else q_ok and a zero offset, unused)."""
    if K0 + k < KK:
        if k < TAPS:
            return _tap_geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, (K0 + k) // KW,
                                 (K0 + k) % KW, SH, SW, DH, DW, WIDE)  # fmt: skip
    return q_ok, index(tl.zeros_like(qh), WIDE)


@triton.jit
def _dparams_tap(big_g, acc, w, psi, g_row, o_g, mask_c, valid, pix, stride_go, k: tl.constexpr, K0: tl.constexpr,
                 KK: tl.constexpr, TAPS: tl.constexpr, G_SHARED: tl.constexpr, WIDE: tl.constexpr):  # fmt: skip
    """For tap K0 + k: G += w g_k and the tap's weight-gradient accumulator += psi g_k, with g_k
    grad_y at the output pixel the tap maps each input pixel to."""
    if K0 + k < KK:
        if k < TAPS:
            g = _as_rows(_load_grad(g_row, o_g, mask_c, valid, pix, stride_go, G_SHARED, WIDE), G_SHARED)
            big_g += w * g
            acc += psi * g
    return big_g, acc


@triton.jit
def _store_tap_sum(row, acc, mask_c, k: tl.constexpr, K0: tl.constexpr, KK: tl.constexpr, TAPS: tl.constexpr):
    if K0 + k < KK:
        if k < TAPS:
            tl.store(row + (K0 + k), tl.sum(acc, axis=1)[:, None], mask=mask_c[:, None])


@triton.jit
def _wavkan_conv_bwd_dparams_kernel(
    x_ptr, g_ptr, s_ptr, t_ptr, w_ptr, part_ptr,
    C, H, W, IG, OG, HO, WO, TILES_W, TILES_PER_IMAGE, B, ROWS_PER_SPLIT, stride_ps,
    stride_xb, stride_xc, stride_xh, stride_xw, stride_gb, stride_go, stride_gh, stride_gw,
    stride_so, stride_si, stride_to, stride_ti,
    PAD_T, PAD_L,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, TILE_BLOCK: tl.constexpr, BLOCK_C: tl.constexpr,
    G_SHARED: tl.constexpr, TAPS: tl.constexpr, K0: tl.constexpr, Z_SCALE: tl.constexpr, WIDE: tl.constexpr,
    WAVELET: tl.constexpr, FAST: tl.constexpr,
):  # fmt: skip
    """One pass over taps K0 .. K0 + TAPS - 1: their weight-gradient sums, and the sums of
    G dpsi and G dpsi z for the part of G these taps make (G is linear in the taps: the passes'
    partial sums add up)."""
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_c = tl.where(mask_c, offs_c, 0)
    i_c = offs_c % IG
    o = (offs_c // IG) * OG + tl.program_id(2)
    if G_SHARED:
        o_g = ((pid_c * BLOCK_C) // IG) * OG + tl.program_id(2)  # one group for the whole block
    else:
        o_g = o
    edge = o * IG + i_c
    a = Z_SCALE / tl.load(s_ptr + o * stride_so + i_c * stride_si).to(tl.float32)[:, None]
    t = tl.load(t_ptr + o * stride_to + i_c * stride_ti).to(tl.float32)[:, None]
    KK: tl.constexpr = KH * KW
    # The taps' weights: loaded once, held in registers for every item.
    w0 = _tap_weight(w_ptr, edge, 0, K0, KK, TAPS)
    w1 = _tap_weight(w_ptr, edge, 1, K0, KK, TAPS)
    w2 = _tap_weight(w_ptr, edge, 2, K0, KK, TAPS)
    w3 = _tap_weight(w_ptr, edge, 3, K0, KK, TAPS)
    w4 = _tap_weight(w_ptr, edge, 4, K0, KK, TAPS)
    w5 = _tap_weight(w_ptr, edge, 5, K0, KK, TAPS)
    w6 = _tap_weight(w_ptr, edge, 6, K0, KK, TAPS)
    w7 = _tap_weight(w_ptr, edge, 7, K0, KK, TAPS)
    w8 = _tap_weight(w_ptr, edge, 8, K0, KK, TAPS)
    w9 = _tap_weight(w_ptr, edge, 9, K0, KK, TAPS)
    w10 = _tap_weight(w_ptr, edge, 10, K0, KK, TAPS)
    w11 = _tap_weight(w_ptr, edge, 11, K0, KK, TAPS)
    w12 = _tap_weight(w_ptr, edge, 12, K0, KK, TAPS)
    w13 = _tap_weight(w_ptr, edge, 13, K0, KK, TAPS)
    w14 = _tap_weight(w_ptr, edge, 14, K0, KK, TAPS)
    w15 = _tap_weight(w_ptr, edge, 15, K0, KK, TAPS)
    acc0 = tl.zeros((BLOCK_C, TILE_BLOCK), dtype=tl.float32)
    acc1, acc2, acc3, acc4, acc5, acc6, acc7 = acc0, acc0, acc0, acc0, acc0, acc0, acc0
    acc8, acc9, acc10, acc11, acc12, acc13, acc14, acc15 = acc0, acc0, acc0, acc0, acc0, acc0, acc0, acc0
    acc_t = tl.zeros((BLOCK_C, TILE_BLOCK), dtype=tl.float32)
    acc_s = tl.zeros((BLOCK_C, TILE_BLOCK), dtype=tl.float32)
    # Tile by tile, the batch rows of this split inside: a tile's pixel offsets and each tap's
    # validity and grad_y offsets are computed once per tile, not once per (tile, row).
    b_start = pid_s * ROWS_PER_SPLIT
    b_end = tl.minimum(b_start + ROWS_PER_SPLIT, B)
    for tile in range(TILES_PER_IMAGE):
        qh, qw, q_ok, x_pix = _tile_pixels(tile, TILES_W, H, W, stride_xh, stride_xw, TILE_H, TILE_W, TILE_BLOCK, WIDE)
        v0, p0 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 0, K0, KK, TAPS, KW, SH, SW,
                           DH, DW, WIDE)  # fmt: skip
        v1, p1 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 1, K0, KK, TAPS, KW, SH, SW,
                           DH, DW, WIDE)  # fmt: skip
        v2, p2 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 2, K0, KK, TAPS, KW, SH, SW,
                           DH, DW, WIDE)  # fmt: skip
        v3, p3 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 3, K0, KK, TAPS, KW, SH, SW,
                           DH, DW, WIDE)  # fmt: skip
        v4, p4 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 4, K0, KK, TAPS, KW, SH, SW,
                           DH, DW, WIDE)  # fmt: skip
        v5, p5 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 5, K0, KK, TAPS, KW, SH, SW,
                           DH, DW, WIDE)  # fmt: skip
        v6, p6 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 6, K0, KK, TAPS, KW, SH, SW,
                           DH, DW, WIDE)  # fmt: skip
        v7, p7 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 7, K0, KK, TAPS, KW, SH, SW,
                           DH, DW, WIDE)  # fmt: skip
        v8, p8 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 8, K0, KK, TAPS, KW, SH, SW,
                           DH, DW, WIDE)  # fmt: skip
        v9, p9 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 9, K0, KK, TAPS, KW, SH, SW,
                           DH, DW, WIDE)  # fmt: skip
        v10, p10 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 10, K0, KK, TAPS, KW, SH, SW,
                             DH, DW, WIDE)  # fmt: skip
        v11, p11 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 11, K0, KK, TAPS, KW, SH, SW,
                             DH, DW, WIDE)  # fmt: skip
        v12, p12 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 12, K0, KK, TAPS, KW, SH, SW,
                             DH, DW, WIDE)  # fmt: skip
        v13, p13 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 13, K0, KK, TAPS, KW, SH, SW,
                             DH, DW, WIDE)  # fmt: skip
        v14, p14 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 14, K0, KK, TAPS, KW, SH, SW,
                             DH, DW, WIDE)  # fmt: skip
        v15, p15 = _geometry(qh, qw, q_ok, HO, WO, PAD_T, PAD_L, stride_gh, stride_gw, 15, K0, KK, TAPS, KW, SH, SW,
                             DH, DW, WIDE)  # fmt: skip
        for b in range(b_start, b_end):
            x = _load_x(x_ptr, b, offs_c, mask_c, q_ok, x_pix, stride_xb, stride_xc, WIDE)
            zs = (x - t) * a
            psi, dpsi = wavelet_psi_dpsi_folded(zs, WAVELET, FAST)
            psi = tl.where(q_ok[None, :], psi, 0.0)
            g_row = g_ptr + tl.cast(b, tl.int64) * stride_gb
            big_g = tl.zeros((BLOCK_C, TILE_BLOCK), dtype=tl.float32)
            big_g, acc0 = _dparams_tap(big_g, acc0, w0, psi, g_row, o_g, mask_c, v0, p0, stride_go, 0, K0, KK,
                                       TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc1 = _dparams_tap(big_g, acc1, w1, psi, g_row, o_g, mask_c, v1, p1, stride_go, 1, K0, KK,
                                       TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc2 = _dparams_tap(big_g, acc2, w2, psi, g_row, o_g, mask_c, v2, p2, stride_go, 2, K0, KK,
                                       TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc3 = _dparams_tap(big_g, acc3, w3, psi, g_row, o_g, mask_c, v3, p3, stride_go, 3, K0, KK,
                                       TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc4 = _dparams_tap(big_g, acc4, w4, psi, g_row, o_g, mask_c, v4, p4, stride_go, 4, K0, KK,
                                       TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc5 = _dparams_tap(big_g, acc5, w5, psi, g_row, o_g, mask_c, v5, p5, stride_go, 5, K0, KK,
                                       TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc6 = _dparams_tap(big_g, acc6, w6, psi, g_row, o_g, mask_c, v6, p6, stride_go, 6, K0, KK,
                                       TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc7 = _dparams_tap(big_g, acc7, w7, psi, g_row, o_g, mask_c, v7, p7, stride_go, 7, K0, KK,
                                       TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc8 = _dparams_tap(big_g, acc8, w8, psi, g_row, o_g, mask_c, v8, p8, stride_go, 8, K0, KK,
                                       TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc9 = _dparams_tap(big_g, acc9, w9, psi, g_row, o_g, mask_c, v9, p9, stride_go, 9, K0, KK,
                                       TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc10 = _dparams_tap(big_g, acc10, w10, psi, g_row, o_g, mask_c, v10, p10, stride_go, 10, K0, KK,
                                        TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc11 = _dparams_tap(big_g, acc11, w11, psi, g_row, o_g, mask_c, v11, p11, stride_go, 11, K0, KK,
                                        TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc12 = _dparams_tap(big_g, acc12, w12, psi, g_row, o_g, mask_c, v12, p12, stride_go, 12, K0, KK,
                                        TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc13 = _dparams_tap(big_g, acc13, w13, psi, g_row, o_g, mask_c, v13, p13, stride_go, 13, K0, KK,
                                        TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc14 = _dparams_tap(big_g, acc14, w14, psi, g_row, o_g, mask_c, v14, p14, stride_go, 14, K0, KK,
                                        TAPS, G_SHARED, WIDE)  # fmt: skip
            big_g, acc15 = _dparams_tap(big_g, acc15, w15, psi, g_row, o_g, mask_c, v15, p15, stride_go, 15, K0, KK,
                                        TAPS, G_SHARED, WIDE)  # fmt: skip
            q = tl.where(q_ok[None, :], big_g * dpsi, 0.0)
            acc_t += q
            acc_s += q * zs
    # Partials: [k] = sum psi' g_k (the taps), [KK] = sum G dpsi', [KK + 1] = sum G dpsi' zs.
    row = part_ptr + pid_s.to(tl.int64) * stride_ps + edge.to(tl.int64)[:, None] * (KK + 2)
    _store_tap_sum(row, acc0, mask_c, 0, K0, KK, TAPS)
    _store_tap_sum(row, acc1, mask_c, 1, K0, KK, TAPS)
    _store_tap_sum(row, acc2, mask_c, 2, K0, KK, TAPS)
    _store_tap_sum(row, acc3, mask_c, 3, K0, KK, TAPS)
    _store_tap_sum(row, acc4, mask_c, 4, K0, KK, TAPS)
    _store_tap_sum(row, acc5, mask_c, 5, K0, KK, TAPS)
    _store_tap_sum(row, acc6, mask_c, 6, K0, KK, TAPS)
    _store_tap_sum(row, acc7, mask_c, 7, K0, KK, TAPS)
    _store_tap_sum(row, acc8, mask_c, 8, K0, KK, TAPS)
    _store_tap_sum(row, acc9, mask_c, 9, K0, KK, TAPS)
    _store_tap_sum(row, acc10, mask_c, 10, K0, KK, TAPS)
    _store_tap_sum(row, acc11, mask_c, 11, K0, KK, TAPS)
    _store_tap_sum(row, acc12, mask_c, 12, K0, KK, TAPS)
    _store_tap_sum(row, acc13, mask_c, 13, K0, KK, TAPS)
    _store_tap_sum(row, acc14, mask_c, 14, K0, KK, TAPS)
    _store_tap_sum(row, acc15, mask_c, 15, K0, KK, TAPS)
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
    _, (z_scale, p_scale, d_scale) = wavelet_folds(wavelet)
    w = weights.contiguous()
    params = (scale, translation, w)
    param_strides = (*scale.stride(), *translation.stride())
    base = dict(SH=SH, SW=SW, DH=DH, DW=DW, KH=KH, KW=KW, Z_SCALE=z_scale, WIDE=needs_wide_offsets(x, grad),
                WAVELET=wavelet.code, FAST=x.is_cuda, num_warps=NUM_WARPS)  # fmt: skip
    grad_x = None
    if need_x:
        grad_x = torch.empty((B, C, H, W), dtype=x.dtype, device=x.device)
        block_c, tiles = _blocks(C, H, W, DX_ELEMENTS, x.is_cuda, KH * KW, IG)
        if B > 0:
            tiles_per_image = tiles.tiles_h * tiles.tiles_w
            _wavkan_conv_bwd_dx_kernel[(B * tiles_per_image, triton.cdiv(C, block_c))](
                x, grad, *params, grad_x,
                C, H, W, IG, OG, HO, WO, tiles.tiles_w, tiles_per_image,
                *x.stride(), *grad.stride(), *param_strides, pt, pl,
                TILE_H=tiles.tile_h, TILE_W=tiles.tile_w, TILE_BLOCK=tiles.tile_block, BLOCK_C=block_c,
                G_SHARED=groups == 1 or IG % block_c == 0, D_SCALE=d_scale, **base,
            )  # fmt: skip
    if not need_params:
        return grad_x, None, None, None
    block_c, tiles = _blocks(C, H, W, DPARAMS_ELEMENTS, x.is_cuda, KH * KW, IG)
    tiles_per_image = tiles.tiles_h * tiles.tiles_w
    c_blocks = triton.cdiv(C, block_c)
    # Splits of the batch rows: enough programs to fill the SMs.
    split = max(1, min(B, triton.cdiv(_PROGRAMS_PER_SM * sm_count(x.device), c_blocks * OG)))
    per_split = triton.cdiv(B, split) if B else 0
    split = triton.cdiv(B, per_split) if B else 1
    KK = KH * KW
    taps = min(TAPS_PER_PASS, KK)
    passes = triton.cdiv(KK, taps)
    # One plane of partials per (pass, split); a pass writes its taps' columns and its share
    # of the two G sums, the rest of its plane stays zero, so one sum over planes gives all.
    part = torch.zeros((passes, split, OUT * IG, KK + 2), dtype=torch.float32, device=x.device)
    if B:
        for p in range(passes):
            _wavkan_conv_bwd_dparams_kernel[(split, c_blocks, OG)](
                x, grad, *params, part[p],
                C, H, W, IG, OG, HO, WO, tiles.tiles_w, tiles_per_image, B, per_split, part.stride(1),
                *x.stride(), *grad.stride(), *param_strides, pt, pl,
                TILE_H=tiles.tile_h, TILE_W=tiles.tile_w, TILE_BLOCK=tiles.tile_block, BLOCK_C=block_c,
                G_SHARED=groups == 1 or IG % block_c == 0, TAPS=taps, K0=p * taps, **base,
            )  # fmt: skip
    sums = part.sum((0, 1)).view(OUT, IG, KK + 2)
    inv_s = scale.float().reciprocal()
    grad_w = (sums[..., :KK] * p_scale).view(OUT, IG, KH, KW)
    grad_t = -inv_s * d_scale * sums[..., KK]
    grad_s = -inv_s * (d_scale / z_scale) * sums[..., KK + 1]
    return grad_x, grad_s.to(scale.dtype), grad_t.to(translation.dtype), grad_w.to(weights.dtype)
