"""``wavkan train``: train a Wav-KAN classifier; defaults follow the paper's MNIST protocol.

Defaults: MNIST, layers [784, 32, 10], mexican_hat, AdamW (lr 1e-3, weight decay 1e-4),
ExponentialLR (gamma 0.9) stepped per epoch, batch 64, cross-entropy on the network output,
inputs x / 255 * 2 - 1 flattened to 784, 10 epochs.

``--dataset cifar10`` (``--model conv``) trains the convolutional Wav-KAN of
``wavkan.app.models`` on images (N, C, H, W) in [0, 1], augmented on the device per (seed,
epoch, image) (``wavkan.app.augment``), under bf16 autocast on CUDA (``--amp``). What follows
holds for it too, except that its step is captured in a CUDA graph only when ``--cuda-graph``
asks.

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
history, RNG, config; atomically, checksummed and verified before it replaces the previous
one), ``metrics.csv`` rebuilt from the checkpoint's history after every epoch, ``curves.png``
from the same history after an epoch when the last drawing is ``CURVES_MIN_INTERVAL_S`` old
and after the last epoch, and at the end ``edges.png``, the learned edge functions (``wavkan plot``; for
the conv net, its ``WavKANLinear`` head alone).

Nothing can clobber a run:

- Before anything is written or an epoch runs, the options, the dataset (and that the network
  fits it) and the run folder are checked: a folder that cannot be created or written, a
  previous run that does not match ``--resume``, or ``--resume --epochs`` below the epochs
  already done, stops the command at once with one line naming the option and the defect.
- The run folder is claimed by one process for the whole run (``FolderLock``, taken by rank 0,
  the only writer; every rank learns the outcome before it starts): a second ``wavkan train``
  on a folder in use is refused and touches none of the running process's files. The kernel
  drops the claim when a process dies, so a killed run can be resumed at once.
- ``--overwrite`` deletes nothing: the new run's first completed epoch replaces the previous
  run's files, so a new run that fails before then leaves the previous one whole.
- An epoch whose training loss or weights are NaN or infinite stops the run (``TrainingDiverged``)
  before it is saved: the checkpoint keeps the last good epoch.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..files import FolderBusyError, FolderError, FolderLock, make_folder, remove_stale_temps
from ..ops import resolve_backend
from . import distributed as dist_utils
from .checkpoint import build_model, load_checkpoint, restore_training_state, save_checkpoint, training_state
from .data import check_layers_fit, data_digest, epoch_permutation, load_raw, resolve_dataset, to_device
from .evaluate import evaluate
from .metrics import plot_curves, write_metrics_csv
from .augment import EpochAugment
from .models import channel_stats, check_conv_fits, resolve_model_fields, to_device_images
from .options import RUN_DEFINING, ConfigError, TrainConfig, build_parser, config_from_args
from .plot import EDGES_NAME, write_edges_png
from .progress import EpochProgress
from .startup import CompileAhead, StartupClock, compile_ahead, omp_threads_set, set_threads, uses_compiled
from .step import GraphedTrainStep, LrTensor, Totals, graphs_supported, train_step

__all__ = [
    "TrainConfig", "RunResult", "ConfigError", "TrainingDiverged", "train", "batch_bounds", "build_parser", "main",
]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.csv"
CURVES_NAME = "curves.png"
# Drawing curves.png takes about 0.1-0.2 s; after every epoch of the default CPU run (2.5 s
# epochs) that was 5% of the run. At most this often, then, and always after the last epoch;
# metrics.csv, which it draws, is written after every epoch.
CURVES_MIN_INTERVAL_S = 20.0
RUN_FILES = (CHECKPOINT_NAME, METRICS_NAME, CURVES_NAME, EDGES_NAME)
# The run folder's lock file (see FolderLock); present only while a run holds the folder.
LOCK_NAME = ".wavkan-run.lock"

class TrainingDiverged(RuntimeError):
    """An epoch ended with a non-finite training loss or weights; nothing of it was saved."""


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


def _check_resumable(saved: dict, config: TrainConfig, path: Path, digest: str, ctx) -> None:
    """Refuse to resume a run of other options or other data. The data are compared by content
    (``data_digest``) where the checkpoint records it: a dataset moved to another path resumes
    (and says so), one changed at the same path does not; an older checkpoint compares paths."""
    mine = config.to_dict()
    saved = resolve_model_fields(saved)  # a run saved before the conv net is an MLP run
    if isinstance(saved.get("dataset"), str):  # saved as given before paths were resolved: from here
        saved["dataset"] = resolve_dataset(saved["dataset"])
    keys = RUN_DEFINING
    if saved.get("data_digest") is not None:
        if saved["data_digest"] != digest:
            raise ConfigError(f"--resume: {path} was trained on other data: {saved['dataset']!r} then "
                              f"({saved['data_digest']}), {mine['dataset']!r} now ({digest}); pass the run's data "
                              "or another --out")
        keys = tuple(k for k in RUN_DEFINING if k != "dataset")
        if saved["dataset"] != mine["dataset"]:
            _log(ctx, f"--resume: the run's data moved from {saved['dataset']} to {mine['dataset']} (same contents)")
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {mine[k]!r}" for k in keys if saved.get(k) != mine[k]]
    if diff:
        raise ConfigError(f"--resume: {path} is a different run ({'; '.join(diff)}); "
                          "pass its options or another --out")


# --- the run ------------------------------------------------------------------------------------


def _log(ctx, *args) -> None:
    """Print on the main rank. A log whose reader has gone (``wavkan train | head``, a closed
    terminal or collector) never stops the run: its later lines go to the null device, and the
    run's files say what happened."""
    if not ctx.is_main:
        return
    try:
        print(*args, flush=True)
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    # Python's own advice for a closed pipe: point the descriptor at devnull, so that neither
    # the next print nor the flush at exit raises again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


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


