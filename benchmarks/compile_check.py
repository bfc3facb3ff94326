"""Compile every kernel for an H100/H200 (sm_90) without a GPU and report its resources.

    python benchmarks/compile_check.py [--sass DIR]

Uses Triton's ahead-of-time compiler and the ptxas bundled with Triton, so it runs on a CPU
machine: it catches compile errors before GPU time is spent, and prints registers, spills
and the count of each SASS instruction class in every kernel (MUFU = special-function unit,
FFMA/FMUL/FADD = the fp32 pipe), which is what benchmarks/HISTORY.md reasons with.
"""

from __future__ import annotations

import argparse
import dataclasses
import collections
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from wavkan import WAVELETS, get_wavelet
from wavkan.kernels import backward, forward
from wavkan.kernels.tuning import default_config, loop_unroll

TARGET = GPUTarget("cuda", 90, 32)
ALIGNED_INTS = {"B_PAD", "OUT_PAD", "IN_PAD", "PLANE", "PLANE2", "IN", "OUT", "stride_xb", "stride_gb", "stride_so", "stride_to",
                "stride_wo", "stride_do", "stride_db", "stride_yb"}
FLOATS = {"z_scale", "psi_scale", "dpsi_scale"}
# A launch specialises an int argument equal to 1 into a constant; contiguous inputs make these
# strides 1, and the layouts Triton picks (so the loads, registers and SASS) depend on it.
UNIT_STRIDES = {"stride_xi", "stride_si", "stride_ti", "stride_wi", "stride_yo", "stride_go", "stride_di"}


def _signature(fn, pointers: dict, constexprs: dict):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = pointers[name]
        elif name in FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def kernels(wavelet: str, unroll=None, maxnreg=None, rows=0):
    wav = get_wavelet(wavelet)
    code = wav.code
    fwd, dx, dp = (default_config(kind, _cuda(), rows, wav) for kind in ("fwd", "bwd_dx", "bwd_dparams"))
    if unroll is not None:
        fwd, dx, dp = (dataclasses.replace(c, unroll=unroll) for c in (fwd, dx, dp))
    if maxnreg is not None:
        fwd, dx, dp = (dataclasses.replace(c, maxnreg=maxnreg) for c in (fwd, dx, dp))
    f32 = "*fp32"
    i32 = "*i32"
    # As the launchers pass them for a large unsplit call: x read in place with int32 row
    # offsets (X_ROWS_32, G_ROWS_32), no split sum, whole tiles (EVEN_*).
    yield "fwd", forward._wavkan_fwd_kernel, {"x_ptr": f32, "pack_ptr": f32, "y_ptr": f32, "part_ptr": f32, "counter_ptr": i32}, \
        {"WAVELET": code, "FAST": True, "PREFETCH": fwd.prefetch, "UNROLL": loop_unroll(fwd, wav), "X_STAGED": fwd.stage,
         "X_ROWS_32": True, "SPLIT_SUM": False, "BLOCK_B": fwd.block_m, "BLOCK_OUT": fwd.block_n}, fwd
    yield "bwd_dx", backward._wavkan_bwd_dx_kernel, \
        {**{k: f32 for k in ("x_ptr", "g_ptr", "pack_ptr", "dx_ptr", "part_ptr")}, "counter_ptr": i32}, \
        {"WAVELET": code, "FAST": True, "PREFETCH": dx.prefetch, "UNROLL": loop_unroll(dx, wav), "G_ROWS_32": True,
         "SPLIT_SUM": False, "BLOCK_B": dx.block_m, "BLOCK_IN": dx.block_n}, dx
    yield "bwd_dparams", backward._wavkan_bwd_dparams_kernel, \
        {**{k: f32 for k in ("x_ptr", "g_ptr", "s_ptr", "t_ptr", "w_ptr", "ds_ptr", "dt_ptr", "dw_ptr", "part_ptr")},
         "counter_ptr": i32}, \
        {"WAVELET": code, "FAST": True, "PREFETCH": dp.prefetch, "UNROLL": loop_unroll(dp, wav), "EVEN_IN": True,
         "EVEN_OUT": True, "SPLIT_SUM": False, "BLOCK_OUT": dp.block_m, "BLOCK_IN": dp.block_n}, dp


