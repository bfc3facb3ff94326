"""The Wav-KAN op: input checks, backend choice, and its ``torch.library`` registration.

``wavkan_linear`` is the public functional. It flattens leading dims, folds a wavelet's input
window into the weights (so autograd carries the window's factor to ``grad_weights``), and
runs the op. Under ``torch.compile`` that is the custom op ``wavkan::linear``, whose backward
is the custom op ``wavkan::linear_backward``; both have fake implementations, so the compiler
traces through them without a graph break. Eager calls take an ``autograd.Function`` over the
same two implementations, which costs less host time per call. Either dispatches to a backend:

- ``"reference"``: pure PyTorch (``wavkan.reference``), any device, any float dtype;
- ``"triton"``: the fused kernels (``wavkan.kernels``) on CUDA tensors, or on CPU tensors
  under ``TRITON_INTERPRET=1``. They compute in fp32, so float64 inputs stay on the
  reference, which keeps float64 exact;
- ``"compiled"``: the reference's formulas fused by ``torch.compile`` (``wavkan.cpu``), on CPU
  tensors, float32 or float64; it needs a C++ compiler, and its first call of a pass compiles;
- ``"auto"``: triton for fp32/bf16/fp16 CUDA tensors when Triton is installed; compiled for
  fp32/bf16/fp16 CPU tensors when a C++ compiler is found and the call has at least
  ``COMPILED_MIN_EDGES`` rows x out x in edges; else reference.

``fast_math=True`` allows the packed-half forward (``wavkan.kernels.forward_half``) where it
exists and is faster: the triton backend, float16/bfloat16 x, mexican_hat or dog, at least
``FAST_MATH_MIN_ROWS`` rows, a GPU of compute capability 8.0 or newer. It computes in fp16
pairs with part of the exponentials as polynomials, at about 1e-3 relative error; elsewhere,
and for every gradient, the exact path runs. Like ``torch.backends.cuda.matmul.allow_tf32`` it
is a permission, not a request that fails when it cannot be met.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Optional

import torch
from torch import Tensor

from . import reference
from .wavelets import get_wavelet

__all__ = ["BACKENDS", "wavkan_linear", "resolve_backend"]

BACKENDS = ("auto", "reference", "triton", "compiled")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_HALF_DTYPES = (torch.float16, torch.bfloat16)
FAST_MATH_WAVELETS = ("mexican_hat", "dog")  # wavkan.kernels.forward_half.HALF_WAVELETS
# Below this many rows the packed-half forward was slower than the fp32 one on the H200
# (0.90x at B = 256, 1.05x at 1024, 1.21x at 4096: benchmarks/NOTES.md, v6).
FAST_MATH_MIN_ROWS = 1024


@functools.lru_cache(maxsize=None)
def _has_packed_half(index: int) -> bool:
    # min.NaN.f16x2 in the packed-half PTX needs sm_80; older GPUs keep the exact forward.
    return torch.cuda.get_device_capability(index) >= (8, 0)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, x: Tensor, edges: Optional[int] = None) -> str:
    """The backend that will run for ``x``: "reference", "triton" or "compiled". ``edges``: the
    call's rows x out x in (None: a call large enough for any backend)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    # --- the compiled CPU backend (wavkan.cpu) ---
    if backend == "compiled" or (backend == "auto" and not x.is_cuda):
        return _resolve_compiled(backend, x, edges)
    # ---
    if backend == "reference" or x.dtype == torch.float64:
        return "reference"
    if backend == "auto":
        return "triton" if (x.is_cuda and _HAS_TRITON) else "reference"
    if not _HAS_TRITON:
        raise RuntimeError("backend='triton' needs the triton package: pip install 'wavkan[triton]'")
    if not x.is_cuda and not _interpreting():
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors (x is on {x.device}); CPU tensors run the kernels "
            "only under Triton's interpreter (TRITON_INTERPRET=1 set before wavkan is imported)"
        )
    return "triton"


# --- the compiled CPU backend (wavkan.cpu) ---
# Below this many rows x out x in edges a call runs eagerly on the reference under "auto": a
# compiled call's fixed host cost outweighs the few ops it fuses, and small layers compile nothing.
COMPILED_MIN_EDGES = 1 << 14


def _resolve_compiled(backend: str, x: Tensor, edges: Optional[int]) -> str:
    from .cpu import compiler_available

    if backend == "auto":
        big = edges is None or edges >= COMPILED_MIN_EDGES
        usable = x.dtype != torch.float64 and x.device.type == "cpu" and compiler_available()
        return "compiled" if big and usable else "reference"
    if x.device.type != "cpu":
        raise RuntimeError(f"backend='compiled' runs CPU tensors (x is on {x.device}); use 'triton' or 'reference'")
    if not compiler_available():
        raise RuntimeError("backend='compiled' needs a C++ compiler for torch.compile (g++, or $CXX); "
                           "use backend='reference'")
    return "compiled"


