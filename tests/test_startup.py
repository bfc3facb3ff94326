"""What a run does before its first epoch: threads, compiling ahead, the start-up line."""

from __future__ import annotations

import os

import pytest
import torch

from helpers import run_python
from wavkan import WavKAN
from wavkan.app import startup
from wavkan.app.train import main as train_main


@pytest.fixture
def fresh_threads(monkeypatch):
    """A clean once-per-process thread decision, and torch's thread count restored after."""
    before = torch.get_num_threads()
    monkeypatch.setattr(startup, "_auto_threads", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield monkeypatch
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("cores", "machine", "load", "expected"),
    [(2, 2, 0.2, 2), (2, 2, 0.9, 2), (2, 2, 1.0, 1), (2, 2, 1.7, 1), (2, 2, 6.0, 1), (4, 4, 1.2, 3), (2, 16, 4.0, 2), (2, 8, 4.0, 1)],
)
def test_default_threads_leave_busy_cores_alone(fresh_threads, cores, machine, load, expected):
    fresh_threads.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    fresh_threads.setattr(os, "cpu_count", lambda: machine)
    fresh_threads.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    threads, busy = startup.default_threads()
    assert threads == expected and busy == pytest.approx(load * cores / machine)
    fresh_threads.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert startup.default_threads()[0] == expected  # decided once per process


def test_set_threads(fresh_threads):
    assert startup.set_threads(3) == "3 threads: --threads" and torch.get_num_threads() == 3
    fresh_threads.setattr(os, "getloadavg", lambda: (50.0, 0.0, 0.0))
    note = startup.set_threads(None)
    assert torch.get_num_threads() == 1 and note.startswith("1 thread: ") and "from other work" in note
    torch.set_num_threads(2)
    fresh_threads.setenv("OMP_NUM_THREADS", "2")
    assert startup.set_threads(None) == "2 threads: OMP_NUM_THREADS" and torch.get_num_threads() == 2


def test_compile_ahead_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = WavKAN([40, 30, 7], "morlet", backend="compiled")
    model.layers[0].scale.grad = torch.full_like(model.layers[0].scale, 0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    startup.compile_ahead(model, torch.randn(64, 40))
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert torch.equal(model.layers[0].scale.grad, torch.full_like(model.layers[0].scale, 0.25))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "layers.0.scale")
    assert startup.uses_compiled(model) and not startup.uses_compiled(WavKAN([4, 3], backend="reference"))


def _step_outputs(model, x):
    """The model's output and every parameter's gradient for one forward and backward."""
    for p in model.parameters():
        p.grad = None
    y = model(x)
    y.square().sum().backward()
    return [y.detach().clone()] + [p.grad.clone() for p in model.parameters()]


def _fresh_compiled_passes():
    """As in a new process: no pass compiled yet (Dynamo's caches and the backend's table)."""
    from wavkan import cpu

    torch._dynamo.reset()
    cpu._compiled_for.cache_clear()


def test_compile_ahead_in_a_thread_computes_what_an_inline_compilation_does():
    layers, rows = [40, 24, 6], 32
    torch.manual_seed(3)
    model = WavKAN(layers, "mexican_hat", backend="compiled")
    x = torch.randn(rows, layers[0])

    _fresh_compiled_passes()
    startup.compile_ahead(model, x)
    inline = _step_outputs(model, x)

    _fresh_compiled_passes()
    rng = torch.get_rng_state()
    ahead = startup.CompileAhead(lambda: WavKAN(layers, "mexican_hat", backend="compiled"), (rows, layers[0]))
    ahead.join()
    assert ahead.error is None and ahead.seconds > 0 and ahead.model is None
    # Dynamo restores the global RNG state after compiling; the stand-in drew from it before.
    torch.set_rng_state(rng)
    from torch._dynamo.utils import counters

    compiled = counters["frames"]["ok"]
    assert compiled >= 3  # forward, grad_x, the parameters' pass
    startup.compile_ahead(model, x)  # finds every pass compiled by the thread
    threaded = _step_outputs(model, x)
    assert counters["frames"]["ok"] == compiled  # nothing compiled again
    assert all(torch.equal(a, b) for a, b in zip(inline, threaded))


