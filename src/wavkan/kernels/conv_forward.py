"""Fused convolutional forward:
``y[b,o,p] = sum_{i,k} w[o,i,k] psi((x[b, g(o) IG + i, p*stride + k*dilation - pad] - t[o,i]) / s[o,i])``
(2-D; a 1-D convolution is a row of height 1; see ``wavkan.reference_conv``).

The sums are taken in the order that keeps every wavelet value in the register that computed
it. With h a pixel of the input halo that an output tile reads,

    S_k[o, h] = sum_i w[o,i,k] psi[o,i,h]          (per tap k: the channel sum first, in place)
    y[o, p]   = sum_k S_k[o, h(p, k)]               (then the taps' spatial shift, once)

Work items are (batch row, output tile, output channel o); a persistent grid of programs walks
them. Per item and input channel i a program loads the halo of x once, evaluates psi ONCE per
(o, i, halo pixel) and adds it, times each tap's weight, to the tap's accumulator S_k: one exp
and one FMA per tap, all in registers (tap weights are scalars of the item). After the channel
loop the S_k planes go to the program's slot of a small scratch buffer (global memory, L1/L2
resident) and each output pixel reads its K shifted values back: the only data movement between
threads, once per (o, tap, pixel) instead of once per (o, i, tap, pixel), so its cost is divided
by in/groups. Taps are accumulated TAPS_PER_PASS at a time in named registers (Triton has no
register arrays); a kernel with more taps takes several passes, each recomputing psi.

Neither the (B, out, in, H, W) wavelet tensor nor an unfolded input exists; y is written once
per element by one program: deterministic, no atomics. Extra memory: the scratch, programs x
taps x halo block fp32 (programs = a few per SM).

Cost per (o, i, halo pixel): one MUFU.EX2, the wavelet's FMA-pipe instructions (mexican_hat:
seven with the mask and the (x - t) k/s) and one FMA per tap, plus the load of x and a share of
the tap weights' loads (scalars of the item: one load per tap and channel per thread). Halos of
neighbouring tiles overlap, so pixels at tile borders are computed by each tile that reads them
(``conv_tiles.plan_forward_tiles`` weighs that against the padding of the power-of-two blocks).
Per (o, tap, output pixel): one store and one load of the scratch. The edge constants (k/s, the
wavelet's weight factor) are folded in the kernel, so a call does no host work on the parameters.

z is computed as (x - t) * (k/s), never x (k/s) - t (k/s): exact where x == t and accurate for
large |t/s|.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv_tiles import MAX_TILE, index, needs_wide_offsets, plan_forward_tiles, wavelet_folds
from .device import wavelet_psi_folded
from .launch import sm_count

TAPS_PER_PASS = 16
NUM_WARPS = 4
# Tap accumulators' elements per program: 64 fp32 registers a thread at 4 warps.
ACC_ELEMENTS = 64 * 32 * NUM_WARPS
# Persistent programs per SM.
PROGRAMS_PER_SM = 8


@triton.jit
def _tap_acc(acc, psi, w_edge, k: tl.constexpr, K0: tl.constexpr, KK: tl.constexpr, TAPS: tl.constexpr):
    """acc + w[o, i, K0 + k] psi for a tap that exists (else acc unchanged, and unused)."""
    if K0 + k < KK:
        if k < TAPS:
            acc += tl.load(w_edge + (K0 + k)).to(tl.float32) * psi
    return acc


@triton.jit
def _store_plane(slot, acc, offs, k: tl.constexpr, K0: tl.constexpr, KK: tl.constexpr, TAPS: tl.constexpr,
                 HALO_BLOCK: tl.constexpr):  # fmt: skip
    if K0 + k < KK:
        if k < TAPS:
            tl.store(slot + k * HALO_BLOCK + offs, acc)


@triton.jit
def _wavkan_conv_fwd_kernel(
    x_ptr, s_ptr, t_ptr, w_ptr, y_ptr, scratch_ptr,
    H, W, OUT, IG, OG, HO, WO, TILES_W, TILES_PER_IMAGE, N_ITEMS,
    stride_xb, stride_xc, stride_xh, stride_xw, stride_so, stride_si, stride_to, stride_ti,
    PAD_T, PAD_L,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
    OUT_BLOCK: tl.constexpr, HALO_BLOCK: tl.constexpr, TAPS: tl.constexpr,
    Z_SCALE: tl.constexpr, W_SCALE: tl.constexpr, WIDE: tl.constexpr, WAVELET: tl.constexpr, FAST: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    KK: tl.constexpr = KH * KW
    PASSES: tl.constexpr = (KH * KW + TAPS - 1) // TAPS
    slot = scratch_ptr + pid.to(tl.int64) * (TAPS * HALO_BLOCK)
    h = tl.arange(0, HALO_BLOCK)
    j = tl.arange(0, OUT_BLOCK)
    # Output pixel j of a tile: (j // TILE_W, j % TILE_W); its tap (kh, kw) reads halo pixel
    # base + kh DH HALO_W + kw DW.
    in_tile = j < TILE_H * TILE_W
    base = tl.where(in_tile, (j // TILE_W) * (SH * HALO_W) + (j % TILE_W) * SW, 0)
    for item in range(pid, N_ITEMS, tl.num_programs(0)):
        o = item % OUT
        rest = item // OUT
        tile = rest % TILES_PER_IMAGE
        b = rest // TILES_PER_IMAGE
        oh0 = (tile // TILES_W) * TILE_H
        ow0 = (tile % TILES_W) * TILE_W
        # Input halo pixel h at (ih0 + h // HALO_W, iw0 + h % HALO_W); psi is 0 outside the image.
        ih = oh0 * SH - PAD_T + h // HALO_W
        iw = ow0 * SW - PAD_L + h % HALO_W
        in_image = (h < HALO_H * HALO_W) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_pix = index(tl.where(in_image, ih, 0), WIDE) * stride_xh + index(tl.where(in_image, iw, 0), WIDE) * stride_xw
        x_chan = x_ptr + b.to(tl.int64) * stride_xb + ((o // OG) * IG).to(tl.int64) * stride_xc + x_pix
        oh = oh0 + j // TILE_W
        ow = ow0 + j % TILE_W
        out = tl.zeros((OUT_BLOCK,), dtype=tl.float32)
        for pass_ in tl.static_range(PASSES):
            K0 = pass_ * TAPS
            a0 = tl.zeros((HALO_BLOCK,), dtype=tl.float32)
            a1, a2, a3, a4, a5, a6, a7 = a0, a0, a0, a0, a0, a0, a0
            a8, a9, a10, a11, a12, a13, a14, a15 = a0, a0, a0, a0, a0, a0, a0, a0
            for i in range(IG):
                edge = o * IG + i
                # The edge's constants, a scalar division per (item, channel): z' = (x - t) (k/s).
                a = Z_SCALE / tl.load(s_ptr + o * stride_so + i * stride_si).to(tl.float32)
                t = tl.load(t_ptr + o * stride_to + i * stride_ti).to(tl.float32)
                xv = tl.load(x_chan + tl.cast(i, tl.int64) * stride_xc, mask=in_image, other=0.0).to(tl.float32)
                psi = tl.where(in_image, wavelet_psi_folded((xv - t) * a, WAVELET, FAST), 0.0)
                w_edge = w_ptr + edge * KK
                a0 = _tap_acc(a0, psi, w_edge, 0, K0, KK, TAPS)
                a1 = _tap_acc(a1, psi, w_edge, 1, K0, KK, TAPS)
                a2 = _tap_acc(a2, psi, w_edge, 2, K0, KK, TAPS)
                a3 = _tap_acc(a3, psi, w_edge, 3, K0, KK, TAPS)
                a4 = _tap_acc(a4, psi, w_edge, 4, K0, KK, TAPS)
                a5 = _tap_acc(a5, psi, w_edge, 5, K0, KK, TAPS)
                a6 = _tap_acc(a6, psi, w_edge, 6, K0, KK, TAPS)
                a7 = _tap_acc(a7, psi, w_edge, 7, K0, KK, TAPS)
                a8 = _tap_acc(a8, psi, w_edge, 8, K0, KK, TAPS)
                a9 = _tap_acc(a9, psi, w_edge, 9, K0, KK, TAPS)
                a10 = _tap_acc(a10, psi, w_edge, 10, K0, KK, TAPS)
                a11 = _tap_acc(a11, psi, w_edge, 11, K0, KK, TAPS)
                a12 = _tap_acc(a12, psi, w_edge, 12, K0, KK, TAPS)
                a13 = _tap_acc(a13, psi, w_edge, 13, K0, KK, TAPS)
                a14 = _tap_acc(a14, psi, w_edge, 14, K0, KK, TAPS)
                a15 = _tap_acc(a15, psi, w_edge, 15, K0, KK, TAPS)
            # Every thread's reads of the slot (previous pass or item) are done before it is
            # overwritten, and every plane is written before it is read.
            tl.debug_barrier()
            _store_plane(slot, a0, h, 0, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a1, h, 1, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a2, h, 2, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a3, h, 3, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a4, h, 4, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a5, h, 5, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a6, h, 6, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a7, h, 7, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a8, h, 8, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a9, h, 9, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a10, h, 10, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a11, h, 11, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a12, h, 12, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a13, h, 13, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a14, h, 14, K0, KK, TAPS, HALO_BLOCK)
            _store_plane(slot, a15, h, 15, K0, KK, TAPS, HALO_BLOCK)
            tl.debug_barrier()
            for k in tl.static_range(TAPS):
                if K0 + k < KK:
                    shift = ((K0 + k) // KW) * (DH * HALO_W) + ((K0 + k) % KW) * DW  # tap (kh, kw)
                    out += tl.load(slot + k * HALO_BLOCK + base + shift)
        y_ptrs = y_ptr + (b.to(tl.int64) * OUT + o) * (HO * WO) + (oh * WO + ow)
        tl.store(y_ptrs, (out * W_SCALE).to(y_ptr.dtype.element_ty), mask=in_tile & (oh < HO) & (ow < WO))


def max_halo(kernel_taps: int) -> int:
    """The largest input halo (pixels) a forward program holds for a kernel of this many taps."""
    return min(MAX_TILE, max(64, ACC_ELEMENTS // min(TAPS_PER_PASS, kernel_taps)))


def kernel_fits(kernel: tuple, dilation: tuple) -> bool:
    """Whether the forward can tile a (KH, KW) kernel with this dilation: the input pixels one
    output pixel reads must fit a program's halo."""
    (KH, KW), (DH, DW) = kernel, dilation
    return ((KH - 1) * DH + 1) * ((KW - 1) * DW + 1) <= max_halo(KH * KW)


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
    taps = min(TAPS_PER_PASS, KH * KW)
    tiles = plan_forward_tiles(HO, WO, KH, KW, SH, SW, DH, DW, IG, max_halo(KH * KW))
    (z_scale, w_scale), _ = wavelet_folds(wavelet)
    tiles_per_image = tiles.tiles_h * tiles.tiles_w
    n_items = B * tiles_per_image * OUT
    programs = min(n_items, PROGRAMS_PER_SM * sm_count(x.device))
    scratch = torch.empty((programs, taps, tiles.halo_block), dtype=torch.float32, device=x.device)
    _wavkan_conv_fwd_kernel[(programs,)](
        x, scale, translation, weights.contiguous(), y, scratch,
        H, W, OUT, IG, OUT // groups, HO, WO, tiles.tiles_w, tiles_per_image, n_items,
        *x.stride(), *scale.stride(), *translation.stride(), pt, pl,
        SH=SH, SW=SW, DH=DH, DW=DW, KH=KH, KW=KW,
        TILE_H=tiles.tile_h, TILE_W=tiles.tile_w, HALO_H=tiles.halo_h, HALO_W=tiles.halo_w,
        OUT_BLOCK=tiles.out_block, HALO_BLOCK=tiles.halo_block, TAPS=taps,
        Z_SCALE=z_scale, W_SCALE=w_scale, WIDE=needs_wide_offsets(x), WAVELET=wavelet.code, FAST=x.is_cuda, num_warps=NUM_WARPS,
    )  # fmt: skip
    return y
