"""Where the host's time goes in one Wav-KAN layer call on the GPU (forward and backward).

    PYTHONPATH=src python benchmarks/host_profile.py [--batch 256] [--size 1024]

Runs forward+backward many times without synchronising (the GPU work queues up) under
cProfile and prints the functions with the most own time: Python overhead of the custom op,
autograd and Triton's launcher, which bound small layers and the network benchmark.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from wavkan import wavkan_linear


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--calls", type=int, default=300)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: nothing to profile")
        return 0
    B, N = args.batch, args.size
    x = torch.randn(B, N, device="cuda", requires_grad=True)
    s = (torch.rand(N, N, device="cuda") + 0.5).requires_grad_()
    t = torch.zeros(N, N, device="cuda", requires_grad=True)
    w = torch.randn(N, N, device="cuda", requires_grad=True)
    g = torch.randn(B, N, device="cuda")

    def step():
        wavkan_linear(x, s, t, w, backend="triton").backward(g)

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.calls):
        wavkan_linear(x, s, t, w, backend="triton")
    fwd_host = (time.perf_counter() - start) / args.calls * 1e3
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.calls):
        step()
    full_host = (time.perf_counter() - start) / args.calls * 1e3
    torch.cuda.synchronize()
    print(f"host time per call: forward {fwd_host:.3f} ms, forward+backward {full_host:.3f} ms")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.calls):
        step()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
