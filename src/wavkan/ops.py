"""The Wav-KAN op: input checks, backend choice, and its ``torch.library`` registration.

``wavkan_linear`` is the public functional. It flattens leading dims and runs the op; a
wavelet's input window (shannon's) is folded into the weights, by the eager
``autograd.Function`` itself (which multiplies ``grad_weights`` by it), or before the op under
torch.compile (autograd carries the window's factor to ``grad_weights``). Three registrations
share the same passes (``_forward_impl`` / ``_backward_impl``, or the kernels' launchers they
call):

- eager calls: an ``autograd.Function`` (``_EagerLinear``). Calling a ``torch.library`` op
  eagerly goes through the dispatcher's Python layers, which on the H200's host doubled an
  eager layer's host time per call (benchmarks/STATUS.md);
- ``torch.compile`` of a call on the triton backend with CUDA tensors: the ``triton_op``
  ``wavkan::linear_cuda`` and its backward. torch.compile traces into it and Inductor launches
  the kernels from its own code. The opaque custom op below measured slower than eager there
  (5 layers of 1024, batch 256, H200: forward 1.78 ms against eager 0.98, backward 3.16
  against 2.50; as a triton op 0.94 and 2.10: benchmarks/results/h200-2026-11-30d/compile_ab.log),
  since every call went through the dispatcher's Python layers and packed the edge constants
  again;
- ``torch.compile`` of any other call (the reference and the compiled CPU backend, CUDA
  float64 included; the kernels on CPU tensors under Triton's interpreter, which Inductor's
  CPU code cannot launch): the opaque custom op ``wavkan::linear``, whose backward is the
  custom op ``wavkan::linear_backward``.

All have fake implementations, so the compiler traces them without a graph break;
tests/test_eager_path.py and tests/test_compiled_cuda.py check that they agree on every output
and gradient. Each dispatches to a backend:

- ``"reference"``: pure PyTorch (``wavkan.reference``), any device, any float dtype;
- ``"triton"``: the fused kernels (``wavkan.kernels``) on CUDA tensors, or on CPU tensors
  under ``TRITON_INTERPRET=1``. They compute in fp32, so float64 inputs stay on the
  reference, which keeps float64 exact;
- ``"compiled"``: the reference's formulas fused by ``torch.compile`` (``wavkan.cpu``), on CPU
  tensors, float32 or float64; it needs a C++ compiler, and its first call of a pass compiles;
- ``"auto"``: triton for fp32/bf16/fp16 CUDA tensors when Triton is installed; compiled for
  fp32/bf16/fp16 CPU tensors when a C++ compiler is found and the call has at least
  ``COMPILED_MIN_EDGES`` rows x out x in edges; else reference. A compiler found on PATH that
  cannot build Inductor's code shows only when a pass builds: that eager call runs on the
  reference with a warning, and the process's later "auto" calls resolve to the reference
  (``_compiled_or_reference``). A backward whose build fails after its forward built, and a
  build under torch.compile of a whole model, raise the build error.

Dtypes: x and the parameters may mix fp32, bf16 and fp16 (autocast gives bf16 x with fp32
parameters); that computes in fp32 and returns y in x's dtype and each gradient in its
tensor's dtype. float64 computes in float64, so it does not mix: float64 x with other
parameters, or float64 parameters with another x, is refused (rounding float64 parameters to
fp32 while their gradients come back float64 would hide a precision loss).

Double backward: with ``create_graph=True`` (a gradient penalty) the gradients carry a graph on
both backends. The first-order gradients come from the backend's passes as usual; their own
backward (the layer's second derivatives) is ``reference.reference_double_backward``, a
chunked autograd computation of bounded memory, on either backend (``_DifferentiableBackward``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
import threading
import warnings
from typing import Optional

import torch
from torch import Tensor

from . import reference
from .wavelets import get_wavelet

__all__ = ["BACKENDS", "wavkan_linear", "resolve_backend", "clear_caches"]

BACKENDS = ("auto", "reference", "triton", "compiled")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_F64 = torch.float64


# Triton's own reading of a boolean environment variable (triton.knobs: getenv_bool).
_TRUE_WORDS = ("1", "true", "on", "yes", "y")


def _interpreting() -> bool:
    """Whether Triton runs kernels through its interpreter: TRITON_INTERPRET read as Triton
    reads it (1, true, on, yes, y in any case are on; 0, false, off, 2, ... are off)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE_WORDS


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
        from .cpu import build_failure

        why = build_failure()
        if why:
            raise RuntimeError(f"backend='compiled' could not build here ({why}); use backend='reference'")
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
    # The common case in one expression (an eager call pays for every check it makes);
    # anything off goes to _explain_inputs, which names what was expected.
    if (isinstance(x, Tensor) and isinstance(scale, Tensor) and isinstance(translation, Tensor)
            and isinstance(weights, Tensor) and x.dtype in _FLOAT_DTYPES and scale.dtype in _FLOAT_DTYPES
            and translation.dtype in _FLOAT_DTYPES and weights.dtype in _FLOAT_DTYPES and scale.dim() == 2
            and translation.shape == scale.shape and weights.shape == scale.shape and scale.numel() > 0
            and x.dim() >= 1 and x.shape[-1] == scale.shape[1]
            and x.device == scale.device == translation.device == weights.device
            and (x.dtype == _F64) == (scale.dtype == _F64) == (translation.dtype == _F64) == (weights.dtype == _F64)):  # fmt: skip
        return
    _explain_inputs(x, scale, translation, weights)


