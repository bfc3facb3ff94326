"""Fused backward: grad_x and the three parameter gradients, psi and dpsi recomputed.

With g = dL/dy (B, out), a = 1/s, z = (x - t) a and psi, dpsi at z[b, o, i] (the kernels
evaluate them at k z, scaled: ``Wavelet.fold_bwd``, undone in the packing and the epilogue):

    grad_x[b, i] = sum_o g[b, o] (w a)[o, i] dpsi        reduce over out: tile (B, in)
    grad_w[o, i] = sum_b g[b, o] psi                      reduce over B:   tile (out, in)
    grad_t[o, i] = -(w a)[o, i] sum_b g[b, o] dpsi
    grad_s[o, i] = -(w a)[o, i] sum_b g[b, o] dpsi z

Two kernels, one per reduction axis, each holding its accumulators in registers for the whole
loop: ``_wavkan_bwd_dx_kernel`` (tile (BLOCK_B, BLOCK_IN), loop over out) and
``_wavkan_bwd_dparams_kernel`` (tile (BLOCK_OUT, BLOCK_IN), loop over B). SPLIT programs may
share a tile's loop (``launch.balanced_plan``; the parameter pass only at large B, from the
rows its config sets, or when its tiles cannot fill the GPU) and write fp32 partials that the
tile's last program sums in a fixed order (``partials.split_arrive``): bitwise-deterministic
results, one launch per pass.

Like the forward, the loops read only staged operands (``staging.py``): fp32, padded to whole
tiles, addressed from the loop index, so their loads are unmasked and need one address per
step. grad_x reads grad_y transposed (out, B_PAD) and the packed [k/s, t, D w/s]; the
parameter pass reads x and grad_y as padded fp32 rows (no copy when they already are). Both
evaluate psi / P and dpsi / D at k z (``Wavelet.fold_bwd``), the constants folded into the
packed weight and the epilogue, which keeps log2(e)/2 and the normalisation out of the loop.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .device import wavelet_grad_terms, wavelet_psi_dpsi_folded
from .launch import (ColumnPassPlan, DirectLauncher, PlannedLaunch, balanced_plan, cdiv, column_pass_layout, planned,
                     split_buffers, stream_key)
from .partials import split_arrive, split_sum, store_tile
from .staging import cached_edge_pack, stage_transposed
from .tuning import KernelConfig, default_config, kernel_meta


@triton.jit
def _dx_operands(g_ptr, stride_go, pack_ptr, o, IN_PAD, PLANE, PLANE2, g_rows, offs_i):
    """Step o's operands: g[:, o] (BLOCK_B, read in place) and packed row o [k/s, t, D w/s]
    (BLOCK_IN, padded to whole tiles: unmasked, aligned loads)."""
    ol = tl.cast(o, tl.int64)
    edge = pack_ptr + ol * IN_PAD + offs_i
    g = tl.load(g_ptr + ol * stride_go + g_rows).to(tl.float32)
    return g, tl.load(edge), tl.load(edge + PLANE), tl.load(edge + PLANE2)


@triton.jit
def _dparams_operands(x_ptr, g_ptr, b, stride_xb, stride_gb, x_cols, g_cols):
    """Step b's operands: x[b, i-tile] and g[b, o-tile], read in place."""
    bl = tl.cast(b, tl.int64)
    return (tl.load(x_ptr + bl * stride_xb + x_cols).to(tl.float32),
            tl.load(g_ptr + bl * stride_gb + g_cols).to(tl.float32))


