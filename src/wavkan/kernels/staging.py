"""Staging buffers that let the main kernels' loops run on wide, unmasked, aligned loads.

- ``pack_edge_constants``: the per-edge constants as three fp32 planes, either transposed
  (in, out_pad) for the forward, which walks ``in``: [k/s, t, m w]; or as (out, in_pad) for
  grad_x, which walks ``out``: [k/s, t, D w/s]. Both loops compute kz = (x - t) (k/s): exact
  for any |t/s| (x (k/s) - t (k/s) cancels catastrophically where |t/s| is large), and
  exactly 0 where x == t (meyer's dpsi jumps at 0). Padding edges get zero weight: they add
  nothing. ``cached_edge_pack`` keeps them
  from one call to the next until a parameter changes.
- ``stage_transposed``: a (rows, cols) operand transposed to fp32 (cols, rows_pad), padding
  zero: x for the forward where its config stages it (``KernelConfig.stage``).

Each is one pass over O(out in) or O(B in) elements, against B out in evaluations.
"""

from __future__ import annotations

import functools
import weakref

import torch
import triton
import triton.language as tl

from .launch import DirectLauncher, PlannedLaunch, cdiv, keeping_buffers, launch_jit, planned, stream_key

_BLOCK = 32


@triton.jit
def _wavkan_pack_kernel(
    s_ptr, t_ptr, w_ptr, pack_ptr,
    IN, OUT, IN_PAD, OUT_PAD, PLANE, PLANE2, stride_pi, stride_po, z_scale, w_scale,
    stride_so, stride_si, stride_to, stride_ti, stride_wo, stride_wi,
    FOR_GRAD_X: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr,
):
    offs_o = tl.program_id(0) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    offs_i = tl.program_id(1) * BLOCK_IN + tl.arange(0, BLOCK_IN)
    valid = (offs_o[:, None] < OUT) & (offs_i[None, :] < IN)
    o = offs_o[:, None].to(tl.int64)
    i = offs_i[None, :].to(tl.int64)
    s = tl.load(s_ptr + o * stride_so + i * stride_si, mask=valid, other=1.0).to(tl.float32)
    t = tl.load(t_ptr + o * stride_to + i * stride_ti, mask=valid, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + o * stride_wo + i * stride_wi, mask=valid, other=0.0).to(tl.float32)
    inv_s = 1.0 / s
    dst = pack_ptr + i * stride_pi + o * stride_po
    inside = (offs_o[:, None] < OUT_PAD) & (offs_i[None, :] < IN_PAD)
    # fp32 whatever the caller's scalar type (Inductor passes Python floats as fp64).
    z_scale, w_scale = tl.cast(z_scale, tl.float32), tl.cast(w_scale, tl.float32)
    a = inv_s * z_scale
    if FOR_GRAD_X:
        tl.store(dst, a, mask=inside)
        tl.store(dst + PLANE, t, mask=inside)
        tl.store(dst + PLANE2, w * w_scale * inv_s, mask=inside)
    else:
        tl.store(dst, a, mask=inside)
        tl.store(dst + PLANE, t, mask=inside)
        tl.store(dst + PLANE2, w * w_scale, mask=inside)


