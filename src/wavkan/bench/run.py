"""``wavkan bench``: runs the levels the options ask for and writes the report (the package
docstring, ``wavkan.bench``, says what is measured and how)."""


from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from ..wavelets import WAVELETS
from .protocol import (
    COMPILED, CONV_CASES, CONV_COMPILED, CONV_MODES, CONV_PROVIDERS, CUDA_PORT, DEFAULT_SHAPES, DTYPE_BYTES, DTYPES,
    GB, MODES, NET_PROVIDERS, NO_EXP_PROVIDERS, NO_GPU_MESSAGE, OP_PROVIDERS, PASSES, PROTOCOLS,
    QUICK_BUDGET, QUICK_SHAPES, RECORDED_CEILING, RECORDED_SOURCE, Budget, NetworkProtocol, ceiling_row, conv_counts,
    conv_io_bytes, conv_limit_ms, eager_fits, make_row, network_evals, network_shape, network_widths, parse_shape,
    percentile, recorded_rows,
)
from .report import format_report, plot_results, write_csv
from .fake import FakeRunner
from .runners import CudaRunner, _failure

__all__ = ["main", "build_parser"]

# --- the run ---------------------------------------------------------------------------------


def _log(row: dict) -> None:
    level = row["level"] + (f" {row['protocol']}" if row["protocol"] else "")
    msg = f"[{level}] {row['provider']} {row['mode']} {row['shape']} {row['wavelet']} {row['dtype']}: "
    if row["status"] == "ok" and row["median_ms"] is not None:
        msg += f"{row['median_ms']:.4g} ms (p20 {row['p20_ms']:.4g}, p80 {row['p80_ms']:.4g}, {row['reps']} reps)"
        if row["level"] == "network":
            msg += f", mean {row['mean_ms']:.4g} ms"
        if row["latency_ms"] is not None:
            msg += f", sync per call {row['latency_ms']:.4g} ms"
        if row["host_ms"] is not None:
            msg += f", host {row['host_ms']:.3g} ms"
        if row["frac_ceiling"] is not None:
            msg += f", {row['evals_per_s']:.3g} evals/s, {100 * row['frac_ceiling']:.1f}% of exp2 ceiling"
        if row.get("frac_limit") is not None:
            msg += f", {100 * row['frac_limit']:.1f}% of the exp+FMA limit ({row['limit_ms']:.3g} ms)"
        if row["peak_gb"] is not None:
            msg += f", peak +{row['peak_gb']:.3g} GB"
    else:
        msg += f"{row['status']}" + (f" ({row['note']})" if row["note"] else "")
    print(msg, flush=True)


def _ceiling_rows(runner, given: Optional[float]) -> tuple:
    """(row, ceiling in exp2/s) measured on the spot, or given, or the recorded one on failure."""
    if given is not None:
        return ceiling_row("given", given, note="--ceiling on the command line"), given
    try:
        n_exp, times = runner.measure_ceiling()
    except Exception as exc:  # noqa: BLE001 - report, fall back to the recorded ceiling
        status, note = _failure(exc, compiled=False)
        note = f"{note}; %ceil uses the recorded {RECORDED_CEILING:.3g}/s"
        return ceiling_row(runner.source, None, status=status, note=note), RECORDED_CEILING
    ceiling = n_exp / (percentile(times, 50) * 1e-3)
    row = ceiling_row(runner.source, ceiling, times_ms=times, n_exp=n_exp, note="wavkan.kernels.ceiling")
    return row, ceiling


