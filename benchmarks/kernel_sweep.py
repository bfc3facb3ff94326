"""Tile-config sweep of the fused kernels on a GPU: the data behind ``kernels/tuning.py``.

    PYTHONPATH=src python benchmarks/kernel_sweep.py [--out DIR] [--quick]

For each kernel (forward, grad_x, parameter gradients) and each B in {64, 256, 1024, 4096}
at in = out = 1024 (mexican_hat, fp32), times every candidate config (median of
triton.testing.do_bench_cudagraph: GPU time without host overhead) and prints evaluations per
second and the fraction of the exp2 ceiling measured in the same run; each tile config with
and without the loop's software prefetch (and, with --unroll, each unroll factor of the main
loop). Registers, spills and SASS come from benchmarks/compile_check.py (no GPU needed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

import torch
from sweeplib import SIZE, gpu_ms, kernel_calls, operands, seed_and_measure_ceiling

from wavkan import get_wavelet
from wavkan.kernels import KernelConfig

BATCHES = (64, 256, 1024, 4096)


TILES = {
    "fwd": [(64, 64, 4, 1), (128, 64, 4, 1), (128, 64, 8, 1), (64, 128, 4, 1)],
    "bwd_dx": [(64, 64, 4, 1), (32, 64, 4, 1), (64, 64, 8, 2), (128, 64, 8, 2)],
    "bwd_dparams": [(32, 64, 4, 2), (64, 64, 8, 2), (64, 32, 4, 2), (64, 128, 8, 2)],
}


def candidates(kernel: str, quick: bool, unrolls=(1,), maxnregs=(None,)):
    tiles = TILES[kernel][:2] if quick else TILES[kernel]
    for (m, n, w, stages), prefetch, unroll, maxnreg in itertools.product(tiles, (True, False), unrolls, maxnregs):
        yield KernelConfig(m, n, num_warps=w, num_stages=stages, prefetch=prefetch, unroll=unroll, maxnreg=maxnreg)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--wavelet", default="mexican_hat")
    p.add_argument("--unroll", default="1", help="comma-separated unroll factors of the main loops, e.g. 1,2,4")
    p.add_argument("--maxnreg", default="0", help="comma-separated register caps per thread, 0 for none, e.g. 0,128")
    p.add_argument("--kernels", default="fwd,bwd_dx,bwd_dparams", help="comma-separated kernels to sweep")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: nothing to sweep")
        return 0
    ceiling = seed_and_measure_ceiling()
    wav = get_wavelet(args.wavelet)
    rows = []
    for B in BATCHES:
        x, s, t, w, g = operands(B, SIZE)
        kernels = kernel_calls(x, s, t, w, g, wav)
        unrolls = tuple(int(u) for u in args.unroll.split(","))
        maxnregs = tuple(int(r) or None for r in args.maxnreg.split(","))
        for name, fn in kernels.items():
            if name not in args.kernels.split(","):
                continue
            best = None
            for cfg in candidates(name, args.quick, unrolls, maxnregs):
                try:
                    ms = gpu_ms(lambda: fn(cfg))
                except Exception as exc:  # a config the compiler refuses (registers, shared memory)
                    print(f"  {name} B={B} {cfg}: failed {type(exc).__name__}: {exc}"[:200])
                    continue
                rate = B * SIZE * SIZE / (ms * 1e-3)
                print(f"  {name:12s} B={B:5d} {ms:8.4f} ms {rate / ceiling:6.1%}  {cfg.block_m}x{cfg.block_n} "
                      f"w{cfg.num_warps} s{cfg.num_stages} prefetch={cfg.prefetch} unroll={cfg.unroll} maxnreg={cfg.maxnreg} split={cfg.split}")
                rows.append({"kernel": name, "B": B, "cfg": cfg.__dict__, "ms": ms, "rate": rate, "frac": rate / ceiling})
                if best is None or ms < best[0]:
                    best = (ms, cfg)
            ms, cfg = best
            print(f"{name:12s} B={B:5d} best {ms:8.4f} ms  {B*SIZE*SIZE/ms/1e9:.3e} eval/s  "
                  f"{B*SIZE*SIZE/(ms*1e-3)/ceiling:6.1%} of exp ceiling  {cfg}", flush=True)
    with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump({"ceiling": ceiling, "rows": rows}, f, indent=1)

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
