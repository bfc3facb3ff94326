"""The reference backend: per-edge oracle, the paper's formula, gradcheck, memory bound."""

import math

import pytest
import torch
from helpers import layer_inputs, rel_err
from oracle import paper_psi, paper_window
from paper_kan import PAPER_WAVELETS, PaperKANLinear
from torch.utils._python_dispatch import TorchDispatchMode

from wavkan import WAVELETS, wavkan_linear
from wavkan.reference import reference_backward, reference_forward, wavkan_linear_unchunked


def _psi_scalar(name, z, i, n_in):
    """psi of one edge from the wavelet definitions, in scalar math (no torch)."""
    e = math.exp(-z * z / 2)
    if name == "mexican_hat":
        return 2 / (math.sqrt(3) * math.pi**0.25) * (z * z - 1) * e
    if name == "morlet":
        return math.cos(5 * z) * e
    if name == "dog":
        return -z * e
    if name == "meyer":
        v = abs(z)
        if v <= 0.5:
            aux = 1.0
        elif v >= 1:
            aux = 0.0
        else:
            u = 2 * v - 1
            aux = math.cos(math.pi / 2 * u**4 * (35 - 84 * u + 70 * u**2 - 20 * u**3))
        return math.sin(math.pi * v) * aux
    if name == "shannon":
        window = 1.0 if n_in == 1 else 0.54 - 0.46 * math.cos(2 * math.pi * i / (n_in - 1))
        return (1.0 if z == 0 else math.sin(z) / z) * window
    # A wavelet added after the paper's: tests/oracle.py's formula.
    return paper_psi(name, torch.tensor(z, dtype=torch.float64)).item() * paper_window(name, n_in)[i].item()


