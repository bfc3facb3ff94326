"""Launch configuration shared by the launchers: tile sizes and how to split the reductions.

On the GPU the sizes come from the tables below (measured on an H200; see benchmarks/NOTES.md).
Under Triton's interpreter (CPU tensors) one big-tile config is used: the interpreter is slow
per operation, not per element.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from typing import Optional

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


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
    launcher pick the number of programs that share one tile's reduction loop.
    """

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    split: Optional[int] = None
    programs_per_sm: int = 4
    prefetch: bool = True

    def with_split(self, split: int) -> "KernelConfig":
        return replace(self, split=split)


# From benchmarks/kernel_sweep.py on an H200 (benchmarks/NOTES.md): the forward prefers
# 128-row tiles once B fills the GPU, the rest 64 x 64; both backward kernels need 8 warps
# (with 4, the parameter kernel's three accumulators and grad_x's prefetched operands spill).
_GPU = {
    "fwd": KernelConfig(64, 64, num_warps=4, num_stages=1),
    "fwd_large_b": KernelConfig(128, 64, num_warps=4, num_stages=1),
    "bwd_dx": KernelConfig(64, 64, num_warps=8, num_stages=2),
    "bwd_dparams": KernelConfig(64, 64, num_warps=8, num_stages=2),
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
