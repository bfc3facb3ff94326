"""Benchmark: the fused Wav-KAN op and network against the paper's formula, eager and compiled.

    python -m wavkan.bench [--quick] [--out DIR] [--wavelet NAME|all] [--dtype fp32|bf16|fp16]
                           [--shape BxINxOUT ...] [--level all|op|network] ...

Op level (one layer, no BatchNorm), modes:

- ``forward``: ``y = f(x, scale, translation, weights)`` with inputs that require grad (the
  training forward: it builds the autograd graph, which is dropped untimed);
- ``backward``: ``y.backward(g)`` alone; the forward that builds the graph runs before the
  start event of every repetition, outside the timed region. All four gradients (x, scale,
  translation, weights) are computed;
- ``full``: forward and backward together.

Providers: ``wavkan`` (``wavkan_linear(..., backend="triton")``), ``reference-eager`` (the
paper's formula, ``wavkan_linear_unchunked``, differentiated by autograd) and
``reference-compiled`` (``torch.compile(..., dynamic=False)`` of it, compiled once per shape).

Network level, the seed's protocol (benchmarks/RECORDED.md): widths 1024-1024-1024-1024-1024-128,
BatchNorm in every layer, batch 256, MSE loss against a random target, CUDA events around
``model(x)`` and around ``loss.backward()``. Providers ``wavkan``, ``paper-eager`` (the same
network computing each layer with the paper's formula), ``paper-compiled`` and ``mlp``
(nn.Linear + BatchNorm1d per layer, no activation: the seed's MLP row).

Figures: median, p20, p80 of per-repetition CUDA-event times (after warm-up; inputs rotate
among at least 3 sets, more when a set fits twice in L2). At the op level a GPU spin
(``torch.cuda._sleep``) is queued before each start event so the host has queued the whole
call before the GPU gets there: the events time GPU work, and the host's own time per call is
reported beside it (``host_ms``). The network level keeps the seed's protocol as it is
(events around the call, host time included when the GPU waits). Evaluations per second = B*in*out
(summed over layers for a network) / median time, counted the same way in every mode; the
fraction of the exp2 ceiling = evals * passes / time / ceiling, passes = 1 for forward and
backward and 2 for full (one exp2 per evaluation and pass); peak memory above what was
allocated before the timed step. The exp2 ceiling is measured first
(``wavkan.kernels.ceiling``). The recorded figures for the seed's CUDA kernels (benchmarks/RECORDED.md), which cannot
be rerun, are added as rows marked "recorded".

Without a CUDA GPU it says so and returns 0; it never times the CPU or Triton's interpreter.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import importlib.metadata
import io
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import atomic_write
from .nn import WavKAN
from .ops import wavkan_linear
from .reference import wavkan_linear_unchunked
from .wavelets import WAVELETS, get_wavelet

__all__ = ["main", "paper_linear", "PaperWavKAN", "parse_shape", "percentile", "summarize", "throughput"]

# --- what is measured ---------------------------------------------------------------------

DEFAULT_SHAPES = tuple((b, 1024, 1024) for b in (64, 256, 1024, 4096))
QUICK_SHAPES = ((256, 1024, 1024), (4096, 1024, 1024))
MODES = ("forward", "backward", "full")
PASSES = {"forward": 1, "backward": 1, "full": 2}
OP_PROVIDERS = ("wavkan", "reference-eager", "reference-compiled")
NET_PROVIDERS = ("wavkan", "paper-eager", "paper-compiled", "mlp")
COMPILED = ("reference-compiled", "paper-compiled")
NET_WIDTHS = (1024, 1024, 1024, 1024, 1024, 128)
NET_BATCH = 256
NET_INPUT_SETS = 3
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# (B, out, in) tensors the paper's formula holds at its peak under autograd (mexican_hat:
# x - t, z, -z/2, exp, C*exp, z^2 - 1, psi, psi*w; the backward adds gradients of as many).
EAGER_TENSORS = {"forward": 8, "backward": 10, "full": 10}
MIN_INPUT_SETS, MAX_INPUT_SETS = 3, 16
GB = 1e9

NO_GPU_MESSAGE = (
    "wavkan bench: no CUDA GPU (torch.cuda.is_available() is False). The benchmark times CUDA "
    "kernels with CUDA events and does not run on the CPU or Triton's interpreter; nothing was timed."
)

# --- benchmarks/RECORDED.md: recorded on an H200, fp32, mexican_hat, one run, 2026-11-28 ---------

RECORDED_SOURCE = "recorded"
RECORDED_NOTE = "recorded (benchmarks/RECORDED.md, H200 fp32 2026-11-28), not measured here"
RECORDED_CEILING = 3.83e12  # exp2 per second, benchmarks/RECORDED.md
# provider, mode, (B, IN, OUT), median ms or None, extra GB or None, status, note
RECORDED_OP = (
    ("reference-eager", "forward", (256, 1024, 1024), 6.33, None, "ok", ""),
    ("reference-compiled", "forward", (256, 1024, 1024), 0.408, None, "ok", ""),
    ("seed-naive-cuda", "forward", (256, 1024, 1024), 2.21, None, "ok", ""),
    ("seed-tiled-cuda", "forward", (256, 1024, 1024), 1.46, None, "ok", ""),
    ("reference-eager", "forward", (4096, 1024, 1024), None, None, "skipped", "out of reach: 17 GB a tensor"),
    ("reference-compiled", "forward", (4096, 1024, 1024), 5.70, None, "ok", ""),
    ("seed-tiled-cuda", "forward", (4096, 1024, 1024), 3.00, None, "ok", ""),
    ("reference-eager", "full", (1024, 1024, 1024), 80.9, 28.0, "ok", ""),
    ("reference-compiled", "full", (1024, 1024, 1024), 6.47, 4.0, "ok", ""),
    ("seed-tiled-cuda", "forward", (1024, 1024, 1024), 1.45, None, "ok", ""),
    ("seed-naive-cuda", "backward", (1024, 1024, 1024), 15.2, None, "ok", ""),
    ("seed-tiled+naive-bwd", "full", (1024, 1024, 1024), 16.65, 16.0, "ok", "sum of tiled fwd and naive bwd"),
)
# provider, forward ms, backward ms, peak forward GB, peak backward GB (max_memory_allocated)
RECORDED_NET = (
    ("paper-eager", 26.14, 58.58, 22.14, 22.14),
    ("paper-compiled", 1.91, 4.69, 0.14, 1.17),
    ("seed-naive-cuda", 9.19, 16.76, 1.12, 4.42),
    ("seed-tiled-cuda", 9.13, 16.75, 0.13, 4.17),
    ("mlp", 0.83, 1.66, 0.09, 0.10),
)

CSV_COLUMNS = (
    "level", "source", "provider", "wavelet", "dtype", "mode", "shape", "B", "IN", "OUT",
    "median_ms", "p20_ms", "p80_ms", "reps", "evals", "passes", "evals_per_s", "exps_per_s",
    "frac_ceiling", "ceiling_per_s", "peak_gb", "peak_abs_gb", "host_ms", "first_call_s", "status", "note",
    "gpu", "torch", "triton", "cuda", "date",
)  # fmt: skip


# --- pure helpers ----------------------------------------------------------------------------


def parse_shape(text: str) -> tuple:
    """"256x1024x512" -> (256, 1024, 512): B x IN x OUT, each a positive int."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"shape must be BxINxOUT with three positive ints, e.g. 256x1024x1024; got {text!r}")
    return dims


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    xs = sorted(float(v) for v in values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(times_ms: Sequence[float]) -> dict:
    """{"median_ms", "p20_ms", "p80_ms", "reps"} of per-repetition times."""
    return {
        "median_ms": percentile(times_ms, 50),
        "p20_ms": percentile(times_ms, 20),
        "p80_ms": percentile(times_ms, 80),
        "reps": len(times_ms),
    }


def throughput(evals: float, ms: float, passes: int, ceiling: Optional[float]) -> tuple:
    """(evals/s, exp2/s, fraction of the ceiling) for ``evals`` evaluations per pass done in ``ms``.

    evals/s = evals / time; exp2/s = evals * passes / time (one exp2 per evaluation and pass:
    the least the op must compute); fraction = exp2/s / ceiling (None without a ceiling).
    """
    if ms <= 0:
        raise ValueError(f"time must be positive, got {ms} ms")
    evals_per_s = evals / (ms * 1e-3)
    exps_per_s = evals_per_s * passes
    return evals_per_s, exps_per_s, (exps_per_s / ceiling if ceiling else None)


def network_evals(widths: Sequence[int], batch: int) -> int:
    """Wavelet evaluations of one pass of a Wav-KAN network: batch * sum of in*out over layers."""
    return batch * sum(i * o for i, o in zip(widths[:-1], widths[1:]))


def eager_fits(shape: tuple, dtype_bytes: int, mode: str, free_bytes: float) -> tuple:
    """(fits, bytes needed): the paper's formula holds EAGER_TENSORS[mode] tensors of B*out*in."""
    B, IN, OUT = shape
    need = B * IN * OUT * dtype_bytes * EAGER_TENSORS[mode]
    return need <= free_bytes, need


def input_set_bytes(shape: tuple, dtype_bytes: int) -> int:
    """Bytes of one op input set: x (B, in), scale/translation/weights (out, in), g (B, out)."""
    B, IN, OUT = shape
    return (B * IN + 3 * OUT * IN + B * OUT) * dtype_bytes


def input_sets_needed(set_bytes: int, l2_bytes: int) -> int:
    """Enough input sets that rotating among them spans twice the L2 cache, within [3, 16]."""
    return max(MIN_INPUT_SETS, min(MAX_INPUT_SETS, math.ceil(2 * l2_bytes / max(1, set_bytes))))


@dataclass(frozen=True)
class Budget:
    """Repetitions: ``warmup`` untimed-for-the-result calls, then enough timed ones to fill
    ``target_s`` at the warm-up's median, within [min_reps, max_reps] (``fixed_reps`` overrides)."""

    warmup: int = 3
    target_s: float = 0.25
    min_reps: int = 10
    max_reps: int = 200
    fixed_reps: Optional[int] = None


QUICK_BUDGET = Budget(warmup=2, target_s=0.08, min_reps=5, max_reps=50)


def spin_ms_for(host_ms: float) -> float:
    """GPU spin before each timed op call: 1.5x the host's time for the call plus 0.05 ms, at most 5 ms."""
    return min(5.0, 1.5 * max(0.0, host_ms) + 0.05)


def choose_reps(est_ms: float, budget: Budget) -> int:
    if budget.fixed_reps is not None:
        return max(1, budget.fixed_reps)
    if est_ms <= 0:
        return budget.max_reps
    return int(max(budget.min_reps, min(budget.max_reps, budget.target_s * 1e3 / est_ms)))


def make_row(
    *, level, source, provider, wavelet="", dtype="", mode="", shape=None, B=None, IN=None, OUT=None,
    times_ms=None, median_ms=None, evals=None, passes=1, ceiling=None, peak_bytes=None,
    peak_abs_bytes=None, host_ms=None, first_call_s=None, status="ok", note="",
) -> dict:  # fmt: skip
    """One CSV row; statistics from ``times_ms`` (or a bare ``median_ms`` for recorded figures)."""
    row = dict.fromkeys(CSV_COLUMNS)
    row.update(level=level, source=source, provider=provider, wavelet=wavelet, dtype=dtype, mode=mode,
               B=B, IN=IN, OUT=OUT, status=status, note=note, host_ms=host_ms, first_call_s=first_call_s)  # fmt: skip
    row["shape"] = shape if shape is not None else (f"{B}x{IN}x{OUT}" if B is not None else "")
    if times_ms:
        row.update(summarize(times_ms))
    elif median_ms is not None:
        row["median_ms"] = median_ms
    if evals is not None:
        row["evals"], row["passes"] = evals, passes
        if row["median_ms"] is not None:
            row["evals_per_s"], row["exps_per_s"], row["frac_ceiling"] = throughput(
                evals, row["median_ms"], passes, ceiling
            )
    row["ceiling_per_s"] = ceiling
    row["peak_gb"] = None if peak_bytes is None else peak_bytes / GB
    row["peak_abs_gb"] = None if peak_abs_bytes is None else peak_abs_bytes / GB
    return row


def ceiling_row(source: str, rate: Optional[float], times_ms=None, n_exp=None, status="ok", note="") -> dict:
    """The exp2 ceiling as a row: evals_per_s = exps_per_s = the rate (exp2/s), evals = exp2 per launch."""
    row = make_row(level="ceiling", source=source, provider="exp2-ceiling", times_ms=times_ms, evals=n_exp,
                   ceiling=rate, status=status, note=note)  # fmt: skip
    if rate is not None:
        row.update(evals_per_s=rate, exps_per_s=rate, frac_ceiling=1.0)
    return row


def recorded_rows() -> list:
    """benchmarks/RECORDED.md as rows (source "recorded"): the seed's figures cannot be rerun here."""
    rows = [ceiling_row(RECORDED_SOURCE, RECORDED_CEILING, note="recorded (benchmarks/RECORDED.md, H200, 2026-11-28), not measured here")]
    for provider, mode, (B, IN, OUT), ms, extra_gb, status, note in RECORDED_OP:
        rows.append(make_row(
            level="op", source=RECORDED_SOURCE, provider=provider, wavelet="mexican_hat", dtype="fp32",
            mode=mode, B=B, IN=IN, OUT=OUT, median_ms=ms, evals=B * IN * OUT, passes=PASSES[mode],
            ceiling=RECORDED_CEILING, peak_bytes=None if extra_gb is None else extra_gb * GB, status=status,
            note="; ".join(n for n in (note, RECORDED_NOTE) if n),
        ))  # fmt: skip
    net_shape = network_shape(NET_WIDTHS, NET_BATCH)
    evals = network_evals(NET_WIDTHS, NET_BATCH)
    for provider, fwd_ms, bwd_ms, fwd_gb, bwd_gb in RECORDED_NET:
        for mode, ms, gb in (("forward", fwd_ms, fwd_gb), ("backward", bwd_ms, bwd_gb)):
            rows.append(make_row(
                level="network", source=RECORDED_SOURCE, provider=provider,
                wavelet="" if provider == "mlp" else "mexican_hat", dtype="fp32", mode=mode, shape=net_shape,
                B=NET_BATCH, IN=NET_WIDTHS[0], OUT=NET_WIDTHS[-1], median_ms=ms,
                evals=None if provider == "mlp" else evals, ceiling=RECORDED_CEILING, peak_abs_bytes=gb * GB,
                note=RECORDED_NOTE,
            ))  # fmt: skip
    return rows


def network_shape(widths: Sequence[int], batch: int) -> str:
    return f"B{batch}:" + "-".join(str(w) for w in widths)


def _csv_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_csv(rows: Sequence[dict], path) -> None:
    """Write ``rows`` with the columns CSV_COLUMNS (missing keys left empty), atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in CSV_COLUMNS})
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


# (header, width, right-aligned, cell) for the printed table
_TABLE = {
    "src": ("src", 4, False, lambda r: _SRC_TAGS.get(r["source"], r["source"][:4])),
    "provider": ("provider", 20, False, lambda r: r["provider"]),
    "wavelet": ("wavelet", 11, False, lambda r: r["wavelet"] or "-"),
    "mode": ("mode", 8, False, lambda r: r["mode"]),
    "shape": ("B x in x out", 15, False, lambda r: r["shape"]),
    "median": ("median ms", 10, True, lambda r: _fmt(r["median_ms"], ".4g")),
    "p20": ("p20", 8, True, lambda r: _fmt(r["p20_ms"], ".4g")),
    "p80": ("p80", 8, True, lambda r: _fmt(r["p80_ms"], ".4g")),
    "geval": ("Geval/s", 8, True, lambda r: _fmt(None if r["evals_per_s"] is None else r["evals_per_s"] / 1e9, ".1f")),
    "ceil": ("%ceil", 6, True, lambda r: _fmt(None if r["frac_ceiling"] is None else 100 * r["frac_ceiling"], ".1f")),
    "peak": ("peak GB", 8, True, lambda r: _fmt(r["peak_gb"], ".3g")),
    "abs": ("abs GB", 7, True, lambda r: _fmt(r["peak_abs_gb"], ".3g")),
    "host": ("host ms", 8, True, lambda r: _fmt(r["host_ms"], ".3g")),
    "status": ("status", 0, False, lambda r: _status_cell(r)),
}
_SRC_TAGS = {"measured": "meas", RECORDED_SOURCE: "rec", "dry-run": "fake", "given": "giv"}


def _status_cell(r: dict) -> str:
    note = r["note"] or ""
    if r["source"] == RECORDED_SOURCE:  # the src column says it
        note = note.replace(RECORDED_NOTE, "").strip("; ")
    return (r["status"] + (f": {note}" if note else ""))[:72]

OP_TABLE = ("src", "provider", "mode", "shape", "median", "p20", "p80", "geval", "ceil", "peak", "host", "status")
NET_TABLE = ("src", "provider", "wavelet", "mode", "median", "p20", "p80", "geval", "ceil", "peak", "abs", "status")


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Fixed-width text table of ``rows`` with the named columns of ``_TABLE``."""
    specs = [_TABLE[c] for c in columns]

    def line(cells):
        return " ".join(c.rjust(w) if right else c.ljust(w) for (_, w, right, _), c in zip(specs, cells)).rstrip()

    out = [line([h for h, _, _, _ in specs])]
    out += [line([str(cell(r)) for _, _, _, cell in specs]) for r in rows]
    return "\n".join(out)


_PROVIDER_ORDER = ("wavkan", "reference-compiled", "paper-compiled", "reference-eager", "paper-eager", "mlp")


def _table_order(r: dict) -> tuple:
    return (
        r["source"] == RECORDED_SOURCE,
        MODES.index(r["mode"]) if r["mode"] in MODES else len(MODES),
        _PROVIDER_ORDER.index(r["provider"]) if r["provider"] in _PROVIDER_ORDER else len(_PROVIDER_ORDER),
        r["provider"],
        r["wavelet"] or "",
        r["B"] or 0,
        r["IN"] or 0,
        r["OUT"] or 0,
    )


def format_report(rows: Sequence[dict]) -> str:
    """The printed summary: the ceiling, then op tables per (wavelet, dtype), network tables per dtype."""
    out = []
    for r in rows:
        if r["level"] == "ceiling":
            rate = _fmt(r["evals_per_s"], ".3e")
            line = f"exp2 ceiling, {r['source']}: {rate} /s"
            if r["status"] != "ok":
                line += f" ({r['status']})"
            out.append(line + (f"  [{r['note']}]" if r["note"] else ""))
    op_rows = [r for r in rows if r["level"] == "op"]
    for wavelet, dtype in dict.fromkeys((r["wavelet"], r["dtype"]) for r in op_rows):
        group = sorted((r for r in op_rows if (r["wavelet"], r["dtype"]) == (wavelet, dtype)), key=_table_order)
        out.append(f"\nOp level, one layer without BN ({wavelet}, {dtype})")
        out.append(format_table(group, OP_TABLE))
    net_rows = [r for r in rows if r["level"] == "network"]
    for dtype in dict.fromkeys(r["dtype"] for r in net_rows):
        group = sorted((r for r in net_rows if r["dtype"] == dtype), key=_table_order)
        widths = "-".join(map(str, NET_WIDTHS))
        out.append(f"\nNetwork level, widths {widths}, BN in every layer, batch {NET_BATCH}, MSE ({dtype})")
        out.append(format_table(group, NET_TABLE))
    out.append(
        "\nGeval/s = B*in*out (summed over layers) / median time; %ceil = Geval/s * passes / exp2 ceiling"
        " (passes = 2 for full, else 1);\npeak GB = peak allocated above what was allocated before the step;"
        " abs GB = max_memory_allocated; rec = recorded (benchmarks/RECORDED.md), not measured.\nOp times are GPU times"
        " (the host queued each call ahead); host ms = the host's time per call: where it exceeds the median,"
        " a loop of calls is host-bound.\nNetwork times follow the seed's protocol: events around the call,"
        " host time included whenever the GPU waits for it."
    )
    return "\n".join(out)


# --- the paper's network, for the eager and compiled baselines ---------------------------------


def paper_linear(x, scale, translation, wavelet_weights, wavelet="mexican_hat"):
    """The paper's layer before BN, as its code computes it: materialises (B, out, in) tensors.

    x: (B, in); scale, translation, wavelet_weights: (out, in) -> (B, out); ``wavelet``: a name
    or a ``Wavelet``. Shannon's Hamming window multiplies the weights here, as in the paper.
    """
    wav = get_wavelet(wavelet)
    if wav.window is not None:
        in_features = scale.shape[1]
        wavelet_weights = wavelet_weights * wav.window(in_features, wavelet_weights.dtype, wavelet_weights.device)
    return wavkan_linear_unchunked(x, scale, translation, wavelet_weights, wav)


class PaperWavKAN(WavKAN):
    """``WavKAN`` with the same parameters, computing every layer as the paper's code does
    (``paper_linear``, autograd backward) followed by its BatchNorm: the eager baseline."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wav = get_wavelet(self.wavelet)  # resolved outside any compiled region

    def forward(self, x):
        for layer in self.layers:
            x = paper_linear(x, layer.scale, layer.translation, layer.wavelet_weights, self._wav)
            if layer.bn is not None:
                x = layer.bn(x)
        return x


def make_mlp(widths: Sequence[int], device=None, dtype=None) -> nn.Sequential:
    """nn.Linear + BatchNorm1d per layer, same widths, no activation (the seed's MLP row)."""
    mods = []
    for i, o in zip(widths[:-1], widths[1:]):
        mods += [nn.Linear(i, o, device=device, dtype=dtype), nn.BatchNorm1d(o, device=device, dtype=dtype)]
    return nn.Sequential(*mods)


# --- runners: the CUDA one measures; the fake one (--dry-run) only feeds the plumbing ----------


@dataclass
class Measurement:
    times_ms: list
    peak_bytes: Optional[float]
    peak_abs_bytes: Optional[float]
    first_call_s: Optional[float]
    host_ms: Optional[float] = None


class FirstCallError(RuntimeError):
    """The first (compiling, autotuning) call failed; the cause is in ``__cause__``."""


def _failure(exc: BaseException, compiled: bool) -> tuple:
    """(status, note) for an exception raised while measuring."""
    root = exc.__cause__ if isinstance(exc, FirstCallError) and exc.__cause__ is not None else exc
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    if isinstance(root, oom) or "out of memory" in str(root).lower():
        status = "oom"
    elif compiled and isinstance(exc, FirstCallError):
        status = "compile-failed"
    else:
        status = "error"
    text = f"{type(root).__name__}: {root}".strip().splitlines()
    return status, (text[0] if text else type(root).__name__)[:300]


def _triton_version() -> str:
    for name in ("triton", "pytorch-triton", "pytorch-triton-rocm"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    mod = sys.modules.get("triton")
    return getattr(mod, "__version__", "n/a") if mod is not None else "n/a"


def _op_closures(fwd, sets, mode):
    """(run, prepare) for one mode: ``prepare(i)`` runs untimed before ``run(i, state)``."""
    n = len(sets)

    def clear(i):
        for t in sets[i % n][:4]:
            t.grad = None

    if mode == "forward":

        def run(i, _state):
            x, s, t, w, _g = sets[i % n]
            fwd(x, s, t, w)

        return run, None
    if mode == "backward":

        def prepare(i):
            clear(i)
            x, s, t, w, g = sets[i % n]
            return fwd(x, s, t, w), g

        def run(i, state):
            state[0].backward(state[1])

        return run, prepare

    def prepare_full(i):
        clear(i)

    def run_full(i, _state):
        x, s, t, w, g = sets[i % n]
        fwd(x, s, t, w).backward(g)

    return run_full, prepare_full


class CudaRunner:
    source = "measured"

    def __init__(self, budget: Budget):
        self.budget = budget
        self.device = torch.device("cuda", torch.cuda.current_device())
        props = torch.cuda.get_device_properties(self.device)
        self.gpu = props.name
        self.l2_bytes = getattr(props, "L2_cache_size", 0) or 50 * 2**20
        self.spin_cycles_per_ms = self._calibrate_spin()

    def environment(self) -> dict:
        return {"gpu": self.gpu, "torch": torch.__version__, "triton": _triton_version(),
                "cuda": torch.version.cuda or "", "date": _now()}  # fmt: skip

    def cleanup(self) -> None:
        gc.collect()
        torch.cuda.empty_cache()

    @staticmethod
    def release_grads(sets) -> None:
        for one in sets:
            for t in one[:4]:
                t.grad = None

    def free_bytes(self) -> float:
        self.cleanup()
        return float(torch.cuda.mem_get_info(self.device)[0])

    def measure_ceiling(self):
        from .kernels.ceiling import measure_exp2_rate  # imports Triton: only here, on a GPU

        return measure_exp2_rate(self.device)

    # op level

    def op_inputs(self, shape, dtype_name):
        B, IN, OUT = shape
        dtype = DTYPES[dtype_name]
        n = input_sets_needed(input_set_bytes(shape, DTYPE_BYTES[dtype_name]), self.l2_bytes)
        gen = torch.Generator(device=self.device).manual_seed(0)
        dev = self.device

        def leaf(t):
            return t.to(dtype).requires_grad_()

        sets = []
        for _ in range(n):
            x = leaf(torch.randn(B, IN, device=dev, generator=gen))
            s = leaf(0.5 + torch.rand(OUT, IN, device=dev, generator=gen))
            t = leaf(0.5 * torch.randn(OUT, IN, device=dev, generator=gen))
            w = leaf((2 * torch.rand(OUT, IN, device=dev, generator=gen) - 1) / math.sqrt(IN))
            g = torch.randn(B, OUT, device=dev, generator=gen).to(dtype)
            sets.append((x, s, t, w, g))
        return sets

    def op_function(self, provider, wavelet):
        if provider == "wavkan":
            return lambda x, s, t, w: wavkan_linear(x, s, t, w, wavelet, backend="triton")

        wav = get_wavelet(wavelet)  # resolved here, outside any compiled region

        def paper(x, s, t, w):
            return paper_linear(x, s, t, w, wav)

        if provider == "reference-eager":
            return paper
        torch.compiler.reset()  # one compiled graph per (shape, wavelet): no recompile limit to hit
        return torch.compile(paper, dynamic=False)

    def measure_op(self, fwd, sets, mode) -> Measurement:
        run, prepare = _op_closures(fwd, sets, mode)
        return self._measure(run, prepare)

    # network level

    def network_model(self, provider, wavelet, dtype_name):
        dev, dtype = self.device, DTYPES[dtype_name]
        if provider == "mlp":
            return make_mlp(NET_WIDTHS, device=dev, dtype=dtype)
        if provider == "wavkan":
            return WavKAN(NET_WIDTHS, wavelet, batch_norm=True, backend="triton", device=dev, dtype=dtype)
        model = PaperWavKAN(NET_WIDTHS, wavelet, batch_norm=True, backend="reference", device=dev, dtype=dtype)
        if provider == "paper-compiled":
            torch.compiler.reset()
            model = torch.compile(model, dynamic=False)
        return model

    def measure_network(self, model, dtype_name) -> tuple:
        """(forward, backward) Measurements of the seed's protocol for ``model`` in train mode."""
        dev, dtype = self.device, DTYPES[dtype_name]
        gen = torch.Generator(device=dev).manual_seed(0)
        xs = [torch.randn(NET_BATCH, NET_WIDTHS[0], device=dev, generator=gen).to(dtype) for _ in range(NET_INPUT_SETS)]
        ys = [torch.randn(NET_BATCH, NET_WIDTHS[-1], device=dev, generator=gen).to(dtype) for _ in range(NET_INPUT_SETS)]
        model.train()

        def step(i, ev):
            model.zero_grad(set_to_none=True)
            x, target = xs[i % NET_INPUT_SETS], ys[i % NET_INPUT_SETS]
            ev[0].record()
            out = model(x)
            ev[1].record()
            loss = F.mse_loss(out, target)
            ev[2].record()
            loss.backward()
            ev[3].record()

        def timed(indices):
            evs = []
            for i in indices:
                ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
                step(i, ev)
                evs.append(ev)
            torch.cuda.synchronize()
            return [e[0].elapsed_time(e[1]) for e in evs], [e[2].elapsed_time(e[3]) for e in evs]

        t0 = time.perf_counter()
        try:
            timed([0])
        except Exception as exc:
            raise FirstCallError("first call failed") from exc
        first = time.perf_counter() - t0
        warm_f, warm_b = timed(range(1, 1 + max(1, self.budget.warmup)))
        reps = choose_reps(percentile([f + b for f, b in zip(warm_f, warm_b)], 50), self.budget)
        fwd_ms, bwd_ms = timed(range(reps))

        # peak memory: one more step, phase by phase
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = model(xs[0])
        torch.cuda.synchronize()
        fwd_abs = torch.cuda.max_memory_allocated()
        loss = F.mse_loss(out, ys[0])
        torch.cuda.synchronize()
        base_b = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss.backward()
        torch.cuda.synchronize()
        bwd_abs = torch.cuda.max_memory_allocated()
        del out, loss
        model.zero_grad(set_to_none=True)
        return (
            Measurement(fwd_ms, fwd_abs - base, fwd_abs, first),
            Measurement(bwd_ms, bwd_abs - base_b, bwd_abs, first),
        )

    # timing

    def _calibrate_spin(self) -> float:
        """Cycles of ``torch.cuda._sleep`` per ms (0 when this torch has no ``_sleep``)."""
        sleep = getattr(torch.cuda, "_sleep", None)
        if sleep is None:
            return 0.0
        sleep(1000)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        sleep(1_000_000)
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end)
        return 1e6 / ms if ms > 0 else 0.0

    def _time(self, run, prepare, indices, spin_ms: float = 0.0) -> tuple:
        """(GPU ms, host ms) per repetition. With ``spin_ms`` a GPU spin of that length is queued
        before each start event, so the host has queued the whole call before the GPU reaches it
        and the events time the GPU work alone; host ms is the wall time of the call itself."""
        cycles = int(spin_ms * self.spin_cycles_per_ms)
        pairs, host = [], []
        for i in indices:
            state = prepare(i) if prepare is not None else None
            if cycles > 0:
                torch.cuda._sleep(cycles)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            run(i, state)
            host.append((time.perf_counter() - t0) * 1e3)
            end.record()
            pairs.append((start, end))
            state = None
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in pairs], host

    @staticmethod
    def _peak(run, prepare) -> tuple:
        state = prepare(0) if prepare is not None else None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run(0, state)
        torch.cuda.synchronize()
        peak_abs = torch.cuda.max_memory_allocated()
        return peak_abs - base, peak_abs

    def _measure(self, run, prepare) -> Measurement:
        t0 = time.perf_counter()
        try:
            self._time(run, prepare, [0])  # compiles, autotunes
        except Exception as exc:
            raise FirstCallError("first call failed") from exc
        first = time.perf_counter() - t0
        warm, warm_host = self._time(run, prepare, range(1, 1 + max(1, self.budget.warmup)))
        reps = choose_reps(percentile(warm, 50), self.budget)
        spin = spin_ms_for(percentile(warm_host, 50))
        times, host = self._time(run, prepare, range(1 + len(warm), 1 + len(warm) + reps), spin)
        peak, peak_abs = self._peak(run, prepare)
        return Measurement(times, peak, peak_abs, first, percentile(host, 50))


class FakeRunner:
    """--dry-run: deterministic made-up times from a cost model, to exercise rows, CSV, plots and
    table on any machine. Nothing is timed and nothing here is a measurement."""

    source = "dry-run"
    RATES = {"wavkan": 2.5e12, "reference-eager": 4e10, "reference-compiled": 6e11,
             "paper-eager": 4e10, "paper-compiled": 5e11, "mlp": 1e13}  # fmt: skip

    def __init__(self, budget: Budget):
        self.budget = budget

    def environment(self) -> dict:
        return {"gpu": "none (dry run)", "torch": torch.__version__, "triton": _triton_version(),
                "cuda": "", "date": _now()}  # fmt: skip

    def cleanup(self) -> None:
        pass

    def release_grads(self, inputs) -> None:
        pass

    def free_bytes(self) -> float:
        return 139e9

    @staticmethod
    def _times(ms):
        return [ms * (1 + 0.01 * k) for k in range(-5, 6)]

    def measure_ceiling(self):
        n_exp = 1.8e10
        return n_exp, self._times(n_exp / RECORDED_CEILING * 1e3)

    def op_inputs(self, shape, dtype_name):
        return shape

    def op_function(self, provider, wavelet):
        return provider

    def measure_op(self, provider, shape, mode) -> Measurement:
        B, IN, OUT = shape
        ms = B * IN * OUT * {"forward": 1.0, "backward": 1.5, "full": 2.5}[mode] / self.RATES[provider] * 1e3 + 0.005
        peak = B * IN * OUT * 4 * EAGER_TENSORS[mode] if provider == "reference-eager" else B * OUT * 4
        return Measurement(self._times(ms), peak, peak + 1e8, 0.0, 0.05)

    def network_model(self, provider, wavelet, dtype_name):
        return provider

    def measure_network(self, provider, dtype_name) -> tuple:
        ms = network_evals(NET_WIDTHS, NET_BATCH) / self.RATES[provider] * 1e3 + 0.05
        return (Measurement(self._times(ms), 1e8, 2e8, 0.0), Measurement(self._times(2.5 * ms), 2e8, 4e8, 0.0))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the run ---------------------------------------------------------------------------------


def _log(row: dict) -> None:
    msg = f"[{row['level']}] {row['provider']} {row['mode']} {row['shape']} {row['wavelet']} {row['dtype']}: "
    if row["status"] == "ok" and row["median_ms"] is not None:
        msg += f"{row['median_ms']:.4g} ms (p20 {row['p20_ms']:.4g}, p80 {row['p80_ms']:.4g}, {row['reps']} reps)"
        if row["frac_ceiling"] is not None:
            msg += f", {row['evals_per_s']:.3g} evals/s, {100 * row['frac_ceiling']:.1f}% of exp2 ceiling"
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
                            B=B, IN=IN, OUT=OUT, evals=B * IN * OUT, ceiling=ceiling)  # fmt: skip
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
                                       host_ms=m.host_ms, first_call_s=m.first_call_s)  # fmt: skip
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


