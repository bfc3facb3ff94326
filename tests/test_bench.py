"""The benchmark's plumbing on any machine: its arithmetic, CSV, table, the no-GPU exit, the
paper-equivalent baseline network, and the exp2 ceiling kernel's values (interpreter on CPU).
Nothing here times anything."""

import argparse
import csv
import math

import numpy as np
import pytest
import torch

from wavkan import WAVELETS, WavKAN, wavkan_conv, wavkan_linear
from wavkan import bench
from wavkan.bench import models, network_step, protocol, report


def test_main_without_gpu_prints_message_and_returns_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out_dir = tmp_path / "results"
    assert bench.main(["--quick", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "no CUDA GPU" in printed and "nothing was timed" in printed
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "text, shape",
    [("256x1024x512", (256, 1024, 512)), ("1x1x1", (1, 1, 1)), ("64X7X33", (64, 7, 33)), ("8*4*2", (8, 4, 2))],
)
def test_parse_shape(text, shape):
    assert protocol.parse_shape(text) == shape


@pytest.mark.parametrize("text", ["256x1024", "256x1024x512x2", "ax1x2", "0x1x1", "4x-1x2", "", "2.5x1x1"])
def test_parse_shape_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="BxINxOUT"):
        protocol.parse_shape(text)


def test_bad_shape_on_the_command_line_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(["--shape", "12x3"])
    assert info.value.code == 2
    assert "BxINxOUT" in capsys.readouterr().err


def test_percentile_interpolates_like_numpy():
    values = [3.0, 1.0, 2.0, 5.0, 4.0]
    assert protocol.percentile(values, 50) == 3.0
    assert protocol.percentile(values, 20) == pytest.approx(1.8)
    assert protocol.percentile(values, 80) == pytest.approx(4.2)
    assert protocol.percentile(values, 0) == 1.0 and protocol.percentile(values, 100) == 5.0
    assert protocol.percentile([7.5], 20) == 7.5
    rng = np.random.default_rng(0)
    xs = list(rng.random(37))
    for q in (10, 20, 50, 80, 95):
        assert protocol.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    with pytest.raises(ValueError):
        protocol.percentile([], 50)
    with pytest.raises(ValueError):
        protocol.percentile([1.0], 101)


def test_summarize():
    assert protocol.summarize([2.0, 1.0, 4.0, 3.0]) == {
        "median_ms": 2.5,
        "p20_ms": pytest.approx(1.6),
        "p80_ms": pytest.approx(3.4),
        "mean_ms": 2.5,
        "reps": 4,
    }
    # the mean is KAN-benchmarking's statistic: one slow repetition moves it, not the median
    skewed = protocol.summarize([1.0, 1.0, 1.0, 1.0, 11.0])
    assert skewed["median_ms"] == 1.0 and skewed["mean_ms"] == 3.0


def test_throughput_arithmetic():
    evals = 256 * 1024 * 1024
    eps, xps, frac = protocol.throughput(evals, 6.33, 1, 3.83e12)
    assert eps == pytest.approx(evals / 6.33e-3) == pytest.approx(4.2407e10, rel=1e-4)
    assert xps == eps
    assert frac == pytest.approx(eps / 3.83e12) == pytest.approx(0.011072, rel=1e-3)
    # full: two passes, so twice the exp2 rate for the same evaluations per second
    eps2, xps2, frac2 = protocol.throughput(evals, 2.0, 2, 4e12)
    assert eps2 == pytest.approx(evals / 2e-3)
    assert xps2 == pytest.approx(2 * eps2)
    assert frac2 == pytest.approx(2 * evals / 2e-3 / 4e12)
    assert protocol.throughput(10, 1.0, 1, None) == (1e4, 1e4, None)
    with pytest.raises(ValueError):
        protocol.throughput(10, 0.0, 1, 1.0)


def test_recorded_rows_reproduce_design_percentages():
    rows = protocol.recorded_rows()
    assert all(r["source"] == "recorded" for r in rows)
    pct = {
        (r["provider"], r["mode"], r["B"]): round(100 * r["frac_ceiling"])
        for r in rows
        if r["level"] == "op" and r["frac_ceiling"] is not None
    }
    # benchmarks/RECORDED.md: forward ms (fraction of the exp ceiling)
    assert pct[("reference-eager", "forward", 256)] == 1
    assert pct[("reference-compiled", "forward", 256)] == 17
    assert pct[("seed-naive-cuda", "forward", 256)] == 3
    assert pct[("seed-tiled-cuda", "forward", 256)] == 5
    assert pct[("reference-compiled", "forward", 4096)] == 20
    assert pct[("seed-tiled-cuda", "forward", 4096)] == 37
    net = {(r["provider"], r["mode"]): r for r in rows if r["level"] == "network"}
    assert net[("paper-eager", "forward")]["median_ms"] == 26.14
    assert net[("seed-tiled-cuda", "backward")]["peak_abs_gb"] == pytest.approx(4.17)
    assert net[("mlp", "forward")]["evals_per_s"] is None  # no wavelet evaluations in an MLP
    ceiling = [r for r in rows if r["level"] == "ceiling"]
    assert len(ceiling) == 1 and ceiling[0]["evals_per_s"] == 3.83e12


