"""The convolutional Wav-KAN op: argument checks, backend choice, ``torch.library`` registration.

``wavkan_conv1d``/``wavkan_conv2d`` are the public functionals (``wavkan_conv`` takes either).
They check and normalise the ``nn.Conv*d`` arguments, fold a wavelet's input window into the
weights (shannon's Hamming window over the input channels of a group, ``in / groups`` long, as
torch-conv-kan's wavelet convolution applies it to its per-group wavelet tensor), view a 1-D
input as a 2-D one of height 1, and run the op. Under ``torch.compile`` that is the custom op
``wavkan::conv2d`` with its backward ``wavkan::conv2d_backward``, both with fake
implementations (no graph break); eager calls take an ``autograd.Function`` over the same
implementations. Backends as for ``wavkan_linear``: "reference" (``wavkan.reference_conv``, any
device and float dtype), "triton" (``wavkan.kernels.conv_forward``/``conv_backward``, fp32
arithmetic; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``; float64 stays on the
reference), "auto" (triton for fp32/bf16/fp16 CUDA tensors when Triton is installed, else the
reference). "compiled" (``wavkan.cpu``) fuses the linear op only: conv calls under it run the
reference, so a whole model may be asked for it.

Inputs may be channels-last or any strided view; the output is contiguous in x's dtype, and
each gradient comes back in the dtype of the tensor it differentiates. Under autocast the op
takes its inputs as they come (the parameters stay fp32) and computes in fp32.
"""

from __future__ import annotations

import operator

from typing import Sequence, Union

import torch
from torch import Tensor

from . import reference_conv
from .ops import BACKENDS, check_tensor_args, resolve_backend
from .wavelets import get_wavelet

__all__ = ["wavkan_conv", "wavkan_conv1d", "wavkan_conv2d", "conv_arguments", "ConvArguments", "int_tuple"]

PADDING_MODES = ("same", "valid")


def _as_int(value):
    """``value`` as a Python int if it is an integer (numpy's included, as nn.Conv2d takes
    them; never a bool), else None."""
    # A plain int or a tuple (what torch.compile traces here on every call) is told apart
    # without an exception: Dynamo (torch 2.11) fails on the TypeError operator.index raises.
    if type(value) is int:
        return value
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        return None
    try:  # numpy and torch integers; arrays and non-integer tensors refuse
        return operator.index(value)
    except TypeError:
        return None


def int_tuple(name: str, value, ndim: int, minimum: int) -> tuple:
    one = _as_int(value)
    values = (one,) * ndim if one is not None else tuple(_as_int(v) for v in value) \
        if isinstance(value, (tuple, list)) else None  # fmt: skip
    if values is None or len(values) != ndim or any(v is None or v < minimum for v in values):
        raise ValueError(f"{name} must be an int >= {minimum} or a tuple of {ndim} such ints, got {value!r}")
    return values


class ConvArguments(tuple):
    """(stride, padding, dilation) normalised to 2-D: stride (sh, sw), padding (top, bottom,
    left, right), dilation (dh, dw); a 1-D convolution is the row of height 1."""

    @property
    def stride(self):
        return self[0]

    @property
    def padding(self):
        return self[1]

    @property
    def dilation(self):
        return self[2]


