"""The compiled CPU backend: the reference's formulas, fused by ``torch.compile``.

The reference (``wavkan.reference``) runs each elementwise step of a wavelet as its own
PyTorch op, so a layer's forward and backward each pass over the (rows, out, in) edge tensor
ten to twenty times. Here the same formulas (``Wavelet.psi_dpsi``, ``(x - t) * (1 / s)``,
the same reductions) are traced once per wavelet and pass by ``torch.compile``, whose Inductor
C++ code generation emits vectorised loops that compute the wavelet in registers and reduce
as they go: the forward is one pass over the edges, and so is each of the backward's two
(grad_x; the three parameter sums). Nothing is written by hand, and the
wavelet formulas keep one source.

Each pass is compiled with symbolic sizes, so one compiled kernel serves every batch, layer
width and chunk; float32 and float64 get one each (float16/bfloat16 inputs compute in float32,
as on the reference). The first call of a pass compiles it (a C++ compiler is needed: ``g++``,
or ``$CXX``); Inductor caches the result on disk, so later processes load it. Work is cut into
the reference's blocks (``reference.CHUNK_ELEMENTS`` edges-times-rows), so the extra memory is
bounded by a few such blocks whatever the batch.

    forward          y[b,o] = sum_i w[o,i] psi(z[b,o,i]),  z = (x[b,i] - t[o,i]) / s[o,i]
    grad_x           sum_o g[b,o] w[o,i] dpsi(z) / s[o,i]
    parameters       grad_scale, grad_translation, grad_weights from sum_b g[b,o] psi(z),
                     sum_b g[b,o] dpsi(z) and sum_b g[b,o] dpsi(z) z, as in the reference.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
import types

import torch
from torch import Tensor

from .reference import CHUNK_ELEMENTS, _blocks, compute_dtype
from .wavelets import get_wavelet

__all__ = ["compiler_available", "compiled_forward", "compiled_backward", "CompiledBuildError"]


def _cxx_name() -> str:
    # Inductor's own default (torch._inductor.config.cpp.cxx), read without importing Inductor.
    if sys.platform == "win32":
        return os.environ.get("CXX", "cl")
    return os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")


# Looked up once, at import (a PATH search; the compiler is not run): a plain module value is
# also what torch.compile of a whole model can read while it traces the backend choice.
_COMPILER_FOUND = shutil.which(_cxx_name()) is not None
# The first build failure's reason, once a compiled pass failed to build: a compiler found on
# PATH may still be unable to build Inductor's code (no Python headers, a broken toolchain),
# which only a build shows. From then on the process treats the compiler as unavailable.
_BUILD_FAILED: list = []


class CompiledBuildError(RuntimeError):
    """Inductor could not build the compiled CPU backend's code with the C++ compiler found
    (``backend="auto"`` then falls back to the reference: ``wavkan.ops.wavkan_linear``)."""


def compiler_available() -> bool:
    """Whether Inductor can build CPU kernels here: the C++ compiler it calls was on PATH, and
    no compiled pass of this process has failed to build with it."""
    return _COMPILER_FOUND and not _BUILD_FAILED


def build_failure() -> str:
    """Why a compiled pass of this process failed to build ('' if none has)."""
    return _BUILD_FAILED[0] if _BUILD_FAILED else ""


# What Inductor raises when the C++ toolchain fails: the compiler found is not usable at all,
# or a build with it fails (say, without Python's headers). Nothing else (a full disk, memory,
# a bug) marks the compiler unusable: those propagate as they are.
_TOOLCHAIN_ERRORS = ("CppCompileError", "InvalidCxxCompiler")
_BUILD_LOCK = threading.Lock()


def _why_build_failed(error: BaseException) -> str:
    """A line saying why, if ``error`` is (or chains) a failure of the C++ toolchain, else '':
    the compiler's first line that names an error where it printed one, else the first line."""
    seen = 0
    while error is not None and seen < 16:
        kind = type(error)
        if kind.__name__ in _TOOLCHAIN_ERRORS and kind.__module__.startswith("torch._inductor"):
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            named = [line for line in lines[1:] if "error" in line.lower()]
            return (named or lines or [kind.__name__])[0][:300]
        error, seen = error.__cause__ or error.__context__, seen + 1
    return ""


