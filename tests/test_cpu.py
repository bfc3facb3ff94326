"""The compiled CPU backend (wavkan.cpu) against the reference: output and every gradient,
every wavelet, float32 and float64, awkward shapes, chunked work; and how "auto" picks it.

Each (wavelet, dtype, pass) compiles once per process (and is cached on disk by Inductor), so
the cases share one set of shapes with every size >= 2; sizes of 1 make their own compile and
are tested for one wavelet.
"""

from __future__ import annotations

import pytest
import torch
from helpers import FP32_TOL, grads_of, layer_inputs, rel_err

from wavkan import WAVELETS, WavKAN, wavkan_linear
from wavkan import cpu as wavkan_cpu
from wavkan.ops import COMPILED_MIN_EDGES, resolve_backend
from wavkan.reference import reference_backward, reference_forward

pytestmark = pytest.mark.skipif(not wavkan_cpu.compiler_available(), reason="needs a C++ compiler for torch.compile")

# Compiled vs reference in the same dtype: only the order of the sums differs.
TOL = {torch.float32: FP32_TOL, torch.float64: {"output": 1e-12, "grad": 1e-11}}


def _compare(name, dtype, x, s, t, w):
    g = torch.randn(*x.shape[:-1], s.shape[0], dtype=dtype)
    outs = {}
    for backend in ("reference", "compiled"):
        outs[backend] = grads_of(lambda *a: wavkan_linear(*a, wavelet=name, backend=backend), (x, s, t, w), g)
    (y_ref, g_ref), (y, grads) = outs["reference"], outs["compiled"]
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert rel_err(y, y_ref) < TOL[dtype]["output"]
    for label, a, b in zip(("x", "scale", "translation", "weights"), grads, g_ref):
        assert a.dtype == dtype and a.shape == b.shape, label
        assert rel_err(a, b) < TOL[dtype]["grad"], label


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", WAVELETS)
def test_compiled_matches_reference(name, dtype):
    # Leading dims (3, 5) -> 15 rows, primes for in and out.
    x, s, t, w = layer_inputs(5, 37, 11, dtype, lead=(3,))
    x[0, 0, 0] = t[2, 0]  # one z exactly 0: meyer's and shannon's special point
    _compare(name, dtype, x, s, t, w)


def test_compiled_takes_strided_inputs():
    x, s, t, w = layer_inputs(9, 64, 6, torch.float32)
    _compare("dog", torch.float32, x[:, ::2], s[:, ::2], t[:, ::2], w[:, ::2])


