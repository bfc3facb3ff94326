"""The seed protocol's training step, in the three parts it times: the forward ``model(x)``,
the MSE loss (untimed), and ``loss.backward()``; eager, or each timed part replayed from a CUDA
graph.

``CapturedNetwork`` captures the forward, the loss and the backward as three graphs, the
way the training app captures its whole step (``wavkan.app.step``): warm-up on a side stream,
gradients None at capture, so that the backward allocates them in the graphs' pool and every
replay leaves them in ``p.grad``. PyTorch's ``make_graphed_callables``, used before, hands the
gradients back from its graph's static buffers, which AccumulateGrad then copies into each
``p.grad`` outside the graph (about 50 MB a step for the seed's network), from AccumulateGrad
nodes it created on its warm-up stream (a cross-stream wait per parameter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EagerNetwork:
    """``model`` run as the seed's benchmark runs it."""

    def __init__(self, model: nn.Module):
        self.model = model

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(out, target)

    def backward(self, loss: Tensor) -> None:
        loss.backward()


class CapturedNetwork:
    """``model``'s forward, the MSE loss and its backward, each one CUDA graph over static
    inputs of ``x_like`` and ``target_like``'s shapes. ``forward`` and ``loss`` copy their
    inputs in; ``backward`` overwrites ``p.grad``: there is nothing to zero between steps.

    For timing, not training: the gradients are valid from a ``backward`` until the next
    ``forward`` (the graphs share one pool, and the backward's capture may have put a
    gradient where the forward's activations were), and ``model.zero_grad()`` with its
    default set_to_none detaches ``p.grad`` from the graphs for good. The warm-up moves batch
    norm's running statistics. The model must stay in training mode."""

    def __init__(self, model: nn.Module, x_like: Tensor, target_like: Tensor, warmup: int = 3):
        device = x_like.device
        self.model = model
        self.x = torch.zeros_like(x_like)
        self.target = torch.zeros_like(target_like)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # first calls (kernel compiles) outside capture
            for _ in range(warmup):
                model.zero_grad(set_to_none=True)
                F.mse_loss(model(self.x), self.target).backward()
        torch.cuda.current_stream(device).wait_stream(side)
        model.zero_grad(set_to_none=True)
        # Three graphs in one pool, replayed in capture order: each reads what the one before
        # wrote (the activations, the loss), as the protocol's three calls do.
        self.forward_graph, self.loss_graph, self.backward_graph = (torch.cuda.CUDAGraph() for _ in range(3))
        with torch.cuda.graph(self.forward_graph):
            self.out = model(self.x)
        pool = self.forward_graph.pool()
        with torch.cuda.graph(self.loss_graph, pool=pool):
            self.mse = F.mse_loss(self.out, self.target)
        with torch.cuda.graph(self.backward_graph, pool=pool):
            self.mse.backward()
        torch.cuda.synchronize(device)

    def zero_grad(self) -> None:
        pass  # each backward replay overwrites the gradients

    def forward(self, x: Tensor) -> Tensor:
        self.x.copy_(x)
        self.forward_graph.replay()
        return self.out

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        self.target.copy_(target)
        self.loss_graph.replay()
        return self.mse

    def backward(self, loss: Tensor) -> None:
        self.backward_graph.replay()
