"""``wavkan train``: train a Wav-KAN classifier; defaults follow the paper's MNIST protocol.

Defaults: MNIST, layers [784, 32, 10], mexican_hat, AdamW (lr 1e-3, weight decay 1e-4),
ExponentialLR (gamma 0.9) stepped per epoch, batch 64, cross-entropy on the network output,
inputs x / 255 * 2 - 1 flattened to 784, 10 epochs.

Also ``python -m wavkan.train ...``, and ``torchrun --nproc-per-node N -m wavkan.train ...``
for DistributedDataParallel (NCCL on CUDA, gloo on CPU).

The data sit whole on the device; an epoch is slices of one permutation that depends on
(seed, epoch) alone. So a run killed at any moment and restarted with ``--resume`` continues
from its last completed epoch and ends exactly as an uninterrupted run, and every DDP rank
sees the same order: each takes its ``tensor_split`` share of every global batch of
``--batch-size`` rows, with BatchNorm statistics synchronised over the global batch
(``wavkan.app.distributed``), which makes DDP training equal single-process training up to
floating-point summation order.

Batches: every full batch, plus the last partial one when it has at least max(2,
world_size) rows (BatchNorm cannot train on one row; every rank needs a row); a smaller
remainder is skipped. With CUDA graphs (default on a single CUDA device) the full batches
replay one captured step and the partial last batch runs eagerly, so the step sequence is
the same as on CPU.

Writes to ``--out`` (rank 0 only): ``checkpoint.pt`` (model, optimizer, scheduler, epoch,
history, RNG, config; atomically), ``metrics.csv`` and ``curves.png``, both rebuilt from
the checkpoint's history after every epoch, and at the end ``edges.png``, the learned edge
functions (``wavkan plot``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..cli import int_list, positive_int
from ..files import remove_stale_temps
from ..ops import BACKENDS, resolve_backend
from ..wavelets import WAVELETS
from . import distributed as dist_utils
from .checkpoint import build_model, load_checkpoint, restore_training_state, save_checkpoint, training_state
from .data import check_layers_fit, dataset_name, epoch_permutation, load_raw, to_device
from .evaluate import EVAL_BATCH_SIZE, evaluate
from .metrics import plot_curves, write_metrics_csv
from .plot import EDGES_NAME, write_edges_png
from .progress import EpochProgress
from .startup import StartupClock, compile_ahead, set_threads, uses_compiled
from .step import GraphedTrainStep, LrTensor, Totals, graphs_supported, train_step

__all__ = ["TrainConfig", "RunResult", "ConfigError", "train", "batch_bounds", "build_parser", "main"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.csv"
CURVES_NAME = "curves.png"

# Config fields that define a run's trajectory: a resumed run must agree on all of them.
# (epochs may grow; device, backend, graphs and progress change only speed or rounding.)
RUN_DEFINING = (
    "dataset", "wavelet", "layers", "batch_size", "lr", "weight_decay", "gamma", "seed",
    "limit_train", "limit_test",
)


class ConfigError(ValueError):
    """Options that cannot run together, or that disagree with the run being resumed."""


@dataclass
class TrainConfig:
    """One run's options; the defaults are the paper's protocol."""

    dataset: str = "mnist"
    wavelet: str = "mexican_hat"
    layers: list = field(default_factory=lambda: [784, 32, 10])
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    gamma: float = 0.9
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    out: Optional[str] = None  # default: runs/<dataset>-<wavelet>
    resume: bool = False
    overwrite: bool = False
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    progress: bool = True
    cuda_graph: Optional[bool] = None  # None: on for a single CUDA device
    eval_batch_size: int = EVAL_BATCH_SIZE
    threads: Optional[int] = None  # CPU threads; None: the idle cores this process may use (app/startup.py)

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / f"{dataset_name(self.dataset)}-{self.wavelet}"

    def validate(self) -> None:
        if self.wavelet not in WAVELETS:
            raise ConfigError(f"unknown wavelet {self.wavelet!r}; expected one of {', '.join(WAVELETS)}")
        if len(self.layers) < 2 or any(int(w) < 1 for w in self.layers):
            raise ConfigError(f"layers needs at least two widths >= 1, got {self.layers}")
        for name in ("epochs", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2: BatchNorm needs two rows to train")
        for name in ("limit_train", "limit_test", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be >= 1, got {v}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 < self.gamma <= 1:
            raise ConfigError("need lr > 0, weight_decay >= 0 and 0 < gamma <= 1")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = [int(w) for w in self.layers]
        return d


@dataclass
class RunResult:
    """What a run leaves: its folder and one history row per completed epoch."""

    out_dir: Path
    history: list

    @property
    def final(self) -> dict:
        return self.history[-1]


def batch_bounds(n: int, batch_size: int, min_rows: int = 2) -> list[tuple[int, int]]:
    """(start, stop) of each batch of an epoch of n rows; a last batch under min_rows is dropped."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if bounds and bounds[-1][1] - bounds[-1][0] < min_rows:
        bounds.pop()
    return bounds