@triton.jit(do_not_specialize=["SPLIT", "OUT_PER_SPLIT", "STRIDE_PART"])  # as the forward's
def _wavkan_bwd_dx_kernel(
    x_ptr, g_ptr, pack_ptr, dx_ptr, part_ptr, counter_ptr,
    B, IN, OUT, IN_PAD, PLANE, PLANE2,
    stride_xb, stride_xi, stride_gb, stride_go, stride_db, stride_di,
    SPLIT, OUT_PER_SPLIT, STRIDE_PART,
    WAVELET: tl.constexpr, FAST: tl.constexpr, PREFETCH: tl.constexpr, UNROLL: tl.constexpr,
    G_ROWS_32: tl.constexpr, SPLIT_SUM: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_IN: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_i = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_i = pid_i * BLOCK_IN + tl.arange(0, BLOCK_IN)
    mask = (offs_b < B)[:, None] & (offs_i < IN)[None, :]
    rows = offs_b[:, None].to(tl.int64)
    cols = offs_i[None, :].to(tl.int64)
    x = tl.load(x_ptr + rows * stride_xb + cols * stride_xi, mask=mask, other=0.0).to(tl.float32)
    # g read in place, a column per step; rows past B re-read row B - 1 (never stored).
    if G_ROWS_32:  # int32 offsets where they fit (see the forward)
        g_rows = tl.minimum(offs_b, B - 1) * stride_gb
    else:
        g_rows = tl.minimum(offs_b, B - 1).to(tl.int64) * stride_gb

    o_start = pid_k * OUT_PER_SPLIT
    o_end = tl.minimum(o_start + OUT_PER_SPLIT, OUT)
    acc = tl.zeros((BLOCK_B, BLOCK_IN), dtype=tl.float32)
    g_next, a_next, t_next, ws_next = _dx_operands(g_ptr, stride_go, pack_ptr, o_start, IN_PAD, PLANE, PLANE2, g_rows, offs_i)
    for o in tl.range(o_start, o_end, loop_unroll_factor=UNROLL):
        if PREFETCH:  # next step's loads ahead of this step's arithmetic (see the forward)
            g, a, t, w_over_s = g_next, a_next, t_next, ws_next
            g_next, a_next, t_next, ws_next = _dx_operands(
                g_ptr, stride_go, pack_ptr, tl.minimum(o + 1, o_end - 1), IN_PAD, PLANE, PLANE2, g_rows, offs_i)
        else:
            g, a, t, w_over_s = _dx_operands(g_ptr, stride_go, pack_ptr, o, IN_PAD, PLANE, PLANE2, g_rows, offs_i)
        zs = (x - t[None, :]) * a[None, :]  # k z, exactly 0 where x == t
        _, dpsi = wavelet_psi_dpsi_folded(zs, WAVELET, FAST)
        acc += (g[:, None] * w_over_s[None, :]) * dpsi

    dx_ptrs = dx_ptr + rows * stride_db + cols * stride_di
    store_tile(acc, dx_ptrs, mask, part_ptr, rows * IN + cols, STRIDE_PART, counter_ptr, SPLIT, SPLIT_SUM)


@triton.jit(do_not_specialize=["SPLIT", "ROWS_PER_SPLIT", "PLANE"])
def _wavkan_bwd_dparams_kernel(
    x_ptr, g_ptr, s_ptr, t_ptr, w_ptr, ds_ptr, dt_ptr, dw_ptr, part_ptr, counter_ptr,
    B, IN, OUT,
    stride_xb, stride_xi, stride_gb, stride_go,
    stride_so, stride_si, stride_to, stride_ti, stride_wo, stride_wi,
    SPLIT, ROWS_PER_SPLIT, PLANE, z_scale, psi_scale, dpsi_scale,
    WAVELET: tl.constexpr, FAST: tl.constexpr, PREFETCH: tl.constexpr, UNROLL: tl.constexpr,
    EVEN_IN: tl.constexpr, EVEN_OUT: tl.constexpr, SPLIT_SUM: tl.constexpr, BLOCK_OUT: tl.constexpr,
    BLOCK_IN: tl.constexpr,
):
    pid_o = tl.program_id(0)
    pid_i = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_o = pid_o * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    offs_i = pid_i * BLOCK_IN + tl.arange(0, BLOCK_IN)
    mask_o = offs_o < OUT
    mask_i = offs_i < IN
    mask = mask_o[:, None] & mask_i[None, :]
    o = offs_o[:, None].to(tl.int64)
    i = offs_i[None, :].to(tl.int64)
    s = tl.load(s_ptr + o * stride_so + i * stride_si, mask=mask, other=1.0).to(tl.float32)
    t = tl.load(t_ptr + o * stride_to + i * stride_ti, mask=mask, other=0.0).to(tl.float32)
    inv_s = 1.0 / s
    # fp32 whatever the caller's scalar type (Inductor passes Python floats as fp64).
    z_scale = tl.cast(z_scale, tl.float32)
    psi_scale = tl.cast(psi_scale, tl.float32)
    dpsi_scale = tl.cast(dpsi_scale, tl.float32)
    a = inv_s * z_scale
    # x and g read in place, a row per step; columns past in / out re-read the last one
    # (their sums are never stored), so the loop's loads need no mask. Where the tiles divide
    # in (out), the offsets stay unclamped, so unit-stride rows load as vectors.
    # (int32 offsets: the caller passes column strides whose span fits 32 bits, see below.)
    if EVEN_IN:
        x_cols = offs_i * stride_xi
    else:
        x_cols = tl.minimum(offs_i, IN - 1) * stride_xi
    if EVEN_OUT:
        g_cols = offs_o * stride_go
    else:
        g_cols = tl.minimum(offs_o, OUT - 1) * stride_go

    b_start = pid_k * ROWS_PER_SPLIT
    b_end = tl.minimum(b_start + ROWS_PER_SPLIT, B)
    acc_w = tl.zeros((BLOCK_OUT, BLOCK_IN), dtype=tl.float32)
    acc_q = tl.zeros((BLOCK_OUT, BLOCK_IN), dtype=tl.float32)
    acc_qz = tl.zeros((BLOCK_OUT, BLOCK_IN), dtype=tl.float32)
    x_next, g_next = _dparams_operands(x_ptr, g_ptr, b_start, stride_xb, stride_gb, x_cols, g_cols)
    for b in tl.range(b_start, b_end, loop_unroll_factor=UNROLL):
        if PREFETCH:  # next step's loads ahead of this step's arithmetic (see the forward)
            xr, g = x_next, g_next
            x_next, g_next = _dparams_operands(x_ptr, g_ptr, tl.minimum(b + 1, b_end - 1), stride_xb, stride_gb, x_cols, g_cols)
        else:
            xr, g = _dparams_operands(x_ptr, g_ptr, b, stride_xb, stride_gb, x_cols, g_cols)
        zs = (xr[None, :] - t) * a  # k z: exact for any |t/s|, exactly 0 where x == t
        g_psi, g_dpsi, g_dpsi_zs = wavelet_grad_terms(zs, g[:, None], WAVELET, FAST)
        acc_w += g_psi
        acc_q += g_dpsi
        acc_qz += g_dpsi_zs

    last = True
    if SPLIT_SUM:
        # Partials (SPLIT, 3, OUT, IN) fp32; the tile's last program sums them, then applies
        # the epilogue below.
        plane = tl.cast(PLANE, tl.int64)  # OUT * IN
        part_offs = o * IN + i
        stride_part = 3 * plane
        base = part_ptr + pid_k.to(tl.int64) * stride_part + part_offs
        tl.store(base, acc_w, mask=mask)
        tl.store(base + plane, acc_q, mask=mask)
        tl.store(base + 2 * plane, acc_qz, mask=mask)
        tile = pid_o * tl.num_programs(1) + pid_i
        last = split_arrive(counter_ptr, tile, SPLIT)
        if last:
            zero = tl.zeros((BLOCK_OUT, BLOCK_IN), dtype=tl.float32)
            acc_w = split_sum(zero, part_ptr, part_offs, stride_part, mask, SPLIT)
            acc_q = split_sum(zero, part_ptr + plane, part_offs, stride_part, mask, SPLIT)
            acc_qz = split_sum(zero, part_ptr + 2 * plane, part_offs, stride_part, mask, SPLIT)
            tl.store(counter_ptr + tile, 0)
    if last:
        # grad_w = P sum g psi'; grad_t = -(w D / s) sum g dpsi'; grad_s = grad_t's factor times
        # sum g dpsi' z = sum g dpsi' zs / k.
        w = tl.load(w_ptr + o * stride_wo + i * stride_wi, mask=mask, other=0.0).to(tl.float32)
        wd = w * inv_s * -dpsi_scale
        dst = o * IN + i
        tl.store(dw_ptr + dst, (acc_w * psi_scale).to(dw_ptr.dtype.element_ty), mask=mask)
        tl.store(dt_ptr + dst, (wd * acc_q).to(dt_ptr.dtype.element_ty), mask=mask)
        tl.store(ds_ptr + dst, (wd * (acc_qz / z_scale)).to(ds_ptr.dtype.element_ty), mask=mask)


_LAUNCH_DX = DirectLauncher(_wavkan_bwd_dx_kernel, own=("pack_ptr", "part_ptr", "counter_ptr"))
_LAUNCH_DPARAMS = DirectLauncher(
    _wavkan_bwd_dparams_kernel, own=("part_ptr", "counter_ptr"))


@functools.lru_cache(maxsize=4096)
def _grad_x_plan(B: int, IN: int, OUT: int, x_strides: tuple, g_strides: tuple, device: torch.device, wav,
                 config: KernelConfig | None) -> ColumnPassPlan:  # fmt: skip
    """What ``wavkan_bwd_dx`` launches with that follows from the shapes, the operands'
    strides, the device, the wavelet and the config (dx is a new contiguous tensor, the pack a
    contiguous (3, out, pad) one)."""
    cfg = config or default_config("bwd_dx", device, B, wav)
    pad, grid, rows_pad, (stride_gb, stride_go), per_split = column_pass_layout(cfg, B, IN, OUT, g_strides, device)
    plane = OUT * pad
    scalars = (B, IN, OUT, pad, plane, 2 * plane, *x_strides, stride_gb, stride_go, IN, 1, grid[2], per_split, B * IN)
    meta = dict(kernel_meta(cfg, wav, device, ("BLOCK_B", "BLOCK_IN")), G_ROWS_32=B * stride_gb < 2**31,
                SPLIT_SUM=grid[2] > 1)
    launch = _LAUNCH_DX.plan(device, grid, scalars, meta)
    return ColumnPassPlan(launch, pad, cfg.stage, rows_pad, grid[2], grid[0] * grid[1], B * IN)


def wavkan_bwd_dx(grad, x, scale, translation, weights, wavelet, config: KernelConfig | None = None):
    """grad_x: (B, in) in x's dtype, for grad = dL/dy (B, out); any strides. One launch,
    planned once per shape (``_grad_x_plan``)."""
    B, IN = x.shape
    OUT = scale.shape[0]
    device = x.device
    dx = torch.empty((B, IN), dtype=x.dtype, device=device)
    if B == 0:
        return dx
    plan = planned(_grad_x_plan, B, IN, OUT, x.stride(), grad.stride(), device, wavelet, config)
    stream = stream_key(device)
    z_scale, _, dpsi_scale = wavelet.fold_bwd
    pack = cached_edge_pack(scale, translation, weights, plan.pad, True, z_scale, dpsi_scale, stream)
    gs = stage_transposed(grad, plan.rows_pad) if plan.stage else grad
    counters, part = split_buffers(device, stream, plan.split, plan.tiles, plan.partials, dx)
    _LAUNCH_DX.launch(plan.launch, stream, (x, gs, pack, dx, part, counters))
    return dx


class _ParamsPlan(NamedTuple):
    launch: PlannedLaunch
    split: int
    tiles: int
    partials: int  # fp32 elements per split partial (three planes)


@functools.lru_cache(maxsize=4096)
def _params_plan(B: int, IN: int, OUT: int, strides: tuple, device: torch.device, wav,
                 config: KernelConfig | None) -> _ParamsPlan:  # fmt: skip
    """What ``wavkan_bwd_dparams`` launches with that follows from the shapes, the strides of
    x, grad_y, scale, translation and weights (in that order), the device, the wavelet and the
    config."""
    cfg = config or default_config("bwd_dparams", device, B, wav)
    tiles = (cdiv(OUT, cfg.block_m), cdiv(IN, cfg.block_n))
    split, per_split = balanced_plan(tiles[0] * tiles[1], B, device, cfg)
    scalars = (B, IN, OUT, *strides, split, per_split, OUT * IN, *wav.fold_bwd)
    meta = dict(kernel_meta(cfg, wav, device, ("BLOCK_OUT", "BLOCK_IN")), EVEN_IN=IN % cfg.block_n == 0,
                EVEN_OUT=OUT % cfg.block_m == 0, SPLIT_SUM=split > 1)
    launch = _LAUNCH_DPARAMS.plan(device, (tiles[0], tiles[1], split), scalars, meta)
    return _ParamsPlan(launch, split, tiles[0] * tiles[1], 3 * OUT * IN)


def wavkan_bwd_dparams(grad, x, scale, translation, weights, wavelet, config: KernelConfig | None = None):
    """(grad_scale, grad_translation, grad_weights), each (out, in) contiguous in its
    parameter's dtype. One launch, planned once per shape (``_params_plan``)."""
    B, IN = x.shape
    OUT = scale.shape[0]
    device = x.device
    if B == 0:  # no rows: nothing to sum (the loop's first load would read past an empty x)
        return tuple(torch.zeros(p.shape, dtype=p.dtype, device=device) for p in (scale, translation, weights))
    # The kernel's column offsets are int32: a row whose span does not fit is copied first.
    if IN * x.stride(1) >= 2**31:
        x = x.contiguous()
    if OUT * grad.stride(1) >= 2**31:
        grad = grad.contiguous()
    strides = (*x.stride(), *grad.stride(), *scale.stride(), *translation.stride(), *weights.stride())
    plan = planned(_params_plan, B, IN, OUT, strides, device, wavelet, config)
    ds, dt, dw = (torch.empty((OUT, IN), dtype=p.dtype, device=device) for p in (scale, translation, weights))
    stream = stream_key(device)
    counters, part = split_buffers(device, stream, plan.split, plan.tiles, plan.partials, ds)
    _LAUNCH_DPARAMS.launch(plan.launch, stream, (x, grad, scale, translation, weights, ds, dt, dw, part, counters))
    return ds, dt, dw


def wavkan_bwd(grad, x, scale, translation, weights, wavelet, need_x: bool = True, need_params: bool = True):
    """(grad_x, grad_scale, grad_translation, grad_weights) for grad = dL/dy (B, out). Each pass
    runs only when asked for: ``need_x`` False returns None for grad_x (no grad_x pass),
    ``need_params`` False None for the three parameter gradients (no parameter pass)."""
    dx = wavkan_bwd_dx(grad, x, scale, translation, weights, wavelet) if need_x else None
    if not need_params:
        return dx, None, None, None
    ds, dt, dw = wavkan_bwd_dparams(grad, x, scale, translation, weights, wavelet)
    return dx, ds, dt, dw