def check_tensor_args(named) -> None:
    """``named``: ((name, value), ...), x first. Each must be a float tensor on x's device;
    a TypeError / ValueError naming the argument otherwise (the conv op shares this)."""
    x = named[0][1]
    for name, t in named:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"all tensors must be on one device: x is on {x.device}, {name} on {t.device}")


def _explain_inputs(x, scale, translation, weights) -> None:
    named = (("x", x), ("scale", scale), ("translation", translation), ("wavelet_weights", weights))
    check_tensor_args(named)
    if scale.dim() != 2 or scale.shape[0] < 1 or scale.shape[1] < 1:
        raise ValueError(f"scale must have shape (out_features, in_features) with both >= 1, got {tuple(scale.shape)}")
    for name, t in named[2:]:
        if t.shape != scale.shape:
            raise ValueError(f"{name} must have the shape of scale {tuple(scale.shape)}, got {tuple(t.shape)}")
    if x.dim() < 1 or x.shape[-1] != scale.shape[1]:
        raise ValueError(f"x must have shape (..., in_features={scale.shape[1]}), got {tuple(x.shape)}")
    # float64 computes in float64 and does not mix (module docstring).
    mixed = [name for name, t in named[1:] if (t.dtype == torch.float64) != (x.dtype == torch.float64)]
    if mixed:
        if x.dtype == torch.float64:
            raise TypeError(f"x is float64, so {', '.join(mixed)} must be float64 too (a float64 layer computes in float64), got "
                            + ", ".join(f"{name} {t.dtype}" for name, t in named[1:] if name in mixed)
                            + "; convert the model with .double() or x with .float()")  # fmt: skip
        raise TypeError(f"{', '.join(mixed)} float64 needs float64 x (got x {x.dtype}): float64 parameters compute in "
                        "float64; convert x with .double() or the model with .float()")  # fmt: skip
    raise AssertionError("_check_inputs refused inputs that _explain_inputs accepts")  # the two disagree: a bug


def clear_caches() -> None:
    """Forget what the triton backend keeps between eager calls: the packed edge constants,
    shannon's window folded into the weights, and the split reductions' scratch (all rebuilt
    on demand). Call it after writing parameters in a way their version counters miss (through
    ``p.data``, or by replaying a captured optimizer step), before the next eager call; or to
    free that memory. Nothing to do when no kernel has run in this process."""
    kernels = sys.modules.get(__package__ + ".kernels")
    if kernels is not None:
        kernels.staging.clear_pack_cache()
        kernels.launch.release_split_scratch()


# --- the op, once per backend ------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _kernels():
    """``wavkan.kernels``, imported on the first Triton call (it imports Triton)."""
    from . import kernels

    return kernels


def _forward_impl(x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet: str, backend: str):
    if backend == "triton":
        return _kernels().wavkan_fwd(x, scale, translation, weights, get_wavelet(wavelet))
    if backend == "compiled":  # wavkan.cpu
        from .cpu import compiled_forward

        return compiled_forward(x, scale, translation, weights, wavelet)
    return reference.reference_forward(x, scale, translation, weights, wavelet)


def _backward_impl(grad, x, scale, translation, weights, wavelet: str, backend: str, need_x: bool, need_params: bool):
    """(grad_x, grad_scale, grad_translation, grad_weights), None where not needed: grad_x and
    the parameter gradients are separate passes, each skipped when nothing asks for it."""
    if backend == "triton":
        return _kernels().wavkan_bwd(grad, x, scale, translation, weights, get_wavelet(wavelet), need_x, need_params)
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


