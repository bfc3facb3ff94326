"""Launch planning without a GPU: the "balance" split rule."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from wavkan import get_wavelet
from wavkan.kernels import launch, tuning


@pytest.fixture
def fake_gpu(monkeypatch):
    """A 132-SM GPU, as far as the split rule can tell."""
    monkeypatch.setattr(launch, "_sm_count", lambda index: 132)
    return torch.device("cuda", 0)


def test_balanced_split(fake_gpu):
    """The "balance" rule on a 132-SM GPU: while the tiles are fewer than the SMs, as many
    programs as the config's ``resident`` (2 by default) per SM, of >= 16 steps; about 16 per SM
    of >= 128 steps (at most 4 splits) after."""
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
    # the plan: equal shares, the last one shorter, none empty (an explicit 6 of 10 steps: 5 of 2)
    cfg = tuning.KernelConfig(128, 64)
    assert launch.balanced_plan(32, 1024, fake_gpu, cfg) == (8, 128)
    assert launch.balanced_plan(4, 100, fake_gpu, cfg) == (6, 17)
    assert launch.balanced_plan(32, 10, fake_gpu, cfg.with_split(6)) == (5, 2)
    # a config whose SM holds 3 programs: the small regime fills 3 per SM, the large one is unchanged
    assert launch.balanced_split(32, 1024, fake_gpu, resident=3) == 12  # 384 programs of 396
    assert launch.balanced_split(128, 1024, fake_gpu, resident=3) == 3
    assert launch.balanced_split(4, 1024, fake_gpu, resident=3) == 64  # still >= 16 steps each
    assert launch.balanced_split(512, 1024, fake_gpu, resident=3) == 4
    assert launch.balanced_plan(32, 1024, fake_gpu, replace(cfg, resident=3)) == (12, 86)


def test_forward_fills_the_programs_an_sm_holds(fake_gpu):
    """The forward's staged 128-row tiles (from 1024 rows; at most 155 registers, 4 warps: 3
    programs per SM) split to 3 programs per SM on a 132-SM GPU (384 programs, against 256 at 2),
    where it measured faster; at 256 rows, where it did not, 2; the other passes keep 2
    (grad_x's tiles take up to 188 registers: 2 fit)."""
    wav = get_wavelet("mexican_hat")
    for rows, tiles, resident in ((256, 2 * 16, 2), (1024, 8 * 16, 3)):
        cfg = tuning.default_config("fwd", fake_gpu, rows, wav)
        assert (cfg.block_m, cfg.block_n, cfg.resident) == (128, 64, resident)
        split = launch.balanced_plan(tiles, 1024, fake_gpu, cfg)[0]
        assert split * tiles == resident * 128
    for kind in ("bwd_dx", "bwd_dparams"):
        for rows in (64, 256, 1024, 4096):
            assert tuning.default_config(kind, fake_gpu, rows, wav).resident == 2


def test_parameter_pass_splits_only_long_loops(fake_gpu):
    """The parameter pass's shipped config on a 132-SM GPU: a 1024 x 1024 layer (256 tiles of
    64 x 64, mexican_hat's from 1024 rows) stays whole below 1024 rows, where a split's three
    partial planes cost more than it gains, and splits in shares of >= 512 rows above; a layer
    of fewer tiles than SMs (the 1024 -> 128 layer: 32) still splits to fill them."""
    from wavkan import get_wavelet

    cfg = tuning.default_config("bwd_dparams", fake_gpu, 1024, get_wavelet("mexican_hat"))
    assert (cfg.block_m, cfg.block_n, cfg.balance_min_steps) == (64, 64, 512)
    splits = {rows: launch.balanced_plan(16 * 16, rows, fake_gpu, cfg)[0] for rows in (64, 256, 1023, 1024, 2048, 4096)}
    assert splits == {64: 1, 256: 1, 1023: 1, 1024: 2, 2048: 4, 4096: 4}
    assert launch.balanced_plan(2 * 16, 256, fake_gpu, cfg) == (8, 32)
    # the large regime's least share: 128 steps unless the config says otherwise
    assert launch.balanced_split(256, 1024, fake_gpu) == 4
    assert launch.balanced_split(256, 1024, fake_gpu, large_min_steps=512) == 2


@pytest.mark.parametrize("rows", [64, 256, 1024, 2047, 4096])
def test_backward_configs_follow_the_wavelet(fake_gpu, rows):
    """The backward's configs where a wavelet measured otherwise than the shared table (v15):
    grad_x on 64 x 64 tiles of 4 warps, uncapped, for mexican_hat and dog, on 32 x 128 of 8 warps
    capped at 128 registers for meyer and shannon, and morlet on the shared table; the parameter
    pass on the shared 32 x 64 tile except mexican_hat's and dog's from 1024 rows (64 x 64), whose
    loop is unrolled by 4 below 1024 rows and not from there."""
    from wavkan import get_wavelet

    def config(kind, name):
        return tuning.default_config(kind, fake_gpu, rows, get_wavelet(name))

    for name in ("mexican_hat", "dog"):
        dx, dp = config("bwd_dx", name), config("bwd_dparams", name)
        assert (dx.block_m, dx.block_n, dx.num_warps, dx.maxnreg) == (64, 64, 4, None)
        assert (dp.block_m, dp.unroll) == ((64, 1) if rows >= 1024 else (32, 4))
    for name in ("meyer", "shannon"):
        dx = config("bwd_dx", name)
        assert (dx.block_m, dx.block_n, dx.num_warps, dx.maxnreg) == (32, 128, 8, 128)
    assert config("bwd_dx", "morlet") == tuning.default_config("bwd_dx", fake_gpu, rows)
    for name in ("morlet", "meyer", "shannon"):
        dp = config("bwd_dparams", name)
        assert (dp.block_m, dp.block_n, dp.num_warps, dp.maxnreg) == (32, 64, 8, 128)
        assert dp == tuning.default_config("bwd_dparams", fake_gpu, rows)


def test_traced_launches_trade_a_register_cap_for_fewer_warps(monkeypatch):
    """torch.compile's path (``wrap_triton``, whose launches Inductor compiles) takes no register
    cap, so a capped config launches on fewer warps instead (8 at 128 registers -> 4), and an
    uncapped one as it is."""
    from wavkan.kernels import launch

    seen = []

    class Wrapped:
        def __init__(self, kernel):
            pass

        def __getitem__(self, grid):
            return lambda *args, **meta: seen.append(meta)

    monkeypatch.setattr(torch.library, "wrap_triton", Wrapped)
    capped = {"num_warps": 8, "num_stages": 2, "maxnreg": 128, "BLOCK": 4}
    with launch.traced_launches():
        launch.launch_jit(None, (1, 1, 1), (), capped)
        launch.launch_jit(None, (1, 1, 1), (), {"num_warps": 4, "num_stages": 1, "BLOCK": 4})
    assert seen == [{"num_warps": 4, "num_stages": 2, "BLOCK": 4}, {"num_warps": 4, "num_stages": 1, "BLOCK": 4}]
    assert capped["maxnreg"] == 128  # the plan's meta is left as it was
    assert [launch.uncapped_warps(w, r) for w, r in ((8, 128), (8, 64), (4, 255), (1, 32), (8, 168))] == [4, 2, 4, 1, 4]


class _FakeParam:
    def __init__(self, name, is_constexpr):
        self.name, self.is_constexpr = name, is_constexpr


class _FakeJIT:
    """A stand-in for a ``triton.jit`` kernel: records the launches that go through the JIT
    (which compile) and those that call a compiled kernel's launcher directly."""

    def __init__(self):
        self.arg_names = ["x_ptr", "N", "STRIDE", "BLOCK"]
        self.params = [_FakeParam(n, n == "BLOCK") for n in self.arg_names]
        self.do_not_specialize = ["STRIDE"]
        self.jit, self.direct = [], []
        jit = self

        class Compiled:
            function = packed_metadata = None

            def run(self, *args):
                jit.direct.append(args[9:])

        self.compiled = Compiled()

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.jit.append(args)
            return self.compiled
        return launch


def test_direct_launches_never_reuse_a_binary_for_other_arguments(monkeypatch):
    """A planned launch reuses a compiled binary only for arguments Triton would compile the
    same way: an int's ==1 / divisible-by-16 / 32-bit class, a do-not-specialise int's width
    (i32 or i64: a value past 2^31 must not reach an i32 binary), a tensor's dtype and
    alignment; anything else goes through the JIT (compiles)."""
    from wavkan.kernels import launch

    monkeypatch.setattr(launch, "_direct_launch_ok", lambda: True)
    kernel = _FakeJIT()
    launcher = launch.DirectLauncher(kernel)
    cuda = torch.device("cuda", 0)
    x = torch.zeros(8)

    def run(n, stride, tensor=x):
        launcher.launch(launcher.plan(cuda, (1, 1, 1), (n, stride), {"BLOCK": 4}), 0, (tensor,))

    run(32, 5)       # compiles
    run(48, 7)       # same classes (divisible by 16, 32 bits; stride 32 bits): direct
    run(33, 7)       # N no longer divisible by 16: compiles
    run(32, 2**31)   # the stride past 32 bits: compiles (an i64 binary)
    run(32, 2**31 + 5)  # direct, on the i64 binary
    run(32, 9, x.double())  # another dtype: compiles
    run(32, 9, torch.zeros(9)[1:])  # a tensor 4 bytes off 16-byte alignment: compiles
    assert [args[1:] for args in kernel.jit] == [(32, 5), (33, 7), (32, 2**31), (32, 9), (32, 9)]
    assert kernel.direct == [(x, 48, 7, 4), (x, 32, 2**31 + 5, 4)]


def test_outside_a_trace_the_register_cap_goes_to_the_jit():
    """Eager launches through the JIT keep a config's register cap as a launch option."""
    from wavkan.kernels import launch

    seen = []

    class Recording:
        def __getitem__(self, grid):
            return lambda *args, **meta: seen.append(meta)

    launch.launch_jit(Recording(), (1, 1, 1), (), {"num_warps": 8, "maxnreg": 128})
    assert seen == [{"num_warps": 8, "maxnreg": 128}]
