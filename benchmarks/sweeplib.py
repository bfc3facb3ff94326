"""What the GPU scripts here share: their operands, the kernels' calls, the ceiling, the timers.

Imported by ``kernel_sweep.py``, ``ncu_kernels.py``, ``config_ab.py`` and ``eager_call.py`` (run as ``PYTHONPATH=src python
benchmarks/<script>.py``, which puts this folder on ``sys.path``). It uses only the library's
public launchers and ``wavkan.bench.ceiling``; a script that needs more of the library asks it
through a public name.
"""

from __future__ import annotations

import statistics

import torch
import triton.testing

from wavkan.bench.ceiling import measure_exp2_rate
from wavkan.kernels import wavkan_bwd_dparams, wavkan_bwd_dx, wavkan_fwd

# in = out of the sweeps' layer: the seed protocol's width.
SIZE = 1024


def operands(B: int, size: int, out_size=None, device="cuda"):
    """x (B, size), scale, translation, weights (out_size, size) and dL/dy (B, out_size), out_size
    defaulting to size: the inputs every timing script here uses (scale in [0.5, 1.5),
    translations and weights of the magnitudes the layer's initialisation and training give)."""
    out_size = size if out_size is None else out_size
    x = torch.randn(B, size, device=device)
    s = torch.rand(out_size, size, device=device) + 0.5
    t = torch.randn(out_size, size, device=device) * 0.5
    w = torch.randn(out_size, size, device=device) / 32
    g = torch.randn(B, out_size, device=device)
    return x, s, t, w, g


def kernel_calls(x, s, t, w, g, wav) -> dict:
    """Each fused kernel by name (the ``kind`` of ``kernels.tuning.default_config``), as
    ``fn(config)`` returning its outputs as a tuple; ``config`` None takes the shipped one."""
    return {
        "fwd": lambda c=None: (wavkan_fwd(x, s, t, w, wav, c),),
        "bwd_dx": lambda c=None: (wavkan_bwd_dx(g, x, s, t, w, wav, c),),
        "bwd_dparams": lambda c=None: wavkan_bwd_dparams(g, x, s, t, w, wav, c),
    }


def seed_and_measure_ceiling() -> float:
    """Seeds torch, measures the exp2 ceiling (median of ``measure_exp2_rate``), prints and
    returns it in exp2 per second: the first step of every sweep."""
    torch.manual_seed(0)
    n_exp, times = measure_exp2_rate()
    ceiling = n_exp / (sorted(times)[len(times) // 2] * 1e-3)
    print(f"exp2 ceiling: {ceiling:.3e}/s on {torch.cuda.get_device_name()}", flush=True)
    return ceiling


def gpu_ms(fn, rep: int = 30) -> float:
    """Median GPU time of ``fn()`` in ms, replayed as a CUDA graph: without the host's launch
    cost, which would hide small kernels."""
    return triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median")


def latency_ms(fn, reps: int = 25) -> float:
    """Median ms of ``reps`` calls of ``fn()``, each between CUDA events with a synchronize after
    it: the latency the public eager benchmarks report (the host's time included)."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
