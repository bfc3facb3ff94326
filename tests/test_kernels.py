"""The Triton kernels against the reference: output and every gradient, every wavelet.

On a machine without a GPU these run through Triton's interpreter on CPU tensors (small
shapes); with a GPU they run on it, and the ``gpu``-marked cases add the large shapes.
"""

from __future__ import annotations

import gc

import pytest
import torch
import triton
import triton.language as tl
from helpers import FP32_TOL, LOW_PRECISION_FACTOR, LOW_PRECISION_FLOOR, layer_inputs, rel_err
from oracle import oracle

from wavkan import WAVELETS, WavKANLinear, get_wavelet, wavkan_linear
from wavkan.kernels import KernelConfig, wavkan_bwd_dparams, wavkan_bwd_dx, wavkan_fwd
from wavkan.kernels.launch import balanced_plan, cdiv, release_split_scratch
from wavkan.kernels.tuning import default_config
from wavkan.kernels.forward import _short_form_holds
from wavkan.kernels.staging import clear_pack_cache
from wavkan.reference import reference_backward, reference_forward, wavkan_linear_unchunked

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _check(B, IN, OUT, wavelet, dtype, device, lead=(), strided=False, rows=None):
    """Run the fused op and compare it with the float64 reference.

    ``rows``: when set, only these rows carry a nonzero dL/dy and are compared, so that the
    float64 reference stays cheap on huge shapes; the kernels still run on every row.
    """
    x, s, t, w = layer_inputs(B, IN, OUT, dtype, device, lead)
    if strided:  # the same values behind a transposed, non-contiguous view
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not x.is_contiguous()
    x2 = x.reshape(-1, IN)
    n = x2.shape[0]
    g = torch.randn(*x.shape[:-1], OUT, dtype=dtype, device=device)
    if rows is not None:
        keep = torch.zeros(n, dtype=torch.bool, device=device)
        keep[rows] = True
        g = g * keep.reshape(*x.shape[:-1], 1).to(dtype)
    else:
        rows = torch.arange(n, device=device)

    leaves = [a.detach().requires_grad_() for a in (x, s, t, w)]
    y = wavkan_linear(*leaves, wavelet=wavelet, backend="triton")
    y.backward(g)
    assert y.dtype == dtype and y.shape == (*x.shape[:-1], OUT)
    got = [y.reshape(-1, OUT)[rows], leaves[0].grad.reshape(-1, IN)[rows]] + [p.grad for p in leaves[1:]]
    assert all(gr.dtype == dtype for gr in got[1:])

    # float64 reference on the compared rows, window folded in as the op does.
    wav = get_wavelet(wavelet)
    window = wav.window(IN, torch.float64, device) if wav.window else 1.0
    xr, gr = x2[rows].double(), g.reshape(-1, OUT)[rows].double()
    s64, t64, w64 = s.double(), t.double(), w.double()
    y_ref = reference_forward(xr, s64, t64, w64 * window, wavelet)
    gx_ref, gs_ref, gt_ref, gw_ref = reference_backward(gr, xr, s64, t64, w64 * window, wavelet)
    expected = [y_ref, gx_ref, gs_ref, gt_ref, gw_ref * window]
    names = ["y", "grad_x", "grad_scale", "grad_translation", "grad_weights"]

    if dtype == torch.float32:
        for name, a, e in zip(names, got, expected):
            tol = FP32_TOL["output"] if name == "y" else FP32_TOL["grad"]
            assert rel_err(a, e) < tol, (name, rel_err(a, e))
        return
    # Low precision: at most twice PyTorch's own error computing the paper's formula in dtype.
    own = [a.detach().requires_grad_() for a in (x2[rows], s, t, w)]
    y_own = wavkan_linear_unchunked(own[0], own[1], own[2], own[3] * window.to(dtype) if wav.window else own[3], wavelet)
    y_own.backward(g.reshape(-1, OUT)[rows])
    theirs = [y_own] + [a.grad for a in own]
    for name, a, b, e in zip(names, got, theirs, expected):
        # Where PyTorch overflows in dtype (meyer's polynomial in fp16), its error is taken as
        # that of rounding the exact result to dtype, the least any dtype-valued answer has.
        own_err = rel_err(b, e) if torch.isfinite(b).all() else rel_err(e.to(dtype), e)
        bound = LOW_PRECISION_FACTOR * own_err + LOW_PRECISION_FLOOR[dtype]
        assert rel_err(a, e) <= bound, (name, rel_err(a, e), bound)