# ---


# The Triton backend's staging kernels put features / 32 programs on a launch-grid axis that
# CUDA caps at 65535.
TRITON_MAX_FEATURES = 65535 * 32


def _check_triton_shape(scale: Tensor) -> None:
    out_features, in_features = scale.shape
    if max(out_features, in_features) > TRITON_MAX_FEATURES:
        raise ValueError(
            f"the triton backend takes in_features and out_features up to {TRITON_MAX_FEATURES}, got "
            f"(out_features, in_features) = {(out_features, in_features)}; use backend='reference'"
        )


def _check_inputs(x, scale, translation, weights) -> None:
    named = (("x", x), ("scale", scale), ("translation", translation), ("wavelet_weights", weights))
    for name, t in named:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"all tensors must be on one device: x is on {x.device}, {name} on {t.device}")
    if scale.dim() != 2 or scale.shape[0] < 1 or scale.shape[1] < 1:
        raise ValueError(f"scale must have shape (out_features, in_features) with both >= 1, got {tuple(scale.shape)}")
    for name, t in named[2:]:
        if t.shape != scale.shape:
            raise ValueError(f"{name} must have the shape of scale {tuple(scale.shape)}, got {tuple(t.shape)}")
    if x.dim() < 1 or x.shape[-1] != scale.shape[1]:
        raise ValueError(f"x must have shape (..., in_features={scale.shape[1]}), got {tuple(x.shape)}")


# --- the op, once per backend ------------------------------------------------------------


def check_fast_math(fast_math) -> bool:
    """``fast_math`` itself, after checking that it is a bool."""
    if not isinstance(fast_math, bool):
        raise TypeError(f"fast_math must be a bool, got {type(fast_math).__name__}")
    return fast_math


def uses_fast_math(fast_math: bool, backend: str, x: Tensor, wavelet: str) -> bool:
    """Whether ``fast_math`` takes the packed-half forward for this call (see the module docstring)."""
    if not (fast_math and backend == "triton" and x.dtype in _HALF_DTYPES and wavelet in FAST_MATH_WAVELETS
            and x.shape[0] >= FAST_MATH_MIN_ROWS):  # fmt: skip
        return False
    return not x.is_cuda or _has_packed_half(x.device.index if x.device.index is not None else torch.cuda.current_device())


def _forward_impl(x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet: str, backend: str,
                  fast_math: bool = False):  # fmt: skip
    if uses_fast_math(fast_math, backend, x, wavelet):
        from .kernels import wavkan_fwd_half

        return wavkan_fwd_half(x, scale, translation, weights, get_wavelet(wavelet))
    if backend == "triton":
        from .kernels import wavkan_fwd

        return wavkan_fwd(x, scale, translation, weights, get_wavelet(wavelet))
    if backend == "compiled":  # wavkan.cpu
        from .cpu import compiled_forward

        return compiled_forward(x, scale, translation, weights, wavelet)
    return reference.reference_forward(x, scale, translation, weights, wavelet)


def _backward_impl(grad, x, scale, translation, weights, wavelet: str, backend: str, need_x: bool, need_params: bool):
    """(grad_x, grad_scale, grad_translation, grad_weights), None where not needed: grad_x and
    the parameter gradients are separate passes, each skipped when nothing asks for it."""
    if backend == "triton":
        from .kernels import wavkan_bwd

        return wavkan_bwd(grad, x, scale, translation, weights, get_wavelet(wavelet), need_x, need_params)
    if backend == "compiled":  # wavkan.cpu
        from .cpu import compiled_backward

        return compiled_backward(grad, x, scale, translation, weights, wavelet, need_x=need_x, need_params=need_params)
    return reference.reference_backward(grad, x, scale, translation, weights, wavelet,
                                        need_x=need_x, need_params=need_params)  # fmt: skip


def _needs(ctx) -> tuple:
    """(need_x, need_params) from autograd's needs_input_grad (x, scale, translation, weights,
    ...): which inputs required grad at the forward, not which ones this backward will reach
    (``torch.autograd.grad(y, x)`` still gets the parameter gradients computed)."""
    needs = ctx.needs_input_grad
    return bool(needs[0]), any(needs[1:4])


def _keep_needed(ctx, grads) -> tuple:
    """The four gradients with None where autograd asked for none (the parameter pass computes
    all three parameter gradients together)."""
    return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[:4]))


