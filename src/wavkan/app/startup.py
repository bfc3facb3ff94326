"""What a run does before its first epoch: CPU threads, compiling ahead, and the start-up clock.

Threads. PyTorch's CPU ops and the compiled backend's kernels share one OpenMP pool whose
threads split every parallel loop evenly and spin before they sleep. When other work holds one
of the cores, each loop waits for the thread that is not running: a run with as many threads
as cores then slows down many times over, where one thread per busy core less does not. So by
default a run takes the cores it may use (``os.sched_getaffinity``) less those the load
average shows busy, at least one (``default_threads``), decided once when it starts;
``--threads`` overrides it, and so does ``OMP_NUM_THREADS`` (torchrun sets it to 1). A
resumed run keeps the thread count it started with: results depend on it at the level of
float rounding; ``OMP_NUM_THREADS`` still wins over it (a resumed run under torchrun, or with
the variable set, follows that launch).

Compiling ahead. The compiled CPU backend (``wavkan.cpu``) compiles each pass on its first
call. ``compile_ahead`` makes those calls before the first epoch, on a batch of the run's
shape and without touching the model's state, so the first epoch's time is training alone
and the compilation is reported as part of the start-up. ``CompileAhead`` does it in a
background thread, on a stand-in model of the run's architecture, while the main thread loads
the data: the compiled passes are kept per process (``wavkan.cpu``), so the run's own model
then finds them compiled. Its first calls are the ones ``compile_ahead`` makes on the run's
model (same shapes, same order, same thread count), so the compiled code is the same. The
thread also starts Inductor's probe of the CPU's vector instructions (one small process per
instruction set, a second or so of waiting) in a thread of its own, beside its imports.

The clock. ``StartupClock`` splits the time to the first epoch into named phases, printed in
one line; for the command it starts at the process's start (``/proc`` on Linux), so the
interpreter and the imports count too.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["available_cores", "default_threads", "omp_threads_set", "set_threads", "uses_compiled", "compile_ahead", "CompileAhead",
           "StartupClock", "process_age"]


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


def omp_threads_set() -> bool:
    """Whether ``OMP_NUM_THREADS`` gives a thread count (the user's, or torchrun's)."""
    return os.environ.get("OMP_NUM_THREADS", "").strip().isdigit()


def set_threads(threads: Optional[int]) -> str:
    """Set PyTorch's intra-op threads to ``threads`` (None: what ``OMP_NUM_THREADS`` says, else
    ``default_threads()``); returns a note for the log saying how many and why."""
    if threads is None and omp_threads_set():
        # The user's (or torchrun's) setting: torch read it when it loaded, and a thread count
        # set since (a run before this one in the same process) is set back to it.
        n, why = max(1, int(os.environ["OMP_NUM_THREADS"])), "OMP_NUM_THREADS"
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


def _start_vector_isa_probe() -> Optional[threading.Thread]:
    """Inductor's choice of vector instructions, made once per process, started in a thread: it
    builds (cached on disk) and loads a small library per instruction set, each in a child
    process. The result is the same whenever it is computed; computed here, the waiting
    overlaps the imports. None where this PyTorch has no such probe (Inductor probes on first
    use, as before)."""
    try:  # imported here, in this thread: two threads importing one package may deadlock
        from torch._inductor.cpu_vec_isa import valid_vec_isa_list
    except ImportError:
        return None
    probe = threading.Thread(target=valid_vec_isa_list, name="wavkan-isa-probe", daemon=True)
    probe.start()
    return probe


class CompileAhead:
    """``compile_ahead(make_model(), batch)`` in a background thread, where ``batch`` is zeros
    of ``shape`` (a training batch's: the values do not matter, the shapes and dtype do).

    ``make_model`` runs in the calling thread, at once: the stand-in model's random
    initialisation draws from the global generator before the run seeds it. Dynamo saves and
    restores the global RNG state around each compilation, so ``join()`` must come before
    the run seeds the generator and draws its own weights. The thread count must be set
    before (Inductor compiles for it). A failure in the thread is kept in ``error`` and not
    raised: the run's own ``compile_ahead`` then compiles inline, and fails there if it must.
    """

    def __init__(self, make_model: Callable[[], nn.Module], shape: tuple, dtype: torch.dtype = torch.float32):
        self.model = make_model()
        self.shape, self.dtype = tuple(shape), dtype
        self.error: Optional[BaseException] = None
        self.seconds: Optional[float] = None
        self._thread = threading.Thread(target=self._run, name="wavkan-compile-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            probe = _start_vector_isa_probe()
            import torch._inductor.compile_fx  # noqa: F401  (beside the probe's child processes)

            if probe is not None:  # the compilation needs its answer (else it would probe again)
                probe.join()
            compile_ahead(self.model, torch.zeros(self.shape, dtype=self.dtype))
        except BaseException as e:  # noqa: BLE001  reported by the inline compile_ahead, if at all
            self.error = e
        finally:
            self.seconds = time.perf_counter() - t0
            self.model = None

    def join(self) -> "CompileAhead":
        self._thread.join()
        return self


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
        self.notes: list[str] = []

    def phase(self, name: str) -> None:
        """End the current phase under ``name``; a name used before adds to that phase."""
        now = time.perf_counter()
        names = [n for n, _ in self.phases]
        if name in names:
            k = names.index(name)
            self.phases[k] = (name, self.phases[k][1] + now - self.last)
        else:
            self.phases.append((name, now - self.last))
        self.last = now

    def note(self, text: str) -> None:
        """A remark for the end of the line (say, work done beside a phase)."""
        self.notes.append(text)

    @property
    def total(self) -> float:
        return (self.before or 0.0) + sum(s for _, s in self.phases)

    def summary(self) -> str:
        parts = ([("python and imports", self.before)] if self.before is not None else []) + self.phases
        text = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in parts if seconds >= 0.05)
        since = "the process's start" if self.before is not None else "the train() call"
        notes = "".join(f"; {n}" for n in self.notes)
        return f"start-up: {self.total:.1f} s from {since} to the first epoch ({text}){notes}"