SMALL_SHAPES = [(1, 1, 1), (7, 33, 5), (3, 40, 70), (33, 7, 1)]


@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("wavelet", WAVELETS)
def test_small_shapes(wavelet, dtype, shape, kernel_device):
    _check(*shape, wavelet, DTYPES[dtype], kernel_device)


@pytest.mark.parametrize("wavelet", WAVELETS)
def test_bf16_leading_dims_and_strided(wavelet, kernel_device):
    _check(5, 19, 6, wavelet, torch.bfloat16, kernel_device, lead=(2,), strided=True)


def test_bf16_inputs_are_upcast(kernel_device):
    """With bf16 inputs the result is the exact sum rounded once to bf16: every element within
    one bf16 ulp of the float64 value (arithmetic or accumulation in bf16 would be far off)."""
    x, s, t, w = layer_inputs(16, 1000, 8, torch.bfloat16, kernel_device)
    y = wavkan_linear(x, s, t, w, backend="triton").double()
    exact = reference_forward(x.double(), s.double(), t.double(), w.double(), "mexican_hat")
    ulp = torch.exp2(torch.floor(torch.log2(exact.abs())) - 7)  # bf16: 8 significant bits
    assert ((y - exact).abs() <= ulp * 1.01).all()
    bf16_sum = (wavkan_linear_unchunked(x, s, t, w, "mexican_hat").double() - exact).abs()
    assert (bf16_sum > ulp * 1.01).any()  # the check above tells bf16 arithmetic apart


# --- accuracy where |t/s| is large, overflow and non-finite values ---------------------------


def test_issue_example_large_translation_over_scale(kernel_device):
    """x = 100.007, s = 0.01, t = 100, w = 1: z = 0.7. x/s - t/s cancelled to -0.3459355 in
    fp32; float64 says -0.3457668."""
    x = torch.tensor([[100.007]], device=kernel_device)
    s, t, w = (torch.tensor([[v]], device=kernel_device) for v in (0.01, 100.0, 1.0))
    y = wavkan_linear(x, s, t, w, "mexican_hat", backend="triton")
    exact = reference_forward(x.double(), s.double(), t.double(), w.double(), "mexican_hat")
    assert abs(y.item() - exact.item()) <= 1e-5 * abs(exact.item())


def _within_oracle(x, s, t, w, g, wavelet, backend, device):
    """Output and every gradient within the float64 oracle's bound (tests/oracle.py: 1e-5 of
    the sum of the terms' magnitudes, plus what rounding z to fp32 costs)."""
    values, tols = oracle(x, s, t, w, g, wavelet, trig_on_gpu=device.type == "cuda")
    leaves = [a.to(device).clone().requires_grad_() for a in (x, s, t, w)]
    y = wavkan_linear(*leaves, wavelet=wavelet, backend=backend)
    y.backward(g.to(device))
    names = ("y", "grad_x", "grad_scale", "grad_translation", "grad_weights")
    for name, got, expected, tol in zip(names, [y.detach()] + [a.grad for a in leaves], values, tols):
        err = (got.double().cpu() - expected).abs()
        assert (err <= tol + 1e-7 * expected.abs()).all(), (backend, name, (err / tol).max().item())


@pytest.mark.parametrize("bound_ratio", [0.5, 0.999, 1.001, 3.0])
@pytest.mark.parametrize("wavelet", WAVELETS)
def test_short_z_on_both_sides_of_its_bound(wavelet, bound_ratio, kernel_device):
    """The forward computes z by one FFMA in programs whose edges all have |t k/s| <= 1
    (``kernels.forward.FAST_Z_BOUND``), exactly elsewhere: on both sides of the bound, and with
    columns on both sides in one call (40 outputs: one program of 32 below it, one above under
    the interpreter's tiles), every value within the float64 oracle's bound."""
    from wavkan.kernels.forward import FAST_Z_BOUND

    B, IN, OUT = 7, 11, 40
    k = get_wavelet(wavelet).fold[0]
    _, s, _, w = layer_inputs(1, IN, OUT, torch.float64)
    ratio = torch.full((OUT, 1), bound_ratio * FAST_Z_BOUND.value, dtype=torch.float64)
    ratio[32:] = 3.0  # the second program's columns are above the bound whatever the first's
    t = torch.where(torch.rand(OUT, IN) < 0.5, -1.0, 1.0).double() * ratio * s / k
    x = t[torch.arange(B) % OUT] + torch.randn(B, IN, dtype=torch.float64) * 1.5
    g = torch.randn(B, OUT)
    _within_oracle(*(a.float() for a in (x, s, t, w, g)), wavelet, "triton", kernel_device)