def run_op_level(runner, shapes, wavelets, providers, modes, dtype_name, ceiling) -> list:
    rows = []
    for shape in shapes:
        B, IN, OUT = shape
        inputs = runner.op_inputs(shape, dtype_name)
        for wavelet in wavelets:
            for provider in providers:
                base = dict(level="op", source=runner.source, provider=provider, wavelet=wavelet, dtype=dtype_name,
                            B=B, IN=IN, OUT=OUT, evals=B * IN * OUT,
                            ceiling=None if provider in NO_EXP_PROVIDERS else ceiling)  # fmt: skip
                fwd, compile_failed = None, None
                for mode in modes:
                    if provider == "reference-eager":
                        fits, need = eager_fits(shape, DTYPE_BYTES[dtype_name], mode, runner.free_bytes())
                        if not fits:
                            rows.append(make_row(**base, mode=mode, passes=PASSES[mode], status="skipped",
                                                 note=f"needs ~{need / GB:.0f} GB > free memory"))  # fmt: skip
                            _log(rows[-1])
                            continue
                    if compile_failed is not None:
                        rows.append(make_row(**base, mode=mode, passes=PASSES[mode], status="compile-failed",
                                             note=compile_failed))  # fmt: skip
                        _log(rows[-1])
                        continue
                    try:
                        if fwd is None:
                            fwd = runner.op_function(provider, wavelet)
                        m = runner.measure_op(fwd, inputs, mode)
                        row = make_row(**base, mode=mode, passes=PASSES[mode], times_ms=m.times_ms,
                                       peak_bytes=m.peak_bytes, peak_abs_bytes=m.peak_abs_bytes,
                                       host_ms=m.host_ms, first_call_s=m.first_call_s,
                                       latency_ms=m.latency_ms)  # fmt: skip
                    except Exception as exc:  # noqa: BLE001 - one failing row must not end the run
                        status, note = _failure(exc, compiled=provider in COMPILED)
                        if status == "compile-failed":
                            compile_failed = note
                        row = make_row(**base, mode=mode, passes=PASSES[mode], status=status, note=note)
                    finally:
                        runner.release_grads(inputs)
                        runner.cleanup()
                    rows.append(row)
                    _log(row)
                fwd = None
        del inputs
        runner.cleanup()
    return rows


def run_network_level(runner, wavelets, providers, dtype_name, ceiling, protocol: NetworkProtocol = CUDA_PORT) -> list:
    """Forward and backward rows of every network provider under ``protocol``, with its
    parameter count; the MLPs (no wavelet) once."""
    rows = []
    for wi, wavelet in enumerate(wavelets):
        for provider in providers:
            mlp = provider.startswith("mlp")
            if mlp and wi > 0:
                continue  # no wavelet: once is enough
            widths = network_widths(provider, protocol)
            base = dict(level="network", protocol=protocol.name, source=runner.source, provider=provider,
                        wavelet="" if mlp else wavelet, dtype=dtype_name, shape=network_shape(widths, protocol.batch),
                        B=protocol.batch, IN=widths[0], OUT=widths[-1],
                        evals=None if mlp else network_evals(widths, protocol.batch), ceiling=ceiling)  # fmt: skip
            model = None
            try:
                t0 = time.perf_counter()
                model = runner.network_model(provider, wavelet, dtype_name, protocol)
                built_s = time.perf_counter() - t0  # *-graphed: warm-up and capture
                base["params"] = runner.network_params(model)
                fwd, bwd = runner.measure_network(model, dtype_name, protocol, provider)
                new = [make_row(**base, mode=mode, times_ms=m.times_ms, peak_bytes=m.peak_bytes,
                                peak_abs_bytes=m.peak_abs_bytes, first_call_s=m.first_call_s + built_s,
                                host_ms=m.host_ms, note=m.note)
                       for mode, m in (("forward", fwd), ("backward", bwd))]  # fmt: skip
            except Exception as exc:  # noqa: BLE001
                status, note = _failure(exc, compiled=provider in COMPILED)
                new = [make_row(**base, mode=mode, status=status, note=note) for mode in ("forward", "backward")]
            finally:
                model = None
                runner.cleanup()
            for row in new:
                rows.append(row)
                _log(row)
    return rows



def _conv_row(base: dict, case, mode: str, m=None, **extra) -> dict:
    """A conv-level row; with a measurement, its time against the joint exp + FMA limit and its
    peak extra memory against the bytes of input, output, parameters and their gradients."""
    if m is None:
        return make_row(**base, mode=mode, passes=PASSES[mode], **extra)
    row = make_row(**base, mode=mode, passes=PASSES[mode], times_ms=m.times_ms, peak_bytes=m.peak_bytes,
                   peak_abs_bytes=m.peak_abs_bytes, host_ms=m.host_ms, first_call_s=m.first_call_s,
                   latency_ms=m.latency_ms, **extra)  # fmt: skip
    row["limit_ms"] = conv_limit_ms(case, mode, base["ceiling"])
    row["frac_limit"] = row["limit_ms"] / row["median_ms"]
    return row


