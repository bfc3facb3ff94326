"""Tile planning and offset widths for the convolution kernels.

Both passes tile the image plane of one batch row: the forward by output tiles (each with the
input halo its taps read), the backward by input tiles, which partition the image. A tile is a
rectangle of ``rows x cols`` pixels flattened row-major into a power-of-two ``arange``; its halo
likewise.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import triton
import triton.language as tl

from .launch import cdiv

# The largest flattened tile or halo (elements per channel row held in registers).
MAX_TILE = 1024
# Relative costs, in clocks of one SM's exp unit (16 lanes): a wavelet value (one MUFU.EX2; its
# few FMA-pipe instructions run beside it), a tap FMA (128 lanes), a scratch store or load
# (32 lanes), the per-channel and per-tile loads and index arithmetic.
_COST_VALUE, _COST_FMA, _COST_SHIFT = 1.0, 0.125, 0.5
_COST_CHANNEL, _COST_TILE = 16.0, 64.0


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class ForwardTiles(NamedTuple):
    tile_h: int
    tile_w: int
    halo_h: int
    halo_w: int
    out_block: int
    halo_block: int
    tiles_h: int
    tiles_w: int


@functools.lru_cache(maxsize=256)
def plan_forward_tiles(H: int, W: int, HO: int, WO: int, KH: int, KW: int, SH: int, SW: int, DH: int, DW: int,
                       IG: int = 1, max_halo: int = MAX_TILE) -> ForwardTiles:  # fmt: skip
    """The output tile (tile_h x tile_w) of least estimated cost over the whole output plane.

    A tile's halo is the input its taps read, clipped to the H x W image: padding holds no
    wavelet values, so an image that fits one halo is evaluated once per (o, i) pixel, none at
    borders twice (a halo that reaches past one side of the image slides inside it, so every
    tile's halo has the same size). Cost per input channel: a wavelet value and a tap FMA per
    pixel of the halo's power-of-two block (values at tile borders are computed by every tile
    whose halo holds them); per tile, the taps' scratch store and load; the halo at most
    ``max_halo`` pixels."""
    KK = KH * KW
    best = None
    for th in range(1, HO + 1):
        hh = min(H, (th - 1) * SH + (KH - 1) * DH + 1)
        if hh > max_halo:
            break
        for tw in range(1, WO + 1):
            hw = min(W, (tw - 1) * SW + (KW - 1) * DW + 1)
            if hh * hw > max_halo:
                break
            halo, out = next_pow2(hh * hw), next_pow2(th * tw)
            per_tile = IG * (_COST_CHANNEL + halo * (_COST_VALUE + KK * _COST_FMA)) + KK * _COST_SHIFT * (halo + out)
            cost = cdiv(HO, th) * cdiv(WO, tw) * (_COST_TILE + per_tile)
            if best is None or cost < best[0]:
                best = (cost, th, tw, hh, hw)
    if best is None:
        raise ValueError(
            f"the triton backend takes kernels whose dilated extent fits {max_halo} input pixels "
            f"(got kernel {(KH, KW)} with dilation {(DH, DW)}); use backend='reference'"
        )
    _, th, tw, hh, hw = best
    return ForwardTiles(th, tw, hh, hw, next_pow2(th * tw), next_pow2(hh * hw), cdiv(HO, th), cdiv(WO, tw))


class BackwardTiles(NamedTuple):
    tile_h: int
    tile_w: int
    tile_block: int
    tiles_h: int
    tiles_w: int


@functools.lru_cache(maxsize=256)
def plan_backward_tiles(H: int, W: int, max_tile: int = MAX_TILE) -> BackwardTiles:
    """The input tile (tile_h x tile_w, at most ``max_tile`` pixels) for both backward passes:
    input tiles partition the image, so each wavelet value and derivative is computed once;
    the cost counts the padded power-of-two blocks and a per-tile overhead."""
    best = None
    for th in range(1, min(H, max_tile) + 1):
        for tw in range(1, min(W, max_tile // th) + 1):
            cost = cdiv(H, th) * cdiv(W, tw) * (_COST_TILE + next_pow2(th * tw))  # values, once each
            if best is None or cost < best[0]:
                best = (cost, th, tw)
    _, th, tw = best
    return BackwardTiles(th, tw, next_pow2(th * tw), cdiv(H, th), cdiv(W, tw))


def wavelet_folds(wavelet) -> tuple:
    """((k, m), (k, P, D)): the constants the device functions fold out of a wavelet (they
    evaluate psi / m, or psi / P and dpsi / D, at k z; see ``kernels.device``). Read from the
    catalogue (``Wavelet.fold``, ``Wavelet.fold_bwd``) where it declares them, else from the
    device module's tables."""
    if hasattr(wavelet, "fold"):
        return tuple(wavelet.fold), tuple(wavelet.fold_bwd)
    from . import device

    return device.FOLD[wavelet.code], device.FOLD_BWD[wavelet.code]


def needs_wide_offsets(*tensors) -> bool:
    """Whether an offset inside one batch row (over channels and pixels) of any of these 4-D
    tensors can pass int32: then the kernels compute such offsets in 64 bits."""
    return any(sum((n - 1) * abs(st) for n, st in zip(t.shape[1:], t.stride()[1:])) >= 2**31 - 1 for t in tensors)


@triton.jit
def index(v, WIDE: tl.constexpr):
    """v as an offset: 64-bit where ``needs_wide_offsets`` said so, else as it is (int32)."""
    if WIDE:
        return v.to(tl.int64)
    else:
        return v
