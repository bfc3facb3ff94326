"""Fused forward: y[b, o] = sum_i w[o, i] psi((x[b, i] - t[o, i]) * a[o, i]), a = 1/s (in the
kernel a carries the wavelet's k as well: see below).

One program owns a (BLOCK_B, BLOCK_OUT) tile of y in fp32 registers and walks its share of
the ``in`` loop: per step it loads one column of x (BLOCK_B) and one row of each packed edge
constant (BLOCK_OUT), then does one wavelet evaluation per tile element. Nothing of size
B x out x in exists. SPLIT programs may share a tile's ``in`` loop (``launch.balanced_plan``:
to fill the SMs at small B, to balance them over several waves at large B); they write fp32
partials that the tile's last program sums in a fixed order (``partials.split_arrive``):
deterministic, and one launch per call.

- x is read in place (any strides and float dtype), one column per step; a row's cache line
  serves the next steps of that row from L1.
- the edge constants are a (3, in, OUT_PAD) fp32 pack [k/s, t, w m] (zero weight in the
  padding), so the inner step needs no division, packed once per parameter change
  (``staging.cached_edge_pack``); (k, m) = ``Wavelet.fold`` fold the Gaussian's log2(e)/2 and
  the wavelet's constant factor into the edge.

z is computed as (x - t) * (k/s), one FADD and one FMUL: where |t/s| is large, x (k/s) -
t (k/s) in one FFMA cancels (the two products are large and nearly equal) and fp32 loses all
of z, while x - t is exact where x and t are close (Sterbenz), so z keeps fp32's relative
accuracy for every |t/s|. Where every edge of a program has |t k/s| <= FAST_Z_BOUND (1), the
program takes the short forms instead. z = fma(x, k/s, -(t k/s)), one instruction fewer per
evaluation: its error is that of rounding t k/s, at most 2^-24 absolute in k z, below what psi
resolves in fp32 near its peak (psi is continuous everywhere, so no wavelet needs z exactly 0
here; the backward's meyer does, and keeps the exact form). And mexican_hat's weighted psi as
(q (-2 ln2 w) - w) e with q = -zs^2, two FMA-pipe instructions where the exact form takes four:
it squares z before the exponential can make the product 0, so it also needs |x| <=
SHORT_X_BOUND, |k/s| <= SHORT_A_BOUND and |w m| <= SHORT_W_BOUND on the program's rows and
edges, which keep every product finite ((2^30 + 1)^2 2 ln2 2^60 < 2^128). A first pass over the
program's edges (and, for mexican_hat, its rows of x) decides, once per program; initialised
layers (t = 0) take the short forms unless an input or a parameter is that large.

The host side is one launch (``launch.DirectLauncher``) and two allocations (y, and the
partials when split): the eager call's host time is what a user pays per layer at small B.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .device import MEXICAN_HAT, wavelet_psi_folded
from .launch import ColumnPassPlan, DirectLauncher, column_pass_layout, planned, split_buffers, stream_key
from .partials import store_tile
from .staging import cached_edge_pack, stage_transposed
from .tuning import KernelConfig, default_config, kernel_meta

# Below this |t k/s| on all of a program's edges, z is one FFMA (module docstring).
FAST_Z_BOUND = tl.constexpr(1.0)
# mexican_hat's short psi multiplies q = -(k z)^2 by -2 ln2 w m before the exponential can make
# it 0: within these bounds (and |t k/s| <= 1), |k z| <= 2^30 + 1 and |q 2 ln2 w m| < 2^121,
# every product finite (module docstring).
SHORT_X_BOUND = tl.constexpr(2.0**15)
SHORT_A_BOUND = tl.constexpr(2.0**15)
SHORT_W_BOUND = tl.constexpr(2.0**60)
NEG_TWO_LN2 = tl.constexpr(-2.0 * math.log(2.0))


@triton.jit
def _fwd_operands(x_ptr, stride_xi, pack_ptr, i, OUT_PAD, PLANE, PLANE2, x_rows, offs_o):
    """Step i's operands: x[:, i] (BLOCK_B, read in place) and row i of the three edge planes
    (BLOCK_OUT)."""
    row = tl.cast(i, tl.int64)
    edge = pack_ptr + row * OUT_PAD + offs_o
    x = tl.load(x_ptr + row * stride_xi + x_rows).to(tl.float32)
    return x, tl.load(edge), tl.load(edge + PLANE), tl.load(edge + PLANE2)


@triton.jit
def _short_form_holds(x_ptr, stride_xi, x_rows, pack_ptr, PLANE, PLANE2, OUT_PAD, i_start, i_end, offs_o,
                      CHECK_X: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_OUT: tl.constexpr):  # fmt: skip
    """Whether the program may take the short forms (module docstring): |t k/s| <= FAST_Z_BOUND
    on every edge of its rows and columns (one pass over the packed planes, 16 rows a step:
    about 1% of the main loop's loads); with CHECK_X (mexican_hat's short form) also |k/s| <=
    SHORT_A_BOUND and |w m| <= SHORT_W_BOUND on every edge, and |x| <= SHORT_X_BOUND on every
    x of its rows (one pass over them, as many loads as the main loop makes of x)."""
    rows = tl.arange(0, 16)
    # Counted as a comparison per edge, not as a max of |t k/s|: a NaN product (t = 0 with a
    # zero scale: k/s = inf) fails the comparison, where a max could drop it.
    ok = tl.full((16, BLOCK_OUT), 1, dtype=tl.int32)
    for i0 in range(i_start, i_end, 16):
        r = tl.minimum(i0 + rows, i_end - 1).to(tl.int64)
        edge = pack_ptr + r[:, None] * OUT_PAD + offs_o[None, :]
        a = tl.load(edge)
        good = tl.abs(a * tl.load(edge + PLANE)) <= FAST_Z_BOUND
        if CHECK_X:
            good = good & (tl.abs(a) <= SHORT_A_BOUND) & (tl.abs(tl.load(edge + PLANE2)) <= SHORT_W_BOUND)
        ok = tl.minimum(ok, good.to(tl.int32))
    holds = tl.min(tl.min(ok, axis=1), axis=0) == 1
    if CHECK_X:
        ok_x = tl.full((BLOCK_B, 16), 1, dtype=tl.int32)
        for i0 in range(i_start, i_end, 16):
            c = tl.minimum(i0 + rows, i_end - 1).to(tl.int64)
            x = tl.load(x_ptr + c[None, :] * stride_xi + x_rows[:, None]).to(tl.float32)
            ok_x = tl.minimum(ok_x, (tl.abs(x) <= SHORT_X_BOUND).to(tl.int32))
        holds = holds & (tl.min(tl.min(ok_x, axis=1), axis=0) == 1)
    return holds


@triton.jit
def _fwd_step(acc, x, a, t, w, WAVELET: tl.constexpr, FAST: tl.constexpr, SHORT: tl.constexpr):
    """acc + w psi for one step's operands. SHORT: the short forms (z by one FFMA, and
    mexican_hat's psi in two FMA-pipe instructions)."""
    if SHORT:
        zs = tl.fma(x[:, None], a[None, :], (-(t * a))[None, :])  # k z, one FFMA
        if WAVELET == MEXICAN_HAT:
            # w (2 ln2 zs^2 - 1) e = (q (-2 ln2 w) - w) e with q = -zs^2: an FFMA for the
            # factor, one for the sum; every product finite within _short_form_holds's bounds.
            q = zs * -zs
            return tl.fma(tl.fma(q, (w * NEG_TWO_LN2)[None, :], (-w)[None, :]), tl.exp2(q), acc)
    else:
        zs = (x[:, None] - t[None, :]) * a[None, :]  # k z, exact for any |t/s|
    return acc + w[None, :] * wavelet_psi_folded(zs, WAVELET, FAST)


