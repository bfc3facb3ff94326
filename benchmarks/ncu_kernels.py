"""The three fused kernels once each at one shape, for Nsight Compute.

    PYTHONPATH=src ncu -k regex:"_wavkan_(fwd|bwd)" --section WarpStateStats ... \
        python benchmarks/ncu_kernels.py [--batch 1024] [--size 1024]

Compiles and warms every kernel first, then synchronises and launches each once more, so that
a profiler filtering on the kernel names sees the default configuration of each at the shape.
"""

from __future__ import annotations

import argparse

import torch

from wavkan import get_wavelet
from wavkan.kernels import wavkan_bwd_dparams, wavkan_bwd_dx, wavkan_fwd

from kernel_sweep import operands  # this folder is on sys.path when run as a script


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--wavelet", default="mexican_hat")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: nothing to profile")
        return 0
    B, N = args.batch, args.size
    x, s, t, w, g = operands(B, N)
    wav = get_wavelet(args.wavelet)
    for _ in range(2):
        wavkan_fwd(x, s, t, w, wav)
        wavkan_bwd_dx(g, x, s, t, w, wav)
        wavkan_bwd_dparams(g, x, s, t, w, wav)
        torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
