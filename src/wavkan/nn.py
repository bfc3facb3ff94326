"""Wav-KAN modules with the paper's parameters, initialisation and state_dict keys."""

from __future__ import annotations

import math
import operator
from typing import Sequence

import torch
from torch import Tensor, nn

from .ops import BACKENDS, wavkan_linear
from .ops_conv import conv_arguments, int_tuple, wavkan_conv
from .wavelets import get_wavelet

__all__ = ["WavKANLinear", "WavKAN", "WavKANConv1d", "WavKANConv2d"]

# Saved by the paper's KANLinear but never used in its output; accepted on load and dropped.
_UNUSED_PAPER_KEYS = ("weight1",)


def _check_features(name: str, value) -> int:
    """value as a Python int: any integer type (numpy's included, as nn.Linear takes), >= 1."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return number


# The buffer that holds a layer's wavelet in its state_dict: the name's UTF-8 bytes as uint8, a
# tensor like every other entry (code that treats a state_dict as tensors keeps working; a
# module's .double()/.half() leaves integer buffers alone).
WAVELET_KEY = "wavelet_name"


def _encode_name(name: str, device=None) -> Tensor:
    return torch.tensor(list(name.encode()), dtype=torch.uint8, device=device)


def _decode_name(value):
    """The wavelet name a state_dict entry holds, or None if it holds none."""
    if not isinstance(value, Tensor) or value.dtype != torch.uint8 or value.dim() != 1 or value.is_meta:
        return None
    try:
        return bytes(value.tolist()).decode()
    except UnicodeDecodeError:
        return None


def _reset_wavelet_parameters(module) -> None:
    """The paper's initialisation: scale ones, translation zeros, ``kaiming_uniform_(a=sqrt(5))``
    on the weights (whatever their shape: fan_in is their second dim times the rest), and a
    fresh BatchNorm; the wavelet's name written into its buffer again (built on the meta
    device and moved with ``to_empty``, as ``nn.utils.skip_init`` does, the buffer holds
    whatever memory it got)."""
    with torch.no_grad():
        module.scale.fill_(1.0)
        module.translation.zero_()
        name = getattr(module, WAVELET_KEY)
        name.copy_(_encode_name(module.wavelet, "cpu").to(name.device))
    nn.init.kaiming_uniform_(module.wavelet_weights, a=math.sqrt(5))
    if module.bn is not None:
        module.bn.reset_parameters()


class _WaveletModule(nn.Module):
    """What the linear and convolutional layers share: the wavelet and the backend, checked once,
    and the wavelet kept in the state_dict (the buffer ``WAVELET_KEY``, the name's bytes as
    uint8). Loading a state_dict of another wavelet's layer is refused by name, strict or not;
    one without the buffer (the paper's, or saved before the layer had it) loads as before."""

    def _init_wavelet(self, wavelet: str, backend: str, device=None) -> None:
        self.wavelet = get_wavelet(wavelet).name
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.register_buffer(WAVELET_KEY, _encode_name(self.wavelet, device))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # fmt: skip
        key = prefix + WAVELET_KEY
        if self._buffers.get(WAVELET_KEY) is None:  # a module pickled whole before layers kept it
            self.register_buffer(WAVELET_KEY, _encode_name(self.wavelet, self.scale.device))
        own = getattr(self, WAVELET_KEY)
        if key not in state_dict:
            # No wavelet saved (the paper's state_dict, or an older checkpoint): the layer's own,
            # where the saved parameters live (a meta-built model loaded with assign=True takes
            # them, so a meta buffer would stay behind).
            where = state_dict.get(prefix + "scale")
            device = where.device if isinstance(where, Tensor) and own.is_meta else own.device
            state_dict[key] = own if device == own.device else _encode_name(self.wavelet, device)
        else:
            saved = _decode_name(state_dict[key])
            if saved != self.wavelet:
                error_msgs.append(
                    f"{key}: the state_dict is of a {saved!r} layer, this layer's wavelet is {self.wavelet!r}; "
                    f"build the model with wavelet={saved!r} to load it" if saved is not None
                    else f"{key}: expected the layer's wavelet name as uint8 bytes, got {state_dict[key]!r}")
                state_dict[key] = own
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)  # fmt: skip


