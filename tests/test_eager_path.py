"""The eager call path: one kernel launch per pass, the edge-constant cache and everything that
must invalidate it, and the eager and compiled registrations agreeing on every output and
gradient. Runs on the GPU, or on CPU tensors under Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from helpers import FP32_TOL, layer_inputs, rel_err
from wavkan import WavKANLinear, wavkan_linear
from wavkan.kernels import staging
from wavkan.reference import reference_backward, reference_forward


@pytest.fixture
def launches(monkeypatch):
    """Counts every Triton kernel launch (through the JIT, the interpreter or DirectLauncher)."""
    from wavkan.kernels import launch

    count = {"n": 0}
    original = launch.DirectLauncher.launch

    def counting(self, *args, **kwargs):
        count["n"] += 1
        return original(self, *args, **kwargs)

    packs = staging.pack_edge_constants

    def counting_pack(*args, **kwargs):
        count["n"] += 1
        return packs(*args, **kwargs)

    monkeypatch.setattr(launch.DirectLauncher, "launch", counting)
    monkeypatch.setattr(staging, "pack_edge_constants", counting_pack)
    staging.clear_pack_cache()
    return count


def _layer(device, IN=13, OUT=7, wavelet="mexican_hat"):
    layer = WavKANLinear(IN, OUT, wavelet=wavelet, batch_norm=False, backend="triton", device=device)
    with torch.no_grad():
        layer.scale.uniform_(0.5, 2.0)
        layer.translation.normal_(0.0, 0.5)
    return layer


def _expected(layer, x):
    # Through wavkan_linear: shannon's window is folded there, not in reference_forward.
    return wavkan_linear(x.double(), layer.scale.double(), layer.translation.double(),
                         layer.wavelet_weights.double(), layer.wavelet, backend="reference")  # fmt: skip


def _close(y, layer, x):
    # Relative to the output's norm: a stale pack is off by far more than fp32 rounding.
    assert rel_err(y, _expected(layer, x)) < FP32_TOL["output"]


@pytest.mark.parametrize("wavelet", ["mexican_hat", "shannon"])
def test_one_launch_per_pass_once_packed(kernel_device, launches, wavelet):
    """shannon too: its window is folded into the weights once per change of the weights, so
    the packs of the folded weights are reused like the others'."""
    layer = _layer(kernel_device, wavelet=wavelet)
    x = torch.randn(37, 13, device=kernel_device, requires_grad=True)
    layer(x).sum().backward()  # packs the forward's and grad_x's constants
    launches["n"] = 0
    y = layer(x)
    assert launches["n"] == 1, "forward: one launch"
    y.sum().backward()
    assert launches["n"] == 3, "forward + grad_x + parameter pass"
    launches["n"] = 0
    with torch.no_grad():
        layer(x.detach())
    assert launches["n"] == 1


def test_shannon_under_inference_mode_keeps_its_packs(kernel_device, launches):
    """A fold first made under torch.inference_mode is an ordinary tensor, so the packs made
    from it are kept there and after (an inference fold would be repacked on every call)."""
    layer = _layer(kernel_device, wavelet="shannon")
    x = torch.randn(6, 13, device=kernel_device)
    with torch.inference_mode():
        for _ in range(3):
            _close(layer(x), layer, x)
    assert launches["n"] == 4, "one pack, three forwards"
    launches["n"] = 0
    with torch.no_grad():
        layer(x)
    assert launches["n"] == 1


def test_shannon_window_is_folded_once_per_change_of_the_weights(kernel_device):
    from wavkan.wavelets import get_wavelet

    wav = get_wavelet("shannon")
    w = torch.randn(7, 13, device=kernel_device, requires_grad=True)
    first, window = staging.windowed_weights(w, wav)
    assert staging.windowed_weights(w, wav)[0] is first
    torch.testing.assert_close(first, w.detach() * window, rtol=0, atol=0)
    assert not first.requires_grad
    with torch.no_grad():
        w.mul_(-2.0)
    again = staging.windowed_weights(w, wav)[0]
    assert again is not first
    torch.testing.assert_close(again, w.detach() * window, rtol=0, atol=0)


def test_backward_skips_passes_nobody_asks_for(kernel_device, launches):
    layer = _layer(kernel_device)
    x = torch.randn(9, 13, device=kernel_device)  # a first layer's input: no grad_x pass
    layer(x).sum().backward()
    launches["n"] = 0
    layer(x).sum().backward()
    assert launches["n"] == 2