def _run(fn, *args):
    """``fn(*args)`` for a compiled pass; a toolchain failure becomes ``CompiledBuildError`` and
    marks the compiler unavailable for the rest of the process. The error's ``first`` is True
    in the one call that found it (several threads may fail at once)."""
    try:
        return fn(*args)
    except Exception as e:
        why = _why_build_failed(e)
        if not why:
            raise
        with _BUILD_LOCK:
            first = not _BUILD_FAILED
            if first:
                _BUILD_FAILED.append(why)
        error = CompiledBuildError(
            f"the compiled CPU backend (torch.compile) could not build with the C++ compiler {_cxx_name()!r}: {why}; "
            "use backend='reference' (backend='auto' takes it by itself from the next call on)")
        error.first = first
        raise error from e


# --- the passes, as plain PyTorch for torch.compile to fuse ----------------------------------
#
# Each pass is laid out so that its reductions run over the innermost or outermost loop of one
# loop nest: the forward and grad_x over (rows, out, in), reducing in and out; the parameter
# sums over (out, in, rows), reducing rows, all three in one nest. (Laid out as (rows, out,
# in), the parameter sums took two nests, with g * dpsi stored whole between them.)


def _forward(x, inv_s, t, w, wav):
    """x (B, in), inv_s, t, w (out, in) -> y (B, out)."""
    psi, _ = wav.psi_dpsi((x[:, None, :] - t) * inv_s, False)
    return (psi * w).sum(-1)


def _backward_x(g, x, inv_s, t, w, wav):
    """g (B, out), x (B, in) -> grad_x (B, in)."""
    _, dpsi = wav.psi_dpsi((x[:, None, :] - t) * inv_s, True)
    return (dpsi * g[:, :, None] * (w * inv_s)).sum(1)


def _backward_params(g_t, x_t, inv_s, t, w, wav):
    """g_t (out, B), x_t (in, B): g and x transposed -> (grad_scale, grad_translation,
    grad_weights), each (out, in)."""
    z = (x_t[None, :, :] - t[:, :, None]) * inv_s[:, :, None]
    psi, dpsi = wav.psi_dpsi(z, True)
    g = g_t[:, None, :]
    # Not q = g * dpsi reused by two sums: Inductor stores a reused value that needs an exp
    # whole, where each sum computing its own product keeps everything in registers.
    sum_q, sum_qz = (dpsi * g).sum(-1), (dpsi * (z * g)).sum(-1)
    w_over_s = w * inv_s
    return -w_over_s * sum_qz, -w_over_s * sum_q, (psi * g).sum(-1)


_PASSES = {"forward": _forward, "backward_x": _backward_x, "backward_params": _backward_params}


@functools.lru_cache(maxsize=None)
def _compiled_for(wavelet: str, pass_name: str, threads: int, dtype: torch.dtype = torch.float32):
    """The pass ``pass_name`` for ``wavelet`` and compute ``dtype``, compiled on first call for
    ``threads`` threads.

    Dynamo keeps its compiled versions per code object, a bounded number of them (8), past which
    a call runs these lines eagerly, with other rounding. A copy of the pass's code per wavelet
    and per dtype keeps each one's versions apart from the others' (float32 calls with sizes of
    1 in many combinations filled the shared cache, and later float64 calls ran eagerly: their
    bits depended on what the process ran before). Inductor splits some sums across the
    threads it compiles for, which changes their rounding, so each thread count gets its own
    copy too: a given thread count then computes the same bits in every process.
    """
    template = _PASSES[pass_name]
    suffix = str(dtype).removeprefix("torch.")
    code = template.__code__.replace(co_name=f"wavkan_{pass_name}_{wavelet}_{suffix}_{threads}t")
    # The wavelet is the last parameter's default: the copy is called with the tensors alone.
    fn = types.FunctionType(code, template.__globals__, code.co_name, (get_wavelet(wavelet),))
    # Not fullgraph: past Dynamo's limit of compiled versions per code object (say, sizes of 1
    # in many combinations), a call runs these same lines eagerly instead of failing.
    return torch.compile(fn, dynamic=True)