@triton.jit
def _fwd_loop(x_ptr, stride_xi, pack_ptr, i_start, i_end, OUT_PAD, PLANE, PLANE2, x_rows, offs_o,
              WAVELET: tl.constexpr, FAST: tl.constexpr, PREFETCH: tl.constexpr, UNROLL: tl.constexpr,
              SHORT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_OUT: tl.constexpr):  # fmt: skip
    """The (BLOCK_B, BLOCK_OUT) tile's sum over rows i_start .. i_end - 1 of ``in``."""
    acc = tl.zeros((BLOCK_B, BLOCK_OUT), dtype=tl.float32)
    x_next, a_next, t_next, w_next = _fwd_operands(x_ptr, stride_xi, pack_ptr, i_start, OUT_PAD, PLANE, PLANE2, x_rows, offs_o)
    for i in tl.range(i_start, i_end, loop_unroll_factor=UNROLL):
        if PREFETCH:
            # Issue the next step's loads before this step's arithmetic, so their latency
            # hides behind it (Triton does not pipeline loads that feed no dot).
            x, a, t, w = x_next, a_next, t_next, w_next
            x_next, a_next, t_next, w_next = _fwd_operands(
                x_ptr, stride_xi, pack_ptr, tl.minimum(i + 1, i_end - 1), OUT_PAD, PLANE, PLANE2, x_rows, offs_o)
        else:
            x, a, t, w = _fwd_operands(x_ptr, stride_xi, pack_ptr, i, OUT_PAD, PLANE, PLANE2, x_rows, offs_o)
        acc = _fwd_step(acc, x, a, t, w, WAVELET, FAST, SHORT)
    return acc


