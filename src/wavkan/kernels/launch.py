"""Split planning and launching, used by every pass: how many programs share one tile's
reduction loop (the "balance" rule), the scratch of a split launch (the tiles' arrival
counters and the fp32 partials that the tile's last program sums in a fixed order:
deterministic, see ``partials.py``), and the launch of a compiled kernel without the JIT's
per-call argument binding (``DirectLauncher``).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import NamedTuple

import torch

from .tuning import KernelConfig


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Processors to fill: the GPU's SM count; 1 for the interpreter."""
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


_INT32 = 1 << 31


def _specialization(args) -> tuple:
    """What Triton compiles separate binaries for, per argument: for tensors, dtype and
    address mod 16; for ints, == 1, value mod 16 and whether 32 bits hold it. Cheap next to a
    compile, but paid per launch."""
    return tuple([
        (a.dtype, a.data_ptr() & 15) if isinstance(a, torch.Tensor)
        else ((a == 1, a & 15, -_INT32 <= a < _INT32) if type(a) is int else None)
        for a in args
    ])


# The split rule, "balance" (chosen from split sweeps on an H200, see benchmarks/HISTORY.md).
# The SMs take programs in turn, so a launch lasts as long as its busiest SM: 288 programs on
# 132 SMs run 3 deep where 256 run 2, so a split that leaves the last wave barely filled is
# slower than one fewer. While the tiles are fewer than the SMs: as many programs as the SMs
# hold at once (``KernelConfig.resident`` per SM: 2, or 3 where the config's registers leave
# room for 3 and 3 measured faster), of at least 16 steps (fewer, longer programs beat one full
# wave of resident ones). From one tile per SM on: about 16 programs per SM of at least
# ``KernelConfig.balance_min_steps`` (128 unless the config says otherwise) steps, in at most 4
# splits, whose partials stay within 4 outputs' worth of memory; several waves balance the SMs.
_BALANCE_SMALL_MIN_STEPS = 16
_BALANCE_LARGE_PER_SM = 16
BALANCE_LARGE_MAX_SPLIT = 4


