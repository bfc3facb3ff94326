"""The benchmark's conv level on any machine: its arithmetic, the restated torch-conv-kan branch
against the package, and the --dry-run plumbing (CSV rows, limits, table). Nothing is timed."""

import csv

import pytest
import torch

from wavkan import bench, wavkan_conv
from wavkan.bench import conv, models, protocol


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


def test_conv_inputs_and_errors_on_cpu(kernel_device):
    """The CUDA runner's input sets and the fused op's error note, on a small case."""
    case = protocol.ConvCase("tiny", 2, 4, 6, (3, 3), (5, 6), stride=2, padding=1, groups=2)

    class Runner:
        device, l2_bytes = kernel_device, 1000

    sets = conv.conv_inputs(Runner, case, "fp32")
    assert len(sets) == protocol.MIN_INPUT_SETS
    x, s, t, w, g = sets[0]
    assert x.shape == (2, 4, 5, 6) and s.shape == (6, 2) and w.shape == (6, 2, 3, 3) and g.shape == (2, 6, 3, 3)
    errors = conv.conv_errors(sets, case, "morlet")
    assert set(errors) == {"y", "dx", "ds", "dt", "dw"} and max(errors.values()) < 1e-5
    y = conv.conv_function("conv-kan-eager", case, "morlet")(x, s, t, w)
    torch.testing.assert_close(y, conv.conv_function("wavkan", case, "morlet")(x, s, t, w), rtol=1e-5, atol=1e-6)


def test_dry_run_conv_level(tmp_path, capsys):
    out = tmp_path / "c"
    assert bench.main(["--dry-run", "--level", "conv", "--out", str(out), "--no-plots", "--no-recorded"]) == 0
    printed = capsys.readouterr().out
    assert "Conv layer 128x64x64 k3x3 32x32 s1p1d1g1" in printed and "exp+FMA limit" in printed
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


def test_conv_level_keeps_only_its_modes(tmp_path):
    out = tmp_path / "c"
    argv = ["--dry-run", "--level", "conv", "--mode", "backward", "full", "--out", str(out), "--no-plots",
            "--no-recorded", "--dtype", "fp32", "bf16"]  # fmt: skip
    assert bench.main(argv) == 0
    with open(out / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["level"] == "conv"]
    assert {r["mode"] for r in rows} == {"full"} and {r["dtype"] for r in rows} == {"fp32", "bf16"}
    bf16 = next(r for r in rows if r["dtype"] == "bf16")
    assert float(bf16["io_gb"]) == pytest.approx(protocol.conv_io_bytes(protocol.CONV_CASES[0], 2) / 1e9, rel=1e-5)