def test_network_evals_and_shape():
    assert protocol.network_evals([1024] * 5 + [128], 256) == 256 * (4 * 1024 * 1024 + 1024 * 128) == 1107296256
    assert protocol.network_evals([784, 32, 10], 64) == 64 * (784 * 32 + 32 * 10)
    assert protocol.network_shape((1024, 128), 256) == "B256:1024-128"


def test_memory_and_repetition_helpers():
    # 4096 x 1024 x 1024 fp32: 17.2 GB a tensor, 8 of them for the forward
    fits, need = protocol.eager_fits((4096, 1024, 1024), 4, "forward", 130e9)
    assert need == 4096 * 1024 * 1024 * 4 * 8 and not fits
    fits, need = protocol.eager_fits((1024, 1024, 1024), 4, "full", 139e9)
    assert need == 1024**3 * 4 * 10 and fits
    assert protocol.input_set_bytes((64, 1024, 512), 4) == (64 * 1024 + 3 * 512 * 1024 + 64 * 512) * 4
    assert protocol.input_sets_needed(13 * 2**20, 50 * 2**20) == 8
    assert protocol.input_sets_needed(10**9, 50 * 2**20) == 3
    assert protocol.input_sets_needed(1, 50 * 2**20) == 16
    b = protocol.Budget(warmup=3, target_s=0.25, min_reps=10, max_reps=200)
    assert protocol.choose_reps(1.0, b) == 200
    assert protocol.choose_reps(5.0, b) == 50
    assert protocol.choose_reps(80.0, b) == 10
    assert protocol.choose_reps(0.0, b) == 200
    assert protocol.choose_reps(80.0, protocol.Budget(fixed_reps=7)) == 7
    # the GPU spin that lets the host queue a call ahead: 1.5x its host time + 0.05 ms, at most 5 ms
    assert protocol.spin_ms_for(0.1) == pytest.approx(0.2)
    assert protocol.spin_ms_for(0.0) == pytest.approx(0.05)
    assert protocol.spin_ms_for(40.0) == 5.0


def _row(**kw):
    base = dict(level="op", source="measured", provider="wavkan", wavelet="mexican_hat", dtype="fp32",
                mode="forward", B=256, IN=1024, OUT=1024, evals=256 * 1024 * 1024, ceiling=4e12)  # fmt: skip
    base.update(kw)
    return protocol.make_row(**base)


def test_make_row_statistics_and_units():
    r = _row(times_ms=[0.2, 0.1, 0.3, 0.4, 0.5], peak_bytes=2.5e9, peak_abs_bytes=3e9, first_call_s=1.5)
    assert r["median_ms"] == pytest.approx(0.3) and r["p20_ms"] == pytest.approx(0.18) and r["reps"] == 5
    assert r["evals_per_s"] == pytest.approx(256 * 1024 * 1024 / 0.3e-3)
    assert r["frac_ceiling"] == pytest.approx(256 * 1024 * 1024 / 0.3e-3 / 4e12)
    assert r["peak_gb"] == 2.5 and r["peak_abs_gb"] == 3.0
    assert r["shape"] == "256x1024x1024"
    skipped = _row(mode="full", passes=2, status="skipped", note="too big")
    assert skipped["median_ms"] is None and skipped["evals_per_s"] is None and skipped["passes"] == 2


