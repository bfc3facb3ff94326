"""The run checkpoint: its format, its contents, and the models it can rebuild.

A checkpoint is one ``torch.save`` dict written atomically (``wavkan.files``): the run config,
the completed epoch, the metrics history, and the model, optimizer, scheduler and RNG states.
It holds tensors and plain types only, so ``load_checkpoint`` uses torch's safe (weights-only)
unpickler and a checkpoint loads on any device; ``torch.load(path)["model"]`` is a plain
``WavKAN`` state_dict.

Integrity: the dict carries ``sha256``, a digest of its own contents (every tensor's dtype,
shape and bytes, every other value's type and exact text; ``content_digest``). A checkpoint is
verified on every load: a file that is empty, not a torch file, of another format, lacking a
field, or whose contents no longer match the digest (a flipped bit inside a weight tensor loads
without complaint from torch) is refused with a ``CheckpointError`` naming the file and the
defect. A new checkpoint replaces the old one only after its temp file has been read back and
verified (``atomic_write``'s ``verify``): until then the previous good checkpoint stays in
place, and one file, never a choice between two, is what a resumed run or ``wavkan evaluate``
reads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

from ..files import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_KEYS", "MODEL_TYPES", "CheckpointError", "content_digest", "save_checkpoint",
    "load_checkpoint", "build_model", "training_state", "restore_training_state",
]

# Bumped when the checkpoint's layout changes incompatibly. 2: the content digest.
CHECKPOINT_FORMAT = 2
# The fields of a training checkpoint (training_state), besides format and sha256.
CHECKPOINT_KEYS = ("config", "epoch", "history", "model", "optimizer", "scheduler", "rng", "world_size")


class CheckpointError(ValueError):
    """A file that is not an intact wavkan checkpoint; the message names the file and the defect."""


def _digest_into(h, value) -> None:
    # Type tags keep 1, 1.0, True and "1" apart; containers are length-prefixed.
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}:".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _digest_into(h, key)
            _digest_into(h, value[key])
    elif isinstance(value, (list, tuple)):  # torch.load may return either for a saved tuple
        h.update(f"L{len(value)}:".encode())
        for item in value:
            _digest_into(h, item)
    elif value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)  # exact for floats (shortest round-trip), and nan/inf included
        h.update(f"{type(value).__name__}{len(text)}:{text}".encode())
    else:
        raise TypeError(f"a checkpoint holds tensors and plain values, not {type(value).__name__}")


def content_digest(state: dict) -> str:
    """sha256 (hex) of a checkpoint dict's contents, its ``sha256`` entry left out."""
    h = hashlib.sha256()
    _digest_into(h, {k: v for k, v in state.items() if k != "sha256"})
    return h.hexdigest()


def save_checkpoint(path, state: dict) -> Path:
    """``torch.save(state + its sha256)`` to ``path`` atomically; the temp file is read back and
    verified before it replaces ``path`` (CheckpointError otherwise, ``path`` untouched)."""
    state = {**state, "format": CHECKPOINT_FORMAT}
    state["sha256"] = content_digest(state)
    return atomic_write(path, lambda f: torch.save(state, f),
                        verify=lambda tmp: _read_verified(tmp, Path(path), state["sha256"]))


