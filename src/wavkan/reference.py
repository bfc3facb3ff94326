"""Pure-PyTorch Wav-KAN layer: the oracle for the kernels, and the backend that runs anywhere.

All functions take ``x: (B, in)`` and parameters ``scale, translation, weights: (out, in)``;
``weights`` already carries a wavelet's input window (see ``wavkan.wavelets``).

    z[b,o,i]  = (x[b,i] - translation[o,i]) / scale[o,i]
    y[b,o]    = sum_i weights[o,i] * psi(z[b,o,i])

Gradients, for g = dL/dy (B, out) and psi, dpsi at z[b,o,i]:

    grad_x[b,i]           =  sum_o g[b,o] * weights[o,i] * dpsi / scale[o,i]
    grad_weights[o,i]     =  sum_b g[b,o] * psi
    grad_translation[o,i] = -sum_b g[b,o] * weights[o,i] * dpsi / scale[o,i]
    grad_scale[o,i]       = -sum_b g[b,o] * weights[o,i] * dpsi * z / scale[o,i]

``wavkan_linear_unchunked`` is the paper's formula: it materialises B x out x in tensors and
lets autograd differentiate it. ``reference_forward``/``reference_backward`` compute the same
in blocks of at most ``chunk_elements`` edges-times-rows, recomputing psi in the backward, so
their extra memory is bounded by about 8 * chunk_elements * 4 bytes (fp32; twice that in
float64) whatever the batch size. ``reference_double_backward`` differentiates the backward
(second derivatives: a gradient penalty under ``create_graph=True``) block by block the same
way, with autograd inside each block.

Arithmetic is fp32 for fp32/bf16/fp16 inputs and float64 for float64 inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .wavelets import get_wavelet

__all__ = [
    "CHUNK_ELEMENTS",
    "compute_dtype",
    "reference_forward",
    "reference_backward",
    "reference_double_backward",
    "wavkan_linear_unchunked",
]

# 2^22 edge-rows per block: ~16 MB per fp32 temporary, ~130 MB peak for the backward's eight.
CHUNK_ELEMENTS = 1 << 22
# The double backward keeps a block's autograd graph (about 30 block-sized tensors): smaller blocks.
DOUBLE_BACKWARD_CHUNK_ELEMENTS = 1 << 19


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _blocks(B: int, OUT: int, IN: int, chunk_elements: int):
    """(b0, b1, o0, o1) blocks whose rows * outs * IN stays within chunk_elements."""
    outs = min(OUT, max(1, chunk_elements // IN))
    rows = max(1, min(B, chunk_elements // (outs * IN)))
    for b0 in range(0, B, rows):
        for o0 in range(0, OUT, outs):
            yield b0, min(b0 + rows, B), o0, min(o0 + outs, OUT)


def wavkan_linear_unchunked(x: Tensor, scale: Tensor, translation: Tensor, weights: Tensor, wavelet) -> Tensor:
    """The paper's formula, differentiable by autograd: holds several (B, out, in) tensors.

    x: (B, in); scale, translation, weights: (out, in) -> (B, out). Used as a baseline in the
    benchmark and as an independent check of the chunked path in the tests.
    """
    z = (x.unsqueeze(1) - translation) / scale
    return (get_wavelet(wavelet).psi(z) * weights).sum(dim=2)


def reference_forward(x, scale, translation, weights, wavelet, chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """y = sum_i weights * psi(z): x (B, in), params (out, in) -> (B, out) in x's dtype."""
    wav = get_wavelet(wavelet)
    out_dtype = x.dtype
    cd = compute_dtype(out_dtype)
    x, s, t, w = (a.to(cd) for a in (x, scale, translation, weights))
    inv_s = s.reciprocal()
    B, IN = x.shape
    OUT = s.shape[0]
    y = torch.empty(B, OUT, dtype=cd, device=x.device)
    for b0, b1, o0, o1 in _blocks(B, OUT, IN, chunk_elements):
        z = _z(x[b0:b1], t[o0:o1], inv_s[o0:o1])
        psi, _ = wav.psi_dpsi(z, False)
        # In-place products and plain sums: on CPU these beat einsum's strided batched matmul.
        y[b0:b1, o0:o1] = psi.mul_(w[o0:o1]).sum(-1)
    return y.to(out_dtype)


def _z(x: Tensor, t: Tensor, inv_s: Tensor) -> Tensor:
    """(x - t) / s as (x - t) * (1/s): exactly 0 where x == t, as in the paper's code, which
    matters where dpsi jumps at 0 (meyer: abs'(0) = 0)."""
    return (x[:, None, :] - t).mul_(inv_s)


