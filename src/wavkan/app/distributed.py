"""Multi-process training helpers: torchrun's environment, the process group, BatchNorm sync.

Launched by ``torchrun --nproc-per-node N -m wavkan.train ...``, every process sees RANK,
WORLD_SIZE and LOCAL_RANK. Each rank trains on its share of every global batch, so BatchNorm's
batch statistics must cover the whole global batch for the run to equal single-process
training:

- on CUDA, ``nn.SyncBatchNorm`` does that (NCCL);
- on CPU, torch's ``SyncBatchNorm`` refuses CPU tensors (torch 2.13 raises "SyncBatchNorm
  expected input tensor to be on GPU ..."), so ``AllReduceBatchNorm1d`` below computes the
  global mean and variance with two differentiable all-reduces (gloo); ``AllReduceBatchNorm2d``
  does the same for the conv net's ``BatchNorm2d``.

Both keep BatchNorm's state_dict keys, so checkpoints load into a plain ``WavKAN`` or conv net.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistContext",
    "context_from_env",
    "resolve_device",
    "init_process_group",
    "destroy_process_group",
    "all_reduce_sum",
    "AllReduceBatchNorm1d",
    "AllReduceBatchNorm2d",
    "sync_batchnorm",
    "new_group_like_world",
    "wrap_ddp",
    "DDP_MEASURED",
    "DDP_PAYS_FROM",
    "edge_evaluations_per_sample",
    "ddp_note",
]

# Two H200s over one (samples/s; the single GPU replays its step as a CUDA graph, DDP steps run
# eagerly), `wavkan train` on MNIST, mexican_hat, fp32, against each rank's wavelet evaluations
# per step (forward): (per-rank evaluations, speed-up, workload). benchmarks/STATUS.md has the runs.
DDP_MEASURED = (
    (4.1e10, 1.85, "784-4096-4096-10 at batch 4096"),
    (1.0e10, 1.52, "784-4096-4096-10 at batch 1024"),
    (8.1e5, 0.02, "the paper's 784-32-10 at batch 64"),
)
# Below this many evaluations per rank and step, two GPUs gave less than 1.5x one.
DDP_PAYS_FROM = 1e10


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank among world_size, local_rank on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env(env=None) -> DistContext:
    """The torchrun variables RANK / WORLD_SIZE / LOCAL_RANK; a single process without them."""
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return DistContext()
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    local = int(env.get("LOCAL_RANK", rank))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return DistContext(rank, world, local)


def resolve_device(name: str, ctx: DistContext = DistContext()) -> torch.device:
    """"auto" is CUDA when available, else CPU. On CUDA each rank takes GPU ``local_rank``."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; expected auto, cpu or cuda")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no CUDA device (is this a CPU build of torch?)")
    index = ctx.local_rank if ctx.enabled else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK {index} but only {torch.cuda.device_count()} CUDA device(s)")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_process_group(ctx: DistContext, device: torch.device) -> None:
    """NCCL for CUDA devices, gloo for CPU; MASTER_ADDR/PORT come from torchrun."""
    if not ctx.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend, rank=ctx.rank, world_size=ctx.world_size, timeout=timedelta(minutes=10), **kwargs
    )


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over all ranks, in place; ``t`` itself when not distributed."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x. Every rank's loss uses y, so dL/dx_r = sum over ranks of dL_r/dy:
    the backward is an all-reduce too."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class _AllReduceBatchNorm:
    """BatchNorm over the global batch of all ranks, for any device (used with gloo on CPU).

    Input (N_local, C, *). In training the mean is all-reduced first and the variance second
    (two passes, as numerically sound as single-process BatchNorm); running statistics get
    the global mean and the unbiased global variance, like ``nn.SyncBatchNorm``. Outside
    training, or in a single process, it is the plain BatchNorm it subclasses.
    """

    def __init__(self, *args, process_group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    @classmethod
    def convert(cls, module: nn.Module, process_group=None) -> nn.Module:
        """``module`` with every ``BatchNorm1d`` / ``BatchNorm2d`` replaced, parameters and buffers shared."""
        target = {nn.BatchNorm1d: AllReduceBatchNorm1d, nn.BatchNorm2d: AllReduceBatchNorm2d}.get(type(module))
        if target is not None:
            new = target(
                module.num_features, module.eps, module.momentum, module.affine,
                module.track_running_stats, process_group=process_group,
            )
            if module.affine:
                new.weight, new.bias = module.weight, module.bias
            if module.track_running_stats:
                new.running_mean, new.running_var = module.running_mean, module.running_var
                new.num_batches_tracked = module.num_batches_tracked
            new.train(module.training)
            return new
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child, process_group))
        return module

    def _world(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self._world() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))  # every dim but the channels
        per_channel = (1, -1) + (1,) * (x.dim() - 2)
        # Sums and count in one message; the count rides along so ranks may hold unequal shares.
        count = torch.full((1,), float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        total = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), self.process_group)
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.reshape(per_channel)
        var = _AllReduceSum.apply((centred * centred).sum(dims), self.process_group) / n
        y = centred * torch.rsqrt(var + self.eps).reshape(per_channel)
        if self.affine:
            y = y * self.weight.reshape(per_channel) + self.bias.reshape(per_channel)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                if self.momentum is None:  # cumulative moving average, as in BatchNorm
                    factor = 1.0 / float(self.num_batches_tracked)
                else:
                    factor = self.momentum
                unbiased = var * (n / (n - 1).clamp_min(1))
                # The update of torch's batch_norm: (1 - f) * running + f * batch statistic.
                self.running_mean.mul_(1.0 - factor).add_(mean.detach() * factor)
                self.running_var.mul_(1.0 - factor).add_(unbiased.detach() * factor)
        return y


