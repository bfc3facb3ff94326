"""The compiled CPU backend: the reference's formulas, fused by ``torch.compile``.

The reference (``wavkan.reference``) runs each elementwise step of a wavelet as its own
PyTorch op, so a layer's forward and backward each pass over the (rows, out, in) edge tensor
ten to twenty times. Here the same formulas (``Wavelet.psi_dpsi``, ``(x - t) * (1 / s)``,
the same reductions) are traced once per wavelet and pass by ``torch.compile``, whose Inductor
C++ code generation emits vectorised loops that compute the wavelet in registers and reduce
as they go: the forward is one pass, the backward two. Nothing is written by hand, and the
wavelet formulas keep one source.

Each pass is compiled with symbolic sizes, so one compiled kernel serves every batch, layer
width and chunk; float32 and float64 get one each (float16/bfloat16 inputs compute in float32,
as on the reference). The first call of a pass compiles it (a C++ compiler is needed: ``g++``,
or ``$CXX``); Inductor caches the result on disk, so later processes load it. Work is cut into
the reference's blocks (``reference.CHUNK_ELEMENTS`` edges-times-rows), so the extra memory is
bounded by a few such blocks whatever the batch.

    forward          y[b,o]  = sum_i w[o,i] psi(z[b,o,i]),  z = (x[b,i] - t[o,i]) / s[o,i]
    backward         grad_x, and (grad_weights, sum_b q, sum_b q z) with q = g[b,o] dpsi(z),
                     from which the parameter gradients follow as in the reference.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import types

import torch
from torch import Tensor

from .reference import CHUNK_ELEMENTS, _blocks, compute_dtype
from .wavelets import get_wavelet

__all__ = ["compiler_available", "compiled_forward", "compiled_backward"]


def _cxx_name() -> str:
    # Inductor's own default (torch._inductor.config.cpp.cxx), read without importing Inductor.
    if sys.platform == "win32":
        return os.environ.get("CXX", "cl")
    return os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")


@functools.lru_cache(maxsize=None)
def compiler_available() -> bool:
    """Whether Inductor can build CPU kernels here: the C++ compiler it calls is on PATH."""
    return shutil.which(_cxx_name()) is not None


# --- the passes, as plain PyTorch for torch.compile to fuse ----------------------------------


def _z(x: Tensor, inv_s: Tensor, t: Tensor) -> Tensor:
    # As the reference: (x - t) * (1/s), exactly 0 where x == t.
    return (x[:, None, :] - t) * inv_s


def _forward(x, inv_s, t, w, wav):
    psi, _ = wav.psi_dpsi(_z(x, inv_s, t), False)
    return (psi * w).sum(-1)


def _backward_x(g, x, inv_s, t, w, wav):
    _, dpsi = wav.psi_dpsi(_z(x, inv_s, t), True)
    return (dpsi * g[:, :, None] * (w * inv_s)).sum(1)


def _backward_params(g, x, inv_s, t, w, wav):
    z = _z(x, inv_s, t)
    psi, dpsi = wav.psi_dpsi(z, True)
    gb = g[:, :, None]
    q = dpsi * gb
    return (psi * gb).sum(0), q.sum(0), (q * z).sum(0)


def _backward_all(g, x, inv_s, t, w, wav):
    z = _z(x, inv_s, t)
    psi, dpsi = wav.psi_dpsi(z, True)
    gb = g[:, :, None]
    q = dpsi * gb
    return (q * (w * inv_s)).sum(1), (psi * gb).sum(0), q.sum(0), (q * z).sum(0)


_PASSES = {
    "forward": _forward,
    "backward_x": _backward_x,
    "backward_params": _backward_params,
    "backward_all": _backward_all,
}


@functools.lru_cache(maxsize=None)
def _compiled(wavelet: str, pass_name: str):
    """The pass ``pass_name`` for ``wavelet``, compiled on first call.

    Dynamo keeps its compiled versions per code object, a bounded number of them; a copy of
    the pass's code per wavelet (named after both) keeps each wavelet's float32 and float64
    versions apart from the other wavelets' instead of all in one full cache.
    """
    template = _PASSES[pass_name]
    code = template.__code__.replace(co_name=f"wavkan_{pass_name}_{wavelet}")
    # The wavelet is the last parameter's default: the copy is called with the tensors alone.
    fn = types.FunctionType(code, template.__globals__, code.co_name, (get_wavelet(wavelet),))
    return torch.compile(fn, dynamic=True, fullgraph=True)


def compiled_forward(x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet,
                     chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:  # fmt: skip
    """y = sum_i weights * psi(z): x (B, in), params (out, in) -> (B, out) in x's dtype.

    The reference's ``reference_forward``, compiled; CPU tensors.
    """
    wav = get_wavelet(wavelet)
    cd = compute_dtype(x.dtype)
    xc, s, t, w = (a.to(cd).contiguous() for a in (x, scale, translation, weights))
    inv_s = s.reciprocal()
    B, IN = xc.shape
    OUT = s.shape[0]
    fwd = _compiled(wav.name, "forward")
    if B * OUT * IN <= chunk_elements:
        return fwd(xc, inv_s, t, w).to(x.dtype)
    y = torch.empty(B, OUT, dtype=cd, device=x.device)
    for b0, b1, o0, o1 in _blocks(B, OUT, IN, chunk_elements):
        y[b0:b1, o0:o1] = fwd(xc[b0:b1], inv_s[o0:o1], t[o0:o1], w[o0:o1])
    return y.to(x.dtype)


def compiled_backward(grad: Tensor, x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet,
                      chunk_elements: int = CHUNK_ELEMENTS, need_x: bool = True, need_params: bool = True):  # fmt: skip
    """(grad_x, grad_scale, grad_translation, grad_weights) for grad = dL/dy (B, out), as
    ``reference_backward`` (None for what is not needed), compiled; CPU tensors."""
    wav = get_wavelet(wavelet)
    cd = compute_dtype(x.dtype)
    g, xc, s, t, w = (a.to(cd).contiguous() for a in (grad, x, scale, translation, weights))
    inv_s = s.reciprocal()
    B, IN = xc.shape
    OUT = s.shape[0]
    if not (need_x or need_params):
        return None, None, None, None
    name = "backward_all" if need_x and need_params else "backward_x" if need_x else "backward_params"
    bwd = _compiled(wav.name, name)
    single = B * OUT * IN <= chunk_elements
    gx = None if single or not need_x else torch.zeros(B, IN, dtype=cd, device=x.device)
    if need_params and not single:
        gw, sum_q, sum_qz = (torch.zeros(OUT, IN, dtype=cd, device=x.device) for _ in range(3))
    for b0, b1, o0, o1 in ((0, B, 0, OUT),) if single else _blocks(B, OUT, IN, chunk_elements):
        parts = bwd(g[b0:b1, o0:o1], xc[b0:b1], inv_s[o0:o1], t[o0:o1], w[o0:o1])
        if need_x and not need_params:
            parts = (parts,)
        if single:
            if need_x:
                gx, *parts = parts
            if need_params:
                gw, sum_q, sum_qz = parts
            continue
        if need_x:
            gx[b0:b1] += parts[0]
            parts = parts[1:]
        if need_params:
            gw[o0:o1] += parts[0]
            sum_q[o0:o1] += parts[1]
            sum_qz[o0:o1] += parts[2]
    grad_x = gx.to(x.dtype) if need_x else None
    if not need_params:
        return grad_x, None, None, None
    w_over_s = w * inv_s
    g_t = -w_over_s * sum_q
    g_s = -w_over_s * sum_qz
    return grad_x, g_s.to(scale.dtype), g_t.to(translation.dtype), gw.to(weights.dtype)
