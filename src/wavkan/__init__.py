"""wavkan: Wavelet Kolmogorov-Arnold Networks (Wav-KAN) for PyTorch, with fused Triton kernels."""

from .nn import WavKAN, WavKANConv1d, WavKANConv2d, WavKANLinear
from .ops import BACKENDS, clear_caches, wavkan_linear
from .ops_conv import wavkan_conv, wavkan_conv1d, wavkan_conv2d
from .plot import plot_edges
from .wavelets import WAVELETS, get_wavelet

__all__ = [
    "WavKAN", "WavKANLinear", "WavKANConv1d", "WavKANConv2d",
    "wavkan_linear", "wavkan_conv", "wavkan_conv1d", "wavkan_conv2d",
    "WAVELETS", "BACKENDS", "get_wavelet", "plot_edges", "clear_caches",
]
__version__ = "0.1.0"
