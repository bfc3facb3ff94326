"""``wavkan train``'s options: ``TrainConfig`` (one run's options, the paper's protocol by default,
with their validation) and the command line that fills it."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


from ..cli import int_list, positive_int
from ..ops import BACKENDS
from ..wavelets import WAVELETS
from .data import dataset_name, resolve_dataset
from .evaluate import EVAL_BATCH_SIZE
from .models import resolve_model_fields

__all__ = ["TrainConfig", "ConfigError", "RUN_DEFINING", "build_parser", "config_from_args"]


# Config fields that define a run's trajectory: a resumed run must agree on all of them.
# (epochs may grow; device, backend, graphs and progress change only speed or rounding.)
RUN_DEFINING = (
    "dataset", "wavelet", "layers", "batch_size", "lr", "weight_decay", "gamma", "seed",
    "limit_train", "limit_test",
    "model", "conv_widths", "conv_strides", "augment",  # the conv net's (wavkan.app.models)
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
    # --- the conv net (wavkan.app.models); None: resolved by resolve_model_fields ---
    model: Optional[str] = None  # "conv" for cifar10, else "mlp"
    conv_widths: Optional[list] = None
    conv_strides: Optional[list] = None
    augment: Optional[bool] = None  # random crop + flip; on for conv
    amp: Optional[bool] = None  # bf16 autocast; on for conv on CUDA
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
        for name in ("lr", "weight_decay", "gamma"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                              "--overwrite starts it over")
        if not -(1 << 63) <= self.seed < (1 << 64):  # what torch.manual_seed takes
            raise ConfigError(f"seed must be from -2^63 to 2^64 - 1, got {self.seed}")
        try:
            resolve_model_fields(dataclasses.asdict(self))
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def to_dict(self) -> dict:
        """The run's config as its checkpoint records it: the model fields resolved, and a
        dataset path made absolute (``resolve_dataset``), so a resumed run or ``wavkan
        evaluate`` finds the same file from any folder."""
        d = dataclasses.asdict(self)
        d["layers"] = [int(w) for w in self.layers]
        d["dataset"] = resolve_dataset(self.dataset)
        return resolve_model_fields(d)


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    # Each help text states its own default (argparse's defaults formatter would append a
    # second, or a misleading one: "(default: None)", "--no-progress (default: True)").
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog=prog or "wavkan train",
        description="Train a Wav-KAN classifier. The defaults are the paper's MNIST protocol.",
    )
    p.add_argument("--dataset", default=d.dataset,
                   help="mnist, fashion-mnist, a folder of the four idx files (gz or not), or a .npz with "
                        "train_images, train_labels, test_images, test_labels; or cifar10 (searched in $WAVKAN_DATA, "
                        "./data, ~/.cache/wavkan), a folder of CIFAR-10 batches or a CIFAR-10 tarball "
                        "(default: %(default)s)")
    p.add_argument("--wavelet", choices=WAVELETS, default=d.wavelet,
                   help="mother wavelet of every edge (default: %(default)s)")
    p.add_argument("--layers", type=int_list, default=argparse.SUPPRESS,
                   help="comma-separated widths of the MLP (default: " + ",".join(map(str, d.layers)) + ")")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="total epochs; --resume may raise it (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                   help="global batch, over all DDP ranks (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--gamma", type=float, default=d.gamma,
                   help="ExponentialLR factor per epoch (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="initial weights, shuffling and augmentation (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device,
                   help="where to train: auto is the GPU when torch sees one, else the CPU; under torchrun "
                        "each rank takes GPU LOCAL_RANK (default: %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend,
                   help="auto: Triton kernels for CUDA tensors, the compiled CPU path (torch.compile) for the "
                        "linear layers' larger CPU calls where a C++ compiler is found, pure PyTorch otherwise "
                        "(default: %(default)s)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run folder, used by one run at a time (default: runs/<dataset>-<wavelet>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last completed epoch")
    p.add_argument("--overwrite", action="store_true",
                   help="start over even if --out holds a run; its files are replaced when the new run's "
                        "first epoch completes")
    p.add_argument("--limit-train", type=int, default=None, metavar="N",
                   help="train on the first N samples (default: all)")
    p.add_argument("--limit-test", type=int, default=None, metavar="N",
                   help="test on the first N samples (default: all)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (there is none either when stderr is not a terminal)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the training step in a CUDA graph (default: on for the MLP on a single CUDA "
                        "device; the conv net or --amp train eagerly unless asked)")
    p.add_argument("--eval-batch-size", type=positive_int, default=d.eval_batch_size,
                   help="rows per evaluation pass (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="CPU threads (default: the cores this process may use less those the load average shows "
                        "busy, at least 1; a resumed run keeps its own unless OMP_NUM_THREADS is set)")
    # --- the conv net (wavkan.app.models) ---
    p.add_argument("--model", choices=("mlp", "conv"), default=None,
                   help="mlp: WavKAN(--layers); conv: the Wav-KAN conv net (default: conv for cifar10, else mlp)")
    p.add_argument("--conv-widths", type=int_list, default=None,
                   help="channels of each conv block (default: 16,32,64,128,256,256,512,512)")
    p.add_argument("--conv-strides", type=int_list, default=None,
                   help="stride of each conv block (default: 1,2,2,1,1,2,1,1 for 8 blocks, else all 1)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (padding 4) and horizontal flip of each training image (default: on for conv)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast in training (default: on for conv on CUDA, off otherwise)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
