"""Training the convolutional Wav-KAN: run files, evaluate on its checkpoint, exact resume, the
model's config fields, the block's formula, BatchNorm2d over DDP ranks.

Runs are tiny (a few dozen 32x32 images, conv widths 4 and 8) on the CPU reference backend.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wavkan import cli
from wavkan.app.checkpoint import build_model, load_checkpoint
from wavkan.app.evaluate import evaluate_checkpoint
from wavkan.app.metrics import read_metrics_csv
from wavkan.app.models import (
    DEFAULT_CONV_STRIDES,
    DEFAULT_CONV_WIDTHS,
    WavKANConvBlock,
    WavKANConvNet,
    resolve_model_fields,
)
from wavkan.app.train import ConfigError, TrainConfig, main as train_main, train

DETERMINISTIC = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")
N_TRAIN, BATCH = 56, 16  # 3 full batches and a partial one of 8 rows


def cifar_like_npz(path, n_train=N_TRAIN, n_test=24, seed=0):
    """32x32 RGB uint8 images in 4 classes, stored (N, 3, 32, 32): class k brightens one colour
    channel in one half of the image, so the task needs both colour and position."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 4, n)
        images = rng.integers(0, 150, (n, 3, 32, 32))
        for k in range(4):
            rows = slice(0, 16) if k < 2 else slice(16, 32)
            images[labels == k, k % 3, rows] += 100
        return images.astype(np.uint8), labels.astype(np.uint8)

    (tr_x, tr_y), (te_x, te_y) = split(n_train), split(n_test)
    np.savez(path, train_images=tr_x, train_labels=tr_y, test_images=te_x, test_labels=te_y)
    return path


def conv_config(dataset, out, **kw) -> TrainConfig:
    base = dict(dataset=str(dataset), model="conv", conv_widths=[4, 8], conv_strides=[1, 2], batch_size=BATCH,
                epochs=2, lr=3e-3, device="cpu", backend="reference", out=str(out), progress=False)
    base.update(kw)
    return TrainConfig(**base)


def deterministic(history):
    return [{k: row[k] for k in DETERMINISTIC} for row in history]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv")
    npz = cifar_like_npz(root / "tiny.npz")
    result = train(conv_config(npz, root / "uninterrupted"))
    return types.SimpleNamespace(npz=npz, root=root, result=result)