@triton.jit
def _wavkan_stage_kernel(
    src_ptr, dst_ptr, R, C, R_DST, C_DST, stride_r, stride_c, dst_stride_r, dst_stride_c,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # dst[r * dst_stride_r + c * dst_stride_c] = fp32(src[r, c]) for r < R_DST, c < C_DST,
    # zero outside (R, C): a copy, a transposition, or either with zero padding.
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    r = offs_r[:, None].to(tl.int64)
    c = offs_c[None, :].to(tl.int64)
    v = tl.load(src_ptr + r * stride_r + c * stride_c, mask=(r < R) & (c < C), other=0.0).to(tl.float32)
    tl.store(dst_ptr + r * dst_stride_r + c * dst_stride_c, v, mask=(r < R_DST) & (c < C_DST))


def plane_offsets(pack: torch.Tensor) -> tuple:
    """(offset of plane 1, offset of plane 2) in elements of a (3, rows, pad) pack: passed as two
    ints, so that each is a 64-bit argument once it passes 2^31 (a kernel's own 2 * PLANE would
    be computed in 32 bits: wrong from in * out = 2^30 on)."""
    return pack.stride(0), 2 * pack.stride(0)


def pack_edge_constants(scale, translation, weights, pad: int, for_grad_x: bool, z_scale=1.0, w_scale=1.0):
    """Edge constants as three fp32 planes.

    for_grad_x=False: (3, in, pad), out padded to ``pad``: [z_scale/s, t, w w_scale].
    for_grad_x=True: (3, out, pad), in padded to ``pad``: [z_scale/s, t, w w_scale/s].
    scale, translation, weights: (out, in), any strides and float dtype.
    """
    OUT, IN = scale.shape
    if not for_grad_x:
        shape, in_pad, out_pad, stride_pi, stride_po = (3, IN, pad), IN, pad, pad, 1
    else:
        shape, in_pad, out_pad, stride_pi, stride_po = (3, OUT, pad), pad, OUT, 1, pad
    pack = torch.empty(shape, dtype=torch.float32, device=scale.device)
    grid = (cdiv(out_pad, _BLOCK), cdiv(in_pad, _BLOCK))
    launch_jit(_wavkan_pack_kernel, grid, (
        scale, translation, weights, pack,
        IN, OUT, in_pad, out_pad, *plane_offsets(pack), stride_pi, stride_po, float(z_scale), float(w_scale),
        scale.stride(0), scale.stride(1), translation.stride(0), translation.stride(1),
        weights.stride(0), weights.stride(1),
    ), dict(FOR_GRAD_X=for_grad_x, BLOCK_OUT=_BLOCK, BLOCK_IN=_BLOCK))
    return pack


_STAGE = DirectLauncher(_wavkan_stage_kernel)


@functools.lru_cache(maxsize=1024)
def _stage_plan(R: int, C: int, strides: tuple, r_pad: int, rows_pad: int, device: torch.device) -> PlannedLaunch:
    # dst is (rows_pad, r_pad) contiguous: t's element (r, c) lands at c * r_pad + r.
    grid = (cdiv(r_pad, _BLOCK), cdiv(rows_pad, _BLOCK), 1)
    return _STAGE.plan(device, grid, (R, C, r_pad, rows_pad, *strides, 1, r_pad), dict(BLOCK_R=_BLOCK, BLOCK_C=_BLOCK))


def stage_transposed(t: torch.Tensor, r_pad: int, rows_pad=None) -> torch.Tensor:
    """(rows_pad, r_pad) fp32: t (R, C) transposed, zero past R and C (rows_pad defaults to C).
    One launch, planned once per shape and strides (the forward stages x on every call)."""
    R, C = t.shape
    rows_pad = C if rows_pad is None else rows_pad
    dst = torch.empty((rows_pad, r_pad), dtype=torch.float32, device=t.device)
    plan = planned(_stage_plan, R, C, t.stride(), r_pad, rows_pad, t.device)
    _STAGE.launch(plan, stream_key(t.device), (t, dst))
    return dst


# --- the edge constants, packed once per parameter change ------------------------------------

# id(weights) -> (weakref to weights, [(kind, key, value, held storages), ...]): per weights
# object, one value of each kind (a forward pack, a grad_x pack, shannon's folded window). Keyed
# on the weights tensor object, which a module passes unchanged on every call, and checked against
# each parameter's address, version counter (bumped by in-place changes: a foreach or for-loop
# optimizer step, load_state_dict, ``with torch.no_grad(): p.mul_(2)``; not by a fused optimizer
# step, which ``_forget_stepped`` below covers, nor by writes through ``.data``, which has its own
# counter: ``clear_pack_cache`` after those), shape, strides and dtype, and
# the stream (a value made on one stream is not read on another without a sync). Moving a
# parameter (``.to()``, ``p.data = ...``) changes its address. A weights tensor made per call
# is a new object every call, so it never hits stale entries, and its entries go when it does.
_KEPT: dict = {}


def _param_key(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), t._version, t.shape, t.stride(), t.dtype)


def _drop(ident: int, ref, kept=_KEPT) -> None:
    # ``kept`` bound at definition: the callback can run while the interpreter tears the
    # module down, when its globals are gone.
    entry = kept.get(ident)
    if entry is not None and entry[0] is ref:
        del kept[ident]


