"""The catalogue: psi and dpsi of every wavelet against autograd of the paper's formulas."""

import math

import pytest
import torch
from oracle import paper_psi as oracle_psi
from paper_kan import PAPER_WAVELETS, PaperKANLinear

from wavkan import WAVELETS, get_wavelet


def paper_psi(name, z):
    """psi(z) as the paper's layer computes it (window excluded), through a 1x1 layer; for a
    wavelet the paper does not have, tests/oracle.py's formula."""
    if name not in PAPER_WAVELETS:
        return oracle_psi(name, z)
    layer = PaperKANLinear(1, 1, name).double()
    with torch.no_grad():
        layer.wavelet_weights.fill_(1.0)
    return layer.wavelet_transform(z.reshape(-1, 1)).reshape(z.shape)


BOUNDARIES = [0.0, 0.5, -0.5, 1.0, -1.0, 0.5 - 1e-9, 0.5 + 1e-9, 1 - 1e-9, 1 + 1e-9, 1e-6, -1e-6, 0.3, 0.09, 0.11]


@pytest.mark.parametrize("name", WAVELETS)
def test_psi_matches_paper_formula(name):
    z = torch.cat([torch.linspace(-6, 6, 1001, dtype=torch.float64), torch.tensor(BOUNDARIES, dtype=torch.float64)])
    psi = get_wavelet(name).psi(z)
    assert torch.allclose(psi, paper_psi(name, z), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", WAVELETS)
def test_dpsi_matches_autograd_of_paper_formula(name):
    z = torch.cat([torch.linspace(-6, 6, 1001, dtype=torch.float64), torch.tensor(BOUNDARIES, dtype=torch.float64)])
    zz = z.clone().requires_grad_()
    (expected,) = torch.autograd.grad(paper_psi(name, zz).sum(), zz)
    _, dpsi = get_wavelet(name).psi_dpsi(z, True)
    if name == "shannon":
        # Autograd of sinc cancels near 0 (1e-4 relative error at z = 1e-6); the exact value
        # there is the series sum_k (-1)^k 2k z^(2k-1) / (2k+1)!.
        near = z.abs() < 0.1
        exact = sum((-1) ** k * 2 * k * z**(2 * k - 1) / float(math.factorial(2 * k + 1)) for k in range(1, 12))
        expected = torch.where(near, exact, expected)
    assert torch.allclose(dpsi, expected, rtol=1e-9, atol=1e-12)


def test_shannon_limit_at_zero():
    z = torch.tensor([0.0, 1e-30, -1e-8], dtype=torch.float64)
    psi, dpsi = get_wavelet("shannon").psi_dpsi(z, True)
    assert psi.tolist() == [1.0, 1.0, 1.0]
    assert dpsi[0].item() == 0.0
    assert dpsi[2].item() == pytest.approx(1e-8 / 3, rel=1e-9)
    # fp32 near zero: the series avoids the cancellation of (z cos z - sin z) / z^2.
    z32 = torch.tensor([1e-3, 0.2, 0.45], dtype=torch.float32)
    _, d32 = get_wavelet("shannon").psi_dpsi(z32, True)
    z64 = z32.double()
    exact = (z64 * torch.cos(z64) - torch.sin(z64)) / z64**2
    assert torch.allclose(d32.double(), exact, rtol=1e-6)


def test_meyer_pieces():
    z = torch.tensor([0.25, 0.5, 0.75, 1.0, 1.5, -0.75], dtype=torch.float64)
    psi, dpsi = get_wavelet("meyer").psi_dpsi(z, True)
    # aux = 1 up to 1/2: psi = sin(pi v); aux = 0 from 1 on.
    assert psi[0].item() == pytest.approx(math.sin(math.pi * 0.25), rel=1e-14)
    assert psi[1].item() == pytest.approx(1.0, rel=1e-14)
    assert psi[3].item() == 0.0 and psi[4].item() == 0.0 and dpsi[4].item() == 0.0
    # Odd derivative: dpsi(-z) = -dpsi(z); psi even.
    assert psi[5].item() == pytest.approx(psi[2].item(), rel=1e-14)
    assert dpsi[5].item() == pytest.approx(-dpsi[2].item(), rel=1e-14)
    # At 3/4: u = 1/2, nu = 1/2, aux = cos(pi/4); nu'(1/2) = 140/64.
    u = 0.5
    aux = math.cos(math.pi / 4)
    daux = -math.pi * math.sin(math.pi / 4) * 140 * u**3 * (1 - u) ** 3
    expected = math.pi * math.cos(0.75 * math.pi) * aux + math.sin(0.75 * math.pi) * daux
    assert dpsi[2].item() == pytest.approx(expected, rel=1e-12)


def test_unknown_wavelet_lists_valid_names():
    with pytest.raises(ValueError, match="unknown wavelet 'haar'.*mexican_hat, morlet, dog, meyer, shannon"):
        get_wavelet("haar")


@pytest.mark.parametrize("dtype, ulps", [(torch.float32, 2), (torch.float64, 4)])
def test_meyer_sine_polynomial_matches_sin_on_half_a_period(dtype, ulps):
    """meyer's sines and cosines are a Taylor polynomial on [-pi/2, pi/2]: within a few units in
    the last place of the correctly rounded sine everywhere there, relative near zero too."""
    from wavkan.wavelets import _sin_half_period

    a64 = torch.cat([torch.linspace(-math.pi / 2, math.pi / 2, 20001, dtype=torch.float64),
                     torch.logspace(-30, 0, 301, dtype=torch.float64)])
    a = a64.to(dtype)
    got = _sin_half_period(a).double()
    want = torch.sin(a.double())
    ulp = torch.finfo(dtype).eps * want.abs().clamp(min=torch.finfo(dtype).tiny)
    assert ((got - want).abs() <= ulps * ulp).all()


def test_meyer_is_nan_at_infinite_z_and_zero_past_one():
    psi, dpsi = get_wavelet("meyer").psi_dpsi(torch.tensor([float("inf"), -float("inf"), 1.0, 3.5, -7.0]), True)
    assert torch.isnan(psi[:2]).all() and torch.isnan(dpsi[:2]).all()
    assert torch.equal(psi[2:], torch.zeros(3)) and torch.equal(dpsi[2:], torch.zeros(3))
