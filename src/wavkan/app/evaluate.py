"""Test-set scoring: ``evaluate`` for a model in memory, ``wavkan evaluate`` for a checkpoint.

``wavkan evaluate --checkpoint runs/mnist-mexican_hat/checkpoint.pt`` rebuilds the network from
the run config stored in the checkpoint, loads its weights, and prints the test loss and
accuracy on the run's dataset (or ``--dataset``), which equal the run's last metrics.csv row.
A checkpoint that fails its verification (``load_checkpoint``: empty, not a checkpoint, corrupt
contents) is refused with one line naming the file and the defect, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cli import positive_int
from .distributed import DistContext, all_reduce_sum, resolve_device

__all__ = ["evaluate", "evaluate_checkpoint", "main", "EVAL_BATCH_SIZE"]

# Big batches: evaluation needs no grad, and few launches keep the GPU busy. The reference
# backend bounds its own memory whatever the batch.
EVAL_BATCH_SIZE = 10000


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int = EVAL_BATCH_SIZE,
    ctx: Optional[DistContext] = None,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in [0, 1]) of ``model`` on x (N, in), y (N,).

    Runs in eval mode (BatchNorm uses its running statistics, so a row's score does not depend
    on its batch) and restores the previous mode. Under DDP (``ctx.enabled``) each rank scores a
    contiguous shard and the sums are all-reduced; every rank gets the result.
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("cannot evaluate on an empty test set")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lo, hi = 0, n
    if ctx is not None and ctx.enabled:
        shard = torch.arange(n).tensor_split(ctx.world_size)[ctx.rank]
        lo, hi = (int(shard[0]), int(shard[-1]) + 1) if shard.numel() else (0, 0)
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=x.device)  # loss sum, correct count
    try:
        # A rank with an empty shard (n < world_size) still joins the all_reduce below.
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            out = model(x[start:stop])
            target = y[start:stop]
            sums[0] += F.cross_entropy(out.float(), target, reduction="sum").double()
            sums[1] += (out.argmax(dim=1) == target).sum().double()
    finally:
        model.train(was_training)
    if ctx is not None and ctx.enabled:
        all_reduce_sum(sums)
    loss_sum, correct = sums.tolist()
    return loss_sum / n, correct / n


def evaluate_checkpoint(
    checkpoint,
    dataset: Optional[str] = None,
    device: str = "auto",
    backend: str = "auto",
    limit_test: Optional[int] = -1,
    batch_size: int = EVAL_BATCH_SIZE,
) -> dict:
    """Score a checkpoint's model on a test set.

    ``dataset`` and ``limit_test`` default to the run's own (``limit_test=-1``: the run's
    limit; None: the whole test set). Returns dict(test_loss, test_acc, samples, dataset, epoch).
    """
    from .checkpoint import build_model, load_checkpoint
    from .data import check_layers_fit, load_raw, to_device
    from .models import check_conv_fits, resolve_model_fields, to_device_images

    state = load_checkpoint(checkpoint)
    config = resolve_model_fields(state["config"])
    dataset = config["dataset"] if dataset is None else dataset
    limit = config.get("limit_test") if limit_test == -1 else limit_test
    dev = resolve_device(device)
    model = build_model(config, backend=backend)
    model.load_state_dict(state["model"])
    model.to(dev)
    # One training row: only the test split is needed on the device.
    if config["model"] == "conv":  # images (N, C, H, W) in [0, 1]; the net normalises them
        data = to_device_images(load_raw(dataset), dev, limit_train=1, limit_test=limit)
        check_conv_fits(config, data, dataset)
    else:
        data = to_device(load_raw(dataset), dev, limit_train=1, limit_test=limit)
        check_layers_fit(model.layers_hidden, data.num_features, data.num_classes, dataset,
                         labels={"test_labels": data.test_y}, trained=True)
    loss, acc = evaluate(model, data.test_x, data.test_y, batch_size)
    return {"test_loss": loss, "test_acc": acc, "samples": data.test_x.shape[0], "dataset": dataset,
            "epoch": state["epoch"]}


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "wavkan evaluate",
        description="Rebuild a trained Wav-KAN from its checkpoint and score it on a test set.",
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by wavkan train")
    p.add_argument("--dataset", default=None,
                   help="mnist, fashion-mnist, cifar10, a folder of idx files or CIFAR-10 batches, a CIFAR-10 "
                        "tarball or a .npz (default: the run's)")
    p.add_argument("--limit-test", type=int, default=-1, metavar="N",
                   help="score the first N test samples (default: the run's limit; 0: all)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to score: auto is the GPU when torch sees one, else the CPU (default: %(default)s)")
    p.add_argument("--backend", choices=("auto", "reference", "triton", "compiled"), default="auto",
                   help="auto: Triton kernels for CUDA tensors, the compiled CPU path (torch.compile) for the "
                        "linear layers' larger CPU calls where a C++ compiler is found, pure PyTorch otherwise "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=EVAL_BATCH_SIZE,
                   help="rows per forward pass (default: %(default)s)")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    args = build_parser(prog).parse_args(argv)
    limit = None if args.limit_test == 0 else args.limit_test
    try:
        r = evaluate_checkpoint(args.checkpoint, args.dataset, args.device, args.backend, limit, args.batch_size)
    except (OSError, ValueError, RuntimeError) as e:  # missing or corrupt files, bad input, no CUDA
        print(f"wavkan evaluate: error: {e}", file=sys.stderr)
        return 2
    print(
        f"{r['dataset']}: test loss {r['test_loss']:.6f}, test accuracy {100 * r['test_acc']:.2f}% "
        f"({round(r['test_acc'] * r['samples'])}/{r['samples']}) after epoch {r['epoch']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