def _check_resumable(saved: dict, config: TrainConfig, path: Path) -> None:
    mine = config.to_dict()
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {mine[k]!r}" for k in RUN_DEFINING if saved.get(k) != mine[k]]
    if diff:
        raise ConfigError(f"--resume: {path} is a different run; pass its options or another --out:\n  "
                          + "\n  ".join(diff))


# --- the run ------------------------------------------------------------------------------------


def _log(ctx, *args) -> None:
    if ctx.is_main:
        print(*args, flush=True)


def _use_graphs(config: TrainConfig, device: torch.device, ctx, n_full_batches: int) -> bool:
    reason = graphs_supported(device, ctx.enabled)
    if config.cuda_graph is False:
        return False
    if config.cuda_graph is True and device.type != "cuda":
        raise ConfigError("--cuda-graph needs a CUDA device")
    if reason is not None:
        if config.cuda_graph:
            _log(ctx, f"note: CUDA graphs {reason}; training eagerly")
        return False
    return n_full_batches > 0


def train(config: TrainConfig, on_epoch_end: Optional[Callable[[int, dict], None]] = None,
          startup: Optional[StartupClock] = None) -> RunResult:  # fmt: skip
    """Run (or resume) training; returns the history. Called once per process under torchrun.

    ``on_epoch_end(epoch, row)`` runs after each epoch's files are written (``epoch`` counts
    from 1); tests use it to interrupt a run. ``startup``: the clock whose phases the start-up
    line reports (the command's starts at the process's start; by default, at this call).
    """
    startup = startup or StartupClock()
    config.validate()
    ctx = dist_utils.context_from_env()
    device = dist_utils.resolve_device(config.device, ctx)
    dist_utils.init_process_group(ctx, device)
    try:
        return _train(config, ctx, device, on_epoch_end, startup)
    finally:
        dist_utils.destroy_process_group()