def test_conv_run_files_and_checkpoint(run):
    h = run.result.history
    out = run.result.out_dir
    assert [r["epoch"] for r in h] == [1, 2]
    assert h[1]["train_loss"] < h[0]["train_loss"]
    assert read_metrics_csv(out / "metrics.csv") == h
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = load_checkpoint(out / "checkpoint.pt")
    c = ckpt["config"]
    assert (c["model"], c["conv_widths"], c["conv_strides"], c["augment"]) == ("conv", [4, 8], [1, 2], True)
    assert (c["in_channels"], c["num_classes"]) == (3, 4)
    state = ckpt["model"]
    with np.load(run.npz) as z:
        pixels = z["train_images"].astype(np.float64) / 255
    np.testing.assert_allclose(state["input_mean"].numpy(), pixels.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(state["input_std"].numpy(), pixels.std(axis=(0, 2, 3)), rtol=1e-5)
    assert int(state["blocks.0.bn.num_batches_tracked"]) == 2 * 4  # 2 epochs of 4 steps
    model = build_model(c, backend="reference")
    model.load_state_dict(state)  # the registry rebuilds the same net
    assert bytes(state["blocks.1.wavelet.wavelet_name"].tolist()) == b"mexican_hat"
    with pytest.raises(RuntimeError, match=r"blocks\.0\.wavelet\.wavelet_name: the state_dict is of a 'mexican_hat' "
                                           r"layer, this layer's wavelet is 'dog'"):
        build_model({**c, "wavelet": "dog"}, backend="reference").load_state_dict(state)
    # A conv checkpoint saved before the conv layers had the buffer still loads.
    build_model(c, backend="reference").load_state_dict(
        {k: v for k, v in state.items() if not k.endswith("wavelet.wavelet_name")})


def test_conv_edges_are_the_linear_heads(run, tmp_path):
    """edges.png and wavkan plot draw the conv net's WavKANLinear head, each edge over the range
    of the pooled feature the training images gave it."""
    from wavkan.app.data import load_raw
    from wavkan.app.models import to_device_images
    from wavkan.app.plot import plot_checkpoint
    from wavkan.plot import layer_input_ranges

    out = run.result.out_dir
    assert (out / "edges.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = plot_checkpoint(out / "checkpoint.pt", tmp_path / "head.png", device="cpu", backend="reference")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = build_model(load_checkpoint(out / "checkpoint.pt")["config"], backend="reference")
    model.load_state_dict(load_checkpoint(out / "checkpoint.pt")["model"])
    images = to_device_images(load_raw(str(run.npz)), "cpu").train_x
    (low, high), = layer_input_ranges(model, images, batch_size=5)
    model.eval()
    with torch.no_grad():
        normalised = (images - model.input_mean[:, None, None]) / model.input_std[:, None, None]
        pooled = model.blocks(normalised).mean(dim=(2, 3))
    torch.testing.assert_close(low, pooled.double().amin(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(high, pooled.double().amax(0), rtol=1e-6, atol=1e-6)


def test_evaluate_conv_checkpoint(run, capsys):
    final = run.result.final
    ckpt = run.result.out_dir / "checkpoint.pt"
    r = evaluate_checkpoint(ckpt, device="cpu", backend="reference")
    assert r["samples"] == 24 and r["epoch"] == 2
    assert r["test_acc"] == final["test_acc"]
    assert r["test_loss"] == pytest.approx(final["test_loss"], abs=1e-6)
    assert cli.main(["evaluate", "--checkpoint", str(ckpt), "--device", "cpu", "--backend", "reference"]) == 0
    assert f"test accuracy {100 * final['test_acc']:.2f}%" in capsys.readouterr().out


def test_conv_resume_equals_uninterrupted(run, tmp_path):
    out = tmp_path / "resumed"
    train(conv_config(run.npz, out, epochs=1))
    resumed = train(conv_config(run.npz, out, epochs=2, resume=True))
    assert deterministic(resumed.history) == deterministic(run.result.history)
    a = load_checkpoint(out / "checkpoint.pt")["model"]
    b = load_checkpoint(run.result.out_dir / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_augmentation_shapes_the_run_and_defines_it(run, tmp_path, capsys):
    plain = train(conv_config(run.npz, tmp_path / "plain", epochs=1, augment=False))
    assert plain.history[0]["train_loss"] != run.result.history[0]["train_loss"]
    args = ["--dataset", str(run.npz), "--model", "conv", "--conv-widths", "4,8", "--conv-strides", "1,2",
            "--batch-size", str(BATCH), "--epochs", "2", "--lr", "3e-3", "--device", "cpu", "--backend", "reference",
            "--no-progress", "--out", str(tmp_path / "plain"), "--resume"]
    assert train_main(args) == 2
    assert "augment: checkpoint False, now True" in capsys.readouterr().err


def test_bf16_autocast_trains_close_to_fp32(run, tmp_path):
    """--amp runs the forward under bf16 autocast (here on the CPU): the same run up to bf16
    rounding, and not bit-equal, so autocast really was on."""
    amp = train(conv_config(run.npz, tmp_path / "amp", epochs=1, amp=True)).history[0]
    fp32 = run.result.history[0]
    assert amp["train_loss"] != fp32["train_loss"]
    assert amp["train_loss"] == pytest.approx(fp32["train_loss"], rel=2e-2)
    assert amp["test_loss"] == pytest.approx(fp32["test_loss"], rel=2e-2)


# --- the model and its config ---------------------------------------------------------------------


def test_model_fields_and_defaults():
    cifar = TrainConfig(dataset="cifar10").to_dict()
    assert (cifar["model"], cifar["augment"]) == ("conv", True)
    assert cifar["conv_widths"] == [16, 32, 64, 128, 256, 256, 512, 512] == list(DEFAULT_CONV_WIDTHS)
    assert cifar["conv_strides"] == [1, 2, 2, 1, 1, 2, 1, 1] == list(DEFAULT_CONV_STRIDES)
    mnist = TrainConfig().to_dict()
    assert (mnist["model"], mnist["augment"], mnist["conv_widths"]) == ("mlp", False, None)
    assert TrainConfig(dataset="cifar10", model="mlp").to_dict()["model"] == "mlp"
    assert TrainConfig(dataset="x.npz", model="conv", conv_widths=[8, 8, 8]).to_dict()["conv_strides"] == [1, 1, 1]
    # A checkpoint written before the conv net reads as the MLP run it was.
    assert resolve_model_fields({"dataset": "mnist", "layers": [784, 32, 10]})["model"] == "mlp"
    for bad, match in [
        (dict(dataset="cifar10", conv_widths=[8, 8], conv_strides=[1]), "conv strides must be 2 ints"),
        (dict(dataset="cifar10", conv_widths=[8, 0]), "conv widths must be one or more ints >= 1"),
        (dict(dataset="mnist", augment=True), "--augment .* applies to --model conv only"),
        (dict(dataset="mnist", conv_widths=[8]), "apply to --model conv only"),
        (dict(dataset="mnist", model="resnet"), "unknown model 'resnet'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**bad).validate()


def test_conv_data_must_fit(run, tmp_path, capsys):
    gray = tmp_path / "gray.npz"
    rng = np.random.default_rng(0)
    np.savez(gray, train_images=rng.integers(0, 255, (8, 28, 28), dtype=np.uint8), train_labels=np.arange(8) % 2,
             test_images=rng.integers(0, 255, (4, 28, 28), dtype=np.uint8), test_labels=np.arange(4) % 2)
    np.savez(tmp_path / "g.npz", **{k: v.astype(np.uint8) for k, v in np.load(gray).items()})
    # Grayscale images train as one channel; evaluating a 3-channel checkpoint on them is refused.
    r = train(conv_config(tmp_path / "g.npz", tmp_path / "g", epochs=1, batch_size=4))
    assert load_checkpoint(r.out_dir / "checkpoint.pt")["config"]["in_channels"] == 1
    with pytest.raises(ValueError, match="the conv net takes 3 channels, but .*g.npz has 1"):
        evaluate_checkpoint(run.result.out_dir / "checkpoint.pt", dataset=str(tmp_path / "g.npz"), device="cpu")


def test_block_formula_and_default_net_shapes():
    torch.manual_seed(0)
    block = WavKANConvBlock(3, 5, stride=2, backend="reference")
    x = torch.randn(2, 3, 9, 7)
    expected = block.bn(block.base(F.silu(x)) + block.mix(block.wavelet(x)))
    assert torch.equal(block(x), expected)
    assert block.base.stride == (2, 2) and block.base.padding == (1, 1) and block.base.bias is None
    assert block.mix.kernel_size == (1, 1) and block.wavelet.__class__.__name__ == "WavKANConv2d"

    net = WavKANConvNet(backend="reference")
    sizes = []
    for b in net.blocks:
        b.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 10)
    assert sizes == [(16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 8, 8), (256, 8, 8), (256, 4, 4),
                     (512, 4, 4), (512, 4, 4)]
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        net(torch.rand(1, 32, 32))


def test_input_normalisation_is_per_channel():
    torch.manual_seed(0)
    net = WavKANConvNet([4], [1], in_channels=2, num_classes=3, backend="reference").eval()
    seen = []
    net.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    net.set_input_stats(torch.tensor([0.2, 0.6]), torch.tensor([0.1, 0.0]))
    x = torch.rand(2, 2, 5, 5)
    with torch.no_grad():
        net(x)
    expected = torch.stack([(x[:, 0] - 0.2) / 0.1, (x[:, 1] - 0.6) / 1e-3], dim=1)  # std clamped at 1e-3
    torch.testing.assert_close(seen[0], expected)


# --- BatchNorm2d over DDP ranks ---------------------------------------------------------------------


def test_all_reduce_batchnorm2d_matches_batchnorm2d(tmp_path, monkeypatch):
    """The all-reduce path on a one-process gloo group (sums over one rank): forward, running
    statistics and gradients equal BatchNorm2d's."""
    import torch.distributed as dist

    from wavkan.app.distributed import AllReduceBatchNorm2d, sync_batchnorm

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = torch.nn.BatchNorm2d(3).double()  # float64: only the summation order differs
        with torch.no_grad():
            plain.weight.uniform_(0.5, 1.5)
            plain.bias.uniform_(-0.5, 0.5)
        synced = sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3).double()), torch.device("cpu"))[0]
        assert isinstance(synced, AllReduceBatchNorm2d)
        synced.load_state_dict(plain.state_dict())
        monkeypatch.setattr(AllReduceBatchNorm2d, "_world", lambda self: 2)  # take the all-reduce path
        x = torch.randn(4, 3, 5, 6, dtype=torch.float64, requires_grad=True)
        x2 = x.detach().clone().requires_grad_(True)
        y, y2 = plain(x), synced(x2)
        torch.testing.assert_close(y2, y)
        weights = torch.randn(y.shape, dtype=torch.float64)
        (y * weights).sum().backward()
        (y2 * weights).sum().backward()
        torch.testing.assert_close(x2.grad, x.grad)
        torch.testing.assert_close(synced.weight.grad, plain.weight.grad)
        torch.testing.assert_close(synced.running_var, plain.running_var)
        torch.testing.assert_close(synced.running_mean, plain.running_mean)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(run, tmp_path):
    """torchrun with 2 CPU processes: each rank takes half of every batch and augments its own
    rows with the draws of those rows; BatchNorm2d statistics are all-reduced; the run equals
    the single-process one up to float summation order."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "wavkan.train", "--dataset", str(run.npz), "--model", "conv", "--conv-widths", "4,8",
           "--conv-strides", "1,2", "--batch-size", str(BATCH), "--epochs", "2", "--lr", "3e-3", "--device", "cpu",
           "--backend", "reference", "--no-progress", "--out", str(out)]
    import wavkan

    # The children import this very package, wherever the test process found it.
    src = os.path.dirname(os.path.dirname(os.path.abspath(wavkan.__file__)))
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DDP x2" in proc.stdout
    history = load_checkpoint(out / "checkpoint.pt")["history"]
    for a, b in zip(deterministic(history), deterministic(run.result.history)):
        for k in DETERMINISTIC:
            assert a[k] == pytest.approx(b[k], abs=2e-5, rel=0), (k, a, b)
    a = load_checkpoint(out / "checkpoint.pt")["model"]
    b = load_checkpoint(run.result.out_dir / "checkpoint.pt")["model"]
    for k in a:
        assert (a[k].double() - b[k].double()).abs().max().item() <= 1e-4, k


# --- CUDA (skipped without a GPU) -------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_cuda_graph_conv_run_matches_eager_and_resumes(tmp_path, amp):
    """--cuda-graph captures the conv step with its augmentation (device buffers refilled each
    epoch) and autocast: the same run as the eager step, and a resumed graphed run agrees."""
    npz = cifar_like_npz(tmp_path / "s.npz")
    kw = dict(device="cuda", backend="auto", amp=amp, epochs=3)
    graph = train(conv_config(npz, tmp_path / "graph", cuda_graph=True, **kw))
    eager = train(conv_config(npz, tmp_path / "eager", cuda_graph=False, **kw))
    tol = 1e-4 if not amp else 2e-2
    for a, b in zip(deterministic(graph.history), deterministic(eager.history)):
        for k in ("train_loss", "test_loss"):
            assert a[k] == pytest.approx(b[k], rel=tol, abs=tol), (k, a, b)
    train(conv_config(npz, tmp_path / "resumed", cuda_graph=True, **{**kw, "epochs": 1}))
    resumed = train(conv_config(npz, tmp_path / "resumed", cuda_graph=True, resume=True, **kw))
    for a, b in zip(deterministic(resumed.history), deterministic(graph.history)):
        for k in ("train_loss", "test_loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-5), (k, a, b)
    r = evaluate_checkpoint(tmp_path / "graph" / "checkpoint.pt", device="cuda")
    assert r["test_acc"] == graph.final["test_acc"]
