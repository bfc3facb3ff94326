"""wavkan: Wavelet Kolmogorov-Arnold Networks (Wav-KAN) for PyTorch, with fused Triton kernels."""

from .nn import WavKAN, WavKANLinear
from .ops import BACKENDS, wavkan_linear
from .wavelets import WAVELETS, get_wavelet

__all__ = ["WavKAN", "WavKANLinear", "wavkan_linear", "WAVELETS", "BACKENDS", "get_wavelet"]

from .nn import WavKANConv1d, WavKANConv2d
from .ops_conv import wavkan_conv, wavkan_conv1d, wavkan_conv2d

__all__ += ["WavKANConv1d", "WavKANConv2d", "wavkan_conv", "wavkan_conv1d", "wavkan_conv2d"]
__version__ = "0.1.0"
