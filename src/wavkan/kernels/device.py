"""Triton device functions: psi and dpsi of every wavelet, in fp32.

Mirrors ``wavkan.wavelets`` (the torch catalogue and the oracle); the codes match
``Wavelet.code``. Gaussians use exp2 with log2(e) folded into a constant, so each one is a
single MUFU.EX2 on the GPU. With FAST (GPU launches), sin and cos are the special-function
unit's approximations after a reduction to [-pi, pi] (absolute error about 2^-21) instead of
libdevice's accurate versions, which cost dozens of instructions and a stack frame; the
interpreter has no inline PTX, so it takes tl.sin/tl.cos.

The forward uses ``wavelet_psi_folded``: z arrives pre-multiplied by ``FOLD[code][0]`` and the
result is psi divided by ``FOLD[code][1]`` (the launcher folds both into the packed edge
constants), which saves two fp32 operations per evaluation of the Gaussian wavelets.
"""

import math

import triton
import triton.language as tl

MEXICAN_HAT = tl.constexpr(0)
MORLET = tl.constexpr(1)
DOG = tl.constexpr(2)
MEYER = tl.constexpr(3)
SHANNON = tl.constexpr(4)

NEG_HALF_LOG2E = tl.constexpr(-0.7213475204444817)  # -log2(e) / 2: exp(-z^2/2) = exp2(z^2 * this)
MEXICAN_HAT_C = tl.constexpr(0.8673250705840776)  # 2 / (sqrt(3) pi^(1/4))
MORLET_OMEGA0 = tl.constexpr(5.0)
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
TWO_LN2 = tl.constexpr(2.0 * math.log(2.0))
MORLET_OMEGA0_FOLDED = tl.constexpr(5.0 / GAUSS_K)
INV_TWO_PI = tl.constexpr(1.0 / (2.0 * math.pi))
# 2 pi split in two floats (Cody-Waite) so that x - n 2pi stays exact for moderate n.
TWO_PI_HI = tl.constexpr(6.28125)
TWO_PI_LO = tl.constexpr(2.0 * math.pi - 6.28125)


@triton.jit
def _reduce_2pi(x):
    n = tl.floor(x * INV_TWO_PI + 0.5)
    return (x - n * TWO_PI_HI) - n * TWO_PI_LO


@triton.jit
def fsin(x, FAST: tl.constexpr):
    if FAST:
        return tl.inline_asm_elementwise(
            "sin.approx.ftz.f32 $0, $1;", "=r,r", [_reduce_2pi(x)], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.sin(x)


@triton.jit
def fcos(x, FAST: tl.constexpr):
    if FAST:
        return tl.inline_asm_elementwise(
            "cos.approx.ftz.f32 $0, $1;", "=r,r", [_reduce_2pi(x)], dtype=tl.float32, is_pure=True, pack=1
        )
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
def wavelet_psi_dpsi(z, WAVELET: tl.constexpr, FAST: tl.constexpr):
    """(psi(z), dpsi/dz(z)) for fp32 z, sharing the exponential."""
    if WAVELET == MEXICAN_HAT:
        z2 = z * z
        ce = tl.exp2(z2 * NEG_HALF_LOG2E) * MEXICAN_HAT_C
        return (z2 - 1.0) * ce, z * (3.0 - z2) * ce
    elif WAVELET == MORLET:
        e = tl.exp2(z * z * NEG_HALF_LOG2E)
        c = fcos(z * MORLET_OMEGA0, FAST)
        s = fsin(z * MORLET_OMEGA0, FAST)
        return c * e, -(s * MORLET_OMEGA0 + z * c) * e
    elif WAVELET == DOG:
        e = tl.exp2(z * z * NEG_HALF_LOG2E)
        return -z * e, (z * z - 1.0) * e
    elif WAVELET == MEYER:
        v = tl.abs(z)
        u = 2.0 * v - 1.0
        half_pi_nu = _meyer_nu(u) * HALF_PI
        aux = _meyer_aux(v, half_pi_nu, FAST)
        sin_piv = fsin(v * PI, FAST)
        mid = (v > 0.5) & (v < 1.0)
        uu = u * (1.0 - u)
        daux = tl.where(mid, fsin(half_pi_nu, FAST) * uu * uu * uu * MEYER_DAUX_C, 0.0)
        dpsi_dv = fcos(v * PI, FAST) * aux * PI + sin_piv * daux
        sign = tl.where(z > 0.0, 1.0, tl.where(z < 0.0, -1.0, 0.0))
        return sin_piv * aux, sign * dpsi_dv
    else:  # SHANNON
        near = tl.abs(z) < SHANNON_SERIES_BELOW
        safe = tl.where(near, 1.0, z)
        s = fsin(safe, FAST)
        direct = (safe * fcos(safe, FAST) - s) / (safe * safe)
        z2 = z * z
        series = z * (-1.0 / 3.0 + z2 * (1.0 / 30.0 + z2 * (-1.0 / 840.0 + z2 * (1.0 / 45360.0))))
        return _sinc(z, FAST), tl.where(near, series, direct)
