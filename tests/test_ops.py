"""The functional: bad input is refused with a message naming what was expected."""

import pytest
import torch
from helpers import layer_inputs

from wavkan import wavkan_linear
from wavkan.cpu import compiler_available
from wavkan.ops import TRITON_MAX_FEATURES, resolve_backend
from wavkan.reference import reference_forward


def _args():
    return layer_inputs(3, 5, 4)


def test_wrong_last_dim():
    x, s, t, w = _args()
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., in_features=5\), got \(3, 6\)"):
        wavkan_linear(torch.randn(3, 6), s, t, w)


def test_mismatched_parameter_shapes():
    x, s, t, w = _args()
    with pytest.raises(ValueError, match=r"translation must have the shape of scale \(4, 5\), got \(4, 6\)"):
        wavkan_linear(x, s, torch.zeros(4, 6), w)
    with pytest.raises(ValueError, match=r"wavelet_weights must have the shape of scale \(4, 5\), got \(5, 4\)"):
        wavkan_linear(x, s, t, w.t())


def test_empty_features():
    with pytest.raises(ValueError, match=r"scale must have shape \(out_features, in_features\) with both >= 1, got \(0, 5\)"):
        wavkan_linear(torch.randn(2, 5), torch.ones(0, 5), torch.ones(0, 5), torch.ones(0, 5))


def test_integer_dtype():
    x, s, t, w = _args()
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64, got torch.int64"):
        wavkan_linear(x.long(), s, t, w)
    with pytest.raises(TypeError, match="scale must be float16, bfloat16, float32 or float64, got torch.int32"):
        wavkan_linear(x, s.int(), t, w)


def test_not_a_tensor():
    _, s, t, w = _args()
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        wavkan_linear([[1.0] * 5], s, t, w)


def test_different_devices():
    x, s, t, w = _args()
    with pytest.raises(ValueError, match="all tensors must be on one device: x is on cpu, scale on meta"):
        wavkan_linear(x, s.to("meta"), t, w)


def test_unknown_wavelet_and_backend():
    x, s, t, w = _args()
    with pytest.raises(ValueError, match="unknown wavelet 'gabor'; expected one of mexican_hat, morlet"):
        wavkan_linear(x, s, t, w, wavelet="gabor")
    with pytest.raises(ValueError, match="unknown backend .cudnn.; expected one of auto, reference, triton, compiled"):
        wavkan_linear(x, s, t, w, backend="cudnn")


def test_backend_resolution():
    x = torch.randn(2, 3)
    assert resolve_backend("reference", x) == "reference"
    assert resolve_backend("triton", x.double()) == "reference"  # float64 stays exact on the reference
    on_cpu = "compiled" if compiler_available() else "reference"  # wavkan.cpu: tests/test_cpu.py
    assert resolve_backend("auto", x) == ("triton" if x.is_cuda else on_cpu)


def test_scalar_batch_and_empty_batch():
    _, s, t, w = _args()
    x1 = torch.randn(5)
    assert wavkan_linear(x1, s, t, w).shape == (4,)
    assert torch.allclose(wavkan_linear(x1, s, t, w), wavkan_linear(x1[None], s, t, w)[0])
    empty = wavkan_linear(torch.randn(0, 5), s, t, w)
    assert empty.shape == (0, 4)


def test_triton_feature_limit(kernel_device):
    """Past TRITON_MAX_FEATURES in or out features (a launch-grid axis limit) the triton
    backend refuses the call by name; the reference backend still runs it."""
    n = TRITON_MAX_FEATURES + 1
    for out_features, in_features in ((1, n), (n, 1)):
        x = torch.randn(1, in_features, device=kernel_device)
        s = torch.ones(out_features, in_features, device=kernel_device)
        t, w = torch.zeros_like(s), torch.full_like(s, 0.5)
        expected = rf"up to 2097120, got \(out_features, in_features\) = \({out_features}, {in_features}\); use backend='reference'"
        with pytest.raises(ValueError, match=expected):
            wavkan_linear(x, s, t, w, backend="triton")
        y = wavkan_linear(x, s, t, w, backend="reference")
        assert y.shape == (1, out_features)
        torch.testing.assert_close(y, reference_forward(x.double(), s.double(), t.double(), w.double(), "mexican_hat").float())
