"""Modules: the paper's parameters and init, checkpoint compatibility, leading dims."""

import math

import pytest
import torch
from helpers import rel_err
from paper_kan import PAPER_WAVELETS, PaperKAN

from wavkan import WAVELETS, WavKAN, WavKANLinear


def test_parameters_and_init_follow_the_paper():
    layer = WavKANLinear(50, 7)
    assert [n for n, _ in layer.named_parameters()] == ["scale", "translation", "wavelet_weights", "bn.weight", "bn.bias"]
    assert bytes(layer.wavelet_name.tolist()) == b"mexican_hat"
    assert torch.equal(layer.scale, torch.ones(7, 50))
    assert torch.equal(layer.translation, torch.zeros(7, 50))
    bound = 1 / math.sqrt(50)  # kaiming_uniform_(a=sqrt(5)) on fan_in 50
    w = layer.wavelet_weights.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert isinstance(layer.bn, torch.nn.BatchNorm1d) and layer.bn.num_features == 7


@pytest.mark.parametrize("name", PAPER_WAVELETS)
def test_paper_checkpoint_loads_and_matches(name):
    paper = PaperKAN([12, 8, 5], name).double()
    with torch.no_grad():
        for layer in paper.layers:
            layer.scale.uniform_(0.6, 1.8)
            layer.translation.normal_(0, 0.5)
    state = paper.state_dict()
    assert "layers.0.weight1" in state
    ours = WavKAN([12, 8, 5], name, backend="reference").double()
    ours.load_state_dict(state)  # strict: weight1 accepted and dropped
    x = torch.randn(16, 12, dtype=torch.float64)
    xp, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    yp, yo = paper(xp), ours(xo)
    assert rel_err(yo, yp) < 1e-12
    g = torch.randn_like(yp)
    yp.backward(g)
    yo.backward(g)
    assert rel_err(xo.grad, xp.grad) < 1e-11
    theirs = dict(paper.named_parameters())
    for key, p in ours.named_parameters():
        assert rel_err(p.grad, theirs[key].grad) < 1e-11, key
    # BatchNorm running statistics moved identically.
    assert rel_err(ours.layers[1].bn.running_var, paper.layers[1].bn.running_var) < 1e-12


def test_state_dict_round_trip():
    a = WavKAN([6, 4, 3], "morlet")
    b = WavKAN([6, 4, 3], "morlet")
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == set(b.state_dict())
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_leading_dims_normalise_over_all_rows():
    layer = WavKANLinear(5, 3, "dog")
    x = torch.randn(4, 6, 5)
    y = layer(x)
    flat = WavKANLinear(5, 3, "dog")
    flat.load_state_dict(layer.state_dict())
    assert torch.allclose(y.reshape(-1, 3), flat(x.reshape(-1, 5)), atol=1e-6)
    assert y.shape == (4, 6, 3)


def test_strided_input_equals_contiguous():
    layer = WavKANLinear(7, 4, "meyer", batch_norm=False)
    base = torch.randn(7, 10)
    x = base.t()  # (10, 7), not contiguous
    assert not x.is_contiguous()
    assert torch.allclose(layer(x), layer(x.contiguous()), atol=1e-7, rtol=0)


def test_without_batch_norm_is_the_plain_sum():
    layer = WavKANLinear(4, 2, batch_norm=False)
    assert layer.bn is None and "bn" not in str(list(layer.state_dict()))
    x = torch.randn(3, 4)
    z = (x[:, None, :] - layer.translation) / layer.scale
    expected = (2 / (math.sqrt(3) * math.pi**0.25) * (z**2 - 1) * torch.exp(-z**2 / 2) * layer.wavelet_weights).sum(-1)
    assert torch.allclose(layer(x), expected, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_features": 0, "out_features": 3}, "in_features must be an int >= 1, got 0"),
        ({"in_features": 3, "out_features": -1}, "out_features must be an int >= 1, got -1"),
        ({"in_features": 3, "out_features": 2, "wavelet": "haar"}, "unknown wavelet 'haar'"),
        ({"in_features": 3, "out_features": 2, "backend": "cuda"}, "unknown backend 'cuda'"),
    ],
)
def test_module_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WavKANLinear(**kwargs)


def test_network_needs_two_widths():
    with pytest.raises(ValueError, match=r"at least two widths.*\[784\]"):
        WavKAN([784])


def test_numpy_integers_are_features():
    np = pytest.importorskip("numpy")
    layer = WavKANLinear(np.int64(5), np.int32(3))
    assert (layer.in_features, layer.out_features) == (5, 3) and type(layer.in_features) is int
    assert WavKAN(np.array([6, 4, 2])).layers[1].out_features == 2
    with pytest.raises(ValueError, match="in_features must be an int >= 1, got 2.5"):
        WavKANLinear(2.5, 3)