@pytest.mark.parametrize("wavelet", ["mexican_hat", "shannon"])
def test_optimizer_step_invalidates(kernel_device, launches, wavelet):
    layer = _layer(kernel_device, wavelet=wavelet)
    x = torch.randn(11, 13, device=kernel_device)
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        y = layer(x)
        _close(y, layer, x)
        (y**2).sum().backward()
        opt.step()
    _close(layer(x), layer, x)


@pytest.mark.parametrize("wavelet", ["mexican_hat", "shannon"])
def test_in_place_edits_invalidate(kernel_device, wavelet):
    layer = _layer(kernel_device, wavelet=wavelet)
    x = torch.randn(5, 13, device=kernel_device)
    before = layer(x)
    for edit in (lambda: layer.scale.mul_(1.5), lambda: layer.translation.add_(0.25),
                 lambda: layer.wavelet_weights[2, 3].fill_(4.0), lambda: layer.scale[:, 0].copy_(torch.full((7,), 3.0))):
        with torch.no_grad():
            edit()
        after = layer(x)
        _close(after, layer, x)
        assert not torch.equal(after, before)
        before = after


def test_load_state_dict_invalidates(kernel_device):
    layer, other = _layer(kernel_device), _layer(kernel_device)
    x = torch.randn(6, 13, device=kernel_device)
    layer(x)
    layer.load_state_dict(other.state_dict())
    assert torch.equal(layer(x), other(x))
    _close(layer(x), layer, x)


def test_moving_parameters_invalidates(kernel_device):
    layer = _layer(kernel_device)
    x = torch.randn(6, 13, device=kernel_device)
    layer(x)
    layer.half().float()  # new storage for every parameter, values rounded through fp16
    _close(layer(x), layer, x)
    layer.wavelet_weights.data = torch.randn(7, 13, device=kernel_device)  # p.data = ...
    _close(layer(x), layer, x)


@pytest.mark.parametrize("wavelet", ["mexican_hat", "shannon"])
def test_new_storage_at_a_freed_address_is_seen(kernel_device, wavelet):
    """A parameter given new storage keeps its version counter (``.half().float()``, ``p.data =
    ...``), so its key differs from the kept one only by address; the kept entry holds the old
    storages, so no new one can land at their addresses (the allocator hands freed blocks out
    again). Many rounds of new values through the same round trip: every output fresh."""
    layer = _layer(kernel_device, wavelet=wavelet)
    x = torch.randn(6, 13, device=kernel_device)
    for k in range(12):
        layer(x)
        kept = {p.data_ptr() for p in layer.parameters()}
        with torch.no_grad():
            layer.half().float()
            if k % 2:
                layer.wavelet_weights.data = torch.randn(7, 13, device=kernel_device)
        assert not kept & {p.data_ptr() for p in layer.parameters()}
        _close(layer(x), layer, x)


@pytest.mark.parametrize("wavelet", ["mexican_hat", "shannon"])
def test_writes_past_the_version_counter_need_clear_caches(kernel_device, wavelet):
    """Writes through ``.data`` (and replays of a captured optimizer step) leave the version
    counter alone, so the cache cannot see them; ``wavkan.clear_caches()`` is the documented
    way to make the next call read the new values (shannon's folded window included)."""
    import wavkan

    layer = _layer(kernel_device, wavelet=wavelet)
    x = torch.randn(6, 13, device=kernel_device)
    before = layer(x)
    layer.scale.data.mul_(1.7)
    layer.translation.data.add_(0.3)
    layer.wavelet_weights.data.mul_(-0.5)
    wavkan.clear_caches()
    assert not staging._KEPT
    after = layer(x)
    _close(after, layer, x)
    assert not torch.equal(after, before)


def test_requires_grad_changes_are_seen(kernel_device):
    layer = _layer(kernel_device)
    x = torch.randn(8, 13, device=kernel_device, requires_grad=True)
    layer(x).sum().backward()
    layer.requires_grad_(False)
    x.grad = None
    layer(x).sum().backward()
    _, grad_x_expected = None, reference_backward(
        torch.ones(8, 7, dtype=torch.float64, device=kernel_device), x.detach().double(), layer.scale.double(),
        layer.translation.double(), layer.wavelet_weights.double(), layer.wavelet)[0]
    assert torch.allclose(x.grad.double(), grad_x_expected, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None or p.grad.abs().sum() > 0 for p in layer.parameters())
    grads_before = [p.grad.clone() for p in layer.parameters()]
    layer.requires_grad_(True)
    layer(x).sum().backward()
    assert all(not torch.equal(p.grad, g) for p, g in zip(layer.parameters(), grads_before))