def test_write_csv_columns_and_values(tmp_path):
    rows = [_row(times_ms=[1.0, 2.0, 3.0], peak_bytes=1e9), _row(provider="reference-eager", status="oom", note="x")]
    path = tmp_path / "r.csv"
    report.write_csv(rows, path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == protocol.CSV_COLUMNS
        got = list(reader)
    assert len(got) == 2
    assert got[0]["median_ms"] == "2" and got[0]["p20_ms"] == "1.4" and got[0]["peak_gb"] == "1"
    assert got[0]["evals"] == str(256 * 1024 * 1024) and got[0]["passes"] == "1"
    assert float(got[0]["evals_per_s"]) == pytest.approx(256 * 1024 * 1024 / 2e-3, rel=1e-5)
    assert got[1]["status"] == "oom" and got[1]["median_ms"] == "" and got[1]["gpu"] == ""
    for name in ("level", "source", "provider", "wavelet", "dtype", "mode", "shape", "gpu", "torch", "triton", "date"):
        assert name in protocol.CSV_COLUMNS


def test_format_table_is_fixed_width():
    rows = [_row(times_ms=[6.33] * 3, host_ms=0.0512, latency_ms=[6.9, 7.0, 7.1]),
            _row(provider="reference-eager", mode="full", status="skipped", note="big")]  # fmt: skip
    lines = report.format_table(rows, report.OP_TABLE).splitlines()
    assert lines[0].split()[:4] == ["src", "provider", "mode", "B"]
    assert lines[0].split()[8:13] == ["gpu", "ms", "p20", "p80", "sync"]
    assert lines[1].split() == ["meas", "wavkan", "forward", "256x1024x1024", "6.33", "6.33", "6.33", "7", "0.0512",
                                "42.4", "1.1", "-", "ok"]  # fmt: skip
    assert lines[2].endswith("skipped: big")
    # the numeric columns line up
    assert lines[1].index("6.33") + 4 == lines[0].index("gpu ms") + len("gpu ms")
    assert lines[1].index(" 7 ") + 2 == lines[0].index("sync ms") + len("sync ms")


@pytest.mark.parametrize("wavelet", WAVELETS)
def test_paper_baseline_matches_the_package(wavelet):
    torch.manual_seed(1)
    widths = [7, 5, 3]
    ours = WavKAN(widths, wavelet, backend="reference", dtype=torch.float64)
    with torch.no_grad():
        for layer in ours.layers:
            layer.scale.uniform_(0.5, 1.5)
            layer.translation.normal_(0, 0.3)
    paper = models.PaperWavKAN(widths, wavelet, backend="reference", dtype=torch.float64)
    paper.load_state_dict(ours.state_dict())
    x = torch.randn(11, 7, dtype=torch.float64)
    torch.testing.assert_close(paper(x), ours(x), rtol=1e-10, atol=1e-12)
    layer = ours.layers[0]
    args = (x, layer.scale, layer.translation, layer.wavelet_weights)
    torch.testing.assert_close(
        models.paper_linear(*args, wavelet), wavkan_linear(*args, wavelet, backend="reference"), rtol=1e-10, atol=1e-12
    )


def test_mlp_baseline_shape():
    mlp = models.make_mlp([8, 6, 4])
    assert [type(m).__name__ for m in mlp] == ["Linear", "BatchNorm1d", "Linear", "BatchNorm1d"]
    assert mlp(torch.randn(5, 8)).shape == (5, 4)


def test_dry_run_writes_csv_plots_and_table(tmp_path, capsys):
    out = tmp_path / "b"
    assert bench.main(["--dry-run", "--quick", "--out", str(out), "--wavelet", "morlet"]) == 0
    printed = capsys.readouterr().out
    assert "DRY RUN" in printed and "Op level" in printed and "Network level" in printed
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    fake = [r for r in rows if r["source"] == "dry-run"]
    ops = {(r["provider"], r["mode"], r["shape"]) for r in fake if r["level"] == "op"}
    assert ops == {
        (p, m, s) for p in protocol.OP_PROVIDERS for m in protocol.MODES for s in ("256x1024x1024", "4096x1024x1024")
    }
    assert {r["provider"] for r in fake if r["level"] == "network"} == set(protocol.NET_PROVIDERS)
    assert all(r["wavelet"] in ("morlet", "") for r in fake)
    # the paper's formula at 4096 x 1024 x 1024 fp32 needs ~172 GB for the backward: skipped
    skipped = [r for r in fake if r["status"] == "skipped"]
    assert {(r["provider"], r["shape"]) for r in skipped} == {("reference-eager", "4096x1024x1024")}
    rec = [r for r in rows if r["source"] == "recorded"]
    assert any(r["provider"] == "seed-tiled-cuda" and r["median_ms"] == "3" for r in rec)
    # matplotlib is in the test extra: the plots are always made here.
    assert (out / "op_throughput_morlet_fp32.png").stat().st_size > 0
    assert (out / "network_morlet_fp32.png").stat().st_size > 0


def _chains_reference(programs, block, n_iter, c):
    idx = np.arange(programs * block)
    seed = idx.astype(np.float32) * np.float32(1e-9)
    chains = []
    for j in range(8):
        a = seed + np.float32((j + 1) / 8)
        for _ in range(n_iter):
            a = np.exp2(a * np.float32(c))
        chains.append(a)
    return ((chains[0] + chains[1]) + (chains[2] + chains[3])) + ((chains[4] + chains[5]) + (chains[6] + chains[7]))


def test_exp2_ceiling_kernel_values(kernel_device):
    pytest.importorskip("triton")
    from wavkan.bench.ceiling import CHAINS, exp2_chains

    programs, block, n_iter = 3, 16, 5
    out = torch.full((programs * block,), math.nan, device=kernel_device)
    n_exp = exp2_chains(out, n_iter, c=-1.0, block=block, num_warps=1)
    assert n_exp == programs * block * CHAINS * n_iter
    expected = torch.from_numpy(_chains_reference(programs, block, n_iter, -1.0))
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-6)
    # converging to 8 times the fixed point of a = 2^-a
    long = torch.empty(block, device=kernel_device)
    exp2_chains(long, 60, block=block, num_warps=1)
    assert torch.allclose(long.cpu(), torch.full((block,), 8 * 0.641185744), rtol=1e-5)
    with pytest.raises(ValueError):
        exp2_chains(torch.empty(10, device=kernel_device), 1, block=16)