# The split's ints are not specialised on, so that one binary serves every split.
@triton.jit(do_not_specialize=["SPLIT", "IN_PER_SPLIT", "STRIDE_PART"])
def _wavkan_fwd_kernel(
    x_ptr, pack_ptr, y_ptr, part_ptr, counter_ptr,
    B, IN, OUT, OUT_PAD, PLANE, PLANE2,
    stride_xb, stride_xi, stride_yb, stride_yo,
    SPLIT, IN_PER_SPLIT, STRIDE_PART,
    WAVELET: tl.constexpr, FAST: tl.constexpr, PREFETCH: tl.constexpr, UNROLL: tl.constexpr,
    X_STAGED: tl.constexpr, X_ROWS_32: tl.constexpr, SPLIT_SUM: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_OUT: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_o = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_o = pid_o * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    # x is read in place, any strides and dtype: rows past B re-read row B - 1 (their results
    # are never stored), so the loop's loads need no mask; the packed planes are padded to
    # whole tiles of out, so theirs need none either. A staged x (X_STAGED: transposed, padded
    # to whole tiles, unit stride along B) is read unclamped, so the loads stay contiguous
    # (vectorised) in the compiler's eyes.
    # Row offsets stay int32 where they fit (X_ROWS_32): an int64 vector held across the loop
    # costs registers and a 64-bit add per load.
    if X_STAGED:
        x_rows = offs_b
    elif X_ROWS_32:
        x_rows = tl.minimum(offs_b, B - 1) * stride_xb
    else:
        x_rows = tl.minimum(offs_b, B - 1).to(tl.int64) * stride_xb
    i_start = pid_k * IN_PER_SPLIT
    i_end = tl.minimum(i_start + IN_PER_SPLIT, IN)
    # The short forms where they are as accurate as the exact ones (see the module docstring).
    if _short_form_holds(x_ptr, stride_xi, x_rows, pack_ptr, PLANE, PLANE2, OUT_PAD, i_start, i_end, offs_o,
                         WAVELET == MEXICAN_HAT, BLOCK_B, BLOCK_OUT):
        acc = _fwd_loop(x_ptr, stride_xi, pack_ptr, i_start, i_end, OUT_PAD, PLANE, PLANE2, x_rows, offs_o,
                        WAVELET, FAST, PREFETCH, UNROLL, True, BLOCK_B, BLOCK_OUT)
    else:
        acc = _fwd_loop(x_ptr, stride_xi, pack_ptr, i_start, i_end, OUT_PAD, PLANE, PLANE2, x_rows, offs_o,
                        WAVELET, FAST, PREFETCH, UNROLL, False, BLOCK_B, BLOCK_OUT)

    mask = (offs_b < B)[:, None] & (offs_o < OUT)[None, :]
    rows = offs_b[:, None].to(tl.int64)
    cols = offs_o[None, :].to(tl.int64)
    y_ptrs = y_ptr + rows * stride_yb + cols * stride_yo
    # One program per tile, or a split summed by the tile's last program: (SPLIT, B, OUT) partials.
    store_tile(acc, y_ptrs, mask, part_ptr, rows * OUT + cols, STRIDE_PART, counter_ptr, SPLIT, SPLIT_SUM)


_LAUNCH = DirectLauncher(_wavkan_fwd_kernel, own=("pack_ptr", "part_ptr", "counter_ptr"))


@functools.lru_cache(maxsize=4096)
def _forward_plan(B: int, IN: int, OUT: int, x_strides: tuple, device: torch.device, wav,
                  config: KernelConfig | None) -> ColumnPassPlan:  # fmt: skip
    """Everything ``wavkan_fwd`` launches with that follows from the shapes, x's strides, the
    device, the wavelet and the config (y is a new contiguous tensor and the pack a contiguous
    (3, in, pad) one, so their strides follow from the shapes too)."""
    cfg = config or default_config("fwd", device, B, wav)
    pad, grid, rows_pad, (stride_xb, stride_xi), per_split = column_pass_layout(cfg, B, OUT, IN, x_strides, device)
    plane = IN * pad
    scalars = (B, IN, OUT, pad, plane, 2 * plane, stride_xb, stride_xi, OUT, 1, grid[2], per_split, B * OUT)
    meta = dict(kernel_meta(cfg, wav, device, ("BLOCK_B", "BLOCK_OUT")), X_STAGED=cfg.stage,
                X_ROWS_32=B * stride_xb < 2**31, SPLIT_SUM=grid[2] > 1)
    launch = _LAUNCH.plan(device, grid, scalars, meta)
    return ColumnPassPlan(launch, pad, cfg.stage, rows_pad, grid[2], grid[0] * grid[1], B * OUT)


def wavkan_fwd(x, scale, translation, weights, wavelet, config: KernelConfig | None = None) -> torch.Tensor:
    """Fused forward. x: (B, in), any strides and float dtype; scale, translation, weights:
    (out, in). Returns y: (B, out) in x's dtype, accumulated in fp32. One launch: the edge
    constants come packed from the cache (``staging.cached_edge_pack``), x is read in place,
    and a split's partials are summed by the kernel itself; the launch is planned once per
    shape (``_forward_plan``)."""
    B, IN = x.shape
    OUT = scale.shape[0]
    device = x.device
    y = torch.empty((B, OUT), dtype=x.dtype, device=device)
    if B == 0:
        return y
    plan = planned(_forward_plan, B, IN, OUT, x.stride(), device, wavelet, config)
    stream = stream_key(device)
    z_scale, w_scale = wavelet.fold
    pack = cached_edge_pack(scale, translation, weights, plan.pad, False, z_scale, w_scale, stream)
    xs = stage_transposed(x, plan.rows_pad) if plan.stage else x
    counters, part = split_buffers(device, stream, plan.split, plan.tiles, plan.partials, y)
    _LAUNCH.launch(plan.launch, stream, (xs, pack, y, part, counters))
    return y
