"""What a run does before its first epoch: CPU threads, compiling ahead, and the start-up clock.

Threads. PyTorch's CPU ops and the compiled backend's kernels share one OpenMP pool whose
threads split every parallel loop evenly and spin before they sleep. When other work holds one
of the cores, each loop waits for the thread that is not running: a run with as many threads
as cores then slows down many times over, where one thread per busy core less does not. So by
default a run takes the cores it may use (``os.sched_getaffinity``) less those the load
average shows busy, at least one (``default_threads``), decided once when it starts;
``--threads`` overrides it, and so does ``OMP_NUM_THREADS`` (torchrun sets it to 1). A
resumed run keeps the thread count it started with: results depend on it at the level of
float rounding.

Compiling ahead. The compiled CPU backend (``wavkan.cpu``) compiles each pass on its first
call. ``compile_ahead`` makes those calls before the first epoch, on a batch of the run's
shape and without touching the model's state, so the first epoch's time is training alone
and the compilation is reported as part of the start-up.

The clock. ``StartupClock`` splits the time to the first epoch into named phases, printed in
one line; for the command it starts at the process's start (``/proc`` on Linux), so the
interpreter and the imports count too.
"""

from __future__ import annotations

import os
import time
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["available_cores", "default_threads", "set_threads", "uses_compiled", "compile_ahead", "StartupClock",
           "process_age"]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: ``taskset`` and container limits count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


_auto_threads: Optional[tuple[int, float]] = None


def default_threads() -> tuple[int, float]:
    """(threads, busy): the available cores less those that the 1-minute load average shows
    fully busy with other work (``busy``, the machine's load scaled to this process's share of its
    cores), at least 1. Decided once per process, so every run in it computes alike."""
    global _auto_threads
    if _auto_threads is None:
        cores = available_cores()
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # not POSIX
            load = 0.0
        busy = load * cores / max(os.cpu_count() or cores, cores)
        # A core counts as busy once the load fills it: the 1-minute average keeps a just-
        # finished process's share for a minute (a run started right after another saw 0.7
        # and halved its threads), while work that is really running keeps it at 1 or more.
        _auto_threads = (max(1, min(cores, cores - int(busy))), busy)
    return _auto_threads


def set_threads(threads: Optional[int]) -> str:
    """Set PyTorch's intra-op threads to ``threads`` (None: what ``OMP_NUM_THREADS`` says, else
    ``default_threads()``); returns a note for the log saying how many and why."""
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        # The user's (or torchrun's) setting, which torch already follows.
        n, why = torch.get_num_threads(), "OMP_NUM_THREADS"
    elif threads is None:
        n, busy = default_threads()
        why = f"{available_cores()} cores, load average {busy:.1f} on them from other work"
    else:
        n, why = threads, "--threads"
        if n < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return f"{n} thread{'s' if n > 1 else ''}: {why}"


def uses_compiled(model: nn.Module) -> bool:
    """Whether any ``WavKANLinear`` of ``model`` would take the compiled CPU backend for a big
    call (the backend fuses the linear op; conv layers run without it)."""
    from ..nn import WavKANLinear
    from ..ops import resolve_backend

    probe = next(model.parameters(), None)
    if probe is None:
        return False
    backends = {m.backend for m in model.modules() if isinstance(m, WavKANLinear)}
    return any(resolve_backend(b, probe) == "compiled" for b in backends)


def compile_ahead(model: nn.Module, x: Tensor) -> None:
    """Run one forward and backward of ``model`` on ``x`` (a training batch) so that every
    pass the training step will call is compiled, leaving the model as it was: eval mode
    (BatchNorm's running statistics untouched), and every ``.grad`` restored afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad for p in params]
    for p in params:  # backward accumulates into an existing .grad in place
        p.grad = None
    was_training = model.training
    model.eval()
    try:
        model(x).sum().backward()
    finally:
        model.train(was_training)
        for p, g in zip(params, grads):
            p.grad = g


def process_age() -> Optional[float]:
    """Seconds since this process started, or None where /proc does not say."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        start_ticks = int(fields[19])  # field 22, starttime, counted after the ")" of comm
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class StartupClock:
    """``phase(name)`` ends the current phase under ``name``; ``summary()`` is the line to print."""

    def __init__(self, from_process_start: bool = False):
        age = process_age() if from_process_start else None
        self.before = age if age is not None and age >= 0 else None  # process start -> now
        self.last = time.perf_counter()
        self.phases: list[tuple[str, float]] = []

    def phase(self, name: str) -> None:
        now = time.perf_counter()
        self.phases.append((name, now - self.last))
        self.last = now

    @property
    def total(self) -> float:
        return (self.before or 0.0) + sum(s for _, s in self.phases)

    def summary(self) -> str:
        parts = ([("python and imports", self.before)] if self.before is not None else []) + self.phases
        text = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in parts if seconds >= 0.05)
        since = "the process's start" if self.before is not None else "the train() call"
        return f"start-up: {self.total:.1f} s from {since} to the first epoch ({text})"