def test_eager_network_runs_the_protocol_step():
    """EagerNetwork's three parts are model(x), the MSE loss and its backward."""
    model = WavKAN([6, 5, 3], "dog", batch_norm=True, backend="reference")
    x, target = torch.randn(8, 6), torch.randn(8, 3)
    net = network_step.EagerNetwork(model)
    net.zero_grad()
    out = net.forward(x)
    loss = net.loss(out, target)
    net.backward(loss)
    expected = torch.nn.functional.mse_loss(model(x), target)
    assert torch.equal(loss, expected)
    grads = [p.grad.clone() for p in model.parameters()]
    net.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    expected.backward()
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))


@pytest.mark.gpu
def test_captured_network_matches_eager():
    """The graphed benchmark's step: each replay gives the eager step's output and gradients,
    and a second replay overwrites the gradients instead of adding to them."""
    import copy

    model = WavKAN([64, 48, 16], "mexican_hat", batch_norm=True, backend="triton", device="cuda")
    eager = copy.deepcopy(model)
    x, target = torch.randn(32, 64, device="cuda"), torch.randn(32, 16, device="cuda")
    net = network_step.CapturedNetwork(model, x, target)
    for _ in range(2):
        net.zero_grad()
        out = net.forward(x)
        loss = net.loss(out, target)
        net.backward(loss)
    eager_out = eager(x)
    eager_loss = torch.nn.functional.mse_loss(eager_out, target)
    eager_loss.backward()
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)


# --- what a user meets: sync per call, host time, nn.Linear, compiled and graphed networks, ------
# --- KAN-benchmarking's protocol ----------------------------------------------------------------


def _dry_rows(tmp_path, *argv):
    out = tmp_path / "b"
    assert bench.main(["--dry-run", "--quick", "--no-plots", "--out", str(out), *argv]) == 0
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_dry_run_op_rows_carry_gpu_time_sync_latency_and_host_time(tmp_path):
    rows = _dry_rows(tmp_path, "--level", "op", "--provider", "wavkan", "linear", "reference-compiled")
    ops = [r for r in rows if r["level"] == "op" and r["source"] == "dry-run"]
    assert {r["provider"] for r in ops} == {"wavkan", "linear", "reference-compiled"}
    assert len(ops) == 3 * 3 * 2  # providers x modes x shapes
    for r in ops:
        assert r["status"] == "ok"
        for column in ("median_ms", "p20_ms", "p80_ms", "mean_ms", "latency_ms", "latency_p20_ms", "latency_p80_ms",
                       "host_ms"):  # fmt: skip
            assert float(r[column]) > 0, (r["provider"], column)
        assert float(r["latency_p20_ms"]) <= float(r["latency_ms"]) <= float(r["latency_p80_ms"])
        assert r["params"] == "" and r["protocol"] == ""
        assert float(r["evals_per_s"]) == pytest.approx(int(r["B"]) * 1024 * 1024 / (float(r["median_ms"]) * 1e-3),
                                                        rel=1e-5)  # fmt: skip
        # nn.Linear computes no exp: no fraction of the exp2 ceiling
        assert (r["frac_ceiling"] == "") == (r["provider"] == "linear")


def test_linear_provider_is_an_nn_linear_per_input_set():
    """The op provider ``linear``: nn.Linear(in, out) with its bias, the row's weights, one module
    per input set, its gradients set to None at each call instead of accumulating."""
    from wavkan.bench import runners

    runner = object.__new__(runners.CudaRunner)  # op_function needs no GPU for this provider
    f = runner.op_function("linear", "dog")
    x, s, t = torch.randn(5, 7, requires_grad=True), torch.rand(3, 7), torch.randn(3, 7)
    w, w2 = torch.randn(3, 7), torch.randn(3, 7)
    y = f(x, s, t, w)
    layer = f.layer_for(w)
    assert type(layer) is torch.nn.Linear and layer.bias is not None
    assert torch.equal(layer.weight, w) and layer.weight is not w
    torch.testing.assert_close(y, x @ w.T + layer.bias)
    assert f.layer_for(w2) is not layer and f.layer_for(w) is layer  # one module per set, kept
    g = torch.randn(5, 3)
    y.backward(g)
    first = layer.weight.grad.clone()
    torch.testing.assert_close(first, g.T @ x.detach())
    f(x, s, t, w).backward(g)
    torch.testing.assert_close(layer.weight.grad, first)  # set to None at the call: not 2 * first
    torch.testing.assert_close(layer.bias.grad, g.sum(0))


def _expected_params(provider, proto, wavelet="mexican_hat"):
    """sum(p.numel()) of the provider's model built here on the CPU, independently of the runner."""
    if provider.startswith("mlp"):
        if proto.mlp_activations:
            model = models.make_relu_sigmoid_mlp(proto.mlp_widths)
        else:
            model = models.make_mlp(proto.mlp_widths)
    elif provider.startswith("paper"):
        model = models.PaperWavKAN(proto.widths, wavelet, backend="reference")
    else:
        model = WavKAN(proto.widths, wavelet, backend="reference")
    return sum(p.numel() for p in model.parameters())


