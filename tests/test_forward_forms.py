"""The forward's short forms against float64: z by one FFMA and mexican_hat's short psi, with
the per-program decision that keeps every input the short forms cannot take on the exact ones.
Under Triton's interpreter (CPU) and on the GPU alike.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from helpers import layer_inputs, rel_err
from oracle import oracle

from wavkan import get_wavelet, wavkan_linear
from wavkan.kernels import wavkan_fwd
from wavkan.kernels.forward import SHORT_A_BOUND, SHORT_W_BOUND, SHORT_X_BOUND, _short_form_holds
from wavkan.kernels.staging import pack_edge_constants
from wavkan.reference import reference_forward
from wavkan.wavelets import CATALOGUE

ENVELOPE = [w.name for w in CATALOGUE if w.envelope]
@triton.jit
def _decide(x_ptr, stride_xb, stride_xi, pack_ptr, PLANE, OUT_PAD, IN, out_ptr, CHECK_X: tl.constexpr,
            BLOCK_B: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    rows = tl.arange(0, BLOCK_B) * stride_xb
    holds = _short_form_holds(x_ptr, stride_xi, rows, pack_ptr, PLANE, 2 * PLANE, OUT_PAD, 0, IN,
                              tl.arange(0, BLOCK), CHECK_X, BLOCK_B, BLOCK)
    tl.store(out_ptr, holds.to(tl.int32))


# The decision's cases: (tensor, index, value) edits of a call that holds, and whether the
# edited call still holds with CHECK_X (mexican_hat's short psi).
_X, _A, _W = SHORT_X_BOUND.value, SHORT_A_BOUND.value, SHORT_W_BOUND.value
_DECISION_CASES = {
    "small": ((), True),
    "x at the bound": ((("x", (2, 11), -_X),), True),
    "x above the bound": ((("x", (3, 18), 2.0 * _X),), False),
    "x inf": ((("x", (0, 5), float("-inf")),), False),
    "x nan": ((("x", (1, 0), float("nan")),), False),
    "scale at the bound": ((("s", (1, 4), 1.0 / _A), ("t", (1, 4), 0.0)), True),
    "scale below the bound": ((("s", (1, 4), 0.5 / _A), ("t", (1, 4), 0.0)), False),
    "weight at the bound": ((("w", (2, 7), -_W),), True),
    "weight above the bound": ((("w", (2, 7), 2.0 * _W),), False),
    "weight inf": ((("w", (2, 7), float("inf")),), False),
    "weight nan": ((("w", (0, 0), float("nan")),), False),
    "t k/s above": ((("t", (2, 17), 1.5),), False),
}


@pytest.mark.parametrize("case", _DECISION_CASES)
def test_short_form_decision_with_inputs(case, kernel_device):
    """mexican_hat's short psi ((q (-2 ln2 w) - w) e, q = -(k z)^2) multiplies q by the weight
    before the exponential can make it 0: the decision also bounds |x|, |k/s| and |w m| (so no
    product overflows, where the exact form gives a finite value) and so refuses infinite and
    NaN values; any x of the program's rows, any of its edges failing sends the whole program
    to the exact form."""
    B, IN, OUT = 4, 19, 3
    inputs = {"x": torch.full((B, IN), 0.25), "s": torch.ones(OUT, IN), "t": torch.full((OUT, IN), 0.5),
              "w": torch.ones(OUT, IN)}
    edits, holds = _DECISION_CASES[case]
    for name, index, value in edits:
        inputs[name][index] = value
    x, s, t, w = (inputs[n].to(kernel_device) for n in "xstw")
    pack = pack_edge_constants(s, t, w, 4, False)  # k = 1: the packed planes are 1/s, t, w
    out = torch.zeros(1, dtype=torch.int32, device=kernel_device)
    _decide[(1,)](x, IN, 1, pack, pack.stride(0), 4, IN, out, CHECK_X=True, BLOCK_B=B, BLOCK=4)
    assert bool(out.item()) is holds
    _decide[(1,)](x, IN, 1, pack, pack.stride(0), 4, IN, out, CHECK_X=False, BLOCK_B=B, BLOCK=4)
    assert bool(out.item()) is (case != "t k/s above")  # without CHECK_X only t k/s counts


def _forward_within_oracle(x, s, t, w, wavelet, device):
    """The forward alone, within the float64 oracle's bound."""
    values, tols = oracle(x, s, t, w, torch.ones(x.shape[0], s.shape[0]), wavelet, trig_on_gpu=device.type == "cuda")
    wav = get_wavelet(wavelet)
    w_eff = wav.fold_window(w)[0].float() if wav.window else w
    y = wavkan_fwd(x.to(device), s.to(device), t.to(device), w_eff.to(device), wav)
    err = (y.double().cpu() - values[0]).abs()
    assert (err <= tols[0] + 1e-7 * values[0].abs()).all(), (wavelet, (err / tols[0]).max().item())
    return y


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 40), (33, 29, 5)])
@pytest.mark.parametrize("wavelet", ENVELOPE)
def test_short_and_exact_programs_match_float64(wavelet, shape, kernel_device):
    """Programs on the short forms (small t/s) beside programs on the exact ones (t/s of 1e3 on
    columns 32 and up: a program of their own under the interpreter's 32-column tiles; on the
    GPU's 64-column tiles all 40 share one program, which takes the exact forms): the output
    within the float64 oracle's bound."""
    B, IN, OUT = shape
    x, s, t, w = (a.double() for a in layer_inputs(B, IN, OUT, torch.float64))
    t[:32] *= 0.1  # |t k/s| <= 1: the short forms
    t[32:] = t[32:].sign() * 1e3 * s[32:]
    x = x + t[torch.arange(B) % OUT] * (torch.arange(OUT)[torch.arange(B) % OUT] >= 32)[:, None]
    _forward_within_oracle(*(a.float() for a in (x, s, t, w)), wavelet, kernel_device)