def run_conv_level(runner, wavelets, providers, modes, dtype_name, ceiling, cases=CONV_CASES) -> list:
    """Each ``ConvCase`` under each provider and mode; the fused op's forward row notes its
    errors against the float64 reference (output and the four gradients)."""
    rows = []
    for case in cases:
        inputs = runner.conv_inputs(case, dtype_name)
        values, _taps = conv_counts(case)
        for wavelet in wavelets:
            for provider in providers:
                base = dict(level="conv", source=runner.source, provider=provider, wavelet=wavelet, dtype=dtype_name,
                            shape=case.shape, B=case.B, IN=case.C, OUT=case.OUT, evals=values, ceiling=ceiling)  # fmt: skip
                fwd, compile_failed = None, None
                for mode in modes:
                    io_gb = conv_io_bytes(case, DTYPE_BYTES[dtype_name]) / GB
                    if compile_failed is not None:
                        row = _conv_row(base, case, mode, status="compile-failed", note=compile_failed)
                    else:
                        try:
                            if fwd is None:
                                fwd = runner.conv_function(provider, case, wavelet)
                            m = runner.measure_conv(fwd, inputs, mode)
                            note = ""
                            if provider == "wavkan" and mode == modes[0]:
                                errors = runner.conv_errors(inputs, case, wavelet)
                                note = "err vs f64: " + " ".join(f"{k} {v:.0e}" for k, v in errors.items())
                            row = _conv_row(base, case, mode, m, note=note)
                        except Exception as exc:  # noqa: BLE001 - one failing row must not end the run
                            status, note = _failure(exc, compiled=provider in CONV_COMPILED)
                            if status == "compile-failed":
                                compile_failed = note
                            row = _conv_row(base, case, mode, status=status, note=note)
                        finally:
                            runner.release_grads(inputs)
                            runner.cleanup()
                    row["io_gb"] = io_gb
                    rows.append(row)
                    _log(row)
                fwd = None
        del inputs
        runner.cleanup()
    return rows


