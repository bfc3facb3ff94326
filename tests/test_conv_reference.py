"""The convolutional reference (wavkan.reference_conv) against a per-edge float64 loop, its
gradients against gradcheck and autograd of the unchunked formula; the functional's argument
handling and errors; the modules (init, state_dict, torch.compile)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import rel_err
from wavkan import WAVELETS, WavKANConv1d, WavKANConv2d, get_wavelet, wavkan_conv, wavkan_conv1d, wavkan_conv2d
from wavkan.ops_conv import conv_arguments
from wavkan.reference_conv import conv_reference_backward, conv_reference_forward, wavkan_conv_unchunked


def conv_inputs(B, C, OUT, kernel, spatial, groups=1, dtype=torch.float64):
    """x (B, C, *spatial) and params with scale != 1, translation != 0."""
    ig = C // groups
    x = torch.randn(B, C, *spatial, dtype=torch.float64) * 1.5
    scale = torch.rand(OUT, ig, dtype=torch.float64) * 1.5 + 0.5
    translation = torch.randn(OUT, ig, dtype=torch.float64) * 0.7
    weights = torch.randn(OUT, ig, *kernel, dtype=torch.float64) / math.sqrt(ig * math.prod(kernel))
    return tuple(t.to(dtype) for t in (x, scale, translation, weights))


def loop_oracle(x, scale, translation, weights, wavelet, stride, padding, dilation, groups):
    """Every (b, o, p) output as an explicit sum over i and taps, in float64, from the formula
    (2-D arguments: stride (sh, sw), padding (top, bottom, left, right), dilation (dh, dw))."""
    wav = get_wavelet(wavelet)
    B, C, H, W = x.shape
    OUT, IG, KH, KW = weights.shape
    og = OUT // groups
    window = wav.window(IG, torch.float64, "cpu") if wav.window is not None else torch.ones(IG, dtype=torch.float64)
    ho = (H + padding[0] + padding[1] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    wo = (W + padding[2] + padding[3] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    y = torch.zeros(B, OUT, ho, wo, dtype=torch.float64)
    for o in range(OUT):
        for i in range(IG):
            c = (o // og) * IG + i
            psi = wav.psi((x[:, c] - translation[o, i]) / scale[o, i])  # (B, H, W)
            for ph in range(ho):
                for pw in range(wo):
                    for kh in range(KH):
                        for kw in range(KW):
                            qh = ph * stride[0] + kh * dilation[0] - padding[0]
                            qw = pw * stride[1] + kw * dilation[1] - padding[2]
                            if 0 <= qh < H and 0 <= qw < W:
                                y[:, o, ph, pw] += weights[o, i, kh, kw] * window[i] * psi[:, qh, qw]
    return y


# (name, C, OUT, kernel, spatial, stride, padding, dilation, groups): 2-D unless kernel has one dim.
GEOMETRIES = [
    ("3x3-pad1", 3, 5, (3, 3), (5, 6), 1, 1, 1, 1),
    ("2x3-stride2-dil2", 4, 2, (2, 3), (7, 9), 2, (1, 2), 2, 1),
    ("same-even-groups2", 4, 6, (2, 4), (5, 5), 1, "same", 1, 2),
    ("depthwise-5x1", 3, 3, (5, 1), (6, 4), (1, 2), (2, 0), 1, 3),
    ("1x1", 2, 3, (1, 1), (3, 4), 1, 0, 1, 1),
    ("1d-k4-same", 3, 4, (4,), (9,), 1, "same", 1, 1),
    ("1d-k3-stride2-dil3", 4, 2, (3,), (13,), 2, 3, 3, 2),
]
GEOMETRY_IDS = [g[0] for g in GEOMETRIES]


def _as_2d(x, weights, kernel, stride, padding, dilation):
    args = conv_arguments(kernel, stride, padding, dilation)
    if len(kernel) == 1:
        x, weights = x.unsqueeze(2), weights.unsqueeze(2)
    return x, weights, args


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_reference_matches_loop_float64(geometry, wavelet):
    _, C, OUT, kernel, spatial, stride, padding, dilation, groups = geometry
    x, s, t, w = conv_inputs(2, C, OUT, kernel, spatial, groups)
    y = wavkan_conv(x, s, t, w, stride, padding, dilation, groups, wavelet, backend="reference")
    x2, w2, args = _as_2d(x, w, kernel, stride, padding, dilation)
    expected = loop_oracle(x2, s, t, w2, wavelet, *args, groups)
    if len(kernel) == 1:
        expected = expected.squeeze(2)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


# Small enough for gradcheck's one evaluation per input element: grouped, strided and dilated,
# even kernel with "same" padding, 1-D.
GRADCHECK_GEOMETRIES = [
    ("2x3-stride2-dil2-groups2", 4, 4, (2, 3), (5, 5), 2, (1, 2), 2, 2),
    ("same-even", 2, 3, (2, 2), (3, 4), 1, "same", 1, 1),
    ("1d-k3-stride2-dil2-groups2", 4, 2, (3,), (7,), 2, 1, 2, 2),
]


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("geometry", GRADCHECK_GEOMETRIES, ids=[g[0] for g in GRADCHECK_GEOMETRIES])
def test_reference_gradcheck(geometry, wavelet):
    _, C, OUT, kernel, spatial, stride, padding, dilation, groups = geometry
    inputs = [a.requires_grad_() for a in conv_inputs(1, C, OUT, kernel, spatial, groups)]

    def fn(x, s, t, w):
        return wavkan_conv(x, s, t, w, stride, padding, dilation, groups, wavelet, backend="reference")

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-7, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("wavelet", ["mexican_hat", "shannon"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
@pytest.mark.parametrize("chunk", [1, 37, 1 << 22], ids=["chunk1", "chunk37", "chunk-all"])
def test_chunked_matches_unchunked(geometry, wavelet, chunk):
    """Blocks of part of a group, of whole groups and of everything give the unchunked
    formula's output and autograd gradients, including grad_x summed over a group's outputs."""
    _, C, OUT, kernel, spatial, stride, padding, dilation, groups = geometry
    x, s, t, w = conv_inputs(3, C, OUT, kernel, spatial, groups)
    x2, w2, args = _as_2d(x, w, kernel, stride, padding, dilation)
    leaves = [a.clone().requires_grad_() for a in (x2, s, t, w2)]
    y_ref = wavkan_conv_unchunked(*leaves, wavelet, *args, groups)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y = conv_reference_forward(x2, s, t, w2, wavelet, *args, groups, chunk_elements=chunk)
    grads = conv_reference_backward(g, x2, s, t, w2, wavelet, *args, groups, chunk_elements=chunk)
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-12, atol=1e-12)
    for got, leaf in zip(grads, leaves):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-10, atol=1e-12)


def test_backward_skips_what_is_not_needed():
    x, s, t, w = conv_inputs(2, 3, 4, (3, 3), (4, 4))
    args = conv_arguments((3, 3), 1, 1, 1)
    g = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    full = conv_reference_backward(g, x, s, t, w, "dog", *args, 1)
    only_x = conv_reference_backward(g, x, s, t, w, "dog", *args, 1, need_params=False)
    only_p = conv_reference_backward(g, x, s, t, w, "dog", *args, 1, need_x=False)
    assert only_x[1:] == (None, None, None) and only_p[0] is None
    torch.testing.assert_close(only_x[0], full[0])
    for a, b in zip(only_p[1:], full[1:]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_computes_in_fp32(dtype):
    x, s, t, w = conv_inputs(2, 3, 4, (3, 3), (5, 5))
    y64 = wavkan_conv2d(x, s, t, w, padding=1, wavelet="morlet", backend="reference")
    xl = x.to(dtype)
    y = wavkan_conv2d(xl, s.float(), t.float(), w.float(), padding=1, wavelet="morlet", backend="reference")
    assert y.dtype == dtype
    # From the rounded input in fp32, the result is within the output dtype's rounding.
    expected = wavkan_conv2d(xl.double(), s, t, w, padding=1, wavelet="morlet", backend="reference")
    tol = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    assert rel_err(y, expected) < tol
    assert rel_err(y, y64) < (1e-6 if dtype == torch.float32 else 0.05)


def test_channels_last_and_strided_inputs():
    x, s, t, w = conv_inputs(2, 4, 6, (3, 2), (6, 7), groups=2)
    expected = wavkan_conv2d(x.contiguous(), s, t, w, padding=(1, 0), groups=2, backend="reference")
    cl = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(wavkan_conv2d(cl, s, t, w, padding=(1, 0), groups=2, backend="reference"), expected)
    wide = torch.randn(2, 4, 6, 14, dtype=torch.float64)
    wide[..., ::2] = x
    view = wide[..., ::2]
    assert not view.is_contiguous()
    torch.testing.assert_close(wavkan_conv2d(view, s, t, w, padding=(1, 0), groups=2, backend="reference"), expected)


def _bad(**overrides):
    x, s, t, w = conv_inputs(2, 4, 6, (3, 3), (5, 5), groups=2)
    args = dict(x=x, scale=s, translation=t, wavelet_weights=w, groups=2)
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(x=torch.randn(2, 3, 5, 5, dtype=torch.float64)), ValueError, r"in_channels=4"),
        (dict(x=torch.randn(2, 4, 5, dtype=torch.float64)), ValueError, r"\(B, in_channels=4, H, W\)"),
        (dict(x=torch.randn(2, 4, 5, 5).int()), TypeError, "x must be float16"),
        (dict(translation=torch.zeros(6, 3, dtype=torch.float64)), ValueError, "translation must have the shape"),
        (dict(wavelet_weights=torch.zeros(6, 2, 3, dtype=torch.float64)), ValueError, "wavkan_conv2d needs"),
        (dict(wavelet_weights=torch.zeros(6, 3, 3, 3, dtype=torch.float64)), ValueError, r"in_channels / groups=2"),
        (dict(groups=4), ValueError, r"out_channels \(6\) must be divisible by groups \(4\)"),
        (dict(groups=0), ValueError, "groups must be an int >= 1"),
        (dict(wavelet="haar"), ValueError, "unknown wavelet 'haar'"),
        (dict(backend="cuda"), ValueError, "unknown backend 'cuda'"),
        (dict(padding="full"), ValueError, "'same' or 'valid'"),
        (dict(padding="same", stride=2), ValueError, "padding='same' needs stride 1"),
        (dict(stride=0), ValueError, "stride must be an int >= 1"),
        (dict(dilation=(1, 2, 3)), ValueError, "dilation must be an int >= 1 or a tuple of 2"),
        (dict(padding=-1), ValueError, "padding must be an int >= 0"),
        (dict(x=torch.randn(2, 4, 2, 5, dtype=torch.float64)), ValueError, "too small for kernel"),
        (dict(scale=torch.ones(6, 2, dtype=torch.float64, device="meta")), ValueError, "one device"),
    ],
    ids=["channels", "rank", "int-x", "translation", "weights-rank", "weights-in", "groups-divide", "groups-0",
         "wavelet", "backend", "padding-mode", "same-stride", "stride", "dilation-len", "padding-neg", "too-small",
         "device"],  # fmt: skip
)
def test_bad_inputs_name_what_was_expected(overrides, error, match):
    with pytest.raises(error, match=match):
        wavkan_conv2d(**_bad(**overrides))


def test_conv1d_rejects_2d_weights():
    x, s, t, w = conv_inputs(2, 3, 4, (3, 3), (5, 5))
    with pytest.raises(ValueError, match="wavkan_conv1d needs"):
        wavkan_conv1d(x, s, t, w)


def test_module_parameters_init_and_state_dict():
    m = WavKANConv2d(6, 8, (3, 5), padding="same", groups=2, wavelet="dog", backend="reference")
    assert m.scale.shape == m.translation.shape == (8, 3)
    assert m.wavelet_weights.shape == (8, 3, 3, 5)
    assert isinstance(m.bn, torch.nn.BatchNorm2d)
    assert torch.equal(m.scale, torch.ones(8, 3)) and torch.equal(m.translation, torch.zeros(8, 3))
    bound = 1 / math.sqrt(3 * 3 * 5)
    assert m.wavelet_weights.abs().max() <= bound and m.wavelet_weights.abs().max() > 0.8 * bound
    assert set(m.state_dict()) == {"scale", "translation", "wavelet_weights", "wavelet_name", "bn.weight", "bn.bias",
                                   "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}  # fmt: skip
    assert bytes(m.state_dict()["wavelet_name"].tolist()) == b"dog"
    other = WavKANConv2d(6, 8, (3, 5), padding="same", groups=2, wavelet="dog", backend="reference")
    other.load_state_dict(m.state_dict())
    x = torch.randn(2, 6, 4, 5)
    m.eval(), other.eval()
    torch.testing.assert_close(other(x), m(x))
    assert m(x).shape == (2, 8, 4, 5)


@pytest.mark.parametrize("conv, kernel, x_shape", [(WavKANConv1d, 3, (2, 4, 7)), (WavKANConv2d, (3, 2), (2, 4, 5, 6))],
                         ids=["1d", "2d"])
def test_module_wavelet_is_part_of_the_state(conv, kernel, x_shape):
    """A dog conv's state_dict loaded silently into a mexican_hat conv; now it is refused by
    name, strict or not, as for the linear layer. The same wavelet loads (also after a
    weights_only round trip), and a state_dict saved before the layer had the buffer loads."""
    import io

    def build(wavelet):
        return conv(4, 6, kernel, padding=1, groups=2, wavelet=wavelet, backend="reference")

    dog = build("dog")
    with torch.no_grad():
        dog.scale.uniform_(0.5, 1.5)
        dog.translation.normal_(0, 0.3)
    state = dog.state_dict()
    assert bytes(state["wavelet_name"].tolist()) == b"dog"
    for strict in (True, False):
        with pytest.raises(RuntimeError, match="the state_dict is of a 'dog' layer, this layer's wavelet is 'mexican_hat'"):
            build("mexican_hat").load_state_dict(state, strict=strict)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    other = build("dog")
    other.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(*x_shape)
    dog.eval(), other.eval()
    assert torch.equal(other(x), dog(x))
    assert torch.equal(other.wavelet_name, state["wavelet_name"])
    old = {k: v for k, v in state.items() if k != "wavelet_name"}
    older = build("mexican_hat")
    older.load_state_dict(old)  # strict: the missing name is the layer's own
    assert torch.equal(older.scale, dog.scale) and bytes(older.wavelet_name.tolist()) == b"mexican_hat"
    state["wavelet_name"] = torch.zeros(3)
    with pytest.raises(RuntimeError, match="wavelet_name: expected the layer's wavelet name as uint8 bytes"):
        build("dog").load_state_dict(state)
    pickled_before = build("dog")  # a module saved whole (torch.save(module)) before it had the buffer
    del pickled_before._buffers["wavelet_name"]
    pickled_before.load_state_dict(dog.state_dict())
    assert bytes(pickled_before.wavelet_name.tolist()) == b"dog" and torch.equal(pickled_before.scale, dog.scale)


def test_module_1d_without_batch_norm_is_the_functional():
    m = WavKANConv1d(4, 6, 5, stride=2, padding=2, dilation=1, groups=2, wavelet="meyer", batch_norm=False,
                     backend="reference", dtype=torch.float64)  # fmt: skip
    assert m.bn is None and m.wavelet_weights.shape == (6, 2, 5)
    x = torch.randn(3, 4, 11, dtype=torch.float64)
    y = m(x)
    expected = wavkan_conv1d(x, m.scale, m.translation, m.wavelet_weights, 2, 2, 1, 2, "meyer", "reference")
    assert y.shape == (3, 6, 6)
    torch.testing.assert_close(y, expected)


def test_module_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"divisible by groups"):
        WavKANConv2d(6, 8, 3, groups=4)
    with pytest.raises(ValueError, match="kernel_size must be an int >= 1"):
        WavKANConv1d(2, 2, 0)
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        WavKANConv2d(2, 2, 3, stride=2, padding="same")


@pytest.mark.parametrize("backend", ["compiled", "auto"])
def test_cpu_conv_calls_run_the_reference_under_compiled_and_auto(backend):
    """The compiled CPU backend fuses the linear op only: a conv call asked for it (a whole
    model asked for "compiled"), or "auto" on CPU tensors, computes the reference's bits."""
    x = torch.randn(3, 6, 9, 7, dtype=torch.float64).float().requires_grad_()
    m = WavKANConv2d(6, 5, 3, padding=1, wavelet="dog", backend="reference")
    y_ref = m(x)
    (gx_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    m.backend = backend
    y = m(x)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)