@pytest.mark.parametrize("case", ["tiny scale", "x above the bound", "weight above the bound", "weight near fp32's max",
                                  "weight inf", "x inf"])
@pytest.mark.parametrize("wavelet", ENVELOPE)
def test_edge_inputs(wavelet, case, kernel_device):
    """The inputs the short forms must hand to the exact ones, each alone in a call of ordinary
    values: a tiny scale (z^2 overflows: float64
    gives 0); |x| above its bound with k/s inside its own, and a weight above its bound with x
    and k/s inside theirs, where mexican_hat's short psi would overflow q (-2 ln2 w) into
    inf * 0 = NaN (float64: 0); a weight near fp32's largest (-2 ln2 w overflows; float64 gives
    a finite output); an infinite weight (an infinite output of psi's sign); an infinite x (NaN)."""
    B, IN, OUT = 5, 3, 2
    x = torch.linspace(-1.0, 1.0, B * IN).reshape(B, IN)
    s = torch.ones(OUT, IN)
    t = torch.full((OUT, IN), 0.1)
    w = torch.tensor([[1.0, 0.5, -0.25], [-0.75, 0.5, 0.25]])
    k = get_wavelet(wavelet).fold[0]
    if case == "tiny scale":
        s[0, 0] = 1e-20
    elif case == "x above the bound":  # k/s = 8.5e3; (k z)^2 2 ln2 w = 1e40
        x[1, 0], s[:, 0], t[:, 0], w[:, 0] = 1e14, 1e-4, 0.0, 1e4
    elif case == "weight above the bound":  # k z = 2^29; (k z)^2 2 ln2 w = 4e47
        x[1, 0], s[:, 0], t[:, 0], w[:, 0] = SHORT_X_BOUND.value, 2.0 * k / SHORT_A_BOUND.value, 0.0, 1e30
    elif case == "weight near fp32's max":
        # mexican_hat: w m 2 ln2 = 3.44e38 > fp32's max; dog's packed w / k = 3.37e38 stays below it
        x[:, 1], s[:, 1], t[:, 1], w[0, 1] = 0.5, 1.0, 0.5, 2.86e38
    elif case == "weight inf":
        w[1, 2] = float("inf")
    elif case == "x inf":
        x[3, 1] = float("inf")
    wav = get_wavelet(wavelet)
    y = wavkan_fwd(x.to(kernel_device), s.to(kernel_device), t.to(kernel_device), w.to(kernel_device), wav)
    expected = reference_forward(x.double(), s.double(), t.double(), w.double(), wavelet)
    y = y.double().cpu()
    assert torch.equal(torch.isnan(y), torch.isnan(expected)), (y, expected)
    assert torch.equal(y[torch.isinf(expected)], expected[torch.isinf(expected)]), (y, expected)
    finite = torch.isfinite(expected)
    assert torch.allclose(y[finite], expected[finite], rtol=1e-5, atol=1e-6), (y, expected)
    assert finite.sum() >= B * OUT - B  # one bad column at most: the rest is compared


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("wavelet", ENVELOPE)
def test_short_forms_in_every_dtype_and_layout(wavelet, dtype, layout, kernel_device):
    """An initialised layer (t = 0: every program on the short forms) with x in each float dtype,
    contiguous or a transposed view, against float64 on the same (rounded) inputs: within fp32
    accumulation for fp32, within the output's own rounding for the half dtypes."""
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    B, IN, OUT = 37, 29, 40
    x = (torch.randn(B, IN) * 1.5).to(dt)
    if layout == "strided":
        x = x.t().contiguous().t()
    s = (torch.rand(OUT, IN) * 1.5 + 0.5).to(dt)
    t = torch.zeros(OUT, IN, dtype=dt)
    w = (torch.randn(OUT, IN) / IN**0.5).to(dt)
    y = wavkan_linear(*(a.to(kernel_device) for a in (x, s, t, w)), wavelet=wavelet, backend="triton")
    expected = wavkan_linear(*(a.double() for a in (x, s, t, w)), wavelet=wavelet, backend="reference")
    assert y.dtype == dt
    tol = 1e-5 if dt == torch.float32 else (2e-3 if dt == torch.float16 else 1.5e-2)
    assert rel_err(y.cpu(), expected) < tol