def load_checkpoint(path) -> dict:
    """A checkpoint written by ``save_checkpoint``, every tensor on the CPU, verified against its
    digest; CheckpointError (a ValueError) naming the file and the defect otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}" + (" (a folder)" if path.is_dir() else ""))
    state = _read_verified(path, path)
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint: lacks {', '.join(missing)}")
    if not isinstance(state["config"], dict) or not isinstance(state["model"], dict):
        raise CheckpointError(f"{path}: not a training checkpoint: config and model must be dicts")
    return state


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else ""
    line = line if len(line) <= 160 else line[:157] + "..."
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _read_verified(file: Path, name: Path, expected: str = None) -> dict:
    """Load ``file`` (reported as ``name``) and check its format and digest (and that the digest
    is ``expected``, when given)."""
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(f"{name}: empty file (0 bytes), not a checkpoint")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # whatever the bytes made torch's reader or unpickler raise
        raise CheckpointError(f"{name}: not a readable checkpoint ({_first_line(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{name}: not a wavkan checkpoint (a {type(state).__name__}, not a dict)")
    if state.get("format") != CHECKPOINT_FORMAT:
        found = f"format {state['format']!r}" if "format" in state else "no format field"
        if state.get("format") == 1 and all(k in state for k in CHECKPOINT_KEYS):
            found += ": written by an earlier wavkan, with no checksum to verify it by"
        raise CheckpointError(f"{name}: not a wavkan checkpoint of format {CHECKPOINT_FORMAT} ({found})")
    stored = state.get("sha256")
    if not isinstance(stored, str):
        raise CheckpointError(f"{name}: no content checksum (sha256); the file is not a complete checkpoint")
    try:
        actual = content_digest(state)
    except TypeError as e:
        raise CheckpointError(f"{name}: unexpected contents ({e})") from None
    if actual != stored or (expected is not None and actual != expected):
        raise CheckpointError(f"{name}: corrupt: its contents do not match their checksum "
                              f"(stored sha256 {stored[:12]}..., contents {actual[:12]}...)")
    return state


# --- the models a run config names ----------------------------------------------------------


def _wavkan_mlp(config: dict, backend: str):
    from ..nn import WavKAN  # here, so that reading a checkpoint's metadata does not import the model

    return WavKAN(list(config["layers"]), wavelet=config["wavelet"], backend=backend)


def _wavkan_conv(config: dict, backend: str):
    from .models import WavKANConvNet

    return WavKANConvNet(config["conv_widths"], config["conv_strides"], in_channels=config.get("in_channels", 3),
                         num_classes=config.get("num_classes", 10), wavelet=config["wavelet"], backend=backend)


# config["model"] -> builder(config, backend). A new model type is one entry here.
MODEL_TYPES = {"mlp": _wavkan_mlp, "conv": _wavkan_conv}


def build_model(config: dict, backend: str = "auto"):
    """An untrained model of a run's config (``model``, default "mlp": ``WavKAN(layers,
    wavelet)``; "conv": ``WavKANConvNet(conv_widths, conv_strides, in_channels, num_classes,
    wavelet)``), on the CPU. Seed the RNG first for a reproducible initialisation; a
    checkpoint's weights replace it."""
    kind = config.get("model", "mlp")
    try:
        builder = MODEL_TYPES[kind]
    except KeyError:
        raise ValueError(f"unknown model type {kind!r}; expected one of {', '.join(MODEL_TYPES)}") from None
    return builder(config, backend)


# --- the training state ---------------------------------------------------------------------


def _plain(value):
    """0-d tensors (a tensor lr, a scheduler's last lr) as floats: device-free, loadable anywhere."""
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _optimizer_state(optimizer) -> dict:
    state = optimizer.state_dict()
    groups = [{k: (_plain(v) if k in ("lr", "initial_lr") else v) for k, v in g.items()} for g in state["param_groups"]]
    return {"state": state["state"], "param_groups": groups}


def _load_optimizer_state(optimizer, saved: dict) -> None:
    # The saved groups carry the saving run's flags (capturable, foreach); this run's flags
    # win, and they also decide where AdamW's step counters are put on load.
    groups = []
    for saved_group, group in zip(saved["param_groups"], optimizer.param_groups):
        g = dict(saved_group)
        for key in ("capturable", "foreach", "fused", "differentiable"):
            if key in group:
                g[key] = group[key]
        groups.append(g)
    optimizer.load_state_dict({"state": saved["state"], "param_groups": groups})


def _scheduler_state(scheduler) -> dict:
    return {k: _plain(v) for k, v in scheduler.state_dict().items()}


def _rng_state(device: torch.device) -> dict:
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(saved: dict, device: torch.device) -> None:
    torch.set_rng_state(saved["torch"])
    if device.type == "cuda" and len(saved["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(saved["cuda"])


def training_state(config: dict, epoch: int, history: list, model, optimizer, scheduler, device, world_size: int) -> dict:
    """The checkpoint of a run after ``epoch`` completed epochs."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "epoch": epoch,
        "history": history,
        "model": model.state_dict(),
        "optimizer": _optimizer_state(optimizer),
        "scheduler": _scheduler_state(scheduler),
        "rng": _rng_state(device),
        "world_size": world_size,
    }


def restore_training_state(saved: dict, model, optimizer, scheduler, device) -> tuple:
    """Load a checkpoint's states into a freshly built run; returns (epoch, history)."""
    model.load_state_dict(saved["model"])
    _load_optimizer_state(optimizer, saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    _set_rng_state(saved["rng"], device)
    return int(saved["epoch"]), list(saved["history"])
