"""The fused convolution kernels (wavkan.kernels.conv_forward / conv_backward) against the
float64 reference: the output and every gradient, every wavelet, every dtype, awkward
geometries. On CPU they run under Triton's interpreter, hence the tiny images."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import FP32_TOL, LOW_PRECISION_FLOOR, rel_err
from wavkan import WAVELETS, WavKANConv1d, WavKANConv2d, wavkan_conv

pytest.importorskip("triton")


def conv_inputs(B, C, OUT, kernel, spatial, groups, device, dtype=torch.float32):
    ig = C // groups
    x = torch.randn(B, C, *spatial, device=device) * 1.5
    scale = torch.rand(OUT, ig, device=device) * 1.5 + 0.5
    translation = torch.randn(OUT, ig, device=device) * 0.7
    weights = torch.randn(OUT, ig, *kernel, device=device) / math.sqrt(ig * math.prod(kernel))
    return x.to(dtype), scale, translation, weights


def outputs_and_grads(x, params, conv, backend, dtype=None, grad=None):
    """y and the gradients of x and the three parameters for dL/dy = grad (drawn if None)."""
    leaves = [x.detach().clone().requires_grad_()] + [p.detach().clone().to(dtype or p.dtype).requires_grad_()
                                                      for p in params]  # fmt: skip
    y = wavkan_conv(*leaves, **conv, backend=backend)
    if grad is None:
        grad = torch.randn_like(y, dtype=torch.float64)
    y.backward(grad.to(y.dtype))
    return y.detach(), [leaf.grad for leaf in leaves], grad


def check_against_reference(x, params, conv, out_tol=FP32_TOL["output"], grad_tol=FP32_TOL["grad"]):
    y, grads, g = outputs_and_grads(x, params, conv, "triton")
    y_ref, grads_ref, _ = outputs_and_grads(x.double(), params, conv, "reference", torch.float64, g)
    assert y.dtype == x.dtype and y.shape == y_ref.shape
    assert rel_err(y, y_ref) < out_tol
    for name, got, ref in zip(("x", "scale", "translation", "wavelet_weights"), grads, grads_ref):
        assert got.dtype == (x.dtype if name == "x" else torch.float32)
        assert rel_err(got, ref) < grad_tol, name


def conv_kwargs(stride=1, padding=0, dilation=1, groups=1, wavelet="mexican_hat"):
    return dict(stride=stride, padding=padding, dilation=dilation, groups=groups, wavelet=wavelet)


@pytest.mark.parametrize("wavelet", WAVELETS)
def test_every_wavelet_3x3(wavelet, kernel_device):
    x, *params = conv_inputs(2, 3, 5, (3, 3), (5, 6), 1, kernel_device)
    check_against_reference(x, params, conv_kwargs(padding=1, wavelet=wavelet))


# (name, B, C, OUT, kernel, spatial, stride, padding, dilation, groups)
GEOMETRIES = [
    ("b1-prime-5x3-valid", 1, 5, 7, (5, 3), (7, 6), 1, 0, 1, 1),
    ("stride2-dil2-2x3", 2, 3, 2, (2, 3), (8, 9), 2, (1, 2), 2, 1),
    ("same-even-groups2", 2, 4, 6, (2, 4), (5, 6), 1, "same", 1, 2),
    ("groups2-block-aligned", 1, 4, 16, (3, 3), (4, 5), 1, 1, 1, 2),
    ("depthwise-stride-1x5", 2, 3, 3, (1, 5), (4, 9), (2, 1), (0, 2), (1, 2), 3),
    ("depthwise-multiplier2", 1, 3, 6, (3, 1), (5, 3), 1, (1, 0), 1, 3),
    ("1x1", 2, 3, 4, (1, 1), (3, 5), 1, 0, 1, 1),
    ("5x5-taps-in-two-passes", 1, 2, 2, (5, 5), (6, 6), 1, 2, 1, 1),
    ("groups2-channel-block-in-one-group", 1, 32, 2, (3, 3), (3, 4), 1, 1, 1, 2),
    ("1d-k7-pad3", 2, 3, 5, (7,), (30,), 1, 3, 1, 1),
    ("1d-k4-same-groups2", 1, 4, 2, (4,), (11,), 1, "same", 1, 2),
    ("1d-k3-stride2-dil3", 2, 2, 3, (3,), (17,), 2, 2, 3, 1),
    ("1d-long-tiles", 1, 1, 2, (5,), (1500,), 1, 2, 1, 1),
    ("1d-k17-two-passes", 1, 2, 1, (17,), (40,), 1, 8, 1, 1),
    ("b5-rows-per-program", 5, 2, 3, (3, 3), (3, 4), 1, 1, 1, 1),
    ("padding-past-the-reach", 3, 2, 2, (3, 3), (4, 3), (2, 1), (4, 3), 1, 1),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
def test_geometries(geometry, kernel_device):
    _, B, C, OUT, kernel, spatial, stride, padding, dilation, groups = geometry
    x, *params = conv_inputs(B, C, OUT, kernel, spatial, groups, kernel_device)
    check_against_reference(x, params, conv_kwargs(stride, padding, dilation, groups, "dog"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_matches_reference_in_that_dtype(dtype, kernel_device):
    """From the same rounded input, the kernel and the reference (both fp32 inside) differ by
    the output's rounding."""
    x, *params = conv_inputs(2, 3, 4, (3, 3), (5, 5), 1, kernel_device, dtype)
    conv = conv_kwargs(padding=1, wavelet="morlet")
    y, grads, g = outputs_and_grads(x, params, conv, "triton")
    y_ref, grads_ref, _ = outputs_and_grads(x, params, conv, "reference", None, g)
    assert y.dtype == dtype and grads[0].dtype == dtype
    floor = LOW_PRECISION_FLOOR[dtype]
    assert rel_err(y, y_ref) < floor
    for got, ref in zip(grads, grads_ref):
        assert rel_err(got, ref) < floor


