"""Adversarial cases against the independent float64 oracle (tests/oracle.py), fixed seed.

Random shapes (x contiguous or a strided view), every wavelet and dtype, both backends (Triton through its interpreter on a
machine without a GPU), and inputs chosen where fp32 arithmetic goes wrong: |t/s| up to 1e7
(x near t, where x/s - t/s cancels), tiny and huge scales (z^2 overflows fp32 while z does
not), everything scaled by 1e-20 or 1e20, and non-finite weights, inputs, translations and zero
scales. Every output element and every gradient element must be within the oracle's bound;
where the float64 result is not finite, the same NaN or the same signed infinity (IEEE
float64's semantics); where it is finite but past the dtype's range, nothing is asserted.
One exception, for gradients only: where autograd's float64 sum over the batch meets
infinities of both signs (an infinite weight) it gives NaN, while the backends factor the
weight out of that sum (w * sum, as the reference's formulas do) and give an infinity; there
any non-finite value is accepted, and the two backends must agree with each other.
"""

from __future__ import annotations

import math

import pytest
import torch
from oracle import oracle

from wavkan import WAVELETS, wavkan_linear

SEED = 16
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
REGIMES_FP32 = ("normal", "far", "tiny_scale", "all_tiny", "all_huge", "nonfinite")
REGIMES_HALF = ("normal", "far_half", "nonfinite")
REGIMES_FP64 = ("far", "tiny_scale", "nonfinite")


def _cases():
    rng = torch.Generator().manual_seed(SEED)
    cases = []
    for wavelet in WAVELETS:
        for dtype in DTYPES:
            regimes = {"fp32": REGIMES_FP32, "fp64": REGIMES_FP64}.get(dtype, REGIMES_HALF)
            for regime in regimes:
                cases.append((wavelet, dtype, regime, int(torch.randint(0, 2**31, (1,), generator=rng))))
    return cases


def _draw(regime: str, seed: int):
    """(x, s, t, w, g) in float64, for one case."""
    rng = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=rng, dtype=torch.float64)

    def rand(*shape):
        return torch.rand(*shape, generator=rng, dtype=torch.float64)

    B, IN, OUT = (int(torch.randint(1, n + 1, (1,), generator=rng)) for n in (9, 13, 7))
    x = randn(B, IN) * 1.5
    s = rand(OUT, IN) * 1.5 + 0.5
    t = randn(OUT, IN) * 0.7
    w = randn(OUT, IN) / math.sqrt(IN)
    g = randn(B, OUT)
    if regime in ("far", "far_half"):
        # |t/s| = 10^2 .. 10^7 (10^3 for half dtypes, whose range ends at 6.5e4), every row
        # near one output's translations: the edges that matter have z of order 1.
        top = 3.0 if regime == "far_half" else 7.0
        ratio = torch.pow(10.0, 2.0 + (top - 2.0) * rand(OUT, IN))
        t = torch.where(rand(OUT, IN) < 0.5, -1.0, 1.0) * ratio * s
        near = torch.randint(0, OUT, (B,), generator=rng)
        x = t[near] + s[near] * randn(B, IN) * 1.5
    elif regime == "tiny_scale":
        s = s * 1e-20  # z about 1e20: z^2 overflows fp32, z does not
        x[0] = t[0] + s[0] * randn(IN)  # one row with z of order 1 still (x - t exact in fp32)
    elif regime == "all_tiny":
        x, s, t = x * 1e-20, s * 1e-20, t * 1e-20
    elif regime == "all_huge":
        x, s, t = x * 1e20, s * 1e20, t * 1e20
    elif regime == "nonfinite":
        # Infinite and NaN weights on edges whose z stays within (-0.9, 0.9) for every row
        # (psi is far from 0 and from underflow there, so float64 and fp32 agree on inf vs
        # NaN); an infinite input, an infinite translation and a zero scale elsewhere.
        o, i = int(torch.randint(0, OUT, (1,), generator=rng)), int(torch.randint(0, IN, (1,), generator=rng))
        spread = (x[:, i] - t[o, i]).abs().max().item()
        s[o, i] = max(spread, 1e-3) / (0.2 + 0.7 * rand(1).item())
        w[o, i] = [math.inf, -math.inf, math.nan][int(torch.randint(0, 3, (1,), generator=rng))]
        kind = int(torch.randint(0, 3, (1,), generator=rng))
        b, i2 = int(torch.randint(0, B, (1,), generator=rng)), int(torch.randint(0, IN, (1,), generator=rng))
        if kind == 0:
            x[b, i2] = math.inf if rand(1).item() < 0.5 else math.nan
        elif kind == 1:
            t[int(torch.randint(0, OUT, (1,), generator=rng)), i2] = -math.inf
        else:
            s[int(torch.randint(0, OUT, (1,), generator=rng)), i2] = 0.0
    return x, s, t, w, g


def _same_class(a, b) -> bool:
    """NaN where NaN, the same infinity where infinite."""
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a[torch.isinf(a)], b[torch.isinf(a)]) \
        and torch.equal(torch.isinf(a), torch.isinf(b))


def _compare(got, expected, tol, dtype, what, is_gradient):
    got = got.detach().double().cpu()
    assert got.shape == expected.shape, what
    inf = torch.isinf(expected)
    assert torch.equal(got[inf], expected[inf]), (what, "infinite", got, expected)
    nan = torch.isnan(expected)
    if is_gradient:
        assert not torch.isfinite(got[nan]).any(), (what, "NaN", got, expected)
    else:
        assert torch.equal(torch.isnan(got), nan), (what, "NaN", got, expected)
    info = torch.finfo(dtype)
    finite = torch.isfinite(expected) & (expected.abs() < info.max / 2)
    # + the rounding to dtype (a whole ulp: the interpreter converts fp32 to bf16 by truncation)
    bound = tol + info.eps * expected.abs() + info.tiny
    err = (got - expected).abs()
    bad = finite & ~(err <= bound)  # a NaN where float64 is finite counts as bad
    assert not bad.any(), (what, got[bad], expected[bad], bound[bad])


@pytest.mark.parametrize("wavelet, dtype, regime, seed", _cases(), ids=lambda v: str(v))
def test_fuzz_against_float64_oracle(wavelet, dtype, regime, seed, kernel_device):
    x, s, t, w, g = (a.to(DTYPES[dtype]) for a in _draw(regime, seed))
    (y64, *grads64), tols = oracle(x, s, t, w, g, wavelet, trig_on_gpu=kernel_device.type == "cuda")
    backends = ("reference",) if dtype == "fp64" else ("reference", "triton")
    results = []
    for backend in backends:
        leaves = [a.to(kernel_device).clone().requires_grad_() for a in (x, s, t, w)]
        # Half the cases pass x as a transposed (non-contiguous) view of the same values.
        xin = leaves[0].t().contiguous().t() if seed % 2 else leaves[0]
        y = wavkan_linear(xin, *leaves[1:], wavelet=wavelet, backend=backend)
        y.backward(g.to(kernel_device))
        names = ("y", "grad_x", "grad_scale", "grad_translation", "grad_weights")
        got = [y.detach()] + [a.grad for a in leaves]
        for k, (name, value, expected, tol) in enumerate(zip(names, got, [y64] + grads64, tols)):
            _compare(value, expected, tol, DTYPES[dtype], (backend, name, regime, tuple(x.shape), tuple(s.shape)), k > 0)
        results.append([a.double().cpu() for a in got])
    for name, a, b in zip(names, *results) if len(results) == 2 else ():
        assert _same_class(a, b), (name, "the backends disagree on NaN/inf", a, b)