def _compiled(wavelet: str, pass_name: str, dtype: torch.dtype):
    return _compiled_for(wavelet, pass_name, torch.get_num_threads(), dtype)


def _cast(cd, *tensors):
    # detach(): plain tensors, never nn.Parameter. Dynamo guards a parameter's sizes as static
    # even under dynamic=True, so every layer shape would compile its own version and, past
    # Dynamo's limit of versions per code object, run eagerly with other rounding: the bits
    # would depend on what the process ran before.
    return tuple(a.detach().to(cd).contiguous() for a in tensors)


@torch.no_grad()  # one grad mode: Dynamo compiles a version per mode
def compiled_forward(x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet,
                     chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:  # fmt: skip
    """y = sum_i weights * psi(z): x (B, in), params (out, in) -> (B, out) in x's dtype.

    ``reference_forward``, compiled; CPU tensors.
    """
    wav = get_wavelet(wavelet)
    cd = compute_dtype(x.dtype)
    xc, s, t, w = _cast(cd, x, scale, translation, weights)
    inv_s = s.reciprocal()
    B, IN = xc.shape
    OUT = s.shape[0]
    fwd = _compiled(wav.name, "forward", cd)
    if B * OUT * IN <= chunk_elements:
        return _run(fwd, xc, inv_s, t, w).to(x.dtype)
    y = torch.empty(B, OUT, dtype=cd, device=x.device)
    for b0, b1, o0, o1 in _blocks(B, OUT, IN, chunk_elements):
        y[b0:b1, o0:o1] = _run(fwd, xc[b0:b1], inv_s[o0:o1], t[o0:o1], w[o0:o1])
    return y.to(x.dtype)


@torch.no_grad()
def compiled_backward(grad: Tensor, x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet,
                      chunk_elements: int = CHUNK_ELEMENTS, need_x: bool = True, need_params: bool = True):  # fmt: skip
    """(grad_x, grad_scale, grad_translation, grad_weights) for grad = dL/dy (B, out), as
    ``reference_backward`` (None for what is not needed), compiled; CPU tensors."""
    wav = get_wavelet(wavelet)
    cd = compute_dtype(x.dtype)
    g, xc, s, t, w = _cast(cd, grad, x, scale, translation, weights)
    inv_s = s.reciprocal()
    B, IN = xc.shape
    OUT = s.shape[0]
    blocks = [(0, B, 0, OUT)] if B * OUT * IN <= chunk_elements else list(_blocks(B, OUT, IN, chunk_elements))
    grad_x = grad_s = grad_t = grad_w = None
    if need_x:
        bwd_x = _compiled(wav.name, "backward_x", cd)
        if len(blocks) == 1:
            gx = _run(bwd_x, g, xc, inv_s, t, w)
        else:
            gx = torch.zeros(B, IN, dtype=cd, device=x.device)
            for b0, b1, o0, o1 in blocks:
                # g's block contiguous, as every other call's: a strided one is one more version.
                gx[b0:b1] += _run(bwd_x, g[b0:b1, o0:o1].contiguous(), xc[b0:b1], inv_s[o0:o1], t[o0:o1], w[o0:o1])
        grad_x = gx.to(x.dtype)
    if need_params:
        bwd_p = _compiled(wav.name, "backward_params", cd)
        g_t, x_t = g.t(), xc.t()
        if len(blocks) == 1:
            grads = _run(bwd_p, g_t.contiguous(), x_t.contiguous(), inv_s, t, w)
        else:
            # Each gradient is a sum over rows times a factor of (o, i): block sums add up.
            grads = tuple(torch.zeros(OUT, IN, dtype=cd, device=x.device) for _ in range(3))
            for b0, b1, o0, o1 in blocks:
                parts = _run(bwd_p, g_t[o0:o1, b0:b1].contiguous(), x_t[:, b0:b1].contiguous(), inv_s[o0:o1], t[o0:o1],
                              w[o0:o1])  # fmt: skip
                for total, part in zip(grads, parts):
                    total[o0:o1] += part
        grad_s, grad_t, grad_w = (gr.to(p.dtype) for gr, p in zip(grads, (scale, translation, weights)))
    return grad_x, grad_s, grad_t, grad_w
