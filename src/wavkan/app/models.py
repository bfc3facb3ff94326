"""The networks the application trains beyond the paper's MLP: a convolutional Wav-KAN.

``WavKANConvNet`` is shaped like torch-conv-kan's 8-layer Wav-KAN net for CIFAR: eight blocks of
3x3 convolutions (padding 1), widths ``DEFAULT_CONV_WIDTHS`` = 16, 32, 64, 128, 256, 256, 512,
512 with strides ``DEFAULT_CONV_STRIDES`` = 1, 2, 2, 1, 1, 2, 1, 1 (32x32 -> 4x4), global
average pooling, and a ``WavKANLinear`` head. Each block (``WavKANConvBlock``) is

    y = BatchNorm2d(conv3x3(SiLU(x)) + conv1x1(WavKANConv2d(x)))

the base branch (a plain convolution of SiLU(x)), the wavelet convolution, a 1x1 mix of its
channels, and BatchNorm over their sum. The net takes images (B, C, H, W) with values in
[0, 1] and normalises them per channel with buffers ``input_mean`` / ``input_std``, set from
the training images when a run starts (``set_input_stats``) and saved in its state_dict, so a
checkpoint scores the same on any machine.

Also here: the run-config fields of each model type (``resolve_model_fields``), the check that
a dataset fits a conv net, and the device tensors a conv net trains on (``to_device_images``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import DataMismatchError, DeviceData, RawData

__all__ = [
    "DEFAULT_CONV_WIDTHS",
    "DEFAULT_CONV_STRIDES",
    "MODEL_KINDS",
    "WavKANConvBlock",
    "WavKANConvNet",
    "default_model",
    "resolve_model_fields",
    "check_conv_fits",
    "to_device_images",
    "channel_stats",
]

DEFAULT_CONV_WIDTHS = (16, 32, 64, 128, 256, 256, 512, 512)
DEFAULT_CONV_STRIDES = (1, 2, 2, 1, 1, 2, 1, 1)
MODEL_KINDS = ("mlp", "conv")
# Datasets whose default model is the conv net.
_CONV_DATASETS = ("cifar10",)


class WavKANConvBlock(nn.Module):
    """``BatchNorm2d(conv(SiLU(x)) + conv1x1(WavKANConv2d(x)))``: (B, in, H, W) -> (B, out, H', W')."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, wavelet: str = "mexican_hat",
                 backend: str = "auto", kernel_size: int = 3):
        super().__init__()
        from ..nn import WavKANConv2d  # the library's layer; imported here so the app loads without it

        padding = kernel_size // 2
        self.base = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.wavelet = WavKANConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                    wavelet=wavelet, batch_norm=False, backend=backend)
        self.mix = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.base(F.silu(x)) + self.mix(self.wavelet(x)))


class WavKANConvNet(nn.Module):
    """Conv blocks of ``widths`` / ``strides``, global average pooling, a ``WavKANLinear`` head.

    Input (B, in_channels, H, W) in [0, 1], any H, W that the strides leave >= 1; output
    (B, num_classes) logits.
    """

    def __init__(
        self,
        widths: Sequence[int] = DEFAULT_CONV_WIDTHS,
        strides: Sequence[int] = DEFAULT_CONV_STRIDES,
        in_channels: int = 3,
        num_classes: int = 10,
        wavelet: str = "mexican_hat",
        backend: str = "auto",
    ):
        super().__init__()
        from ..nn import WavKANLinear

        widths, strides = [int(w) for w in widths], [int(s) for s in strides]
        _check_widths_strides(widths, strides)
        self.widths, self.strides = widths, strides
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.register_buffer("input_mean", torch.full((in_channels,), 0.5))
        self.register_buffer("input_std", torch.full((in_channels,), 0.25))
        chans = [self.in_channels] + widths
        self.blocks = nn.Sequential(*(WavKANConvBlock(i, o, s, wavelet, backend)
                                      for i, o, s in zip(chans[:-1], chans[1:], strides)))
        self.head = WavKANLinear(widths[-1], self.num_classes, wavelet, backend=backend)

    @torch.no_grad()
    def set_input_stats(self, mean: Tensor, std: Tensor) -> None:
        """The per-channel mean and standard deviation (C,) of the training images in [0, 1]."""
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(1e-3))  # a constant channel must not divide by zero

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x = (x - self.input_mean[:, None, None]) / self.input_std[:, None, None]
        x = self.blocks(x)
        return self.head(x.mean(dim=(2, 3)))