def test_network_widths_must_be_a_sequence():
    with pytest.raises(TypeError, match=r"layers_hidden must be a sequence of layer widths such as \[784, 32, 10\], got 5"):
        WavKAN(5)
    with pytest.raises(ValueError, match=r"layers_hidden\[1\] must be an int >= 1, got 0"):
        WavKAN([4, 0, 2])


def test_float64_input_into_float32_model_fails_in_wavkan():
    with pytest.raises(TypeError, match="x is float64, so scale, translation, wavelet_weights must be float64 too"):
        WavKAN([5, 3])(torch.randn(4, 5, dtype=torch.float64))


def test_wavelet_is_part_of_the_state():
    """A dog model's state_dict loaded silently into a mexican_hat model; now it is refused by
    name, strict or not. The same wavelet loads, also after a weights_only round trip."""
    import io

    dog = WavKAN([6, 4, 3], "dog")
    state = dog.state_dict()
    assert bytes(state["layers.0.wavelet_name"].tolist()) == b"dog"
    for strict in (True, False):
        with pytest.raises(RuntimeError, match="the state_dict is of a 'dog' layer, this layer's wavelet is 'mexican_hat'"):
            WavKAN([6, 4, 3], "mexican_hat").load_state_dict(state, strict=strict)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    other = WavKAN([6, 4, 3], "dog")
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(other.layers[1].scale, dog.layers[1].scale)
    # .double() leaves the name alone; a corrupted entry is refused, naming what was expected.
    assert torch.equal(WavKAN([6, 4, 3], "dog").double().layers[0].wavelet_name, state["layers.0.wavelet_name"])
    state["layers.1.wavelet_name"] = torch.zeros(3)
    with pytest.raises(RuntimeError, match="layers.1.wavelet_name: expected the layer's wavelet name as uint8 bytes"):
        WavKAN([6, 4, 3], "dog").load_state_dict(state)


# --- built on the meta device (found in review) ------------------------------------------------


def _conv_cls():
    from wavkan import WavKANConv2d

    return WavKANConv2d


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_skip_init_then_reset_parameters_writes_the_wavelet_name(kind):
    """``nn.utils.skip_init`` builds on meta and moves with ``to_empty``: the name buffer holds
    whatever memory it got until ``reset_parameters``, which writes it again, so the layer's
    own state_dict loads into a fresh layer."""
    cls, args = (WavKANLinear, (5, 4)) if kind == "linear" else (_conv_cls(), (3, 4, 3))
    layer = torch.nn.utils.skip_init(cls, *args, wavelet="dog")
    layer.reset_parameters()
    assert bytes(layer.wavelet_name.tolist()) == b"dog"
    fresh = cls(*args, wavelet="dog")
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.wavelet_weights, layer.wavelet_weights)


def test_meta_model_takes_the_papers_state_dict_with_assign():
    """Built on meta and loaded with ``assign=True`` (the way to load a big checkpoint): the
    paper's state_dict has no wavelet name, and the layer's is made where the parameters are,
    so the model moves, computes and saves as one built normally."""
    paper = PaperKAN([5, 4, 3], "mexican_hat")
    with torch.device("meta"):
        model = WavKAN([5, 4, 3])
    model.load_state_dict(paper.state_dict(), assign=True)
    assert not any(t.is_meta for t in model.state_dict().values())
    model = model.to(torch.float64).eval()
    x = torch.randn(6, 5, dtype=torch.float64)
    paper = paper.double().eval()
    assert rel_err(model(x), paper(x)) < 1e-6
    WavKAN([5, 4, 3]).load_state_dict(model.state_dict())


@pytest.mark.parametrize("ndim", [1, 2])
def test_conv_layers_give_shapes_on_meta(ndim):
    from wavkan import WavKANConv1d, WavKANConv2d

    cls, size = (WavKANConv1d, (16,)) if ndim == 1 else (WavKANConv2d, (8, 8))
    layer = cls(3, 4, 3, stride=2, padding=1, backend="reference").to("meta")
    y = layer(torch.empty(2, 3, *size, device="meta"))
    assert y.is_meta and y.shape == (2, 4, *[(s + 2 - 3) // 2 + 1 for s in size])


def test_conv_takes_numpy_integers_like_nn_conv2d():
    np = pytest.importorskip("numpy")
    layer = _conv_cls()(np.int64(3), np.int64(4), np.int64(3), stride=(np.int32(1), 2), padding=np.int64(1))
    assert layer.kernel_size == (3, 3) and layer.stride == (1, 2) and layer(torch.randn(2, 3, 6, 6)).shape == (2, 4, 6, 3)
    with pytest.raises(ValueError, match="kernel_size must be an int"):
        _conv_cls()(3, 4, True)
