"""How the split of the reduction loop across programs times, on a GPU: the data behind
``config.balanced_split``.

    PYTHONPATH=src python benchmarks/split_sweep.py            # the rules: "fill" vs "balance"
    PYTHONPATH=src python benchmarks/split_sweep.py --counts   # every split count per shape

For the forward and grad_x at their default tiles (mexican_hat, fp32), over shapes from one row
to 4096 x 1024 x 1024 and the MNIST layers: ``--counts`` times explicit split counts (median of
``triton.testing.do_bench_cudagraph``: GPU time, no host), the default prints each shape under
v5's rule ("fill": one wave of resident programs) and the current one ("balance"), in one run.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
import triton.testing
from kernel_sweep import operands

from wavkan import get_wavelet
from wavkan.kernels import wavkan_bwd_dx, wavkan_fwd
from wavkan.kernels.launch import cdiv, sm_count
from wavkan.kernels.tuning import default_config

SHAPES = [(1, 1024, 1024), (64, 1024, 1024), (256, 1024, 1024), (1024, 1024, 1024), (2048, 1024, 1024),
          (4096, 1024, 1024), (256, 1024, 128), (64, 1024, 128), (1024, 1024, 128), (256, 128, 1024),
          (64, 784, 32), (64, 32, 10), (8192, 512, 512)]
COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def _time(fn) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=40, return_mode="median") * 1e3  # us


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--counts", action="store_true", help="time every split count instead of the two rules")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: nothing to time")
        return 0
    torch.manual_seed(0)
    wav = get_wavelet("mexican_hat")
    sms = sm_count(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}: {sms} SMs", flush=True)
    for B, IN, OUT in SHAPES:
        x, s, t, w, g = operands(B, IN, OUT)
        kernels = (
            ("fwd", lambda c: wavkan_fwd(x, s, t, w, wav, c), OUT, IN),  # tiles over (B, out), loop over in
            ("bwd_dx", lambda c: wavkan_bwd_dx(g, x, s, t, w, wav, c), IN, OUT),  # tiles over (B, in), loop over out
        )
        line = []
        for kind, fn, tile_cols, loop_len in kernels:
            cfg = default_config(kind, x.device, B)
            tiles = cdiv(B, cfg.block_m) * cdiv(tile_cols, cfg.block_n)
            if args.counts:
                times = {k: _time(lambda: fn(cfg.with_split(k))) for k in COUNTS if loop_len // k >= 8 and tiles * k <= 8 * sms}
                best = min(times, key=times.get)
                line.append(f"{kind} tiles={tiles} best {best} ({tiles * best / sms:.2f}/SM) {times[best]:.1f} us | "
                            + " ".join(f"{k}:{us:.1f}" for k, us in times.items()))
            else:
                fill = _time(lambda: fn(dataclasses.replace(cfg, split_rule="fill")))
                balance = _time(lambda: fn(dataclasses.replace(cfg, split_rule="balance")))
                line.append(f"{kind} fill {fill:8.1f} balance {balance:8.1f} us ({fill / balance:5.3f}x)")
        print(f"{B}x{IN}x{OUT}: " + (" | " if not args.counts else "\n  ").join(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
