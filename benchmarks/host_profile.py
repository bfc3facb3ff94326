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


def launch_costs(calls: int) -> None:
    """Host microseconds per launch of one small staging kernel (ten runtime arguments):
    through Triton's JITFunction (argument binding, specialisation, cache lookup), and by
    calling the CompiledKernel that the first launch returned, for comparison."""
    from wavkan.kernels.staging import _BLOCK, _wavkan_stage_kernel

    src = torch.randn(64, 64, device="cuda")
    dst = torch.empty(64, 64, device="cuda")
    args = (src, dst, 64, 64, 64, 64, 64, 1, 64, 1)
    grid = (2, 2)
    compiled = _wavkan_stage_kernel[grid](*args, BLOCK_R=_BLOCK, BLOCK_C=_BLOCK)
    timings = {}

    def through_jit():
        _wavkan_stage_kernel[grid](*args, BLOCK_R=_BLOCK, BLOCK_C=_BLOCK)

    launchers = {"JITFunction": through_jit}
    try:
        direct = compiled[(2, 2, 1)]
        direct(*args, _BLOCK, _BLOCK)
        torch.cuda.synchronize()
        assert torch.equal(dst, src), "CompiledKernel launch gave a different result"
        launchers["CompiledKernel"] = lambda: direct(*args, _BLOCK, _BLOCK)
    except Exception as exc:  # report what this Triton's CompiledKernel accepts
        print(f"CompiledKernel launch failed: {type(exc).__name__}: {exc}")
    launchers["torch.empty"] = lambda: torch.empty(64, 64, device="cuda")
    for name, fn in launchers.items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        timings[name] = (time.perf_counter() - start) / calls * 1e6
        torch.cuda.synchronize()
    print("host us per launch: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


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
    launch_costs(args.calls)
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
