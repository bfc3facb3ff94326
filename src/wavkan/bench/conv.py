"""The conv level of ``wavkan bench`` (``--level conv``): one convolutional Wav-KAN layer without
BatchNorm, the fused op against torch-conv-kan's wavelet branch restated, eager and compiled.

Cases (``protocol.CONV_CASES``), modes ``forward`` and ``full`` (forward+backward), providers
``wavkan``, ``conv-kan-eager``, ``conv-kan-compiled``. Timing, memory and repetitions are the op
level's (``CudaRunner.measure_op``: CUDA events, the GPU's time, peak memory above what was
allocated before the step). Each row adds the joint limit of the exp unit and the FMA pipe
(``protocol.conv_limit_ms``) and the fraction of it reached, and the bytes of x, y, the
parameters and a gradient of each (``protocol.conv_io_bytes``), the yardstick of the peak extra
memory; the fused op's first row notes its errors against the float64 reference (output and the
four gradients). With ``--dry-run`` the times are made up (a cost model), as elsewhere.
"""

from __future__ import annotations

import math

import torch

from ..ops_conv import wavkan_conv
from ..wavelets import get_wavelet
from .models import conv_kan_wavelet_branch
from .protocol import (
    CONV_CASES, CONV_COMPILED, CONV_MODES, CONV_PROVIDERS, DTYPE_BYTES, DTYPES, GB, PASSES, conv_counts,
    conv_io_bytes, conv_limit_ms, input_sets_needed, make_row,
)  # fmt: skip
from .runners import Measurement, _failure

__all__ = ["run_conv_level", "format_conv_report"]

DRY_RUN_SOURCE = "dry-run"
# --dry-run: made-up rates (wavelet values per second) per provider, taps at 1/8 of a value.
_FAKE_RATES = {"wavkan": 2.5e12, "conv-kan-eager": 4e10, "conv-kan-compiled": 5e11}


