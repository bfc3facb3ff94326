"""A/B of launch configs for one fused kernel, in one process, rounds interleaved (GPU).

    PYTHONPATH=src python benchmarks/config_ab.py KIND --wavelet mexican_hat,dog --rows 256,1024 \
        --variants 'default;w4:block_n=64:num_warps=4:maxnreg=None;u1:unroll=1' [--rounds 2]

KIND is ``fwd``, ``bwd_dx`` or ``bwd_dparams`` (``kernels.tuning.default_config``'s kinds). A
variant is ``name:field=value:...`` over the shipped config of each (wavelet, rows) (fields of
``KernelConfig``; ``None``, ``True``, ``False`` or an int; ``split=N`` forces the split); the
variant named ``default`` (no fields) is the shipped one and the baseline. Each round times
every variant once: the median of 25 calls, CUDA events around each call with a synchronize
after it, over three input sets; a variant's figure is its best round. Operands:
``sweeplib.operands`` at 1024 x 1024 edges. Prints per variant the time, each round's, the
ratio to ``default``, the share of the exp2 ceiling measured first, and the largest relative
difference of its outputs from the default's (a check that the variant computes the same).
The logs of v15 (benchmarks/HISTORY.md) were written by this script's first form.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch

from sweeplib import SIZE, kernel_calls, latency_ms, operands, seed_and_measure_ceiling
from wavkan import get_wavelet
from wavkan.kernels.tuning import default_config


def parse_variant(text: str) -> tuple:
    name, *fields = text.split(":")
    values = {}
    for item in fields:
        key, raw = item.split("=")
        values[key] = {"None": None, "True": True, "False": False}.get(raw, raw)
        if isinstance(values[key], str):
            values[key] = int(raw)
    return name, values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("fwd", "bwd_dx", "bwd_dparams"))
    p.add_argument("--wavelet", default="mexican_hat", help="comma-separated wavelet names")
    p.add_argument("--rows", default="1024", help="comma-separated B")
    p.add_argument("--variants", required=True, help="';'-separated name:field=value:... ('default' = shipped)")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    variants = [parse_variant(v) for v in args.variants.split(";")]
    if "default" not in {name for name, _ in variants}:
        variants.insert(0, ("default", {}))
    ceiling = seed_and_measure_ceiling()
    device = torch.device("cuda")
    for wname in args.wavelet.split(","):
        wav = get_wavelet(wname)
        for rows in (int(r) for r in args.rows.split(",")):
            sets = [kernel_calls(*operands(rows, SIZE), wav)[args.kind] for _ in range(3)]
            shipped = default_config(args.kind, device, rows, wav)
            configs = {name: dataclasses.replace(shipped, **fields) for name, fields in variants}
            times: dict = {name: [] for name in configs}
            for _ in range(args.rounds):
                for name, cfg in configs.items():
                    for call in sets:  # warm-up: compiles, caches the packs
                        call(cfg)
                    torch.cuda.synchronize()
                    per_set = [latency_ms(lambda: call(cfg)) for call in sets]
                    times[name].append(statistics.median(per_set))
            reference = [o.double() for o in sets[0](shipped)]
            base = min(times["default"])
            for name, cfg in configs.items():
                outputs = sets[0](cfg)
                diff = max(((o.double() - r).norm() / r.norm()).item() for o, r in zip(outputs, reference))
                best = min(times[name])
                rounds = "/".join(f"{t:.4f}" for t in times[name])
                print(f"{args.kind} {wname} B={rows} {name}: {best:.4f} ms ({rounds}) x{base / best:.3f} against "
                      f"default, {rows * SIZE * SIZE / (best * 1e-3) / ceiling * 100:.1f}% of the exp2 ceiling, "
                      f"largest relative difference {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
