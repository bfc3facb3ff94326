"""A restatement of the paper's KANLinear / KAN (Wav-KAN, arXiv 2405.12832) for compatibility
tests: the same parameter names (including the unused ``weight1``), the same initialisation
and the same unchunked formulas differentiated by autograd."""

import math

import torch
import torch.nn.functional as F
from torch import nn

# The wavelets of the paper's code (its remaining ones); a wavelet added to the catalogue later
# is checked against tests/oracle.py instead.
PAPER_WAVELETS = ("mexican_hat", "morlet", "dog", "meyer", "shannon")


class PaperKANLinear(nn.Module):
    def __init__(self, in_features, out_features, wavelet_type="mexican_hat"):
        super().__init__()
        self.in_features, self.out_features, self.wavelet_type = in_features, out_features, wavelet_type
        self.scale = nn.Parameter(torch.ones(out_features, in_features))
        self.translation = nn.Parameter(torch.zeros(out_features, in_features))
        self.weight1 = nn.Parameter(torch.empty(out_features, in_features))
        self.wavelet_weights = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.wavelet_weights, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.weight1, a=math.sqrt(5))
        self.base_activation = nn.SiLU()
        self.bn = nn.BatchNorm1d(out_features)

    def wavelet_transform(self, x):
        xs = (x.unsqueeze(1) - self.translation.unsqueeze(0)) / self.scale.unsqueeze(0)
        kind = self.wavelet_type
        if kind == "mexican_hat":
            wav = (2 / (math.sqrt(3) * math.pi**0.25)) * (xs**2 - 1) * torch.exp(-0.5 * xs**2)
        elif kind == "morlet":
            wav = torch.exp(-0.5 * xs**2) * torch.cos(5.0 * xs)
        elif kind == "dog":
            wav = -xs * torch.exp(-0.5 * xs**2)
        elif kind == "meyer":
            v = torch.abs(xs)

            def nu(t):
                return t**4 * (35 - 84 * t + 70 * t**2 - 20 * t**3)

            aux = torch.where(
                v <= 1 / 2, torch.ones_like(v),
                torch.where(v >= 1, torch.zeros_like(v), torch.cos(math.pi / 2 * nu(2 * v - 1))),
            )
            wav = torch.sin(math.pi * v) * aux
        elif kind == "shannon":
            sinc = torch.sinc(xs / math.pi)
            window = torch.hamming_window(xs.size(-1), periodic=False, dtype=xs.dtype, device=xs.device)
            wav = sinc * window
        else:
            raise ValueError(kind)
        return (wav * self.wavelet_weights.unsqueeze(0)).sum(dim=2)

    def forward(self, x):
        _unused = F.linear(x, self.weight1)  # the paper computes it and drops it
        return self.bn(self.wavelet_transform(x))


class PaperKAN(nn.Module):
    def __init__(self, layers_hidden, wavelet_type="mexican_hat"):
        super().__init__()
        self.layers = nn.ModuleList(
            PaperKANLinear(i, o, wavelet_type) for i, o in zip(layers_hidden[:-1], layers_hidden[1:])
        )

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