@triton.jit
def _decide_short_z(pack_ptr, PLANE, OUT_PAD, IN, out_ptr, BLOCK: tl.constexpr):
    tl.store(out_ptr, _short_form_holds(pack_ptr, 0, tl.arange(0, 1), pack_ptr, PLANE, 2 * PLANE, OUT_PAD, 0, IN, tl.arange(0, BLOCK), False, 1, BLOCK).to(tl.int32))


@pytest.mark.parametrize("case, holds", [
    ("small", True), ("one edge above", False), ("inf", False), ("zero scale, zero translation", False),
])
def test_short_z_decision(case, holds, kernel_device):
    """The forward's per-program decision (``_short_form_holds``, its edge part) on packed edges: |t k/s| <= 1 on
    every edge, and an infinite or NaN t k/s (t = 0 with s = 0: 0 * inf) fails it. Taking the
    short form there would compute x * inf + NaN where the exact z is x * inf = inf, whose psi a
    wavelet may define (a Gaussian: 0)."""
    from wavkan.kernels.staging import pack_edge_constants

    OUT, IN = 3, 19
    s = torch.ones(OUT, IN, device=kernel_device)
    t = torch.full((OUT, IN), 0.5, device=kernel_device)
    if case == "one edge above":
        t[2, 17] = 1.5
    elif case == "inf":
        t[1, 3] = float("inf")
    elif case == "zero scale, zero translation":
        s[0, 18], t[0, 18] = 0.0, 0.0
    pack = pack_edge_constants(s, t, torch.ones_like(s), 4, False)  # k = 1: t k/s = t / s
    out = torch.zeros(1, dtype=torch.int32, device=kernel_device)
    _decide_short_z[(1,)](pack, pack.stride(0), 4, IN, out, BLOCK=4)
    assert bool(out.item()) is holds


@pytest.mark.parametrize("ratio", [1e3, 1e5, 1e7])
@pytest.mark.parametrize("wavelet", WAVELETS)
def test_large_translation_over_scale(wavelet, ratio, kernel_device):
    """|t/s| up to 1e7 with x near t (z of order 1, where x/s - t/s cancels in fp32: at 1e5 it
    cost 2% of y, at 1e7 its sign): the output and every gradient as accurate as float64
    allows in fp32, on both backends."""
    B, IN, OUT = 6, 9, 5
    _, s, _, w = layer_inputs(1, IN, OUT, torch.float64)
    t = torch.where(torch.rand(OUT, IN) < 0.5, -ratio, ratio).double() * s
    near = torch.arange(B) % OUT
    x = t[near] + s[near] * torch.randn(B, IN, dtype=torch.float64) * 1.5
    g = torch.randn(B, OUT)
    for backend in ("reference", "triton"):
        _within_oracle(*(a.float() for a in (x, s, t, w, g)), wavelet, backend, kernel_device)


@pytest.mark.parametrize("wavelet", WAVELETS)
def test_tiny_scale_gives_float64_not_nan(wavelet, kernel_device):
    """s = 1e-20: z ~ 1e20 is finite but z^2 overflows fp32. The edge contributes what float64
    says (0 for the Gaussians, whose exp underflows; about 1/z for shannon), on both backends,
    not inf * 0 = NaN; its gradients likewise (shannon's dpsi is not (z cos z - sin z) / z^2,
    which would be 0)."""
    x = torch.tensor([[0.3, -1.2]])
    s = torch.tensor([[1e-20, 1.0]])
    t = torch.tensor([[0.1, 0.4]])
    w = torch.tensor([[1.0, 0.5]])
    for backend in ("reference", "triton"):
        _within_oracle(x, s, t, w, torch.ones(1, 1), wavelet, backend, kernel_device)


