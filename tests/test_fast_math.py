"""``fast_math``: the packed-half forward (kernels/forward_half.py) against the float64 reference.

On a CPU machine the kernel runs through Triton's interpreter, which computes each f16x2 pair
with fp16 Triton operations instead of the PTX (staging, packing, chunked fp32 flushes, split,
epilogue and the polynomial exponential's arithmetic are what it checks); the ``gpu`` cases
run the PTX itself on the large shapes.
"""

from __future__ import annotations

import pytest
import torch
from helpers import layer_inputs, rel_err

from wavkan import WavKANLinear, get_wavelet, ops, wavkan_linear
from wavkan.kernels import KernelConfig, wavkan_fwd
from wavkan.kernels.forward_half import CHUNK, poly_mask, wavkan_fwd_half
from wavkan.reference import reference_forward

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
FAST_WAVELETS = ["mexican_hat", "dog"]
# The target of the fast path: relative (norm) error of y at most 1e-2. Measured about 1e-3.
FAST_TOL = 1e-2


def _exact(x, s, t, w, wavelet):
    """float64 forward of the same (rounded) inputs."""
    return reference_forward(x.reshape(-1, x.shape[-1]).double(), s.double(), t.double(), w.double(), wavelet)


def _config(device, poly_steps, split=None, unroll=CHUNK):
    if device.type == "cuda":
        return KernelConfig(128, 16, num_warps=4, num_stages=1, unroll=unroll, poly_steps=poly_steps, split=split)
    return KernelConfig(32, 32, num_warps=1, num_stages=1, unroll=unroll, poly_steps=poly_steps, split=split)


@pytest.fixture(autouse=True)
def _fast_math_at_any_batch(monkeypatch):
    # The row threshold is a GPU speed rule (ops.FAST_MATH_MIN_ROWS); these tests check the
    # computation on small batches. test_fast_math_needs_enough_rows checks the rule.
    monkeypatch.setattr(ops, "FAST_MATH_MIN_ROWS", 1)


def test_fast_math_needs_enough_rows(monkeypatch, kernel_device):
    monkeypatch.setattr(ops, "FAST_MATH_MIN_ROWS", 8)
    x, s, t, w = layer_inputs(8, 10, 6, torch.float16, kernel_device)
    exact = wavkan_linear(x[:7], s, t, w, "dog", backend="triton")
    assert torch.equal(wavkan_linear(x[:7], s, t, w, "dog", backend="triton", fast_math=True), exact)
    fast = wavkan_linear(x, s, t, w, "dog", backend="triton", fast_math=True)
    assert not torch.equal(fast[:7], exact)


def test_half_wavelets_are_the_gaussian_ones():
    assert set(ops.FAST_MATH_WAVELETS) == set(FAST_WAVELETS)
    assert all(get_wavelet(name).gaussian for name in FAST_WAVELETS)


def test_poly_mask_spreads_the_polynomial_steps():
    assert poly_mask(0, CHUNK) == 0
    assert poly_mask(CHUNK, CHUNK) == (1 << CHUNK) - 1
    assert poly_mask(1, 4) == 0b1000
    for group in (1, 2, 4, 8, 16):
        for steps in range(group + 1):
            mask = poly_mask(steps, group)
            assert bin(mask).count("1") == steps and mask < 1 << group
            if 0 < steps <= group // 2:  # no two adjacent
                assert mask & (mask >> 1) == 0, (steps, bin(mask))
    with pytest.raises(ValueError, match="poly_steps"):
        poly_mask(5, 4)
    with pytest.raises(ValueError, match="must divide 16"):
        poly_mask(0, 3)


