"""Fused convolutional forward:
``y[b,o,p] = sum_{i,k} w[o,i,k] psi((x[b, g(o) IG + i, p*stride + k*dilation - pad] - t[o,i]) / s[o,i])``
(2-D; a 1-D convolution is a row of height 1; see ``wavkan.reference_conv``).

The sums are taken in the order that keeps every wavelet value in the register that computed
it. With h a pixel of the input halo that an output tile reads,

    S_k[o, h] = sum_i w[o,i,k] psi[o,i,h]          (per tap k: the channel sum first, in place)
    y[o, p]   = sum_k S_k[o, h(p, k)]               (then the taps' spatial shift, once)

Work items are (ROWS batch rows, output tile, output channel o); a persistent grid of programs
walks them. A tile's halo is the input its taps read, clipped to the image: padding holds no
wavelet values (its taps read zero), so where the image fits a halo (up to 1024 pixels: CIFAR's
32 x 32) psi is evaluated exactly once per (o, i, pixel). Small images (a deep net's 8 x 8 and
4 x 4) take several batch rows per program, so that a program's lanes (rows x halo pixels) fill
its threads. Per item and input channel i a program loads the halo of x once, evaluates psi
ONCE per (o, i, halo pixel) and adds it, times each tap's weight, to the tap's accumulator S_k:
one exp and one FMA per tap, all in registers (tap weights are scalars of the item); channel i
+ 1's operands are loaded before channel i's arithmetic. After the channel loop the S_k planes
go to the program's slot of a small scratch buffer (global memory, L1/L2 resident) and each
output pixel reads its K shifted values back (masked where a tap reads padding): the only data
movement between threads, once per (o, tap, pixel) instead of once per (o, i, tap, pixel), so
its cost is divided by in/groups. Taps are accumulated TAPS_PER_PASS at a time in named
registers (Triton has no register arrays); a kernel with more taps takes several passes, each
recomputing psi.

Neither the (B, out, in, H, W) wavelet tensor nor an unfolded input exists; y is written once
per element by one program: deterministic, no atomics. Extra memory: the scratch, programs x
taps x lanes fp32 (``persistent_programs``: PROGRAMS_PER_SM per SM, fewer where that would
pass SCRATCH_BYTES).

Cost per (o, i, halo pixel): one MUFU.EX2, the wavelet's FMA-pipe instructions (mexican_hat:
six with the (x - t) k/s) and one FMA per tap, plus the load of x and a share of the tap
weights' and the edge's loads (scalars of the item); about 24 instructions issued per value for
a 3 x 3 kernel (sm_90 SASS). Where an image needs several tiles, halos of neighbouring tiles
overlap, so pixels at tile borders are computed by each tile that reads them
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

from .conv_tiles import MAX_TILE, index, needs_wide_offsets, next_pow2, plan_forward_tiles, wavelet_folds
from .device import wavelet_psi_folded
from .launch import cdiv, sm_count

TAPS_PER_PASS = 16
# Tap accumulators' elements a thread holds (fp32 registers); a program takes 4 warps, or 8
# where its taps x halo block need more (``num_warps``).
ACC_PER_THREAD = 72
MAX_WARPS = 8
# The persistent grid's scratch, at most (``persistent_programs``): 80 MB holds 16 programs per
# SM of a 3 x 3 kernel's slots on 132 SMs.
SCRATCH_BYTES = 80 << 20
# Registers per thread at 4 warps (``launch_options``).
MAXNREG = 128
# Lanes (batch rows x halo pixels) a program fills at least, where the batch allows.
MIN_LANES = 1024
# Persistent programs per SM: about 3 are resident (registers); more programs even out the
# items per program (16 measured 2-15% faster than 8 on the benchmark's layers, 32 a few %
# more at twice the scratch).
PROGRAMS_PER_SM = 16


@triton.jit
def _tap_weight(w_edge, k: tl.constexpr, K0: tl.constexpr, KK: tl.constexpr, TAPS: tl.constexpr):
    """w[o, i, K0 + k] for a tap that exists, else 0 (its accumulator is then never used)."""
    if (K0 + k < KK) and (k < TAPS):
        w = tl.load(w_edge + (K0 + k)).to(tl.float32)
    else:
        w = 0.0
    return w


@triton.jit
def _tap_acc(acc, psi, w, k: tl.constexpr, K0: tl.constexpr, KK: tl.constexpr, TAPS: tl.constexpr):
    """acc + w psi for a tap that exists (else acc unchanged, and unused)."""
    if K0 + k < KK:
        if k < TAPS:
            acc += w * psi
    return acc


@triton.jit
def _store_plane(slot, acc, offs, k: tl.constexpr, K0: tl.constexpr, KK: tl.constexpr, TAPS: tl.constexpr,
                 HALO_BLOCK: tl.constexpr):  # fmt: skip
    if K0 + k < KK:
        if k < TAPS:
            tl.store(slot + k * HALO_BLOCK + offs, acc)


@triton.jit
def _channel_operands(x_chan, s_edge, t_edge, w_edge, i, stride_xc, stride_si, stride_ti,
                      K0: tl.constexpr, KK: tl.constexpr, TAPS: tl.constexpr):  # fmt: skip
    """Channel i's halo of x, its edge's s and t, and its taps' weights (up to 16)."""
    xv = tl.load(x_chan + tl.cast(i, tl.int64) * stride_xc).to(tl.float32)
    s = tl.load(s_edge + i * stride_si).to(tl.float32)
    t = tl.load(t_edge + i * stride_ti).to(tl.float32)
    w_i = w_edge + i * KK
    return (xv, s, t,
            _tap_weight(w_i, 0, K0, KK, TAPS), _tap_weight(w_i, 1, K0, KK, TAPS), _tap_weight(w_i, 2, K0, KK, TAPS),
            _tap_weight(w_i, 3, K0, KK, TAPS), _tap_weight(w_i, 4, K0, KK, TAPS), _tap_weight(w_i, 5, K0, KK, TAPS),
            _tap_weight(w_i, 6, K0, KK, TAPS), _tap_weight(w_i, 7, K0, KK, TAPS), _tap_weight(w_i, 8, K0, KK, TAPS),
            _tap_weight(w_i, 9, K0, KK, TAPS), _tap_weight(w_i, 10, K0, KK, TAPS), _tap_weight(w_i, 11, K0, KK, TAPS),
            _tap_weight(w_i, 12, K0, KK, TAPS), _tap_weight(w_i, 13, K0, KK, TAPS), _tap_weight(w_i, 14, K0, KK, TAPS),
            _tap_weight(w_i, 15, K0, KK, TAPS))  # fmt: skip


