"""How the backward passes time against the programs one SM holds, on a GPU: the data behind
the register caps in ``kernels/config.py``.

    PYTHONPATH=src python benchmarks/residency_sweep.py

The question it was written for (benchmarks/NOTES.md, v9): v8's parameter pass, 32 x 64 tiles at
168 registers per thread, fit 3 programs of 4 warps per SM, so a 1024 x 1024 layer's 512 tiles
ran in 1.29 waves on 132 SMs; would a cap at 128 registers (4 per SM, one wave) pay? It times
each pass (median of ``triton.testing.do_bench_cudagraph``: GPU time, no host) under the
shipped config and its variants (register caps, unroll, tiles, forced splits), over the
network's shapes and the op-level ones, and checks every variant's result against the shipped
config's; ``--kinds fwd`` asks the same of the forward. Registers and spills come from
benchmarks/compile_check.py (no GPU needed).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
import triton.testing
from kernel_sweep import kernel_calls, operands, seed_and_measure_ceiling

from wavkan import get_wavelet
from wavkan.kernels import KernelConfig
from wavkan.kernels import launch as klaunch, tuning as ktuning

SHAPES = [(256, 1024, 1024), (256, 1024, 128), (64, 1024, 1024), (1024, 1024, 1024), (4096, 1024, 1024)]


def variants(kind: str, rows: int):
    base = ktuning.default_config(kind, torch.device("cuda"), rows)
    yield "shipped", base
    if kind == "bwd_dparams":
        yield "no register cap", dataclasses.replace(base, maxnreg=None)
        yield "32x64 w4 (v8)", KernelConfig(32, 64, num_warps=4, num_stages=2, prefetch=True, unroll=2)
        yield "split1", dataclasses.replace(base, split=1)
        yield "split2", dataclasses.replace(base, split=2)
        yield "split4", dataclasses.replace(base, split=4)
        yield "unroll4", dataclasses.replace(base, unroll=4)
    elif kind == "fwd":
        yield "128x128 w8", dataclasses.replace(base, block_n=128, num_warps=8)
        yield "128x128 w8 maxnreg128", dataclasses.replace(base, block_n=128, num_warps=8, maxnreg=128)
        yield "256x64 w8 maxnreg128", dataclasses.replace(base, block_m=256, num_warps=8, maxnreg=128)
        yield "128x64 w4 unroll4", dataclasses.replace(base, unroll=4)
        yield "128x64 w4 maxnreg96", dataclasses.replace(base, maxnreg=96)
        yield "64x128 w4", dataclasses.replace(base, block_m=64, block_n=128)
    else:
        yield "64x64 w4 (v8)", KernelConfig(64, 64, num_warps=4, num_stages=1, prefetch=True, unroll=4, split_rule="balance")
        yield "64x128 w8", dataclasses.replace(base, block_n=128, num_warps=8, maxnreg=None)
        yield "64x128 w8 maxnreg128", dataclasses.replace(base, block_n=128, num_warps=8, maxnreg=128)
        yield "128x64 w8 maxnreg128", dataclasses.replace(base, block_m=128, num_warps=8, maxnreg=128)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--wavelet", default="mexican_hat")
    p.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES), help="B x in x out, comma-separated")
    p.add_argument("--kinds", default="bwd_dparams,bwd_dx", help="comma-separated: fwd, bwd_dx, bwd_dparams")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: nothing to sweep")
        return 0
    ceiling = seed_and_measure_ceiling()
    wav = get_wavelet(args.wavelet)
    for B, n_in, n_out in (tuple(map(int, sh.split("x"))) for sh in args.shapes.split(",")):
        x, s, t, w, g = operands(B, n_in, n_out)
        run = kernel_calls(x, s, t, w, g, wav)
        for kind in args.kinds.split(","):
            shipped = None
            for name, cfg in variants(kind, B):
                before = dict(klaunch._RESIDENT)
                got = run[kind](cfg)
                new = [v for k, v in klaunch._RESIDENT.items() if k not in before]
                if shipped is None:
                    shipped = got
                err = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(got, shipped))
                ms = triton.testing.do_bench_cudagraph(lambda: run[kind](cfg), rep=40, return_mode="median")
                frac = B * n_in * n_out / (ms * 1e-3) / ceiling
                print(f"{args.wavelet:11s} {kind:12s} {B:5d}x{n_in}x{n_out:<5d} {name:22s} {ms * 1e3:8.1f} us {frac:6.1%}"
                      f"  resident/SM={new[0] if new else '-'}  rel.diff vs shipped {err:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