def _fresh_buffers(backend: str):
    """The custom ops run their kernels keeping nothing between calls: under
    ``mode="reduce-overhead"`` their allocations come from torch.compile's CUDA-graph pool,
    which refuses tensors that outlive a run (``kernels.launch.fresh_buffers``)."""
    return _kernels().launch.fresh_buffers() if backend == "triton" else contextlib.nullcontext()


@torch.library.custom_op("wavkan::linear", mutates_args=())
def _linear(x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet: str, backend: str) -> Tensor:
    with _fresh_buffers(backend):
        return _forward_impl(x, scale, translation, weights, wavelet, backend)


@_linear.register_fake
def _(x, scale, translation, weights, wavelet, backend):
    return x.new_empty((x.shape[0], scale.shape[0]))


# A custom op returns tensors, never None: a gradient not asked for comes back as an empty
# (0,) tensor, which ``_backward`` turns into None.
@torch.library.custom_op("wavkan::linear_backward", mutates_args=())
def _linear_backward(
    grad: Tensor, x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet: str, backend: str,
    need_x: bool, need_params: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    with _fresh_buffers(backend):
        grads = _backward_impl(grad, x, scale, translation, weights, wavelet, backend, need_x, need_params)
    return tuple(g if g is not None else like.new_empty(0) for g, like in zip(grads, (x, scale, translation, weights)))


@_linear_backward.register_fake
def _(grad, x, scale, translation, weights, wavelet, backend, need_x, need_params):
    return (
        x.new_empty(x.shape if need_x else 0),
        *(p.new_empty(p.shape if need_params else 0) for p in (scale, translation, weights)),
    )


def _setup_backward_context(ctx, inputs, output):
    grad, x, scale, translation, weights, wavelet = inputs[:6]
    ctx.save_for_backward(grad, x, scale, translation, weights)
    ctx.wavelet = wavelet


def _backward_backward(ctx, gg_x, gg_s, gg_t, gg_w):
    grads = reference.reference_double_backward(
        *ctx.saved_tensors, ctx.wavelet, tuple(_none_if_empty(g) for g in (gg_x, gg_s, gg_t, gg_w)),
        ctx.needs_input_grad[:5], create_graph=torch.is_grad_enabled())
    return (*grads, *(None,) * (len(ctx.needs_input_grad) - 5))


def _none_if_empty(g):
    # The custom op's stand-in for a gradient not computed is an empty (0,) tensor.
    return None if g is None or g.numel() == 0 and g.dim() == 1 else g


_linear_backward.register_autograd(_backward_backward, setup_context=_setup_backward_context)


def _setup_context(ctx, inputs, output):
    x, scale, translation, weights, wavelet = inputs[:5]
    ctx.save_for_backward(x, scale, translation, weights)
    ctx.wavelet = wavelet
    ctx.cuda_op = len(inputs) == 5  # wavkan::linear_cuda, whose backend is always triton
    ctx.backend = "triton" if ctx.cuda_op else inputs[5]


def _backward(ctx, grad):
    x, scale, translation, weights = ctx.saved_tensors
    if ctx.cuda_op:
        grads = torch.ops.wavkan.linear_cuda_backward(grad, x, scale, translation, weights, ctx.wavelet, *_needs(ctx))
    else:
        grads = torch.ops.wavkan.linear_backward(grad, x, scale, translation, weights, ctx.wavelet, ctx.backend,
                                                 *_needs(ctx))  # fmt: skip
    return (*_keep_needed(ctx, grads), *(None,) * (len(ctx.needs_input_grad) - 4))


_linear.register_autograd(_backward, setup_context=_setup_context)


# --- for torch.compile on CUDA: the same passes as triton ops (see the module docstring) ---
# Their bodies launch every kernel through ``torch.library.wrap_triton`` and keep no buffers
# (``launch.traced_launches``): Inductor owns the allocations, the edge-constant pack included.
# Defined on first use, when torch.compile traces a call on CUDA tensors: defining a triton op
# imports Inductor (about 1 s), which ``import wavkan`` must not pay.


def _triton_launches():
    return _kernels().launch.traced_launches()


def _linear_cuda(x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet: str) -> Tensor:
    with _triton_launches():
        return _kernels().wavkan_fwd(x, scale, translation, weights, get_wavelet(wavelet))


def _linear_cuda_backward(
    grad: Tensor, x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet: str,
    need_x: bool, need_params: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    with _triton_launches():
        grads = _kernels().wavkan_bwd(grad, x, scale, translation, weights, get_wavelet(wavelet), need_x, need_params)
    return tuple(g if g is not None else like.new_empty(0) for g, like in zip(grads, (x, scale, translation, weights)))


_CUDA_OPS: list = []
_CUDA_OPS_LOCK = threading.Lock()  # two threads compiling at once define them once


def cuda_ops_defined() -> bool:
    """Defines ``wavkan::linear_cuda`` and ``wavkan::linear_cuda_backward`` once; True. Under
    torch.compile it runs at trace time instead of being traced (Dynamo calls a function
    marked as a constant result and keeps what it returns)."""
    with _CUDA_OPS_LOCK:
        if _CUDA_OPS:
            return True
        backward = torch.library.triton_op("wavkan::linear_cuda_backward", _linear_cuda_backward, mutates_args=())
        backward.register_autograd(_backward_backward, setup_context=_setup_backward_context)
        forward = torch.library.triton_op("wavkan::linear_cuda", _linear_cuda, mutates_args=())
        forward.register_autograd(_backward, setup_context=_setup_context)
        _CUDA_OPS[:] = [forward, backward]
        return True


# ``torch.compiler.assume_constant_result``'s mark, set without the decorator, which imports
# Dynamo (tests/test_ops.py checks that the decorator still sets this attribute).
cuda_ops_defined._dynamo_marked_constant = True


def _compiled_op(chosen: str, x: Tensor):
    """The op torch.compile traces for a call on ``chosen`` (see above)."""
    if chosen == "triton" and x.is_cuda and cuda_ops_defined():
        return lambda x, scale, translation, weights, wavelet, backend: torch.ops.wavkan.linear_cuda(
            x, scale, translation, weights, wavelet)
    return torch.ops.wavkan.linear


# --- for eager calls: the same implementations without the custom-op layer -----------------


class _DifferentiableBackward(torch.autograd.Function):
    """The backward as a differentiable function of (grad, x, scale, translation, weights), for
    ``create_graph=True``: its forward is the backend's backward passes (``_backward_impl``),
    its backward the layer's second derivatives (``reference.reference_double_backward``,
    chunked, on either backend: there is no second-order kernel). Never a silent zero: each
    second derivative flows, or autograd reports the input as unused."""

    @staticmethod
    def forward(ctx, grad, x, scale, translation, weights, wavelet, backend, need_x, need_params):
        ctx.set_materialize_grads(False)  # None for a gradient nothing flows into: skipped below
        ctx.save_for_backward(grad, x, scale, translation, weights)
        ctx.wavelet = wavelet
        return _backward_impl(grad, x, scale, translation, weights, wavelet, backend, need_x, need_params)

    @staticmethod
    def backward(ctx, gg_x, gg_s, gg_t, gg_w):
        grads = reference.reference_double_backward(
            *ctx.saved_tensors, ctx.wavelet, (gg_x, gg_s, gg_t, gg_w), ctx.needs_input_grad[:5],
            create_graph=torch.is_grad_enabled())
        return (*grads, None, None, None, None)


def differentiable_backward(ctx, grad, x, scale, translation, weights) -> tuple:
    """The four gradients of a layer call, carrying a graph when autograd records (grad mode is
    on inside a backward only under ``create_graph=True``): then through
    ``_DifferentiableBackward``, else straight from the backend's passes."""
    if torch.is_grad_enabled():
        return _DifferentiableBackward.apply(grad, x, scale, translation, weights, ctx.wavelet, ctx.backend, *_needs(ctx))
    return _backward_impl(grad, x, scale, translation, weights, ctx.wavelet, ctx.backend, *_needs(ctx))


def _fold_window(weights: Tensor, wav, backend: str) -> tuple:
    """(w H detached, H) for a wavelet with an input window. The triton backend keeps it with
    its edge-constant packs until the weights change (``kernels.staging.windowed_weights``:
    folding per call made new weights every call, so the packs were never reused: 0.41 ms of
    host time a call at 64 rows on the H200, where the other wavelets take 0.09-0.17). The
    other backends fold on every call: the reference is the oracle, and sees an edit through
    ``.data``, which PyTorch gives its own version counter."""
    if backend == "triton":
        return _kernels().staging.windowed_weights(weights, wav)
    return wav.fold_window(weights.detach())


class _EagerLinear(torch.autograd.Function):
    """Eager calls skip the custom-op dispatcher's per-call Python work (its wrapper was the
    largest single host cost in a profile of one layer call: benchmarks/HISTORY.md);
    torch.compile traces the custom op or the CUDA triton op instead (see the module
    docstring). All run the same passes; under ``create_graph=True`` the backward goes
    through ``differentiable_backward``. ``weights`` come without the wavelet's window: it is
    folded here (``_fold_window``), and the gradient of w H times H is w's."""

    @staticmethod
    def forward(ctx, x, scale, translation, weights, wavelet, backend):
        ctx.save_for_backward(x, scale, translation, weights)
        ctx.wavelet, ctx.backend = wavelet, backend
        wav = get_wavelet(wavelet)
        if wav.window is not None:
            weights = _fold_window(weights, wav, backend)[0]
        return _forward_impl(x, scale, translation, weights, wavelet, backend)

    @staticmethod
    def backward(ctx, grad):
        x, scale, translation, weights = ctx.saved_tensors
        wav = get_wavelet(ctx.wavelet)
        if wav.window is None:
            grads = differentiable_backward(ctx, grad, x, scale, translation, weights)
            return (*_keep_needed(ctx, grads), None, None)
        if torch.is_grad_enabled():  # create_graph: w H recorded, so second derivatives reach w
            folded, window = wav.fold_window(weights)
        else:
            folded, window = _fold_window(weights, wav, ctx.backend)
        grad_x, grad_s, grad_t, grad_folded = differentiable_backward(ctx, grad, x, scale, translation, folded)
        grad_w = None if grad_folded is None else (grad_folded * window).to(weights.dtype)
        return (*_keep_needed(ctx, (grad_x, grad_s, grad_t, grad_w)), None, None)


# --- the functional -------------------------------------------------------------------------


def wavkan_linear(
    x: Tensor,
    scale: Tensor,
    translation: Tensor,
    wavelet_weights: Tensor,
    wavelet: str = "mexican_hat",
    backend: str = "auto",
) -> Tensor:
    """Wav-KAN layer before BatchNorm: ``y[..., o] = sum_i w[o,i] H[i] psi((x[..., i] - t[o,i]) / s[o,i])``.

    x: (..., in_features), any strides; scale, translation, wavelet_weights: (out_features,
    in_features). Returns (..., out_features) in the dtype of x. H is the wavelet's input
    window (shannon's Hamming window; 1 for the others). ``backend``: "auto", "reference",
    "triton" or "compiled" (see the module docstring).
    """
    wav = get_wavelet(wavelet)
    _check_inputs(x, scale, translation, wavelet_weights)
    chosen = resolve_backend(backend, x, x.numel() * scale.shape[0])
    if chosen == "triton":
        _check_triton_shape(scale)
    out_features, in_features = scale.shape
    if not torch.compiler.is_compiling():
        op = _EagerLinear.apply  # folds the window itself (``_fold_window``)
    else:
        op = _compiled_op(chosen, x)
        if wav.window is not None:  # autograd carries H to grad_weights, cast to the weights' dtype
            wavelet_weights = wav.fold_window(wavelet_weights)[0]
    x2 = x if x.dim() == 2 else x.reshape(-1, in_features)  # no reshape where none is needed: host time
    if chosen == "compiled" and backend == "auto" and not torch.compiler.is_compiling():
        y = _compiled_or_reference(op, x2, scale, translation, wavelet_weights, wav.name)
    else:
        y = op(x2, scale, translation, wavelet_weights, wav.name, chosen)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], out_features)


def _compiled_or_reference(op, x, scale, translation, weights, wavelet: str) -> Tensor:
    """``op`` on the compiled CPU backend, which "auto" chose because a C++ compiler is on PATH;
    where that compiler cannot build Inductor's code (``cpu.CompiledBuildError``: found only by
    building), the reference instead, with one warning: later calls resolve to the reference
    (``cpu.compiler_available``)."""
    from .cpu import CompiledBuildError

    try:
        return op(x, scale, translation, weights, wavelet, "compiled")
    except CompiledBuildError as e:
        if getattr(e, "first", True):  # once per process, whichever thread found it
            warnings.warn(f"wavkan: backend='auto' runs the CPU layers on the reference backend (pure PyTorch): {e}",
                          RuntimeWarning, stacklevel=3)
        return op(x, scale, translation, weights, wavelet, "reference")
