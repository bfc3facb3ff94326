"""Triton device functions: psi and dpsi of every wavelet, in fp32.

Mirrors ``wavkan.wavelets`` (the torch catalogue and the oracle), which declares each
wavelet's code, traits and folded constants; this module reads them from there. Each dispatch
below has one branch per catalogue code and no default: an unknown code fails when the kernel
compiles (``tl.static_assert``), it never computes another wavelet. Gaussians use exp2 with
log2(e) folded into a constant, so each one is a single MUFU.EX2 on the GPU. With FAST (GPU
launches), sin and cos are the special-function unit's approximations after a reduction to
[-pi, pi] (absolute error about 2^-21) instead of libdevice's accurate versions, which cost
dozens of instructions and a stack frame; the interpreter has no inline PTX, so it takes
tl.sin/tl.cos.

The kernels take zs = k z and return psi (and dpsi) divided by per-wavelet constants, which
the launchers fold into the packed edge constants or the epilogue: ``Wavelet.fold`` for the
forward's ``wavelet_psi_folded``, ``Wavelet.fold_bwd`` for the backward's
``wavelet_psi_dpsi_folded``. For the Gaussian wavelets that takes log2(e)/2 and the
wavelet's normalisation out of the loop.

Polynomial factors of a Gaussian are peeled off one zs at a time, ``zs * (zs * e)``, never
``(zs * zs) * e``: where z is finite but its square overflows (a tiny scale) e is 0 and so is
every term, as in float64, instead of inf * 0 = NaN; an infinite z still gives NaN, as IEEE
arithmetic on the paper's formula does. The weight multiplies psi, never its terms
separately, so that an infinite weight gives an infinite term of psi's sign, not inf - inf.
"""

import math

import triton
import triton.language as tl

from ..wavelets import get_wavelet

MEXICAN_HAT = tl.constexpr(get_wavelet("mexican_hat").code)
MORLET = tl.constexpr(get_wavelet("morlet").code)
DOG = tl.constexpr(get_wavelet("dog").code)
MEYER = tl.constexpr(get_wavelet("meyer").code)
SHANNON = tl.constexpr(get_wavelet("shannon").code)

PI = tl.constexpr(3.141592653589793)
HALF_PI = tl.constexpr(0.5 * math.pi)
MEYER_DAUX_C = tl.constexpr(-140.0 * math.pi)  # aux'(v) = -pi sin(pi/2 nu) 140 (u (1 - u))^3
# Below this |z|, shannon's psi and dpsi use their series: (z cos z - sin z) / z^2 cancels
# in fp32, and the fast sine's absolute error would be amplified by 1/z.
SHANNON_SERIES_BELOW = tl.constexpr(0.5)

GAUSS_K = get_wavelet("mexican_hat").fold[0]
TWO_LN2 = tl.constexpr(2.0 * math.log(2.0))  # z^2 = 2 ln2 zs^2
TWO_LN2_THIRD = tl.constexpr(2.0 * math.log(2.0) / 3.0)
MORLET_OMEGA0_FOLDED = tl.constexpr(5.0 / GAUSS_K)
MORLET_OMEGA0_K = tl.constexpr(5.0 * GAUSS_K)
INV_TWO_PI = tl.constexpr(1.0 / (2.0 * math.pi))
# 2 pi split in two floats (Cody-Waite) so that x - n 2pi stays exact for moderate n.
TWO_PI_HI = tl.constexpr(6.28125)
TWO_PI_LO = tl.constexpr(2.0 * math.pi - 6.28125)
# morlet's angle omega0 z = (omega0 / k) zs is reduced on zs, whose period is P = 2 pi / (omega0 / k),
# split the same way: P_HI = 1092 / 1024 has 9 significant bits (n P_HI is exact for n < 2^15,
# far past where psi is not 0) and lies below P, so n P_HI never exceeds |zs| (no overflow).
_MORLET_PERIOD = 2.0 * math.pi / MORLET_OMEGA0_FOLDED.value
MORLET_INV_PERIOD = tl.constexpr(1.0 / _MORLET_PERIOD)
MORLET_PERIOD_HI = tl.constexpr(1092.0 / 1024.0)
MORLET_PERIOD_LO = tl.constexpr(_MORLET_PERIOD - 1092.0 / 1024.0)


