"""Pictures of what a Wav-KAN learned: each layer's strongest edge functions.

An edge (o, i) of a ``WavKANLinear`` adds ``f(x) = w[o,i] H[i] psi((x - t[o,i]) / s[o,i])`` to
output o, where x is input i of the layer and H the wavelet's input window (shannon's Hamming
window; 1 for the other wavelets). ``plot_edges`` draws, for every layer, a grid of the edges
with the largest ``|w H|``, each over the range its input took on data you pass: the minimum
to the maximum of input i of that layer over ``inputs``, the model in eval mode (BatchNorm
with its running statistics, as at inference). Pass the training set to see each function
where training used it; outside that range the curve says nothing about the model. BatchNorm,
which follows each layer's sum, is not part of an edge.

matplotlib is imported when a figure is made (``pip install 'wavkan[train]'``); the rest of
wavkan never needs it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .files import new_figure, save_png
from .wavelets import get_wavelet

__all__ = ["EdgeCurve", "layer_input_ranges", "edge_curves", "plot_edges"]


class EdgeCurve:
    """One edge's function sampled on a grid: ``x`` (P,) and ``y`` (P,), float64 CPU tensors."""

    def __init__(self, layer_index: int, out_index: int, in_index: int, weight: float, x: Tensor, y: Tensor):
        self.layer_index, self.out_index, self.in_index = layer_index, out_index, in_index
        self.weight = weight  # w[o, i] H[i], the edge's effective weight
        self.x, self.y = x, y


def _wavkan_layers(model: nn.Module) -> list:
    from .nn import WavKANLinear

    if isinstance(model, WavKANLinear):
        return [model]
    layers = [m for m in model.modules() if isinstance(m, WavKANLinear)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no WavKANLinear layer to draw")
    return layers


@torch.no_grad()
def layer_input_ranges(model: nn.Module, inputs: Tensor, batch_size: int = 10000) -> list[tuple[Tensor, Tensor]]:
    """(min, max) of every input feature of every ``WavKANLinear`` of ``model``, each (in,),
    over ``inputs``, with the model in eval mode (restored after). ``inputs``: (N, in_features)
    for a ``WavKAN`` or ``WavKANLinear``; for any other module holding ``WavKANLinear`` layers
    (a conv net with a ``WavKANLinear`` head), N of whatever the module takes, fed
    ``batch_size`` rows at a time."""
    from .nn import WavKAN, WavKANLinear

    layers = _wavkan_layers(model)
    if isinstance(model, (WavKAN, WavKANLinear)) and (
            inputs.dim() != 2 or inputs.shape[0] < 1 or inputs.shape[1] != layers[0].in_features):  # fmt: skip
        raise ValueError(f"inputs must have shape (N >= 1, {layers[0].in_features}), got {tuple(inputs.shape)}")
    if inputs.dim() < 1 or inputs.shape[0] < 1:
        raise ValueError(f"inputs must hold at least one sample, got shape {tuple(inputs.shape)}")
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        raise ValueError("inputs hold NaN or infinite values: the ranges to draw need finite inputs")
    lows = [torch.full((l.in_features,), math.inf, dtype=torch.float64) for l in layers]
    highs = [torch.full((l.in_features,), -math.inf, dtype=torch.float64) for l in layers]

    def record(k):
        def hook(_module, args, kwargs):
            x = args[0] if args else kwargs["x"]  # a container may pass it by name
            # min and max are exact in any float dtype: reduce where x is, in its own dtype, and
            # convert only the (in,) results (a float64 copy of each batch took most of the time).
            lo, hi = torch.aminmax(x.detach().reshape(-1, layers[k].in_features), dim=0)
            torch.minimum(lows[k], lo.double().cpu(), out=lows[k])
            torch.maximum(highs[k], hi.double().cpu(), out=highs[k])

        return hook

    handles = [layer.register_forward_pre_hook(record(k), with_kwargs=True) for k, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, inputs.shape[0], batch_size):
            model(inputs[start : start + batch_size])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for k, (layer, low, high) in enumerate(zip(layers, lows, highs)):
        if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError(f"layer {k} ({layer.in_features} \u2192 {layer.out_features}): {type(model).__name__} "
                             "passed it NaN or infinite values (or none at all) on these inputs")
    return list(zip(lows, highs))


@torch.no_grad()
def edge_curves(layer, ranges: tuple[Tensor, Tensor], top: int = 16, points: int = 201,
                layer_index: int = 0) -> list[EdgeCurve]:  # fmt: skip
    """The ``top`` edges of ``layer`` with the largest |w H|, strongest first, each sampled at
    ``points`` evenly spaced inputs over ``ranges`` = (min, max) of each input feature (in,)."""
    if top < 1 or points < 2:
        raise ValueError(f"need top >= 1 and points >= 2, got top={top}, points={points}")
    wav = get_wavelet(layer.wavelet)
    s, t, w = (p.detach().double().cpu() for p in (layer.scale, layer.translation, layer.wavelet_weights))
    if wav.window is not None:
        w = w * wav.window(layer.in_features, torch.float64, "cpu")
    lo, hi = (r.double().cpu() for r in ranges)
    strongest = w.abs().flatten().argsort(descending=True, stable=True)[:top]
    curves = []
    for flat in strongest.tolist():
        o, i = divmod(flat, layer.in_features)
        a, b = float(lo[i]), float(hi[i])
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"layer {layer_index}: no finite input range for input {i}")
        if a == b:  # a constant input: show its neighbourhood
            a, b = a - 0.5, b + 0.5
        x = torch.linspace(a, b, points, dtype=torch.float64)
        y = w[o, i] * wav.psi((x - t[o, i]) / s[o, i])
        curves.append(EdgeCurve(layer_index, o, i, float(w[o, i]), x, y))
    return curves


