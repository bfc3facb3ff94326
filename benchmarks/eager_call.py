"""What one eager Wav-KAN layer call costs the host, beside nn.Linear, in one process.

    PYTHONPATH=src python benchmarks/eager_call.py [--batch 256] [--size 1024] [--wavelet mexican_hat]

Per provider (wavkan's eager functional, the same with the torch.library custom op called
eagerly, nn.Linear), forward and forward+backward, inputs that require grad:
- host time per call, two ways: queued (the calls issued without a sync while the GPU runs
  behind, wall clock / calls) and synced (the median of one call's wall clock, issued on an idle
  GPU). A call that blocks on the GPU (nn.Linear's forward + backward and BatchNorm measured so
  on the H200: a wait for the whole queue) shows it in the queued figure only, so compare the
  synced ones across providers;
- GPU time per call: CUDA events around a run of calls that the host queued ahead of the GPU
  (a spin keeps the GPU busy until they are all queued);
- latency per call: CUDA events around one call, synchronised after each (the public protocols);
- kernel launches per call, counted by torch.profiler.
Prints one line per row as ``provider mode host_us synced_host_us gpu_us latency_us launches``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sweeplib import latency_ms


def _host_and_gpu(fn, calls: int) -> tuple:
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e8))  # the GPU spins while the host queues every call
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    host = (time.perf_counter() - t0) / calls * 1e6
    torch.cuda.synchronize()
    return host, start.elapsed_time(end) * 1e3 / calls


def _synced_host(fn, calls: int) -> float:
    """Median host time of one call (us), each issued after a synchronize."""
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def _launches(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return round(len(kernels) / 5)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--wavelet", default="mexican_hat")
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--profile", action="store_true", help="cProfile wavkan's forward and full calls instead")
    args = p.parse_args()
    from wavkan import wavkan_linear

    B, N = args.batch, args.size
    dev = "cuda"
    x = torch.randn(B, N, device=dev, requires_grad=True)
    g = torch.randn(B, N, device=dev)
    layer = torch.nn.Linear(N, N, device=dev)
    s = (torch.rand(N, N, device=dev) + 0.5).requires_grad_()
    t = (0.1 * torch.randn(N, N, device=dev)).requires_grad_()
    w = (0.05 * torch.randn(N, N, device=dev)).requires_grad_()
    params = (s, t, w, *layer.parameters())

    def clear():
        x.grad = None
        for q in params:
            q.grad = None

    def wav_fwd():
        return wavkan_linear(x, s, t, w, args.wavelet, backend="triton")

    def op_fwd():
        return torch.ops.wavkan.linear(x, s, t, w, args.wavelet, "triton")

    if args.profile:
        import cProfile
        import pstats

        def full_step():
            clear()
            wav_fwd().backward(g)

        for label, fn in (("forward", wav_fwd), ("full", full_step)):
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.calls):
                fn()
            prof.disable()
            torch.cuda.synchronize()
            print(f"--- {label}: {args.calls} calls")
            pstats.Stats(prof).sort_stats("tottime").print_stats(22)
        return 0

    providers = {"wavkan": wav_fwd, "wavkan-customop": op_fwd, "linear": lambda: layer(x)}
    for name, fwd in providers.items():
        def full(fwd=fwd):
            clear()
            fwd().backward(g)

        for mode, fn in (("forward", fwd), ("full", full)):
            for _ in range(20):
                fn()
            host, gpu = _host_and_gpu(fn, args.calls)
            synced = _synced_host(fn, 200)
            lat = latency_ms(fn, 200) * 1e3
            print(f"{name:16s} {mode:8s} host_us {host:8.1f} synced_host_us {synced:8.1f} gpu_us {gpu:8.1f} latency_us {lat:8.1f} "
                  f"launches {_launches(fn)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