# (unroll, poly_steps): the MUFU path alone, the default's groups of 8 with 3 polynomial
# steps, and the polynomial alone.
@pytest.mark.parametrize("unroll, poly_steps", [(CHUNK, 0), (8, 3), (CHUNK, CHUNK)])
@pytest.mark.parametrize("dtype", list(HALF))
@pytest.mark.parametrize("wavelet", FAST_WAVELETS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 33, 5), (19, 40, 67)], ids=lambda s: "x".join(map(str, s)))
def test_fast_forward_matches_reference(shape, wavelet, dtype, unroll, poly_steps, kernel_device):
    x, s, t, w = layer_inputs(*shape, HALF[dtype], kernel_device)
    y = wavkan_fwd_half(x, s, t, w, get_wavelet(wavelet), _config(kernel_device, poly_steps, unroll=unroll))
    assert y.dtype == HALF[dtype] and y.shape == (shape[0], shape[2])
    assert rel_err(y, _exact(x, s, t, w, wavelet)) < FAST_TOL


def test_fast_math_is_a_different_computation(kernel_device):
    # Guards against a silent fallback: the packed path rounds differently from the fp32 one.
    x, s, t, w = layer_inputs(9, 40, 70, torch.float16, kernel_device)
    fast = wavkan_linear(x, s, t, w, "mexican_hat", backend="triton", fast_math=True)
    exact = wavkan_linear(x, s, t, w, "mexican_hat", backend="triton")
    assert not torch.equal(fast, exact)
    assert rel_err(fast, _exact(x, s, t, w, "mexican_hat")) < FAST_TOL


def test_leading_dims_and_strided_x(kernel_device):
    x, s, t, w = layer_inputs(5, 21, 13, torch.float16, kernel_device, lead=(2,))
    x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not x.is_contiguous()
    y = wavkan_linear(x, s, t, w, "dog", backend="triton", fast_math=True)
    assert y.shape == (2, 5, 13)
    assert rel_err(y.reshape(-1, 13), _exact(x, s, t, w, "dog")) < FAST_TOL


@pytest.mark.parametrize("split", [2, 3])
def test_split_matches_unsplit(split, kernel_device):
    # 70 inputs = 5 chunks of 16 (the last padded): splits of 3 and 2 chunks, 2 chunks and 1.
    x, s, t, w = layer_inputs(6, 70, 9, torch.float16, kernel_device)
    wav = get_wavelet("mexican_hat")
    # Groups of 4 unrolled steps, one of them polynomial: four groups per chunk.
    whole = wavkan_fwd_half(x, s, t, w, wav, _config(kernel_device, 1, split=1, unroll=4))
    parts = wavkan_fwd_half(x, s, t, w, wav, _config(kernel_device, 1, split=split, unroll=4))
    # The same fp16 chunk sums, added in fp32 in another grouping, then rounded to fp16.
    assert rel_err(parts, whole) < 2e-3
    assert rel_err(parts, _exact(x, s, t, w, "mexican_hat")) < FAST_TOL


@pytest.mark.parametrize("ratio", [1e2, 1e3])
@pytest.mark.parametrize("wavelet", FAST_WAVELETS)
def test_large_translation_over_scale(wavelet, ratio, kernel_device):
    """The issue's case, 16 -> 8 in fp16 with |t/s| = 100 and 1000 (x near t): x a + c in fp16
    cost 2.6e-2 and 0.52 of y; (x - t) a keeps z's relative accuracy whatever |t/s| is, within
    the fast path's range (|t| < 6.5e4). (Far beyond, or in bf16, x itself cannot lie near t:
    its grid is coarser than s, and every edge is in the Gaussian's tail.)"""
    dtype = "fp16"
    B, IN, OUT = 64, 16, 8
    _, s, _, w = layer_inputs(1, IN, OUT, torch.float32)
    t = torch.where(torch.rand(OUT, IN) < 0.5, -ratio, ratio) * s
    near = torch.arange(B) % OUT
    x = t[near] + s[near] * torch.randn(B, IN) * 1.5
    x, s, t, w = (a.to(HALF[dtype]).to(kernel_device) for a in (x, s, t, w))
    for poly_steps in (0, CHUNK):
        y = wavkan_fwd_half(x, s, t, w, get_wavelet(wavelet), _config(kernel_device, poly_steps))
        assert rel_err(y, _exact(x, s, t, w, wavelet)) < FAST_TOL, poly_steps


