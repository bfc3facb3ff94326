"""``FakeRunner`` (``wavkan bench --dry-run``): made-up timings fed through the same plumbing as
``runners.CudaRunner``, so that rows, CSV, plots and table can be tested without a GPU."""

from __future__ import annotations

import torch

from .models import network_module, parameter_count
from .protocol import (
    CUDA_PORT, DTYPES, EAGER_TENSORS, RECORDED_CEILING, Budget, NetworkProtocol, conv_counts, conv_io_bytes,
    first_steps, network_evals, network_widths,
)
from .runners import (
    Measurement, StepRecord, _now, _triton_version, network_measurements, network_reps, network_warmup, run_schedule,
)


class FakeNetwork:
    """--dry-run's network: the provider's real module, built on the meta device (its parameter
    count is real; nothing runs)."""

    def __init__(self, provider: str, model):
        self.provider, self.model = provider, model


class FakeRunner:
    """--dry-run: deterministic made-up times from a cost model, to exercise rows, CSV, plots and
    table on any machine. Nothing is timed and nothing here is a measurement; the network level
    runs the real schedule (``run_schedule``) over made-up steps, and counts the parameters of
    the real modules built on the meta device."""

    source = "dry-run"
    RATES = {"wavkan": 2.5e12, "wavkan-graphed": 2.5e12, "wavkan-compiled": 2e12,
             "wavkan-reduce-overhead": 2.4e12, "reference-eager": 4e10, "reference-compiled": 6e11,
             "paper-eager": 4e10, "paper-compiled": 5e11, "linear": 2e13, "mlp": 1e13, "mlp-compiled": 1e13,
             "mlp-graphed": 1e13}  # fmt: skip
    # made-up host ms per call; a graph replay costs the host little
    HOST_MS = {"linear": 0.03, "mlp": 0.2, "wavkan-graphed": 0.02, "mlp-graphed": 0.02, "wavkan-reduce-overhead": 0.05}
    FIRST_STEP_MS = 5000.0  # made-up time of a first (compiling) step: must never reach a statistic

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
        host = self.HOST_MS.get(provider, 0.3)
        times = self._times(ms)
        # synchronised per call: the host's issue time, then what the GPU has left
        latency = [max(t, host) + 0.01 for t in times]
        return Measurement(times, peak, peak + 1e8, 0.0, host, latency_ms=latency)

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

    def network_model(self, provider, wavelet, dtype_name, protocol: NetworkProtocol = CUDA_PORT):
        model = network_module(provider, protocol, wavelet, device="meta", dtype=DTYPES[dtype_name])
        return FakeNetwork(provider, model)

    @staticmethod
    def network_params(net) -> int:
        return parameter_count(net.model)

    def measure_network(self, net, dtype_name, protocol: NetworkProtocol = CUDA_PORT, provider: str = "") -> tuple:
        widths = network_widths(net.provider, protocol)
        ms = network_evals(widths, protocol.batch) / self.RATES[net.provider] * 1e3 + 0.05
        host = self.HOST_MS.get(net.provider, 0.3) * (len(widths) - 1)
        first = first_steps(provider or net.provider)

        def step(i):
            if i < first:
                slow = self.FIRST_STEP_MS
                return StepRecord(slow, slow, slow, slow, 0, 0, 0, 0)
            k = 1 + 0.01 * (i % 7 - 3)
            fwd, bwd = max(ms, host) * k, max(2.5 * ms, 2 * host) * k
            return StepRecord(fwd, bwd, host, 2 * host, 1e8, 2e8, 2e8, 4e8)

        first_s, records = run_schedule(step, first, network_warmup(protocol, self.budget),
                                        lambda warm: network_reps(protocol, self.budget, warm))  # fmt: skip
        return network_measurements(first_s, records)