def conv_arguments(kernel_size: Sequence[int], stride, padding, dilation) -> ConvArguments:
    """Checks ``nn.Conv*d``-style stride/padding/dilation for a kernel of ``kernel_size`` (1 or 2
    dims) and returns them as ``ConvArguments`` (2-D). ``padding="same"`` pads
    ``dilation * (kernel - 1)`` in total per dim, the odd one at the end, as PyTorch does (and,
    like PyTorch, needs stride 1); ``"valid"`` is no padding."""
    ndim = len(kernel_size)
    stride_t = int_tuple("stride", stride, ndim, 1)
    dilation_t = int_tuple("dilation", dilation, ndim, 1)
    if isinstance(padding, str):
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be an int, a tuple of {ndim} ints, 'same' or 'valid', got {padding!r}")
        if padding == "valid":
            pads = ((0, 0),) * ndim
        else:
            if any(s != 1 for s in stride_t):
                raise ValueError(f"padding='same' needs stride 1 (as in torch.nn.Conv{ndim}d), got stride {stride!r}")
            total = [d * (k - 1) for d, k in zip(dilation_t, kernel_size)]
            pads = tuple((t // 2, t - t // 2) for t in total)
    else:
        pads = tuple((p, p) for p in int_tuple("padding", padding, ndim, 0))
    if ndim == 1:
        return ConvArguments(((1, stride_t[0]), (0, 0, *pads[0]), (1, dilation_t[0])))
    return ConvArguments((stride_t, (*pads[0], *pads[1]), dilation_t))


def _check_inputs(x, scale, translation, weights, groups: int, ndim: int) -> None:
    named = (("x", x), ("scale", scale), ("translation", translation), ("wavelet_weights", weights))
    check_tensor_args(named)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups!r}")
    if scale.dim() != 2 or scale.shape[0] < 1 or scale.shape[1] < 1:
        raise ValueError(f"scale must have shape (out_channels, in_channels / groups), both >= 1, got {tuple(scale.shape)}")
    if translation.shape != scale.shape:
        raise ValueError(f"translation must have the shape of scale {tuple(scale.shape)}, got {tuple(translation.shape)}")
    out_c, in_g = scale.shape
    if weights.dim() != ndim + 2 or tuple(weights.shape[:2]) != (out_c, in_g) or min(weights.shape[2:]) < 1:
        raise ValueError(
            f"wavelet_weights must have shape (out_channels={out_c}, in_channels / groups={in_g}, "
            f"{', '.join(['kernel'] * ndim)}) with kernel sizes >= 1, got {tuple(weights.shape)}"
        )
    if out_c % groups:
        raise ValueError(f"out_channels ({out_c}) must be divisible by groups ({groups})")
    spatial = "L" if ndim == 1 else "H, W"
    if x.dim() != ndim + 2 or x.shape[1] != in_g * groups:
        raise ValueError(
            f"x must have shape (B, in_channels={in_g * groups}, {spatial}) "
            f"(in_channels = groups x scale.shape[1]), got {tuple(x.shape)}"
        )


def _check_output_size(x: Tensor, kernel: Sequence[int], args: ConvArguments) -> tuple:
    sizes = x.shape[2:] if x.dim() == 4 else (1, x.shape[2])
    kh, kw = (1, kernel[0]) if len(kernel) == 1 else kernel
    out = tuple(
        reference_conv.conv_output_size(n, k, s, d, lo, hi)
        for n, k, s, d, lo, hi in zip(sizes, (kh, kw), args.stride, args.dilation, args.padding[0::2], args.padding[1::2])
    )
    if min(out) < 1 or min(sizes) < 1:
        raise ValueError(
            f"input spatial size {tuple(x.shape[2:])} is too small for kernel {tuple(kernel)} with "
            f"dilation and padding as given: the output would be empty"
        )
    return out


# --- the op, once per backend ------------------------------------------------------------


def _forward_impl(x, scale, translation, weights, stride, padding, dilation, groups, wavelet, backend):
    if backend == "triton":
        from .kernels.conv_forward import wavkan_conv_fwd

        return wavkan_conv_fwd(x, scale, translation, weights, get_wavelet(wavelet), stride, padding, dilation, groups)
    return reference_conv.conv_reference_forward(x, scale, translation, weights, wavelet, stride, padding, dilation,
                                                 groups)  # fmt: skip


def _backward_impl(grad, x, scale, translation, weights, stride, padding, dilation, groups, wavelet, backend,
                   need_x, need_params):  # fmt: skip
    if backend == "triton":
        from .kernels.conv_backward import wavkan_conv_bwd

        return wavkan_conv_bwd(grad, x, scale, translation, weights, get_wavelet(wavelet), stride, padding, dilation,
                               groups, need_x, need_params)  # fmt: skip
    return reference_conv.conv_reference_backward(grad, x, scale, translation, weights, wavelet, stride, padding,
                                                  dilation, groups, need_x=need_x, need_params=need_params)  # fmt: skip


def _needs(ctx) -> tuple:
    needs = ctx.needs_input_grad
    return bool(needs[0]), any(needs[1:4])


def _keep_needed(ctx, grads) -> tuple:
    return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[:4]))


