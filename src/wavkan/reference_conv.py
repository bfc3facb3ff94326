"""Pure-PyTorch convolutional Wav-KAN layer: the oracle for the conv kernels, and the backend
that runs anywhere.

Everything here is 2-D; the 1-D layer is the 2-D one with H = 1 (``wavkan.ops_conv`` views its
input so). Shapes: ``x: (B, C_in, H, W)``, ``scale, translation: (C_out, C_in / groups)``,
``weights: (C_out, C_in / groups, KH, KW)`` (already carrying a wavelet's input window),
``padding = (top, bottom, left, right)``, ``stride = (sh, sw)``, ``dilation = (dh, dw)``.
Output channel o reads the input channels of its group, ``g(o) = o // (C_out / groups)``:

    z[b,o,i,q]  = (x[b, g(o) IG + i, q] - translation[o,i]) / scale[o,i]      (IG = C_in / groups)
    y[b,o,p]    = sum_{i < IG} sum_k weights[o,i,k] * psi(z[b,o,i, p*stride + k*dilation - pad])

where a tap whose input position falls outside the image contributes nothing: the wavelet
tensor is zero-padded, exactly ``conv(psi(z), weights, groups=C_out)`` as torch-conv-kan's
'fast' wavelet convolution computes it. Gradients, for g = dL/dy and
G[b,o,i,q] = sum_{p,k: q = p*stride + k*dilation - pad} g[b,o,p] weights[o,i,k] (the transposed
convolution of g), psi and dpsi at z[b,o,i,q]:

    grad_x[b, g(o) IG + i, q] = sum_{o in group} G * dpsi / scale[o,i]
    grad_weights[o,i,k]       = sum_{b,p} g[b,o,p] * psi(z[b,o,i, p*stride + k*dilation - pad])
    grad_translation[o,i]     = -sum_{b,q} G * dpsi / scale[o,i]
    grad_scale[o,i]           = -sum_{b,q} G * dpsi * z / scale[o,i]

``wavkan_conv_unchunked`` is that formula with the whole ``(B, C_out, IG, H, W)`` wavelet
tensor, differentiated by autograd. ``conv_reference_forward``/``conv_reference_backward``
compute the same in blocks of whole groups (or part of one group) of output channels and of
batch rows, so that a block's wavelet tensor holds at most ``chunk_elements`` values (a block
is at least one (row, output channel) pair), recomputing psi in the backward. The blocks never
straddle a group boundary unless they hold whole groups, so grad_x is summed with plain
reductions in a fixed order (no index_add, deterministic on every device).

Arithmetic is fp32 for fp32/bf16/fp16 inputs and float64 for float64 inputs.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from .wavelets import get_wavelet

__all__ = ["conv_reference_forward", "conv_reference_backward", "wavkan_conv_unchunked", "conv_output_size"]

# 2^22 wavelet values per block, as the linear reference: ~16 MB per fp32 temporary.
CHUNK_ELEMENTS = 1 << 22


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, pad_lo: int, pad_hi: int) -> int:
    """Output length of one spatial dim, as nn.Conv computes it."""
    return (size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1


def _blocks(B: int, OUT: int, groups: int, per_row_out: int, chunk_elements: int):
    """(b0, b1, o0, o1): output-channel blocks of whole groups, or of part of one group, and
    batch blocks, each holding at most chunk_elements wavelet values (``per_row_out`` values per
    (row, output channel)); at least one row and one output channel."""
    og = OUT // groups
    outs = max(1, chunk_elements // per_row_out)
    if outs >= og:
        outs = min(OUT, (outs // og) * og)
    rows = max(1, min(B, chunk_elements // (outs * per_row_out)))
    for o0 in range(0, OUT, outs) if outs >= og else (o for g in range(groups) for o in range(g * og, (g + 1) * og, outs)):
        o1 = min(o0 + outs, OUT) if outs >= og else min(o0 + outs, (o0 // og + 1) * og)
        for b0 in range(0, B, rows):
            yield b0, min(b0 + rows, B), o0, o1


def _z_block(x: Tensor, t: Tensor, inv_s: Tensor, o0: int, o1: int, og: int) -> tuple:
    """z for output channels o0..o1 as (rows, n_groups, per_group, IG, H, W) and the input
    channel range those groups read. (x - t) * (1/s): exactly 0 where x == t."""
    ig = t.shape[1]
    g0 = o0 // og
    n_g = max(1, (o1 - o0) // og) if (o1 - o0) >= og else 1
    per = (o1 - o0) // n_g
    B, _, H, W = x.shape
    xs = x[:, g0 * ig:(g0 + n_g) * ig].reshape(B, n_g, 1, ig, H, W)
    tb = t[o0:o1].reshape(1, n_g, per, ig, 1, 1)
    sb = inv_s[o0:o1].reshape(1, n_g, per, ig, 1, 1)
    return (xs - tb).mul_(sb), g0 * ig, n_g * ig


def _fp32_convolutions(fn):
    """Runs ``fn`` with autocast off: its convolutions must compute in the dtype of their
    operands (fp32 or float64), not in autocast's lower precision."""

    @functools.wraps(fn)
    def wrapper(x, *args, **kwargs):
        if x.device.type == "meta":  # shapes only (no autocast on meta)
            return fn(x, *args, **kwargs)
        with torch.autocast(x.device.type, enabled=False):
            return fn(x, *args, **kwargs)

    return wrapper


