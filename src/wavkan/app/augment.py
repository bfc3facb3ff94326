"""Standard CIFAR augmentation on the device: random crop with zero padding, horizontal flip.

Each training image gets, once per epoch, a shift (dy, dx) in [-pad, pad] and a flip bit,
drawn on the CPU from a generator seeded by (seed, epoch) alone and then moved to the device
(``EpochAugment``). A batch looks its rows' draws up by sample index, so the augmentation of
image i in epoch e is the same whichever batch, DDP rank or resumed process trains on it.

``crop_flip`` applies the draws to a whole batch with one gather (no per-image Python):
``out[b, c, i, j] = x[b, c, i + dy[b], j' + dx[b]]`` with ``j' = W - 1 - j`` when flipped, else
``j``, and zero where that pixel lies outside the image: the window of a zero-padded image,
shifted, then mirrored, as torchvision's ``RandomCrop(size, padding=pad)`` followed by
``RandomHorizontalFlip`` does on unnormalised images.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

__all__ = ["CROP_PADDING", "crop_flip", "augment_draws", "EpochAugment"]

CROP_PADDING = 4


def crop_flip(x: Tensor, shift: Tensor, flip: Tensor, pad: int = CROP_PADDING) -> Tensor:
    """Shift-with-zeros then mirror each image of a batch.

    x: (B, C, H, W); shift: (B, 2) int64 (dy, dx), each in [-pad, pad]; flip: (B,) bool.
    Returns a new contiguous (B, C, H, W) tensor of x's dtype on x's device. ``pad`` is fixed
    rather than read from ``shift``, so nothing waits for the device.
    """
    if x.dim() != 4:
        raise ValueError(f"crop_flip expects images (B, C, H, W), got {tuple(x.shape)}")
    B, C, H, W = x.shape
    if shift.shape != (B, 2) or flip.shape != (B,):
        raise ValueError(f"expected shift (B, 2) and flip (B,) for B={B}, got {tuple(shift.shape)} "
                         f"and {tuple(flip.shape)}")
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # zeros
    dev = x.device
    cols = torch.arange(W, device=dev)
    cols = torch.where(flip[:, None], W - 1 - cols, cols) + shift[:, 1:] + pad  # (B, W), mirrored read
    rows = torch.arange(H, device=dev)[None, :] + shift[:, :1] + pad  # (B, H)
    # One gather over the flattened padded plane: an index (B, 1, H*W) broadcast over channels.
    flat = (rows[:, :, None] * (W + 2 * pad) + cols[:, None, :]).reshape(B, 1, H * W)
    return padded.reshape(B, C, -1).gather(2, flat.expand(B, C, H * W)).reshape(B, C, H, W)


def _augment_seed(seed: int, epoch: int) -> int:
    # A stable hash of (seed, epoch), distinct from the shuffling's.
    digest = hashlib.sha256(f"wavkan-augment:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def augment_draws(n: int, seed: int, epoch: int, pad: int = CROP_PADDING) -> tuple[Tensor, Tensor]:
    """The draws of epoch ``epoch`` for n images: shift (n, 2) int64 in [-pad, pad], flip (n,) bool (CPU)."""
    g = torch.Generator(device="cpu").manual_seed(_augment_seed(seed, epoch))
    shift = torch.randint(-pad, pad + 1, (n, 2), generator=g)
    flip = torch.randint(0, 2, (n,), generator=g).bool()
    return shift, flip


class EpochAugment:
    """Per-epoch draws on the device, applied to rows ``idx`` of the training set.

    ``set_epoch(e)`` draws epoch e's shifts and flips and copies them into fixed device
    buffers in place; ``__call__(x, idx)`` augments the batch ``x`` (B, C, H, W) whose rows are
    the training images ``idx`` (B,).
    """

    def __init__(self, n: int, seed: int, device, pad: int = CROP_PADDING):
        self.n, self.seed, self.pad = n, seed, pad
        self.shift = torch.zeros((n, 2), dtype=torch.int64, device=device)
        self.flip = torch.zeros((n,), dtype=torch.bool, device=device)

    def set_epoch(self, epoch: int) -> None:
        shift, flip = augment_draws(self.n, self.seed, epoch, self.pad)
        self.shift.copy_(shift)
        self.flip.copy_(flip)

    def __call__(self, x: Tensor, idx: Tensor) -> Tensor:
        return crop_flip(x, self.shift.index_select(0, idx), self.flip.index_select(0, idx), self.pad)