@torch.library.custom_op("wavkan::conv2d", mutates_args=())
def _conv2d(x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, stride: list[int], padding: list[int],
            dilation: list[int], groups: int, wavelet: str, backend: str) -> Tensor:  # fmt: skip
    return _forward_impl(x, scale, translation, weights, stride, padding, dilation, groups, wavelet, backend)


@_conv2d.register_fake
def _(x, scale, translation, weights, stride, padding, dilation, groups, wavelet, backend):
    B, _, H, W = x.shape
    kh, kw = weights.shape[2:]
    ho = (H + padding[0] + padding[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (W + padding[2] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return x.new_empty((B, scale.shape[0], ho, wo))


@torch.library.custom_op("wavkan::conv2d_backward", mutates_args=())
def _conv2d_backward(grad: Tensor, x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, stride: list[int],
                     padding: list[int], dilation: list[int], groups: int, wavelet: str, backend: str, need_x: bool,
                     need_params: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    grads = _backward_impl(grad, x, scale, translation, weights, stride, padding, dilation, groups, wavelet, backend,
                           need_x, need_params)  # fmt: skip
    # A custom op returns tensors, never None: a gradient not asked for is an empty (0,) tensor.
    return tuple(g if g is not None else like.new_empty(0) for g, like in zip(grads, (x, scale, translation, weights)))


@_conv2d_backward.register_fake
def _(grad, x, scale, translation, weights, stride, padding, dilation, groups, wavelet, backend, need_x, need_params):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else x.new_empty(0),
        *(p.new_empty(p.shape if need_params else 0) for p in (scale, translation, weights)),
    )


def _setup_context(ctx, inputs, output):
    x, scale, translation, weights, stride, padding, dilation, groups, wavelet, backend = inputs
    ctx.save_for_backward(x, scale, translation, weights)
    ctx.conv = (stride, padding, dilation, groups, wavelet, backend)


def _backward(ctx, grad):
    x, scale, translation, weights = ctx.saved_tensors
    grads = torch.ops.wavkan.conv2d_backward(grad, x, scale, translation, weights, *ctx.conv, *_needs(ctx))
    return (*_keep_needed(ctx, grads), None, None, None, None, None, None)


_conv2d.register_autograd(_backward, setup_context=_setup_context)


class _EagerConv2d(torch.autograd.Function):
    """Eager calls skip the custom-op dispatcher's per-call Python work; both paths run
    ``_forward_impl`` and ``_backward_impl``."""

    @staticmethod
    def forward(ctx, x, scale, translation, weights, stride, padding, dilation, groups, wavelet, backend):
        ctx.save_for_backward(x, scale, translation, weights)
        ctx.conv = (stride, padding, dilation, groups, wavelet, backend)
        return _forward_impl(x, scale, translation, weights, stride, padding, dilation, groups, wavelet, backend)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, scale, translation, weights = ctx.saved_tensors
        grads = _backward_impl(grad, x, scale, translation, weights, *ctx.conv, *_needs(ctx))
        return (*_keep_needed(ctx, grads), None, None, None, None, None, None)


# --- the functionals ------------------------------------------------------------------------


def wavkan_conv(
    x: Tensor,
    scale: Tensor,
    translation: Tensor,
    wavelet_weights: Tensor,
    stride: Union[int, Sequence[int]] = 1,
    padding: Union[int, Sequence[int], str] = 0,
    dilation: Union[int, Sequence[int]] = 1,
    groups: int = 1,
    wavelet: str = "mexican_hat",
    backend: str = "auto",
) -> Tensor:
    """Convolutional Wav-KAN layer before BatchNorm, 1-D or 2-D by the weights' rank:
    ``y[b,o,p] = sum_{i, k} w[o,i,k] H[i] psi((x[b, g(o) IG + i, p*stride + k*dilation - pad] - t[o,i]) / s[o,i])``,
    taps outside the input adding nothing (see ``wavkan.reference_conv``).

    x: (B, C_in, L) or (B, C_in, H, W), any strides (channels-last included); scale,
    translation: (C_out, C_in / groups); wavelet_weights: (C_out, C_in / groups, *kernel_size).
    stride, dilation: int or tuple; padding: int, tuple, "same" or "valid". Returns (B, C_out,
    *out_size) in x's dtype. H is the wavelet's input window over the ``C_in / groups`` input
    channels of a group (shannon's Hamming window; 1 for the others).
    """
    wav = get_wavelet(wavelet)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    ndim = wavelet_weights.dim() - 2 if isinstance(wavelet_weights, Tensor) else 0
    if ndim not in (1, 2):
        shape = tuple(wavelet_weights.shape) if isinstance(wavelet_weights, Tensor) else type(wavelet_weights).__name__
        raise ValueError(f"wavelet_weights must have shape (out, in / groups, *kernel_size) with 1 or 2 kernel dims, "
                         f"got {shape}")  # fmt: skip
    _check_inputs(x, scale, translation, wavelet_weights, groups, ndim)
    kernel = tuple(wavelet_weights.shape[2:])
    args = conv_arguments(kernel, stride, padding, dilation)
    _check_output_size(x, kernel, args)
    chosen = resolve_backend(backend, x)
    if chosen == "compiled":  # the compiled CPU backend (wavkan.cpu) fuses the linear op only
        chosen = "reference"
    if chosen == "triton":
        from .kernels.conv_forward import kernel_fits

        if not kernel_fits(kernel if ndim == 2 else (1, kernel[0]), args.dilation,
                           tuple(x.shape[2:]) if ndim == 2 else (1, x.shape[2])):
            if backend == "triton":
                raise ValueError(
                    f"the triton backend takes kernels whose dilated extent fits one program's input tile; kernel "
                    f"{kernel} with dilation {dilation!r} does not: use backend='reference'"
                )
            chosen = "reference"  # "auto": the reference computes the same
    in_g = scale.shape[1]
    if wav.window is not None:
        window = wav.window(in_g, wavelet_weights.dtype, wavelet_weights.device)
        wavelet_weights = wavelet_weights * window.reshape(1, in_g, *([1] * ndim))
    if ndim == 1:
        x = x.unsqueeze(2)
        wavelet_weights = wavelet_weights.unsqueeze(2)
    op = torch.ops.wavkan.conv2d if torch.compiler.is_compiling() else _EagerConv2d.apply
    y = op(x, scale, translation, wavelet_weights, list(args.stride), list(args.padding), list(args.dilation), groups,
           wav.name, chosen)  # fmt: skip
    return y.squeeze(2) if ndim == 1 else y


def wavkan_conv1d(x: Tensor, scale: Tensor, translation: Tensor, wavelet_weights: Tensor, stride=1, padding=0,
                  dilation=1, groups: int = 1, wavelet: str = "mexican_hat", backend: str = "auto") -> Tensor:  # fmt: skip
    """``wavkan_conv`` for x: (B, C_in, L), wavelet_weights: (C_out, C_in / groups, K)."""
    if isinstance(wavelet_weights, Tensor) and wavelet_weights.dim() != 3:
        raise ValueError(f"wavkan_conv1d needs wavelet_weights of shape (out, in / groups, kernel), got "
                         f"{tuple(wavelet_weights.shape)}")  # fmt: skip
    return wavkan_conv(x, scale, translation, wavelet_weights, stride, padding, dilation, groups, wavelet, backend)


def wavkan_conv2d(x: Tensor, scale: Tensor, translation: Tensor, wavelet_weights: Tensor, stride=1, padding=0,
                  dilation=1, groups: int = 1, wavelet: str = "mexican_hat", backend: str = "auto") -> Tensor:  # fmt: skip
    """``wavkan_conv`` for x: (B, C_in, H, W), wavelet_weights: (C_out, C_in / groups, KH, KW)."""
    if isinstance(wavelet_weights, Tensor) and wavelet_weights.dim() != 4:
        raise ValueError(f"wavkan_conv2d needs wavelet_weights of shape (out, in / groups, kernel_h, kernel_w), got "
                         f"{tuple(wavelet_weights.shape)}")  # fmt: skip
    return wavkan_conv(x, scale, translation, wavelet_weights, stride, padding, dilation, groups, wavelet, backend)
