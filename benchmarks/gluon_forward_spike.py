"""A measurement spike, not part of the package: the forward's short mexican_hat loop written in
Gluon (Triton's explicit-layout dialect) with the accumulator's layout chosen by hand, so that x
and the edge rows load straight into its slice layouts (no shared memory, no barrier in the
loop), beside the shipped Triton forward on the same inputs. Fast path only: x staged (IN, B_PAD)
fp32, the packed edge constants, no split, B and out whole tiles.

    PYTHONPATH=src python benchmarks/gluon_forward_spike.py      # an H100/H200; triton >= 3.6

What it measured (results/h200-2026-11-30e/gluon_spike_*.log) and what that means: HISTORY.md, v14.
Those runs (triton 3.6) used a Gluon copy of the polynomial; the script now calls the package's
``exp2_fma`` and the constant it folds, which compile under Gluon with triton 3.9 and were not
run on a GPU since.
"""

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

# Gluon kernels may call plain ``triton.jit`` functions: the package's own polynomial exp2.
from wavkan.kernels.device import exp2_fma
from wavkan.kernels.forward import NEG_TWO_LN2


@gluon.jit
def gfwd_kernel(xs_ptr, pack_ptr, y_ptr, B, OUT, B_PAD, IN, OUT_PAD, PLANE, stride_yb,
                BLOCK_B: gl.constexpr, BLOCK_OUT: gl.constexpr, SPT_B: gl.constexpr, SPT_O: gl.constexpr,
                TPW_B: gl.constexpr, TPW_O: gl.constexpr, WPC_B: gl.constexpr, WPC_O: gl.constexpr,
                UNROLL: gl.constexpr, POLY: gl.constexpr):
    L: gl.constexpr = gl.BlockedLayout([SPT_B, SPT_O], [TPW_B, TPW_O], [WPC_B, WPC_O], [0, 1])
    RL: gl.constexpr = gl.SliceLayout(1, L)
    CL: gl.constexpr = gl.SliceLayout(0, L)
    pid_b = gl.program_id(0)
    pid_o = gl.program_id(1)
    rows = pid_b * BLOCK_B + gl.arange(0, BLOCK_B, layout=RL)
    cols = pid_o * BLOCK_OUT + gl.arange(0, BLOCK_OUT, layout=CL)
    acc = gl.zeros([BLOCK_B, BLOCK_OUT], gl.float32, L)
    x_n = gl.load(xs_ptr + rows)
    a_n = gl.load(pack_ptr + cols)
    t_n = gl.load(pack_ptr + PLANE + cols)
    w_n = gl.load(pack_ptr + 2 * PLANE + cols)
    for i0 in range(0, IN, UNROLL):
        for k in gl.static_range(UNROLL):
            x = x_n
            a = a_n
            t = t_n
            w = w_n
            nxt = gl.minimum(i0 + k + 1, IN - 1)
            x_n = gl.load(xs_ptr + nxt * B_PAD + rows)
            a_n = gl.load(pack_ptr + nxt * OUT_PAD + cols)
            t_n = gl.load(pack_ptr + PLANE + nxt * OUT_PAD + cols)
            w_n = gl.load(pack_ptr + 2 * PLANE + nxt * OUT_PAD + cols)
            zs = gl.fma(gl.expand_dims(x, 1), gl.expand_dims(a, 0), gl.expand_dims(-(t * a), 0))
            q = zs * -zs
            f = gl.fma(q, gl.expand_dims(w * NEG_TWO_LN2, 0), gl.expand_dims(-w, 0))
            if POLY and k == UNROLL - 1:
                acc = gl.fma(f, exp2_fma(q), acc)
            else:
                acc = gl.fma(f, gl.exp2(q), acc)
    mask = gl.expand_dims(rows < B, 1) & gl.expand_dims(cols < OUT, 0)
    gl.store(y_ptr + gl.expand_dims(rows, 1) * stride_yb + gl.expand_dims(cols, 0), acc, mask=mask)