def test_fp32_parameters_take_the_exact_path(kernel_device):
    """fp32 translations are not exact in fp16, where (x - t) is computed: with fp32 parameters
    (autocast's case) fast_math keeps the exact forward."""
    x, s, t, w = layer_inputs(9, 20, 6, torch.float32, kernel_device)
    x = x.half()
    fast = wavkan_linear(x, s, t, w, "mexican_hat", backend="triton", fast_math=True)
    assert torch.equal(fast, wavkan_linear(x, s, t, w, "mexican_hat", backend="triton"))
    assert not torch.equal(wavkan_linear(x, s.half(), t.half(), w.half(), "mexican_hat", backend="triton", fast_math=True),
                           wavkan_linear(x, s.half(), t.half(), w.half(), "mexican_hat", backend="triton"))  # fmt: skip


@pytest.mark.parametrize("wavelet", FAST_WAVELETS)
def test_far_edges_give_zero_not_nan(wavelet, kernel_device):
    # z far outside the wavelet (and past fp16's range in x * (1/s)): psi is 0, never inf * 0.
    x, s, t, w = layer_inputs(4, 20, 3, torch.float16, kernel_device)
    x = torch.full_like(x, 6e4)
    s = torch.full_like(s, 1e-3)
    for poly_steps in (0, CHUNK):
        y = wavkan_fwd_half(x, s, t, w, get_wavelet(wavelet), _config(kernel_device, poly_steps))
        assert torch.isfinite(y).all()
        assert y.abs().max().item() == 0.0


@pytest.mark.parametrize("wavelet", FAST_WAVELETS)
def test_nan_propagates_like_the_exact_path(wavelet, kernel_device):
    # The clamps must not turn a NaN input into a finite edge (min.NaN in the PTX).
    x, s, t, w = layer_inputs(3, 20, 5, torch.float16, kernel_device)
    x[1, 7] = float("nan")
    for poly_steps in (0, CHUNK):
        y = wavkan_fwd_half(x, s, t, w, get_wavelet(wavelet), _config(kernel_device, poly_steps))
        assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all(), poly_steps


@pytest.mark.parametrize("case", ["fp32 x", "shannon", "reference backend"])
def test_fast_math_falls_back_to_the_exact_path(case, kernel_device):
    dtype = torch.float32 if case == "fp32 x" else torch.float16
    wavelet = "shannon" if case == "shannon" else "mexican_hat"
    backend = "reference" if case == "reference backend" else "triton"
    x, s, t, w = layer_inputs(5, 17, 6, dtype, kernel_device)
    fast = wavkan_linear(x, s, t, w, wavelet, backend=backend, fast_math=True)
    exact = wavkan_linear(x, s, t, w, wavelet, backend=backend)
    assert torch.equal(fast, exact)


def test_gradients_are_the_exact_ones(kernel_device):
    x, s, t, w = layer_inputs(6, 19, 11, torch.float16, kernel_device)
    g = torch.randn(6, 11, dtype=torch.float16, device=kernel_device)
    grads = []
    for fast_math in (True, False):
        leaves = [a.detach().requires_grad_() for a in (x, s, t, w)]
        wavkan_linear(*leaves, "mexican_hat", backend="triton", fast_math=fast_math).backward(g)
        grads.append([a.grad for a in leaves])
    for fast, exact in zip(*grads):
        assert torch.equal(fast, exact)


def test_module_option(kernel_device):
    layer = WavKANLinear(12, 8, "dog", batch_norm=False, backend="triton", device=kernel_device,
                         dtype=torch.float16, fast_math=True)  # fmt: skip
    assert "fast_math=True" in repr(layer)
    x = torch.randn(3, 12, dtype=torch.float16, device=kernel_device)
    y = layer(x)
    ref = _exact(x, layer.scale.detach(), layer.translation.detach(), layer.wavelet_weights.detach(), "dog")
    assert rel_err(y, ref) < FAST_TOL
    with pytest.raises(TypeError, match="fast_math must be a bool"):
        WavKANLinear(2, 2, fast_math="yes")