def _train(config: TrainConfig, ctx, device: torch.device, on_epoch_end, startup: StartupClock) -> RunResult:
    out = config.out_dir()
    ckpt_path = out / CHECKPOINT_NAME
    saved = None
    if ckpt_path.exists():
        if config.resume:
            saved = load_checkpoint(ckpt_path)
            _check_resumable(saved["config"], config, ckpt_path)
        elif not config.overwrite:
            raise ConfigError(f"{ckpt_path} exists: pass --resume to continue that run, "
                              "--overwrite to start over, or another --out")
        elif ctx.is_main:
            for name in (CHECKPOINT_NAME, METRICS_NAME, CURVES_NAME, EDGES_NAME):
                (out / name).unlink(missing_ok=True)
    elif config.resume:
        _log(ctx, f"no checkpoint in {out}: starting a new run")
    # A resumed run keeps its threads unless told otherwise; the checkpoint records the number.
    resumed_threads = saved["config"].get("threads") if saved is not None else None
    threads_note = set_threads(config.threads or resumed_threads)
    if config.threads is None and resumed_threads is not None:
        threads_note = threads_note.replace("--threads", "the resumed run's")
    config = dataclasses.replace(config, threads=torch.get_num_threads())
    if ctx.is_main:
        remove_stale_temps(out, (CHECKPOINT_NAME, METRICS_NAME, CURVES_NAME, EDGES_NAME))

    startup.phase("set-up")
    data = to_device(load_raw(config.dataset), device, config.limit_train, config.limit_test)
    startup.phase("data")
    layers = [int(w) for w in config.layers]
    check_layers_fit(layers, data.num_features, data.num_classes, config.dataset)
    n_train = data.train_x.shape[0]
    bounds = batch_bounds(n_train, config.batch_size, max(2, ctx.world_size))
    if not bounds:
        raise ConfigError(f"{n_train} training samples make no batch of >= {max(2, ctx.world_size)} rows")

    # Built on the CPU from the seed, then moved: the same initial weights on any device.
    torch.manual_seed(config.seed)
    raw_model = build_model(config.to_dict(), backend=config.backend).to(device)
    if ctx.enabled:
        # BatchNorm over the global batch (same parameters, same state_dict keys). Its
        # all-reduces get their own group, so they never interleave with DDP's gradient ones.
        raw_model = dist_utils.sync_batchnorm(raw_model, device, dist_utils.new_group_like_world())
    n_full = sum(1 for b0, b1 in bounds if b1 - b0 == config.batch_size)
    use_graphs = _use_graphs(config, device, ctx, n_full)
    optimizer = torch.optim.AdamW(
        raw_model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
        capturable=use_graphs, foreach=True if use_graphs else None,
        fused=True if device.type == "cpu" else None,  # one kernel per tensor: the CPU step is host-bound
    )
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.gamma)
    history: list = []
    start_epoch = 0
    if saved is not None:
        start_epoch, history = restore_training_state(saved, raw_model, optimizer, scheduler, device)
        _log(ctx, f"resuming {out} after epoch {start_epoch}")

    model = raw_model
    if ctx.enabled:
        model = dist_utils.wrap_ddp(raw_model, device)
    startup.phase("model and optimizer")

    totals = Totals(device)
    graphed = None
    lr_tensor = None
    if use_graphs and start_epoch < config.epochs:
        # After loading the checkpoint: the graph keeps the addresses of the optimizer's state.
        lr_tensor = LrTensor(optimizer, device)
        graphed = GraphedTrainStep(raw_model, optimizer, data.train_x, data.train_y, config.batch_size, totals)
        startup.phase("CUDA graph capture")
    if start_epoch < config.epochs and uses_compiled(raw_model):
        compile_ahead(raw_model, data.train_x[: max(2, config.batch_size // ctx.world_size)])
        startup.phase("compilation")

    # The backend of the largest layer's training call (auto on CPU: small calls stay on the reference).
    step_edges = max(config.batch_size // ctx.world_size * i * o for i, o in zip(layers[:-1], layers[1:]))
    backend = resolve_backend(config.backend, data.train_x, step_edges)
    _log(ctx, f"WavKAN {layers} ({config.wavelet}) on {config.dataset}: {n_train} train / "
              f"{data.test_x.shape[0]} test samples; {len(bounds)} steps of {config.batch_size} per epoch; "
              f"device {device}" + (f" ({threads_note})" if device.type == "cpu" else "")
              + f", backend {backend}, CUDA graph {'on' if use_graphs else 'off'}"
              + (f", DDP x{ctx.world_size}" if ctx.enabled else "") + f"; output in {out}")

    def write_outputs() -> None:
        write_metrics_csv(out / METRICS_NAME, history)
        plot_curves(out / CURVES_NAME, history, title=f"Wav-KAN {layers} {config.wavelet} on {config.dataset}")

    if ctx.is_main and history:
        write_outputs()  # the checkpoint's history is the truth; drop rows of an unfinished epoch

    if start_epoch < config.epochs:
        _log(ctx, startup.summary())
    for epoch in range(start_epoch, config.epochs):
        raw_model.train()
        totals.zero_()
        progress = EpochProgress(len(bounds), f"epoch {epoch + 1}/{config.epochs}", totals,
                                 enabled=config.progress and ctx.is_main)
        t0 = time.perf_counter()
        perm = epoch_permutation(n_train, config.seed, epoch).to(device)
        for b0, b1 in bounds:
            idx = perm[b0:b1]
            if graphed is not None and b1 - b0 == config.batch_size:
                graphed(idx)
            else:
                if ctx.enabled:
                    idx = idx.tensor_split(ctx.world_size)[ctx.rank]
                train_step(model, optimizer, data.train_x, data.train_y, idx, ctx.world_size / (b1 - b0),
                           totals, set_grads_to_none=graphed is None)
            progress.update(b1)
        scheduler.step()
        if lr_tensor is not None:
            lr_tensor.sync()
        sums = dist_utils.all_reduce_sum(totals.as_tensor())
        loss_sum, correct, count = sums.tolist()  # syncs the device: the epoch's work is done
        seconds = time.perf_counter() - t0
        progress.close()

        test_loss, test_acc = evaluate(raw_model, data.test_x, data.test_y, config.eval_batch_size, ctx)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / count,
            "train_acc": correct / count,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "epoch_seconds": seconds,
            "samples_per_s": count / seconds,
        }
        history.append(row)
        if ctx.is_main:
            save_checkpoint(ckpt_path, training_state(config.to_dict(), epoch + 1, history, raw_model, optimizer,
                                                      scheduler, device, ctx.world_size))
            write_outputs()
        _log(ctx, f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f} "
                  f"acc {100 * row['train_acc']:.2f}% | test loss {test_loss:.4f} acc {100 * test_acc:.2f}% | "
                  f"{seconds:.1f} s, {row['samples_per_s']:,.0f} samples/s")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)

    if history and ctx.is_main:  # the learned edge functions, over the inputs' training ranges
        write_edges_png(out / EDGES_NAME, raw_model, data.train_x,
                        f"Wav-KAN {layers} {config.wavelet} on {config.dataset}: learned edge functions")
    if history:
        final = history[-1]
        _log(ctx, f"final test accuracy {100 * final['test_acc']:.2f}% (test loss {final['test_loss']:.4f}) "
                  f"after {final['epoch']} epochs; outputs in {out}")
    return RunResult(out, history)


# --- command line -------------------------------------------------------------------------------


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog=prog or "wavkan train",
        description="Train a Wav-KAN classifier. The defaults are the paper's MNIST protocol.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", default=d.dataset,
                   help="mnist, fashion-mnist, a folder of the four idx files (gz or not), or a .npz with "
                        "train_images, train_labels, test_images, test_labels")
    p.add_argument("--wavelet", choices=WAVELETS, default=d.wavelet, help="mother wavelet of every edge")
    p.add_argument("--layers", type=int_list, default=argparse.SUPPRESS, help="comma-separated widths (default: 784,32,10)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="total epochs (a resumed run may raise it)")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="global batch, over all DDP ranks")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--gamma", type=float, default=d.gamma, help="ExponentialLR factor per epoch")
    p.add_argument("--seed", type=int, default=d.seed, help="initial weights and shuffling")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--backend", choices=BACKENDS, default=d.backend,
                   help="auto: Triton kernels for CUDA tensors, the compiled CPU path (torch.compile) for "
                        "CPU tensors where a C++ compiler is found, pure PyTorch otherwise")
    p.add_argument("--out", default=None, help="run folder (default: runs/<dataset>-<wavelet>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last completed epoch")
    p.add_argument("--overwrite", action="store_true", help="start over even if --out holds a checkpoint")
    p.add_argument("--limit-train", type=int, default=None, metavar="N", help="train on the first N samples")
    p.add_argument("--limit-test", type=int, default=None, metavar="N", help="test on the first N samples")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the training step in a CUDA graph (default: on for a single CUDA device)")
    p.add_argument("--eval-batch-size", type=positive_int, default=d.eval_batch_size, help="rows per evaluation pass")
    p.add_argument("--threads", type=positive_int, default=argparse.SUPPRESS, metavar="N",
                   help="CPU threads (default: the cores this process may use less those the load average shows "
                        "busy, at least 1; a resumed run keeps its own)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    startup = StartupClock(from_process_start=True)
    args = build_parser(prog).parse_args(argv)
    try:
        train(config_from_args(args), startup=startup)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # missing data, bad input, no CUDA
        print(f"{prog or 'wavkan train'}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: rerun with --resume to continue from the last completed epoch", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m wavkan.app.train"))