class WavKANLinear(_WaveletModule):
    """A Wav-KAN layer: a learnable wavelet on every edge, then BatchNorm (as in the paper).

    Input (..., in_features), any leading dims like ``nn.Linear``; output (..., out_features).
    Parameters ``scale``, ``translation``, ``wavelet_weights``: (out_features, in_features),
    initialised to ones, zeros and ``kaiming_uniform_(a=sqrt(5))``. ``bn`` is a
    ``BatchNorm1d(out_features)`` over all leading dims; ``batch_norm=False`` leaves it out.

    The wavelet is part of the layer's state (the buffer ``wavelet_name``: the name's bytes as
    uint8): a state_dict of another wavelet's layer is refused by name. A state_dict without it
    (the paper's ``KANLinear``) loads as before.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        wavelet: str = "mexican_hat",
        batch_norm: bool = True,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_features = _check_features("in_features", in_features)
        self.out_features = _check_features("out_features", out_features)
        self._init_wavelet(wavelet, backend, device)
        factory = {"device": device, "dtype": dtype}
        shape = (self.out_features, self.in_features)
        self.scale = nn.Parameter(torch.ones(shape, **factory))
        self.translation = nn.Parameter(torch.zeros(shape, **factory))
        self.wavelet_weights = nn.Parameter(torch.empty(shape, **factory))
        self.bn = nn.BatchNorm1d(self.out_features, **factory) if batch_norm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_wavelet_parameters(self)

    def forward(self, x: Tensor) -> Tensor:
        y = wavkan_linear(x, self.scale, self.translation, self.wavelet_weights, self.wavelet, self.backend)
        if self.bn is None:
            return y
        if y.dim() == 2:  # the common case: no reshapes (each costs host time on an eager call)
            return self.bn(y)
        return self.bn(y.reshape(-1, self.out_features)).reshape(y.shape)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # fmt: skip
        for key in _UNUSED_PAPER_KEYS:
            state_dict.pop(prefix + key, None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"wavelet={self.wavelet!r}, batch_norm={self.bn is not None}, backend={self.backend!r}"
        )


class WavKAN(nn.Module):
    """The paper's network: a stack of ``WavKANLinear`` layers, ``layers.0``, ``layers.1``, ...

    ``layers_hidden`` lists the widths, e.g. [784, 32, 10]. No activation between layers: the
    wavelets are the nonlinearity. Every layer, the last included, ends in BatchNorm, as in the
    paper. A state_dict saved by the paper's ``KAN`` loads with ``load_state_dict``.
    ``backend`` goes to every layer (``WavKANLinear``).
    """

    def __init__(
        self,
        layers_hidden: Sequence[int],
        wavelet: str = "mexican_hat",
        batch_norm: bool = True,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if isinstance(layers_hidden, (str, bytes)) or not hasattr(layers_hidden, "__iter__"):
            raise TypeError(f"layers_hidden must be a sequence of layer widths such as [784, 32, 10], got {layers_hidden!r}")
        widths = [_check_features(f"layers_hidden[{k}]", width) for k, width in enumerate(layers_hidden)]
        if len(widths) < 2:
            raise ValueError(f"layers_hidden needs at least two widths (in, out), got {widths}")
        self.layers_hidden = widths
        self.layers = nn.ModuleList(
            WavKANLinear(i, o, wavelet, batch_norm, backend, device=device, dtype=dtype)
            for i, o in zip(widths[:-1], widths[1:])
        )

    @property
    def wavelet(self) -> str:
        return self.layers[0].wavelet

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


# --- convolutional layers ------------------------------------------------------------------


class _WavKANConvNd(_WaveletModule):
    """The convolutional layers' common part: parameters, initialisation, forward (see
    ``WavKANConv2d``); ``_NDIM`` and ``_BATCH_NORM`` set the rank."""

    _NDIM = 2
    _BATCH_NORM = nn.BatchNorm2d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        wavelet: str = "mexican_hat",
        batch_norm: bool = True,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_channels = _check_features("in_channels", in_channels)
        self.out_channels = _check_features("out_channels", out_channels)
        self.groups = _check_features("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by "
                             f"groups ({groups})")  # fmt: skip
        self.kernel_size = int_tuple("kernel_size", kernel_size, self._NDIM, 1)
        self.stride = int_tuple("stride", stride, self._NDIM, 1)
        self.dilation = int_tuple("dilation", dilation, self._NDIM, 1)
        self.padding = padding if isinstance(padding, str) else int_tuple("padding", padding, self._NDIM, 0)
        conv_arguments(self.kernel_size, self.stride, self.padding, self.dilation)  # checks "same" with stride
        self._init_wavelet(wavelet, backend, device)
        factory = {"device": device, "dtype": dtype}
        shape = (out_channels, in_channels // groups)
        self.scale = nn.Parameter(torch.ones(shape, **factory))
        self.translation = nn.Parameter(torch.zeros(shape, **factory))
        self.wavelet_weights = nn.Parameter(torch.empty(*shape, *self.kernel_size, **factory))
        self.bn = self._BATCH_NORM(out_channels, **factory) if batch_norm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The linear layer's initialisation: scale ones, translation zeros, and
        ``kaiming_uniform_(a=sqrt(5))`` on the weights, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        with fan_in = in_channels / groups * prod(kernel_size)."""
        _reset_wavelet_parameters(self)

    def forward(self, x: Tensor) -> Tensor:
        y = wavkan_conv(x, self.scale, self.translation, self.wavelet_weights, self.stride, self.padding,
                        self.dilation, self.groups, self.wavelet, self.backend)  # fmt: skip
        return y if self.bn is None else self.bn(y)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding!r}, dilation={self.dilation}, groups={self.groups}, wavelet={self.wavelet!r}, "
            f"batch_norm={self.bn is not None}, backend={self.backend!r}"
        )


