"""Pictures of the learned edges: wavkan.plot_edges and ``wavkan plot``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from wavkan import WavKAN, WavKANLinear, cli, plot_edges, wavkan_linear  # noqa: E402
from wavkan.plot import layer_input_ranges  # noqa: E402


def _trained_looking(wavelet="mexican_hat", widths=(6, 5, 3)):
    """A float64 WavKAN with scales != 1, translations != 0 and BatchNorm statistics != (0, 1)."""
    torch.manual_seed(3)
    model = WavKAN(list(widths), wavelet, backend="reference").double()
    with torch.no_grad():
        for layer in model.layers:
            layer.scale.uniform_(0.5, 2.0)
            layer.translation.normal_(0, 0.5)
            layer.bn.running_mean.normal_(0, 0.3)
            layer.bn.running_var.uniform_(0.5, 2.0)
            layer.bn.weight.uniform_(0.5, 1.5)
    return model


def _panels(fig):
    return [ax for sub in fig.subfigs for ax in sub.axes if ax.get_visible()]


@pytest.mark.parametrize("wavelet", ["mexican_hat", "shannon"])
def test_plotted_curves_are_the_layers_edge_functions(wavelet):
    """Each panel's (x, y) is one edge's function: moving input i of the layer along x changes
    output o by y(x) - y(x0), the layer's own forward says so."""
    model = _trained_looking(wavelet)
    inputs = torch.randn(40, 6, dtype=torch.float64) * 1.3
    fig = plot_edges(model, inputs, top=4, points=9)
    panels = _panels(fig)
    assert len(panels) == 8  # 4 per layer
    for layer_index, curves in enumerate(fig.curves):
        layer = model.layers[layer_index]
        base = torch.randn(6 if layer_index == 0 else 5, dtype=torch.float64)
        for c in curves:
            x = base.repeat(len(c.x), 1)
            x[:, c.in_index] = c.x
            with torch.no_grad():
                y = wavkan_linear(x, layer.scale, layer.translation, layer.wavelet_weights, wavelet,
                                  backend="reference")[:, c.out_index]  # fmt: skip
            np.testing.assert_allclose((y - y[0]).numpy(), (c.y - c.y[0]).numpy(), rtol=1e-10, atol=1e-12)
    # The panels draw exactly those numbers.
    for ax, c in zip(panels, [c for curves in fig.curves for c in curves]):
        line = ax.lines[0]
        np.testing.assert_array_equal(line.get_xdata(), c.x.numpy())
        np.testing.assert_array_equal(line.get_ydata(), c.y.numpy())
        assert f"input {c.in_index} \u2192 output {c.out_index}" in ax.get_title()


def test_edges_drawn_are_the_strongest_over_the_inputs_range():
    model = _trained_looking("shannon")
    inputs = torch.randn(50, 6, dtype=torch.float64)
    fig = plot_edges(model, inputs, top=3, points=5)
    # Ranges: layer 0 sees the inputs; layer 1 sees layer 0's BatchNorm output in eval mode.
    model.eval()
    with torch.no_grad():
        hidden = model.layers[0](inputs)
    for layer_index, (layer, seen) in enumerate(zip(model.layers, (inputs, hidden))):
        window = torch.hamming_window(layer.in_features, periodic=False, dtype=torch.float64)
        effective = (layer.wavelet_weights.detach() * window).abs().flatten()
        expected = effective.argsort(descending=True)[:3].tolist()
        curves = fig.curves[layer_index]
        assert [c.out_index * layer.in_features + c.in_index for c in curves] == expected
        for c in curves:
            assert c.x[0].item() == pytest.approx(seen[:, c.in_index].min().item(), abs=1e-12)
            assert c.x[-1].item() == pytest.approx(seen[:, c.in_index].max().item(), abs=1e-12)
    assert model.training is False  # we switched it; plot_edges restored the mode it found