def test_channels_last_and_strided_views(kernel_device):
    x, *params = conv_inputs(2, 4, 4, (3, 2), (5, 6), 2, kernel_device)
    conv = conv_kwargs(padding=(1, 0), groups=2, wavelet="shannon")
    check_against_reference(x.to(memory_format=torch.channels_last), params, conv)
    wide = torch.randn(2, 4, 5, 12, device=kernel_device)
    wide[..., 1::2] = x
    check_against_reference(wide[..., 1::2], params, conv)
    # A transposed parameter view, and grad_y with stride 0 (the backward of a sum).
    s, t, w = params
    s_t = s.t().contiguous().t()
    assert not s_t.is_contiguous()
    grads = {}
    for backend in ("triton", "reference"):
        leaves = [a.clone().requires_grad_() for a in (x, s_t, t, w)]
        wavkan_conv(*leaves, **conv, backend=backend).sum().backward()
        grads[backend] = [leaf.grad for leaf in leaves]
    for got, ref in zip(grads["triton"], grads["reference"]):
        assert rel_err(got, ref) < FP32_TOL["grad"]


def test_empty_batch(kernel_device):
    x, *params = conv_inputs(0, 2, 3, (3,), (7,), 1, kernel_device)
    leaves = [p.clone().requires_grad_() for p in params]
    y = wavkan_conv(x.requires_grad_(), *leaves, padding=1, backend="triton")
    assert y.shape == (0, 3, 7)
    y.sum().backward()
    assert x.grad.shape == x.shape and all(torch.equal(p.grad, torch.zeros_like(p)) for p in leaves)


def test_backward_is_deterministic_and_skips_unneeded(kernel_device):
    x, *params = conv_inputs(2, 3, 4, (3, 3), (6, 5), 1, kernel_device)
    conv = conv_kwargs(padding=1, wavelet="meyer")
    _, first, g = outputs_and_grads(x, params, conv, "triton")
    _, second, _ = outputs_and_grads(x, params, conv, "triton", None, g)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    # Only grad_x (parameters frozen), then only the parameters (x a plain input).
    s, t, w = params
    xg = x.clone().requires_grad_()
    wavkan_conv(xg, s, t, w, **conv, backend="triton").backward(g.float())
    assert torch.equal(xg.grad, first[0])
    leaves = [p.clone().requires_grad_() for p in params]
    wavkan_conv(x, *leaves, **conv, backend="triton").backward(g.float())
    for leaf, expected in zip(leaves, first[1:]):
        assert torch.equal(leaf.grad, expected)


def test_module_on_the_triton_backend(kernel_device):
    m = WavKANConv2d(3, 4, (3, 1), padding="same", backend="triton", device=kernel_device)
    ref = WavKANConv2d(3, 4, (3, 1), padding="same", backend="reference", device=kernel_device)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 4, 5, device=kernel_device)
    torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-5)