def test_compile_fullgraph_with_fast_math(kernel_device):
    layer = WavKANLinear(11, 6, "mexican_hat", batch_norm=False, backend="triton", device=kernel_device,
                         dtype=torch.float16, fast_math=True)  # fmt: skip
    x = torch.randn(9, 11, device=kernel_device, dtype=torch.float16)
    eager = layer(x)
    compiled = torch.compile(layer, fullgraph=True)(x)
    assert torch.equal(compiled, eager)  # the same kernel, traced through the custom op
    ref = _exact(x, layer.scale.detach(), layer.translation.detach(), layer.wavelet_weights.detach(), "mexican_hat")
    assert rel_err(compiled, ref) < FAST_TOL


def test_empty_batch(kernel_device):
    x, s, t, w = layer_inputs(0, 5, 4, torch.float16, kernel_device)
    assert wavkan_fwd_half(x, s, t, w, get_wavelet("dog")).shape == (0, 4)


def test_unsupported_wavelet_is_refused_by_the_kernel(kernel_device):
    x, s, t, w = layer_inputs(2, 3, 4, torch.float16, kernel_device)
    with pytest.raises(ValueError, match="wavelets with Wavelet.fast_math, not 'morlet'"):
        wavkan_fwd_half(x, s, t, w, get_wavelet("morlet"))


# --- GPU only: the PTX itself, on large shapes ---------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 256, 4096])
@pytest.mark.parametrize("dtype", list(HALF))
@pytest.mark.parametrize("wavelet", FAST_WAVELETS)
def test_gpu_fast_forward_large(wavelet, dtype, B):
    x, s, t, w = layer_inputs(B, 1024, 1024, HALF[dtype], "cuda")
    y = wavkan_linear(x, s, t, w, wavelet, backend="triton", fast_math=True)
    # The fp32 kernel on the same rounded inputs is the reference here (its own error ~1e-6).
    exact = wavkan_fwd(x.float(), s.float(), t.float(), w.float(), get_wavelet(wavelet))
    assert rel_err(y, exact) < FAST_TOL
    for poly_steps in (0, CHUNK):  # each exponential path alone
        y = wavkan_fwd_half(x, s, t, w, get_wavelet(wavelet), _config(torch.device("cuda"), poly_steps))
        assert rel_err(y, exact) < FAST_TOL, poly_steps


@pytest.mark.gpu
def test_gpu_fast_forward_more_than_2_31_input_elements():
    B, IN, OUT = (1 << 21) + 3, 1024, 3  # B * IN = 2^31 + 3072
    x, s, t, w = layer_inputs(B, IN, OUT, torch.float16, "cuda")
    y = wavkan_linear(x, s, t, w, "mexican_hat", backend="triton", fast_math=True)
    rows = torch.cat([torch.arange(64), torch.arange(B - 64, B)]).cuda()
    assert rel_err(y[rows], _exact(x[rows], s, t, w, "mexican_hat")) < FAST_TOL


@pytest.mark.gpu
def test_gpu_fast_forward_edge_planes_past_2_30_elements():
    """in * out = 2^30 edges: the packing kernel writes the fp16 planes' third one 2^31 elements
    in, past int32 (the packed-half kernel reads them as int32 pairs: 2^30 in)."""
    if torch.cuda.get_device_properties(0).total_memory < 32 << 30:
        pytest.skip("needs about 20 GB of GPU memory")
    B, IN, OUT = 1024, 1 << 20, 1024
    x, s, t, w = layer_inputs(B, IN, OUT, torch.float16, "cuda")
    y = wavkan_linear(x, s, t, w, "mexican_hat", backend="triton", fast_math=True)
    rows, picked = torch.tensor([0, 1, 700, B - 1], device="cuda"), torch.tensor([0, 517, OUT - 1], device="cuda")
    exact = _exact(x[rows], s[picked], t[picked], w[picked], "mexican_hat")
    assert rel_err(y[rows][:, picked], exact) < FAST_TOL