def reference_backward(grad, x, scale, translation, weights, wavelet, chunk_elements: int = CHUNK_ELEMENTS,
                       need_x: bool = True, need_params: bool = True):  # fmt: skip
    """(grad_x, grad_scale, grad_translation, grad_weights) for grad = dL/dy of shape (B, out).

    Each gradient comes back in the dtype of the tensor it differentiates. ``need_x`` False
    skips grad_x (None), ``need_params`` False the three parameter gradients (None each): a
    network's first layer needs no grad_x, a frozen layer no parameter gradients.
    """
    wav = get_wavelet(wavelet)
    cd = compute_dtype(x.dtype)
    g, xc, s, t, w = (a.to(cd) for a in (grad, x, scale, translation, weights))
    inv_s = s.reciprocal()
    w_over_s = w * inv_s
    B, IN = xc.shape
    OUT = s.shape[0]
    gx = torch.zeros(B, IN, dtype=cd, device=x.device) if need_x else None
    if need_params:
        gw, sum_q, sum_qz = (torch.zeros(OUT, IN, dtype=cd, device=x.device) for _ in range(3))
    for b0, b1, o0, o1 in _blocks(B, OUT, IN, chunk_elements):
        z = _z(xc[b0:b1], t[o0:o1], inv_s[o0:o1])
        psi, dpsi = wav.psi_dpsi(z, True)
        gb = g[b0:b1, o0:o1].unsqueeze(-1)
        q = dpsi.mul_(gb)  # g * dpsi, in place of dpsi
        if need_x:
            gx[b0:b1] += (q * w_over_s[o0:o1]).sum(1)
        if need_params:
            gw[o0:o1] += psi.mul_(gb).sum(0)
            sum_q[o0:o1] += q.sum(0)
            sum_qz[o0:o1] += q.mul_(z).sum(0)
    grad_x = gx.to(x.dtype) if need_x else None
    if not need_params:
        return grad_x, None, None, None
    g_t = -w_over_s * sum_q
    g_s = -w_over_s * sum_qz
    return grad_x, g_s.to(scale.dtype), g_t.to(translation.dtype), gw.to(weights.dtype)


def reference_double_backward(grad, x, scale, translation, weights, wavelet, grad_grads, needs,
                              create_graph: bool = False, chunk_elements: int = DOUBLE_BACKWARD_CHUNK_ELEMENTS):  # fmt: skip
    """The backward's own vector-Jacobian product: second derivatives of the layer.

    ``reference_backward`` maps (grad, x, scale, translation, weights) to (grad_x, grad_scale,
    grad_translation, grad_weights). For ``grad_grads`` = the gradients flowing into those four
    (each None where none flows; shapes as the four), this returns the gradients of
    ``<gg_x, grad_x> + <gg_s, grad_scale> + <gg_t, grad_translation> + <gg_w, grad_weights>``
    with respect to (grad, x, scale, translation, weights): five tensors in their inputs'
    dtypes, None where ``needs`` (five bools) says not needed. Blocks as the backward's: each
    block's share of the four gradients is recomputed under autograd and differentiated at
    once, so memory stays bounded by one block's graph. ``create_graph`` keeps the graph (a
    third derivative): then every block's graph is kept, and memory is no longer bounded.
    """
    wav = get_wavelet(wavelet)
    cd = compute_dtype(x.dtype)
    originals = (grad, x, scale, translation, weights)
    with torch.set_grad_enabled(create_graph):
        g, xc, s, t, w = (a.to(cd) if create_graph else a.detach().to(cd) for a in originals)
    ggx, ggs, ggt, ggw = (None if a is None else a.detach().to(cd) if not create_graph else a.to(cd)
                          for a in grad_grads)  # fmt: skip
    out = [torch.zeros(a.shape, dtype=cd, device=a.device) if need else None for a, need in zip((g, xc, s, t, w), needs)]
    if not any(needs) or all(a is None for a in (ggx, ggs, ggt, ggw)):
        return tuple(o if o is None else o.to(a.dtype) for o, a in zip(out, originals))
    B, IN = xc.shape
    OUT = s.shape[0]
    for b0, b1, o0, o1 in _blocks(B, OUT, IN, chunk_elements):
        with torch.enable_grad():
            parts = (g[b0:b1, o0:o1], xc[b0:b1], s[o0:o1], t[o0:o1], w[o0:o1])
            if create_graph:
                leaves = parts
            else:
                leaves = tuple(p.detach().requires_grad_(need) for p, need in zip(parts, needs))
            gb, xb, sb, tb, wb = leaves
            inv_s = sb.reciprocal()
            z = (xb[:, None, :] - tb) * inv_s
            psi, dpsi = wav.psi_dpsi(z, True)
            q = gb.unsqueeze(-1) * dpsi  # (b, o, i)
            w_over_s = wb * inv_s
            total = z.new_zeros(())
            if ggx is not None:
                total = total + ((q * w_over_s).sum(1) * ggx[b0:b1]).sum()
            if ggw is not None:
                total = total + ((gb.unsqueeze(-1) * psi).sum(0) * ggw[o0:o1]).sum()
            if ggt is not None:
                total = total - (w_over_s * q.sum(0) * ggt[o0:o1]).sum()
            if ggs is not None:
                total = total - (w_over_s * (q * z).sum(0) * ggs[o0:o1]).sum()
            wanted = [k for k, need in enumerate(needs) if need and leaves[k].requires_grad]
            if not wanted or not total.requires_grad:
                continue
            got = torch.autograd.grad(total, [leaves[k] for k in wanted], create_graph=create_graph, allow_unused=True)
        slices = ((slice(b0, b1), slice(o0, o1)), (slice(b0, b1),), (slice(o0, o1),), (slice(o0, o1),), (slice(o0, o1),))
        for k, d in zip(wanted, got):
            if d is None:
                continue
            if create_graph:  # out-of-place, so that the sum keeps its graph
                pad = torch.zeros_like(out[k])
                pad[slices[k]] = d
                out[k] = out[k] + pad
            else:
                out[k][slices[k]] += d
    return tuple(o if o is None else o.to(a.dtype) for o, a in zip(out, originals))
