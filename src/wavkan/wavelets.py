"""The wavelet catalogue: every mother wavelet of Wav-KAN with its derivative, torch side.

Each wavelet maps z = (x - translation) / scale to psi(z) and dpsi/dz. The formulas are
those of the paper's code (arXiv 2405.12832); where the paper's code branches with
``torch.where`` or ``abs``, the derivative here is what PyTorch autograd gives for that
code (abs'(0) = 0, the branch picked by the condition).

Shannon's window is not a function of z but of the input index i; it is kept apart as
``Wavelet.window`` and multiplies the wavelet weights (``w[o, i] * H[i]``), which is how
both backends apply it.

Every fact about a wavelet is declared here, once: its name, its code inside the Triton
kernels, its torch functions, and the traits the kernels read (``Wavelet.gaussian``, the
folded constants ``Wavelet.fold`` and ``Wavelet.fold_bwd``).
Nothing else keeps a list of wavelets. Adding one: README.md, "Adding a wavelet".

Overflow: where z is finite but z^2 overflows (a tiny scale), every Gaussian wavelet is 0, as
in float64, not inf * 0 = NaN: the polynomial factors are peeled off one z at a time
(``z * (z * e)``, never ``(z * z) * e``), and shannon's derivative is (cos z - sin(z)/z) / z.
An infinite z (an infinite input, or a zero scale) gives what IEEE arithmetic on the paper's
formula gives: NaN for the paper's wavelets. A sine or cosine's argument never overflows where z
is finite (morlet's omega0 z, meyer's pi v): psi is 0 out there, as in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["Wavelet", "WAVELETS", "CATALOGUE", "get_wavelet", "MEXICAN_HAT_C", "GAUSS_K"]

# 2 / (sqrt(3) * pi^(1/4)): the Mexican-hat normalisation of the paper's code.
MEXICAN_HAT_C = 2.0 / (math.sqrt(3.0) * math.pi**0.25)
MORLET_OMEGA0 = 5.0
# The kernels evaluate Gaussians as exp(-z^2/2) = exp2(-(k z)^2), k = sqrt(log2(e) / 2).
GAUSS_K = math.sqrt(0.5 / math.log(2.0))
# Below this |z| shannon's derivative uses its Taylor series, where (z cos z - sin z) / z^2
# cancels: four terms are exact to rounding below 0.5 in fp32 and below 0.1 in float64.
SHANNON_SERIES_BELOW = {torch.float32: 0.5, torch.float64: 0.1}


def _gauss(z2: Tensor) -> Tensor:
    return torch.exp(-0.5 * z2)


def _mexican_hat(z: Tensor, need_dpsi: bool):
    # psi = C (z^2 - 1) e = z (z C e) - C e; dpsi = C z (3 - z^2) e = 3 (z C e) - z (z (z C e)).
    ce = MEXICAN_HAT_C * _gauss(z * z)
    zce = z * ce
    if not _differentiable(z):
        # The reference backward's path: in-place steps save memory passes on CPU.
        z2ce = z * zce
        psi = z2ce - ce
        return psi, (zce.mul_(3.0).sub_(z2ce.mul_(z)) if need_dpsi else None)
    z2ce = z * zce
    return z2ce - ce, (3.0 * zce - z * z2ce if need_dpsi else None)


# Past this |z| the Gaussian is 0 in every float dtype (float64's underflows from |z| = 39):
# morlet's angle is taken at most this far out, so that omega0 z cannot overflow (fp32 from
# |z| = 6.8e37, where the overflowed cosine made psi NaN instead of 0). Small enough for
# float16 too (omega0 1e4 < 65504).
_MORLET_ANGLE_BOUND = 1e4


def _morlet(z: Tensor, need_dpsi: bool):
    e = _gauss(z * z)
    # z itself (and its gradient) up to the bound, the bound past it, NaN where z is infinite
    # (inf - inf), as cos(omega0 inf) makes it in the paper's formula.
    angle = MORLET_OMEGA0 * (z + (z.clamp(-_MORLET_ANGLE_BOUND, _MORLET_ANGLE_BOUND) - z).detach())
    c = torch.cos(angle)
    psi = c * e
    if not need_dpsi:
        return psi, None
    return psi, -(MORLET_OMEGA0 * torch.sin(angle) + z * c) * e


def _dog(z: Tensor, need_dpsi: bool):
    e = _gauss(z * z)
    ze = z * e
    if not need_dpsi:
        return -ze, None
    # dpsi = (z^2 - 1) e = z (z e) - e
    return -ze, (z * ze - e)


def _differentiable(z: Tensor) -> bool:
    """Whether autograd records ops on z (then no in-place tricks)."""
    return z.requires_grad and torch.is_grad_enabled()


def _meyer_nu(u: Tensor) -> Tensor:
    return u**4 * (35.0 - 84.0 * u + 70.0 * u * u - 20.0 * u**3)


# sin(a) = a * sum_k (-1)^k a^(2k) / (2k+1)!, truncated where the next term is below the
# dtype's rounding for |a| <= pi/2: a^13 for float32 (next term 6.7e-10), a^21 for float64
# (next term 1.3e-18).
_SIN_TAYLOR = {n: tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(n)) for n in (7, 11)}


def _sin_half_period(a: Tensor) -> Tensor:
    """sin(a) for |a| <= pi/2 as its Taylor polynomial (Horner): only multiplies and adds,
    which compiled CPU code runs as vector instructions where a sine is a library call."""
    coeffs = _SIN_TAYLOR[11 if a.dtype == torch.float64 else 7]
    a2 = a * a
    acc = a2 * coeffs[-1] + coeffs[-2]
    for c in coeffs[-3::-1]:
        acc = acc * a2 + c
    return a * acc


def _meyer(z: Tensor, need_dpsi: bool):
    # psi and dpsi vanish from v = 1 on and aux is 1 up to v = 1/2, so v is clamped to 1 and u
    # to [0, 1]: every angle below then lies in [0, pi], and each sine or cosine is taken as the
    # sine of an angle in [-pi/2, pi/2] (_sin_half_period), chosen so that it is small exactly
    # where the value is (relative accuracy near every zero):
    #   sin(pi v) = sin(pi min(v, 1 - v)),  cos(pi v) = sin(pi (1/2 - v)),
    #   and for th = pi/2 nu(u) in [0, pi/2]: sin th, cos th = sin(pi/2 - th).
    # On the CPU this makes meyer's passes about as cheap as the exp wavelets' (four sines and
    # cosines per edge were most of its backward).
    v = z.abs()
    # + (v - v): NaN where z is infinite, as sin(pi * inf) makes it in the paper's formula.
    vc = v.clamp(max=1.0) + (v - v)
    u = (2.0 * vc - 1.0).clamp(min=0.0)
    mid = (v > 0.5) & (v < 1.0)
    half_pi_nu = (0.5 * math.pi) * _meyer_nu(u)
    cos_nu = _sin_half_period((0.5 * math.pi) - half_pi_nu)
    aux = torch.where(v <= 0.5, torch.ones_like(v), torch.where(v >= 1.0, torch.zeros_like(v), cos_nu))
    sin_piv = _sin_half_period(math.pi * torch.minimum(vc, 1.0 - vc))
    psi = sin_piv * aux
    if not need_dpsi:
        return psi, None
    cos_piv = _sin_half_period(math.pi * (0.5 - vc))
    # nu'(u) = 140 u^3 (1 - u)^3; d aux/dv = -sin(pi/2 nu) * pi/2 * nu'(u) * 2.
    daux = torch.where(mid, -math.pi * _sin_half_period(half_pi_nu) * 140.0 * (u * (1.0 - u)) ** 3,
                       torch.zeros_like(v))  # fmt: skip
    dpsi_dv = math.pi * cos_piv * aux + sin_piv * daux
    return psi, torch.sign(z) * dpsi_dv


def _shannon(z: Tensor, need_dpsi: bool):
    zero = z == 0
    safe = torch.where(zero, torch.ones_like(z), z)
    s = torch.sin(safe)
    psi = torch.where(zero, torch.ones_like(z), s / safe)
    if not need_dpsi:
        return psi, None
    # (z cos z - sin z) / z^2 written as (cos z - sin(z)/z) / z: z^2 would overflow fp32 for
    # |z| > 1.8e19 (a tiny scale) and turn a finite derivative into 0.
    direct = (torch.cos(safe) - s / safe) / safe
    z2 = z * z
    series = z * (-1.0 / 3.0 + z2 * (1.0 / 30.0 + z2 * (-1.0 / 840.0 + z2 * (1.0 / 45360.0))))
    below = SHANNON_SERIES_BELOW.get(z.dtype, 0.5)
    return psi, torch.where(z.abs() < below, series, direct)


def _hamming_window(n: int, dtype: torch.dtype, device) -> Tensor:
    # The paper's code: torch.hamming_window(in, periodic=False); a length-1 window is [1].
    # Computed in float64 for float64 and in fp32 otherwise: in bf16 the window itself is off
    # by up to 3% (its cosine and 0.54 - 0.46 c rounded to 8 bits), whatever the weights are.
    return torch.hamming_window(n, periodic=False, dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                                device=device)  # fmt: skip


@dataclass(frozen=True)
class Wavelet:
    """One mother wavelet and everything the backends need to know about it.

    ``psi_dpsi(z, need_dpsi)`` returns ``(psi(z), dpsi/dz(z) or None)`` elementwise.
    ``window(in_features, dtype, device)``, when set, is the per-input-index factor H[i]
    that multiplies the wavelet weights, in float64 for float64 and fp32 for the other dtypes.

    Kernel traits (read by ``wavkan.kernels``; a new wavelet also needs its branch in the
    dispatch of ``wavkan.kernels.device``):

    - ``code``: the wavelet's number inside the Triton kernels (``WAVELET`` constexpr);
    - ``gaussian``: one exp2 and a few fp32 operations per evaluation, no sine or cosine: the
      kernels unroll these loops (measured faster; the trigonometric ones are long already);
    - ``envelope``: psi has the Gaussian factor exp(-z^2 / 2), one exp2 per evaluation (with
      ``gaussian`` it picks the wavelet's launch configs: ``kernels.tuning.family``);
    - ``fold = (k, m)``: the forward kernel evaluates psi(z) / m at k z (k and m are folded
      into the packed edge constants, so that the inner loop does not multiply by them);
    - ``fold_bwd = (k, P, D)``: the backward kernels evaluate psi(z) / P and dpsi(z) / D at k z.
    """

    name: str
    code: int
    psi_dpsi: Callable[[Tensor, bool], tuple]
    window: Optional[Callable[[int, torch.dtype, object], Tensor]] = None
    gaussian: bool = False
    envelope: bool = False
    fold: tuple = (1.0, 1.0)
    fold_bwd: tuple = (1.0, 1.0, 1.0)

    def psi(self, z: Tensor) -> Tensor:
        return self.psi_dpsi(z, False)[0]

    def fold_window(self, weights: Tensor) -> tuple:
        """(w H, H) for a wavelet with a window: w H in the compute dtype (fp32, or float64),
        never rounded back to a half dtype, differentiable in ``weights`` (detach to keep it)."""
        window = self.window(weights.shape[1], weights.dtype, weights.device)
        return weights.to(window.dtype) * window, window


# Folded constants of the Gaussian wavelets, with zs = k z, z^2 = 2 ln2 zs^2, e = exp2(-zs^2)
# (kernels/device.py evaluates the right-hand sides):
# mexican_hat: psi / C = (2 ln2 zs^2 - 1) e, dpsi / (3 C / k) = zs e - (2 ln2 / 3) zs^2 (zs e);
# morlet: dpsi = -(5 sin 5z + z cos 5z) e = (-1/k) (5k sin + zs cos) e;
# dog: psi = -z e = (-1/k) zs e, dpsi = (z^2 - 1) e.
_CATALOGUE = {
    w.name: w
    for w in (
        Wavelet("mexican_hat", 0, _mexican_hat, gaussian=True, envelope=True, fold=(GAUSS_K, MEXICAN_HAT_C),
                fold_bwd=(GAUSS_K, MEXICAN_HAT_C, 3.0 * MEXICAN_HAT_C / GAUSS_K)),
        Wavelet("morlet", 1, _morlet, envelope=True, fold=(GAUSS_K, 1.0), fold_bwd=(GAUSS_K, 1.0, -1.0 / GAUSS_K)),
        Wavelet("dog", 2, _dog, gaussian=True, envelope=True, fold=(GAUSS_K, -1.0 / GAUSS_K),
                fold_bwd=(GAUSS_K, -1.0 / GAUSS_K, 1.0)),
        Wavelet("meyer", 3, _meyer),
        Wavelet("shannon", 4, _shannon, window=_hamming_window),
    )
}

WAVELETS: tuple = tuple(_CATALOGUE)
CATALOGUE: tuple = tuple(_CATALOGUE.values())


def get_wavelet(name) -> Wavelet:
    """The catalogue entry for ``name``; a ValueError listing the valid names otherwise."""
    if isinstance(name, Wavelet):
        return name
    try:
        return _CATALOGUE[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown wavelet {name!r}; expected one of {', '.join(WAVELETS)}") from None