def conv_inputs(runner, case, dtype_name) -> list:
    """Input sets (x, scale, translation, weights, grad_y) for one case, rotating over enough
    sets to span twice the L2 cache; the parameters as ``WavKANConv*d`` initialises them, with
    scale and translation moved off 1 and 0."""
    dtype, dev = DTYPES[dtype_name], runner.device
    ig = case.C // case.groups
    fan_in = ig * math.prod(case.kernel)
    n = input_sets_needed(conv_io_bytes(case, DTYPE_BYTES[dtype_name]) // 2, runner.l2_bytes)
    gen = torch.Generator(device=dev).manual_seed(0)

    def leaf(t):
        return t.to(dtype).requires_grad_()

    sets = []
    for _ in range(n):
        x = leaf(torch.randn(case.B, case.C, *case.spatial, device=dev, generator=gen))
        s = leaf(0.5 + torch.rand(case.OUT, ig, device=dev, generator=gen))
        t = leaf(0.5 * torch.randn(case.OUT, ig, device=dev, generator=gen))
        w = leaf((2 * torch.rand(case.OUT, ig, *case.kernel, device=dev, generator=gen) - 1) / math.sqrt(fan_in))
        g = torch.randn(case.B, case.OUT, *case.out_spatial, device=dev, generator=gen).to(dtype)
        sets.append((x, s, t, w, g))
    return sets


def conv_function(provider, case, wavelet):
    """f(x, scale, translation, weights) -> y for one provider."""
    geometry = (case.stride, case.padding, case.dilation, case.groups)
    if provider == "wavkan":
        return lambda x, s, t, w: wavkan_conv(x, s, t, w, *geometry, wavelet, backend="triton")
    wav = get_wavelet(wavelet)  # resolved here, outside any compiled region

    def branch(x, s, t, w):
        return conv_kan_wavelet_branch(x, s, t, w, *geometry, wav)

    if provider == "conv-kan-eager":
        return branch
    torch.compiler.reset()  # one compiled graph per case
    return torch.compile(branch, dynamic=False)


def conv_errors(sets, case, wavelet) -> dict:
    """||a - ref|| / ||ref|| of the fused op's output and four gradients on the first input set,
    ref = the float64 reference (chunked, ``wavkan.reference_conv``)."""
    x, s, t, w, g = sets[0]
    geometry = (case.stride, case.padding, case.dilation, case.groups)
    results = []
    for backend, cast in (("triton", lambda a: a), ("reference", lambda a: a.double())):
        leaves = [cast(a.detach()).requires_grad_() for a in (x, s, t, w)]
        y = wavkan_conv(*leaves, *geometry, wavelet, backend=backend)
        y.backward(cast(g))
        results.append([y.detach()] + [leaf.grad for leaf in leaves])
    return {name: ((got.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()
            for name, got, ref in zip(("y", "dx", "ds", "dt", "dw"), *results)}  # fmt: skip


def _fake_measurement(runner, provider, case, mode) -> Measurement:
    values, taps = conv_counts(case)
    ms = (values + taps / 8) * {"forward": 1.0, "full": 2.5}[mode] / _FAKE_RATES[provider] * 1e3 + 0.01
    peak = conv_io_bytes(case, 4) * (0.8 if provider == "wavkan" else 20.0)
    return Measurement([ms * (1 + 0.01 * k) for k in range(-5, 6)], peak, peak + 1e8, 0.0, 0.05)


def _row(base: dict, case, mode: str, ceiling: float, m=None, **extra) -> dict:
    """A conv row; with a measurement, its time against the joint exp + FMA limit."""
    if m is None:
        row = make_row(**base, mode=mode, passes=PASSES[mode], **extra)
    else:
        row = make_row(**base, mode=mode, passes=PASSES[mode], times_ms=m.times_ms, peak_bytes=m.peak_bytes,
                       peak_abs_bytes=m.peak_abs_bytes, host_ms=m.host_ms, first_call_s=m.first_call_s, **extra)  # fmt: skip
        row["limit_ms"] = conv_limit_ms(case, mode, ceiling)
        row["frac_limit"] = row["limit_ms"] / row["median_ms"]
    row["io_gb"] = conv_io_bytes(case, DTYPE_BYTES[base["dtype"]]) / GB
    return row


def _log(row: dict) -> None:
    msg = f"[conv] {row['provider']} {row['mode']} {row['shape']} {row['wavelet']} {row['dtype']}: "
    if row["status"] == "ok" and row["median_ms"] is not None:
        msg += (f"{row['median_ms']:.4g} ms (p20 {row['p20_ms']:.4g}, p80 {row['p80_ms']:.4g}, {row['reps']} reps), "
                f"{100 * row['frac_limit']:.1f}% of the exp+FMA limit ({row['limit_ms']:.3g} ms)")  # fmt: skip
        if row["peak_gb"] is not None:
            msg += f", peak +{row['peak_gb']:.3g} GB ({row['peak_gb'] / row['io_gb']:.2f} x io)"
        if row["note"]:
            msg += f"; {row['note']}"
    else:
        msg += row["status"] + (f" ({row['note']})" if row["note"] else "")
    print(msg, flush=True)


def run_conv_level(runner, wavelets, modes, dtype_names, ceiling, cases=CONV_CASES) -> list:
    """Rows for every case, dtype, wavelet, provider and mode (``forward``/``full``; other modes
    asked for are left out, none left means both)."""
    modes = [m for m in modes if m in CONV_MODES] or list(CONV_MODES)
    fake = runner.source == DRY_RUN_SOURCE
    rows = []
    for dtype_name in dict.fromkeys(dtype_names):
        for case in cases:
            inputs = None if fake else conv_inputs(runner, case, dtype_name)
            values, _taps = conv_counts(case)
            for wavelet in wavelets:
                for provider in CONV_PROVIDERS:
                    base = dict(level="conv", source=runner.source, provider=provider, wavelet=wavelet,
                                dtype=dtype_name, shape=case.shape, B=case.B, IN=case.C, OUT=case.OUT, evals=values,
                                ceiling=ceiling)  # fmt: skip
                    fwd, compile_failed = None, None
                    for mode in modes:
                        if compile_failed is not None:
                            row = _row(base, case, mode, ceiling, status="compile-failed", note=compile_failed)
                        else:
                            try:
                                if fake:
                                    m = _fake_measurement(runner, provider, case, mode)
                                else:
                                    fwd = fwd or conv_function(provider, case, wavelet)
                                    m = runner.measure_op(fwd, inputs, mode)
                                note = ""
                                if provider == "wavkan" and mode == modes[0]:
                                    errors = ({k: 1e-7 for k in ("y", "dx", "ds", "dt", "dw")} if fake
                                              else conv_errors(inputs, case, wavelet))  # fmt: skip
                                    note = "err vs f64: " + " ".join(f"{k} {v:.0e}" for k, v in errors.items())
                                row = _row(base, case, mode, ceiling, m, note=note)
                            except Exception as exc:  # noqa: BLE001 - one failing row must not end the run
                                status, note = _failure(exc, compiled=provider in CONV_COMPILED)
                                if status == "compile-failed":
                                    compile_failed = note
                                row = _row(base, case, mode, ceiling, status=status, note=note)
                            finally:
                                if inputs is not None:
                                    runner.release_grads(inputs)
                                runner.cleanup()
                        rows.append(row)
                        _log(row)
            del inputs
            runner.cleanup()
    return rows


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


# (header, width, right-aligned, cell)
_COLUMNS = (
    ("provider", 18, False, lambda r: r["provider"]),
    ("mode", 8, False, lambda r: r["mode"]),
    ("median ms", 10, True, lambda r: _fmt(r["median_ms"], ".4g")),
    ("p20", 8, True, lambda r: _fmt(r["p20_ms"], ".4g")),
    ("p80", 8, True, lambda r: _fmt(r["p80_ms"], ".4g")),
    ("limit ms", 9, True, lambda r: _fmt(r.get("limit_ms"), ".3g")),
    ("%limit", 7, True, lambda r: _fmt(None if r.get("frac_limit") is None else 100 * r["frac_limit"], ".1f")),
    ("peak GB", 8, True, lambda r: _fmt(r["peak_gb"], ".3g")),
    ("mem/io", 7, True, lambda r: _fmt(None if r["peak_gb"] is None else r["peak_gb"] / r["io_gb"], ".3g")),
    ("status", 0, False, lambda r: (r["status"] + (f": {r['note']}" if r["note"] else ""))[:80]),
)


def _table(rows) -> str:
    def line(cells):
        return " ".join(c.rjust(w) if right else c.ljust(w) for (_, w, right, _), c in zip(_COLUMNS, cells)).rstrip()

    return "\n".join([line([c[0] for c in _COLUMNS])] + [line([str(c[3](r)) for c in _COLUMNS]) for r in rows])


def format_conv_report(rows) -> str:
    """One table per (case, wavelet, dtype) of the conv rows; "" without any."""
    conv_rows = [r for r in rows if r["level"] == "conv"]
    out = []
    for key in dict.fromkeys((r["shape"], r["wavelet"], r["dtype"]) for r in conv_rows):
        group = sorted((r for r in conv_rows if (r["shape"], r["wavelet"], r["dtype"]) == key),
                       key=lambda r: (CONV_MODES.index(r["mode"]), CONV_PROVIDERS.index(r["provider"])))  # fmt: skip
        out.append(f"\nConv layer {key[0]} (B x in x out, kernel, size, stride/padding/dilation/groups), "
                   f"{key[1]}, {key[2]}, no BN")  # fmt: skip
        out.append(_table(group))
    if out:
        out.append(
            "\nlimit ms: the exp unit (one exp per wavelet value and pass) and the FMA pipe (one FMA per tap"
            " forward, two more backward) side by side; %limit = limit / median;\nmem/io = peak extra memory /"
            " bytes of x, y, the parameters and a gradient of each."
        )
    return "\n".join(out)