@_fp32_convolutions
def conv_reference_forward(x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet, stride, padding,
                           dilation, groups: int, chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:  # fmt: skip
    """y: (B, C_out, H_out, W_out) in x's dtype (shapes and arguments: the module docstring)."""
    wav = get_wavelet(wavelet)
    out_dtype = x.dtype
    cd = compute_dtype(out_dtype)
    x, s, t, w = (a.to(cd) for a in (x, scale, translation, weights))
    inv_s = s.reciprocal()
    B, _, H, W = x.shape
    OUT, IG = s.shape
    og = OUT // groups
    pt, pb, pl, pr = padding
    KH, KW = w.shape[2:]
    HO = conv_output_size(H, KH, stride[0], dilation[0], pt, pb)
    WO = conv_output_size(W, KW, stride[1], dilation[1], pl, pr)
    y = torch.empty(B, OUT, HO, WO, dtype=cd, device=x.device)
    for b0, b1, o0, o1 in _blocks(B, OUT, groups, IG * H * W, chunk_elements):
        z, _, _ = _z_block(x[b0:b1], t, inv_s, o0, o1, og)
        psi = wav.psi(z).reshape(b1 - b0, (o1 - o0) * IG, H, W)
        psi = F.pad(psi, (pl, pr, pt, pb))
        y[b0:b1, o0:o1] = F.conv2d(psi, w[o0:o1], stride=stride, dilation=dilation, groups=o1 - o0)
    return y.to(out_dtype)


@_fp32_convolutions
def conv_reference_backward(grad: Tensor, x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet,
                            stride, padding, dilation, groups: int, chunk_elements: int = CHUNK_ELEMENTS,
                            need_x: bool = True, need_params: bool = True):  # fmt: skip
    """(grad_x, grad_scale, grad_translation, grad_weights) for grad = dL/dy (B, C_out, H_out,
    W_out), each in the dtype of the tensor it differentiates; None where not needed."""
    wav = get_wavelet(wavelet)
    cd = compute_dtype(x.dtype)
    g, xc, s, t, w = (a.to(cd) for a in (grad, x, scale, translation, weights))
    inv_s = s.reciprocal()
    B, C, H, W = xc.shape
    OUT, IG = s.shape
    og = OUT // groups
    pt, pb, pl, pr = padding
    gx = torch.zeros(B, C, H, W, dtype=cd, device=x.device) if need_x else None
    if need_params:
        gw = torch.zeros_like(w)
        sum_q, sum_qz = torch.zeros_like(s), torch.zeros_like(s)
    for b0, b1, o0, o1 in _blocks(B, OUT, groups, IG * H * W, chunk_elements):
        rows, oc = b1 - b0, o1 - o0
        z, c0, n_c = _z_block(xc[b0:b1], t, inv_s, o0, o1, og)
        psi, dpsi = wav.psi_dpsi(z, True)
        gb = g[b0:b1, o0:o1]
        padded = (rows, oc * IG, H + pt + pb, W + pl + pr)
        if need_params:
            psi_p = F.pad(psi.reshape(rows, oc * IG, H, W), (pl, pr, pt, pb))
            gw[o0:o1] += torch.nn.grad.conv2d_weight(psi_p, w[o0:o1].shape, gb, stride, 0, dilation, groups=oc)
        gpsi = torch.nn.grad.conv2d_input(padded, w[o0:o1], gb, stride, 0, dilation, groups=oc)
        q = gpsi[:, :, pt:pt + H, pl:pl + W].reshape(z.shape).mul_(dpsi)  # G * dpsi
        n_g, per = z.shape[1], z.shape[2]
        if need_x:
            contrib = q * inv_s[o0:o1].reshape(1, n_g, per, IG, 1, 1)
            gx[b0:b1, c0:c0 + n_c] += contrib.sum(2).reshape(rows, n_c, H, W)
        if need_params:
            sum_q[o0:o1] += q.sum((0, 4, 5)).reshape(oc, IG)
            sum_qz[o0:o1] += q.mul_(z).sum((0, 4, 5)).reshape(oc, IG)
    grad_x = gx.to(x.dtype) if need_x else None
    if not need_params:
        return grad_x, None, None, None
    g_t = -inv_s * sum_q
    g_s = -inv_s * sum_qz
    return grad_x, g_s.to(scale.dtype), g_t.to(translation.dtype), gw.to(weights.dtype)


def wavkan_conv_unchunked(x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet, stride, padding,
                          dilation, groups: int) -> Tensor:  # fmt: skip
    """The formula with the whole (B, C_out, IG, H, W) wavelet tensor, differentiable by autograd:
    the benchmark's restated torch-conv-kan branch and an independent check of the chunked path."""
    B, C, H, W = x.shape
    OUT, IG = scale.shape
    xs = x.reshape(B, groups, 1, IG, H, W)
    z = (xs - translation.reshape(1, groups, OUT // groups, IG, 1, 1)) / scale.reshape(1, groups, OUT // groups, IG, 1, 1)
    psi = get_wavelet(wavelet).psi(z).reshape(B, OUT * IG, H, W)
    pt, pb, pl, pr = padding
    psi = F.pad(psi, (pl, pr, pt, pb))
    return F.conv2d(psi, weights, stride=stride, dilation=dilation, groups=OUT)
