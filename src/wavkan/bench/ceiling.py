"""The exp2 throughput ceiling of the GPU, measured on the spot for the benchmark.

The fused Wav-KAN forward is bound by the exponential unit: one ``exp2`` per evaluation
(benchmarks/RECORDED.md). This kernel measures that unit's rate alone. Every program holds
``CHAINS`` independent accumulators per element and iterates ``a = exp2(a * c)`` on each,
``n_iter`` times: each step depends on the previous one (nothing can be folded, hoisted or
vectorised away: ``c`` and ``n_iter`` are runtime arguments), while the independent chains
and the many resident warps hide the latency. The sum of the chains is stored, so nothing is
dead code. Per exp2 the loop spends one fp32 multiply (plus the range check of
``ex2.approx.f32``) on the FMA pipe, which is 8x wider than the MUFU unit, so MUFU.EX2 is
the bottleneck: SMs x 16 per clock x the SM clock (benchmarks/STATUS.md: that product and the
measured rate on an H200).

For c = -1 every chain converges to the fixed point of a = 2^-a (about 0.6412), so the values
stay finite and normal whatever ``n_iter``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["CHAINS", "exp2_chains", "measure_exp2_rate"]

CHAINS = 8  # independent exp2 chains per element (the a0..a7 below)


@triton.jit
def _exp2_ceiling_kernel(out_ptr, c, n_iter, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    seed = (pid * BLOCK + offs).to(tl.float32) * 1e-9
    a0 = seed + 0.125
    a1 = seed + 0.25
    a2 = seed + 0.375
    a3 = seed + 0.5
    a4 = seed + 0.625
    a5 = seed + 0.75
    a6 = seed + 0.875
    a7 = seed + 1.0
    for _ in range(n_iter):
        a0 = tl.exp2(a0 * c)
        a1 = tl.exp2(a1 * c)
        a2 = tl.exp2(a2 * c)
        a3 = tl.exp2(a3 * c)
        a4 = tl.exp2(a4 * c)
        a5 = tl.exp2(a5 * c)
        a6 = tl.exp2(a6 * c)
        a7 = tl.exp2(a7 * c)
    acc = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
    tl.store(out_ptr + pid * BLOCK + offs, acc)


def exp2_chains(out: torch.Tensor, n_iter: int, c: float = -1.0, block: int = 256, num_warps: int = 4) -> int:
    """Run the chains once into ``out``: (programs * block,) float32, contiguous.

    Element k of program p starts its chain j (j = 0..7) at p*block*1e-9 + k*1e-9 + (j+1)/8,
    applies ``a = exp2(a * c)`` ``n_iter`` times and stores the sum of its 8 chains.
    Returns the number of exp2 evaluated: programs * block * CHAINS * n_iter.
    """
    if out.dtype != torch.float32 or not out.is_contiguous() or out.numel() % block:
        raise ValueError(f"out must be a contiguous float32 tensor of a multiple of {block} elements")
    programs = out.numel() // block
    _exp2_ceiling_kernel[(programs,)](out, float(c), int(n_iter), BLOCK=block, num_warps=num_warps)
    return programs * block * CHAINS * n_iter


def measure_exp2_rate(device=None, n_iter: int = 1024, programs_per_sm: int = 64, reps: int = 10, warmup: int = 2):
    """Time the chains with CUDA events: returns (exp2 count per launch, list of launch times in ms).

    The rate is count / median time. Defaults: 64 programs of 4 warps per SM (4 waves at full
    occupancy), 1024 steps: 1.8e10 exp2 on an H200, long enough that launch costs vanish.
    """
    device = torch.device("cuda" if device is None else device)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    block = 256
    out = torch.empty(sms * programs_per_sm * block, device=device, dtype=torch.float32)
    for _ in range(warmup):
        n_exp = exp2_chains(out, n_iter, block=block)
    pairs = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        n_exp = exp2_chains(out, n_iter, block=block)
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize(device)
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError("exp2 ceiling kernel produced non-finite values")
    return n_exp, [s.elapsed_time(e) for s, e in pairs]
