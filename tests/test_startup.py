"""What a run does before its first epoch: threads, compiling ahead, the start-up line."""

from __future__ import annotations

import os

import pytest
import torch

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


def test_startup_clock_phases(monkeypatch):
    assert 0 < startup.process_age() < 24 * 3600
    clock = startup.StartupClock(from_process_start=True)
    assert clock.before > 0
    clock.phases = [("data", 0.5), ("compilation", 2.25), ("tiny", 0.01)]
    line = clock.summary()
    assert line.startswith(f"start-up: {clock.before + 2.76:.1f} s from the process's start to the first epoch (")
    assert "data 0.5 s, compilation 2.2 s)" in line and "tiny" not in line
    assert startup.StartupClock().summary().startswith("start-up: 0.0 s from the train() call")


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
    assert out.index("start-up: ") < out.index("epoch 1/1:")
    # The checkpoint records the thread count, which a resumed run keeps.
    torch.set_num_threads(1)
    assert train_main(args[:-5] + ["--epochs", "2", "--resume", "--out", str(tmp_path / "run")]) == 0
    assert "device cpu (2 threads: the resumed run's)" in capsys.readouterr().out