def positive_rate(text: str) -> float:
    """argparse type: a finite rate > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def check_out_folder(out: str) -> None:
    """Create ``out`` (and its parents) and check that results.csv can be written there: an
    OSError naming the path otherwise (a file in its place, a read-only folder, ...)."""
    from ..files import FolderError, make_folder

    if not out:
        raise FolderError("an empty path is not a folder")
    make_folder(out)
    csv = Path(out) / "results.csv"
    if csv.exists() and not csv.is_file():
        raise FolderError(f"{csv} exists and is not a file")
    if not os.access(out, os.W_OK | os.X_OK):
        raise FolderError(f"{out} is not writable")


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "wavkan bench",
        description="Benchmark the fused Wav-KAN op and network (CUDA GPU only): per op row the GPU time, the "
        "latency with a sync per call and the host time, beside nn.Linear and the paper's formula eager and "
        "compiled; networks eager, compiled, graphed, under the CUDA port's or KAN-benchmarking's protocol, with "
        "parameter counts; with --level conv, convolutional layers beside torch-conv-kan's wavelet convolution; "
        "evaluations/s against the measured exp2 ceiling, peak memory; CSV, PNG plots, table.",
    )
    p.add_argument("--out", default="bench-results", help="output folder for results.csv and plots (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a fast subset: shapes 256x1024x1024 and 4096x1024x1024, fewer reps")
    p.add_argument("--level", choices=("all", "op", "network", "conv"), default="all",
                   help="what to run: all = op and network; conv = the convolution layers (default: %(default)s)")  # fmt: skip
    p.add_argument("--shape", type=parse_shape, action="append", metavar="BxINxOUT",
                   help="op shape, repeatable; replaces the default B in {64,256,1024,4096} x 1024 x 1024")  # fmt: skip
    p.add_argument("--wavelet", choices=(*WAVELETS, "all"), default="mexican_hat", help="default: %(default)s")
    p.add_argument("--dtype", choices=tuple(DTYPES), nargs="+", default=["fp32"],
                   help="one or more, each run in turn (default: fp32)")  # fmt: skip
    p.add_argument("--mode", choices=MODES, nargs="+", default=list(MODES), help="op modes (default: all)")
    p.add_argument("--provider", choices=OP_PROVIDERS, nargs="+", default=list(OP_PROVIDERS), help="op providers (default: all)")
    p.add_argument("--net-provider", choices=NET_PROVIDERS, nargs="+", default=list(NET_PROVIDERS),
                   help="network providers (default: all)")  # fmt: skip
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), nargs="+", default=[CUDA_PORT.name],
                   help="network protocols, each in turn (default: %(default)s); kan-benchmarking keeps its own "
                   "1 + 10 steps unless --reps is given")  # fmt: skip
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per row (default: fill ~0.25 s, 10..200)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per row after the first (default: 3)")
    p.add_argument("--ceiling", type=positive_rate, default=None, help="exp2/s to use instead of measuring it (> 0)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-recorded", action="store_true", help="leave out the recorded rows (benchmarks/RECORDED.md)")
    # fake timings through the whole plumbing, for tests and CPU checks: not a benchmark
    p.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    return p


# The options each level reads (``--level all`` reads every one); any other option given with a
# value other than its default is named as ignored, so that a run is never taken for what it is not.
_LEVEL_OPTIONS = {
    "op": ("shape", "provider", "mode"),
    "network": ("net_provider", "protocol"),
    "conv": ("mode",),
}


def ignored_options(args, parser: argparse.ArgumentParser) -> list:
    """Notes naming the options given with a non-default value that ``args.level`` does not read,
    and the --mode values the conv level has no row for."""
    if args.level == "all":
        return []
    read = _LEVEL_OPTIONS[args.level]
    unread = sorted({o for opts in _LEVEL_OPTIONS.values() for o in opts} - set(read))
    given = [o for o in unread if getattr(args, o) != parser.get_default(o)]
    notes = []
    if given:
        flags = ", ".join("--" + o.replace("_", "-") for o in given)
        notes.append(f"note: {flags} {'does' if len(given) == 1 else 'do'} not apply to --level {args.level}; ignored")
    if args.level == "conv" and args.mode != parser.get_default("mode"):
        extra = [m for m in args.mode if m not in CONV_MODES]
        if extra:
            notes.append(f"note: --mode {' '.join(extra)}: the conv level times {' and '.join(CONV_MODES)} only; ignored")
    return notes


def main(argv=None, prog: Optional[str] = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    for note in ignored_options(args, parser):
        print(note)
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_GPU_MESSAGE)
        return 0
    try:  # before anything runs: a run of minutes must not end in an unusable folder
        check_out_folder(args.out)
    except OSError as e:
        print(f"{prog or 'wavkan bench'}: error: --out: {e}", file=sys.stderr)
        return 2
    budget = QUICK_BUDGET if args.quick else Budget()
    if args.reps is not None or args.warmup is not None:
        budget = Budget(warmup=budget.warmup if args.warmup is None else args.warmup, target_s=budget.target_s,
                        min_reps=budget.min_reps, max_reps=budget.max_reps, fixed_reps=args.reps)  # fmt: skip
    shapes = args.shape or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    wavelets = list(WAVELETS) if args.wavelet == "all" else [args.wavelet]
    runner = FakeRunner(budget) if args.dry_run else CudaRunner(budget)
    env = runner.environment()
    if args.dry_run:
        print("DRY RUN: made-up timings to check the CSV/plot/table plumbing; nothing is measured.")
    print(f"wavkan bench on {env['gpu']}: torch {env['torch']}, triton {env['triton']}, cuda {env['cuda'] or '-'}")

    ceiling_row, ceiling = _ceiling_rows(runner, args.ceiling)
    _log(ceiling_row)
    rows = [ceiling_row]
    for dtype_name in dict.fromkeys(args.dtype):
        if args.level in ("all", "op"):
            rows += run_op_level(runner, shapes, wavelets, args.provider, args.mode, dtype_name, ceiling)
        if args.level in ("all", "network"):
            for name in dict.fromkeys(args.protocol):
                rows += run_network_level(runner, wavelets, args.net_provider, dtype_name, ceiling, PROTOCOLS[name])
        if args.level == "conv":
            modes = [m for m in args.mode if m in CONV_MODES] or list(CONV_MODES)
            rows += run_conv_level(runner, wavelets, CONV_PROVIDERS, modes, dtype_name, ceiling)
    if not args.no_recorded:
        rows += [r for r in recorded_rows() if (args.level == "all" or r["level"] in (args.level, "ceiling"))
                 and r["protocol"] in ("", *args.protocol)]  # fmt: skip
    for row in rows:
        row.update(env if row["source"] != RECORDED_SOURCE else {"gpu": "NVIDIA H200 (recorded)", "date": "2026-11-28"})

    print("\n" + format_report(rows), flush=True)  # first: the table survives a failed write
    csv_path = os.path.join(args.out, "results.csv")
    write_csv(rows, csv_path)
    plots = [] if args.no_plots else plot_results(rows, args.out)
    print(f"\nwrote {csv_path}" + "".join(f"\nwrote {p}" for p in plots))
    return 0
