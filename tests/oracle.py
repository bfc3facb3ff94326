"""An independent float64 oracle: the paper's formulas written out here (not wavkan.wavelets),
differentiated by autograd, with the error bound an fp32 computation of them can meet.

``oracle`` returns the layer's output and four gradients in float64 for small shapes (it holds
(B, out, in) tensors), and, for each, a tolerance per element:

    RTOL * (sum of the magnitudes of the terms)  +  K * u * (the terms' sensitivity to z)  +  floor

The first is the target (1e-5 of the sum of |terms|). The second is what rounding z itself to
fp32 costs, which no fp32 computation avoids: z is computed from fp32 x, t and 1/s with a
relative error of a few u = 2^-24, which moves a term by about u |z| |d term / dz|; it matters
only where a term is near a zero of psi while its slope is not (shannon's tails, meyer's
transition band, a huge z whose sine is of an inexactly known argument). Meyer adds the
rounding of its own formula in that band (0.5 < |z| < 1): its polynomial nu and the terms of
its derivative (up to 140 pi (u (1 - u))^3 ~ 7) cancel in fp32, which costs up to about 25 u
absolute in psi and 960 u in dpsi (measured over 1e6 points): allowed as 64 u and 2048 u per
unit |w|. The floor covers
fp32's underflow (exp(-z^2/2) below 1e-38 is 0 in fp32) and, on a GPU, the special-function
unit's sine and cosine (absolute error about 2^-21).
"""

from __future__ import annotations

import math

import torch

from wavkan import get_wavelet

RTOL = 1e-5
K_Z = 8.0
MEYER_BAND = (64.0, 2048.0)  # absolute allowance in u for psi, dpsi inside meyer's band
U32 = 2.0**-24
FLOOR = 1e-30
SFU_ABS = 4e-6  # the GPU's approximate sin/cos: 2^-21 absolute, a few of them per term
_C = 2.0 / (math.sqrt(3.0) * math.pi**0.25)


def paper_psi(name: str, z: torch.Tensor) -> torch.Tensor:
    """psi(z) as the paper's code writes it (float64; torch.where for its branches)."""
    if name == "mexican_hat":
        return _C * (z**2 - 1) * torch.exp(-(z**2) / 2)
    if name == "morlet":
        return torch.cos(5 * z) * torch.exp(-(z**2) / 2)
    if name == "dog":
        return -z * torch.exp(-(z**2) / 2)
    if name == "meyer":
        v = torch.abs(z)
        u = 2 * v - 1
        nu = u**4 * (35 - 84 * u + 70 * u**2 - 20 * u**3)
        aux = torch.where(v <= 0.5, torch.ones_like(v), torch.where(v >= 1, torch.zeros_like(v), torch.cos(math.pi / 2 * nu)))
        return torch.sin(math.pi * v) * aux
    if name == "shannon":
        zero = z == 0
        safe = torch.where(zero, torch.ones_like(z), z)
        return torch.where(zero, torch.ones_like(z), torch.sin(safe) / safe)
    raise ValueError(name)


def paper_window(name: str, n: int) -> torch.Tensor:
    if name != "shannon" or n == 1:
        return torch.ones(n, dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64)
    return 0.54 - 0.46 * torch.cos(2 * math.pi * i / (n - 1))


def _derivatives(name: str, z: torch.Tensor):
    """psi, dpsi, d2psi at z (float64, autograd of ``paper_psi``)."""
    zz = z.detach().clone().requires_grad_()
    with torch.enable_grad():
        psi = paper_psi(name, zz)
        (d1,) = torch.autograd.grad(psi.sum(), zz, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), zz, allow_unused=True)
    d2 = torch.zeros_like(z) if d2 is None else d2
    return psi.detach(), d1.detach(), d2.detach()


def oracle(x, s, t, w, g, name: str, trig_on_gpu: bool = False):
    """float64 (values, tolerances) for (y, grad_x, grad_scale, grad_translation, grad_weights).

    x: (B, in); s, t, w: (out, in); g = dL/dy: (B, out); any dtypes (taken as their values).
    """
    x, s, t, w, g = (a.detach().double().cpu() for a in (x, s, t, w, g))
    H = paper_window(name, x.shape[1])
    leaves = [a.clone().requires_grad_() for a in (x, s, t, w)]
    with torch.enable_grad():
        xl, sl, tl, wl = leaves
        z = (xl[:, None, :] - tl) / sl
        y = (paper_psi(name, z) * (wl * H)).sum(-1)
        grads = torch.autograd.grad(y, leaves, g)
    z = ((x[:, None, :] - t) / s).detach()
    psi, d1, d2 = (torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0) for a in _derivatives(name, z))
    zf = torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)
    wh = torch.nan_to_num((w * H).abs(), nan=0.0, posinf=0.0)
    ga = g.abs()[:, :, None]
    inv_s = torch.nan_to_num(1 / s.abs(), posinf=0.0)
    sfu = SFU_ABS if trig_on_gpu and not get_wavelet(name).gaussian else 0.0  # sines and cosines
    band = ((zf.abs() > 0.5) & (zf.abs() < 1.0)).double() if name == "meyer" else torch.zeros_like(zf)
    # Sensitivities in units of u: to z's rounding, plus meyer's own rounding in its band.
    sens_psi = K_Z * (zf * d1).abs() + MEYER_BAND[0] * band
    sens_dpsi = K_Z * (zf * d2).abs() + MEYER_BAND[1] * band

    def tol(terms, sensitivity, scale, dim):
        return RTOL * terms.sum(dim) + U32 * sensitivity.sum(dim) + (FLOOR + sfu) * scale.sum(dim)

    term_y = wh * psi.abs()
    tol_y = tol(term_y, wh * sens_psi, wh.expand_as(term_y), -1)
    dpsi_s = ga * wh * inv_s  # |g w H / s| per (b, o, i)
    tol_x = tol(dpsi_s * d1.abs(), dpsi_s * sens_dpsi, dpsi_s, 1)
    tol_t = tol(dpsi_s * d1.abs(), dpsi_s * sens_dpsi, dpsi_s, 0)
    tol_s = tol(dpsi_s * (zf * d1).abs(), dpsi_s * (zf.abs() * sens_dpsi + K_Z * (zf * d1).abs()),
                dpsi_s * (1 + zf.abs()), 0)  # fmt: skip
    gh = ga * H.abs()
    tol_w = tol(gh * psi.abs(), gh * sens_psi, gh.expand_as(psi), 0)
    values = (y.detach(), *grads)
    return values, (tol_y, tol_x, tol_s, tol_t, tol_w)