def test_dry_run_cuda_port_network_rows(tmp_path):
    rows = _dry_rows(tmp_path, "--level", "network", "--wavelet", "dog", "--reps", "6")
    net = [r for r in rows if r["level"] == "network" and r["source"] == "dry-run"]
    assert {(r["provider"], r["mode"]) for r in net} == {(p, m) for p in protocol.NET_PROVIDERS
                                                          for m in ("forward", "backward")}  # fmt: skip
    for r in net:
        assert r["protocol"] == "cuda-port" and r["status"] == "ok" and r["B"] == "256"
        assert int(r["params"]) == _expected_params(r["provider"], protocol.CUDA_PORT, "dog")
        assert r["reps"] == "6"  # --reps applies
        for column in ("median_ms", "mean_ms", "host_ms", "first_call_s", "peak_abs_gb"):
            assert r[column] != "", (r["provider"], column)
        assert r["latency_ms"] == ""  # op level only
        # a FakeRunner first step is 5000 ms: it never reaches a statistic
        assert float(r["p80_ms"]) < 1000 and float(r["mean_ms"]) < 1000
    params = {r["provider"]: int(r["params"]) for r in net}
    # 3 parameters an edge, BN's weight and bias per output; nn.Linear's weight and bias, BN
    edges, outputs = 4 * 1024 * 1024 + 1024 * 128, 4 * 1024 + 128
    assert params["wavkan"] == params["wavkan-graphed"] == params["paper-compiled"] == 3 * edges + 2 * outputs
    assert params["mlp"] == params["mlp-compiled"] == params["mlp-graphed"] == edges + 3 * outputs
    shapes = {r["shape"] for r in net}
    assert shapes == {"B256:1024-1024-1024-1024-1024-128"}
    # the recorded network rows are of this protocol
    rec = [r for r in rows if r["source"] == "recorded" and r["level"] == "network"]
    assert rec and {r["protocol"] for r in rec} == {"cuda-port"}


def test_dry_run_kan_benchmarking_protocol(tmp_path):
    rows = _dry_rows(tmp_path, "--level", "network", "--protocol", "kan-benchmarking")
    net = [r for r in rows if r["level"] == "network"]
    assert {r["source"] for r in net} == {"dry-run"}  # no recorded rows: they are of the CUDA port's protocol
    assert {r["protocol"] for r in net} == {"kan-benchmarking"}
    assert {(r["provider"], r["mode"]) for r in net} == {(p, m) for p in protocol.NET_PROVIDERS
                                                          for m in ("forward", "backward")}  # fmt: skip
    kb = protocol.KAN_BENCHMARKING
    for r in net:
        assert r["status"] == "ok" and r["B"] == "100" and r["reps"] == "10"  # mean of 10 steps
        assert int(r["params"]) == _expected_params(r["provider"], kb)
        mlp = r["provider"].startswith("mlp")
        assert r["shape"] == ("B100:1000-10000-1" if mlp else "B100:1000-2000-1")
        assert r["evals"] == ("" if mlp else str(100 * (1000 * 2000 + 2000)))
        assert float(r["mean_ms"]) < 1000  # no first step inside
    params = {r["provider"]: int(r["params"]) for r in net}
    # KAN-benchmarking's own table lists its MLP at 10020001 parameters
    assert params["mlp"] == params["mlp-compiled"] == params["mlp-graphed"] == 10020001
    # the paper's code adds an unused (out, in) weight per layer (8012002 there); not here
    assert params["wavkan"] == params["paper-eager"] == 3 * (1000 * 2000 + 2000) + 2 * (2000 + 1) == 6010002


def test_dry_run_both_protocols_plots_each(tmp_path, capsys):
    out = tmp_path / "b"
    argv = ["--dry-run", "--quick", "--level", "network", "--out", str(out), "--protocol", "cuda-port",
            "kan-benchmarking"]  # fmt: skip
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "the CUDA port's protocol" in printed and "KAN-benchmarking's protocol" in printed
    assert "its figure: the mean" in printed and "its figure: the median" in printed
    assert (out / "network_mexican_hat_fp32.png").stat().st_size > 0
    assert (out / "network_kan-benchmarking_mexican_hat_fp32.png").stat().st_size > 0
    # every table line of the network tables is as wide as its header allows (fixed width)
    lines = [line for line in printed.splitlines() if line.startswith("fake wavkan-reduce-overhead")]
    assert len(lines) == 4
    header = next(line for line in printed.splitlines() if line.startswith("src  provider") and "params" in line)
    assert all(line.index(" mexican_hat ") + 1 == header.index("wavelet") for line in lines)


def test_protocol_helpers():
    kb, cp = protocol.KAN_BENCHMARKING, protocol.CUDA_PORT
    assert protocol.PROTOCOLS == {"cuda-port": cp, "kan-benchmarking": kb}
    assert protocol.network_widths("mlp-graphed", kb) == (1000, 10000, 1)
    assert protocol.network_widths("wavkan-compiled", kb) == (1000, 2000, 1)
    assert protocol.network_widths("mlp", cp) == protocol.network_widths("paper-eager", cp) == protocol.NET_WIDTHS
    assert protocol.first_steps("wavkan") == protocol.first_steps("wavkan-graphed") == 1
    assert protocol.first_steps("wavkan-reduce-overhead") == protocol.first_steps("paper-compiled") == 3
    assert not kb.zero_grad and cp.zero_grad and kb.statistic == "mean" and cp.statistic == "median"