class WavKANConv2d(_WavKANConvNd):
    """A 2-D convolutional Wav-KAN layer (torch-conv-kan's wavelet convolution), then BatchNorm2d.

    One learnable wavelet per (output channel, input channel of its group) pair, a weight per
    kernel tap: ``y[b,o,p] = sum_{i,k} w[o,i,k] psi((x[b,i,p*stride + k*dilation - pad] - t[o,i]) / s[o,i])``,
    taps outside the input adding nothing (``wavkan.ops_conv.wavkan_conv``). The arguments of
    ``nn.Conv2d`` (padding an int, a pair, "same" or "valid"; no bias: BatchNorm follows) and the
    linear layer's ``wavelet``, ``batch_norm``, ``backend``. Input (B, in_channels, H, W), any
    strides (channels-last included); output (B, out_channels, H_out, W_out). Parameters
    ``scale``, ``translation``: (out_channels, in_channels / groups); ``wavelet_weights``:
    (out_channels, in_channels / groups, kH, kW); ``bn``: ``BatchNorm2d(out_channels)`` or None.
    The wavelet is part of the state, as for the linear layer (the buffer ``wavelet_name``): a
    state_dict of another wavelet's layer is refused by name; one saved without it loads.

    For ``wavelet="shannon"`` the Hamming window runs over the ``in_channels / groups`` input
    channels of a group and multiplies the weights, as torch-conv-kan applies it to its per-group
    wavelet tensor. torch-conv-kan's whole layer adds a base branch ``conv(SiLU(x))`` and a 1x1
    mix around this wavelet convolution; compose them with ``nn`` modules where wanted.
    """

    _NDIM = 2
    _BATCH_NORM = nn.BatchNorm2d


class WavKANConv1d(_WavKANConvNd):
    """The 1-D convolutional Wav-KAN layer (see ``WavKANConv2d``): input (B, in_channels, L),
    output (B, out_channels, L_out); ``wavelet_weights``: (out_channels, in_channels / groups,
    k); ``bn``: ``BatchNorm1d(out_channels)`` or None."""

    _NDIM = 1
    _BATCH_NORM = nn.BatchNorm1d
