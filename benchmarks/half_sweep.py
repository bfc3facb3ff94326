"""Sweep of the packed-half forward (kernels/forward_half.py) beside the fp32 forward, on a GPU.

    PYTHONPATH=src python benchmarks/half_sweep.py [--out DIR] [--wavelet mexican_hat]

At in = out = 1024 and B in {256, 1024, 4096}: the fp32 forward (default config, fp32 inputs)
and the packed-half forward (fp16 inputs) for each tile, unrolled group of steps
(``KernelConfig.unroll``) and count of polynomial steps in it (``poly_steps``). Prints GPU time (median of do_bench_cudagraph), the
throughput against the fp32 forward's and the exp2 ceiling, and the relative error (norm)
of the half output against the fp32 kernel's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

import torch
import triton.testing
from kernel_sweep import SIZE, operands, seed_and_measure_ceiling

from wavkan import get_wavelet
from wavkan.kernels import KernelConfig, wavkan_fwd
from wavkan.kernels.forward_half import wavkan_fwd_half

BATCHES = (256, 1024, 4096)
# (block_m, block_n in pairs, warps); (unroll = steps per unrolled group, polynomial steps in it)
TILES = ((128, 16, 4), (128, 16, 8), (64, 16, 4), (128, 8, 4), (256, 16, 8))
GROUPS = ((4, 0), (8, 2), (8, 3), (16, 5))


def candidates():
    for (m, n, w), (unroll, poly) in itertools.product(TILES, GROUPS):
        yield KernelConfig(m, n, num_warps=w, num_stages=1, unroll=unroll, poly_steps=poly)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--wavelet", default="mexican_hat")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: nothing to sweep")
        return 0
    ceiling = seed_and_measure_ceiling()
    wav = get_wavelet(args.wavelet)
    rows = []
    for B in BATCHES:
        x, s, t, w, _g = operands(B, SIZE)
        xh, sh, th, wh = (v.half() for v in (x, s, t, w))
        exact = wavkan_fwd(xh.float(), sh.float(), th.float(), wh.float(), wav)  # the half inputs, in fp32
        fp32_ms = triton.testing.do_bench_cudagraph(lambda: wavkan_fwd(x, s, t, w, wav), rep=30, return_mode="median")
        evals = B * SIZE * SIZE
        print(f"fp32 forward  B={B:5d} {fp32_ms:8.4f} ms {evals / (fp32_ms * 1e-3) / ceiling:6.1%} of ceiling", flush=True)
        for cfg in candidates():
            try:
                y = wavkan_fwd_half(xh, sh, th, wh, wav, cfg)
                err = ((y.double() - exact.double()).norm() / exact.double().norm()).item()
                ms = triton.testing.do_bench_cudagraph(lambda: wavkan_fwd_half(xh, sh, th, wh, wav, cfg), rep=30,
                                                       return_mode="median")  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - a config the compiler refuses
                print(f"  half B={B} {cfg}: failed {type(exc).__name__}: {exc}"[:300], flush=True)
                continue
            frac = evals / (ms * 1e-3) / ceiling
            print(f"  half B={B:5d} {ms:8.4f} ms {frac:6.1%} of ceiling {fp32_ms / ms:5.2f}x fp32  rel err {err:.2e}  "
                  f"{cfg.block_m}x{cfg.block_n} pairs w{cfg.num_warps} poly {cfg.poly_steps}/{cfg.unroll}", flush=True)
            rows.append({"B": B, "cfg": cfg.__dict__, "ms": ms, "fp32_ms": fp32_ms, "frac": frac, "rel_err": err})
    with open(os.path.join(args.out, "half_sweep.json"), "w") as f:
        json.dump({"ceiling": ceiling, "wavelet": args.wavelet, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
