"""``wavkan plot``: draw a trained run's learned edge functions (``wavkan.plot.plot_edges``).

``wavkan plot --checkpoint runs/mnist-mexican_hat/checkpoint.pt`` rebuilds the network from
the checkpoint, passes the run's training set through it (eval mode) to measure the range of
every layer's inputs, and writes ``edges.png`` beside the checkpoint (or ``--out``): for every
layer, the strongest edges by |w|, each drawn over the range its input took in training.
``wavkan train`` writes the same picture at the end of a run. For the conv net
(``wavkan.app.models``) the picture is of its ``WavKANLinear`` head, over the pooled features
the training images gave it; its wavelet convolutions are not drawn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..cli import positive_int

__all__ = ["EDGES_NAME", "MAX_TOP", "check_png_target", "write_edges_png", "plot_checkpoint", "main"]

EDGES_NAME = "edges.png"


def write_edges_png(path, model, train_x, title: str, top: int = 16, batch_size: int = 10000) -> bool:
    """``plot_edges`` of ``model`` over the ranges its layers' inputs take on ``train_x`` (fed
    ``batch_size`` rows at a time), as a PNG at ``path``. False (with a warning) when
    matplotlib is missing."""
    import warnings

    from ..plot import layer_input_ranges, plot_edges

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warnings.warn(f"matplotlib is not installed: no {Path(path).name} (pip install 'wavkan[train]')", stacklevel=2)
        return False
    plot_edges(model, path=path, ranges=layer_input_ranges(model, train_x, batch_size), top=top, title=title)
    return True


MAX_TOP = 64  # panels per layer: a grid of 16 x 4; each panel costs tens of ms and megabytes


def check_png_target(path: Path, checkpoint=None) -> None:
    """Refuse an output path that is not a ``.png`` file to create or replace: a folder, a device
    or other non-regular file, another kind of file (the checkpoint itself, say), which the
    atomic write would otherwise replace."""
    if path.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {str(path)!r}")
    if path.exists() or path.is_symlink():
        if path.is_dir():
            raise ValueError(f"--out {path} is a folder; give the path of a .png file")
        if not path.is_file():
            raise ValueError(f"--out {path} exists and is not a regular file")
    if checkpoint is not None and path.exists() and path.resolve() == Path(checkpoint).resolve():
        raise ValueError(f"--out {path} is the checkpoint itself")


def plot_checkpoint(checkpoint, out=None, dataset: Optional[str] = None, device: str = "auto",
                    backend: str = "auto", top: int = 16) -> Path:  # fmt: skip
    """Draw a checkpoint's edges (see the module docstring); returns the PNG's path."""
    from .checkpoint import build_model, load_checkpoint
    from .data import check_layers_fit, load_raw, to_device
    from .distributed import resolve_device
    from .models import check_conv_fits, resolve_model_fields, to_device_images

    if not 1 <= top <= MAX_TOP:
        raise ValueError(f"top must be 1 to {MAX_TOP} edges a layer, got {top}")
    path = Path(out) if out is not None else Path(checkpoint).parent / EDGES_NAME
    check_png_target(path, checkpoint)  # before any work: a bad target wastes no loading
    state = load_checkpoint(checkpoint)
    config = resolve_model_fields(state["config"])
    dataset = config["dataset"] if dataset is None else dataset
    dev = resolve_device(device)
    model = build_model(config, backend=backend)
    model.load_state_dict(state["model"])
    model.to(dev)
    # One test row: only the training split sets the ranges.
    load = to_device_images if config["model"] == "conv" else to_device
    data = load(load_raw(dataset), dev, limit_train=config.get("limit_train"), limit_test=1)
    if config["model"] == "conv":  # images (N, C, H, W) in [0, 1]; the net normalises them
        check_conv_fits(config, data, dataset)
        net = f"conv net {list(config['conv_widths'])}, its WavKANLinear head"
    else:
        check_layers_fit(model.layers_hidden, data.num_features, data.num_classes, dataset, trained=True)
        net = f"{list(config['layers'])}"
    title = (f"Wav-KAN {net} {config['wavelet']} on {config['dataset']}, "
             f"after epoch {state['epoch']}: learned edge functions")  # fmt: skip
    if not write_edges_png(path, model, data.train_x, title, top):
        raise RuntimeError("drawing needs matplotlib: pip install 'wavkan[train]'")
    return path


def top_count(text: str) -> int:
    """argparse type: panels per layer, 1 to MAX_TOP."""
    value = positive_int(text)
    if value > MAX_TOP:
        raise argparse.ArgumentTypeError(f"at most {MAX_TOP} edges a layer, got {value}")
    return value


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    from ..ops import BACKENDS

    p = argparse.ArgumentParser(
        prog=prog or "wavkan plot",
        description="Draw a trained Wav-KAN's strongest edge functions, each over the range its input "
                    "took on the run's training set.",
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by wavkan train")
    p.add_argument("--out", default=None, help=f"PNG to write (default: {EDGES_NAME} beside the checkpoint)")
    p.add_argument("--top", type=top_count, default=16,
                   help=f"edges drawn per layer, strongest |w| first, 1 to {MAX_TOP} (default: %(default)s)")
    p.add_argument("--dataset", default=None, help="data whose inputs set the drawn ranges (default: the run's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="where the model runs (default: %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="Wav-KAN backend (default: %(default)s)")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        path = plot_checkpoint(args.checkpoint, args.out, args.dataset, args.device, args.backend, args.top)
    except (OSError, ValueError, RuntimeError) as e:  # missing or bad files, bad options, no CUDA
        print(f"{prog or 'wavkan plot'}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
