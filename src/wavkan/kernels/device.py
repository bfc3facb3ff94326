"""Triton device functions: psi and dpsi of every wavelet, in fp32.

Mirrors ``wavkan.wavelets`` (the torch catalogue and the oracle); the codes match
``Wavelet.code``. Gaussians use exp2 with log2(e) folded into the exponent's constant, so
each one is a single MUFU.EX2 on the GPU.
"""

import triton
import triton.language as tl

MEXICAN_HAT: tl.constexpr = 0
MORLET: tl.constexpr = 1
DOG: tl.constexpr = 2
MEYER: tl.constexpr = 3
SHANNON: tl.constexpr = 4

NEG_HALF_LOG2E: tl.constexpr = -0.7213475204444817  # -log2(e) / 2: exp(-z^2/2) = exp2(z^2 * this)
MEXICAN_HAT_C: tl.constexpr = 0.8673250705840776  # 2 / (sqrt(3) pi^(1/4))
MORLET_OMEGA0: tl.constexpr = 5.0
PI: tl.constexpr = 3.141592653589793
# Below this |z|, shannon's dpsi uses its series: (z cos z - sin z) / z^2 cancels in fp32.
SHANNON_SERIES_BELOW: tl.constexpr = 0.5


@triton.jit
def _meyer_nu(u):
    u2 = u * u
    return u2 * u2 * (35.0 + u * (-84.0 + u * (70.0 - 20.0 * u)))


@triton.jit
def _meyer_aux(v, half_pi_nu):
    # aux = 1 on v <= 1/2, 0 on v >= 1, cos(pi/2 nu(2v - 1)) between (the paper's torch.where).
    return tl.where(v <= 0.5, 1.0, tl.where(v >= 1.0, 0.0, tl.cos(half_pi_nu)))


@triton.jit
def wavelet_psi(z, WAVELET: tl.constexpr):
    """psi(z) for fp32 z."""
    if WAVELET == MEXICAN_HAT:
        z2 = z * z
        return MEXICAN_HAT_C * (z2 - 1.0) * tl.exp2(z2 * NEG_HALF_LOG2E)
    elif WAVELET == MORLET:
        return tl.cos(MORLET_OMEGA0 * z) * tl.exp2(z * z * NEG_HALF_LOG2E)
    elif WAVELET == DOG:
        return -z * tl.exp2(z * z * NEG_HALF_LOG2E)
    elif WAVELET == MEYER:
        v = tl.abs(z)
        half_pi_nu = (0.5 * PI) * _meyer_nu(2.0 * v - 1.0)
        return tl.sin(PI * v) * _meyer_aux(v, half_pi_nu)
    else:  # SHANNON
        zero = z == 0.0
        safe = tl.where(zero, 1.0, z)
        return tl.where(zero, 1.0, tl.sin(safe) / safe)


@triton.jit
def wavelet_psi_dpsi(z, WAVELET: tl.constexpr):
    """(psi(z), dpsi/dz(z)) for fp32 z, sharing the exponential."""
    if WAVELET == MEXICAN_HAT:
        z2 = z * z
        ce = MEXICAN_HAT_C * tl.exp2(z2 * NEG_HALF_LOG2E)
        return (z2 - 1.0) * ce, z * (3.0 - z2) * ce
    elif WAVELET == MORLET:
        e = tl.exp2(z * z * NEG_HALF_LOG2E)
        c = tl.cos(MORLET_OMEGA0 * z)
        s = tl.sin(MORLET_OMEGA0 * z)
        return c * e, -(MORLET_OMEGA0 * s + z * c) * e
    elif WAVELET == DOG:
        e = tl.exp2(z * z * NEG_HALF_LOG2E)
        return -z * e, (z * z - 1.0) * e
    elif WAVELET == MEYER:
        v = tl.abs(z)
        u = 2.0 * v - 1.0
        half_pi_nu = (0.5 * PI) * _meyer_nu(u)
        aux = _meyer_aux(v, half_pi_nu)
        sin_piv = tl.sin(PI * v)
        mid = (v > 0.5) & (v < 1.0)
        uu = u * (1.0 - u)
        daux = tl.where(mid, (-140.0 * PI) * tl.sin(half_pi_nu) * uu * uu * uu, 0.0)
        dpsi_dv = PI * tl.cos(PI * v) * aux + sin_piv * daux
        sign = tl.where(z > 0.0, 1.0, tl.where(z < 0.0, -1.0, 0.0))
        return sin_piv * aux, sign * dpsi_dv
    else:  # SHANNON
        zero = z == 0.0
        safe = tl.where(zero, 1.0, z)
        s = tl.sin(safe)
        c = tl.cos(safe)
        psi = tl.where(zero, 1.0, s / safe)
        direct = (safe * c - s) / (safe * safe)
        z2 = z * z
        series = z * (-1.0 / 3.0 + z2 * (1.0 / 30.0 + z2 * (-1.0 / 840.0 + z2 * (1.0 / 45360.0))))
        return psi, tl.where(tl.abs(z) < SHANNON_SERIES_BELOW, series, direct)
