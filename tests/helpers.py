"""Shared test helpers: random layer inputs, error measures, the per-dtype tolerance table."""

from __future__ import annotations

import torch

# Kernel vs float64 reference, relative norm error ||a - ref|| / ||ref||.
FP32_TOL = {"output": 1e-5, "grad": 1e-4}
# bf16/fp16: at most this many times PyTorch's own error in that dtype, plus an absolute floor.
LOW_PRECISION_FACTOR = 2.0
LOW_PRECISION_FLOOR = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def layer_inputs(B, IN, OUT, dtype=torch.float32, device="cpu", lead=()):
    """x (*lead, B, IN), and params (OUT, IN) with scale != 1 and translation != 0."""
    # Drawn in float32 (float64 for float64): the > 2^31-element case stays at 8 GB.
    draw = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(*lead, B, IN, dtype=draw, device=device).mul_(1.5).to(dtype)
    scale = torch.rand(OUT, IN, dtype=draw, device=device) * 1.5 + 0.5
    translation = torch.randn(OUT, IN, dtype=draw, device=device) * 0.7
    weights = torch.randn(OUT, IN, dtype=draw, device=device) / IN**0.5
    return (x,) + tuple(t.to(dtype) for t in (scale, translation, weights))


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    assert torch.isfinite(a).all(), "non-finite values"
    denom = ref.norm().item()
    return (a - ref).norm().item() / (denom if denom > 0 else 1.0)


def grads_of(fn, tensors, grad_out):
    """Output and the gradients of every tensor in ``tensors`` for a given dL/dy."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*leaves)
    y.backward(grad_out)
    return y.detach(), [leaf.grad for leaf in leaves]


def run_python(code: str, extra_env=None, timeout: float = 120):
    """``python -c code`` in a fresh interpreter that imports what this one does (its
    ``sys.path``), with ``extra_env`` added to the environment; the CompletedProcess, text
    output captured."""
    import os
    import subprocess
    import sys

    env = {**os.environ, **(extra_env or {}), "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