def _check_widths_strides(widths, strides) -> None:
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"conv widths must be one or more ints >= 1, got {widths}")
    if len(strides) != len(widths) or any(s < 1 for s in strides):
        raise ValueError(f"conv strides must be {len(widths)} ints >= 1 (one per width {widths}), got {strides}")


# --- run-config fields ----------------------------------------------------------------------------


def default_model(dataset: str) -> str:
    """"conv" for CIFAR-10, "mlp" (the paper's network) for everything else."""
    return "conv" if dataset in _CONV_DATASETS else "mlp"


def resolve_model_fields(config: dict) -> dict:
    """``config`` with its model fields filled in: ``model`` (None: ``default_model``), and for
    a conv net ``conv_widths`` / ``conv_strides`` (None: the defaults) and ``augment`` (None: on
    for conv, off for mlp). A config saved without these fields (an MLP run) reads as the MLP.
    Raises ValueError on an unknown model or widths and strides that do not pair up."""
    c = dict(config)
    kind = c.get("model") or default_model(c.get("dataset", ""))
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    c["model"] = kind
    if kind == "conv":
        widths = list(c.get("conv_widths") or DEFAULT_CONV_WIDTHS)
        strides = c.get("conv_strides")
        if strides is None:
            strides = list(DEFAULT_CONV_STRIDES) if len(widths) == len(DEFAULT_CONV_STRIDES) else [1] * len(widths)
        c["conv_widths"], c["conv_strides"] = [int(w) for w in widths], [int(s) for s in strides]
        _check_widths_strides(c["conv_widths"], c["conv_strides"])
    else:
        if c.get("conv_widths") is not None or c.get("conv_strides") is not None:
            raise ValueError("--conv-widths / --conv-strides apply to --model conv only")
        c["conv_widths"] = c["conv_strides"] = None
    if c.get("augment") is None:
        c["augment"] = kind == "conv"
    elif c["augment"] and kind != "conv":
        raise ValueError("--augment (random crop and flip of images) applies to --model conv only")
    return c


def check_conv_fits(config: dict, data: DeviceData, dataset: str) -> None:
    """The images must have the net's channels; the labels must fit its classes."""
    if data.train_x.dim() != 4:
        raise DataMismatchError(f"the conv net needs images (N, C, H, W); {dataset} gives {tuple(data.train_x.shape)}")
    channels = data.train_x.shape[1]
    if channels != config.get("in_channels", channels):
        raise DataMismatchError(f"the conv net takes {config['in_channels']} channels, but {dataset} has {channels}")
    if data.num_classes > config.get("num_classes", data.num_classes):
        raise DataMismatchError(f"the conv net has {config['num_classes']} outputs, but the labels of {dataset} "
                                f"have {data.num_classes} classes")


# --- device tensors -------------------------------------------------------------------------------


def _nchw(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> (N, 1, H, W); (N, H, W, C) -> (N, C, H, W); (N, C, H, W) with C of 1
    or 3 and a last dim that is not (an npz in channel-first layout) stays."""
    if images.ndim == 3:
        return images[:, None]
    if images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
        return images
    return images.transpose(0, 3, 1, 2)


def to_device_images(
    raw: RawData, device, limit_train: Optional[int] = None, limit_test: Optional[int] = None
) -> DeviceData:
    """Images as float32 (N, C, H, W) in [0, 1] and int64 labels (N,) on ``device``.

    ``limit_*`` keeps the first N samples of a split. The uint8 images travel to the device
    and are converted there (a quarter of the float bytes cross the bus).
    """

    def split(images, labels, limit):
        if limit is not None:
            if limit < 1:
                raise ValueError(f"a sample limit must be >= 1, got {limit}")
            images, labels = images[:limit], labels[:limit]
        x = torch.from_numpy(np.ascontiguousarray(_nchw(images))).to(device)
        x = x.to(torch.float32).div_(255.0)
        y = torch.from_numpy(labels.astype(np.int64)).to(device)
        return x, y

    return DeviceData(*split(raw.train_images, raw.train_labels, limit_train),
                      *split(raw.test_images, raw.test_labels, limit_test))


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (population) standard deviation (C,) of images (N, C, H, W)."""
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)  # no copy of the images
    return mean, var.sqrt()
