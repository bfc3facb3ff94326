"""Measured launch configurations: ``KernelConfig`` and the per-kernel tables.

On the GPU the sizes come from the tables below (measured on an H200 with the sweep tools in
benchmarks/; benchmarks/STATUS.md says what each reaches). Under Triton's interpreter (CPU
tensors) one big-tile config is used: the interpreter is slow per operation, not per element.
How a config's reduction loop is split across programs is ``launch.py``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes, warps and the split of the reduction loop across programs.

    ``block_m`` and ``block_n`` are the kernel's two tile dims: (B, OUT) for the forward,
    (B, IN) for grad_x, (OUT, IN) for the parameter gradients. ``split`` = None lets the
    launcher pick the number of programs that share one tile's reduction loop, by the
    "balance" rule (``launch.balanced_split``: a fixed number of programs per SM).
    ``unroll`` applies to the Gaussian wavelets only (``loop_unroll``). ``prefetch``
    issues the next step's loads before this step's arithmetic; ``unroll`` is the main loop's
    unroll factor (more independent evaluations in flight per thread).
    ``balance_min_steps`` is the least loop share of a split program once the tiles fill the
    SMs (the parameter pass takes more than the others: each of its splits writes three
    partial planes). ``resident``: the programs of this config an SM runs at once, which the
    split fills while the tiles are fewer than the SMs (a split past it runs a second, partly
    filled wave); at most what the registers allow (``benchmarks/compile_check.py`` prints them).
    ``stage``: the forward and grad_x walk x (grad_y) a column per step; False reads it in
    place (no extra launch: the host cost of a small call), True stages it transposed first
    (one more launch, unit-stride loads: the GPU cost of a large call).
    """

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    split: Optional[int] = None
    prefetch: bool = True
    unroll: int = 1
    maxnreg: Optional[int] = None
    balance_min_steps: int = 128
    resident: int = 2
    stage: bool = False

    def launch_options(self) -> dict:
        """Triton's launch options for this config (``maxnreg`` only when set: it caps the
        registers per thread, which trades spills for programs per SM)."""
        opts = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.maxnreg is not None:
            opts["maxnreg"] = self.maxnreg
        return opts

    def with_split(self, split: int) -> "KernelConfig":
        return replace(self, split=split)