class AllReduceBatchNorm1d(_AllReduceBatchNorm, nn.BatchNorm1d):
    """``BatchNorm1d`` over the global batch (input (N_local, C) or (N_local, C, L))."""


class AllReduceBatchNorm2d(_AllReduceBatchNorm, nn.BatchNorm2d):
    """``BatchNorm2d`` over the global batch (input (N_local, C, H, W))."""


def sync_batchnorm(model: nn.Module, device: torch.device, process_group=None) -> nn.Module:
    """Make every BatchNorm of ``model`` use global-batch statistics across the ranks."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    return AllReduceBatchNorm1d.convert(model, process_group)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` without per-step buffer broadcasts: with synchronised
    BatchNorm every rank's running statistics are already equal. (torch 2.13 renames the
    option ``forward_sync_buffers``; older versions only know ``broadcast_buffers``.)"""
    from torch.nn.parallel import DistributedDataParallel as DDP

    params = inspect.signature(DDP.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def new_group_like_world() -> Optional[object]:
    """A separate group for BatchNorm's all-reduces, so they never interleave with DDP's
    gradient buckets on the same communicator."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.new_group(backend=dist.get_backend())


def edge_evaluations_per_sample(model: nn.Module, sample: Tensor) -> int:
    """Wavelet evaluations of one forward per sample: rows x in x out for each ``WavKANLinear``,
    input positions x in/groups x out for each convolution (the wavelet is evaluated once per
    input value and edge). Found by running ``sample`` (1, ...) through the model in eval mode."""
    from ..nn import WavKANLinear, _WavKANConvNd  # the library's layers

    counts = []

    def linear_hook(module, args, _):
        x = args[0]
        counts.append(x.numel() // module.in_features * module.in_features * module.out_features)

    def conv_hook(module, args, _):
        x = args[0]
        counts.append(x.numel() // module.groups * module.out_channels)

    handles = []
    for m in model.modules():
        if isinstance(m, WavKANLinear):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, _WavKANConvNd):
            handles.append(m.register_forward_hook(conv_hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return sum(counts) // sample.shape[0]


def ddp_note(per_rank_evaluations: float, world_size: int) -> Optional[str]:
    """The start-up note of a DDP run too small to pay, with the measurements that say so."""
    if per_rank_evaluations >= DDP_PAYS_FROM:
        return None
    measured = "; ".join(f"{speed:.2f}x at {evals:.1e} ({what})" for evals, speed, what in DDP_MEASURED)
    return (f"note: DDP x{world_size} will not pay here: each rank's step evaluates {per_rank_evaluations:.1e} "
            f"wavelets, and two GPUs over one measured {measured}. Under DDP every step runs eagerly "
            f"(no CUDA graph), so a small step is bound by the host; one GPU, or a larger model or batch, "
            f"trains faster. Training on.")
