"""Opt-in fast forward in packed half precision: two evaluations per instruction.

``wavkan_fwd_half`` computes y[b, o] = sum_i w[o, i] psi((x[b, i] - t[o, i]) a[o, i]) like the
fp32 forward (``forward.py``: same folding, tiles and split), but evaluates the wavelet in fp16
pairs: each 32-bit register holds two adjacent outputs' values (f16x2), so one HFMA2 does two
edges' arithmetic and one ``ex2.approx.f16x2`` two edges' exponentials. That halves both the
issued instructions and the special-function unit's work per evaluation, the two limits of the
fp32 forward (benchmarks/STATUS.md says what each kernel reaches). Gaussian wavelets only (``Wavelet.fast_math``: mexican_hat,
dog): the others need sine and cosine, which have no packed half form.

Staging makes the pairs plain 32-bit loads:

- x becomes an int32 (in_pad, B_PAD) buffer whose element holds x[b, i] in fp16 twice, so it
  multiplies both halves of a pair;
- the edge constants [k/s, t, m w] are stored as fp16 (3, in_pad, OUT_PAD) and read as int32
  pairs (o, o + 1); padding edges have zero weight.

Accuracy: z is computed as (x - t) (k/s), a subtraction then a product, each rounded once to
fp16, so z keeps fp16's relative accuracy whatever |t/s| is (x a + c would cancel
catastrophically: fp16's 11 bits lost everything from |t/s| = 1e3 on). That needs t exact in
fp16: ``wavkan.ops`` takes this path only when the parameters are fp16 or bf16 (bf16 values in
fp16's normal range are exact in fp16). The fp16 sums run over chunks of ``CHUNK`` steps of
the ``in`` loop and are added to fp32 accumulators after each chunk, so rounding does not grow
with ``in``. The relative error of y is about 1e-3 (tests/test_fast_math.py and ``wavkan
bench`` measure it against the fp32 kernel). Squares are clamped (to 32 before ex2, 15 before
the polynomial) so an edge far outside its wavelet gives 0, not inf * 0; the clamps propagate
NaN, as the exact path does. Values must fit fp16: |x|, |t|, |x - t| and |1/s| below 6.5e4
(beyond that an edge evaluates as if z were infinite: psi = 0), |w| below about 1e3
(mexican_hat's (2 ln2 u - 1) w at the clamp), and each 16-step partial sum of w psi below 6.5e4.

On CPU tensors under TRITON_INTERPRET=1 (which has no inline PTX) the same kernel computes
each pair with Triton arithmetic that rounds like the PTX (each fma once, to fp16): the
staging, packing, chunked flushes, split, epilogue and the polynomial are what the interpreter
tests check; the PTX itself is checked by the GPU suite.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import cdiv, launch_split
from .tuning import KernelConfig, default_config
from .device import DOG, MEXICAN_HAT, _unknown_wavelet
from .staging import pack_edge_constants, plane_offsets, stage_transposed

# Steps of the ``in`` loop summed in fp16 before the fp32 accumulators take them.
CHUNK = 16

# The pair step in PTX, built from pieces: z and its square u; the exponential e = 2^-u on the
# special-function unit (MUFU) or as a polynomial on the FMA pipe; the accumulate. On sm_90
# ex2.approx.f16x2 issues as two MUFU.EX2.F16 and a PRMT (ptxas; benchmarks/compile_check.py),
# so packing halves the FMA-pipe work per evaluation but not the MUFU's: the MUFU stays the
# limit unless some exponentials move to the FMA pipe, which has 8x its lanes (``POLY``).
# Constants are f16x2 bit patterns, both halves alike.
_F16X2 = {
    "clamp_mufu": "0x50005000",  # 32: exp2(-32) is 0 in fp16, and 2 ln2 u - 1 stays finite
    "clamp_poly": "0x4B804B80",  # 15: the 2^-n built for n = round(u) = 15 (u > 14.5) is exactly 0
    "z_max": "0x5BF85BF8", "z_min": "0xDBF8DBF8",  # dog: |z| <= 255, so z^2 is finite
    "magic": "0x66006600",  # 1.5 * 2^10: adding it rounds u to an integer n, kept in its low bits
    "c2": "0x33C433C4", "c1": "0xB9A1B9A1", "c0": "0x3C003C00",  # 2^-f ~ c0 + c1 f + c2 f^2, |f| <= 1/2
}
# The fp16 values of c2, c1 (for the interpreter's emulation).
_C2, _C1 = tl.constexpr(0.24267578125), tl.constexpr(-0.70361328125)
_EXP_MUFU = """neg.f16x2 e, uc;
ex2.approx.f16x2 e, e;"""
# 2^-u = 2^-f 2^-n, n = round(u), f = u - n; 2^-n = (15 - n) in the exponent field, which is 0
# (the fp16 zero) for n = 15: with u clamped to 15, edges past u = 14.5 contribute exactly 0
# (|psi| < 1e-3 of its peak there).
_EXP_POLY = """add.rn.f16x2 t, uc, magic;
sub.rn.f16x2 f, t, magic;
sub.rn.f16x2 f, uc, f;
fma.rn.f16x2 e, f, c2, c1;
fma.rn.f16x2 e, e, f, c0;
and.b32 t, t, 0x001F001F;
mad.lo.s32 t, t, -1024, 0x3C003C00;
mul.rn.f16x2 e, e, t;"""


def _pair_asm(wavelet_code: int, poly: bool) -> str:
    """acc' = acc + w psi'((x - t) a) on f16x2 pairs: $0 = acc', $1 acc, $2 x, $3 a, $4 t, then
    mexican_hat: $5 = 2 ln2 w, $6 = -w (psi' w = (2 ln2 w u - w) e, one fma); dog: $5 = w."""
    lines = ["{", ".reg .b32 d, z, u, uc, e, t, f, q, " + ", ".join(_F16X2) + ";"]
    lines += [f"mov.b32 {name}, {bits};" for name, bits in _F16X2.items()]
    lines += ["sub.rn.f16x2 d, $2, $4;", "mul.rn.f16x2 z, d, $3;"]
    if wavelet_code == 2:  # dog
        lines += ["min.NaN.f16x2 z, z, z_max;", "max.NaN.f16x2 z, z, z_min;"]
    lines.append("mul.rn.f16x2 u, z, z;")
    if poly:
        lines += ["min.NaN.f16x2 uc, u, clamp_poly;", _EXP_POLY]
    elif wavelet_code == 0:
        lines += ["min.NaN.f16x2 uc, u, clamp_mufu;", _EXP_MUFU]
    else:  # dog: u <= 255^2 is finite and z e is 0 wherever e is
        lines += ["mov.b32 uc, u;", _EXP_MUFU]
    if wavelet_code == 0:  # mexican_hat
        lines += ["fma.rn.f16x2 q, uc, $5, $6;", "fma.rn.f16x2 $0, q, e, $1;"]
    else:  # dog
        lines += ["mul.rn.f16x2 q, z, e;", "fma.rn.f16x2 $0, q, $5, $1;"]
    lines.append("}")
    return "\n".join(lines)


_MEXICAN_HAT_MUFU = tl.constexpr(_pair_asm(0, poly=False))
_MEXICAN_HAT_POLY = tl.constexpr(_pair_asm(0, poly=True))
_DOG_MUFU = tl.constexpr(_pair_asm(2, poly=False))
_DOG_POLY = tl.constexpr(_pair_asm(2, poly=True))
_TWO_LN2_F16X2 = tl.constexpr("{ .reg .b32 k; mov.b32 k, 0x3D8C3D8C; mul.rn.f16x2 $0, $1, k; }")  # 2 ln 2
_NEG_F16X2 = tl.constexpr("neg.f16x2 $0, $1;")


def poly_mask(poly_steps: int, group: int) -> int:
    """Bit j set: step j of an unrolled group of ``group`` steps takes the polynomial
    exponential; ``poly_steps`` of them, spread evenly."""
    if group < 1 or CHUNK % group:
        raise ValueError(f"the unroll (steps per group) must divide {CHUNK}, got {group}")
    if not 0 <= poly_steps <= group:
        raise ValueError(f"poly_steps must be in [0, {group}] (the unroll), got {poly_steps}")
    return sum(1 << j for j in range(group) if (j + 1) * poly_steps // group > j * poly_steps // group)


@triton.jit
def _halves(v):
    """The two fp16 values packed in int32 v: (low, high)."""
    lo = (v & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
    hi = (v >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    return lo, hi


@triton.jit
def _pack(lo, hi):
    return (lo.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF) | (hi.to(tl.int16, bitcast=True).to(tl.int32) << 16)


@triton.jit
def _f16(v):
    return v.to(tl.float16)


@triton.jit
def _fma16(a, b, c):
    """fma.rn.f16: a b + c rounded once to fp16 (an fp16 product is exact in fp32)."""
    return _f16(a.to(tl.float32) * b.to(tl.float32) + c.to(tl.float32))


@triton.jit
def _min16(a, b):
    return _f16(tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL))  # min.NaN


@triton.jit
def _exp2_neg_half(uc, POLY: tl.constexpr):
    """2^-uc as the PTX computes it (the interpreter's emulation)."""
    if POLY:
        t = _f16(uc + 1536.0)
        f = _f16(uc - _f16(t - 1536.0))
        f32 = f.to(tl.float32)
        p = _f16(_f16(f32 * _C2 + _C1).to(tl.float32) * f32 + 1.0)  # two fma.rn.f16x2
        n = t.to(tl.int16, bitcast=True).to(tl.int32) & 0x1F
        return _f16(p * (0x3C00 - n * 1024).to(tl.int16).to(tl.float16, bitcast=True))
    else:
        return _f16(tl.exp2(-uc.to(tl.float32)))  # through fp32, rounded like ex2's result


@triton.jit
def _emulated_step(acc, x, a, t, w1, w0, WAVELET: tl.constexpr, POLY: tl.constexpr):
    # One half of ``_pair_asm``'s arithmetic, rounded as the PTX rounds it.
    z = _f16(_f16(x - t) * a)
    if WAVELET == MEXICAN_HAT:
        uc = _min16(_f16(z * z), 15.0 if POLY else 32.0)
        return _fma16(_fma16(uc, w1, w0), _exp2_neg_half(uc, POLY), acc)
    elif WAVELET == DOG:
        z = _f16(tl.maximum(_min16(z, 255.0), -255.0, propagate_nan=tl.PropagateNan.ALL))
        u = _f16(z * z)
        uc = _min16(u, 15.0) if POLY else u
        return _fma16(_f16(z * _exp2_neg_half(uc, POLY)), w1, acc)
    else:
        return _unknown_wavelet(WAVELET)


@triton.jit
def _asm_step(ASM: tl.constexpr, acc, x2, a2, t2, w2, w0):
    return tl.inline_asm_elementwise(ASM, "=r,r,r,r,r,r,r", [acc, x2, a2, t2, w2, w0], dtype=tl.int32,
                                     is_pure=True, pack=1)  # fmt: skip


@triton.jit
def _pair_step(acc, x2, a2, t2, w2, w0, WAVELET: tl.constexpr, PTX: tl.constexpr, POLY: tl.constexpr):
    """acc + w psi((x - t) a) for every pair (int32 f16x2 operands, broadcast to acc's shape);
    POLY: the exponential on the FMA pipe instead of the MUFU. Mexican_hat's weights come as
    (w2, w0) = (2 ln2 w, -w); dog's as w2 (w0 unused)."""
    if PTX:
        if WAVELET == MEXICAN_HAT:
            if POLY:
                return _asm_step(_MEXICAN_HAT_POLY, acc, x2, a2, t2, w2, w0)
            else:
                return _asm_step(_MEXICAN_HAT_MUFU, acc, x2, a2, t2, w2, w0)
        elif WAVELET == DOG:
            if POLY:
                return _asm_step(_DOG_POLY, acc, x2, a2, t2, w2, w0)
            else:
                return _asm_step(_DOG_MUFU, acc, x2, a2, t2, w2, w0)
        else:
            return _unknown_wavelet(WAVELET)
    else:
        acc_lo, acc_hi = _halves(acc)
        x, _x = _halves(x2)
        a_lo, a_hi = _halves(a2)
        t_lo, t_hi = _halves(t2)
        w_lo, w_hi = _halves(w2)
        w0_lo, w0_hi = _halves(w0)
        lo = _emulated_step(acc_lo, x, a_lo, t_lo, w_lo, w0_lo, WAVELET, POLY)
        hi = _emulated_step(acc_hi, x, a_hi, t_hi, w_hi, w0_hi, WAVELET, POLY)
        return _pack(lo, hi)


@triton.jit
def _mexican_hat_weights(w2, PTX: tl.constexpr):
    """(2 ln2 w, -w) of f16x2 weights, once per loaded row (not per pair)."""
    if PTX:
        return (tl.inline_asm_elementwise(_TWO_LN2_F16X2, "=r,r", [w2], dtype=tl.int32, is_pure=True, pack=1),
                tl.inline_asm_elementwise(_NEG_F16X2, "=r,r", [w2], dtype=tl.int32, is_pure=True, pack=1))
    else:
        lo, hi = _halves(w2)
        return _pack(_f16(lo * 1.3862944), _f16(hi * 1.3862944)), _pack(_f16(-lo), _f16(-hi))


@triton.jit(do_not_specialize=["stride_yk", "IN_PER_SPLIT"])
def _wavkan_fwd_half_kernel(
    xt_ptr, pack_ptr, y_ptr,
    B, IN_PAD, OUT, B_PAD, PAIRS_PAD, PLANE, PLANE2,
    stride_yk, stride_yb,
    IN_PER_SPLIT,
    WAVELET: tl.constexpr, PTX: tl.constexpr, CHUNK_STEPS: tl.constexpr, GROUP_STEPS: tl.constexpr,
    POLY_MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_PAIRS: tl.constexpr,
):
    # xt_ptr: int32 (IN_PAD, B_PAD), x twice per element; pack_ptr: int32 (3, IN_PAD, PAIRS_PAD),
    # planes [a, t, w] of output pairs (2p, 2p + 1). IN_PER_SPLIT and IN_PAD are whole chunks.
    # A chunk (fp16 sums, then one fp32 flush) runs as a loop over groups of GROUP_STEPS
    # unrolled steps: the unrolled body stays small enough for the instruction cache (a whole
    # unrolled chunk overflowed it, and was slower than the fp32 forward: benchmarks/HISTORY.md).
    pid_b = tl.program_id(0)
    pid_p = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_p = pid_p * BLOCK_PAIRS + tl.arange(0, BLOCK_PAIRS)
    i_start = pid_k * IN_PER_SPLIT
    i_end = tl.minimum(i_start + IN_PER_SPLIT, IN_PAD)
    acc_lo = tl.zeros((BLOCK_B, BLOCK_PAIRS), dtype=tl.float32)
    acc_hi = tl.zeros((BLOCK_B, BLOCK_PAIRS), dtype=tl.float32)
    for i0 in range(i_start, i_end, CHUNK_STEPS):
        acc = tl.zeros((BLOCK_B, BLOCK_PAIRS), dtype=tl.int32)  # f16x2 zeros
        for i1 in range(i0, i0 + CHUNK_STEPS, GROUP_STEPS):
            for j in tl.static_range(GROUP_STEPS):
                row = tl.cast(i1 + j, tl.int64)
                x2 = tl.load(xt_ptr + row * B_PAD + offs_b)
                edge = pack_ptr + row * PAIRS_PAD + offs_p
                a2 = tl.load(edge)
                t2 = tl.load(edge + PLANE)
                w2 = tl.load(edge + PLANE2)
                if WAVELET == MEXICAN_HAT:
                    w2, w0 = _mexican_hat_weights(w2, PTX)
                else:
                    w0 = w2
                acc = _pair_step(acc, x2[:, None], a2[None, :], t2[None, :], w2[None, :], w0[None, :], WAVELET,
                                 PTX, ((POLY_MASK >> j) & 1) == 1)  # fmt: skip
        lo, hi = _halves(acc)
        acc_lo += lo.to(tl.float32)
        acc_hi += hi.to(tl.float32)

    mask_b = (offs_b < B)[:, None]
    offs_o = 2 * offs_p[None, :]
    y_ptrs = y_ptr + pid_k.to(tl.int64) * stride_yk + offs_b[:, None].to(tl.int64) * stride_yb + offs_o
    tl.store(y_ptrs, acc_lo.to(y_ptr.dtype.element_ty), mask=mask_b & (offs_o < OUT))
    tl.store(y_ptrs + 1, acc_hi.to(y_ptr.dtype.element_ty), mask=mask_b & (offs_o + 1 < OUT))


def wavkan_fwd_half(x, scale, translation, weights, wavelet, config: KernelConfig | None = None) -> torch.Tensor:
    """Packed-half forward (see the module docstring). x: (B, in), any strides and float dtype;
    scale, translation, weights: (out, in). Returns y: (B, out) in x's dtype. ``wavelet`` must
    have a packed-half forward (``Wavelet.fast_math``)."""
    if not wavelet.fast_math:
        raise ValueError(f"the packed-half forward supports the wavelets with Wavelet.fast_math, not {wavelet.name!r}")
    B, IN = x.shape
    OUT = scale.shape[0]
    y = torch.empty((B, OUT), dtype=x.dtype, device=x.device)
    if B == 0:
        return y
    cfg = config or default_config("fwd_half", x.device, B)
    b_pad = cdiv(B, cfg.block_m) * cfg.block_m
    pairs_pad = cdiv(OUT, 2 * cfg.block_n) * cfg.block_n  # block_n counts pairs
    in_pad = cdiv(IN, CHUNK) * CHUNK
    xt = stage_transposed(x, b_pad, rows_pad=in_pad, dtype=torch.int32)
    z_scale, w_scale = wavelet.fold
    pack = pack_edge_constants(
        scale, translation, weights, 2 * pairs_pad, for_grad_x=False, z_scale=z_scale, w_scale=w_scale,
        dtype=torch.float16, in_pad=in_pad,
    ).view(torch.int32)
    meta = dict(
        WAVELET=wavelet.code, PTX=x.is_cuda, CHUNK_STEPS=CHUNK, GROUP_STEPS=cfg.unroll,
        POLY_MASK=poly_mask(cfg.poly_steps, cfg.unroll),
        BLOCK_B=cfg.block_m, BLOCK_PAIRS=cfg.block_n, **cfg.launch_options(),
    )

    def args(out, stride_yk, in_per_split):
        return (xt, pack, out, B, in_pad, OUT, b_pad, pairs_pad, *plane_offsets(pack), stride_yk, OUT, in_per_split)

    tiles = (b_pad // cfg.block_m, pairs_pad // cfg.block_n)
    # Splits take whole chunks (the fp16 sums flush per chunk), at least two each.
    return launch_split(_wavkan_fwd_half_kernel, tiles, in_pad, args, meta, y, cfg, step=CHUNK, min_per_split=2)