@pytest.mark.parametrize("rows", ["finite", "infinite"])
@pytest.mark.parametrize("wavelet", WAVELETS)
def test_huge_finite_z_gives_float64_not_nan(wavelet, rows, kernel_device):
    """z between 6.8e37 and fp32's largest (huge inputs): the sine's or cosine's argument
    (morlet's omega0 z, meyer's pi v) must not overflow into inf, nor a Gaussian's zs times a
    constant, whose products with 0 are NaN. Every wavelet but shannon is 0 there in float64
    (its Gaussian or its window is), and so are its gradients. The finite rows alone (so the
    parameter gradients, summed over rows, are compared too), and an infinite x beside an
    ordinary one (NaN where float64 has it).

    Shannon's psi (sin z / z) is about 1/z there, and its scale gradient's term, z dpsi(z) =
    cos z - sin z / z, stays of order 1: its value is the phase of z, which fp32 does not carry
    this far out (the accuracy contract allows the error of rounding z to fp32, |z| 2^-24
    radians; the kernels' fast sine and cosine reduce the angle exactly up to about 2e5). That
    gradient must be finite and within the huge rows' largest terms (|cos z| + |sin z / z| <= 1
    each, here s = w = g = 1) of the ordinary row's float64 value; every other value equal."""
    xs = [7e37, -1e38, 2e38, -3.3e38, 0.4] if rows == "finite" else [float("inf"), 0.4]
    x = torch.tensor(xs).reshape(-1, 1)
    s, t, w = torch.ones(1, 1), torch.zeros(1, 1), torch.ones(1, 1)
    g = torch.ones(len(xs), 1)
    f64 = (x.double(), s.double(), t.double(), w.double() * _window64(wavelet, 1))
    y64 = reference_forward(*f64, wavelet)
    grads64 = reference_backward(g.double(), *f64, wavelet)
    phase_bound = [False] * 5
    if rows == "finite":  # float64 is finite wherever z is
        assert not any(torch.isnan(a).any() for a in (y64, *grads64))
        huge64 = reference_backward(g[:-1].double(), f64[0][:-1], *f64[1:], wavelet)
        phase_bound = [False, False] + [bool(a.abs().max() > 1e-6) for a in huge64[1:]]
        assert phase_bound == [False, False, wavelet == "shannon", False, False]  # shannon's scale gradient only
        ordinary64 = reference_backward(g[-1:].double(), f64[0][-1:], *f64[1:], wavelet)[1]
        huge_terms = len(xs) - 1
    for backend in ("reference", "triton"):
        leaves = [a.clone().to(kernel_device).requires_grad_() for a in (x, s, t, w)]
        y = wavkan_linear(*leaves, wavelet=wavelet, backend=backend)
        y.backward(g.to(kernel_device))
        for got, want, phase in zip([y] + [a.grad for a in leaves], [y64] + list(grads64), phase_bound):
            got = got.detach().double().cpu()
            assert torch.equal(torch.isnan(got), torch.isnan(want)), (backend, got, want)
            finite = ~torch.isnan(want)
            if phase:
                assert torch.isfinite(got).all(), (backend, got, want)
                # (the fast sine and cosine err by 2^-21 absolute; fp32's sum by less than 1e-6)
                assert (got - ordinary64).abs().max() <= huge_terms + 1e-4, (backend, got, ordinary64)
            else:
                assert torch.allclose(got[finite], want[finite], rtol=1e-5, atol=1e-6), (backend, got, want)


def _window64(wavelet, n, device="cpu"):
    wav = get_wavelet(wavelet)
    return wav.window(n, torch.float64, device) if wav.window else 1.0


