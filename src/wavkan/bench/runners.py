"""Runners: ``CudaRunner`` measures with CUDA events; ``FakeRunner`` (``--dry-run``) feeds made-up
timings through the same plumbing so it can be tested without a GPU."""

from __future__ import annotations

import datetime
import gc
import importlib.metadata
import math
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

from ..nn import WavKAN
from ..ops import wavkan_linear
from ..ops_conv import wavkan_conv
from ..wavelets import get_wavelet
from .models import PaperWavKAN, conv_kan_wavelet_branch, make_mlp, paper_linear
from .network_step import CapturedNetwork, EagerNetwork
from .protocol import (
    Budget, DTYPES, DTYPE_BYTES, EAGER_TENSORS, NET_BATCH, NET_INPUT_SETS, NET_WIDTHS, RECORDED_CEILING,
    choose_reps, conv_counts, conv_io_bytes, input_set_bytes, input_sets_needed, network_evals, percentile,
    spin_ms_for,
)

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
        from .ceiling import measure_exp2_rate  # imports Triton: only here, on a GPU

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
        if provider in ("wavkan", "wavkan-fast"):
            fast = provider == "wavkan-fast"
            return lambda x, s, t, w: wavkan_linear(x, s, t, w, wavelet, backend="triton", fast_math=fast)

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

    @staticmethod
    def fast_math_error(sets, wavelet) -> float:
        """||fast - exact|| / ||exact|| of the forward on the first input set, exact = the fp32
        kernel on the same (rounded) inputs."""
        with torch.no_grad():
            x, s, t, w, _g = sets[0]
            fast = wavkan_linear(x, s, t, w, wavelet, backend="triton", fast_math=True).double()
            exact = wavkan_linear(x.float(), s.float(), t.float(), w.float(), wavelet, backend="triton").double()
            return ((fast - exact).norm() / exact.norm()).item()

    # conv level

    def conv_inputs(self, case, dtype_name):
        """Input sets (x, scale, translation, weights, grad_y) for one ``ConvCase``."""
        dtype, dev = DTYPES[dtype_name], self.device
        ig = case.C // case.groups
        fan_in = ig * math.prod(case.kernel)
        n = input_sets_needed(conv_io_bytes(case, DTYPE_BYTES[dtype_name]) // 2, self.l2_bytes)
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

    def conv_function(self, provider, case, wavelet):
        geometry = (case.stride, case.padding, case.dilation, case.groups)
        if provider == "wavkan":
            return lambda x, s, t, w: wavkan_conv(x, s, t, w, *geometry, wavelet, backend="triton")
        wav = get_wavelet(wavelet)  # resolved here, outside any compiled region

        def branch(x, s, t, w):
            return conv_kan_wavelet_branch(x, s, t, w, *geometry, wav)

        if provider == "conv-kan-eager":
            return branch
        torch.compiler.reset()
        return torch.compile(branch, dynamic=False)

    def measure_conv(self, fwd, sets, mode) -> Measurement:
        return self.measure_op(fwd, sets, mode)

    @staticmethod
    def conv_errors(sets, case, wavelet) -> dict:
        """Relative errors ||a - ref|| / ||ref|| of the fused op's output and gradients on the first
        input set, ref = the float64 reference (chunked, ``wavkan.reference_conv``)."""
        x, s, t, w, g = sets[0]
        geometry = (case.stride, case.padding, case.dilation, case.groups)
        errors = {}
        results = []
        for backend, cast in (("triton", lambda a: a), ("reference", lambda a: a.double())):
            leaves = [cast(a.detach()).requires_grad_() for a in (x, s, t, w)]
            y = wavkan_conv(*leaves, *geometry, wavelet, backend=backend)
            y.backward(cast(g))
            results.append([y.detach()] + [leaf.grad for leaf in leaves])
        for name, got, ref in zip(("y", "dx", "ds", "dt", "dw"), *results):
            errors[name] = ((got.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()
        return errors

    # network level

    def network_model(self, provider, wavelet, dtype_name):
        dev, dtype = self.device, DTYPES[dtype_name]
        if provider == "mlp":
            return EagerNetwork(make_mlp(NET_WIDTHS, device=dev, dtype=dtype))
        if provider in ("wavkan", "wavkan-graphed"):
            model = WavKAN(NET_WIDTHS, wavelet, batch_norm=True, backend="triton", device=dev, dtype=dtype)
            model.train()
            if provider == "wavkan-graphed":
                # The forward, the loss and the backward each replayed from a CUDA graph:
                # what the kernels do without the host's per-launch cost (see network_step).
                x = torch.empty(NET_BATCH, NET_WIDTHS[0], device=dev, dtype=dtype)
                target = torch.empty(NET_BATCH, NET_WIDTHS[-1], device=dev, dtype=dtype)
                return CapturedNetwork(model, x, target)
            return EagerNetwork(model)
        model = PaperWavKAN(NET_WIDTHS, wavelet, batch_norm=True, backend="reference", device=dev, dtype=dtype)
        if provider == "paper-compiled":
            torch.compiler.reset()
            model = torch.compile(model, dynamic=False)
        return EagerNetwork(model)

    def measure_network(self, net, dtype_name) -> tuple:
        """(forward, backward) Measurements of the seed's protocol for ``net`` (an
        ``EagerNetwork`` or ``CapturedNetwork``), its model in train mode."""
        dev, dtype = self.device, DTYPES[dtype_name]
        gen = torch.Generator(device=dev).manual_seed(0)
        xs = [torch.randn(NET_BATCH, NET_WIDTHS[0], device=dev, generator=gen).to(dtype) for _ in range(NET_INPUT_SETS)]
        ys = [torch.randn(NET_BATCH, NET_WIDTHS[-1], device=dev, generator=gen).to(dtype) for _ in range(NET_INPUT_SETS)]
        net.model.train()

        def step(i, ev):
            net.zero_grad()
            x, target = xs[i % NET_INPUT_SETS], ys[i % NET_INPUT_SETS]
            ev[0].record()
            out = net.forward(x)
            ev[1].record()
            loss = net.loss(out, target)
            ev[2].record()
            net.backward(loss)
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
        net.zero_grad()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = net.forward(xs[0])
        torch.cuda.synchronize()
        fwd_abs = torch.cuda.max_memory_allocated()
        loss = net.loss(out, ys[0])
        torch.cuda.synchronize()
        base_b = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        net.backward(loss)
        torch.cuda.synchronize()
        bwd_abs = torch.cuda.max_memory_allocated()
        del out, loss
        net.zero_grad()
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
    RATES = {"wavkan": 2.5e12, "wavkan-fast": 4e12, "wavkan-graphed": 2.5e12, "reference-eager": 4e10, "reference-compiled": 6e11,
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

    @staticmethod
    def fast_math_error(sets, wavelet) -> float:
        return 1e-3

    def conv_inputs(self, case, dtype_name):
        return case

    def conv_function(self, provider, case, wavelet):
        return provider

    def measure_conv(self, provider, case, mode) -> Measurement:
        values, taps = conv_counts(case)
        rate = self.RATES["wavkan" if provider == "wavkan" else provider.replace("conv-kan", "paper")]
        ms = (values + taps / 8) * {"forward": 1.0, "full": 2.5}[mode] / rate * 1e3 + 0.01
        peak = conv_io_bytes(case, 4) * (0.8 if provider == "wavkan" else 20.0)
        return Measurement(self._times(ms), peak, peak + 1e8, 0.0, 0.05)

    @staticmethod
    def conv_errors(sets, case, wavelet) -> dict:
        return {"y": 1e-7, "dx": 2e-7, "ds": 3e-7, "dt": 3e-7, "dw": 2e-7}

    def network_model(self, provider, wavelet, dtype_name):
        return provider

    def measure_network(self, provider, dtype_name) -> tuple:
        ms = network_evals(NET_WIDTHS, NET_BATCH) / self.RATES[provider] * 1e3 + 0.05
        return (Measurement(self._times(ms), 1e8, 2e8, 0.0), Measurement(self._times(2.5 * ms), 2e8, 4e8, 0.0))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