def test_compile_fullgraph_reference():
    m = WavKANConv2d(3, 4, 3, padding=1, wavelet="mexican_hat", backend="reference")
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y_eager = m(x)
    torch.testing.assert_close(y, y_eager)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    (gx_eager,) = torch.autograd.grad(y_eager.square().sum(), x)
    torch.testing.assert_close(gx, gx_eager)


def test_autocast_cpu_bfloat16():
    m = WavKANConv2d(3, 4, 3, padding=1, batch_norm=False, backend="reference")
    x = torch.randn(2, 3, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x.bfloat16())
    assert y.dtype == torch.bfloat16
    # Computed in fp32 from the bf16 input (autocast does not reach the convolutions inside):
    # only the output's rounding differs.
    expected = m(x.bfloat16().float())
    assert rel_err(y, expected) < 4e-3
    y.float().sum().backward()
    assert m.scale.grad.dtype == torch.float32 and torch.isfinite(m.scale.grad).all()
    # An fp32 input under autocast stays fp32 end to end, gradients included.
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y32 = m(xg)
    (gx,) = torch.autograd.grad(y32.sum(), xg)
    xe = x.clone().requires_grad_()
    y_plain = m(xe)
    (gx_plain,) = torch.autograd.grad(y_plain.sum(), xe)
    assert y32.dtype == torch.float32
    assert rel_err(y32, y_plain) < 1e-6 and rel_err(gx, gx_plain) < 1e-6