def test_run_schedule_keeps_first_and_warmup_steps_out():
    from wavkan.bench.runners import FirstCallError, run_schedule

    calls = []

    def step(i):
        calls.append(i)
        return i

    seen_warm = []

    def reps_for(warm):
        seen_warm.extend(warm)
        return 4

    first_s, records = run_schedule(step, 3, 2, reps_for)
    assert calls == list(range(9)) and seen_warm == [3, 4] and records == [5, 6, 7, 8]
    assert first_s >= 0

    def failing_first(i):
        raise RuntimeError("compile error")

    with pytest.raises(FirstCallError) as info:
        run_schedule(failing_first, 1, 0, lambda warm: 1)
    assert isinstance(info.value.__cause__, RuntimeError)

    def failing_later(i):
        if i == 2:
            raise ValueError("late")
        return i

    with pytest.raises(ValueError, match="late"):
        run_schedule(failing_later, 1, 1, lambda warm: 3)


def test_network_reps_and_warmup():
    from wavkan.bench.runners import StepRecord, network_reps, network_warmup

    kb, cp = protocol.KAN_BENCHMARKING, protocol.CUDA_PORT
    budget = protocol.Budget(warmup=3, target_s=0.25, min_reps=10, max_reps=200)
    warm = [StepRecord(1.0, 4.0, 0, 0, 0, 0, 0, 0)] * 3  # 5 ms a step: 50 steps fill 0.25 s
    assert network_reps(cp, budget, warm) == 50
    assert network_reps(kb, budget, warm) == 10
    fixed = protocol.Budget(fixed_reps=7)
    assert network_reps(cp, fixed, warm) == network_reps(kb, fixed, warm) == 7
    assert network_warmup(kb, budget) == 0 and network_warmup(cp, budget) == 3
    assert network_warmup(cp, protocol.Budget(warmup=0)) == 1


def test_network_measurements_statistics():
    from wavkan.bench.runners import StepRecord, network_measurements

    records = [StepRecord(1.0, 2.0, 0.5, 0.7, 10.0, 100.0, 20.0, 200.0),
               StepRecord(3.0, 4.0, 0.1, 0.9, 30.0, 300.0, 40.0, 400.0),
               StepRecord(2.0, 9.0, 0.3, 0.8, 20.0, 200.0, 60.0, 600.0)]  # fmt: skip
    fwd, bwd = network_measurements(1.5, records, note="n")
    assert fwd.times_ms == [1.0, 3.0, 2.0] and bwd.times_ms == [2.0, 4.0, 9.0]
    assert fwd.host_ms == 0.3 and bwd.host_ms == 0.8  # medians
    assert fwd.peak_bytes == 20.0 and fwd.peak_abs_bytes == 200.0  # means, as KAN-benchmarking reports
    assert bwd.peak_bytes == 40.0 and bwd.peak_abs_bytes == 400.0
    assert fwd.first_call_s == bwd.first_call_s == 1.5 and fwd.note == bwd.note == "n"


def test_network_module_per_provider():
    kb, cp = protocol.KAN_BENCHMARKING, protocol.CUDA_PORT
    wk = models.network_module("wavkan-reduce-overhead", kb, "morlet")
    assert type(wk) is WavKAN and wk.layers_hidden == [1000, 2000, 1] and wk.wavelet == "morlet"
    assert all(layer.backend == "triton" and layer.bn is not None for layer in wk.layers)
    paper = models.network_module("paper-compiled", cp, "dog")
    assert type(paper) is models.PaperWavKAN and paper.layers_hidden == list(protocol.NET_WIDTHS)
    assert all(layer.backend == "reference" for layer in paper.layers)
    mlp = models.network_module("mlp-graphed", kb, "dog")
    assert [type(m).__name__ for m in mlp] == ["Linear", "ReLU", "Linear", "Sigmoid"]
    assert (mlp[0].in_features, mlp[0].out_features, mlp[2].out_features) == (1000, 10000, 1)
    y = mlp(torch.randn(4, 1000))
    assert y.shape == (4, 1) and bool(((y > 0) & (y < 1)).all())
    seed_mlp = models.network_module("mlp", cp, "dog")
    assert [type(m).__name__ for m in seed_mlp][:2] == ["Linear", "BatchNorm1d"]
    on_meta = models.network_module("wavkan", kb, "dog", device="meta")
    assert models.parameter_count(on_meta) == models.parameter_count(wk) == 6010002
    with pytest.raises(ValueError, match="unknown network provider"):
        models.network_module("resnet", cp, "dog")