def _kept(anchor: torch.Tensor, kind, key, compute, sources=()):
    """``compute()``, kept per ``anchor`` object and ``kind`` until ``key`` changes (a new key
    of a kind replaces the old), and dropped with the anchor.

    The entry holds the storages of ``sources`` (the tensors whose addresses ``key`` compares)
    until it is replaced: a tensor allocated after them cannot take one of their addresses, so
    a parameter given new storage (``.half().float()``, ``p.data = ...``, which keep its version
    counter) never matches a stale key by landing where the old one was."""
    ident = id(anchor)
    entries = _KEPT.get(ident)
    if entries is not None and entries[0]() is anchor:
        for entry_kind, entry_key, value, _ in entries[1]:
            if entry_kind == kind and entry_key == key:
                return value
    value = compute()
    if entries is None or entries[0]() is not anchor:
        try:
            ref = weakref.ref(anchor, lambda r, ident=ident, drop=_drop: drop(ident, r))
        except TypeError:
            return value
        entries = (ref, [])
        _KEPT[ident] = entries
    held = tuple(t.untyped_storage() for t in sources)
    entries[1][:] = [e for e in entries[1] if e[0] != kind] + [(kind, key, value, held)]
    _watch_optimizer_steps()
    return value


# A fused optimizer step (``fused=True``: torch's _fused_adamw_, _fused_sgd_ and the like, and
# third-party ones that write through their own kernels) changes its parameters in place without
# bumping their version counters (measured on CUDA and CPU with torch 2.11 and 2.13), so no key
# would see it. Every ``torch.optim.Optimizer``'s step runs the global step post-hooks: one of
# them drops the kept values made from the parameters the step may have written (they are stale
# after the step of any optimizer anyway; the next call packs afresh).
_STEP_HOOK: list = []


def _watch_optimizer_steps() -> None:
    if not _STEP_HOOK:
        from torch.optim.optimizer import register_optimizer_step_post_hook  # loaded with torch

        _STEP_HOOK.append(register_optimizer_step_post_hook(_forget_stepped))


def _forget_stepped(optimizer, args, kwargs) -> None:
    """Drops every kept value whose sources share storage with a parameter of ``optimizer``.
    A hook of every optimizer in the process, so it never raises: a parameter without a plain
    storage (sparse, DTensor and other wrapper subclasses) is never a source of a kept value."""
    if not _KEPT or torch.compiler.is_compiling():
        return
    stepped = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            try:
                stepped.add(p.untyped_storage().data_ptr())
            except (RuntimeError, NotImplementedError, AttributeError):
                continue
    for ident, entries in list(_KEPT.items()):
        fresh = [e for e in entries[1] if not any(h.data_ptr() in stepped for h in e[3])]
        if not fresh:
            _KEPT.pop(ident, None)
        elif len(fresh) != len(entries[1]):
            entries[1][:] = fresh


def _uncached(*tensors) -> bool:
    """Whether values derived from ``tensors`` must be computed afresh (see ``cached_edge_pack``)."""
    return (not keeping_buffers() or any(t.is_inference() for t in tensors)
            or (tensors[0].is_cuda and torch.cuda.is_current_stream_capturing()))


def cached_edge_pack(scale, translation, weights, pad: int, for_grad_x: bool, z_scale, w_scale, stream):
    """``pack_edge_constants(...)`` (fp32), computed once per parameter change and reused.

    Not cached (packed on every call): inside ``launch.fresh_buffers``, during CUDA-graph capture (a graph must contain the
    pack, or its replays after an optimizer step would read stale constants), for inference
    tensors (they keep no version counter), and for weights that cannot be weakly referenced.
    """
    if _uncached(weights, scale, translation):
        return pack_edge_constants(scale, translation, weights, pad, for_grad_x, z_scale, w_scale)
    pack_args = (pad, for_grad_x, z_scale, w_scale)
    key = (stream, _param_key(scale), _param_key(translation), _param_key(weights))
    return _kept(weights, pack_args, key,
                 lambda: pack_edge_constants(scale, translation, weights, pad, for_grad_x, z_scale, w_scale),
                 (scale, translation, weights))


def windowed_weights(weights, wavelet) -> tuple:
    """(w H, H) for a wavelet with an input window (``Wavelet.window``: shannon's Hamming
    window): ``Wavelet.fold_window``, detached. Kept with the packs, under their rules, until
    the weights change: folding it per call made a new weights tensor on every call, so the
    packs were never reused."""
    def fold():
        # Never an inference tensor, even when first asked for under torch.inference_mode:
        # packs are not kept for inference tensors, so a kept inference fold would make every
        # later call repack.
        with torch.inference_mode(False), torch.no_grad():
            return wavelet.fold_window(weights)

    if _uncached(weights):
        return fold()
    return _kept(weights, ("window", wavelet.name), (stream_key(weights.device), _param_key(weights)), fold, (weights,))


def clear_pack_cache() -> None:
    """Forget every cached pack and folded window (frees their memory, and the parameter
    storages the entries hold: after ``model.cpu()`` or ``model.half()`` the old ones stay until
    the layer's next call on this path replaces its entries, or until this)."""
    _KEPT.clear()
