"""``CudaRunner`` measures with CUDA events; its dry-run twin, which feeds made-up timings through
the same plumbing so it can be tested without a GPU, is ``bench.fake``."""

from __future__ import annotations

import datetime
import gc
import importlib.metadata
import math
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from ..ops import wavkan_linear
from ..ops_conv import wavkan_conv
from ..wavelets import get_wavelet
from .models import LinearProvider, conv_kan_wavelet_branch, network_module, paper_linear, parameter_count
from .network_step import CapturedNetwork, EagerNetwork
from .protocol import (
    COMPILED, CUDA_PORT, Budget, DTYPES, DTYPE_BYTES, KAN_DATASET_ROWS, NET_INPUT_SETS, NetworkProtocol, choose_reps,
    conv_io_bytes, first_steps, input_set_bytes, input_sets_needed, network_widths, percentile, spin_ms_for,
)

# --- runners: the CUDA one measures; the fake one (--dry-run) only feeds the plumbing ----------


@dataclass
class Measurement:
    times_ms: list
    peak_bytes: Optional[float]
    peak_abs_bytes: Optional[float]
    first_call_s: Optional[float]
    host_ms: Optional[float] = None
    latency_ms: Optional[list] = None  # op level: events around each call, a synchronize after it
    note: str = ""


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


class StepRecord(NamedTuple):
    """One network step: event ms and host ms of the forward and the backward, their peak
    memory above what was allocated before each (``peak_*``) and absolute (``abs_*``), bytes."""

    fwd_ms: float
    bwd_ms: float
    host_fwd_ms: float
    host_bwd_ms: float
    peak_fwd: float
    abs_fwd: float
    peak_bwd: float
    abs_bwd: float


def network_reps(protocol: NetworkProtocol, budget: Budget, warm: list) -> int:
    """Timed steps: ``--reps`` when given, else the protocol's count, else enough to fill the
    budget at the warm-up's median step."""
    if budget.fixed_reps is not None:
        return max(1, budget.fixed_reps)
    if protocol.reps is not None:
        return protocol.reps
    est = percentile([r.fwd_ms + r.bwd_ms for r in warm], 50) if warm else 0.0
    return choose_reps(est, budget)


def network_warmup(protocol: NetworkProtocol, budget: Budget) -> int:
    """Untimed steps after the first ones: the protocol's count, else the budget's (at least 1)."""
    return protocol.warmup if protocol.warmup is not None else max(1, budget.warmup)


def run_schedule(step, first: int, warmup: int, reps_for) -> tuple:
    """(first_call_s, timed records): ``first`` untimed first steps (compiles, autotuning, CUDA
    graph recording; their wall time is first_call_s), ``warmup`` untimed steps, then
    ``reps_for(warm-up records)`` timed steps. ``step(i)`` runs step i and returns its record;
    only the last group's records are returned, so no first step ever reaches a statistic."""
    t0 = time.perf_counter()
    try:
        for i in range(first):
            step(i)
    except Exception as exc:
        raise FirstCallError("first call failed") from exc
    first_s = time.perf_counter() - t0
    warm = [step(first + k) for k in range(warmup)]
    reps = reps_for(warm)
    return first_s, [step(first + warmup + k) for k in range(reps)]


def network_measurements(first_s: float, records: list, note: str = "") -> tuple:
    """(forward, backward) Measurements of timed StepRecords: event times per step, the median
    host time per call, the mean peak memory over the steps (KAN-benchmarking's figure)."""

    def mean(values):
        return math.fsum(values) / len(values)

    fwd = Measurement([r.fwd_ms for r in records], mean([r.peak_fwd for r in records]),
                      mean([r.abs_fwd for r in records]), first_s, percentile([r.host_fwd_ms for r in records], 50),
                      note=note)  # fmt: skip
    bwd = Measurement([r.bwd_ms for r in records], mean([r.peak_bwd for r in records]),
                      mean([r.abs_bwd for r in records]), first_s, percentile([r.host_bwd_ms for r in records], 50),
                      note=note)  # fmt: skip
    return fwd, bwd