def test_cache_is_per_weights_object_and_freed_with_it(kernel_device):
    x, s, t, w = layer_inputs(4, 9, 5, device=kernel_device)
    wavkan_linear(x, s, t, w, backend="triton")
    assert id(w) in staging._KEPT
    ident = id(w)
    del w
    assert ident not in staging._KEPT
    # shannon: the window folded into the weights anchors packs of its own; all go with the weights.
    w = torch.randn(5, 9, device=kernel_device)
    wavkan_linear(x, s, t, w, "shannon", backend="triton")
    assert len(staging._KEPT) == 2  # the weights' fold, the fold's forward pack
    del w
    assert not staging._KEPT
    # Several weights tensors in turn: each gets its own fold and packs, never another's.
    w1, w2 = torch.randn(5, 9, device=kernel_device), torch.randn(5, 9, device=kernel_device)
    for w in (w1, w2, w1):
        assert torch.allclose(wavkan_linear(x, s, t, w, "shannon", backend="triton").double(),
                              wavkan_linear(x.double(), s.double(), t.double(), w.double(), "shannon",
                                            backend="reference"), rtol=1e-5, atol=1e-6)


def _agrees_bitwise_with_the_eager_path(op, wavelet, inputs, g):
    """``op(x, s, t, w H, wavelet)`` (w H folded through autograd, as ``wavkan_linear`` does
    under torch.compile) against the eager ``wavkan_linear``: bitwise-equal outputs and
    gradients of x, s, t and w."""
    from wavkan.wavelets import get_wavelet

    wav = get_wavelet(wavelet)

    def through_op(x, s, t, w):
        return op(x, s, t, wav.fold_window(w)[0] if wav.window else w, wavelet)

    results = []
    for call in (lambda *a: wavkan_linear(*a, wavelet, backend="triton"), through_op):
        leaves = [v.clone().requires_grad_() for v in inputs]
        y = call(*leaves)
        y.backward(g)
        results.append([y.detach()] + [v.grad for v in leaves])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("wavelet", ["mexican_hat", "meyer", "shannon"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_eager_and_custom_op_agree(kernel_device, wavelet, dtype):
    """The eager autograd.Function and the torch.library custom op (what torch.compile traces
    on the CPU) run the same implementations: bitwise-equal outputs and gradients. shannon's
    window is folded by the Function on the eager path and before the op under torch.compile
    (as ``wavkan_linear`` does there, through autograd)."""
    inputs = [v.to(dtype) for v in layer_inputs(19, 11, 6, device=kernel_device)]
    g = torch.randn(19, 6, device=kernel_device, dtype=dtype)
    _agrees_bitwise_with_the_eager_path(
        lambda x, s, t, w, wavelet: torch.ops.wavkan.linear(x, s, t, w, wavelet, "triton"), wavelet, inputs, g)


@pytest.mark.gpu
@pytest.mark.parametrize("wavelet", ["mexican_hat", "shannon"])
def test_cuda_graph_capture_packs_inside_the_graph(wavelet):
    """A captured forward must repack (and fold shannon's window) on every replay: after an
    in-place parameter change the replay's output follows the new parameters."""
    layer = _layer(torch.device("cuda"), IN=64, OUT=32, wavelet=wavelet)
    x = torch.randn(16, 64, device="cuda")
    layer(x)  # warm: cached pack and compiled kernel
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        layer(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = layer(x)
    with torch.no_grad():
        layer.scale.mul_(1.7)
        layer.wavelet_weights.mul_(-0.5)
    graph.replay()
    torch.cuda.synchronize()
    _close(y, layer, x)


def test_custom_op_keeps_no_buffers(kernel_device, launches):
    """The custom op (torch.compile's path) packs on every call and caches nothing: under
    mode="reduce-overhead" a cached tensor from the compiled graph's pool would outlive its run."""
    x, s, t, w = layer_inputs(9, 13, 7, device=kernel_device)
    for _ in range(2):
        torch.ops.wavkan.linear(x, s, t, w, "mexican_hat", "triton")
    assert launches["n"] == 4  # pack + forward, twice
    assert id(w) not in staging._KEPT


@pytest.mark.parametrize("stage", [False, True], ids=["in-place", "staged"])
@pytest.mark.parametrize("split", [1, 3])
def test_operands_in_place_or_staged(kernel_device, stage, split):
    """The forward's x and grad_x's grad_y, read in place (any strides) or staged transposed
    (``KernelConfig.stage``), with and without a split summed in-kernel: the same values."""
    from wavkan.kernels import KernelConfig, wavkan_bwd_dx, wavkan_fwd
    from wavkan.wavelets import get_wavelet

    x, s, t, w = layer_inputs(37, 29, 11, device=kernel_device)
    x = x.t().contiguous().t()  # strided rows
    g = torch.randn(37, 11, device=kernel_device)
    cfg = KernelConfig(16, 16, num_warps=1, num_stages=1, split=split, stage=stage)
    wav = get_wavelet("mexican_hat")
    y = wavkan_fwd(x, s, t, w, wav, cfg)
    dx = wavkan_bwd_dx(g, x, s, t, w, wav, cfg)
    y_ref = reference_forward(x.double(), s.double(), t.double(), w.double(), "mexican_hat")
    dx_ref = reference_backward(g.double(), x.double(), s.double(), t.double(), w.double(), "mexican_hat")[0]
    assert rel_err(y, y_ref) < FP32_TOL["output"] and rel_err(dx, dx_ref) < FP32_TOL["grad"]


@pytest.mark.parametrize("wavelet", ["dog", "shannon"])
def test_cuda_triton_ops_called_eagerly_agree_with_the_eager_path(kernel_device, wavelet):
    """The bodies of the triton ops torch.compile traces on CUDA (``ops._linear_cuda`` and its
    backward, launching through ``launch.traced_launches``), called eagerly, and their
    autograd registration: bitwise the eager path's outputs and gradients. On the CPU the
    kernels run under the interpreter; on the GPU through the JIT."""
    from wavkan import ops

    ops.cuda_ops_defined()
    x, s, t, w = layer_inputs(23, 17, 9, device=kernel_device)
    g = torch.randn(23, 9, device=kernel_device)
    _agrees_bitwise_with_the_eager_path(torch.ops.wavkan.linear_cuda, wavelet, (x, s, t, w), g)
    staging.clear_pack_cache()
    torch.ops.wavkan.linear_cuda(x, s, t, w, wavelet)
    assert not staging._KEPT  # traced launches keep nothing: under torch.compile Inductor owns the buffers


@pytest.mark.parametrize("wavelet", ["mexican_hat", "shannon"])
@pytest.mark.parametrize("optimizer", ["AdamW", "SGD", "Adam"])
def test_fused_optimizer_steps_invalidate(kernel_device, wavelet, optimizer):
    """A fused step writes the parameters without bumping their version counters; the kept packs
    (and shannon's fold) must still be dropped: every output after a step is the new weights'.
    Also when the optimizer holds only some of the layer's parameters (the weights frozen)."""
    layer = _layer(kernel_device, wavelet=wavelet)
    x = torch.randn(11, 13, device=kernel_device, requires_grad=True)
    cls = getattr(torch.optim, optimizer)
    for params in (list(layer.parameters()), [layer.scale, layer.translation]):
        opt = cls(params, lr=0.05, fused=True)
        for _ in range(3):
            opt.zero_grad()
            y = layer(x)
            _close(y, layer, x)
            (y**2).sum().backward()
            versions = [p._version for p in params]
            before = [p.detach().clone() for p in params]
            opt.step()
            assert all(not torch.equal(b, p) for b, p in zip(before, params))
            if [p._version for p in params] != versions:
                pytest.skip(f"this PyTorch's fused {optimizer} bumps version counters: nothing to cover")
        y = layer(x)
        _close(y, layer, x)
        x.grad = None
        y.sum().backward()
        expected = reference_backward(torch.ones(11, 7, dtype=torch.float64, device=kernel_device),
                                      x.detach().double(), layer.scale.double(), layer.translation.double(),
                                      _expected_weights(layer), layer.wavelet)[0]
        assert rel_err(x.grad, expected) < FP32_TOL["grad"]


def _expected_weights(layer):
    """The weights reference_backward takes: w H for a wavelet with a window, else w (float64)."""
    from wavkan.wavelets import get_wavelet

    wav, w = get_wavelet(layer.wavelet), layer.wavelet_weights.detach().double()
    return w if wav.window is None else wav.fold_window(w)[0]


def test_other_optimizers_steps_never_fail_on_the_cache_hook(kernel_device):
    """The hook runs on every optimizer's step in the process: one over a sparse parameter
    (which has no plain storage) steps as before once a layer has kept its packs."""
    emb = torch.nn.Parameter(torch.randn(10, 4).to_sparse())
    opt = torch.optim.SGD([emb], lr=0.1)
    emb.grad = torch.randn(10, 4).to_sparse()
    layer = _layer(kernel_device)
    x = torch.randn(5, 13, device=kernel_device)
    y = layer(x)
    assert staging._KEPT
    before = emb.detach().to_dense().clone()
    opt.step()
    assert not torch.equal(emb.detach().to_dense(), before)
    assert torch.equal(layer(x), y)  # its packs untouched by a step of other parameters
