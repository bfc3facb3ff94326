"""What the benchmark measures and the pure arithmetic around it: shapes, providers, the
recorded baselines, statistics, throughput, repetition and memory budgets, result rows."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch


# --- what is measured ---------------------------------------------------------------------

DEFAULT_SHAPES = tuple((b, 1024, 1024) for b in (64, 256, 1024, 4096))
QUICK_SHAPES = ((256, 1024, 1024), (4096, 1024, 1024))
MODES = ("forward", "backward", "full")
PASSES = {"forward": 1, "backward": 1, "full": 2}
OP_PROVIDERS = ("wavkan", "linear", "reference-eager", "reference-compiled")
# linear: nn.Linear(in, out) (bias included, called as a module), weights copied from the row's.
# It computes no exp: its rows count B*in*out edges a second but no fraction of the exp2 ceiling.
NO_EXP_PROVIDERS = ("linear",)
NET_PROVIDERS = ("wavkan", "wavkan-compiled", "wavkan-reduce-overhead", "wavkan-graphed", "paper-eager",
                 "paper-compiled", "mlp", "mlp-compiled", "mlp-graphed")  # fmt: skip
COMPILED = ("reference-compiled", "paper-compiled", "wavkan-compiled", "wavkan-reduce-overhead", "mlp-compiled")
NET_WIDTHS = (1024, 1024, 1024, 1024, 1024, 128)
NET_BATCH = 256
NET_INPUT_SETS = 3
@dataclass(frozen=True)
class NetworkProtocol:
    """One public network benchmark, restated: what it builds, how it steps, what it reports.

    Each timed step: the gradients set to None (``zero_grad``) or left to accumulate; one batch;
    CUDA events around ``model(x)``, then a device synchronize; the MSE loss (untimed); events
    around ``loss.backward()``, then a synchronize. ``statistic`` is the figure the protocol
    publishes (every row carries median, p20, p80 and mean all the same)."""

    name: str
    widths: tuple  # the Wav-KAN networks (wavkan*, paper-*)
    mlp_widths: tuple  # the MLP rows
    mlp_activations: bool  # ReLU between the MLP's layers and a sigmoid after the last
    batch: int
    zero_grad: bool  # set the gradients to None before each step; False: they accumulate
    statistic: str  # "median" or "mean"
    warmup: Optional[int]  # untimed steps after the first call; None: the run's budget
    reps: Optional[int]  # timed steps; None: the run's budget
    host_dataset: bool  # batches drawn from a dataset in host memory, copied before the start event
    title: str


# The seed's protocol (benchmarks/RECORDED.md): 5 layers, BN in each, batch 256.
CUDA_PORT = NetworkProtocol(
    name="cuda-port", widths=NET_WIDTHS, mlp_widths=NET_WIDTHS, mlp_activations=False, batch=NET_BATCH,
    zero_grad=True, statistic="median", warmup=None, reps=None, host_dataset=False,
    title="the CUDA port's protocol: widths 1024-1024-1024-1024-1024-128, BN in every layer, batch 256, MSE",
)  # fmt: skip
# KAN-benchmarking (github.com/Jerry-Master/KAN-benchmarking, benchmark.py) with the options of its
# Wav-KAN figures (--batch-size 100 --inp-size 1000 --hid-size 1000): the Wav-KAN network is
# [in, 2 * hid, 1], its MLP [in, 10 * hid, 1] with ReLU and a sigmoid (the repository's rule for
# comparable parameter counts), batches of 100 rows drawn at random from 1000 host rows,
# gradients never zeroed, 1 + 10 steps with the first dropped, the mean reported.
KAN_BENCHMARKING = NetworkProtocol(
    name="kan-benchmarking", widths=(1000, 2000, 1), mlp_widths=(1000, 10000, 1), mlp_activations=True, batch=100,
    zero_grad=False, statistic="mean", warmup=0, reps=10, host_dataset=True,
    title="KAN-benchmarking's protocol: widths 1000-2000-1 (MLP 1000-10000-1, ReLU, sigmoid), BN in every "
          "Wav-KAN layer, batch 100, MSE, gradients accumulate, mean of 10 steps after one",
)  # fmt: skip
PROTOCOLS = {p.name: p for p in (CUDA_PORT, KAN_BENCHMARKING)}
KAN_DATASET_ROWS = 1000  # KAN-benchmarking's train_num
# Untimed first steps of a compiled provider: the compile, then (reduce-overhead) the CUDA-graph
# warm-up run and the recording; every other provider has one first step.
COMPILED_FIRST_STEPS = 3


def first_steps(provider: str) -> int:
    """Untimed steps whose wall time is ``first_call_s``: 1, or COMPILED_FIRST_STEPS when compiled."""
    return COMPILED_FIRST_STEPS if provider in COMPILED else 1


def network_widths(provider: str, protocol: NetworkProtocol) -> tuple:
    """The widths ``provider`` runs under ``protocol``: the MLP's for mlp*, else the Wav-KAN's."""
    return tuple(protocol.mlp_widths if provider.startswith("mlp") else protocol.widths)

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
    "level", "protocol", "source", "provider", "wavelet", "dtype", "mode", "shape", "B", "IN", "OUT", "params",
    "median_ms", "p20_ms", "p80_ms", "mean_ms", "reps", "latency_ms", "latency_p20_ms", "latency_p80_ms",
    "evals", "passes", "evals_per_s", "exps_per_s",
    "frac_ceiling", "ceiling_per_s", "peak_gb", "peak_abs_gb", "host_ms", "first_call_s", "status", "note",
    "gpu", "torch", "triton", "cuda", "date", "limit_ms", "frac_limit", "io_gb",
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
    """{"median_ms", "p20_ms", "p80_ms", "mean_ms", "reps"} of per-repetition times."""
    return {
        "median_ms": percentile(times_ms, 50),
        "p20_ms": percentile(times_ms, 20),
        "p80_ms": percentile(times_ms, 80),
        "mean_ms": math.fsum(times_ms) / len(times_ms),
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
    peak_abs_bytes=None, host_ms=None, first_call_s=None, status="ok", note="", protocol="", params=None,
    latency_ms=None,
) -> dict:  # fmt: skip
    """One CSV row; statistics from ``times_ms`` (or a bare ``median_ms`` for recorded figures),
    and from ``latency_ms`` (op level: events around each call with a synchronize after it)."""
    row = dict.fromkeys(CSV_COLUMNS)
    row.update(level=level, source=source, provider=provider, wavelet=wavelet, dtype=dtype, mode=mode,
               B=B, IN=IN, OUT=OUT, status=status, note=note, host_ms=host_ms, first_call_s=first_call_s,
               protocol=protocol, params=params)  # fmt: skip
    row["shape"] = shape if shape is not None else (f"{B}x{IN}x{OUT}" if B is not None else "")
    if times_ms:
        row.update(summarize(times_ms))
    if latency_ms:
        row.update(latency_ms=percentile(latency_ms, 50), latency_p20_ms=percentile(latency_ms, 20),
                   latency_p80_ms=percentile(latency_ms, 80))  # fmt: skip
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
                level="network", protocol=CUDA_PORT.name, source=RECORDED_SOURCE, provider=provider,
                wavelet="" if provider == "mlp" else "mexican_hat", dtype="fp32", mode=mode, shape=net_shape,
                B=NET_BATCH, IN=NET_WIDTHS[0], OUT=NET_WIDTHS[-1], median_ms=ms,
                evals=None if provider == "mlp" else evals, ceiling=RECORDED_CEILING, peak_abs_bytes=gb * GB,
                note=RECORDED_NOTE,
            ))  # fmt: skip
    return rows


def network_shape(widths: Sequence[int], batch: int) -> str:
    return f"B{batch}:" + "-".join(str(w) for w in widths)


# --- the convolution level ------------------------------------------------------------------


@dataclass(frozen=True)
class ConvCase:
    """One convolution layer: x (B, C, *spatial), C -> OUT channels, nn.Conv-style arguments."""

    name: str
    B: int
    C: int
    OUT: int
    kernel: tuple
    spatial: tuple
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1

    @property
    def out_spatial(self) -> tuple:
        return tuple((n + 2 * self.padding - self.dilation * (k - 1) - 1) // self.stride + 1
                     for n, k in zip(self.spatial, self.kernel))  # fmt: skip

    @property
    def shape(self) -> str:
        k = "x".join(map(str, self.kernel))
        sp = "x".join(map(str, self.spatial))
        return f"{self.B}x{self.C}x{self.OUT} k{k} {sp} s{self.stride}p{self.padding}d{self.dilation}g{self.groups}"


CONV_CASES = (
    ConvCase("cifar", 128, 64, 64, (3, 3), (32, 32), padding=1),
    ConvCase("ecg-1d", 64, 12, 64, (7,), (5000,), padding=3),
    ConvCase("strided-dilated-grouped", 64, 64, 128, (3, 3), (64, 64), stride=2, padding=2, dilation=2, groups=4),
)
CONV_PROVIDERS = ("wavkan", "conv-kan-eager", "conv-kan-compiled")
CONV_COMPILED = ("conv-kan-compiled",)
CONV_MODES = ("forward", "full")
# The FMA pipe's rate in fused multiply-adds per second: 58 TFLOP/s fp32 measured on the H200
# (benchmarks/RECORDED.md), two FLOP per FMA.
RECORDED_FMA_RATE = 29e12


def conv_counts(case: ConvCase) -> tuple:
    """(wavelet values, taps) of one forward: a value per (b, o, i of o's group, input pixel),
    a tap per (b, o, i, output pixel, kernel tap)."""
    ig = case.C // case.groups
    values = case.B * case.OUT * ig * math.prod(case.spatial)
    taps = case.B * case.OUT * ig * math.prod(case.out_spatial) * math.prod(case.kernel)
    return values, taps


def conv_limit_ms(case: ConvCase, mode: str, exp_rate: float, fma_rate: float = RECORDED_FMA_RATE) -> float:
    """The joint limit of the exp unit and the FMA pipe, the two working side by side: the
    forward needs one exp per wavelet value and one FMA per tap; forward+backward adds one exp
    per value (psi and dpsi share it) and two FMAs per tap (the transposed convolution of
    grad_y and the weight gradient)."""
    values, taps = conv_counts(case)
    exps, fmas = (values, taps) if mode == "forward" else (2 * values, 3 * taps)
    return max(exps / exp_rate, fmas / fma_rate) * 1e3


def conv_io_bytes(case: ConvCase, dtype_bytes: int) -> int:
    """Bytes of the input, the output, the parameters and a gradient of each: the yardstick of
    the forward+backward's peak extra memory."""
    ig = case.C // case.groups
    x = case.B * case.C * math.prod(case.spatial)
    y = case.B * case.OUT * math.prod(case.out_spatial)
    params = case.OUT * ig * (2 + math.prod(case.kernel))
    return 2 * (x + y + params) * dtype_bytes