def test_compile_fullgraph_triton(kernel_device):
    """torch.compile traces the custom op and its backward without a graph break."""
    m = WavKANConv2d(3, 4, 3, padding=1, batch_norm=False, backend="triton", device=kernel_device)
    x = torch.randn(2, 3, 5, 5, device=kernel_device, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y_eager = m(x)
    torch.testing.assert_close(y, y_eager)
    grads = torch.autograd.grad(y.square().sum(), (x, m.scale, m.wavelet_weights))
    grads_eager = torch.autograd.grad(y_eager.square().sum(), (x, m.scale, m.wavelet_weights))
    for a, b in zip(grads, grads_eager):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("halo", [16, 48])
def test_forward_tiles_smaller_than_the_image(halo, kernel_device, monkeypatch):
    """Several output tiles per image, their halos clipped to the image and slid inside it at
    its borders (forced with a small halo budget): the same values as one tile, and as the
    reference."""
    from wavkan.kernels import conv_forward
    from wavkan.kernels.conv_tiles import plan_forward_tiles

    x, *params = conv_inputs(2, 3, 2, (3, 3), (9, 11), 1, kernel_device)
    conv = conv_kwargs(stride=(2, 1), padding=(2, 1), dilation=(1, 2), wavelet="dog")
    y_one_tile, _, _ = outputs_and_grads(x, params, conv, "triton")
    monkeypatch.setattr(conv_forward, "max_halo", lambda taps: halo)
    tiles = plan_forward_tiles(9, 11, 6, 9, 3, 3, 2, 1, 1, 2, 3, halo)  # output 6 x 9
    assert tiles.tiles_h * tiles.tiles_w > 1 and tiles.halo_h * tiles.halo_w <= halo
    check_against_reference(x, params, conv)
    y_tiled, _, _ = outputs_and_grads(x, params, conv, "triton")
    torch.testing.assert_close(y_tiled, y_one_tile, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("C, OUT, groups", [(24, 6, 1), (32, 4, 2), (6, 6, 6)], ids=["g1-C24", "g2", "depthwise"])
def test_backward_channel_blocks_widened_for_small_images(C, OUT, groups, kernel_device, monkeypatch):
    """The GPU's block choice, under the interpreter too: an image that fits one tile takes a
    channel block wide enough to fill the program, kept inside a group; values as the
    reference."""
    from wavkan.kernels import conv_backward

    choose = conv_backward._blocks
    chosen = []

    def as_on_gpu(C, H, W, elements, on_gpu, taps=9, IG=0):
        chosen.append(choose(C, H, W, elements, True, taps, IG))
        return chosen[-1]

    monkeypatch.setattr(conv_backward, "_blocks", as_on_gpu)
    x, *params = conv_inputs(3, C, OUT, (3, 3), (3, 4), groups, kernel_device)
    check_against_reference(x, params, conv_kwargs(padding=1, groups=groups, wavelet="mexican_hat"))
    ig = C // groups
    assert all(ig % block_c == 0 or block_c == conv_backward.BLOCK_C_MAX for block_c, _ in chosen)
    assert max(block_c for block_c, _ in chosen) > conv_backward.BLOCK_C_MAX or groups == C


def test_forward_scratch_is_bounded():
    """The persistent grid takes PROGRAMS_PER_SM per SM where their scratch fits SCRATCH_BYTES
    (the CIFAR layer's 3 x 3 slots on 132 SMs), fewer for wider kernels' slots, at least one
    per SM and at most one per item."""
    from wavkan.kernels import conv_forward as cf

    per_sm = cf.PROGRAMS_PER_SM
    assert cf.persistent_programs(10**6, 9, 1024, 132) == per_sm * 132
    wide = cf.persistent_programs(10**6, 16, 1024, 132)
    assert per_sm * 132 > wide >= 132 and wide * 16 * 1024 * 4 <= cf.SCRATCH_BYTES
    assert cf.persistent_programs(10**6, 16, 1024 * 1024, 132) == 132
    assert cf.persistent_programs(5, 9, 1024, 132) == 5


def test_a_dilation_wider_than_the_image_fits_a_tile(kernel_device):
    """A 3 x 3 kernel dilated by 20 reaches 41 x 41 pixels, more than a halo holds, but on a
    12 x 12 image the clipped halo is the image: the triton backend takes it, values as the
    reference's."""
    x, *params = conv_inputs(2, 2, 3, (3, 3), (12, 12), 1, kernel_device)
    check_against_reference(x, params, conv_kwargs(padding=20, dilation=20, wavelet="dog"))


def test_triton_rejects_kernels_wider_than_a_tile(kernel_device):
    x, *params = conv_inputs(1, 1, 1, (3,), (3000,), 1, kernel_device)
    with pytest.raises(ValueError, match="use backend='reference'"):
        wavkan_conv(x, *params, dilation=1000, backend="triton")


# --- on the GPU: the benchmark's layers at reduced batch, with the GPU's block sizes ------------

GPU_CASES = [
    ("cifar-3x3", 4, 64, 64, (3, 3), (32, 32), 1, 1, 1, 1),
    ("ecg-1d-k7", 2, 12, 64, (7,), (5000,), 1, 3, 1, 1),
    ("strided-dilated-grouped", 2, 64, 128, (3, 3), (64, 64), 2, 2, 2, 4),
    ("depthwise-5x5", 2, 32, 32, (5, 5), (33, 31), 1, 2, 1, 32),
    ("small-image-wide-blocks", 4, 48, 40, (3, 3), (4, 4), 1, 1, 1, 2),
    ("net-4x4-512", 8, 512, 64, (3, 3), (4, 4), 1, 1, 1, 1),
]


@pytest.mark.gpu
@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("case", GPU_CASES, ids=[c[0] for c in GPU_CASES])
def test_gpu_layers_against_reference(case, wavelet):
    _, B, C, OUT, kernel, spatial, stride, padding, dilation, groups = case
    x, *params = conv_inputs(B, C, OUT, kernel, spatial, groups, torch.device("cuda"))
    check_against_reference(x, params, conv_kwargs(stride, padding, dilation, groups, wavelet))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_low_precision_and_channels_last(dtype):
    x, *params = conv_inputs(4, 64, 64, (3, 3), (32, 32), 1, torch.device("cuda"), dtype)
    x = x.to(memory_format=torch.channels_last)
    conv = conv_kwargs(padding=1)
    y, grads, g = outputs_and_grads(x, params, conv, "triton")
    y_ref, grads_ref, _ = outputs_and_grads(x, params, conv, "reference", None, g)
    floor = LOW_PRECISION_FLOOR[dtype]
    assert rel_err(y, y_ref) < floor
    for got, ref in zip(grads, grads_ref):
        assert rel_err(got, ref) < floor


@pytest.mark.gpu
def test_gpu_backward_is_deterministic():
    x, *params = conv_inputs(8, 64, 64, (3, 3), (32, 32), 1, torch.device("cuda"))
    conv = conv_kwargs(padding=1)
    y0, first, g = outputs_and_grads(x, params, conv, "triton")
    for _ in range(3):
        y1, again, _ = outputs_and_grads(x, params, conv, "triton", None, g)
        assert torch.equal(y0, y1)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


@pytest.mark.gpu
def test_gpu_auto_takes_the_reference_for_kernels_wider_than_a_tile():
    x, *params = conv_inputs(1, 1, 1, (3,), (3000,), 1, torch.device("cuda"))
    y = wavkan_conv(x, *params, dilation=1000, backend="auto")
    torch.testing.assert_close(y, wavkan_conv(x, *params, dilation=1000, backend="reference"))


def test_half_precision_parameters(kernel_device):
    """A layer built in bfloat16: the kernels read bf16 parameters and compute in fp32."""
    m = WavKANConv1d(3, 4, 3, padding=1, batch_norm=False, backend="triton", device=kernel_device,
                     dtype=torch.bfloat16)  # fmt: skip
    ref = WavKANConv1d(3, 4, 3, padding=1, batch_norm=False, backend="reference", device=kernel_device,
                       dtype=torch.bfloat16)  # fmt: skip
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 9, device=kernel_device, dtype=torch.bfloat16)
    y, y_ref = m(x), ref(x)
    assert y.dtype == torch.bfloat16
    assert rel_err(y, y_ref) < LOW_PRECISION_FLOOR[torch.bfloat16]
    y.float().square().sum().backward()
    y_ref.float().square().sum().backward()
    for p, q in zip(m.parameters(), ref.parameters()):
        assert p.grad.dtype == torch.bfloat16 and rel_err(p.grad, q.grad) < 2e-2


def test_wide_offsets_path(kernel_device, monkeypatch):
    """The 64-bit offset variant (taken for tensors whose batch row spans 2^31 elements) gives
    the same values as the 32-bit one."""
    from wavkan.kernels import conv_backward, conv_forward

    x, *params = conv_inputs(2, 4, 4, (3, 2), (5, 6), 2, kernel_device)
    conv = conv_kwargs(stride=(1, 2), padding=1, groups=2, wavelet="dog")
    y, grads, g = outputs_and_grads(x, params, conv, "triton")
    monkeypatch.setattr(conv_forward, "needs_wide_offsets", lambda *t: True)
    monkeypatch.setattr(conv_backward, "needs_wide_offsets", lambda *t: True)
    y_wide, grads_wide, _ = outputs_and_grads(x, params, conv, "triton", None, g)
    assert torch.equal(y, y_wide)
    for a, b in zip(grads, grads_wide):
        assert torch.equal(a, b)