@triton.jit
def _reduce_period(x, INV_PERIOD: tl.constexpr, PERIOD_HI: tl.constexpr, PERIOD_LO: tl.constexpr):
    """x - n P with n = round(x / P), in [-P/2, P/2] (P = PERIOD_HI + PERIOD_LO, Cody-Waite, so
    that x - n PERIOD_HI is exact for moderate n). Every P here is above 1 and every PERIOD_HI
    at most P, so no product exceeds |x|: a finite x never overflows (far out the result is
    inexact, but finite); an infinite x gives NaN."""
    n = tl.floor(x * INV_PERIOD + 0.5)
    return (x - n * PERIOD_HI) - n * PERIOD_LO


_SIN_APPROX = tl.constexpr("sin.approx.ftz.f32 $0, $1;")
_COS_APPROX = tl.constexpr("cos.approx.ftz.f32 $0, $1;")


@triton.jit
def _sfu_approx(a, PTX: tl.constexpr):
    # The special-function unit's sine or cosine (PTX names which) of a in [-pi, pi].
    return tl.inline_asm_elementwise(PTX, "=r,r", [a], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def sin_reduced(a, FAST: tl.constexpr):
    """sin(a) for a in [-pi, pi]."""
    if FAST:
        return _sfu_approx(a, _SIN_APPROX)
    else:
        return tl.sin(a)


@triton.jit
def cos_reduced(a, FAST: tl.constexpr):
    """cos(a) for a in [-pi, pi]."""
    if FAST:
        return _sfu_approx(a, _COS_APPROX)
    else:
        return tl.cos(a)


@triton.jit
def fsin(x, FAST: tl.constexpr):
    if FAST:
        return sin_reduced(_reduce_period(x, INV_TWO_PI, TWO_PI_HI, TWO_PI_LO), FAST)
    else:
        return tl.sin(x)


@triton.jit
def fcos(x, FAST: tl.constexpr):
    if FAST:
        return cos_reduced(_reduce_period(x, INV_TWO_PI, TWO_PI_HI, TWO_PI_LO), FAST)
    else:
        return tl.cos(x)


@triton.jit
def _morlet_angle(zs):
    """omega0 z for zs = k z, in [-pi, pi]: zs is reduced by the angle's period before the
    multiply. Multiplied first, omega0 z overflows fp32 for |z| > 6.8e37, where psi is 0 (the
    Gaussian is) and the overflowed cosine made it NaN."""
    return _reduce_period(zs, MORLET_INV_PERIOD, MORLET_PERIOD_HI, MORLET_PERIOD_LO) * MORLET_OMEGA0_FOLDED


@triton.jit
def _meyer_angle(v):
    """pi v in [-pi, pi] for v = |z|: v reduced by sin(pi v)'s period 2 (exactly: 2 n is)
    before the multiply. Multiplied first, pi v overflows fp32 for v > 1.08e38, where psi is 0
    (aux is) and the overflowed sine made it NaN; below v = 1 it is pi v itself."""
    return _reduce_period(v, 0.5, 2.0, 0.0) * PI


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
def _unknown_wavelet(WAVELET: tl.constexpr):
    tl.static_assert(False, "wavkan: no device function for this wavelet code (see wavkan.wavelets)")


@triton.jit
def wavelet_psi_folded(zs, WAVELET: tl.constexpr, FAST: tl.constexpr):
    """psi(z) / fold[1] for fp32 zs = z * fold[0] (``Wavelet.fold``)."""
    if WAVELET == MEXICAN_HAT:
        e = tl.exp2(zs * -zs)
        return (zs * (zs * e)) * TWO_LN2 - e  # z^2 e - e, peeled: zs * TWO_LN2 would overflow from |zs| = 2.4e38
    elif WAVELET == MORLET:
        return cos_reduced(_morlet_angle(zs), FAST) * tl.exp2(zs * -zs)
    elif WAVELET == DOG:
        return zs * tl.exp2(zs * -zs)
    elif WAVELET == MEYER:
        v = tl.abs(zs)
        half_pi_nu = _meyer_nu(2.0 * v - 1.0) * HALF_PI
        return sin_reduced(_meyer_angle(v), FAST) * _meyer_aux(v, half_pi_nu, FAST)
    elif WAVELET == SHANNON:
        return _sinc(zs, FAST)
    else:
        return _unknown_wavelet(WAVELET)


@triton.jit
def wavelet_psi_dpsi_folded(zs, WAVELET: tl.constexpr, FAST: tl.constexpr):
    """(psi(z) / P, dpsi/dz(z) / D) for fp32 zs = k z, sharing the exponential; (k, P, D) =
    ``Wavelet.fold_bwd``, which the launchers fold into the edge constants and the epilogue."""
    if WAVELET == MEXICAN_HAT:
        e = tl.exp2(zs * -zs)
        ze = zs * e
        z2e = zs * ze
        return z2e * TWO_LN2 - e, ze - (zs * TWO_LN2_THIRD) * z2e
    elif WAVELET == MORLET:
        e = tl.exp2(zs * -zs)
        angle = _morlet_angle(zs)
        c = cos_reduced(angle, FAST)
        s = sin_reduced(angle, FAST)
        return c * e, (s * MORLET_OMEGA0_K + zs * c) * e
    elif WAVELET == DOG:
        e = tl.exp2(zs * -zs)
        ze = zs * e
        return ze, (zs * ze) * TWO_LN2 - e  # peeled as mexican_hat's psi: no zs * TWO_LN2
    elif WAVELET == MEYER:
        v = tl.abs(zs)
        u = 2.0 * v - 1.0
        half_pi_nu = _meyer_nu(u) * HALF_PI
        aux = _meyer_aux(v, half_pi_nu, FAST)
        angle = _meyer_angle(v)
        sin_piv = sin_reduced(angle, FAST)
        mid = (v > 0.5) & (v < 1.0)
        uu = u * (1.0 - u)
        daux = tl.where(mid, fsin(half_pi_nu, FAST) * uu * uu * uu * MEYER_DAUX_C, 0.0)
        dpsi_dv = cos_reduced(angle, FAST) * aux * PI + sin_piv * daux
        sign = tl.where(zs > 0.0, 1.0, tl.where(zs < 0.0, -1.0, 0.0))
        return sin_piv * aux, sign * dpsi_dv
    elif WAVELET == SHANNON:
        near = tl.abs(zs) < SHANNON_SERIES_BELOW
        safe = tl.where(near, 1.0, zs)
        r = 1.0 / safe
        sinc = fsin(safe, FAST) * r
        # (z cos z - sin z) / z^2 as (cos z - sin(z)/z) / z: z^2 overflows fp32 for a tiny scale.
        direct = (fcos(safe, FAST) - sinc) * r
        z2 = zs * zs
        psi_series = 1.0 + z2 * (-1.0 / 6.0 + z2 * (1.0 / 120.0 + z2 * (-1.0 / 5040.0 + z2 * (1.0 / 362880.0))))
        series = zs * (-1.0 / 3.0 + z2 * (1.0 / 30.0 + z2 * (-1.0 / 840.0 + z2 * (1.0 / 45360.0))))
        return tl.where(near, psi_series, sinc), tl.where(near, series, direct)
    else:
        return _unknown_wavelet(WAVELET)


@triton.jit
def wavelet_grad_terms(zs, g, WAVELET: tl.constexpr, FAST: tl.constexpr):
    """(g psi', g dpsi', g dpsi' zs) with psi', dpsi' = ``wavelet_psi_dpsi_folded(zs)``: the
    parameter gradients' three sums. For mexican_hat g is applied to e once, before the
    factors of zs are peeled onto it."""
    if WAVELET == MEXICAN_HAT:
        ge = g * tl.exp2(zs * -zs)
        gze = zs * ge
        gz2e = zs * gze
        q = gze - (zs * TWO_LN2_THIRD) * gz2e
        return gz2e * TWO_LN2 - ge, q, q * zs
    else:
        psi, dpsi = wavelet_psi_dpsi_folded(zs, WAVELET, FAST)
        q = g * dpsi
        return g * psi, q, q * zs