def _cuda():
    import torch

    return torch.device("cuda")


def _cuobjdump(cubin: bytes, flag: str) -> str:
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([cuobjdump, flag, f.name], capture_output=True, text=True, check=True).stdout


_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)([^;]*);")


def _instructions(sass: str) -> list:
    """(address, opcode class, operands) of every SASS instruction."""
    return [(int(m.group(1), 16), m.group(2).split(".")[0], m.group(3)) for m in _INSTR.finditer(sass)]


def _hottest_loop(instrs: list) -> collections.Counter:
    """Opcode counts of the innermost backward-branch loop that holds the most MUFU ops (the
    kernel's main loop), or an empty Counter when there is no loop."""
    best = collections.Counter()
    for addr, op, operands in instrs:
        target = re.search(r"0x([0-9a-f]+)", operands) if op == "BRA" else None
        if target is None or int(target.group(1), 16) >= addr:
            continue
        start = int(target.group(1), 16)
        body = collections.Counter(o for a, o, _ in instrs if start <= a <= addr)
        if body["MUFU"] > best["MUFU"]:
            best = body
    return best


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sass", help="write each kernel's SASS into this folder")
    p.add_argument("--wavelet", default="all")
    p.add_argument("--unroll", type=int, help="the main loops' unroll factor instead of the defaults' (Gaussian wavelets)")
    p.add_argument("--maxnreg", type=int, help="cap registers per thread (ptxas .maxnreg)")
    p.add_argument("--rows", type=int, default=0, help="the B whose default configs to compile")
    p.add_argument("--ttgir", help="write each kernel's TritonGPU IR (its layouts) into this folder")
    args = p.parse_args()
    names = WAVELETS if args.wavelet == "all" else [args.wavelet]
    for wavelet in names:
        for name, fn, pointers, constexprs, cfg in kernels(wavelet, args.unroll, args.maxnreg, args.rows):
            constexprs = {**constexprs, **{n: 1 for n in fn.arg_names if n in UNIT_STRIDES}}
            # As a real launch specialises them: pointers and padded sizes divisible by 16.
            aligned = [k for k, n in enumerate(fn.arg_names) if n in pointers or n in ALIGNED_INTS]
            attrs = {(k,): [["tt.divisibility", 16]] for k in aligned}
            src = ASTSource(fn, _signature(fn, pointers, constexprs), constexprs, attrs)
            options = cfg.launch_options()
            compiled = triton.compile(src, target=TARGET, options=options)
            sass = _cuobjdump(compiled.asm["cubin"], "-sass")
            usage = _cuobjdump(compiled.asm["cubin"], "-res-usage")
            regs = int(re.search(r"REG:(\d+)", usage).group(1))
            stack = int(re.search(r"STACK:(\d+)", usage).group(1))
            instrs = _instructions(sass)
            ops = collections.Counter(op for _, op, _ in instrs)
            print(f"{wavelet:12s} {name:12s} regs={regs:3d} stack={stack} "
                  f"MUFU={ops['MUFU']} FFMA={ops['FFMA']} FMUL={ops['FMUL']} FADD={ops['FADD']} "
                  f"LDG={ops['LDG']} total={sum(ops.values())}")
            loop = _hottest_loop(instrs)
            if loop:
                mufu = max(1, loop["MUFU"])
                print(f"{'':25s} main loop: {sum(loop.values())} instructions, MUFU={loop['MUFU']} "
                      f"LDG={loop['LDG']} ({sum(loop.values()) / mufu:.2f} issued per MUFU, "
                      f"{loop['LDG'] / mufu:.2f} LDG per MUFU); most issued: "
                      + " ".join(f"{op}={n}" for op, n in loop.most_common(8)))
            if args.ttgir:
                os.makedirs(args.ttgir, exist_ok=True)
                with open(os.path.join(args.ttgir, f"{wavelet}.{name}.ttgir"), "w") as f:
                    f.write(compiled.asm["ttgir"])
            if args.sass:
                os.makedirs(args.sass, exist_ok=True)
                with open(os.path.join(args.sass, f"{wavelet}.{name}.sass"), "w") as f:
                    f.write(sass)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