@pytest.mark.parametrize("wavelet", WAVELETS)
def test_non_finite_values_follow_float64(wavelet, kernel_device):
    """An infinite weight gives an infinite term of psi's sign (mexican_hat's folded weight
    computed inf - inf = NaN); an infinite input or a zero scale gives NaN (psi of an infinite
    z), on both backends as in float64."""
    x = torch.tensor([[0.3, 0.2], [float("inf"), 0.2], [0.3, 0.2]], device=kernel_device)
    s = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]], device=kernel_device)
    t = torch.tensor([[0.1, 0.0], [0.1, 0.0], [0.1, 0.0]], device=kernel_device)
    w = torch.tensor([[float("inf"), 0.5], [-1.0, 0.5], [1.0, 0.5]], device=kernel_device)
    expected = reference_forward(x.double(), s.double(), t.double(), w.double() * _window64(wavelet, 2, kernel_device), wavelet)
    assert torch.isinf(expected[0, 0])  # (the paper's wavelets also give NaN in row 1 and column 2)
    for backend in ("reference", "triton"):
        y = wavkan_linear(x, s, t, w, wavelet=wavelet, backend=backend).double()
        assert torch.equal(torch.isnan(y), torch.isnan(expected)), (backend, y, expected)
        assert torch.equal(y[torch.isinf(expected)], expected[torch.isinf(expected)]), (backend, y, expected)