@pytest.mark.parametrize("name", WAVELETS)
def test_reference_matches_per_edge_loop(name):
    x, s, t, w = layer_inputs(3, 5, 4, torch.float64)
    x[0, 0] = t[1, 0]  # one z exactly 0
    y = wavkan_linear(x, s, t, w, name, backend="reference")
    for b in range(3):
        for o in range(4):
            expected = sum(
                w[o, i].item() * _psi_scalar(name, (x[b, i].item() - t[o, i].item()) / s[o, i].item(), i, 5)
                for i in range(5)
            )
            assert y[b, o].item() == pytest.approx(expected, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("name", PAPER_WAVELETS)
def test_reference_matches_paper_layer_in_float64(name):
    paper = PaperKANLinear(9, 6, name).double()
    with torch.no_grad():
        _, s, t, _ = layer_inputs(1, 9, 6, torch.float64)
        paper.scale.copy_(s)
        paper.translation.copy_(t)
    x = torch.randn(11, 9, dtype=torch.float64) * 2
    g = torch.randn(11, 6, dtype=torch.float64)
    xp = x.clone().requires_grad_()
    yp = paper.wavelet_transform(xp)
    yp.backward(g)
    params = [paper.scale, paper.translation, paper.wavelet_weights]
    leaves = [xp.detach().clone().requires_grad_()] + [p.detach().clone().requires_grad_() for p in params]
    y = wavkan_linear(*leaves, wavelet=name, backend="reference")
    y.backward(g)
    assert rel_err(y, yp) < 1e-12
    for ours, theirs in zip(leaves, [xp] + params):
        assert rel_err(ours.grad, theirs.grad) < 1e-12


@pytest.mark.parametrize("name", WAVELETS)
def test_gradcheck_all_four_gradients(name):
    x, s, t, w = layer_inputs(4, 6, 3, torch.float64)
    assert (s != 1).all() and (t != 0).all()
    inputs = tuple(a.requires_grad_() for a in (x, s, t, w))
    assert torch.autograd.gradcheck(lambda *a: wavkan_linear(*a, wavelet=name, backend="reference"), inputs)


def test_scale_gradient_uses_shifted_input():
    """The seed's bug: grad_s with x in place of (x - t). Finite differences expose it."""
    x, s, t, w = layer_inputs(2, 3, 2, torch.float64)
    t = t + 1.0
    s = s.requires_grad_()
    wavkan_linear(x, s, t, w, backend="reference").sum().backward()
    eps = 1e-6
    fd = torch.zeros_like(s)
    for o in range(2):
        for i in range(3):
            d = torch.zeros_like(s)
            d[o, i] = eps
            hi = wavkan_linear(x, s.detach() + d, t, w, backend="reference").sum()
            lo = wavkan_linear(x, s.detach() - d, t, w, backend="reference").sum()
            fd[o, i] = (hi - lo) / (2 * eps)
    assert torch.allclose(s.grad, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", WAVELETS)
def test_chunked_equals_unchunked(name):
    x, s, t, w = layer_inputs(13, 17, 11, torch.float64)
    g = torch.randn(13, 11, dtype=torch.float64)
    leaves = [a.clone().requires_grad_() for a in (x, s, t, w)]
    y_ref = wavkan_linear_unchunked(*leaves, name)
    y_ref.backward(g)
    for chunk in (1, 17 * 3, 10_000):  # one edge row at a time, partial out blocks, one block
        y = reference_forward(x, s, t, w, name, chunk_elements=chunk)
        grads = reference_backward(g, x, s, t, w, name, chunk_elements=chunk)
        assert rel_err(y, y_ref) < 1e-13
        for ours, leaf in zip(grads, leaves):
            # 1e-12: autograd's sinc derivative cancels near z = 0, where ours takes the series.
            assert rel_err(ours, leaf.grad) < 1e-12


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_reference_never_holds_batch_by_edges_tensor():
    B, IN, OUT, chunk = 512, 64, 48, 1 << 14
    x, s, t, w = layer_inputs(B, IN, OUT)
    g = torch.randn(B, OUT)
    with _LargestTensor() as spy:
        reference_forward(x, s, t, w, "mexican_hat", chunk_elements=chunk)
        reference_backward(g, x, s, t, w, "mexican_hat", chunk_elements=chunk)
    assert spy.largest <= max(chunk, B * IN, B * OUT)
    assert spy.largest < B * IN * OUT // 16


def test_reference_bf16_and_fp16_compute_in_fp32():
    x, s, t, w = layer_inputs(5, 7, 3)
    exact = wavkan_linear(x.double(), s.double(), t.double(), w.double(), backend="reference")
    for dtype in (torch.float16, torch.bfloat16):
        y = wavkan_linear(x.to(dtype), s, t, w, backend="reference")
        assert y.dtype == dtype
        # Only the input and output roundings: far below the error of arithmetic in that dtype.
        xq = x.to(dtype).double()
        exact_q = wavkan_linear(xq, s.double(), t.double(), w.double(), backend="reference")
        assert rel_err(y, exact_q) < (4e-3 if dtype == torch.float16 else 2e-2) / 4
        assert rel_err(y, exact) < 0.1


# --- second derivatives (create_graph=True) ------------------------------------------------


@pytest.mark.parametrize("name", WAVELETS)
def test_gradgradcheck_every_wavelet(name):
    """The layer's second derivatives (the backward's own backward, a chunked autograd
    computation) against finite differences of its gradients, in float64."""
    x, s, t, w = layer_inputs(3, 4, 2, torch.float64)
    inputs = tuple(a.requires_grad_() for a in (x, s, t, w))
    assert torch.autograd.gradgradcheck(lambda *a: wavkan_linear(*a, wavelet=name, backend="reference"), inputs)


def test_double_backward_is_chunked():
    """The double backward in small blocks equals one block, and never holds a B x out x in
    tensor."""
    from wavkan.reference import reference_double_backward

    B, IN, OUT = 64, 16, 12
    x, s, t, w = layer_inputs(B, IN, OUT, torch.float64)
    g = torch.randn(B, OUT, dtype=torch.float64)
    grad_grads = (torch.randn(B, IN, dtype=torch.float64), *(torch.randn(OUT, IN, dtype=torch.float64) for _ in range(3)))
    whole = reference_double_backward(g, x, s, t, w, "morlet", grad_grads, (True,) * 5, chunk_elements=B * OUT * IN)
    with _LargestTensor() as spy:
        parts = reference_double_backward(g, x, s, t, w, "morlet", grad_grads, (True,) * 5, chunk_elements=IN * 4)
    assert spy.largest < B * OUT * IN // 8
    for a, b in zip(whole, parts):
        assert rel_err(b, a) < 1e-13
