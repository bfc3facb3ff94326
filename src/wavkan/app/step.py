"""One optimisation step, eager or captured whole in a CUDA graph.

``train_step`` is the step every path runs: rows ``idx`` of the device-resident training set,
forward, cross-entropy, backward, AdamW step, and the batch's loss sum and correct count added
to device accumulators (no host sync, so GPU steps stay asynchronous).

``GraphedTrainStep`` captures ``train_step`` for a fixed batch size in one CUDA graph, following
PyTorch's "whole network capture" recipe: static index buffer, warm-up on a side stream, capture,
then one index copy and one ``graph.replay()`` per step instead of hundreds of kernel launches
(at batch 64 the H200 epoch is launch-bound). It needs ``AdamW(capturable=True)`` with the
learning rate held in a device tensor, so the LR scheduler's updates reach the replayed kernels
(see ``LrTensor``).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Totals", "train_step", "GraphedTrainStep", "LrTensor"]


class Totals:
    """Device accumulators of one epoch: sum of per-sample losses, correct count, samples."""

    def __init__(self, device):
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)

    def zero_(self) -> "Totals":
        # In place: a captured graph holds these very tensors.
        for t in (self.loss_sum, self.correct, self.count):
            t.zero_()
        return self

    def as_tensor(self) -> Tensor:
        """(loss_sum, correct, count) as one float64 vector, e.g. for one all_reduce."""
        return torch.stack([self.loss_sum, self.correct.double(), self.count.double()])


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_x: Tensor,
    train_y: Tensor,
    idx: Tensor,
    loss_scale: float,
    totals: Totals,
    set_grads_to_none: bool = True,
    transform: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
    autocast_dtype: Optional[torch.dtype] = None,
) -> None:
    """One step on rows ``idx`` (B,) of ``train_x`` (N, ...) / ``train_y`` (N,).

    The minimised loss is ``loss_scale * sum of per-sample cross-entropies``: 1/B for plain
    training; under DDP, world_size / (global batch rows), so that DDP's average of the ranks'
    gradients is the gradient of the global batch's mean loss even when shares are unequal.
    ``transform(x, idx)`` augments the batch (``wavkan.app.augment``); ``autocast_dtype`` runs
    the forward and the loss under ``torch.autocast`` (mixed precision).
    """
    x = train_x.index_select(0, idx)
    y = train_y.index_select(0, idx)
    if transform is not None:
        x = transform(x, idx)
    optimizer.zero_grad(set_to_none=set_grads_to_none)
    with torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext():
        out = model(x)
        ce_sum = F.cross_entropy(out, y, reduction="sum")
    (ce_sum * loss_scale).backward()
    optimizer.step()
    with torch.no_grad():
        totals.loss_sum.add_(ce_sum.detach().double())
        totals.correct.add_((out.argmax(dim=1) == y).sum())
        totals.count.add_(idx.numel())


class LrTensor:
    """Keeps each param group's ``lr`` a device tensor that a captured graph reads.

    Captured AdamW kernels read the learning rate from this tensor's memory on every replay, so
    it must be updated in place. torch 2.13's schedulers already ``fill_`` a tensor ``lr``;
    older ones may assign a new object, which ``sync`` copies back into the captured tensor.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, device):
        self.optimizer = optimizer
        self.tensors = []
        for group in optimizer.param_groups:
            t = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
            group["lr"] = t
            self.tensors.append(t)

    def sync(self) -> None:
        for group, t in zip(self.optimizer.param_groups, self.tensors):
            if group["lr"] is not t:
                t.fill_(float(group["lr"]))
                group["lr"] = t


def _optimizer_state_tensors(optimizer) -> list[tuple[dict, str, Tensor]]:
    return [
        (state, key, value)
        for state in optimizer.state.values()
        for key, value in state.items()
        if isinstance(value, Tensor)
    ]


class GraphedTrainStep:
    """``train_step`` for full batches of ``batch_size`` rows, captured in a CUDA graph.

    The model must be in training mode, single-process (graphs are off under DDP), with its
    optimizer built with ``capturable=True`` and a tensor ``lr``, and with any checkpoint already
    loaded into both (``optimizer.load_state_dict`` replaces state tensors that the graph would
    otherwise keep reading). Warm-up steps run real updates; the model, its buffers and the
    optimizer state are restored in place afterwards, so the run's first step is unchanged.
    ``transform`` and ``autocast_dtype`` go to ``train_step``; a transform must keep its state
    in device tensors updated in place (``wavkan.app.augment.EpochAugment``), which replays read.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_x: Tensor,
        train_y: Tensor,
        batch_size: int,
        totals: Totals,
        warmup_steps: int = 3,
        transform: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
        autocast_dtype: Optional[torch.dtype] = None,
    ):
        if not train_x.is_cuda:
            raise ValueError("GraphedTrainStep needs CUDA tensors")
        if batch_size > train_x.shape[0]:
            raise ValueError(f"batch_size {batch_size} exceeds the {train_x.shape[0]} training rows")
        self.batch_size = batch_size
        device = train_x.device
        from ..kernels.staging import clear_pack_cache  # CUDA only: Triton is there

        self._clear_pack_cache = clear_pack_cache
        self.idx = torch.arange(batch_size, device=device)  # any valid rows for warm-up
        loss_scale = 1.0 / batch_size

        def step():
            train_step(model, optimizer, train_x, train_y, self.idx, loss_scale, totals, set_grads_to_none=True,
                       transform=transform, autocast_dtype=autocast_dtype)

        saved = self._snapshot(model, optimizer)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            # Warm-up outside capture: creates AdamW's lazy state, and lets cuBLAS, autograd and
            # Triton do their first-call work (kernel compiles, autotuning, workspaces).
            for _ in range(warmup_steps):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        # Grads None at capture: backward allocates them from the graph's private pool, so
        # every replay writes them to the same addresses that the captured optimizer reads.
        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step()
        # Capture records kernels without running them; undo the warm-up's updates.
        self._restore(model, optimizer, saved)
        totals.zero_()
        torch.cuda.synchronize(device)

    @staticmethod
    def _snapshot(model, optimizer):
        tensors = list(model.parameters()) + list(model.buffers())
        had_state = {id(v): v.detach().clone() for _, _, v in _optimizer_state_tensors(optimizer)}
        return tensors, [t.detach().clone() for t in tensors], had_state

    @staticmethod
    def _restore(model, optimizer, saved) -> None:
        tensors, values, had_state = saved
        with torch.no_grad():
            for t, v in zip(tensors, values):
                t.copy_(v)
            for _, _, value in _optimizer_state_tensors(optimizer):
                old = had_state.get(id(value))
                if old is None:
                    value.zero_()  # state created by the warm-up: AdamW starts from zeros (step 0)
                else:
                    value.copy_(old)

    def __call__(self, idx: Tensor) -> None:
        """One step on the rows ``idx`` (batch_size,), a device int64 tensor."""
        if idx.numel() != self.batch_size:
            raise ValueError(f"the captured step takes {self.batch_size} rows, got {idx.numel()}")
        self.idx.copy_(idx, non_blocking=True)
        self.graph.replay()
        # The replayed optimizer step rewrites the parameters without bumping their version
        # counters, so edge constants packed by an eager call (the epoch's last, partial batch,
        # the evaluation) would be read stale; forget them.
        self._clear_pack_cache()


def graphs_supported(device: torch.device, distributed: bool) -> Optional[str]:
    """None when CUDA graphs can be used; otherwise the reason they are off."""
    if device.type != "cuda":
        return "not on CUDA"
    if distributed:
        return "off under DDP"
    return None