def _layer_range(k: int, layer, pair) -> tuple:
    """(min, max) of layer ``k``'s inputs as float64 CPU tensors of shape (in_features,); a
    number stands for every input. ValueError naming the layer otherwise."""
    try:
        lo, hi = pair
        lo, hi = (torch.as_tensor(v, dtype=torch.float64).cpu() for v in (lo, hi))
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"ranges[{k}] must be a (min, max) pair, got {pair!r}") from None
    shape = (layer.in_features,)
    lo, hi = (v.expand(shape) if v.dim() == 0 else v for v in (lo, hi))
    if lo.shape != shape or hi.shape != shape:
        raise ValueError(f"ranges[{k}]: layer {k} has {layer.in_features} inputs, so min and max must be numbers or "
                         f"of shape {shape}; got {tuple(lo.shape)} and {tuple(hi.shape)}")
    return lo, hi


def plot_edges(model: nn.Module, inputs: Optional[Tensor] = None, path=None, *,
               ranges: Optional[Sequence[tuple[Tensor, Tensor]]] = None, top: int = 16, points: int = 201,
               title: Optional[str] = None):  # fmt: skip
    """Draw each layer's ``top`` strongest edge functions, a grid per layer; returns the Figure.

    ``model``: a ``WavKAN``, a ``WavKANLinear``, or any module holding them (drawn in order).
    The range of each edge's input comes from ``inputs`` (N, in_features), as
    ``layer_input_ranges`` measures it, or from ``ranges``, one (min, max) pair of (in,)
    tensors per layer. ``path``: also write the figure there as a PNG, atomically. Each panel
    plots ``w H psi((x - t) / s)`` against input x; its title names the edge.
    """
    from matplotlib.ticker import MaxNLocator

    layers = _wavkan_layers(model)
    if ranges is None:
        if inputs is None:
            raise ValueError("pass inputs (e.g. the training set) or ranges: the range of x to draw each edge over")
        ranges = layer_input_ranges(model, inputs)
    if len(ranges) != len(layers):
        raise ValueError(f"ranges needs one (min, max) pair per layer ({len(layers)}), got {len(ranges)}")
    ranges = [_layer_range(k, layer, r) for k, (layer, r) in enumerate(zip(layers, ranges))]
    per_layer = [edge_curves(l, r, top, points, k) for k, (l, r) in enumerate(zip(layers, ranges))]
    cols = min(4, max(len(c) for c in per_layer))
    rows = [math.ceil(len(c) / cols) for c in per_layer]
    # Fixed margins in inches (no constrained layout, whose solver took most of the drawing time).
    row_in, head_in, foot_in, title_in = 2.3, 0.8, 0.45, (0.6 if title else 0.0)
    heights = [title_in] * bool(title) + [r * row_in + head_in + foot_in for r in rows]
    fig = new_figure((3.2 * cols, sum(heights)))
    subfigs = list(fig.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0])
    if title:
        subfigs.pop(0).text(0.5, 0.45, title, ha="center", va="center", fontsize=13)
    for k, (layer, curves, sub) in enumerate(zip(layers, per_layer, subfigs)):
        h = heights[k + bool(title)]
        sub.subplots_adjust(left=0.9 / (3.2 * cols), right=1 - 0.1 / (3.2 * cols), bottom=foot_in / h,
                            top=1 - head_in / h, hspace=0.45, wspace=0.3)  # fmt: skip
        sub.suptitle(f"layer {k}: {layer.in_features} \u2192 {layer.out_features}, {layer.wavelet}; "
                     f"the {len(curves)} strongest of {layer.in_features * layer.out_features} edges by |w|",
                     fontsize=11)  # fmt: skip
        axes = sub.subplots(rows[k], cols, squeeze=False)
        for n, ax in enumerate(axes.flat):
            if n >= len(curves):
                ax.set_visible(False)
                continue
            c = curves[n]
            ax.plot(c.x.numpy(), c.y.numpy(), color="C0", linewidth=1.6)
            ax.axhline(0.0, color="0.6", linewidth=0.6)
            # A fixed title height (y given) skips matplotlib's per-axes overlap search, and at most
            # five ticks an axis: together most of the drawing time of a 32-panel figure.
            ax.set_title(f"input {c.in_index} \u2192 output {c.out_index}   w = {c.weight:.3g}", fontsize=9, y=1.0)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.yaxis.set_major_locator(MaxNLocator(4))
            ax.tick_params(labelsize=8)
            ax.grid(True, alpha=0.3)
            if n // cols == rows[k] - 1 or n + cols >= len(curves):
                ax.set_xlabel(f"layer {k} input x", fontsize=8)
            if n % cols == 0:
                ax.set_ylabel("w\u00b7\u03c8((x \u2212 t)/s)", fontsize=8)
    fig.curves = per_layer  # the plotted data, for whoever wants the numbers
    if path is not None:
        save_png(fig, path, dpi=100)
    return fig