# From the sweeps on an H200 (benchmarks/kernel_sweep.py, benchmarks/config_ab.py; the history of
# each choice in benchmarks/HISTORY.md): per kernel, (smallest row count, config), largest first;
# ``_GPU_BY_FAMILY`` replaces a kernel's table for the wavelet families that measured otherwise.
# Unrolling the main loop (more independent evaluations in flight; the Gaussian wavelets' loops
# only, ``loop_unroll``) paid everywhere but where it made the loop spill: the kernels are
# latency-bound at 2-4 programs per SM (ncu: about one eligible warp per scheduler), not
# issue-bound. The 128-row forward tile needs B >= 128; it takes at most 155 registers for every
# wavelet, so an SM holds 3 of its programs (``resident``). From 1024 rows the split fills all 3
# (v17: 384 programs against 256 at 1024 rows, mexican_hat 0.563 -> 0.506 ms, dog 0.425 ->
# 0.411 in `wavkan bench`); at 256 rows filling 3 changed nothing (0.99x both), so it keeps 2.
# (Register counts of the fp32 signatures; the bf16 and fp16 ones take no more.)
# The forward stages x from 1024 rows (unit-stride loads beat the in-place column reads there;
# below, the staging launch costs more than it saves); grad_x reads grad_y in place at every
# size. grad_x (morlet's table): 8 warps over twice the tile, capped at 128 registers, in the
# middle rows. The parameter pass: 32 x 64
# tiles of 8 warps capped at 128 registers (v15: 1.03-1.10x the 64 x 64 tile for the
# trigonometric wavelets); it splits only from 1024 rows (below, a split's three partial planes
# cost more than it gains).
_GPU = {
    "fwd": (
        (1024, KernelConfig(128, 64, num_warps=4, num_stages=1, prefetch=True, unroll=4, stage=True, resident=3)),
        (128, KernelConfig(128, 64, num_warps=4, num_stages=1, prefetch=True, unroll=2)),
        (0, KernelConfig(64, 64, num_warps=4, num_stages=1, prefetch=True, unroll=4)),
    ),
    "bwd_dx": (
        (2048, KernelConfig(64, 64, num_warps=4, num_stages=1, prefetch=True, unroll=4)),
        (128, KernelConfig(64, 128, num_warps=8, num_stages=1, prefetch=True, unroll=4, maxnreg=128)),
        (0, KernelConfig(64, 64, num_warps=4, num_stages=1, prefetch=True, unroll=4)),
    ),
    "bwd_dparams": ((0, KernelConfig(32, 64, num_warps=8, num_stages=2, prefetch=True, maxnreg=128,
                                     balance_min_steps=512)),),
}
# Per wavelet family (``family``) where it measured otherwise (v15, results/h200-2026-11-30f/).
# grad_x: the capped 8-warp tile spills inside the main loop of the Gaussian wavelets
# (compile_check: 39 LDL per 128 MUFU at unroll 4), which took 1.16-1.24x less time on 64 x 64
# tiles of 4 warps, uncapped, from 256 to 1024 rows (within 2% at 64 and 2048); the piecewise
# wavelets' loops spill on every tile, least on 32 x 128 of 8 warps capped at 128 (meyer and
# shannon 1.09-1.25x at 64 to 4096 rows), where morlet's does not and keeps the shared table
# (0.98-1.03x). The Gaussian wavelets' parameter pass: unrolled by 4 on 32 x 64 tiles below 1024
# rows (mexican_hat 1.05-1.24x, dog 1.00-1.02x), by 1 on 64 x 64 from 1024 (unroll 2 kept 48
# bytes of stack: 1.10-1.23x and 1.02-1.10x; 32 x 64 there: dog 0.83x).
_GPU_BY_FAMILY = {
    "bwd_dx": {
        "gaussian": ((0, KernelConfig(64, 64, num_warps=4, num_stages=1, prefetch=True, unroll=4)),),
        "piecewise": ((0, KernelConfig(32, 128, num_warps=8, num_stages=1, prefetch=True, unroll=4, maxnreg=128)),),
    },
    "bwd_dparams": {
        "gaussian": (
            (1024, KernelConfig(64, 64, num_warps=8, num_stages=2, prefetch=True, unroll=1, maxnreg=128,
                                balance_min_steps=512)),
            (0, KernelConfig(32, 64, num_warps=8, num_stages=2, prefetch=True, unroll=4, maxnreg=128,
                             balance_min_steps=512)),
        ),
    },
}


def family(wavelet) -> str:
    """A wavelet's config family, from its traits (``wavkan.wavelets``): "gaussian" (one exp2 and
    a few fp32 operations per evaluation: mexican_hat, dog), "envelope" (a Gaussian envelope times
    sine and cosine: morlet), "piecewise" (no envelope: branches of sine and cosine, the longest
    loops: meyer, shannon)."""
    if wavelet.gaussian:
        return "gaussian"
    return "envelope" if wavelet.envelope else "piecewise"


_INTERPRETER = KernelConfig(32, 32, num_warps=1, num_stages=1)


def default_config(kind: str, device: torch.device, rows: int = 0, wavelet=None) -> KernelConfig:
    """The measured best config of kernel ``kind`` for ``rows`` rows of x (B) and ``wavelet``
    (a ``Wavelet``: its family's table where it has one; None: the shared table)."""
    if device.type != "cuda":
        return _INTERPRETER
    table = _GPU_BY_FAMILY.get(kind, {}).get(family(wavelet)) if wavelet is not None else None
    return next(cfg for min_rows, cfg in (table or _GPU[kind]) if rows >= min_rows)


def loop_unroll(cfg: KernelConfig, wavelet) -> int:
    """``cfg.unroll`` for the Gaussian wavelets (``Wavelet.gaussian``: one exp2 and a few fp32
    operations per evaluation), measured faster unrolled; 1 for the trigonometric ones, which
    are long already, and whose compile time unrolling multiplies."""
    return cfg.unroll if wavelet.gaussian else 1


def kernel_meta(cfg: KernelConfig, wavelet, device: torch.device, block_names: tuple) -> dict:
    """The constexprs every fp32 pass takes from its config and wavelet, and the launch options;
    ``block_names`` names the kernel's two tile dims (block_m, block_n)."""
    return dict(WAVELET=wavelet.code, FAST=device.type == "cuda", PREFETCH=cfg.prefetch,
                UNROLL=loop_unroll(cfg, wavelet), **dict(zip(block_names, (cfg.block_m, cfg.block_n))),
                **cfg.launch_options())