def test_compile_ahead_thread_keeps_its_error():
    def broken():
        model = WavKAN([8, 3], backend="compiled")
        model.layers[0].forward = lambda x: (_ for _ in ()).throw(RuntimeError("no compiler"))
        return model

    ahead = startup.CompileAhead(broken, (4, 8)).join()
    assert isinstance(ahead.error, RuntimeError) and "no compiler" in str(ahead.error)


def test_startup_clock_phases(monkeypatch):
    assert 0 < startup.process_age() < 24 * 3600
    clock = startup.StartupClock(from_process_start=True)
    assert clock.before > 0
    clock.phases = [("data", 0.5), ("compilation", 2.25), ("tiny", 0.01)]
    line = clock.summary()
    assert line.startswith(f"start-up: {clock.before + 2.76:.1f} s from the process's start to the first epoch (")
    assert "data 0.5 s, compilation 2.2 s)" in line and "tiny" not in line
    assert startup.StartupClock().summary().startswith("start-up: 0.0 s from the train() call")
    clock = startup.StartupClock()
    clock.phases = [("data", 0.5)]
    clock.last -= 0.25
    clock.phase("data")  # a phase named again adds to the first
    clock.note("compiled beside the data in 3.0 s")
    assert clock.phases[0][0] == "data" and clock.phases[0][1] == pytest.approx(0.75, abs=0.05)
    assert clock.summary().endswith("(data 0.8 s); compiled beside the data in 3.0 s")


def test_train_command_reports_start_up_and_threads(tmp_path, capsys, fresh_threads):
    from test_train import synthetic_npz

    npz = synthetic_npz(tmp_path / "synth.npz")
    # As in a process of its own, the run compiles its passes: without this, passes that earlier
    # tests compiled in this process make the compilation phase too short to be reported.
    torch._dynamo.reset()
    args = ["--dataset", str(npz), "--layers", "64,12,4", "--epochs", "1", "--limit-train", "96",
            "--device", "cpu", "--no-progress", "--threads", "2", "--out", str(tmp_path / "run")]
    assert train_main(args) == 0
    out = capsys.readouterr().out
    assert "device cpu (2 threads: --threads), backend compiled" in out
    line = next(l for l in out.splitlines() if l.startswith("start-up: "))
    assert "from the process's start to the first epoch (python and imports " in line and "compilation" in line
    assert "; compiled beside the data in " in line  # a new CPU run compiles while its data load
    assert out.index("start-up: ") < out.index("epoch 1/1:")
    # The checkpoint records the thread count, which a resumed run keeps.
    torch.set_num_threads(1)
    assert train_main(args[:-5] + ["--epochs", "2", "--resume", "--out", str(tmp_path / "run")]) == 0
    assert "device cpu (2 threads: the resumed run's)" in capsys.readouterr().out


def test_exit_now_runs_the_exit_handlers_and_flushes(tmp_path):
    code = ("import atexit, sys\n"
            "from wavkan.cli import exit_now\n"
            "atexit.register(lambda: print('handler ran'))\n"
            "print('buffered', end='')\n"
            "sys.stderr.write('to stderr')\n"
            "exit_now(3)\n"
            "print('never')\n")
    run = run_python(code, timeout=60)
    assert run.returncode == 3
    assert run.stdout == "bufferedhandler ran\n" and run.stderr == "to stderr"


def test_import_wavkan_leaves_dynamo_inductor_and_triton_out():
    """``import wavkan`` costs about what ``import torch`` does: Dynamo, Inductor (which a
    triton op's definition imports), Triton, matplotlib and zarr come when something uses them."""
    code = ("import sys, wavkan\n"
            "heavy = ('torch._dynamo', 'torch._inductor', 'triton', 'matplotlib', 'zarr')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy[:2])))\n")
    run = run_python(code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