def run_network_level(runner, wavelets, providers, dtype_name, ceiling) -> list:
    rows = []
    shape = network_shape(NET_WIDTHS, NET_BATCH)
    evals = network_evals(NET_WIDTHS, NET_BATCH)
    for wi, wavelet in enumerate(wavelets):
        for provider in providers:
            if provider == "mlp" and wi > 0:
                continue  # no wavelet: once is enough
            base = dict(level="network", source=runner.source, provider=provider,
                        wavelet="" if provider == "mlp" else wavelet, dtype=dtype_name, shape=shape, B=NET_BATCH,
                        IN=NET_WIDTHS[0], OUT=NET_WIDTHS[-1], evals=None if provider == "mlp" else evals,
                        ceiling=ceiling)  # fmt: skip
            model = None
            try:
                model = runner.network_model(provider, wavelet, dtype_name)
                fwd, bwd = runner.measure_network(model, dtype_name)
                new = [make_row(**base, mode=mode, times_ms=m.times_ms, peak_bytes=m.peak_bytes,
                                peak_abs_bytes=m.peak_abs_bytes, first_call_s=m.first_call_s)
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


def plot_results(rows: Sequence[dict], out_dir) -> list:
    """PNG plots: op throughput against B per mode (with the exp2 ceiling) and network bars.

    Returns the written paths; [] with a note when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'wavkan[bench]')")
        return []
    from .plotting import new_figure, save_png

    paths = []
    ceilings = [(r["source"], r["evals_per_s"]) for r in rows if r["level"] == "ceiling" and r["evals_per_s"]]
    ok = [r for r in rows if r["status"] == "ok" and r["median_ms"] is not None]
    measured = [r for r in ok if r["source"] != RECORDED_SOURCE]
    recorded = [r for r in ok if r["source"] == RECORDED_SOURCE]

    palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    known = list(OP_PROVIDERS) + [p for p in NET_PROVIDERS if p not in OP_PROVIDERS]
    extra = []

    def color(provider):
        if provider not in known and provider not in extra:
            extra.append(provider)
        k = known.index(provider) if provider in known else len(known) + extra.index(provider)
        return palette[k % len(palette)]

    def groups(level):
        keys = []
        for r in measured:
            if r["level"] == level and (r["wavelet"], r["dtype"]) not in keys and r["wavelet"]:
                keys.append((r["wavelet"], r["dtype"]))
        return keys

    for wavelet, dtype in groups("op"):
        sel = [r for r in measured if r["level"] == "op" and (r["wavelet"], r["dtype"]) == (wavelet, dtype)]
        modes = [m for m in MODES if any(r["mode"] == m for r in sel)]
        fig = new_figure((5.5 * len(modes), 4.5))
        axes = fig.subplots(1, len(modes), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            lines = {}
            for r in sel:
                if r["mode"] == mode:
                    lines.setdefault((r["provider"], r["IN"], r["OUT"]), []).append((r["B"], r["exps_per_s"]))
            combos = list(dict.fromkeys((i, o) for _, i, o in lines))
            many = len(combos) > 1
            for (provider, i, o), pts in lines.items():
                pts.sort()
                label = provider + (f" {i}x{o}" if many else "")
                style = ("-", "--", "-.", ":")[combos.index((i, o)) % 4]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle=style, color=color(provider),
                        label=label)  # fmt: skip
            if wavelet == "mexican_hat" and dtype == "fp32":  # the recorded figures' setting
                rec = {}
                for r in recorded:
                    if r["level"] == "op" and r["mode"] == mode:
                        rec.setdefault(r["provider"], []).append((r["B"], r["exps_per_s"]))
                for provider, pts in rec.items():
                    ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="x", s=50, color=color(provider),
                               label=f"{provider} (recorded)")  # fmt: skip
            for source, rate in ceilings:
                style = ":" if source == RECORDED_SOURCE else "-"
                ax.axhline(rate, color="k", linestyle=style, linewidth=1, label=f"exp2 ceiling ({source}) {rate:.3g}/s")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch B" + ("" if many else f" (in = {i}, out = {o})"))
            ax.set_ylabel("evaluations/s" + (" per pass (2 passes)" if mode == "full" else ""))
            ax.set_title(f"{mode}: {wavelet}, {dtype}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(save_png(fig, os.path.join(out_dir, f"op_throughput_{wavelet}_{dtype}.png"), dpi=120))

    net_keys = []
    for r in measured:
        if r["level"] == "network" and r["dtype"] not in net_keys:
            net_keys.append(r["dtype"])
    for dtype in net_keys:
        for wavelet in sorted({r["wavelet"] for r in measured if r["level"] == "network" and r["wavelet"]}) or [""]:
            sel = [r for r in measured if r["level"] == "network" and r["dtype"] == dtype
                   and r["wavelet"] in (wavelet, "")]  # fmt: skip
            bars = {}
            for r in sel:
                bars.setdefault(r["provider"], {})[r["mode"]] = r["median_ms"]
            if wavelet in ("mexican_hat", "") and dtype == "fp32":  # the recorded figures' setting
                for r in recorded:
                    if r["level"] == "network":
                        bars.setdefault(f"{r['provider']} (rec.)", {})[r["mode"]] = r["median_ms"]
            names = list(bars)
            fig = new_figure((max(6, 1.1 * len(names) + 2), 4.5))
            ax = fig.subplots()
            width = 0.4
            for k, mode in enumerate(("forward", "backward")):
                xs = [j + (k - 0.5) * width for j in range(len(names))]
                vals = [bars[n].get(mode, 0) or 0 for n in names]
                hatch = ["//" if n.endswith("(rec.)") else "" for n in names]
                rects = ax.bar(xs, vals, width, label=mode)
                for rect, h in zip(rects, hatch):
                    rect.set_hatch(h)
                ax.bar_label(rects, labels=[f"{v:.3g}" if v else "" for v in vals], fontsize=6)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("ms (median)")
            ax.set_title(f"network {'-'.join(map(str, NET_WIDTHS))}, batch {NET_BATCH}: {wavelet or 'mlp'}, {dtype}"
                         "\nhatched: recorded (benchmarks/RECORDED.md), not measured here")  # fmt: skip
            ax.legend()
            fig.tight_layout()
            paths.append(save_png(fig, os.path.join(out_dir, f"network_{wavelet or 'mlp'}_{dtype}.png"), dpi=120))
    return paths


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "wavkan bench",
        description="Benchmark the fused Wav-KAN op and network (CUDA GPU only): forward, backward and "
        "full times, evaluations/s against the measured exp2 ceiling, peak memory; CSV, PNG plots, table.",
    )
    p.add_argument("--out", default="bench-results", help="output folder for results.csv and plots (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a fast subset: shapes 256x1024x1024 and 4096x1024x1024, fewer reps")
    p.add_argument("--level", choices=("all", "op", "network"), default="all", help="what to run (default: %(default)s)")
    p.add_argument("--shape", type=parse_shape, action="append", metavar="BxINxOUT",
                   help="op shape, repeatable; replaces the default B in {64,256,1024,4096} x 1024 x 1024")  # fmt: skip
    p.add_argument("--wavelet", choices=(*WAVELETS, "all"), default="mexican_hat", help="default: %(default)s")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="default: %(default)s")
    p.add_argument("--mode", choices=MODES, nargs="+", default=list(MODES), help="op modes (default: all)")
    p.add_argument("--provider", choices=OP_PROVIDERS, nargs="+", default=list(OP_PROVIDERS), help="op providers (default: all)")
    p.add_argument("--net-provider", choices=NET_PROVIDERS, nargs="+", default=list(NET_PROVIDERS),
                   help="network providers (default: all)")  # fmt: skip
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per row (default: fill ~0.25 s, 10..200)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per row after the first (default: 3)")
    p.add_argument("--ceiling", type=float, default=None, help="exp2/s to use instead of measuring it")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-recorded", action="store_true", help="leave out the recorded rows (benchmarks/RECORDED.md)")
    # fake timings through the whole plumbing, for tests and CPU checks: not a benchmark
    p.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv=None, prog: Optional[str] = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_GPU_MESSAGE)
        return 0
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
    if args.level in ("all", "op"):
        rows += run_op_level(runner, shapes, wavelets, args.provider, args.mode, args.dtype, ceiling)
    if args.level in ("all", "network"):
        rows += run_network_level(runner, wavelets, args.net_provider, args.dtype, ceiling)
    if not args.no_recorded:
        rows += [r for r in recorded_rows() if args.level == "all" or r["level"] in (args.level, "ceiling")]
    for row in rows:
        row.update(env if row["source"] != RECORDED_SOURCE else {"gpu": "NVIDIA H200 (recorded)", "date": "2026-11-28"})

    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "results.csv")
    write_csv(rows, csv_path)
    plots = [] if args.no_plots else plot_results(rows, args.out)
    print("\n" + format_report(rows))
    print(f"\nwrote {csv_path}" + "".join(f"\nwrote {p}" for p in plots))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m wavkan.bench"))
