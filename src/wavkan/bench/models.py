"""The baselines: the paper's formula as a WavKAN, an MLP of the same widths, and torch-conv-kan's
wavelet convolution restated for the conv level."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..nn import WavKAN
from ..reference import wavkan_linear_unchunked
from ..wavelets import get_wavelet

# --- the paper's network, for the eager and compiled baselines ---------------------------------


def paper_linear(x, scale, translation, wavelet_weights, wavelet="mexican_hat"):
    """The paper's layer before BN, as its code computes it: materialises (B, out, in) tensors.

    x: (B, in); scale, translation, wavelet_weights: (out, in) -> (B, out); ``wavelet``: a name
    or a ``Wavelet``. Shannon's Hamming window multiplies the weights here, as in the paper.
    """
    wav = get_wavelet(wavelet)
    if wav.window is not None:
        in_features = scale.shape[1]
        wavelet_weights = wavelet_weights * wav.window(in_features, wavelet_weights.dtype, wavelet_weights.device)
    return wavkan_linear_unchunked(x, scale, translation, wavelet_weights, wav)


class PaperWavKAN(WavKAN):
    """``WavKAN`` with the same parameters, computing every layer as the paper's code does
    (``paper_linear``, autograd backward) followed by its BatchNorm: the eager baseline."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wav = get_wavelet(self.wavelet)  # resolved outside any compiled region

    def forward(self, x):
        for layer in self.layers:
            x = paper_linear(x, layer.scale, layer.translation, layer.wavelet_weights, self._wav)
            if layer.bn is not None:
                x = layer.bn(x)
        return x


def make_mlp(widths: Sequence[int], device=None, dtype=None) -> nn.Sequential:
    """nn.Linear + BatchNorm1d per layer, same widths, no activation (the seed's MLP row)."""
    mods = []
    for i, o in zip(widths[:-1], widths[1:]):
        mods += [nn.Linear(i, o, device=device, dtype=dtype), nn.BatchNorm1d(o, device=device, dtype=dtype)]
    return nn.Sequential(*mods)


# --- torch-conv-kan's wavelet convolution, for the conv level's baselines ----------------------


def conv_kan_wavelet_branch(x, scale, translation, wavelet_weights, stride=1, padding=0, dilation=1, groups=1,
                            wavelet="mexican_hat"):  # fmt: skip
    """torch-conv-kan's 'fast' wavelet convolution (``WaveletConvNDFast``), restated: per group,
    the (B, out/groups, in/groups, *spatial) wavelet tensor, then a convolution with
    groups = out/groups over it; shannon's window multiplies the wavelet tensor over the input
    channels, as there. Groups run one after the other and are concatenated, as its layer does.

    x: (B, C, *spatial) with 1 or 2 spatial dims; scale, translation: (out, C/groups);
    wavelet_weights: (out, C/groups, *kernel) -> (B, out, *out_spatial). Differentiated by autograd.
    """
    wav = get_wavelet(wavelet)
    ndim = x.dim() - 2
    conv = torch.nn.functional.conv1d if ndim == 1 else torch.nn.functional.conv2d
    out_c, ig = scale.shape
    og = out_c // groups
    param_shape = (1, og, ig) + (1,) * ndim
    outputs = []
    for g, xg in enumerate(torch.split(x, ig, dim=1)):
        rows = slice(g * og, (g + 1) * og)
        z = (xg.unsqueeze(1) - translation[rows].reshape(param_shape)) / scale[rows].reshape(param_shape)
        psi = wav.psi(z)
        if wav.window is not None:
            psi = psi * wav.window(ig, psi.dtype, psi.device).reshape((1, 1, ig) + (1,) * ndim)
        outputs.append(conv(psi.flatten(1, 2), wavelet_weights[rows], None, stride, padding, dilation, og))
    return torch.cat(outputs, dim=1)