@pytest.mark.parametrize("shape", [(1, 7, 5), (6, 7, 1), (4, 1, 3)], ids=["B=1", "out=1", "in=1"])
def test_compiled_sizes_of_one(shape):
    B, IN, OUT = shape
    _compare("mexican_hat", torch.float64, *layer_inputs(B, IN, OUT, torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_compiled_chunked_equals_whole(dtype):
    """Blocks of rows and outputs (chunk_elements far below B x out x in) give the reference's
    values: the block sums of every gradient add up."""
    x, s, t, w = layer_inputs(23, 19, 13, dtype)
    g = torch.randn(23, 13, dtype=dtype)
    chunk = 3 * 19  # 3 outputs of one row per block
    y = wavkan_cpu.compiled_forward(x, s, t, w, "morlet", chunk_elements=chunk)
    grads = wavkan_cpu.compiled_backward(g, x, s, t, w, "morlet", chunk_elements=chunk)
    assert rel_err(y, reference_forward(x, s, t, w, "morlet")) < TOL[dtype]["output"]
    for a, b in zip(grads, reference_backward(g, x, s, t, w, "morlet")):
        assert rel_err(a, b) < TOL[dtype]["grad"]


def test_parameters_compute_the_bits_of_plain_tensors(monkeypatch):
    """A layer's nn.Parameters and plain tensors of the same values give the same bits, over
    more layer shapes than Dynamo keeps compiled versions of per code object. (A parameter's
    sizes are guarded as static: each layer shape compiled its own version and, past the
    limit, ran eagerly with other rounding, so results hung on what the process ran before.)"""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # a copy of the pass no other test fills
    limit = torch._dynamo.config.recompile_limit
    for out in range(2, limit + 5):
        x, s, t, w = layer_inputs(6, 29, out, torch.float32)
        g = torch.randn(6, out)
        plain = (s.clone(), t.clone(), w.clone())
        params = tuple(torch.nn.Parameter(p.clone()) for p in plain)
        y_plain = wavkan_cpu.compiled_forward(x, *plain, "meyer")
        y_param = wavkan_cpu.compiled_forward(x, *params, "meyer")
        assert torch.equal(y_param, y_plain), f"out={out}"
        for a, b in zip(wavkan_cpu.compiled_backward(g, x, *params, "meyer"),
                        wavkan_cpu.compiled_backward(g, x, *plain, "meyer")):  # fmt: skip
            assert torch.equal(a, b), f"out={out}"


def test_compiled_backward_computes_only_what_is_needed():
    x, s, t, w = layer_inputs(6, 10, 4, torch.float32)
    g = torch.randn(6, 4)
    only_x = wavkan_cpu.compiled_backward(g, x, s, t, w, "dog", need_params=False)
    only_params = wavkan_cpu.compiled_backward(g, x, s, t, w, "dog", need_x=False)
    ref = reference_backward(g, x, s, t, w, "dog")
    assert only_x[1:] == (None, None, None) and only_params[0] is None
    assert rel_err(only_x[0], ref[0]) < FP32_TOL["grad"]
    for a, b in zip(only_params[1:], ref[1:]):
        assert rel_err(a, b) < FP32_TOL["grad"]


def test_half_inputs_compute_in_float32():
    x, s, t, w = layer_inputs(8, 40, 5, torch.float32)
    y = wavkan_linear(x.bfloat16(), s, t, w, backend="compiled")
    assert y.dtype == torch.bfloat16
    ref = reference_forward(x.bfloat16(), s, t, w, "mexican_hat")
    assert torch.equal(y, ref) or rel_err(y, ref) < 8e-3


def test_network_trains_the_same_on_both_backends():
    """Ten AdamW steps of a small WavKAN end at the same weights on either backend."""
    x, y = torch.randn(32, 30), torch.randint(0, 5, (32,))
    finals = []
    for backend in ("reference", "compiled"):
        torch.manual_seed(1)
        model = WavKAN([30, 9, 5], "shannon", backend=backend)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(10):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(finals[0], torch.cat([p.flatten() for p in WavKAN([30, 9, 5], "shannon").parameters()]))
    assert rel_err(finals[1], finals[0]) < 1e-5


# --- choosing the backend ----------------------------------------------------------------------


def test_auto_picks_compiled_for_big_cpu_calls():
    x = torch.randn(4, 8)
    assert resolve_backend("auto", x) == "compiled"  # no size given: a big call
    assert resolve_backend("auto", x, COMPILED_MIN_EDGES) == "compiled"
    assert resolve_backend("auto", x, COMPILED_MIN_EDGES - 1) == "reference"
    assert resolve_backend("auto", x.double()) == "reference"  # float64 stays on the exact reference
    assert resolve_backend("compiled", x.double()) == "compiled"  # unless asked for
    assert resolve_backend("auto", x.bfloat16()) == "compiled"


def test_auto_runs_the_compiled_backend(monkeypatch):
    """A big call under "auto" goes through wavkan.cpu; a small one does not."""
    calls = []
    real = wavkan_cpu.compiled_forward
    monkeypatch.setattr(wavkan_cpu, "compiled_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, s, t, w = layer_inputs(64, 40, 8, torch.float32)  # 20480 edges
    wavkan_linear(x, s, t, w)
    wavkan_linear(x[:2], s, t, w)  # 640 edges
    assert len(calls) == 1


def test_compiled_refuses_what_it_cannot_run(monkeypatch):
    with pytest.raises(RuntimeError, match=r"backend='compiled' runs CPU tensors \(x is on meta\)"):
        resolve_backend("compiled", torch.empty(2, 3, device="meta"))
    monkeypatch.setattr(wavkan_cpu, "_COMPILER_FOUND", False)
    assert not wavkan_cpu.compiler_available()
    assert resolve_backend("auto", torch.randn(2, 3)) == "reference"
    with pytest.raises(RuntimeError, match=r"needs a C\+\+ compiler for torch.compile \(g\+\+, or \$CXX\)"):
        resolve_backend("compiled", torch.randn(2, 3))


def test_compiled_backend_inside_torch_compile():
    """torch.compile of a whole model traces the op as an opaque custom op, whose compiled CPU
    passes then run inside the compiled model: same output and gradients as eager."""
    torch.manual_seed(0)
    model = WavKAN([100, 40, 5], "dog")
    x, r = torch.randn(64, 100), torch.randn(64, 5)  # not y.sum(): BatchNorm makes its gradient ~0
    y_eager = model(x)
    (y_eager * r).sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y = torch.compile(model, fullgraph=True)(x)
    (y * r).sum().backward()
    assert rel_err(y.detach(), y_eager.detach()) < 1e-6
    for a, b in zip((p.grad for p in model.parameters()), eager_grads):
        assert rel_err(a, b) < 1e-5


def test_float64_bits_do_not_depend_on_earlier_float32_calls():
    """Each dtype compiles into its own copy of a pass: float32 calls with sizes of 1 in many
    combinations (each its own compiled version) no longer use up the versions a later float64
    call needs, which then ran eagerly with other rounding (found in review)."""
    def float64_call():
        torch.manual_seed(5)
        x, s, t, w = (a.double() for a in layer_inputs(300, 70, 50))
        return wavkan_cpu.compiled_forward(x, s, t, w, "morlet")

    torch._dynamo.reset()
    wavkan_cpu._compiled_for.cache_clear()
    cold = float64_call()
    torch._dynamo.reset()
    wavkan_cpu._compiled_for.cache_clear()
    for B in (1, 5):
        for IN in (1, 5):
            for OUT in (1, 5):
                x, s, t, w = layer_inputs(B, IN, OUT)
                wavkan_cpu.compiled_forward(x, s, t, w, "morlet")
    assert torch.equal(float64_call(), cold)
