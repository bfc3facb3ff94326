"""The three fused kernels once each at one shape, for Nsight Compute.

    PYTHONPATH=src ncu -k regex:"_wavkan_(fwd|bwd)" --section WarpStateStats ... \
        python benchmarks/ncu_kernels.py [--batch 1024] [--size 1024]

Compiles and warms every kernel first, then synchronises and launches each once more, so that
a profiler filtering on the kernel names sees the default configuration of each at the shape.
"""

from __future__ import annotations

import argparse

import torch

from sweeplib import kernel_calls, operands

from wavkan import get_wavelet


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
    calls = kernel_calls(*operands(B, N), get_wavelet(args.wavelet))
    for _ in range(2):
        for call in calls.values():
            call()  # the shipped config
        torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