@pytest.mark.parametrize("g_layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("wavelet", ["mexican_hat", "shannon"])
def test_backward_on_whole_tiles(wavelet, g_layout, kernel_device):
    """Sizes that are whole tiles (the parameter pass's loads unclamped), and dL/dy as a
    transposed view, which every pass reads in place through its strides."""
    B, IN, OUT = 40, 64, 32
    x, s, t, w = layer_inputs(B, IN, OUT, torch.float32, kernel_device)
    g = torch.randn(B, OUT, device=kernel_device)
    if g_layout == "transposed":
        g = g.t().contiguous().t()
    wav = get_wavelet(wavelet)
    cfg = KernelConfig(32, 32, num_warps=1, num_stages=1, split=1)
    got = [wavkan_bwd_dx(g, x, s, t, w, wav, cfg), *wavkan_bwd_dparams(g, x, s, t, w, wav, cfg)]
    expected = reference_backward(g.double(), x.double(), s.double(), t.double(), w.double(), wavelet)
    for name, a, e in zip(("grad_x", "grad_scale", "grad_translation", "grad_weights"), got, expected):
        assert rel_err(a, e) < FP32_TOL["grad"], (name, rel_err(a, e))


@pytest.mark.parametrize("wavelet", ["mexican_hat", "morlet", "dog"])
@pytest.mark.parametrize("kind", ["fwd", "bwd_dx", "bwd_dparams"])
def test_split_reductions_match_unsplit(kind, wavelet, kernel_device):
    """Split partials and their host-side epilogue (the folded wavelet constants) against the
    one-pass kernel and the float64 reference."""
    x, s, t, w = layer_inputs(37, 70, 9, torch.float32, kernel_device)
    g = torch.randn(37, 9, device=kernel_device)
    wav = get_wavelet(wavelet)
    cfg = KernelConfig(16, 16, num_warps=1, num_stages=1)
    if kind == "fwd":
        one, three = (wavkan_fwd(x, s, t, w, wav, cfg.with_split(k)) for k in (1, 3))
        expected = [reference_forward(x.double(), s.double(), t.double(), w.double(), wavelet)]
        one, three = [one], [three]
    else:
        fn = wavkan_bwd_dx if kind == "bwd_dx" else wavkan_bwd_dparams
        one, three = (fn(g, x, s, t, w, wav, cfg.with_split(k)) for k in (1, 3))
        one, three = (list(r) if isinstance(r, tuple) else [r] for r in (one, three))
        ref = reference_backward(g.double(), x.double(), s.double(), t.double(), w.double(), wavelet)
        expected = [ref[0]] if kind == "bwd_dx" else list(ref[1:])
    for a, b, e in zip(one, three, expected):
        assert rel_err(a, e) < 1e-5 and rel_err(b, e) < 1e-5


@pytest.mark.parametrize("kind", ["fwd", "bwd_dx"])
def test_split_partials_rounded_once_to_half(kind, kernel_device):
    """fp16 results of a split reduction: the fp32 partials summed, then rounded once, equal to
    the one-pass kernel's single rounding up to one fp16 ulp (the sums differ in order only)."""
    x, s, t, w = layer_inputs(37, 70, 9, torch.float16, kernel_device)
    g = torch.randn(37, 9, device=kernel_device).half()
    wav = get_wavelet("mexican_hat")
    cfg = KernelConfig(16, 16, num_warps=1, num_stages=1)
    if kind == "fwd":
        one, three = (wavkan_fwd(x, s, t, w, wav, cfg.with_split(k)) for k in (1, 3))
    else:
        one, three = (wavkan_bwd_dx(g, x, s, t, w, wav, cfg.with_split(k)) for k in (1, 3))
    assert one.dtype == three.dtype == torch.float16
    ulp = torch.finfo(torch.float16).eps * one.float().abs().clamp_min(2**-14)
    assert ((one.float() - three.float()).abs() <= ulp).all()


@pytest.mark.parametrize("prefetch, unroll", [(False, 1), (False, 3), (True, 3)])
def test_loop_variants(prefetch, unroll, kernel_device):
    """The main loops without the register prefetch, and unrolled (the factor is a compiler
    hint: the interpreter runs the plain loop), against the float64 reference."""
    x, s, t, w = layer_inputs(19, 23, 11, torch.float32, kernel_device)
    g = torch.randn(19, 11, device=kernel_device)
    wav = get_wavelet("mexican_hat")
    cfg = KernelConfig(16, 16, num_warps=1, num_stages=1, prefetch=prefetch, unroll=unroll, split=1)
    got = [wavkan_fwd(x, s, t, w, wav, cfg), wavkan_bwd_dx(g, x, s, t, w, wav, cfg), *wavkan_bwd_dparams(g, x, s, t, w, wav, cfg)]
    d = [a.double() for a in (g, x, s, t, w)]
    expected = [reference_forward(*d[1:], "mexican_hat"), *reference_backward(*d, "mexican_hat")]
    for a, e in zip(got, expected):
        assert rel_err(a, e) < FP32_TOL["grad"], rel_err(a, e)


def test_empty_batch(kernel_device):
    """B = 0: an empty output, and zero parameter gradients (a sum over no rows)."""
    x, s, t, w = (a.requires_grad_() for a in layer_inputs(0, 6, 4, torch.float32, kernel_device))
    y = wavkan_linear(x, s, t, w, backend="triton")
    assert y.shape == (0, 4)
    y.sum().backward()
    assert x.grad.shape == (0, 6)
    for p in (s, t, w):
        assert torch.equal(p.grad, torch.zeros_like(p))


def test_split_is_deterministic(kernel_device):
    x, s, t, w = layer_inputs(37, 70, 9, torch.float32, kernel_device)
    g = torch.randn(37, 9, device=kernel_device)
    wav = get_wavelet("dog")
    cfg = KernelConfig(16, 16, num_warps=1, num_stages=1, split=3)
    for fn, args in ((wavkan_fwd, (x,)), (wavkan_bwd_dx, (g, x)), (wavkan_bwd_dparams, (g, x))):
        first, second = (fn(*args, s, t, w, wav, cfg) for _ in range(2))
        for a, b in zip(*(r if isinstance(r, tuple) else (r,) for r in (first, second))):
            assert torch.equal(a, b)


def test_deterministic(kernel_device):
    x, s, t, w = layer_inputs(29, 45, 13, torch.float32, kernel_device)
    g = torch.randn(29, 13, device=kernel_device)
    results = []
    for _ in range(2):
        leaves = [a.detach().clone().requires_grad_() for a in (x, s, t, w)]
        y = wavkan_linear(*leaves, wavelet="shannon", backend="triton")
        y.backward(g)
        results.append([y] + [a.grad for a in leaves])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_compile_fullgraph_traces_the_layer(kernel_device):
    layer = WavKANLinear(11, 6, "dog", backend="triton").to(kernel_device)
    x = torch.randn(9, 11, device=kernel_device)
    compiled = torch.compile(layer, fullgraph=True)
    eager_y = layer(x)
    y = compiled(x)
    assert torch.allclose(y, eager_y, atol=1e-5)
    y.sum().backward()
    grad_compiled = layer.scale.grad.clone()
    layer.zero_grad()
    layer(x).sum().backward()
    assert torch.allclose(grad_compiled, layer.scale.grad, atol=1e-5)


@pytest.mark.parametrize("backend,compiled", [("reference", False), ("triton", False), ("triton", True)],
                         ids=["reference", "triton", "triton-compiled"])  # fmt: skip
@pytest.mark.parametrize("frozen", ["x", "params"])
def test_backward_runs_only_the_passes_asked_for(kernel_device, backend, compiled, frozen, monkeypatch, request):
    """A gradient for an input that does not require grad is not computed: no grad_x pass for
    such an input (a network's first layer), no parameter pass for a frozen layer. The backend
    returns None for what it skipped, and the gradients asked for match those of a call that
    asks for all four. (requires_grad at forward time decides: ``torch.autograd.grad(y, x)``
    through a layer with trainable parameters still runs the parameter pass.)"""
    import wavkan.kernels
    import wavkan.reference
    from wavkan.kernels import backward

    inputs = layer_inputs(6, 7, 5, torch.float32, kernel_device)
    g = torch.randn(6, 5, device=kernel_device)
    if compiled:
        # The spies see what a trace runs; a graph loaded from Inductor's on-disk caches (a
        # second run on the same machine) is not traced again.
        import torch._inductor.config as inductor_config

        caches_off = inductor_config.patch(force_disable_caches=True)
        caches_off.__enter__()
        request.addfinalizer(lambda: caches_off.__exit__(None, None, None))
        torch._dynamo.reset()
    op = torch.compile(wavkan_linear, fullgraph=True) if compiled else wavkan_linear

    def grads(needs):
        leaves = [a.detach().clone().requires_grad_(need) for a, need in zip(inputs, needs)]
        op(*leaves, wavelet="dog", backend=backend).backward(g)
        return [a.grad for a in leaves]

    everything = grads((True, True, True, True))
    calls = []

    def spy(module, name):
        def recorded(*args, _run=getattr(module, name), **kwargs):
            result = _run(*args, **kwargs)
            calls.append((name, result))
            return result

        monkeypatch.setattr(module, name, recorded)

    if backend == "triton":
        spy(wavkan.kernels, "wavkan_bwd")
        for name in ("wavkan_bwd_dx", "wavkan_bwd_dparams"):
            spy(backward, name)
    else:
        spy(wavkan.reference, "reference_backward")
    needs = (False, True, True, True) if frozen == "x" else (True, False, False, False)
    for grad, full, need in zip(grads(needs), everything, needs):
        if need:
            torch.testing.assert_close(grad, full, rtol=1e-6, atol=1e-6)
    entry = "wavkan_bwd" if backend == "triton" else "reference_backward"
    returned = [result for name, result in calls if name == entry]
    ran = [name for name, _ in calls if name != entry]
    if compiled and kernel_device.type == "cuda":
        # torch.compile traces the CUDA triton op (ops._linear_cuda_backward) once or more
        # and launches the kernels it recorded: every trace ran the passes asked for, no other.
        assert returned
        ran = sorted(set(ran))
    else:
        assert len(returned) == 1
    for result in returned:
        assert [r is not None for r in result] == [needs[0], *[any(needs[1:])] * 3]
    if backend == "triton":
        assert ran == (["wavkan_bwd_dparams"] if frozen == "x" else ["wavkan_bwd_dx"])


def test_autocast(kernel_device):
    model = torch.nn.Sequential(torch.nn.Linear(10, 12), WavKANLinear(12, 5, backend="triton")).to(kernel_device)
    x = torch.randn(8, 10, device=kernel_device)
    reference = model(x)
    dtype = torch.bfloat16
    with torch.autocast(kernel_device.type, dtype=dtype):
        y = model(x)
    y.float().sum().backward()
    assert model[1].scale.grad is not None and model[1].scale.grad.dtype == torch.float32
    assert rel_err(y.float(), reference) < 5e-2


# --- GPU only: the shapes the interpreter cannot afford -----------------------------------

ROWS_TO_CHECK = 256


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("wavelet", WAVELETS)
def test_gpu_large(wavelet, dtype):
    rows = torch.randperm(4096, device="cuda")[:ROWS_TO_CHECK]
    _check(4096, 1024, 1024, wavelet, DTYPES[dtype], torch.device("cuda"), rows=rows)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gpu_batch_one_leading_dims_strided(dtype):
    for wavelet in WAVELETS:
        _check(1, 1000, 127, wavelet, DTYPES[dtype], torch.device("cuda"))
        _check(4, 333, 65, wavelet, DTYPES[dtype], torch.device("cuda"), lead=(3,), strided=True)


@pytest.mark.gpu
def test_gpu_more_than_2_31_input_elements():
    B, IN, OUT = (1 << 21) + 3, 1024, 3  # B * IN = 2^31 + 3072
    rows = torch.cat([torch.arange(64), torch.arange(B - 64, B)]).cuda()
    _check(B, IN, OUT, "mexican_hat", torch.float16, torch.device("cuda"), rows=rows)


@pytest.mark.gpu
def test_gpu_edge_planes_past_2_30_elements():
    """in * out = 2^30 edges: the packed planes' third one starts 2^31 elements in, past
    int32 (the launchers pass the plane offsets as ints, 64-bit past 2^31). dL/dy is nonzero
    on a few outputs only, so the float64 reference needs those rows of the parameters alone."""
    if torch.cuda.get_device_properties(0).total_memory < 48 << 30:
        pytest.skip("needs about 40 GB of GPU memory")
    B, IN, OUT = 3, 1 << 20, 1024
    x, s, t, w = (a.requires_grad_() for a in layer_inputs(B, IN, OUT, torch.float32, "cuda"))
    picked = torch.tensor([0, 517, OUT - 1], device="cuda")
    g = torch.zeros(B, OUT, device="cuda")
    g[:, picked] = torch.randn(B, len(picked), device="cuda")
    y = wavkan_linear(x, s, t, w, backend="triton")
    y.backward(g)
    rows = [p.detach()[picked].double() for p in (s, t, w)]
    y_ref = reference_forward(x.detach().double(), *rows, "mexican_hat")
    gx_ref, gs_ref, gt_ref, gw_ref = reference_backward(g[:, picked].double(), x.detach().double(), *rows, "mexican_hat")
    assert rel_err(y[:, picked], y_ref) < FP32_TOL["output"]
    assert rel_err(x.grad, gx_ref) < FP32_TOL["grad"]
    for p, ref in ((s, gs_ref), (t, gt_ref), (w, gw_ref)):
        assert rel_err(p.grad[picked], ref) < FP32_TOL["grad"]
        assert p.grad.count_nonzero() == torch.count_nonzero(p.grad[picked])  # zero elsewhere


@pytest.mark.gpu
def test_gpu_peak_memory_forward_backward():
    """Beyond 1.2x the tensors, only what the launchers keep on purpose: the split scratch
    (sized for the largest of the forward's, grad_x's and the parameter pass's partials, kept
    per stream), the two cached edge-constant packs (3 planes each, as large as a parameter),
    and the staged x of the forward where its config stages it."""
    B, IN, OUT = 4096, 1024, 1024
    cuda = torch.device("cuda")
    fwd_cfg, dx_cfg, dp_cfg = (default_config(kind, cuda, B) for kind in ("fwd", "bwd_dx", "bwd_dparams"))
    fwd_split = balanced_plan(cdiv(B, fwd_cfg.block_m) * cdiv(OUT, fwd_cfg.block_n), IN, cuda, fwd_cfg)[0]
    dx_split = balanced_plan(cdiv(B, dx_cfg.block_m) * cdiv(IN, dx_cfg.block_n), OUT, cuda, dx_cfg)[0]
    dp_split = balanced_plan(cdiv(OUT, dp_cfg.block_m) * cdiv(IN, dp_cfg.block_n), B, cuda, dp_cfg)[0]
    scratch = 4 * max(fwd_split * B * OUT * (fwd_split > 1), dx_split * B * IN * (dx_split > 1),
                      3 * dp_split * OUT * IN * (dp_split > 1))
    packs = 2 * 4 * 3 * OUT * (IN + 128)  # padded to whole tiles
    staged = 4 * B * IN if fwd_cfg.stage else 0
    partials = scratch + packs + staged
    release_split_scratch()
    clear_pack_cache()
    x, s, t, w = (a.requires_grad_() for a in layer_inputs(B, IN, OUT, torch.float32, "cuda"))
    g = torch.randn(B, OUT, device="cuda")
    # Blocks cached by earlier tests (the > 2^31 case leaves gigabytes) would be handed out
    # whole: measure the op against an empty cache.
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = wavkan_linear(x, s, t, w, backend="triton")
    y.backward(g)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base  # everything the op allocated, at its peak
    inputs = 4 * (B * IN + 3 * OUT * IN + B * OUT)  # x, parameters, dL/dy
    owned = 4 * (B * OUT + B * IN + 3 * OUT * IN)  # y and the four gradients
    assert inputs + extra < 1.2 * (inputs + owned) + partials, (extra, owned, partials)