# --- for torch.compile: custom ops with fake implementations --------------------------------


@torch.library.custom_op("wavkan::linear", mutates_args=())
def _linear(
    x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet: str, backend: str, fast_math: bool
) -> Tensor:
    return _forward_impl(x, scale, translation, weights, wavelet, backend, fast_math)


@_linear.register_fake
def _(x, scale, translation, weights, wavelet, backend, fast_math):
    return x.new_empty((x.shape[0], scale.shape[0]))


# A custom op returns tensors, never None: a gradient not asked for comes back as an empty
# (0,) tensor, which ``_backward`` turns into None.
@torch.library.custom_op("wavkan::linear_backward", mutates_args=())
def _linear_backward(
    grad: Tensor, x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet: str, backend: str,
    need_x: bool, need_params: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    grads = _backward_impl(grad, x, scale, translation, weights, wavelet, backend, need_x, need_params)
    return tuple(g if g is not None else like.new_empty(0) for g, like in zip(grads, (x, scale, translation, weights)))


@_linear_backward.register_fake
def _(grad, x, scale, translation, weights, wavelet, backend, need_x, need_params):
    return (
        x.new_empty(x.shape if need_x else 0),
        *(p.new_empty(p.shape if need_params else 0) for p in (scale, translation, weights)),
    )


def _setup_context(ctx, inputs, output):
    x, scale, translation, weights, wavelet, backend, _fast_math = inputs
    ctx.save_for_backward(x, scale, translation, weights)
    ctx.wavelet, ctx.backend = wavelet, backend


def _backward(ctx, grad):
    x, scale, translation, weights = ctx.saved_tensors
    grads = torch.ops.wavkan.linear_backward(grad, x, scale, translation, weights, ctx.wavelet, ctx.backend, *_needs(ctx))
    return (*_keep_needed(ctx, grads), None, None, None)


_linear.register_autograd(_backward, setup_context=_setup_context)


# --- for eager calls: the same implementations without the custom-op layer -----------------


class _EagerLinear(torch.autograd.Function):
    """Eager calls skip the custom-op dispatcher's per-call Python work (its wrapper was the
    largest single host cost in benchmarks/host_profile.py on the H200); torch.compile traces
    the custom op instead. Both run ``_forward_impl`` and ``_backward_impl``."""

    @staticmethod
    def forward(ctx, x, scale, translation, weights, wavelet, backend, fast_math):
        ctx.save_for_backward(x, scale, translation, weights)
        ctx.wavelet, ctx.backend = wavelet, backend
        return _forward_impl(x, scale, translation, weights, wavelet, backend, fast_math)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, scale, translation, weights = ctx.saved_tensors
        grads = _backward_impl(grad, x, scale, translation, weights, ctx.wavelet, ctx.backend, *_needs(ctx))
        return (*_keep_needed(ctx, grads), None, None, None)


# --- the functional -------------------------------------------------------------------------


def wavkan_linear(
    x: Tensor,
    scale: Tensor,
    translation: Tensor,
    wavelet_weights: Tensor,
    wavelet: str = "mexican_hat",
    backend: str = "auto",
    fast_math: bool = False,
) -> Tensor:
    """Wav-KAN layer before BatchNorm: ``y[..., o] = sum_i w[o,i] H[i] psi((x[..., i] - t[o,i]) / s[o,i])``.

    x: (..., in_features), any strides; scale, translation, wavelet_weights: (out_features,
    in_features). Returns (..., out_features) in the dtype of x. H is the wavelet's input
    window (shannon's Hamming window; 1 for the others). ``backend``: "auto", "reference",
    "triton" or "compiled"; ``fast_math``: allow the packed-half forward for float16/bfloat16 x (both: see
    the module docstring).
    """
    wav = get_wavelet(wavelet)
    _check_inputs(x, scale, translation, wavelet_weights)
    chosen = resolve_backend(backend, x, x.numel() * scale.shape[0])
    if chosen == "triton":
        _check_triton_shape(scale)
    out_features, in_features = scale.shape
    if wav.window is not None:
        wavelet_weights = wavelet_weights * wav.window(in_features, wavelet_weights.dtype, wavelet_weights.device)
    lead = x.shape[:-1]
    op = torch.ops.wavkan.linear if torch.compiler.is_compiling() else _EagerLinear.apply
    y = op(x.reshape(-1, in_features), scale, translation, wavelet_weights, wav.name, chosen,
           check_fast_math(fast_math))  # fmt: skip
    return y.reshape(*lead, out_features)
