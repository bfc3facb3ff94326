"""torch.compile on CUDA: the layer traces into the triton ops (``ops._linear_cuda``), and
Inductor launches the kernels. Every output and gradient against the eager path, for every
wavelet and dtype, in the default mode, with dynamic shapes and under mode="reduce-overhead"
(CUDA graphs) across optimizer steps. GPU only: Inductor's CPU code cannot launch Triton
kernels, so CPU tensors keep the opaque custom op (tests/test_kernels.py covers it)."""

from __future__ import annotations

import copy

import pytest
import torch

from wavkan import WavKAN
from wavkan.wavelets import WAVELETS

pytestmark = pytest.mark.gpu

DTYPE_TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _net(wavelet, batch_norm=False, device="cuda"):
    # Without BatchNorm, eager and compiled run the same kernels on the same values; Inductor's
    # BatchNorm sums in another order, which the sum-of-squares loss's gradients amplify.
    torch.manual_seed(1)
    return WavKAN([23, 37, 5], wavelet, batch_norm=batch_norm, backend="triton", device=device)


def _step(model, x):
    """Output and every parameter's gradient of one forward+backward."""
    model.zero_grad(set_to_none=True)
    y = model(x)
    # A fixed, uneven weighting of the outputs (the sum of squares of a BatchNorm's output is
    # constant, so its gradients would be rounding noise).
    weighting = torch.linspace(0, 7, y.numel(), device=y.device).cos().reshape(y.shape)
    (y.float() * weighting).sum().backward()
    return y.detach().float(), [p.grad.detach().float().clone() for p in model.parameters()]


def _assert_close(got, want, tol):
    for a, b in zip(got, want):
        scale = b.abs().max().clamp_min(1e-3)
        assert (a - b).abs().max() <= tol * scale, (a - b).abs().max() / scale


@pytest.mark.parametrize("wavelet", sorted(WAVELETS))
@pytest.mark.parametrize("dtype,params", [(torch.float32, "fp32"), (torch.bfloat16, "autocast"),
                                          (torch.bfloat16, "bf16"), (torch.float16, "fp16")],
                         ids=["fp32", "bf16-autocast", "bf16", "fp16"])  # fmt: skip
def test_compiled_matches_eager(wavelet, dtype, params):
    """autocast: fp32 parameters, bf16 inputs; bf16 / fp16: the whole model in that dtype."""
    torch._dynamo.reset()
    eager = _net(wavelet)
    if params in ("bf16", "fp16"):
        eager = eager.to(dtype)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(3, 41, 23, device="cuda").to(dtype)[:, ::2]  # leading dims, strided rows
    with torch.autocast("cuda", dtype=dtype, enabled=params == "autocast"):
        y_e, g_e = _step(eager, x)
        y_c, g_c = _step(compiled, x)
    tol = DTYPE_TOL[dtype]
    _assert_close([y_c], [y_e], tol)
    _assert_close(g_c, g_e, tol)


def test_compiled_runs_no_python_launcher(monkeypatch):
    """After compiling, the graph launches the kernels itself: the launchers' Python is not
    called again (the opaque custom op would call it on every step)."""
    import wavkan.kernels

    torch._dynamo.reset()
    model = _net("mexican_hat")
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(16, 23, device="cuda")
    want = _step(model, x)
    _step(compiled, x)  # compiles

    def refuse(*args, **kwargs):
        raise AssertionError("a compiled step called the Python launcher")

    for name in ("wavkan_fwd", "wavkan_bwd"):
        monkeypatch.setattr(wavkan.kernels, name, refuse)
    got = _step(compiled, x)
    _assert_close([got[0]], [want[0]], 2e-5)
    _assert_close(got[1], want[1], 2e-5)


def test_compiled_dynamic_batch():
    torch._dynamo.reset()
    eager = _net("dog")
    compiled = torch.compile(copy.deepcopy(eager), dynamic=True)
    for rows in (7, 64, 129):
        x = torch.randn(rows, 23, device="cuda")
        y_e, g_e = _step(eager, x)
        y_c, g_c = _step(compiled, x)
        _assert_close([y_c], [y_e], 2e-5)
        _assert_close(g_c, g_e, 2e-5)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_follows_the_parameters(mode):
    """AdamW steps between compiled (and, reduce-overhead, CUDA-graphed) steps: each step reads
    the parameters the optimizer just wrote, as the eager model does (a stale edge-constant
    pack would not). With BatchNorm, as the paper's networks train: Inductor's BatchNorm sums
    in another order (hence the tolerances)."""
    torch._dynamo.reset()
    eager = _net("mexican_hat", batch_norm=True)
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, mode=mode)
    opt_e = torch.optim.AdamW(eager.parameters(), lr=1e-2)
    opt_c = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    x = torch.randn(32, 23, device="cuda")
    for _ in range(5):
        y_e, g_e = _step(eager, x)
        y_c, g_c = _step(compiled, x)
        _assert_close([y_c], [y_e], 1e-4)
        _assert_close(g_c, g_e, 1e-3)
        opt_e.step()
        opt_c.step()
    for a, b in zip(twin.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