def _accumulate_into_zeros(net) -> None:
    """Gradients preallocated as zeros outside any compile or capture, for a protocol whose
    gradients accumulate: its steps then all add into the same ``p.grad``, as its loop does
    after the first step; and torch.compile(mode="reduce-overhead") requires it (a .grad
    first allocated inside its CUDA graphs is overwritten by the next replay)."""
    if isinstance(net, EagerNetwork):
        for p in net.model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)


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
        if provider == "linear":
            return LinearProvider()
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

    def network_model(self, provider, wavelet, dtype_name, protocol: NetworkProtocol = CUDA_PORT):
        """``provider``'s network under ``protocol``, ready to step: an ``EagerNetwork`` (eager or
        compiled model) or a ``CapturedNetwork`` (*-graphed)."""
        dev, dtype = self.device, DTYPES[dtype_name]
        model = network_module(provider, protocol, wavelet, device=dev, dtype=dtype)
        model.train()
        if provider.endswith("-graphed"):
            # The forward, the loss and the backward each replayed from a CUDA graph:
            # what the kernels do without the host's per-launch cost (see network_step).
            widths = network_widths(provider, protocol)
            x = torch.zeros(protocol.batch, widths[0], device=dev, dtype=dtype)
            target = torch.zeros(protocol.batch, widths[-1], device=dev, dtype=dtype)
            return CapturedNetwork(model, x, target)
        if provider in COMPILED:  # the network providers among them
            torch.compiler.reset()  # each compiled provider from a clean cache
            if provider in ("wavkan-compiled", "mlp-compiled"):
                model = torch.compile(model)  # as a user writes it: the default mode
            elif provider == "wavkan-reduce-overhead":
                model = torch.compile(model, mode="reduce-overhead")
            else:
                model = torch.compile(model, dynamic=False)
        return EagerNetwork(model)

    @staticmethod
    def network_params(net) -> int:
        return parameter_count(net.model)

    def _network_batches(self, protocol: NetworkProtocol, dtype_name):
        """batch(i) -> (x, target) on the GPU. The CUDA port's protocol rotates among
        NET_INPUT_SETS random sets already there; KAN-benchmarking draws ``batch`` rows at random
        from KAN_DATASET_ROWS rows in host memory (inputs uniform in [-1, 1], its label
        exp(sin(pi x0) + x1^2)) and copies them to the GPU before the start event."""
        dev, dtype = self.device, DTYPES[dtype_name]
        n_in, n_out = protocol.widths[0], protocol.widths[-1]
        if protocol.host_dataset:
            gen = torch.Generator().manual_seed(0)
            inputs = 2 * torch.rand(KAN_DATASET_ROWS, n_in, generator=gen) - 1
            label = torch.exp(torch.sin(math.pi * inputs[:, :1]) + inputs[:, 1:2] ** 2)
            labels = label.expand(KAN_DATASET_ROWS, n_out).contiguous()

            def batch(_i):
                rows = torch.randperm(KAN_DATASET_ROWS, generator=gen)[: protocol.batch]
                return inputs[rows].to(dev, dtype), labels[rows].to(dev, dtype)

            return batch
        gen = torch.Generator(device=dev).manual_seed(0)
        xs = [torch.randn(protocol.batch, n_in, device=dev, generator=gen).to(dtype) for _ in range(NET_INPUT_SETS)]
        ys = [torch.randn(protocol.batch, n_out, device=dev, generator=gen).to(dtype) for _ in range(NET_INPUT_SETS)]
        return lambda i: (xs[i % NET_INPUT_SETS], ys[i % NET_INPUT_SETS])

    def measure_network(self, net, dtype_name, protocol: NetworkProtocol = CUDA_PORT, provider: str = "") -> tuple:
        """(forward, backward) Measurements of ``protocol`` for ``net`` (an ``EagerNetwork`` or
        ``CapturedNetwork``), its model in train mode.

        Each step, as the public protocols time it: gradients to None (when the protocol zeroes
        them), the batch, CUDA events around ``net.forward(x)``, ``torch.cuda.synchronize()``,
        the loss, events around ``net.backward(loss)``, a synchronize. No spin: the events time
        what a caller waits for, the host's time included whenever the GPU waits for it. The
        host's wall time of each call and the peak memory (reset before each call, read after
        its synchronize: outside the events) are kept beside."""
        batch = self._network_batches(protocol, dtype_name)
        net.model.train()
        if not protocol.zero_grad:
            _accumulate_into_zeros(net)
        sync, allocated, peak = torch.cuda.synchronize, torch.cuda.memory_allocated, torch.cuda.max_memory_allocated

        def step(i):
            if protocol.zero_grad:
                net.zero_grad()
            x, target = batch(i)
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            base_f = allocated()
            torch.cuda.reset_peak_memory_stats()
            ev[0].record()
            t0 = time.perf_counter()
            out = net.forward(x)
            host_f = time.perf_counter() - t0
            ev[1].record()
            sync()
            abs_f = peak()
            loss = net.loss(out, target)
            base_b = allocated()
            torch.cuda.reset_peak_memory_stats()
            ev[2].record()
            t0 = time.perf_counter()
            net.backward(loss)
            host_b = time.perf_counter() - t0
            ev[3].record()
            sync()
            abs_b = peak()
            return StepRecord(ev[0].elapsed_time(ev[1]), ev[2].elapsed_time(ev[3]), host_f * 1e3, host_b * 1e3,
                              abs_f - base_f, abs_f, abs_b - base_b, abs_b)  # fmt: skip

        skips = _cudagraph_skips()
        first_s, records = run_schedule(step, first_steps(provider), network_warmup(protocol, self.budget),
                                        lambda warm: network_reps(protocol, self.budget, warm))  # fmt: skip
        notes = []
        if _cudagraph_skips() > skips:
            notes.append("inductor skipped CUDA graphs (counters['inductor']['cudagraph_skips'])")
        if isinstance(net, CapturedNetwork) and not protocol.zero_grad:
            notes.append("each replay overwrites the gradients (the protocol accumulates them)")
        net.zero_grad()
        return network_measurements(first_s, records, "; ".join(notes))

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
        latency = self._time_synced(run, prepare, range(reps))
        peak, peak_abs = self._peak(run, prepare)
        return Measurement(times, peak, peak_abs, first, percentile(host, 50), latency_ms=latency)

    @staticmethod
    def _time_synced(run, prepare, indices) -> list:
        """ms per call as the public protocols time it: the GPU idle (a synchronize after the
        untimed ``prepare``), CUDA events around the call, a synchronize after the end event.
        No spin: where the GPU waits for the host, that wait is in the figure."""
        times = []
        for i in indices:
            state = prepare(i) if prepare is not None else None
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(i, state)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
            state = None
        return times


def _cudagraph_skips() -> int:
    """How many times inductor has declined CUDA graphs in this process (0 where this torch
    keeps no such counter)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["inductor"]["cudagraph_skips"])


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
