"""wavkan: Wavelet Kolmogorov-Arnold Networks (Wav-KAN) for PyTorch, with fused Triton kernels."""

from .nn import WavKAN, WavKANLinear
from .ops import BACKENDS, wavkan_linear
from .plot import plot_edges
from .wavelets import WAVELETS, get_wavelet

__all__ = ["WavKAN", "WavKANLinear", "wavkan_linear", "WAVELETS", "BACKENDS", "get_wavelet", "plot_edges"]
__version__ = "0.1.0"
