"""Triton device functions: psi and dpsi of every wavelet, in fp32.

Mirrors ``wavkan.wavelets`` (the torch catalogue and the oracle); the codes match
``Wavelet.code``. Gaussians use exp2 with log2(e) folded into a constant, so each one is a
single MUFU.EX2 on the GPU. With FAST (GPU launches), sin and cos are the special-function
unit's approximations after a reduction to [-pi, pi] (absolute error about 2^-21) instead of
libdevice's accurate versions, which cost dozens of instructions and a stack frame; the
interpreter has no inline PTX, so it takes tl.sin/tl.cos.

The kernels take z pre-multiplied by a per-wavelet k and return psi (and dpsi) divided by
per-wavelet constants, which the launchers fold into the packed edge constants or the
epilogue: ``FOLD`` for the forward's ``wavelet_psi_folded``, ``FOLD_BWD`` for the backward's
``wavelet_psi_dpsi_folded``. For the Gaussian wavelets that takes log2(e)/2 and the wavelet's
normalisation out of the loop: mexican_hat's forward is one MUFU.EX2 and five fp32 instructions.
"""

import math

import triton
import triton.language as tl

MEXICAN_HAT = tl.constexpr(0)
MORLET = tl.constexpr(1)
DOG = tl.constexpr(2)
MEYER = tl.constexpr(3)
SHANNON = tl.constexpr(4)

PI = tl.constexpr(3.141592653589793)
HALF_PI = tl.constexpr(0.5 * math.pi)
MEYER_DAUX_C = tl.constexpr(-140.0 * math.pi)  # aux'(v) = -pi sin(pi/2 nu) 140 (u (1 - u))^3
# Below this |z|, shannon's psi and dpsi use their series: (z cos z - sin z) / z^2 cancels
# in fp32, and the fast sine's absolute error would be amplified by 1/z.
SHANNON_SERIES_BELOW = tl.constexpr(0.5)


# exp(-z^2/2) = exp2(-(k z)^2) with k = sqrt(log2(e) / 2).
GAUSS_K = math.sqrt(0.5 / math.log(2.0))
_MEXICAN_HAT_C_PY = 2.0 / (math.sqrt(3.0) * math.pi**0.25)
# (z scale, weight scale) per wavelet code: the forward evaluates psi(z) / weight scale at k z.
FOLD = {
    0: (GAUSS_K, _MEXICAN_HAT_C_PY),  # C (z^2 - 1) e = C * ((kz)^2 * 2 ln 2 - 1) * exp2(-(kz)^2)
    1: (GAUSS_K, 1.0),  # cos(5 z) e = cos((5/k) kz) * exp2(-(kz)^2)
    2: (GAUSS_K, -1.0 / GAUSS_K),  # -z e = (-1/k) * kz * exp2(-(kz)^2)
    3: (1.0, 1.0),
    4: (1.0, 1.0),
}
# (z scale k, psi scale P, dpsi scale D) per wavelet code for the backward: it evaluates
# psi(z) / P and dpsi(z) / D at k z. mexican_hat: psi = C (z^2 - 1) e, dpsi = (C/k) kz (3 - z^2) e;
# morlet: dpsi = -(5 sin 5z + z cos 5z) e = (-1/k) (5k sin + kz cos) e; dog: psi = (-1/k) kz e.
FOLD_BWD = {
    0: (GAUSS_K, _MEXICAN_HAT_C_PY, _MEXICAN_HAT_C_PY / GAUSS_K),
    1: (GAUSS_K, 1.0, -1.0 / GAUSS_K),
    2: (GAUSS_K, -1.0 / GAUSS_K, 1.0),
    3: (1.0, 1.0, 1.0),
    4: (1.0, 1.0, 1.0),
}
TWO_LN2 = tl.constexpr(2.0 * math.log(2.0))
MORLET_OMEGA0_FOLDED = tl.constexpr(5.0 / GAUSS_K)
MORLET_OMEGA0_K = tl.constexpr(5.0 * GAUSS_K)
INV_TWO_PI = tl.constexpr(1.0 / (2.0 * math.pi))
# 2 pi split in two floats (Cody-Waite) so that x - n 2pi stays exact for moderate n.
TWO_PI_HI = tl.constexpr(6.28125)
TWO_PI_LO = tl.constexpr(2.0 * math.pi - 6.28125)