@triton.jit
def _wavkan_conv_fwd_kernel(
    x_ptr, s_ptr, t_ptr, w_ptr, y_ptr, scratch_ptr,
    B, H, W, OUT, IG, OG, HO, WO, TILES_W, TILES_PER_IMAGE, N_ITEMS,
    stride_xb, stride_xc, stride_xh, stride_xw, stride_so, stride_si, stride_to, stride_ti,
    PAD_T, PAD_L,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
    OUT_BLOCK: tl.constexpr, HALO_BLOCK: tl.constexpr, ROWS: tl.constexpr, TAPS: tl.constexpr,
    Z_SCALE: tl.constexpr, W_SCALE: tl.constexpr, WIDE: tl.constexpr, WAVELET: tl.constexpr, FAST: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    KK: tl.constexpr = KH * KW
    PASSES: tl.constexpr = (KH * KW + TAPS - 1) // TAPS
    HALO_PIX: tl.constexpr = HALO_H * HALO_W
    LANES: tl.constexpr = ROWS * HALO_BLOCK
    slot = scratch_ptr + pid.to(tl.int64) * (TAPS * LANES)
    # Lane l holds halo pixel l % HALO_BLOCK of the item's batch row l // HALO_BLOCK. Lanes past
    # the halo repeat its last pixel, and rows past B the last row: their values are never read
    # or stored, so the channel loop needs no mask.
    lane = tl.arange(0, LANES)
    hc = tl.minimum(lane % HALO_BLOCK, HALO_PIX - 1)
    # Output lane m: pixel j = m % OUT_BLOCK of the tile, batch row m // OUT_BLOCK.
    m = tl.arange(0, ROWS * OUT_BLOCK)
    j = m % OUT_BLOCK
    row_out = m // OUT_BLOCK
    in_tile = j < TILE_H * TILE_W
    for item in range(pid, N_ITEMS, tl.num_programs(0)):
        o = item % OUT
        rest = item // OUT
        tile = rest % TILES_PER_IMAGE
        b0 = (rest // TILES_PER_IMAGE) * ROWS
        oh0 = (tile // TILES_W) * TILE_H
        ow0 = (tile % TILES_W) * TILE_W
        # The halo is the window of the image that the tile's taps read, clipped to the image
        # (padding holds no wavelet values: its taps read zero), slid inside the image where the
        # tile's reach is clipped (``conv_tiles.plan_forward_tiles`` sizes it).
        ih0 = tl.minimum(tl.maximum(oh0 * SH - PAD_T, 0), H - HALO_H)
        iw0 = tl.minimum(tl.maximum(ow0 * SW - PAD_L, 0), W - HALO_W)
        rows = tl.minimum(b0 + lane // HALO_BLOCK, B - 1)
        x_pix = index(ih0 + hc // HALO_W, WIDE) * stride_xh + index(iw0 + hc % HALO_W, WIDE) * stride_xw
        x_chan = x_ptr + rows.to(tl.int64) * stride_xb + ((o // OG) * IG).to(tl.int64) * stride_xc + x_pix
        s_edge = s_ptr + o * stride_so
        t_edge = t_ptr + o * stride_to
        w_edge = w_ptr + o * IG * KK
        oh = oh0 + j // TILE_W
        ow = ow0 + j % TILE_W
        # Output pixel j's tap (kh, kw) reads input row r0 + kh DH, column c0 + kw DW: from the
        # halo where that is inside the image, else nothing.
        r0 = oh * SH - PAD_T
        c0 = ow * SW - PAD_L
        base = row_out * HALO_BLOCK + (r0 - ih0) * HALO_W + (c0 - iw0)
        out = tl.zeros((ROWS * OUT_BLOCK,), dtype=tl.float32)
        for pass_ in tl.static_range(PASSES):
            K0 = pass_ * TAPS
            a0 = tl.zeros((LANES,), dtype=tl.float32)
            a1, a2, a3, a4, a5, a6, a7 = a0, a0, a0, a0, a0, a0, a0
            a8, a9, a10, a11, a12, a13, a14, a15 = a0, a0, a0, a0, a0, a0, a0, a0
            # Channel i + 1's operands are loaded before channel i's arithmetic, so their
            # latency hides behind it (Triton pipelines only loads that feed a dot).
            (xn, sn, tn, n0, n1, n2, n3, n4, n5, n6, n7, n8, n9, n10, n11, n12, n13, n14, n15) = _channel_operands(
                x_chan, s_edge, t_edge, w_edge, 0, stride_xc, stride_si, stride_ti, K0, KK, TAPS)
            for i in range(IG):
                (xv, s, t, w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15) = (
                    xn, sn, tn, n0, n1, n2, n3, n4, n5, n6, n7, n8, n9, n10, n11, n12, n13, n14, n15)
                (xn, sn, tn, n0, n1, n2, n3, n4, n5, n6, n7, n8, n9, n10, n11, n12, n13, n14, n15) = _channel_operands(
                    x_chan, s_edge, t_edge, w_edge, tl.minimum(i + 1, IG - 1), stride_xc, stride_si, stride_ti,
                    K0, KK, TAPS)
                # z' = (x - t) (k/s): one scalar division per (item, channel).
                psi = wavelet_psi_folded((xv - t) * (Z_SCALE / s), WAVELET, FAST)
                a0 = _tap_acc(a0, psi, w0, 0, K0, KK, TAPS)
                a1 = _tap_acc(a1, psi, w1, 1, K0, KK, TAPS)
                a2 = _tap_acc(a2, psi, w2, 2, K0, KK, TAPS)
                a3 = _tap_acc(a3, psi, w3, 3, K0, KK, TAPS)
                a4 = _tap_acc(a4, psi, w4, 4, K0, KK, TAPS)
                a5 = _tap_acc(a5, psi, w5, 5, K0, KK, TAPS)
                a6 = _tap_acc(a6, psi, w6, 6, K0, KK, TAPS)
                a7 = _tap_acc(a7, psi, w7, 7, K0, KK, TAPS)
                a8 = _tap_acc(a8, psi, w8, 8, K0, KK, TAPS)
                a9 = _tap_acc(a9, psi, w9, 9, K0, KK, TAPS)
                a10 = _tap_acc(a10, psi, w10, 10, K0, KK, TAPS)
                a11 = _tap_acc(a11, psi, w11, 11, K0, KK, TAPS)
                a12 = _tap_acc(a12, psi, w12, 12, K0, KK, TAPS)
                a13 = _tap_acc(a13, psi, w13, 13, K0, KK, TAPS)
                a14 = _tap_acc(a14, psi, w14, 14, K0, KK, TAPS)
                a15 = _tap_acc(a15, psi, w15, 15, K0, KK, TAPS)
            # Every thread's reads of the slot (previous pass or item) are done before it is
            # overwritten, and every plane is written before it is read.
            tl.debug_barrier()
            _store_plane(slot, a0, lane, 0, K0, KK, TAPS, LANES)
            _store_plane(slot, a1, lane, 1, K0, KK, TAPS, LANES)
            _store_plane(slot, a2, lane, 2, K0, KK, TAPS, LANES)
            _store_plane(slot, a3, lane, 3, K0, KK, TAPS, LANES)
            _store_plane(slot, a4, lane, 4, K0, KK, TAPS, LANES)
            _store_plane(slot, a5, lane, 5, K0, KK, TAPS, LANES)
            _store_plane(slot, a6, lane, 6, K0, KK, TAPS, LANES)
            _store_plane(slot, a7, lane, 7, K0, KK, TAPS, LANES)
            _store_plane(slot, a8, lane, 8, K0, KK, TAPS, LANES)
            _store_plane(slot, a9, lane, 9, K0, KK, TAPS, LANES)
            _store_plane(slot, a10, lane, 10, K0, KK, TAPS, LANES)
            _store_plane(slot, a11, lane, 11, K0, KK, TAPS, LANES)
            _store_plane(slot, a12, lane, 12, K0, KK, TAPS, LANES)
            _store_plane(slot, a13, lane, 13, K0, KK, TAPS, LANES)
            _store_plane(slot, a14, lane, 14, K0, KK, TAPS, LANES)
            _store_plane(slot, a15, lane, 15, K0, KK, TAPS, LANES)
            tl.debug_barrier()
            for k in tl.static_range(TAPS):
                if K0 + k < KK:
                    kh = (K0 + k) // KW
                    kw = (K0 + k) % KW
                    ih = r0 + kh * DH
                    iw = c0 + kw * DW
                    valid = in_tile & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                    out += tl.load(slot + k * LANES + base + (kh * DH * HALO_W + kw * DW), mask=valid, other=0.0)
        b = b0 + row_out
        y_ptrs = y_ptr + (b.to(tl.int64) * OUT + o) * (HO * WO) + (oh * WO + ow)
        tl.store(y_ptrs, (out * W_SCALE).to(y_ptr.dtype.element_ty), mask=in_tile & (oh < HO) & (ow < WO) & (b < B))


def max_halo(kernel_taps: int) -> int:
    """The largest input halo (pixels) a forward program holds for a kernel of this many taps."""
    return min(MAX_TILE, max(64, ACC_PER_THREAD * 32 * MAX_WARPS // min(TAPS_PER_PASS, kernel_taps)))


def batch_rows(B: int, halo_block: int) -> int:
    """Batch rows per program: enough that a small image's halo blocks fill at least
    ``MIN_LANES`` lanes (a 4 x 4 image alone would leave most of 128 threads idle)."""
    return min(next_pow2(B), max(1, MIN_LANES // halo_block))


def num_warps(taps: int, lanes: int) -> int:
    """4 warps, or 8 where the tap accumulators would take more than ACC_PER_THREAD registers."""
    return 4 if taps * lanes <= ACC_PER_THREAD * 32 * 4 else MAX_WARPS


def launch_options(taps: int, lanes: int) -> dict:
    """num_warps, and at 4 warps a cap of MAXNREG registers on GPUs (4 programs resident per
    SM instead of 3: measured 3-19% faster on the benchmark's CIFAR, 1-D and strided layers,
    within 3% on the others)."""
    warps = num_warps(taps, lanes)
    return dict(num_warps=warps, maxnreg=MAXNREG) if warps == 4 and MAXNREG else dict(num_warps=warps)


def persistent_programs(n_items: int, taps: int, lanes: int, sms: int) -> int:
    """Programs of the persistent grid: PROGRAMS_PER_SM per SM, fewer where their scratch slots
    (taps x lanes fp32 each) would pass SCRATCH_BYTES (a 5 x 5 kernel's 16-tap slots), never
    fewer than one per SM, never more than the items."""
    by_memory = SCRATCH_BYTES // (taps * lanes * 4)
    return max(1, min(n_items, PROGRAMS_PER_SM * sms, max(sms, by_memory)))


def kernel_fits(kernel: tuple, dilation: tuple, spatial: tuple = None) -> bool:
    """Whether the forward can tile a (KH, KW) kernel with this dilation on (H, W) images: the
    input pixels one output pixel reads, clipped to the image (halos hold no padding), must fit
    a program's halo. Without ``spatial``, the kernel's whole reach must fit."""
    (KH, KW), (DH, DW) = kernel, dilation
    reach_h, reach_w = (KH - 1) * DH + 1, (KW - 1) * DW + 1
    if spatial is not None:
        reach_h, reach_w = min(reach_h, spatial[0]), min(reach_w, spatial[1])
    return reach_h * reach_w <= max_halo(KH * KW)


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
    tiles = plan_forward_tiles(H, W, HO, WO, KH, KW, SH, SW, DH, DW, IG, max_halo(KH * KW))
    rows = batch_rows(B, tiles.halo_block)
    lanes = rows * tiles.halo_block
    (z_scale, w_scale), _ = wavelet_folds(wavelet)
    tiles_per_image = tiles.tiles_h * tiles.tiles_w
    n_items = cdiv(B, rows) * tiles_per_image * OUT
    programs = persistent_programs(n_items, taps, lanes, sm_count(x.device))
    scratch = torch.empty((programs, taps, lanes), dtype=torch.float32, device=x.device)
    _wavkan_conv_fwd_kernel[(programs,)](
        x, scale, translation, weights.contiguous(), y, scratch,
        B, H, W, OUT, IG, OUT // groups, HO, WO, tiles.tiles_w, tiles_per_image, n_items,
        *x.stride(), *scale.stride(), *translation.stride(), pt, pl,
        SH=SH, SW=SW, DH=DH, DW=DW, KH=KH, KW=KW,
        TILE_H=tiles.tile_h, TILE_W=tiles.tile_w, HALO_H=tiles.halo_h, HALO_W=tiles.halo_w,
        OUT_BLOCK=tiles.out_block, HALO_BLOCK=tiles.halo_block, ROWS=rows, TAPS=taps,
        Z_SCALE=z_scale, W_SCALE=w_scale, WIDE=needs_wide_offsets(x), WAVELET=wavelet.code, FAST=x.is_cuda,
        **launch_options(taps, lanes),
    )  # fmt: skip
    return y