LAYOUTS = {
    # name: (BLOCK_B, BLOCK_OUT, SPT_B, SPT_O, TPW_B, TPW_O, WPC_B, WPC_O, warps)
    "8x8": (128, 64, 8, 8, 4, 8, 4, 1, 4),
    "4x8": (64, 64, 4, 8, 4, 8, 4, 1, 4),
    "8x4": (128, 64, 8, 4, 4, 8, 4, 2, 8),
    "4x4w8": (64, 64, 4, 4, 4, 8, 4, 2, 8),
    "16x4": (128, 64, 16, 4, 2, 16, 4, 1, 4),
}


def gfwd(xs, pack, B, OUT, layout="8x8", unroll=2, poly=False):
    BB, BO, sb, so, tb, to, wb, wo, warps = LAYOUTS[layout]
    IN, B_PAD = xs.shape
    OUT_PAD = pack.shape[2]
    y = torch.empty((B, OUT), device=xs.device, dtype=torch.float32)
    grid = (B_PAD // BB, OUT_PAD // BO)
    gfwd_kernel[grid](xs, pack, y, B, OUT, B_PAD, IN, OUT_PAD, pack.stride(0), y.stride(0),
                      BB, BO, sb, so, tb, to, wb, wo, unroll, poly, num_warps=warps)
    return y


import statistics  # noqa: E402  (the runner below)
from wavkan import get_wavelet  # noqa: E402
from wavkan.kernels import forward as new
from wavkan.kernels.staging import pack_edge_constants, stage_transposed
from wavkan.bench.ceiling import measure_exp2_rate


def main():
    dev = torch.device("cuda")
    n_exp, times = measure_exp2_rate(dev)
    rate = n_exp / (statistics.median(times) * 1e-3)
    print(f"exp2 ceiling {rate:.4g}/s", flush=True)
    wav = get_wavelet("mexican_hat")
    def time_fn(fn, sets, reps=30):
        for a in sets[:3]: fn(*a)
        torch.cuda.synchronize(); ts = []
        for r in range(reps):
            a = sets[r % len(sets)]
            e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True)
            e0.record(); fn(*a); e1.record(); torch.cuda.synchronize(); ts.append(e0.elapsed_time(e1))
        return statistics.median(ts)
    VARS = [("16x4", 2, False), ("16x4", 8, False), ("16x4", 8, True), ("16x4", 4, True), ("16x4", 16, True), ("8x4", 8, True), ("8x4", 4, False)]
    for B in (4096,):
        g = torch.Generator(device=dev); g.manual_seed(B)
        sets, gsets = [], []
        for _ in range(3):
            x = torch.randn(B, 1024, device=dev, generator=g)
            s = torch.rand(1024, 1024, device=dev, generator=g) + 1.0
            t = (torch.rand(1024, 1024, device=dev, generator=g) * 2 - 1) * 0.3
            w = torch.randn(1024, 1024, device=dev, generator=g) / 32
            sets.append((x, s, t, w))
            k, m = wav.fold
            pack = pack_edge_constants(s, t, w, 1024, False, k, m)
            xs = stage_transposed(x, B)
            gsets.append((xs, pack))
        res = {}
        for rnd in range(2):
            res.setdefault("triton", []).append(time_fn(lambda x, s, t, w: new.wavkan_fwd(x, s, t, w, wav), sets))
            for lay, un, poly in VARS:
                    name = f"{lay}u{un}{'p' if poly else ''}"
                    try:
                        res.setdefault(name, []).append(time_fn(lambda xs, pack: gfwd(xs, pack, B, 1024, lay, un, poly), gsets))
                    except Exception as e:
                        if rnd == 0:
                            print(f"  {name}: {type(e).__name__}: {str(e)[:400]}", flush=True)
        ref = new.wavkan_fwd(*sets[0], wav).double()
        errs = {}
        for lay, un, poly in VARS:
            try:
                got = gfwd(*gsets[0], B, 1024, lay, un, poly).double()
                errs[f"{lay}u{un}{poly}"] = ((got - ref).norm() / ref.norm()).item()
            except Exception:
                pass
        ev = B * 1024 * 1024
        for name, v in res.items():
            print(f"B={B} {name:8s} " + "/".join(f"{x:.4f}" for x in v) + f"  {ev / (min(v) * 1e-3) / rate * 100:.1f}% ceiling", flush=True)
        print("rel diff vs triton:", errs, flush=True)


if __name__ == "__main__":
    main()