def test_kan_benchmarking_batches_are_drawn_from_its_dataset():
    from wavkan.bench import runners

    runner = object.__new__(runners.CudaRunner)  # _network_batches only needs a device
    runner.device = torch.device("cpu")
    batch = runner._network_batches(protocol.KAN_BENCHMARKING, "fp32")
    x0, y0 = batch(0)
    x1, y1 = batch(1)
    assert x0.shape == (100, 1000) and y0.shape == (100, 1)
    assert float(x0.min()) >= -1 and float(x0.max()) <= 1
    torch.testing.assert_close(y0, torch.exp(torch.sin(math.pi * x0[:, :1]) + x0[:, 1:2] ** 2))
    assert not torch.equal(x0, x1)  # a new random draw each step
    # 100 distinct rows of the 1000 (drawn without replacement)
    assert torch.unique(x0[:, 0]).numel() == 100
    seed = runner._network_batches(protocol.CUDA_PORT, "bf16")
    x, y = seed(0)
    assert x.shape == (256, 1024) and y.shape == (256, 128) and x.dtype == torch.bfloat16
    assert seed(3)[0] is x  # the CUDA port's protocol rotates among 3 sets


def test_accumulating_protocol_preallocates_zero_grads():
    """Gradients that accumulate (KAN-benchmarking) start as zeros allocated outside any compile or
    capture, and every step adds into them."""
    from wavkan.bench.runners import _accumulate_into_zeros

    model = WavKAN([6, 5, 3], "mexican_hat", batch_norm=False, backend="reference", dtype=torch.float64)
    net = network_step.EagerNetwork(model)
    _accumulate_into_zeros(net)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and not g.any() for g in grads)
    x, target = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    net.backward(net.loss(net.forward(x), target))
    once = [p.grad.clone() for p in model.parameters()]
    net.backward(net.loss(net.forward(x), target))
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))  # the same buffers
    for p, g in zip(model.parameters(), once):
        torch.testing.assert_close(p.grad, 2 * g)


@pytest.mark.gpu
def test_cuda_runner_network_providers_under_a_small_protocol():
    """Every network provider steps under an accumulating protocol and a zeroing one; the runner
    returns the protocol's number of timed steps, positive times, the first steps apart."""
    from wavkan.bench.runners import CudaRunner

    runner = CudaRunner(protocol.Budget(warmup=1, fixed_reps=None, min_reps=3, max_reps=3))
    for zero in (True, False):
        small = protocol.NetworkProtocol(
            name="small", widths=(64, 48, 16), mlp_widths=(64, 96, 16), mlp_activations=not zero, batch=32,
            zero_grad=zero, statistic="mean", warmup=1, reps=4 if not zero else None, host_dataset=not zero,
            title="small")  # fmt: skip
        for provider in protocol.NET_PROVIDERS:
            net = runner.network_model(provider, "mexican_hat", "fp32", small)
            assert runner.network_params(net) == _expected_params(provider, small)
            fwd, bwd = runner.measure_network(net, "fp32", small, provider)
            assert len(fwd.times_ms) == len(bwd.times_ms) == (3 if zero else 4), provider
            assert min(fwd.times_ms) > 0 and min(bwd.times_ms) > 0 and fwd.host_ms > 0 and fwd.first_call_s > 0
            runner.cleanup()


@pytest.mark.gpu
def test_cuda_runner_op_rows_time_three_ways():
    from wavkan.bench.runners import CudaRunner

    runner = CudaRunner(protocol.Budget(warmup=1, fixed_reps=3))
    sets = runner.op_inputs((64, 33, 17), "fp32")
    for provider in ("wavkan", "linear", "reference-eager"):
        m = runner.measure_op(runner.op_function(provider, "mexican_hat"), sets, "full")
        assert len(m.times_ms) == len(m.latency_ms) == 3 and m.host_ms > 0
        runner.release_grads(sets)


# --- the conv level ---------------------------------------------------------------------------


def test_conv_counts_limit_and_io_bytes():
    cifar = protocol.CONV_CASES[0]
    assert cifar.out_spatial == (32, 32) and cifar.shape == "128x64x64 k3x3 32x32 s1p1d1g1"
    values, taps = protocol.conv_counts(cifar)
    assert values == 128 * 64 * 64 * 32 * 32 and taps == 9 * values
    # forward: one exp per value, one FMA per tap; the FMA pipe binds at 3x3
    assert protocol.conv_limit_ms(cifar, "forward", 3.83e12) == pytest.approx(taps / 29e12 * 1e3)
    assert protocol.conv_limit_ms(cifar, "full", 3.83e12) == pytest.approx(3 * taps / 29e12 * 1e3)
    assert protocol.conv_limit_ms(cifar, "forward", 1e12) == pytest.approx(values / 1e12 * 1e3)
    ecg = protocol.CONV_CASES[1]
    assert ecg.out_spatial == (5000,)
    x, y, params = 64 * 12 * 5000, 64 * 64 * 5000, 64 * 12 * (2 + 7)
    assert protocol.conv_io_bytes(ecg, 4) == 2 * 4 * (x + y + params)
    strided = protocol.CONV_CASES[2]
    assert strided.out_spatial == (32, 32)
    values, taps = protocol.conv_counts(strided)
    assert values == 64 * 128 * 16 * 64 * 64 and taps == 64 * 128 * 16 * 32 * 32 * 9


