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
share a tile's loop (``config.balanced_split``; the parameter pass only from 1024 rows or when
its tiles cannot fill the GPU) and write fp32 partials, summed after in a fixed order
(``partials.sum_partials``): no atomics, bitwise-deterministic results.

Like the forward, the loops read only staged operands (``staging.py``): fp32, padded to whole
tiles, addressed from the loop index, so their loads are unmasked and need one address per
step. grad_x reads grad_y transposed (out, B_PAD) and the packed [k/s, t, D w/s]; the
parameter pass reads x and grad_y as padded fp32 rows (no copy when they already are). Both
evaluate psi / P and dpsi / D at k z (``Wavelet.fold_bwd``), the constants folded into the
packed weight and the epilogue, which keeps log2(e)/2 and the normalisation out of the loop.
Both compute z as (x - t) (k/s), never x (k/s) - t (k/s): exact for any |t/s| (see the
forward), and exactly 0 where x == t (meyer's dpsi jumps at 0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import cdiv, launch_split, plan_split
from .tuning import KernelConfig, default_config, loop_unroll
from .device import wavelet_grad_terms, wavelet_psi_dpsi_folded
from .partials import sum_partials
from .staging import pack_edge_constants, plane_offsets, stage_rows, stage_transposed


@triton.jit
def _dx_operands(gt_ptr, pack_ptr, o, B_PAD, IN_PAD, PLANE, PLANE2, offs_b, offs_i):
    """Step o's operands: g[:, o] (BLOCK_B, from the transposed staging) and packed row o
    [k/s, t, D w/s] (BLOCK_IN). Both are padded to whole tiles: unmasked, aligned loads."""
    ol = tl.cast(o, tl.int64)
    edge = pack_ptr + ol * IN_PAD + offs_i
    return tl.load(gt_ptr + ol * B_PAD + offs_b), tl.load(edge), tl.load(edge + PLANE), tl.load(edge + PLANE2)


@triton.jit
def _dparams_operands(xs_ptr, gs_ptr, b, IN_PAD, OUT_PAD, offs_i, offs_o):
    """Step b's operands: x[b, i-tile] and g[b, o-tile] from fp32 rows padded to whole tiles."""
    bl = tl.cast(b, tl.int64)
    return tl.load(xs_ptr + bl * IN_PAD + offs_i), tl.load(gs_ptr + bl * OUT_PAD + offs_o)


@triton.jit(do_not_specialize=["stride_dk", "OUT_PER_SPLIT"])  # as the forward's
def _wavkan_bwd_dx_kernel(
    x_ptr, gt_ptr, pack_ptr, dx_ptr,
    B, IN, OUT, B_PAD, IN_PAD, PLANE, PLANE2,
    stride_xb, stride_xi,
    stride_dk, stride_db,
    OUT_PER_SPLIT,
    WAVELET: tl.constexpr, FAST: tl.constexpr, PREFETCH: tl.constexpr, UNROLL: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_IN: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_i = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_i = pid_i * BLOCK_IN + tl.arange(0, BLOCK_IN)
    mask_b = offs_b < B
    mask_i = offs_i < IN
    rows = offs_b.to(tl.int64)
    cols = offs_i.to(tl.int64)
    x = tl.load(
        x_ptr + rows[:, None] * stride_xb + cols[None, :] * stride_xi,
        mask=mask_b[:, None] & mask_i[None, :], other=0.0,
    ).to(tl.float32)

    o_start = pid_k * OUT_PER_SPLIT
    o_end = tl.minimum(o_start + OUT_PER_SPLIT, OUT)
    acc = tl.zeros((BLOCK_B, BLOCK_IN), dtype=tl.float32)
    g_next, a_next, t_next, ws_next = _dx_operands(gt_ptr, pack_ptr, o_start, B_PAD, IN_PAD, PLANE, PLANE2, offs_b, offs_i)
    for o in tl.range(o_start, o_end, loop_unroll_factor=UNROLL):
        if PREFETCH:  # next step's loads ahead of this step's arithmetic (see the forward)
            g, a, t, w_over_s = g_next, a_next, t_next, ws_next
            g_next, a_next, t_next, ws_next = _dx_operands(
                gt_ptr, pack_ptr, tl.minimum(o + 1, o_end - 1), B_PAD, IN_PAD, PLANE, PLANE2, offs_b, offs_i)
        else:
            g, a, t, w_over_s = _dx_operands(gt_ptr, pack_ptr, o, B_PAD, IN_PAD, PLANE, PLANE2, offs_b, offs_i)
        zs = (x - t[None, :]) * a[None, :]  # k z, exactly 0 where x == t
        _, dpsi = wavelet_psi_dpsi_folded(zs, WAVELET, FAST)
        acc += (g[:, None] * w_over_s[None, :]) * dpsi

    dx_ptrs = dx_ptr + pid_k.to(tl.int64) * stride_dk + rows[:, None] * stride_db + cols[None, :]
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_b[:, None] & mask_i[None, :])


@triton.jit(do_not_specialize=["stride_dk", "ROWS_PER_SPLIT"])
def _wavkan_bwd_dparams_kernel(
    xs_ptr, gs_ptr, s_ptr, t_ptr, w_ptr, ds_ptr, dt_ptr, dw_ptr,
    B, IN, OUT, IN_PAD, OUT_PAD,
    stride_so, stride_si, stride_to, stride_ti, stride_wo, stride_wi,
    stride_dk, stride_do,
    ROWS_PER_SPLIT, z_scale, psi_scale, dpsi_scale,
    FINAL: tl.constexpr, WAVELET: tl.constexpr, FAST: tl.constexpr, PREFETCH: tl.constexpr, UNROLL: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr,
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
    a = inv_s * z_scale

    b_start = pid_k * ROWS_PER_SPLIT
    b_end = tl.minimum(b_start + ROWS_PER_SPLIT, B)
    acc_w = tl.zeros((BLOCK_OUT, BLOCK_IN), dtype=tl.float32)
    acc_q = tl.zeros((BLOCK_OUT, BLOCK_IN), dtype=tl.float32)
    acc_qz = tl.zeros((BLOCK_OUT, BLOCK_IN), dtype=tl.float32)
    x_next, g_next = _dparams_operands(xs_ptr, gs_ptr, b_start, IN_PAD, OUT_PAD, offs_i, offs_o)
    for b in tl.range(b_start, b_end, loop_unroll_factor=UNROLL):
        if PREFETCH:  # next step's loads ahead of this step's arithmetic (see the forward)
            xr, g = x_next, g_next
            x_next, g_next = _dparams_operands(xs_ptr, gs_ptr, tl.minimum(b + 1, b_end - 1), IN_PAD, OUT_PAD, offs_i, offs_o)
        else:
            xr, g = _dparams_operands(xs_ptr, gs_ptr, b, IN_PAD, OUT_PAD, offs_i, offs_o)
        zs = (xr[None, :] - t) * a  # k z: exact for any |t/s|, exactly 0 where x == t
        g_psi, g_dpsi, g_dpsi_zs = wavelet_grad_terms(zs, g[:, None], WAVELET, FAST)
        acc_w += g_psi
        acc_q += g_dpsi
        acc_qz += g_dpsi_zs

    dst = pid_k.to(tl.int64) * stride_dk + o * stride_do + i
    if FINAL:
        # grad_w = P sum g psi'; grad_t = -(w D / s) sum g dpsi'; grad_s = grad_t's factor times
        # sum g dpsi' z = sum g dpsi' zs / k.
        w = tl.load(w_ptr + o * stride_wo + i * stride_wi, mask=mask, other=0.0).to(tl.float32)
        wd = w * inv_s * -dpsi_scale
        tl.store(dw_ptr + dst, (acc_w * psi_scale).to(dw_ptr.dtype.element_ty), mask=mask)
        tl.store(dt_ptr + dst, (wd * acc_q).to(dt_ptr.dtype.element_ty), mask=mask)
        tl.store(ds_ptr + dst, (wd * (acc_qz / z_scale)).to(ds_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(dw_ptr + dst, acc_w, mask=mask)
        tl.store(dt_ptr + dst, acc_q, mask=mask)
        tl.store(ds_ptr + dst, acc_qz, mask=mask)


def _param_strides(scale, translation, weights):
    return (scale.stride(0), scale.stride(1), translation.stride(0), translation.stride(1),
            weights.stride(0), weights.stride(1))


def wavkan_bwd_dx(grad, x, scale, translation, weights, wavelet, config: KernelConfig | None = None):
    """grad_x: (B, in) in x's dtype, for grad = dL/dy (B, out)."""
    B, IN = x.shape
    OUT = scale.shape[0]
    dx = torch.empty((B, IN), dtype=x.dtype, device=x.device)
    if B == 0:
        return dx
    cfg = config or default_config("bwd_dx", x.device, B)
    b_pad = cdiv(B, cfg.block_m) * cfg.block_m
    in_pad = cdiv(IN, cfg.block_n) * cfg.block_n
    z_scale, _, dpsi_scale = wavelet.fold_bwd
    gt = stage_transposed(grad, b_pad)
    pack = pack_edge_constants(scale, translation, weights, in_pad, for_grad_x=True, z_scale=z_scale, w_scale=dpsi_scale)
    meta = dict(
        WAVELET=wavelet.code, FAST=x.is_cuda, PREFETCH=cfg.prefetch, UNROLL=loop_unroll(cfg, wavelet),
        BLOCK_B=cfg.block_m, BLOCK_IN=cfg.block_n, **cfg.launch_options(),
    )

    def args(out, stride_dk, per_split):
        return (x, gt, pack, out, B, IN, OUT, b_pad, in_pad, *plane_offsets(pack), x.stride(0), x.stride(1), stride_dk, IN, per_split)

    tiles = (b_pad // cfg.block_m, in_pad // cfg.block_n)
    return launch_split(_wavkan_bwd_dx_kernel, tiles, OUT, args, meta, dx, cfg)


def wavkan_bwd_dparams(grad, x, scale, translation, weights, wavelet, config: KernelConfig | None = None):
    """(grad_scale, grad_translation, grad_weights), each (out, in) in its parameter's dtype."""
    B, IN = x.shape
    OUT = scale.shape[0]
    if B == 0:  # no rows: nothing to sum (the loop's first load would read past an empty x)
        return tuple(torch.zeros_like(p) for p in (scale, translation, weights))
    cfg = config or default_config("bwd_dparams", x.device, B)
    out_pad = cdiv(OUT, cfg.block_m) * cfg.block_m
    in_pad = cdiv(IN, cfg.block_n) * cfg.block_n
    z_scale, psi_scale, dpsi_scale = wavelet.fold_bwd
    xs = stage_rows(x, in_pad)
    gs = stage_rows(grad, out_pad)
    meta = dict(
        WAVELET=wavelet.code, FAST=x.is_cuda, PREFETCH=cfg.prefetch, UNROLL=loop_unroll(cfg, wavelet),
        BLOCK_OUT=cfg.block_m, BLOCK_IN=cfg.block_n, **cfg.launch_options(),
    )
    ds, dt, dw = (torch.empty((OUT, IN), dtype=p.dtype, device=x.device) for p in (scale, translation, weights))

    def args(ds, dt, dw, stride_dk, per_split):
        return (xs, gs, scale, translation, weights, ds, dt, dw, B, IN, OUT, in_pad, out_pad,
                *_param_strides(scale, translation, weights), stride_dk, IN, per_split, z_scale, psi_scale, dpsi_scale)

    tiles = (out_pad // cfg.block_m, in_pad // cfg.block_n)
    split, per_split = plan_split(
        _wavkan_bwd_dparams_kernel, tiles, B, args(ds, dt, dw, 0, B), dict(meta, FINAL=True), x.device, cfg)
    if split == 1:
        _wavkan_bwd_dparams_kernel[(*tiles, 1)](*args(ds, dt, dw, 0, per_split), FINAL=True, **meta)
        return ds, dt, dw
    # Each split writes its three planes [sum g psi', sum g dpsi', sum g dpsi' zs] as one
    # (3, out, in) partial; one fixed-order sum adds them, then the epilogue the unsplit
    # kernel applies in registers. The unsplit outputs go first: their memory serves the partials.
    del ds, dt, dw
    partials = torch.empty((split, 3, OUT, IN), dtype=torch.float32, device=x.device)
    _wavkan_bwd_dparams_kernel[(*tiles, split)](
        *args(partials[0, 2], partials[0, 1], partials[0, 0], 3 * OUT * IN, per_split), FINAL=False, **meta)
    sums = torch.empty((3, OUT, IN), dtype=torch.float32, device=x.device)
    sum_partials(partials, sums)
    sum_w, sum_q, sum_qz = sums
    wd = weights.float() * scale.float().reciprocal() * -dpsi_scale
    return (
        (wd * (sum_qz / z_scale)).to(scale.dtype),
        (wd * sum_q).to(translation.dtype),
        (sum_w * psi_scale).to(weights.dtype),
    )


def wavkan_bwd(grad, x, scale, translation, weights, wavelet, need_x: bool = True, need_params: bool = True):
    """(grad_x, grad_scale, grad_translation, grad_weights) for grad = dL/dy (B, out). Each pass
    runs only when asked for: ``need_x`` False returns None for grad_x (no grad_x pass),
    ``need_params`` False None for the three parameter gradients (no parameter pass)."""
    dx = wavkan_bwd_dx(grad, x, scale, translation, weights, wavelet) if need_x else None
    if not need_params:
        return dx, None, None, None
    ds, dt, dw = wavkan_bwd_dparams(grad, x, scale, translation, weights, wavelet)
    return dx, ds, dt, dw
