"""Everything Triton: wavelet device functions, the fused forward and backward kernels, launchers.

Importing this package imports Triton; ``wavkan.ops`` imports it only when a Triton backend
actually runs, so ``import wavkan`` works on machines without Triton.
"""

from .backward import wavkan_bwd, wavkan_bwd_dparams, wavkan_bwd_dx
from .tuning import KernelConfig
from .forward import wavkan_fwd

__all__ = ["wavkan_fwd", "wavkan_bwd", "wavkan_bwd_dx", "wavkan_bwd_dparams", "KernelConfig"]