def test_layer_input_ranges_restore_the_mode_and_check_shapes():
    model = _trained_looking()
    model.train()
    inputs = torch.linspace(-2, 3, 12, dtype=torch.float64).reshape(2, 6)
    lows, highs = layer_input_ranges(model, inputs)[0]
    assert model.training
    assert torch.equal(lows, inputs[0]) and torch.equal(highs, inputs[1])
    with pytest.raises(ValueError, match=r"inputs must have shape \(N >= 1, 6\), got \(4, 5\)"):
        layer_input_ranges(model, torch.zeros(4, 5))


def test_single_layer_with_explicit_ranges_and_atomic_png(tmp_path):
    layer = WavKANLinear(3, 2, "dog", batch_norm=False).double()
    path = tmp_path / "edges.png"
    fig = plot_edges(layer, path=path, ranges=[(torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([1.0, 0.0, 4.0]))],
                     top=6)  # fmt: skip
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))
    by_input = {c.in_index: c for c in fig.curves[0]}
    assert (by_input[0].x[0].item(), by_input[0].x[-1].item()) == (-1.0, 1.0)
    assert (by_input[1].x[0].item(), by_input[1].x[-1].item()) == (-0.5, 0.5)  # constant input: +-0.5
    with pytest.raises(ValueError, match="pass inputs"):
        plot_edges(layer)


def test_plot_command_draws_a_checkpoint(tmp_path, capsys):
    from wavkan.app.train import TrainConfig, train

    from test_train import synthetic_npz

    npz = synthetic_npz(tmp_path / "synth.npz")
    run = train(TrainConfig(dataset=str(npz), layers=[64, 6, 4], batch_size=32, epochs=1, limit_train=96,
                            device="cpu", progress=False, out=str(tmp_path / "run")))  # fmt: skip
    assert (run.out_dir / "edges.png").read_bytes()[:4] == b"\x89PNG"  # written at the end of the run
    out = tmp_path / "pictures" / "mine.png"
    capsys.readouterr()
    assert cli.main(["plot", "--checkpoint", str(run.out_dir / "checkpoint.pt"), "--out", str(out), "--top", "4"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["plot", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "wavkan plot: error: no checkpoint at" in capsys.readouterr().err


def test_ranges_refuse_non_finite_inputs_and_name_bad_pairs():
    """Found in review: a NaN or inf among the inputs is named as such (it was blamed on a layer,
    sometimes the wrong one), and ranges are checked per layer (a wrong length was a raw
    IndexError); a number stands for every input of its layer."""
    torch.manual_seed(0)
    model = WavKAN([4, 3, 2], backend="reference")
    for bad in (math.nan, math.inf, -math.inf):
        x = torch.randn(100, 4)
        x[50, 2] = bad
        with pytest.raises(ValueError, match="inputs hold NaN or infinite values"):
            layer_input_ranges(model, x)
    with pytest.raises(ValueError, match=r"ranges\[0\]: layer 0 has 4 inputs.*got \(2,\) and \(2,\)"):
        plot_edges(model, ranges=[(torch.zeros(2), torch.ones(2)), (torch.zeros(3), torch.ones(3))])
    with pytest.raises(ValueError, match=r"ranges\[1\] must be a \(min, max\) pair"):
        plot_edges(model, ranges=[(-1.0, 1.0), (0.0,)])
    fig = plot_edges(model, ranges=[(-1.0, 1.0), (torch.zeros(3), 2.0)], top=2)
    assert [c.x[0].item() for c in fig.curves[0]] == [-1.0, -1.0] and fig.curves[1][0].x[-1].item() == 2.0


def test_ranges_of_a_layer_called_with_a_keyword():
    """A container may call its WavKANLinear with x=...: its input is recorded all the same."""

    class Keyword(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = WavKANLinear(4, 2, batch_norm=False, backend="reference")

        def forward(self, inputs):
            return self.head(x=inputs * 2.0)

    x = torch.randn(10, 4)
    (low, high), = layer_input_ranges(Keyword(), x)
    assert torch.equal(low, (x * 2).amin(0).double()) and torch.equal(high, (x * 2).amax(0).double())
