"""Launch configuration shared by the launchers: tile sizes and how to split the reductions.

On the GPU the sizes come from the tables below (measured on an H200; see benchmarks/NOTES.md).
Under Triton's interpreter (CPU tensors) one big-tile config is used: the interpreter is slow
per operation, not per element.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Optional

import torch


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Processors to fill: the GPU's SM count; 1 for the interpreter."""
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes, warps and the split of the reduction loop across programs.

    ``block_m`` and ``block_n`` are the kernel's two tile dims: (B, OUT) for the forward,
    (B, IN) for grad_x, (OUT, IN) for the parameter gradients. ``split`` = None lets the
    launcher pick the number of programs that share one tile's reduction loop. ``prefetch``
    issues the next step's loads before this step's arithmetic; ``unroll`` is the main loop's
    unroll factor (more independent evaluations in flight per thread).
    """

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    split: Optional[int] = None
    programs_per_sm: int = 4
    prefetch: bool = True
    unroll: int = 1

    def with_split(self, split: int) -> "KernelConfig":
        return replace(self, split=split)


# From benchmarks/kernel_sweep.py on an H200, 2026-11-28 (benchmarks/NOTES.md, v4). The
# forward's register prefetch pays at small B (B=64: 21.5% of the exp ceiling against 15.2%)
# but costs occupancy in the 128-row tile used from B=1024 (B=4096: 46.6% against 67.4%).
# grad_x gains from it at every B; the parameter kernel is best with 32 x 64 tiles, without.
_GPU = {
    "fwd": KernelConfig(64, 64, num_warps=4, num_stages=1, prefetch=True),
    "fwd_large_b": KernelConfig(128, 64, num_warps=4, num_stages=1, prefetch=False),
    "bwd_dx": KernelConfig(64, 64, num_warps=4, num_stages=1, prefetch=True),
    "bwd_dparams": KernelConfig(32, 64, num_warps=4, num_stages=2, prefetch=False),
}
_INTERPRETER = KernelConfig(32, 32, num_warps=1, num_stages=1)
LARGE_B = 1024


def default_config(kind: str, device: torch.device, rows: int = 0) -> KernelConfig:
    if device.type != "cuda":
        return _INTERPRETER
    if kind == "fwd" and rows >= LARGE_B:
        return _GPU["fwd_large_b"]
    return _GPU[kind]


def choose_split(cfg: KernelConfig, tiles: int, loop_len: int, device: torch.device, min_per_split: int = 32) -> int:
    """Programs per tile: 1 once the tiles fill every SM, else enough for ``programs_per_sm``
    programs per SM (the partials cost memory and a reduction, so only when SMs would idle)."""
    if cfg.split is not None:
        return max(1, min(cfg.split, loop_len))
    sms = sm_count(device)
    if tiles >= sms:
        return 1
    target = cfg.programs_per_sm * sms
    split = min(cdiv(target, tiles), max(1, loop_len // min_per_split))
    return max(1, split)