@pytest.mark.parametrize("case", ["plain", "tiny scale", "x above the bound", "t k/s above"])
@pytest.mark.parametrize("wavelet", ENVELOPE)
def test_grad_x_on_the_short_forms_edge_inputs(wavelet, case, kernel_device):
    """grad_x on the inputs at which the forward's short forms hand over to the exact ones (a
    tiny scale or an |x| above the bound, where (k z)^2 overflows and float64 gives 0; a t k/s
    above 1), and on plain ones: it agrees with float64 autograd of the reference, every value
    finite. (grad_x keeps the exact forms: the short ones measured slower there, HISTORY.md
    v14; this guards any later attempt.)"""
    B, IN, OUT = 5, 3, 4
    x = torch.linspace(-1.0, 1.0, B * IN).reshape(B, IN)
    s = torch.linspace(0.7, 1.3, OUT * IN).reshape(OUT, IN)
    t = torch.linspace(-0.3, 0.3, OUT * IN).reshape(OUT, IN)
    w = torch.linspace(-1.0, 0.8, OUT * IN).reshape(OUT, IN)
    if case == "tiny scale":
        s[0, 0] = 1e-20
    elif case == "x above the bound":
        x[1, 0], s[:, 0], t[:, 0] = 3e10, 1e-9, 0.0
    elif case == "t k/s above":
        t[2, 1] = 5.0
    g = torch.linspace(-1.0, 1.0, B * OUT).reshape(B, OUT)
    xs = x.clone().to(kernel_device).requires_grad_()
    wavkan_linear(xs, s.to(kernel_device), t.to(kernel_device), w.to(kernel_device), wavelet=wavelet,
                  backend="triton").backward(g.to(kernel_device))
    x64 = x.double().requires_grad_()
    wavkan_linear(x64, s.double(), t.double(), w.double(), wavelet=wavelet, backend="reference").backward(g.double())
    got, expected = xs.grad.double().cpu(), x64.grad
    assert torch.isfinite(got).all() and torch.isfinite(expected).all(), (got, expected)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (got, expected)
