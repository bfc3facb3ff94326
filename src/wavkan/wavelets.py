"""The wavelet catalogue: every mother wavelet of Wav-KAN with its derivative, torch side.

Each wavelet maps z = (x - translation) / scale to psi(z) and dpsi/dz. The formulas are
those of the paper's code (arXiv 2405.12832); where the paper's code branches with
``torch.where`` or ``abs``, the derivative here is what PyTorch autograd gives for that
code (abs'(0) = 0, the branch picked by the condition).

Shannon's window is not a function of z but of the input index i; it is kept apart as
``Wavelet.window`` and multiplies the wavelet weights (``w[o, i] * H[i]``), which is how
both backends apply it.

Adding a wavelet: add its ``psi_dpsi`` here and its device function in
``wavkan.kernels.device``; the tests parametrise over ``WAVELETS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["Wavelet", "WAVELETS", "get_wavelet", "MEXICAN_HAT_C"]

# 2 / (sqrt(3) * pi^(1/4)): the Mexican-hat normalisation of the paper's code.
MEXICAN_HAT_C = 2.0 / (math.sqrt(3.0) * math.pi**0.25)
MORLET_OMEGA0 = 5.0
# Below this |z| shannon's derivative uses its Taylor series, where (z cos z - sin z) / z^2
# cancels: four terms are exact to rounding below 0.5 in fp32 and below 0.1 in float64.
SHANNON_SERIES_BELOW = {torch.float32: 0.5, torch.float64: 0.1}


def _gauss(z2: Tensor) -> Tensor:
    return torch.exp(-0.5 * z2)


def _mexican_hat(z: Tensor, need_dpsi: bool):
    z2 = z * z
    ce = MEXICAN_HAT_C * _gauss(z2)
    if not _differentiable(z):
        # The reference backward's path: in-place steps save memory passes on CPU.
        psi = (z2 - 1.0).mul_(ce)
        return psi, (z2.neg_().add_(3.0).mul_(z).mul_(ce) if need_dpsi else None)
    return (z2 - 1.0) * ce, (z * (3.0 - z2) * ce if need_dpsi else None)


def _morlet(z: Tensor, need_dpsi: bool):
    e = _gauss(z * z)
    c = torch.cos(MORLET_OMEGA0 * z)
    psi = c * e
    if not need_dpsi:
        return psi, None
    return psi, -(MORLET_OMEGA0 * torch.sin(MORLET_OMEGA0 * z) + z * c) * e


def _dog(z: Tensor, need_dpsi: bool):
    z2 = z * z
    e = _gauss(z2)
    psi = -z * e
    if not need_dpsi:
        return psi, None
    return psi, (z2.sub_(1.0).mul_(e) if not _differentiable(z) else (z2 - 1.0) * e)


def _differentiable(z: Tensor) -> bool:
    """Whether autograd records ops on z (then no in-place tricks)."""
    return z.requires_grad and torch.is_grad_enabled()


def _meyer_nu(u: Tensor) -> Tensor:
    return u**4 * (35.0 - 84.0 * u + 70.0 * u * u - 20.0 * u**3)


def _meyer(z: Tensor, need_dpsi: bool):
    v = z.abs()
    u = 2.0 * v - 1.0
    mid = (v > 0.5) & (v < 1.0)
    half_pi_nu = (0.5 * math.pi) * _meyer_nu(u)
    aux = torch.where(v <= 0.5, torch.ones_like(v), torch.where(v >= 1.0, torch.zeros_like(v), torch.cos(half_pi_nu)))
    sin_piv = torch.sin(math.pi * v)
    psi = sin_piv * aux
    if not need_dpsi:
        return psi, None
    # nu'(u) = 140 u^3 (1 - u)^3; d aux/dv = -sin(pi/2 nu) * pi/2 * nu'(u) * 2.
    daux = torch.where(mid, -math.pi * torch.sin(half_pi_nu) * 140.0 * (u * (1.0 - u)) ** 3, torch.zeros_like(v))
    dpsi_dv = math.pi * torch.cos(math.pi * v) * aux + sin_piv * daux
    return psi, torch.sign(z) * dpsi_dv


def _shannon(z: Tensor, need_dpsi: bool):
    zero = z == 0
    safe = torch.where(zero, torch.ones_like(z), z)
    s = torch.sin(safe)
    psi = torch.where(zero, torch.ones_like(z), s / safe)
    if not need_dpsi:
        return psi, None
    direct = (safe * torch.cos(safe) - s) / (safe * safe)
    z2 = z * z
    series = z * (-1.0 / 3.0 + z2 * (1.0 / 30.0 + z2 * (-1.0 / 840.0 + z2 * (1.0 / 45360.0))))
    below = SHANNON_SERIES_BELOW.get(z.dtype, 0.5)
    return psi, torch.where(z.abs() < below, series, direct)


def _hamming_window(n: int, dtype: torch.dtype, device) -> Tensor:
    # The paper's code: torch.hamming_window(in, periodic=False); a length-1 window is [1].
    return torch.hamming_window(n, periodic=False, dtype=dtype, device=device)


@dataclass(frozen=True)
class Wavelet:
    """One mother wavelet.

    ``psi_dpsi(z, need_dpsi)`` returns ``(psi(z), dpsi/dz(z) or None)`` elementwise.
    ``window(in_features, dtype, device)``, when set, is the per-input-index factor H[i]
    that multiplies the wavelet weights.
    ``code`` identifies the wavelet inside the Triton kernels.
    """

    name: str
    code: int
    psi_dpsi: Callable[[Tensor, bool], tuple]
    window: Optional[Callable[[int, torch.dtype, object], Tensor]] = None

    def psi(self, z: Tensor) -> Tensor:
        return self.psi_dpsi(z, False)[0]


_CATALOGUE = {
    w.name: w
    for w in (
        Wavelet("mexican_hat", 0, _mexican_hat),
        Wavelet("morlet", 1, _morlet),
        Wavelet("dog", 2, _dog),
        Wavelet("meyer", 3, _meyer),
        Wavelet("shannon", 4, _shannon, window=_hamming_window),
    )
}

WAVELETS: tuple = tuple(_CATALOGUE)


def get_wavelet(name) -> Wavelet:
    """The catalogue entry for ``name``; a ValueError listing the valid names otherwise."""
    if isinstance(name, Wavelet):
        return name
    try:
        return _CATALOGUE[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown wavelet {name!r}; expected one of {', '.join(WAVELETS)}") from None