def balanced_split(tiles: int, loop_len: int, device: torch.device, split=None,
                   large_min_steps: int = KernelConfig.balance_min_steps,
                   resident: int = KernelConfig.resident) -> int:  # fmt: skip
    """Programs per tile under the "balance" rule (see above) for a loop of ``loop_len`` steps;
    ``split`` overrides it. ``large_min_steps`` is the large regime's least steps
    (``KernelConfig.balance_min_steps``), ``resident`` the small regime's programs per SM
    (``KernelConfig.resident``); both default to a config's defaults."""
    if split is not None:
        return max(1, min(split, loop_len))
    sms = sm_count(device)
    if tiles < sms:
        return max(1, min(resident * sms // tiles, loop_len // _BALANCE_SMALL_MIN_STEPS))
    return max(1, min(cdiv(_BALANCE_LARGE_PER_SM * sms, tiles), loop_len // large_min_steps, BALANCE_LARGE_MAX_SPLIT))


def balanced_plan(tiles: int, loop_len: int, device: torch.device, cfg: KernelConfig) -> tuple:
    """(split, per_split) under the "balance" rule (``balanced_split``), for the kernels that
    sum their split in-kernel (``partials.store_tile``): pure arithmetic, nothing compiled."""
    split = balanced_split(tiles, loop_len, device, cfg.split, cfg.balance_min_steps, cfg.resident)
    per_split = cdiv(loop_len, split)
    return cdiv(loop_len, per_split), per_split


# Split scratch per (device, stream): the tile arrival counters (int32, zero between launches:
# a tile's last program resets its counter, so no memset is needed) and the fp32 partials
# (read back within the launch that wrote them). Launches on one stream run in order, so they
# can share both; another stream gets its own. Under CUDA-graph capture both are allocated
# (the counters zeroed) inside the graph instead: cached ones would be shared between the
# graph's replays and the eager launches around them.
_SCRATCH: dict = {}
_MIN_COUNTERS = 4096
_KEEP = threading.local()


@contextlib.contextmanager
def fresh_buffers():
    """Within this block the launchers keep nothing between calls: no cached edge-constant
    packs, no cached split scratch; every call allocates (and packs) its own. For callers
    whose allocations belong to someone else's memory pool: torch.compile's CUDA-graph trees
    (``mode="reduce-overhead"``) record and warm up the compiled graph in a private pool and
    refuse tensors of that pool that outlive a run (a cache would keep them)."""
    previous = getattr(_KEEP, "off", False)
    _KEEP.off = True
    try:
        yield
    finally:
        _KEEP.off = previous


@contextlib.contextmanager
def traced_launches():
    """Within this block the launchers run as ``torch.library.triton_op`` bodies: buffers are
    fresh (``fresh_buffers``), and every kernel launches through ``torch.library.wrap_triton``,
    which torch.compile traces into its graph (Inductor then launches the kernels itself) and
    which, called with real tensors outside a trace, launches through the JIT."""
    previous = getattr(_KEEP, "traced", False)
    _KEEP.traced = True
    try:
        with fresh_buffers():
            yield
    finally:
        _KEEP.traced = previous


def keeping_buffers() -> bool:
    """Whether the launchers may keep buffers between calls (see ``fresh_buffers``)."""
    return not getattr(_KEEP, "off", False)


def launch_jit(kernel, grid: tuple, args: tuple, meta: dict) -> None:
    """``kernel[grid](*args, **meta)``, or inside ``traced_launches`` its ``wrap_triton`` form,
    where a register cap becomes fewer warps (``uncapped_warps``)."""
    if not getattr(_KEEP, "traced", False):
        kernel[grid](*args, **meta)
        return
    meta = dict(meta)
    maxnreg = meta.pop("maxnreg", None)
    if maxnreg is not None:
        meta["num_warps"] = uncapped_warps(meta["num_warps"], maxnreg)
    torch.library.wrap_triton(kernel)[grid](*args, **meta)


def uncapped_warps(num_warps: int, maxnreg: int) -> int:
    """The warps a config capped at ``maxnreg`` registers per thread takes where no cap can be
    set: Inductor launches a user kernel with its config's warps and stages and drops
    ``maxnreg`` (torch 2.11 and 2.13, ``config_to_dict``), so a capped 8-warp config compiled
    uncapped fits half the programs per SM: the parameter pass took 1.44x as long in a compiled
    network (benchmarks/HISTORY.md, v16). The same tile on as many warps as keep the registers
    per program within the cap's budget at the most a thread can hold (255): 8 warps at 128 ->
    4."""
    budget = num_warps * maxnreg // 255
    warps = 1
    while warps * 2 <= budget:
        warps *= 2
    return min(num_warps, warps)


def split_scratch(device: torch.device, stream, tiles: int, partial_elems: int) -> tuple:
    """(counters, partials): a zeroed int32 buffer of at least ``tiles`` counters and an fp32
    buffer of at least ``partial_elems`` elements, for a split launch on ``stream``."""
    if not keeping_buffers() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return (torch.zeros(tiles, dtype=torch.int32, device=device),
                torch.empty(partial_elems, dtype=torch.float32, device=device))
    key = (device, stream)
    entry = _SCRATCH.get(key)
    if entry is None or entry[0].numel() < tiles or entry[1].numel() < partial_elems:
        counters = entry[0] if entry is not None and entry[0].numel() >= tiles else \
            torch.zeros(max(tiles, _MIN_COUNTERS), dtype=torch.int32, device=device)
        old = 0 if entry is None else entry[1].numel()
        partials = entry[1] if old >= partial_elems else torch.empty(max(partial_elems, 2 * old), dtype=torch.float32, device=device)
        entry = _SCRATCH[key] = (counters, partials)
    return entry


def split_buffers(device: torch.device, stream, split: int, tiles: int, partial_elems: int, out: torch.Tensor) -> tuple:
    """(counters, partials) for a launch of ``tiles`` tiles in ``split`` splits that sums them
    in-kernel, ``partial_elems`` fp32 per split (``split_scratch``); unsplit, ``out`` stands
    in for both (the binary never touches them)."""
    if split == 1:
        return out, out
    return split_scratch(device, stream, tiles, split * partial_elems)


def release_split_scratch() -> None:
    """Free the cached split scratch of every stream (it is reallocated on demand)."""
    _SCRATCH.clear()


class PlannedLaunch:
    """What a launch takes from shapes, strides, dtypes, the device and the config: the grid,
    the runtime scalars (every argument after the tensors, in declaration order), the
    constexprs and launch options (``meta``), and the binary's key over them. A pass plans a
    launch once per such combination (``functools.lru_cache`` over those) and launches the
    plan on every call, so that an eager call spends no host time on what did not change."""

    __slots__ = ("device", "grid", "scalars", "meta", "key")

    def __init__(self, device: torch.device, grid: tuple, scalars: tuple, meta: dict, key: tuple):
        self.device, self.grid, self.scalars, self.meta, self.key = device, grid, scalars, meta, key


class ColumnPassPlan(NamedTuple):
    """A planned pass whose loop walks an operand one column per step, read in place or staged
    transposed (the forward's x, grad_x's grad_y), over (rows, width) tiles of its output."""

    launch: "PlannedLaunch"
    pad: int  # width padded to whole tiles: the packed edge constants' width
    stage: bool  # the column operand staged transposed (``KernelConfig.stage``) ...
    rows_pad: int  # ... to this many rows
    split: int
    tiles: int
    partials: int  # fp32 elements per split partial (rows x width)


def column_pass_layout(cfg: KernelConfig, rows: int, width: int, loop_len: int, strides: tuple,
                       device: torch.device) -> tuple:  # fmt: skip
    """(pad, grid, rows_pad, operand strides, steps per split) of a column pass (``ColumnPassPlan``):
    ``width`` padded to whole tiles, the (row tiles, column tiles, split) grid under the "balance"
    rule over ``loop_len`` steps, the rows the staged operand is padded to, and the column
    operand's (along rows, along columns) strides as the kernel reads it: ``strides``, its own,
    or the staged copy's."""
    pad = cdiv(width, cfg.block_n) * cfg.block_n
    tiles = (cdiv(rows, cfg.block_m), pad // cfg.block_n)
    rows_pad = tiles[0] * cfg.block_m
    split, per_split = balanced_plan(tiles[0] * tiles[1], loop_len, device, cfg)
    return pad, (*tiles, split), rows_pad, (1, rows_pad) if cfg.stage else strides, per_split


def planned(plan, *key) -> "PlannedLaunch":
    """``plan(*key)`` for a pass's ``functools.lru_cache``d planning function, cached; planned
    afresh where the key holds symbolic sizes (torch.compile with dynamic shapes traces the
    passes with SymInts, which cannot be hashed)."""
    try:
        return plan(*key)
    except TypeError:
        return plan.__wrapped__(*key)


class DirectLauncher:
    """Launches one ``triton.jit`` kernel, skipping the JIT's per-call argument binding.

    ``kernel[grid](*args, **meta)`` binds every argument and computes its specialisation
    key in Python on each call, which costs more host time than the launch itself. A launch
    is planned once (``plan``: the scalars' part of the specialisation, computed the way Triton
    computes it: == 1, divisible by 16, and whether 32 bits hold them for the ints outside
    ``do_not_specialize``, whether 32 bits hold them for those inside it) and launched per call
    (``launch``: only the tensors' part, their dtype and 16-byte alignment, is computed then). The first launch for a (plan,
    tensors' specialisation) pair goes through the JIT and keeps the compiled kernel; later ones
    call its launcher directly, so a launch never takes a binary compiled for other arguments.
    ``own`` names the tensor arguments whose dtype and alignment the other arguments already
    decide (the launcher's own fp32/int32 scratch, always aligned; where it aliases an output,
    the output's check covers it), which need no check. An output's dtype is not decided by
    the input's (a staged bf16 x is fp32, its y bf16): outputs are checked. Under the
    interpreter, with launch hooks set (profilers), or where this Triton's compiled kernel
    lacks the launcher API, every launch goes through the JIT.
    """

    def __init__(self, kernel, own: tuple = ()):
        self.kernel = kernel
        self.compiled: dict = {}
        self.n_tensors = 0
        self.checked_tensors, self.checked_scalars, self.wide_scalars, self.constexpr_names = [], [], [], []
        if not hasattr(kernel, "params"):  # Triton's interpreter: every launch goes through it
            return
        names = list(kernel.arg_names)
        constexprs = [p.name for p in kernel.params if p.is_constexpr]
        skip = {names[a] if isinstance(a, int) else a for a in (getattr(kernel, "do_not_specialize", ()) or ())}
        runtime = [n for n in names if n not in constexprs]
        if names[:len(runtime)] != runtime:
            raise ValueError(f"{kernel.fn.__name__}: constexpr parameters must come last")
        self.n_tensors = sum(1 for n in runtime if n.endswith("_ptr"))
        if any(not n.endswith("_ptr") for n in runtime[:self.n_tensors]):
            raise ValueError(f"{kernel.fn.__name__}: the tensor (*_ptr) parameters must come first")
        self.constexpr_names = constexprs
        checked = [i for i, n in enumerate(runtime) if n not in skip and n not in own]
        self.checked_tensors = [i for i in checked if i < self.n_tensors]
        self.checked_scalars = [i - self.n_tensors for i in checked if i >= self.n_tensors]
        # Ints Triton does not specialise on still get a binary per width (i32 or i64): a value
        # past 2^31 must not reuse an i32 binary, which would truncate it.
        self.wide_scalars = [i - self.n_tensors for i, n in enumerate(runtime) if n in skip and i >= self.n_tensors]

    def plan(self, device: torch.device, grid: tuple, scalars: tuple, meta: dict) -> PlannedLaunch:
        """A launch on ``grid`` (3 dims) with the runtime ``scalars`` (the arguments after the
        tensors, in declaration order) and the constexprs and launch options in ``meta``."""
        spec = _specialization([scalars[i] for i in self.checked_scalars])
        widths = tuple([-_INT32 <= scalars[i] < _INT32 for i in self.wide_scalars])
        return PlannedLaunch(device, grid, scalars, meta, (device.index, tuple(meta.values()), spec, widths))

    def launch(self, planned: PlannedLaunch, stream, tensors: tuple) -> None:
        """Launch ``planned`` on ``stream`` (``stream_key(device)``) with the tensor arguments
        ``tensors`` in declaration order."""
        if planned.device.type != "cuda" or getattr(_KEEP, "traced", False) or not _direct_launch_ok():
            launch_jit(self.kernel, planned.grid, (*tensors, *planned.scalars), planned.meta)
            return
        key = (planned.key, _specialization([tensors[i] for i in self.checked_tensors]))
        hit = self.compiled.get(key)
        if hit is None:
            compiled = self.kernel[planned.grid](*tensors, *planned.scalars, **planned.meta)
            if all(hasattr(compiled, a) for a in ("run", "function", "packed_metadata")):
                self.compiled[key] = (compiled, tuple(planned.meta[n] for n in self.constexpr_names))
            return  # else an older Triton: this key stays on the JIT path
        compiled, constexprs = hit
        grid = planned.grid
        compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata,
                     None, None, None, *tensors, *planned.scalars, *constexprs)


def _current_stream(device: torch.device) -> int:
    from triton.runtime import driver

    return driver.active.get_current_stream(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _direct_launch_supported() -> bool:
    try:
        from triton import knobs  # noqa: F401  (Triton >= 3.4 keeps the launch hooks here)
    except ImportError:
        return False
    return True


def _direct_launch_ok() -> bool:
    """Whether a launch may skip the JIT: no launch hooks (a profiler's) are set."""
    if not _direct_launch_supported():
        return False
    runtime = _knobs_runtime()
    return _no_hook(runtime.launch_enter_hook) and _no_hook(runtime.launch_exit_hook)


def _no_hook(hook) -> bool:
    # Triton keeps its launch hooks as a chain object (empty unless a profiler added one),
    # or as None in some versions.
    return hook is None or (hasattr(hook, "calls") and not hook.calls)


@functools.lru_cache(maxsize=None)
def _knobs_runtime():
    from triton import knobs

    return knobs.runtime


def stream_key(device: torch.device):
    """The current stream of ``device`` as a hashable key (None off the GPU)."""
    if device.type != "cuda":
        return None
    return _current_stream(device)