def _claim_folder(out: Path, lock: FolderLock) -> list:
    """Create ``out`` and lock it for this process; returns the folders created."""
    try:
        created = make_folder(out)
        try:
            lock.acquire()
        except BaseException:
            _remove_empty(created)
            raise
    except FolderBusyError as e:
        raise ConfigError(f"--out {e}: another wavkan train is writing this run; wait for it to end "
                          "or pass another --out") from None
    except FolderError as e:
        raise ConfigError(f"--out {e}") from None
    if lock.unsupported:
        print(f"note: {out}: this file system has no file locks ({lock.unsupported}); nothing stops a second "
              "wavkan train from writing this folder while this one runs", flush=True)
    return created


def _remove_empty(folders: list) -> None:
    """Remove the folders this run created if nothing was written in them, innermost first."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def _load_data(config: TrainConfig, ctx, device: torch.device):
    """The data on the device, the batches of an epoch, and the run's config with its model
    fields resolved (a conv net's input channels and classes taken from the data)."""
    run_config = config.to_dict()
    raw = load_raw(config.dataset)
    run_config["data_digest"] = data_digest(raw)  # what a resumed run compares (_check_resumable)
    if run_config["model"] == "conv":  # images (N, C, H, W) in [0, 1] (wavkan.app.models)
        data = to_device_images(raw, device, config.limit_train, config.limit_test)
        run_config.update(in_channels=int(data.train_x.shape[1]), num_classes=data.num_classes)
        check_conv_fits(run_config, data, config.dataset)
    else:  # the MLP takes flat vectors
        data = to_device(raw, device, config.limit_train, config.limit_test)
        check_layers_fit(run_config["layers"], data.num_features, data.num_classes, config.dataset,
                         labels={"train_labels": data.train_y, "test_labels": data.test_y})
    n_train = data.train_x.shape[0]
    bounds = batch_bounds(n_train, config.batch_size, max(2, ctx.world_size))
    if not bounds:
        raise ConfigError(f"{n_train} training samples make no batch of >= {max(2, ctx.world_size)} rows")
    if config.cuda_graph is True and device.type != "cuda":
        raise ConfigError("--cuda-graph needs a CUDA device")
    return data, bounds, run_config


def _previous_run(config: TrainConfig, out: Path, ctx, digest: str) -> Optional[dict]:
    """The checkpoint to resume from (verified), or None for a new run; refuses a run folder
    that holds a run unless --resume (same options, --epochs not below the epochs done) or
    --overwrite says what to do with it. Deletes only stale temp files, on rank 0 under the lock."""
    ckpt_path = out / CHECKPOINT_NAME
    saved = None
    if ckpt_path.exists():
        if config.resume:
            saved = load_checkpoint(ckpt_path)
            _check_resumable(saved["config"], config, ckpt_path, digest, ctx)
            done = int(saved["epoch"])
            if config.epochs < done:
                raise ConfigError(f"--resume --epochs {config.epochs}: {ckpt_path} has already completed {done} "
                                  f"epochs; pass --epochs above {done} to train on, or score it with wavkan evaluate")
        elif not config.overwrite:
            raise ConfigError(f"{ckpt_path} exists: pass --resume to continue that run, "
                              "--overwrite to start over, or another --out")
        else:
            _log(ctx, f"--overwrite: the run in {out} is replaced when the new run's first epoch completes")
    elif config.resume:
        _log(ctx, f"no checkpoint in {out}: starting a new run")
    if ctx.is_main:
        remove_stale_temps(out, RUN_FILES)
    return saved



def _set_run_threads(config: TrainConfig, saved: Optional[dict]) -> str:
    """Set this process's CPU threads: --threads, else ``OMP_NUM_THREADS`` (the user's, or
    torchrun's one per rank: a launch the saved count knows nothing of), else the resumed run's,
    else the default (``startup.set_threads``); returns the note for the log. (The run's config
    records the number, so the checkpoint keeps it.)"""
    resumed = saved["config"].get("threads") if saved is not None else None
    if config.threads is None and resumed is not None and not omp_threads_set():
        return set_threads(resumed).replace("--threads", "the resumed run's")
    return set_threads(config.threads)


def _compile_rows(config: TrainConfig, ctx) -> int:
    """Rows of the batch that compiles the CPU backend's passes ahead (``compile_ahead``)."""
    return max(2, config.batch_size // ctx.world_size)


def _start_compile_ahead(config: TrainConfig, ctx, device: torch.device,
                         saved: Optional[dict]) -> Optional[CompileAhead]:  # fmt: skip
    """Compile the CPU backend's passes in a background thread while the data load, for an MLP
    run on the CPU that trains an epoch with the compiled backend (``startup.CompileAhead``),
    on a stand-in of the run's network and a batch of the run's shape; else None (a conv
    net's head width comes from the data: it compiles after the data, inline)."""
    run_config = config.to_dict()
    if device.type != "cpu" or run_config["model"] != "mlp":
        return None
    if saved is not None and int(saved["epoch"]) >= config.epochs:
        return None
    rows = _compile_rows(config, ctx)
    if config.limit_train is not None:
        rows = min(rows, config.limit_train)  # the run's batch is no longer than its data
    stand_in = build_model(run_config, backend=config.backend)
    if not uses_compiled(stand_in):
        return None
    return CompileAhead(lambda: stand_in, (rows, run_config["layers"][0]))


def _largest_linear_call(model, config: TrainConfig, ctx) -> Optional[int]:
    """Rows x out x in of the largest ``WavKANLinear`` call of a training step on one rank
    (None for a model without one); a conv layer's rows are its pixels, so for the conv net
    this is its linear head."""
    from ..nn import WavKANLinear

    rows = config.batch_size // ctx.world_size
    sizes = [rows * m.in_features * m.out_features for m in model.modules() if isinstance(m, WavKANLinear)]
    return max(sizes) if sizes else None


def _agree(ctx, device: torch.device, error: Optional[BaseException]) -> None:
    """Every rank learns whether any rank failed to prepare the run, so none waits for the
    others in a collective: a rank that failed raises its own error, the others a short note."""
    if ctx.enabled:
        failed = dist_utils.all_reduce_sum(torch.tensor([0.0 if error is None else 1.0], device=device))
        if error is None and failed.item() > 0:
            raise ConfigError(f"rank {ctx.rank}: another rank could not start the run (see its error)")
    if error is not None:
        raise error


def _all_finite(model) -> bool:
    checks = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def _train(config: TrainConfig, ctx, device: torch.device, on_epoch_end, startup: StartupClock) -> RunResult:
    out = config.out_dir()
    lock = FolderLock(out, LOCK_NAME)
    created: list = []
    ahead: Optional[CompileAhead] = None
    try:
        try:
            if ctx.is_main:  # the only writer, alive for the whole job: it holds the folder
                created = _claim_folder(out, lock)
            startup.phase("set-up")
            if not config.resume:  # a new run's thread count is known now: compile beside the data
                threads_note = _set_run_threads(config, None)  # first: Inductor compiles for them
                ahead = _start_compile_ahead(config, ctx, device, None)
            data, bounds, run_config = _load_data(config, ctx, device)
            startup.phase("data")
            saved = _previous_run(config, out, ctx, run_config["data_digest"])  # after the data: its errors come first
            if config.resume:  # the resumed run's thread count is in its checkpoint
                threads_note = _set_run_threads(config, saved)
                ahead = _start_compile_ahead(config, ctx, device, saved)
            run_config["threads"] = torch.get_num_threads()
            error = None
        except Exception as e:
            error = e
        if ahead is not None:
            # Before the run seeds the RNG (see CompileAhead), and before an error ends the
            # call: no compilation goes on behind the caller's back.
            ahead.join()
            startup.phase("compilation")
            if error is None:
                startup.note(f"compiled beside the data in {ahead.seconds:.1f} s")
        _agree(ctx, device, error)
        return _run(config, run_config, ctx, device, out, data, bounds, saved, on_epoch_end, startup, threads_note)
    finally:
        if ahead is not None:
            ahead.join()
        lock.release()
        _remove_empty(created)  # a run that wrote nothing leaves no folder behind


class _HistoryFiles:
    """A run's ``metrics.csv``, written after every epoch, and ``curves.png``, drawn from the
    same history at most every ``CURVES_MIN_INTERVAL_S`` and after the last epoch; after an
    error, both brought to the epochs the checkpoint holds (``catch_up``)."""

    def __init__(self, out: Path, title: str):
        self.out, self.title = out, title
        self.written = 0  # epochs in metrics.csv
        self.saved = 0  # epochs in the checkpoint (this run's or the resumed one's)
        self.pending = None  # (epochs, the checkpoint file's identity before) from its save to write()
        self.drawn = 0  # epochs in curves.png
        self.drawn_at = -math.inf  # time.monotonic() of that drawing

    def saving(self, epochs: int) -> None:
        """A checkpoint of ``epochs`` epochs is about to replace the file (or create it)."""
        self.pending = (epochs, _file_identity(self.out / CHECKPOINT_NAME))

    def write(self, history: list, last: bool) -> None:
        write_metrics_csv(self.out / METRICS_NAME, history)
        self.written = self.saved = len(history)
        self.pending = None
        if last or time.monotonic() - self.drawn_at >= CURVES_MIN_INTERVAL_S:
            self._draw(history)

    def catch_up(self, history: list) -> None:
        """After an error: metrics.csv and curves.png with every epoch the checkpoint holds, and
        no edges.png of an older checkpoint, never raising (the error is the one to report). An
        error can land between a checkpoint's save and the writes after it (Ctrl-C): a new file
        in the checkpoint's place says the save went through."""
        with contextlib.suppress(Exception):
            if self.pending is not None and _file_identity(self.out / CHECKPOINT_NAME) != self.pending[1]:
                self.saved = self.pending[0]
            if self.written != self.saved and self.saved > 0:
                (self.out / EDGES_NAME).unlink(missing_ok=True)  # drawn from a checkpoint that is gone
                write_metrics_csv(self.out / METRICS_NAME, history[: self.saved])
                self.written = self.saved
            if self.drawn != self.written and self.written > 0:
                self._draw(history[: self.written])

    def _draw(self, history: list) -> None:
        plot_curves(self.out / CURVES_NAME, history, title=self.title)
        self.drawn, self.drawn_at = len(history), time.monotonic()


def _file_identity(path: Path):
    """(device, inode, size, mtime) of ``path``, None where there is none: ``os.replace`` puts a
    new inode in its place."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _run(config: TrainConfig, run_config: dict, ctx, device: torch.device, out: Path, data, bounds,
         saved: Optional[dict], on_epoch_end, startup: StartupClock, threads_note: str) -> RunResult:
    ckpt_path = out / CHECKPOINT_NAME
    conv = run_config["model"] == "conv"
    if conv:
        net = f"conv net {run_config['conv_widths']} strides {run_config['conv_strides']}"
    else:
        net = f"{run_config['layers']}"
    n_train = data.train_x.shape[0]

    # Built on the CPU from the seed, then moved: the same initial weights on any device.
    torch.manual_seed(config.seed)
    raw_model = build_model(run_config, backend=config.backend).to(device)
    if conv:
        raw_model.set_input_stats(*channel_stats(data.train_x))  # a resumed run loads the saved ones
    if ctx.enabled:
        # BatchNorm over the global batch (same parameters, same state_dict keys). Its
        # all-reduces get their own group, so they never interleave with DDP's gradient ones.
        raw_model = dist_utils.sync_batchnorm(raw_model, device, dist_utils.new_group_like_world())
    n_full = sum(1 for b0, b1 in bounds if b1 - b0 == config.batch_size)
    use_graphs = _use_graphs(config, device, ctx, n_full)
    # --- mixed precision and augmentation run in the eager step; graphs capture the plain one ---
    amp = config.amp if config.amp is not None else (conv and device.type == "cuda")
    autocast_dtype = torch.bfloat16 if amp else None
    augment = EpochAugment(n_train, config.seed, device) if run_config["augment"] else None
    if use_graphs and (conv or amp) and not config.cuda_graph:
        use_graphs = False  # by default graphs replay the MLP's plain step; --cuda-graph asks for them here too
    # --- end mixed precision and augmentation ---
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
        if start_epoch < config.epochs:
            _log(ctx, f"resuming {out} after epoch {start_epoch}")
        else:
            _log(ctx, f"{ckpt_path} has completed all {start_epoch} epochs: nothing to train "
                      f"(pass --epochs above {start_epoch} to train on)")

    model = raw_model
    if ctx.enabled:
        per_sample = dist_utils.edge_evaluations_per_sample(raw_model, data.train_x[:1])
        note = dist_utils.ddp_note(per_sample * config.batch_size / ctx.world_size, ctx.world_size)
        if note:
            _log(ctx, note)
        model = dist_utils.wrap_ddp(raw_model, device)
    startup.phase("model and optimizer")

    totals = Totals(device)
    graphed = None
    lr_tensor = None
    if use_graphs and start_epoch < config.epochs:
        # After loading the checkpoint: the graph keeps the addresses of the optimizer's state.
        lr_tensor = LrTensor(optimizer, device)
        graphed = GraphedTrainStep(raw_model, optimizer, data.train_x, data.train_y, config.batch_size, totals,
                                   transform=augment, autocast_dtype=autocast_dtype)
        startup.phase("CUDA graph capture")
    if start_epoch < config.epochs and uses_compiled(raw_model):
        # After CompileAhead, this finds every pass compiled (its calls are the same).
        compile_ahead(raw_model, data.train_x[: _compile_rows(config, ctx)])
        startup.phase("compilation")

    # The backend of the largest linear layer's training call (auto on CPU: small calls stay on the reference).
    backend = resolve_backend(config.backend, data.train_x, _largest_linear_call(raw_model, config, ctx))
    _log(ctx, f"WavKAN {net} ({config.wavelet}) on {config.dataset}: {n_train} train / "
              f"{data.test_x.shape[0]} test samples; {len(bounds)} steps of {config.batch_size} per epoch; "
              f"device {device}" + (f" ({threads_note})" if device.type == "cpu" else "")
              + f", backend {backend}, CUDA graph {'on' if use_graphs else 'off'}"
              + f", augment {'on' if augment else 'off'}, bf16 autocast {'on' if amp else 'off'}"
              + (f", DDP x{ctx.world_size}" if ctx.enabled else "") + f"; output in {out}")

    history_files = _HistoryFiles(out, f"Wav-KAN {net} {config.wavelet} on {config.dataset}")
    if ctx.is_main and history:
        history_files.write(history, last=True)  # the checkpoint's history is the truth; drop rows of an unfinished epoch

    if start_epoch < config.epochs:
        _log(ctx, startup.summary())
    try:
        for epoch in range(start_epoch, config.epochs):
            raw_model.train()
            totals.zero_()
            progress = EpochProgress(len(bounds), f"epoch {epoch + 1}/{config.epochs}", totals,
                                     enabled=config.progress and ctx.is_main)
            t0 = time.perf_counter()
            perm = epoch_permutation(n_train, config.seed, epoch).to(device)
            if augment is not None:
                augment.set_epoch(epoch)
            for b0, b1 in bounds:
                idx = perm[b0:b1]
                if graphed is not None and b1 - b0 == config.batch_size:
                    graphed(idx)
                else:
                    if ctx.enabled:
                        idx = idx.tensor_split(ctx.world_size)[ctx.rank]
                    train_step(model, optimizer, data.train_x, data.train_y, idx, ctx.world_size / (b1 - b0),
                               totals, set_grads_to_none=graphed is None, transform=augment,
                               autocast_dtype=autocast_dtype)
                progress.update(b1)
            scheduler.step()
            if lr_tensor is not None:
                lr_tensor.sync()
            sums = dist_utils.all_reduce_sum(totals.as_tensor())
            loss_sum, correct, count = sums.tolist()  # syncs the device: the epoch's work is done
            seconds = time.perf_counter() - t0
            progress.close()
            if not (math.isfinite(loss_sum) and _all_finite(raw_model)):
                if epoch > 0:
                    kept = f"{ckpt_path} keeps epoch {epoch}"
                else:
                    kept = f"{ckpt_path} is untouched" if ckpt_path.exists() else "no checkpoint was written"
                raise TrainingDiverged(f"epoch {epoch + 1}: training diverged (loss {loss_sum / max(count, 1)}, "
                                       f"lr {config.lr:g}); stopped before saving it: {kept}")

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
                history_files.saving(len(history))
                save_checkpoint(ckpt_path, training_state(run_config, epoch + 1, history, raw_model, optimizer,
                                                          scheduler, device, ctx.world_size))
                (out / EDGES_NAME).unlink(missing_ok=True)  # drawn from a checkpoint that is gone; redrawn at the end
                history_files.write(history, last=epoch + 1 == config.epochs)
            _log(ctx, f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f} "
                      f"acc {100 * row['train_acc']:.2f}% | test loss {test_loss:.4f} acc {100 * test_acc:.2f}% | "
                      f"{seconds:.1f} s, {row['samples_per_s']:,.0f} samples/s")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row)
    except BaseException:  # a crash, a divergence or Ctrl-C
        history_files.catch_up(history)
        raise

    if history and ctx.is_main:  # the learned edge functions, over the inputs' training ranges
        write_edges_png(out / EDGES_NAME, raw_model, data.train_x,
                        f"Wav-KAN {net} {config.wavelet} on {config.dataset}: learned edge functions"
                        + (" of the WavKANLinear head" if conv else ""), batch_size=config.eval_batch_size)
    if history:
        final = history[-1]
        _log(ctx, f"final test accuracy {100 * final['test_acc']:.2f}% (test loss {final['test_loss']:.4f}) "
                  f"after {final['epoch']} epochs; outputs in {out}")
    return RunResult(out, history)


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    startup = StartupClock(from_process_start=True)
    args = build_parser(prog).parse_args(argv)
    config = None
    try:
        config = config_from_args(args)
        train(config, startup=startup)
    except (OSError, ValueError, RuntimeError) as e:  # missing or bad files, bad options, no CUDA, divergence
        print(f"{prog or 'wavkan train'}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # once under torchrun, where every rank gets the signal
            saved = config is not None and (config.out_dir() / CHECKPOINT_NAME).exists()
            print("\ninterrupted: " + ("rerun with --resume to continue from the last completed epoch" if saved
                                       else "no epoch had completed, nothing was saved"), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    from ..cli import exit_now

    exit_now(main(prog="python -m wavkan.app.train"))