@triton.jit
def _reduce_2pi(x):
    n = tl.floor(x * INV_TWO_PI + 0.5)
    return (x - n * TWO_PI_HI) - n * TWO_PI_LO


_SIN_APPROX = tl.constexpr("sin.approx.ftz.f32 $0, $1;")
_COS_APPROX = tl.constexpr("cos.approx.ftz.f32 $0, $1;")


@triton.jit
def _sfu_approx(x, PTX: tl.constexpr):
    # The special-function unit's sine or cosine (PTX names which) of x reduced to [-pi, pi].
    return tl.inline_asm_elementwise(PTX, "=r,r", [_reduce_2pi(x)], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def fsin(x, FAST: tl.constexpr):
    if FAST:
        return _sfu_approx(x, _SIN_APPROX)
    else:
        return tl.sin(x)


@triton.jit
def fcos(x, FAST: tl.constexpr):
    if FAST:
        return _sfu_approx(x, _COS_APPROX)
    else:
        return tl.cos(x)


@triton.jit
def _sinc(z, FAST: tl.constexpr):
    # sin(z)/z; near 0 its series, exact to rounding below 0.5, because the fast sine's
    # absolute error (2^-21) would be divided by a small z.
    near = tl.abs(z) < SHANNON_SERIES_BELOW
    safe = tl.where(near, 1.0, z)
    z2 = z * z
    series = 1.0 + z2 * (-1.0 / 6.0 + z2 * (1.0 / 120.0 + z2 * (-1.0 / 5040.0 + z2 * (1.0 / 362880.0))))
    return tl.where(near, series, fsin(safe, FAST) / safe)


@triton.jit
def _meyer_nu(u):
    u2 = u * u
    return u2 * u2 * (35.0 + u * (-84.0 + u * (70.0 - 20.0 * u)))


@triton.jit
def _meyer_aux(v, half_pi_nu, FAST: tl.constexpr):
    # aux = 1 on v <= 1/2, 0 on v >= 1, cos(pi/2 nu(2v - 1)) between (the paper's torch.where).
    return tl.where(v <= 0.5, 1.0, tl.where(v >= 1.0, 0.0, fcos(half_pi_nu, FAST)))


@triton.jit
def wavelet_psi_folded(zs, WAVELET: tl.constexpr, FAST: tl.constexpr):
    """psi(z) / FOLD[code][1] for fp32 zs = z * FOLD[code][0]."""
    if WAVELET == MEXICAN_HAT:
        m = zs * -zs  # -(kz)^2 = -z^2 log2(e) / 2
        return (m * -TWO_LN2 - 1.0) * tl.exp2(m)
    elif WAVELET == MORLET:
        return fcos(zs * MORLET_OMEGA0_FOLDED, FAST) * tl.exp2(zs * -zs)
    elif WAVELET == DOG:
        return zs * tl.exp2(zs * -zs)
    elif WAVELET == MEYER:
        v = tl.abs(zs)
        half_pi_nu = _meyer_nu(2.0 * v - 1.0) * HALF_PI
        return fsin(v * PI, FAST) * _meyer_aux(v, half_pi_nu, FAST)
    else:  # SHANNON
        return _sinc(zs, FAST)


@triton.jit
def wavelet_weighted_psi(zs, w, WAVELET: tl.constexpr, FAST: tl.constexpr):
    """w psi(z) / FOLD[code][1] for fp32 zs = z * FOLD[code][0] and w (1, N): the forward's
    term, w its per-column packed weight. For mexican_hat w psi' = (m (-2 ln2 w) - w) e with
    m = -zs^2, e = exp2(m): both weight factors are per column, so an evaluation costs
    3 FFMA + 1 FMUL + 1 MUFU.EX2 instead of psi' and a multiply by w."""
    if WAVELET == MEXICAN_HAT:
        m = zs * -zs
        return (m * (w * -TWO_LN2) - w) * tl.exp2(m)
    else:
        return w * wavelet_psi_folded(zs, WAVELET, FAST)


@triton.jit
def wavelet_psi_dpsi_folded(zs, WAVELET: tl.constexpr, FAST: tl.constexpr):
    """(psi(z) / P, dpsi/dz(z) / D) for fp32 zs = k z, sharing the exponential; (k, P, D) =
    ``FOLD_BWD[code]``, which the launchers fold into the edge constants and the epilogue."""
    if WAVELET == MEXICAN_HAT:
        m = zs * -zs  # -(kz)^2; z^2 = -2 ln2 m
        e = tl.exp2(m)
        return (m * -TWO_LN2 - 1.0) * e, zs * (m * TWO_LN2 + 3.0) * e
    elif WAVELET == MORLET:
        e = tl.exp2(zs * -zs)
        c = fcos(zs * MORLET_OMEGA0_FOLDED, FAST)
        s = fsin(zs * MORLET_OMEGA0_FOLDED, FAST)
        return c * e, (s * MORLET_OMEGA0_K + zs * c) * e
    elif WAVELET == DOG:
        m = zs * -zs
        e = tl.exp2(m)
        return zs * e, (m * -TWO_LN2 - 1.0) * e
    elif WAVELET == MEYER:
        v = tl.abs(zs)
        u = 2.0 * v - 1.0
        half_pi_nu = _meyer_nu(u) * HALF_PI
        aux = _meyer_aux(v, half_pi_nu, FAST)
        sin_piv = fsin(v * PI, FAST)
        mid = (v > 0.5) & (v < 1.0)
        uu = u * (1.0 - u)
        daux = tl.where(mid, fsin(half_pi_nu, FAST) * uu * uu * uu * MEYER_DAUX_C, 0.0)
        dpsi_dv = fcos(v * PI, FAST) * aux * PI + sin_piv * daux
        sign = tl.where(zs > 0.0, 1.0, tl.where(zs < 0.0, -1.0, 0.0))
        return sin_piv * aux, sign * dpsi_dv
    else:  # SHANNON
        near = tl.abs(zs) < SHANNON_SERIES_BELOW
        safe = tl.where(near, 1.0, zs)
        s = fsin(safe, FAST)
        direct = (safe * fcos(safe, FAST) - s) / (safe * safe)
        z2 = zs * zs
        series = zs * (-1.0 / 3.0 + z2 * (1.0 / 30.0 + z2 * (-1.0 / 840.0 + z2 * (1.0 / 45360.0))))
        return _sinc(zs, FAST), tl.where(near, series, direct)


@triton.jit
def wavelet_grad_terms(zs, g, WAVELET: tl.constexpr, FAST: tl.constexpr):
    """(g psi', g dpsi', g dpsi' zs) with psi', dpsi' = ``wavelet_psi_dpsi_folded(zs)``: the
    parameter gradients' three sums. For mexican_hat, where psi' = (-2 ln2 m - 1) e and
    dpsi' = zs r e with m = -zs^2, e = exp2(m), r = 3 + 2 ln2 m: g is applied to e once and
    zs dpsi' = -m r e comes from m, two fp32 instructions fewer per evaluation."""
    if WAVELET == MEXICAN_HAT:
        m = zs * -zs
        u = g * tl.exp2(m)
        v = u * (m * TWO_LN2 + 3.0)
        return u * (m * -TWO_LN2 - 1.0), v * zs, v * -m
    else:
        psi, dpsi = wavelet_psi_dpsi_folded(zs, WAVELET, FAST)
        q = g * dpsi
        return g * psi, q, q * zs
