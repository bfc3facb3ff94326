"""The run checkpoint: its format, its contents, and the models it can rebuild.

A checkpoint is one ``torch.save`` dict written atomically (``wavkan.files``): the run config,
the completed epoch, the metrics history, and the model, optimizer, scheduler and RNG states.
It holds tensors and plain types only, so ``load_checkpoint`` uses torch's safe (weights-only)
unpickler and a checkpoint loads on any device.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..files import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT", "MODEL_TYPES", "save_checkpoint", "load_checkpoint", "build_model",
    "training_state", "restore_training_state",
]

# Bumped when the checkpoint's layout changes incompatibly.
CHECKPOINT_FORMAT = 1


def save_checkpoint(path, state: dict) -> Path:
    """``torch.save(state)`` to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path) -> dict:
    """A checkpoint written by ``save_checkpoint``, every tensor on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a wavkan checkpoint (format {CHECKPOINT_FORMAT})")
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
