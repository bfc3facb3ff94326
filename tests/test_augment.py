"""Device augmentation: a flip is a flip, a crop is a shifted window with zeros outside the
image, the draws depend on (seed, epoch) alone."""

from __future__ import annotations

import pytest
import torch

from wavkan.app.augment import CROP_PADDING, EpochAugment, augment_draws, crop_flip


def shifted(image, dy, dx):
    """out[c, i, j] = image[c, i + dy, j + dx], zero where that falls outside: a plain loop."""
    C, H, W = image.shape
    out = torch.zeros_like(image)
    for i in range(H):
        for j in range(W):
            if 0 <= i + dy < H and 0 <= j + dx < W:
                out[:, i, j] = image[:, i + dy, j + dx]
    return out


@pytest.fixture
def images():
    return torch.rand(81, 3, 7, 6) + 0.5  # no pixel is 0, so padding zeros are visible


def test_flip_alone_is_a_mirror(images):
    n = len(images)
    out = crop_flip(images, torch.zeros(n, 2, dtype=torch.int64), torch.ones(n, dtype=torch.bool))
    assert torch.equal(out, images.flip(-1))
    same = crop_flip(images, torch.zeros(n, 2, dtype=torch.int64), torch.zeros(n, dtype=torch.bool))
    assert torch.equal(same, images)


def test_every_shift_is_a_window_of_the_zero_padded_image(images):
    shifts = torch.tensor([(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)])  # 81 shifts, one per image
    flip = torch.zeros(81, dtype=torch.bool)
    flip[::2] = True
    out = crop_flip(images, shifts, flip)
    for b, (dy, dx) in enumerate(shifts.tolist()):
        expected = shifted(images[b], dy, dx)
        if flip[b]:
            expected = expected.flip(-1)  # shift, then mirror
        assert torch.equal(out[b], expected), (b, dy, dx)
    # The largest shift (4, 4) keeps 7 - 4 = 3 rows and 6 - 4 = 2 columns, mirrored to the right.
    corner = out[shifts.tolist().index([4, 4])]
    assert flip[80] and (corner[:, :3, 4:] > 0).all()
    assert (corner[:, 3:] == 0).all() and (corner[:, :, :4] == 0).all()


def test_crop_flip_keeps_dtype_and_rejects_bad_shapes(images):
    half = images[:4].to(torch.bfloat16)
    out = crop_flip(half, torch.full((4, 2), 1), torch.tensor([True, False, True, False]))
    assert out.dtype == torch.bfloat16 and out.is_contiguous()
    with pytest.raises(ValueError, match=r"expects images \(B, C, H, W\)"):
        crop_flip(images[0], torch.zeros(1, 2, dtype=torch.int64), torch.zeros(1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected shift \(B, 2\) and flip \(B,\) for B=81"):
        crop_flip(images, torch.zeros(80, 2, dtype=torch.int64), torch.zeros(81, dtype=torch.bool))


def test_draws_depend_on_seed_and_epoch_only():
    a_shift, a_flip = augment_draws(5000, seed=3, epoch=2)
    torch.manual_seed(123)  # the global RNG plays no part
    b_shift, b_flip = augment_draws(5000, seed=3, epoch=2)
    assert torch.equal(a_shift, b_shift) and torch.equal(a_flip, b_flip)
    c_shift, c_flip = augment_draws(5000, seed=3, epoch=3)
    d_shift, _ = augment_draws(5000, seed=4, epoch=2)
    assert not torch.equal(a_shift, c_shift) and not torch.equal(a_flip, c_flip) and not torch.equal(a_shift, d_shift)
    # Every shift in [-4, 4] on both axes, and both flips, are drawn, about uniformly.
    assert a_shift.min() == -CROP_PADDING and a_shift.max() == CROP_PADDING
    counts = torch.bincount((a_shift + CROP_PADDING).flatten(), minlength=9).double() / a_shift.numel()
    assert (counts - 1 / 9).abs().max() < 0.02
    assert 0.45 < a_flip.double().mean() < 0.55


def test_epoch_augment_follows_the_sample_not_the_batch(images):
    """Image i gets the same draws whichever batch (or DDP share) it is trained in."""
    n = len(images)
    aug = EpochAugment(n, seed=7, device="cpu")
    aug.set_epoch(5)
    shift, flip = augment_draws(n, seed=7, epoch=5)
    idx = torch.randperm(n)
    batch = aug(images[idx[:20]], idx[:20])
    assert torch.equal(batch, crop_flip(images[idx[:20]], shift[idx[:20]], flip[idx[:20]]))
    halves = [aug(images[i], i) for i in idx[:20].tensor_split(2)]
    assert torch.equal(torch.cat(halves), batch)
    before = aug.shift.data_ptr()
    aug.set_epoch(6)
    assert aug.shift.data_ptr() == before  # buffers refilled in place
    assert not torch.equal(aug(images[idx[:20]], idx[:20]), batch)