@pytest.mark.parametrize("wavelet", ["mexican_hat", "shannon"])
@pytest.mark.parametrize(
    "C, OUT, kernel, spatial, stride, padding, dilation, groups",
    [(4, 6, (3, 3), (5, 6), 1, 1, 1, 2), (3, 4, (5,), (11,), 2, 2, 1, 1), (4, 4, (3, 2), (7, 7), 2, 1, 2, 4)],
    ids=["2d-groups2", "1d-stride2", "2d-depthwise-dilated"],
)
def test_conv_kan_branch_is_the_layer(wavelet, C, OUT, kernel, spatial, stride, padding, dilation, groups):
    """The restated torch-conv-kan branch computes what the package's reference computes."""
    ig = C // groups
    x = torch.randn(2, C, *spatial, dtype=torch.float64)
    s = torch.rand(OUT, ig, dtype=torch.float64) + 0.5
    t = torch.randn(OUT, ig, dtype=torch.float64) * 0.5
    w = torch.randn(OUT, ig, *kernel, dtype=torch.float64)
    got = models.conv_kan_wavelet_branch(x, s, t, w, stride, padding, dilation, groups, wavelet)
    expected = wavkan_conv(x, s, t, w, stride, padding, dilation, groups, wavelet, backend="reference")
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_dry_run_conv_level(tmp_path, capsys):
    out = tmp_path / "c"
    assert bench.main(["--dry-run", "--level", "conv", "--out", str(out), "--no-plots", "--no-recorded"]) == 0
    printed = capsys.readouterr().out
    assert "Conv level" in printed and "exp+FMA limit" in printed
    with open(out / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["level"] == "conv"]
    cases = {c.shape: c for c in protocol.CONV_CASES}
    assert {(r["provider"], r["mode"], r["shape"]) for r in rows} == {
        (p, m, s) for p in protocol.CONV_PROVIDERS for m in protocol.CONV_MODES for s in cases
    }
    for r in rows:
        case = cases[r["shape"]]
        limit = protocol.conv_limit_ms(case, r["mode"], protocol.RECORDED_CEILING)
        assert float(r["limit_ms"]) == pytest.approx(limit, rel=1e-5)
        assert float(r["frac_limit"]) == pytest.approx(limit / float(r["median_ms"]), rel=1e-4)
        assert float(r["io_gb"]) == pytest.approx(protocol.conv_io_bytes(case, 4) / 1e9, rel=1e-5)
        assert int(r["evals"]) == protocol.conv_counts(case)[0]
        assert r["note"].startswith("err vs f64") == (r["provider"] == "wavkan" and r["mode"] == "forward")


@pytest.mark.parametrize("target", ["file", "under-a-file", "empty", "csv-folder"])
def test_an_unusable_out_is_refused_before_anything_runs(target, tmp_path, capsys, monkeypatch):
    """--out is created and checked first (a GPU run lasts minutes, and used to end in a
    traceback there with every result lost): one line, status 2, no row measured."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "csvdir" / "results.csv").mkdir(parents=True)
    out = {"file": tmp_path / "afile", "under-a-file": tmp_path / "afile" / "sub", "empty": "",
           "csv-folder": tmp_path / "csvdir"}[target]
    ran = []
    monkeypatch.setattr(bench.run, "run_op_level", lambda *a, **k: ran.append(1) or [])
    assert bench.main(["--dry-run", "--level", "op", "--shape", "2x2x2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wavkan bench: error: --out: ") and not ran


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "fast"])
def test_a_ceiling_that_is_not_a_positive_rate_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as caught:
        bench.main(["--dry-run", "--level", "op", "--shape", "2x2x2", "--ceiling", value])
    assert caught.value.code == 2
    assert f"expected a finite number > 0, got {value!r}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, notes", [
    (["--level", "network", "--shape", "64x8x8", "--mode", "forward"],
     ["note: --mode, --shape do not apply to --level network; ignored"]),
    (["--level", "op", "--protocol", "kan-benchmarking"], ["note: --protocol does not apply to --level op; ignored"]),
    (["--level", "conv", "--mode", "backward", "full", "--provider", "linear"],
     ["note: --provider does not apply to --level conv; ignored",
      "note: --mode backward: the conv level times forward and full only; ignored"]),
    (["--level", "all", "--shape", "64x8x8", "--protocol", "kan-benchmarking"], []),
    (["--level", "conv"], []),  # --mode's default names every mode: nothing was asked of conv
    (["--level", "network", "--protocol", "cuda-port", "kan-benchmarking"], []),
])
def test_options_a_level_does_not_read_are_named(argv, notes, capsys, monkeypatch):
    """An option the chosen level does not read is named as ignored before anything runs (the
    run would otherwise look like it measured what was asked)."""
    from wavkan.bench import run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run.main(argv) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert printed == notes
