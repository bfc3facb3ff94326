"""Launch planning without a GPU: the split rule and the occupancy cache behind it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from wavkan.kernels import launch, tuning

CPU = torch.device("cpu")


def test_choose_split_fills_one_wave():
    # Under the interpreter the device counts as one SM, so the slots are ``resident``.
    assert launch.choose_split(tiles=3, loop_len=1024, device=CPU, resident=10) == 3  # 9 programs <= 10
    assert launch.choose_split(tiles=10, loop_len=1024, device=CPU, resident=10) == 1  # tiles fill it
    assert launch.choose_split(tiles=1, loop_len=64, device=CPU, resident=100) == 2  # >= 32 steps each
    assert launch.choose_split(tiles=1, loop_len=10, device=CPU, resident=100) == 1
    assert launch.choose_split(tiles=5, loop_len=10, device=CPU, resident=4, split=20) == 10  # explicit, capped


class _FakeKernel:
    """Stands in for a JITFunction: ``warmup`` returns a compiled kernel with ``n_regs``
    registers per thread when B (the first int argument) is 1, else ``regs``."""

    def __init__(self, regs: int, warps: int = 4):
        self.regs, self.warps, self.compiles = regs, warps, 0

    def warmup(self, *args, grid, **meta):
        self.compiles += 1
        n_regs = 40 if args[1] == 1 else self.regs
        return SimpleNamespace(_init_handles=lambda: None, n_regs=n_regs, metadata=SimpleNamespace(num_warps=self.warps))


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(launch, "_sm_limits", lambda index: (65536, 64))
    monkeypatch.setattr(launch, "_RESIDENT", {})
    return torch.device("cuda", 0)


def test_resident_programs_from_registers(fake_gpu):
    x = torch.zeros(8, 8)
    kernel = _FakeKernel(regs=128)  # 128 x 32 = 4096 registers per warp: 16 warps, 4 programs of 4
    assert launch.resident_programs(kernel, (1, 1, 1), (x, 4096), {"BLOCK": 64}, fake_gpu, fallback=99) == 4
    assert launch.resident_programs(kernel, (1, 1, 1), (x, 4096), {"BLOCK": 64}, fake_gpu, fallback=99) == 4
    assert kernel.compiles == 1  # cached
    kernel.regs = 255  # a different meta compiles again: 256 x 32 per warp, 8 warps, 2 programs
    assert launch.resident_programs(kernel, (1, 1, 1), (x, 4096), {"BLOCK": 128}, fake_gpu, fallback=99) == 2


def test_resident_programs_keyed_on_specialisation(fake_gpu):
    """A B = 1 binary (fewer registers) must not decide the split of B = 4096 calls."""
    x = torch.zeros(8, 8)
    kernel = _FakeKernel(regs=128)
    small = launch.resident_programs(kernel, (1, 1, 1), (x, 1), {}, fake_gpu, fallback=99)
    large = launch.resident_programs(kernel, (1, 1, 1), (x, 4096), {}, fake_gpu, fallback=99)
    assert (small, large) == (12, 4) and kernel.compiles == 2  # 40 regs: 48 warps by registers, 64/4 = 16 cap
    half = launch.resident_programs(kernel, (1, 1, 1), (x.half(), 4096), {}, fake_gpu, fallback=99)
    assert half == 4 and kernel.compiles == 3  # another pointer dtype is another binary


def test_resident_programs_falls_back_without_registers(fake_gpu):
    kernel = SimpleNamespace(warmup=lambda *a, grid, **m: None)  # e.g. a cache hook returned nothing
    assert launch.resident_programs(kernel, (1, 1, 1), (3,), {}, fake_gpu, fallback=7) == 7
    assert launch.resident_programs(kernel, (1, 1, 1), (3,), {}, CPU, fallback=5) == 5


def test_plan_split_shares_whole_steps():
    """The split of a loop into per-program shares: whole ``step``s each (here 16-step chunks),
    at least ``min_per_split`` steps, no empty share."""
    cfg = tuning.KernelConfig(16, 16)  # 4 programs per SM where residency cannot be measured
    assert launch.plan_split(None, (1, 1), 1024, (), {}, CPU, cfg) == (4, 256)
    assert launch.plan_split(None, (1, 1), 160, (), {}, CPU, cfg, step=16, min_per_split=2) == (4, 48)
    assert launch.plan_split(None, (1, 1), 100, (), {}, CPU, cfg, step=16, min_per_split=2) == (3, 48)
    assert launch.plan_split(None, (2, 2), 1024, (), {}, CPU, cfg) == (1, 1024)  # the tiles fill it
    for loop_len in (1, 15, 17, 33, 1000):
        split, per_split = launch.plan_split(None, (1, 1), loop_len, (), {}, CPU, cfg, step=16, min_per_split=1)
        assert per_split % 16 == 0 and (split - 1) * per_split < loop_len <= split * per_split


def test_balanced_split(fake_gpu, monkeypatch):
    """The "balance" rule on a 132-SM GPU: at most 2 programs per SM, of >= 16 steps, while the
    tiles are fewer than the SMs; about 16 per SM of >= 128 steps (at most 4 splits) after."""
    monkeypatch.setattr(launch, "_sm_count", lambda index: 132)
    assert launch.balanced_split(32, 1024, fake_gpu) == 8  # 256 programs (9 would run 3 deep on some SMs)
    assert launch.balanced_split(16, 1024, fake_gpu) == 16
    assert launch.balanced_split(4, 1024, fake_gpu) == 64  # 16 steps each, not 66
    assert launch.balanced_split(64, 128, fake_gpu) == 4
    assert launch.balanced_split(128, 1024, fake_gpu) == 2
    assert launch.balanced_split(200, 1024, fake_gpu) == 4  # one tile per SM on: the large rule
    assert launch.balanced_split(512, 1024, fake_gpu) == 4  # 4096 rows: cdiv(2112, 512) = 5, capped
    assert launch.balanced_split(1024, 1024, fake_gpu) == 3
    assert launch.balanced_split(256, 128, fake_gpu) == 1  # loops under 2 x 128 steps stay whole
    assert launch.balanced_split(5000, 1024, fake_gpu) == 1
    assert launch.balanced_split(32, 1024, fake_gpu, split=5) == 5
    # plan_split under the rule, no kernel compiled: 16-step chunks count as steps.
    balance = tuning.KernelConfig(128, 64, split_rule="balance")
    assert launch.plan_split(None, (2, 16), 1024, (), {}, fake_gpu, balance) == (8, 128)
    assert launch.plan_split(None, (8, 4), 1024, (), {}, fake_gpu, balance, step=16) == (4, 256)
    with pytest.raises(ValueError, match="split_rule must be one of fill, balance, got 'balanced'"):
        tuning.KernelConfig(128, 64, split_rule="balanced")


def test_parameter_pass_splits_only_long_loops(fake_gpu, monkeypatch):
    """The parameter pass's shipped config on a 132-SM GPU: a 1024 x 1024 layer (256 tiles of
    64 x 64) stays whole below 1024 rows, where a split's three partial planes cost more than
    it gains, and splits in shares of >= 512 rows above; a layer of fewer tiles than SMs (the
    1024 -> 128 layer: 32) still splits to fill them."""
    monkeypatch.setattr(launch, "_sm_count", lambda index: 132)
    cfg = tuning.default_config("bwd_dparams", fake_gpu, 256)
    assert (cfg.block_m, cfg.block_n, cfg.split_rule, cfg.balance_min_steps) == (64, 64, "balance", 512)
    splits = {rows: launch.plan_split(None, (16, 16), rows, (), {}, fake_gpu, cfg)[0] for rows in (64, 256, 1023, 1024, 2048, 4096)}
    assert splits == {64: 1, 256: 1, 1023: 1, 1024: 2, 2048: 4, 4096: 4}
    assert launch.plan_split(None, (2, 16), 256, (), {}, fake_gpu, cfg) == (8, 32)
    # the large regime's least share: 128 steps unless the config says otherwise
    assert launch.balanced_split(256, 1024, fake_gpu) == 4
    assert launch.balanced_split(256, 1024, fake_gpu, large_min_steps=512) == 2
