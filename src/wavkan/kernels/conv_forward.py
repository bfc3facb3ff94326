"""Fused convolutional forward:
``y[b,o,p] = sum_{i,k} w[o,i,k] psi((x[b, g(o) IG + i, p*stride + k*dilation - pad] - t[o,i]) / s[o,i])``
(2-D; a 1-D convolution is a row of height 1; see ``wavkan.reference_conv``).

One program owns a (BLOCK_O output channels) x (output tile of TILE_H x TILE_W pixels) block of
y for one batch row, in fp32 registers, and walks the input channels of the group. Per input
channel it

1. loads the input halo the tile's taps read (HALO_H x HALO_W pixels, one load per pixel,
   shared by the BLOCK_O channels when they lie in one group),
2. evaluates the wavelet ONCE per (o, i, halo pixel) on a (BLOCK_O, HALO_BLOCK) register tile,
   zero outside the image (the zero padding of the wavelet tensor),
3. realises every tap as a ``tl.gather`` of that tile at the tap's shifted pixel indices and one
   FMA with the tap's weight: taps reuse the wavelet values instead of recomputing them.

Neither the (B, out, in, H, W) wavelet tensor nor an unfolded input exists; nothing is written
but y, and each y element is written by one program: deterministic, no atomics.

Why gather: Triton gives no handle on shared memory, and shifting a register tile needs data
to move between threads. ``tl.gather`` along the pixel axis lowers to shuffles or to one pass
through shared memory, which the compiler manages (no scratch buffer, no barrier of ours).
Recomputing psi per tap from shifted loads of x would cost one exp per tap (9 for 3x3).

Cost per wavelet value (o, i, halo pixel): one MUFU.EX2 and the wavelet's FMA-pipe instructions
(mexican_hat: about five); per tap (o, i, output pixel, k): one gathered element and one FMA.
Halos of neighbouring tiles overlap, so a value at a tile border is computed by each tile
whose halo holds it: ``conv_tiles.plan_forward_tiles`` picks the tile that minimises values
plus taps over the padded power-of-two blocks and a per-tile overhead (for a 3x3 kernel on
32 x 32 with padding 1: 4 x 32 output tiles, 128 outputs from a 6 x 34 halo in a block of 256,
1.6 wavelet values computed per input pixel and channel pair).

z is computed as (x - t) * (k/s), never x (k/s) - t (k/s): exact where x == t and accurate
for large |t/s|.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv_tiles import forward_constants, next_pow2, plan_forward_tiles
from .device import wavelet_psi_folded

BLOCK_O_MAX = 8
NUM_WARPS = 4


@triton.jit
def _wavkan_conv_fwd_kernel(
    x_ptr, planes_ptr, w_ptr, y_ptr,
    H, W, OUT, IG, OG, HO, WO, TILES_W, TILES_PER_IMAGE, PLANE,
    stride_xb, stride_xc, stride_xh, stride_xw,
    PAD_T, PAD_L,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
    OUT_BLOCK: tl.constexpr, HALO_BLOCK: tl.constexpr, BLOCK_O: tl.constexpr, X_SHARED: tl.constexpr,
    WAVELET: tl.constexpr, FAST: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    pid_o = tl.program_id(1)
    b = pid // TILES_PER_IMAGE
    tile = pid % TILES_PER_IMAGE
    oh0 = (tile // TILES_W) * TILE_H
    ow0 = (tile % TILES_W) * TILE_W

    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    mask_o = offs_o < OUT
    offs_o = tl.where(mask_o, offs_o, 0)
    chan0 = (offs_o // OG) * IG  # first input channel of each output channel's group

    # Input halo: pixel h at (ih0 + h // HALO_W, iw0 + h % HALO_W), zero outside the image.
    h = tl.arange(0, HALO_BLOCK)
    ih = oh0 * SH - PAD_T + h // HALO_W
    iw = ow0 * SW - PAD_L + h % HALO_W
    in_image = (h < HALO_H * HALO_W) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    x_pix = tl.where(in_image, ih, 0).to(tl.int64) * stride_xh + tl.where(in_image, iw, 0).to(tl.int64) * stride_xw
    x_row = x_ptr + b.to(tl.int64) * stride_xb

    # Output tile: pixel j at (oh0 + j // TILE_W, ow0 + j % TILE_W); tap (kh, kw) reads halo
    # pixel base + kh DH HALO_W + kw DW.
    j = tl.arange(0, OUT_BLOCK)
    oh = oh0 + j // TILE_W
    ow = ow0 + j % TILE_W
    out_ok = (j < TILE_H * TILE_W) & (oh < HO) & (ow < WO)
    base = tl.where(j < TILE_H * TILE_W, (j // TILE_W) * (SH * HALO_W) + (j % TILE_W) * SW, 0)
    base = tl.broadcast_to(base[None, :], (BLOCK_O, OUT_BLOCK))

    acc = tl.zeros((BLOCK_O, OUT_BLOCK), dtype=tl.float32)
    KK: tl.constexpr = KH * KW
    for i in range(IG):
        edge = offs_o * IG + i
        a = tl.load(planes_ptr + edge)[:, None]
        t = tl.load(planes_ptr + PLANE + edge)[:, None]
        if X_SHARED:
            xc = ((pid_o * BLOCK_O) // OG) * IG + i  # one group for the whole block
            xv = tl.load(x_row + xc.to(tl.int64) * stride_xc + x_pix, mask=in_image, other=0.0).to(tl.float32)[None, :]
        else:
            xc = (chan0 + i).to(tl.int64)
            xv = tl.load(x_row + xc[:, None] * stride_xc + x_pix[None, :], mask=in_image[None, :], other=0.0)
            xv = xv.to(tl.float32)
        psi = wavelet_psi_folded((xv - t) * a, WAVELET, FAST)
        psi = tl.where(in_image[None, :], psi, 0.0)
        w_edge = w_ptr + edge * KK
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                w = tl.load(w_edge + (kh * KW + kw), mask=mask_o, other=0.0)
                tap = tl.gather(psi, base + (kh * DH * HALO_W + kw * DW), 1)
                acc += w[:, None] * tap

    plane = HO * WO
    y_ptrs = y_ptr + (b.to(tl.int64) * OUT + offs_o[:, None]) * plane + (oh * WO + ow)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_o[:, None] & out_ok[None, :])


def wavkan_conv_fwd(x, scale, translation, weights, wavelet, stride, padding, dilation, groups: int) -> torch.Tensor:
    """Fused forward. x: (B, C, H, W), any strides and float dtype; scale, translation: (OUT,
    C / groups); weights: (OUT, C / groups, KH, KW) (window folded in); stride, dilation: (h, w);
    padding: (top, bottom, left, right). Returns y: (B, OUT, HO, WO), contiguous, x's dtype."""
    B, C, H, W = x.shape
    OUT, IG = scale.shape
    KH, KW = weights.shape[2:]
    (SH, SW), (DH, DW) = stride, dilation
    pt, pb, pl, pr = padding
    HO = (H + pt + pb - DH * (KH - 1) - 1) // SH + 1
    WO = (W + pl + pr - DW * (KW - 1) - 1) // SW + 1
    y = torch.empty((B, OUT, HO, WO), dtype=x.dtype, device=x.device)
    if B == 0:
        return y
    tiles = plan_forward_tiles(HO, WO, KH, KW, SH, SW, DH, DW)
    planes, w = forward_constants(scale, translation, weights, wavelet.code)
    OG = OUT // groups
    block_o = min(BLOCK_O_MAX, next_pow2(OUT))
    x_shared = groups == 1 or OG % block_o == 0
    tiles_per_image = tiles.tiles_h * tiles.tiles_w
    grid = (B * tiles_per_image, triton.cdiv(OUT, block_o))
    _wavkan_conv_fwd_kernel[grid](
        x, planes, w, y,
        H, W, OUT, IG, OG, HO, WO, tiles.tiles_w, tiles_per_image, OUT * IG,
        *x.stride(), pt, pl,
        SH=SH, SW=SW, DH=DH, DW=DW, KH=KH, KW=KW,
        TILE_H=tiles.tile_h, TILE_W=tiles.tile_w, HALO_H=tiles.halo_h, HALO_W=tiles.halo_w,
        OUT_BLOCK=tiles.out_block, HALO_BLOCK=tiles.halo_block, BLOCK_O=block_o, X_SHARED=x_shared,
        WAVELET=wavelet.code, FAST=x.is_cuda, num_warps=NUM_WARPS,
    )  # fmt: skip
    return y
