"""The functional: bad input is refused with a message naming what was expected."""

import pytest
import torch
from helpers import layer_inputs, run_python

from wavkan import wavkan_linear
from wavkan.cpu import compiler_available
from wavkan.ops import TRITON_MAX_FEATURES, resolve_backend
from wavkan.reference import reference_forward


def _args():
    return layer_inputs(3, 5, 4)


def test_wrong_last_dim():
    x, s, t, w = _args()
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., in_features=5\), got \(3, 6\)"):
        wavkan_linear(torch.randn(3, 6), s, t, w)


def test_mismatched_parameter_shapes():
    x, s, t, w = _args()
    with pytest.raises(ValueError, match=r"translation must have the shape of scale \(4, 5\), got \(4, 6\)"):
        wavkan_linear(x, s, torch.zeros(4, 6), w)
    with pytest.raises(ValueError, match=r"wavelet_weights must have the shape of scale \(4, 5\), got \(5, 4\)"):
        wavkan_linear(x, s, t, w.t())


def test_empty_features():
    with pytest.raises(ValueError, match=r"scale must have shape \(out_features, in_features\) with both >= 1, got \(0, 5\)"):
        wavkan_linear(torch.randn(2, 5), torch.ones(0, 5), torch.ones(0, 5), torch.ones(0, 5))


def test_integer_dtype():
    x, s, t, w = _args()
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64, got torch.int64"):
        wavkan_linear(x.long(), s, t, w)
    with pytest.raises(TypeError, match="scale must be float16, bfloat16, float32 or float64, got torch.int32"):
        wavkan_linear(x, s.int(), t, w)


def test_not_a_tensor():
    _, s, t, w = _args()
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        wavkan_linear([[1.0] * 5], s, t, w)


def test_different_devices():
    x, s, t, w = _args()
    with pytest.raises(ValueError, match="all tensors must be on one device: x is on cpu, scale on meta"):
        wavkan_linear(x, s.to("meta"), t, w)


def test_unknown_wavelet_and_backend():
    x, s, t, w = _args()
    with pytest.raises(ValueError, match="unknown wavelet 'gabor'; expected one of mexican_hat, morlet"):
        wavkan_linear(x, s, t, w, wavelet="gabor")
    with pytest.raises(ValueError, match="unknown backend .cudnn.; expected one of auto, reference, triton, compiled"):
        wavkan_linear(x, s, t, w, backend="cudnn")


def test_backend_resolution():
    x = torch.randn(2, 3)
    assert resolve_backend("reference", x) == "reference"
    assert resolve_backend("triton", x.double()) == "reference"  # float64 stays exact on the reference
    on_cpu = "compiled" if compiler_available() else "reference"  # wavkan.cpu: tests/test_cpu.py
    assert resolve_backend("auto", x) == ("triton" if x.is_cuda else on_cpu)


def test_scalar_batch_and_empty_batch():
    _, s, t, w = _args()
    x1 = torch.randn(5)
    assert wavkan_linear(x1, s, t, w).shape == (4,)
    assert torch.allclose(wavkan_linear(x1, s, t, w), wavkan_linear(x1[None], s, t, w)[0])
    empty = wavkan_linear(torch.randn(0, 5), s, t, w)
    assert empty.shape == (0, 4)


def test_triton_feature_limit(kernel_device):
    """Past TRITON_MAX_FEATURES in or out features (a launch-grid axis limit) the triton
    backend refuses the call by name; the reference backend still runs it."""
    n = TRITON_MAX_FEATURES + 1
    for out_features, in_features in ((1, n), (n, 1)):
        x = torch.randn(1, in_features, device=kernel_device)
        s = torch.ones(out_features, in_features, device=kernel_device)
        t, w = torch.zeros_like(s), torch.full_like(s, 0.5)
        expected = rf"up to 2097120, got \(out_features, in_features\) = \({out_features}, {in_features}\); use backend='reference'"
        with pytest.raises(ValueError, match=expected):
            wavkan_linear(x, s, t, w, backend="triton")
        y = wavkan_linear(x, s, t, w, backend="reference")
        assert y.shape == (1, out_features)
        torch.testing.assert_close(y, reference_forward(x.double(), s.double(), t.double(), w.double(), "mexican_hat").float())


# --- double backward ---------------------------------------------------------------------


def _penalty_grads(backend, wavelet, inputs, compiled_op=False):
    """Gradients of a gradient penalty ||dy/dx||^2 + <v, dy/ds> with respect to x and the
    parameters: second derivatives of the layer."""
    leaves = [a.detach().clone().requires_grad_() for a in inputs]
    if compiled_op:  # the torch.library custom op that torch.compile traces, called eagerly
        y = torch.ops.wavkan.linear(*leaves, wavelet, backend)
    else:
        y = wavkan_linear(*leaves, wavelet=wavelet, backend=backend)
    g = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)
    gx, gs = torch.autograd.grad(y, leaves[:2], g, create_graph=True)
    assert gx.requires_grad and gs.requires_grad, "the gradients carry no graph"
    penalty = (gx**2).sum() + (gs * torch.cos(torch.arange(gs.numel(), device=gs.device).reshape(gs.shape))).sum()
    return torch.autograd.grad(penalty, leaves)


def test_gradient_penalty_matches_the_paper_formula():
    """The issue's example: a gradient penalty's scale gradient was [-0.162, -0.0084, 0.0386]
    (no second-order term) where autograd of the paper's formula gives [-8.27, 0.574, -4.79]."""
    from wavkan.reference import wavkan_linear_unchunked

    x, s, t, w = layer_inputs(5, 4, 3, torch.float64)
    ours = _penalty_grads("reference", "mexican_hat", (x, s, t, w))
    leaves = [a.detach().clone().requires_grad_() for a in (x, s, t, w)]
    y = wavkan_linear_unchunked(*leaves, "mexican_hat")
    g = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    gx, gs = torch.autograd.grad(y, leaves[:2], g, create_graph=True)
    penalty = (gx**2).sum() + (gs * torch.cos(torch.arange(gs.numel()).reshape(gs.shape))).sum()
    for a, b in zip(ours, torch.autograd.grad(penalty, leaves)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("wavelet", ["mexican_hat", "morlet", "dog", "meyer", "shannon"])
def test_double_backward_triton_matches_reference(wavelet, kernel_device):
    """On the triton backend the first-order gradients come from the kernels and their own
    backward from the chunked reference: the penalty's gradients equal the float64 reference's."""
    inputs = layer_inputs(6, 7, 5, torch.float32, kernel_device)
    got = _penalty_grads("triton", wavelet, inputs)
    expected = _penalty_grads("reference", wavelet, [a.double() for a in inputs])
    for a, e in zip(got, expected):
        assert a.dtype == torch.float32
        assert (a.double() - e).norm() <= 1e-4 * e.norm(), (a, e)


def test_double_backward_through_the_custom_op(kernel_device):
    """The torch.library op (what torch.compile traces) also gives a differentiable backward."""
    inputs = layer_inputs(4, 5, 3, torch.float32, kernel_device)
    got = _penalty_grads("triton", "dog", inputs, compiled_op=True)
    expected = _penalty_grads("reference", "dog", [a.double() for a in inputs])
    for a, e in zip(got, expected):
        assert (a.double() - e).norm() <= 1e-4 * e.norm()


def test_third_derivative_flows():
    """create_graph twice: the double backward's own graph (not bounded in memory) is kept."""
    x, s, t, w = (a.requires_grad_() for a in layer_inputs(3, 4, 2, torch.float64))
    (gx,) = torch.autograd.grad(wavkan_linear(x, s, t, w, "dog", backend="reference").sum(), x, create_graph=True)
    (gxx,) = torch.autograd.grad(gx.sum(), x, create_graph=True)
    (gxxx,) = torch.autograd.grad(gxx.sum(), x)
    z = (x.detach()[:, None, :] - t.detach()) / s.detach()
    e = torch.exp(-z * z / 2)
    # dog: psi = -z e, psi''' = (z^4 - 6 z^2 + 3) e; d^3/dx^3 = psi''' / s^3.
    expected = (w.detach() * (z**4 - 6 * z**2 + 3) * e / s.detach() ** 3).sum(1)
    assert torch.allclose(gxxx, expected, rtol=1e-10, atol=1e-12)


# --- dtypes, the window, the interpreter switch -------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_shannon_window_is_not_rounded_to_half(dtype, backend, kernel_device):
    """The issue's example: x = 0, w = [1, 0, 0, 0, 0] in bf16 gave 0.078125 where the exact
    value is H[0] = 0.08: the window was computed and multiplied into w in bf16. Now the result
    is 0.08 rounded once to the dtype (within one ulp: Triton's interpreter converts fp32 to bf16
    by truncation), and grad_weights is g * H, also rounded once."""
    x = torch.zeros(1, 5, dtype=dtype, device=kernel_device)
    s, t = torch.ones(1, 5, dtype=dtype, device=kernel_device), torch.zeros(1, 5, dtype=dtype, device=kernel_device)
    w = torch.tensor([[1.0, 0, 0, 0, 0]], dtype=dtype, device=kernel_device).requires_grad_()
    y = wavkan_linear(x, s, t, w, "shannon", backend=backend)
    ulp = torch.finfo(dtype).eps * 2.0**-4  # 0.08 is in [2^-4, 2^-3)
    assert abs(y.item() - 0.08) <= ulp
    y.backward(torch.ones_like(y))
    window = torch.hamming_window(5, periodic=False, dtype=torch.float64)
    assert w.grad.dtype == dtype
    assert torch.equal(w.grad.cpu(), window.to(dtype)[None])


def test_float64_does_not_mix_with_other_dtypes():
    """float64 parameters with an fp32 x were rounded to fp32 while their gradients came back
    float64; an fp64 x into an fp32 model failed later, inside BatchNorm. Both are refused,
    naming the tensors; fp32/bf16/fp16 still mix (autocast)."""
    x, s, t, w = layer_inputs(3, 5, 4)
    with pytest.raises(TypeError, match=r"scale, translation, wavelet_weights float64 needs float64 x \(got x torch.float32\)"):
        wavkan_linear(x, s.double(), t.double(), w.double())
    with pytest.raises(TypeError, match=r"x is float64, so scale must be float64 too .* got scale torch.float32"):
        wavkan_linear(x.double(), s, t.double(), w.double())
    y = wavkan_linear(x.bfloat16(), s, t, w.half())
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("value, on", [("1", True), ("true", True), ("On", True), ("yes", True), ("0", False),
                                       ("false", False), ("off", False), ("2", False), ("", False)])  # fmt: skip
def test_triton_interpret_read_as_triton_reads_it(value, on, monkeypatch):
    """TRITON_INTERPRET=false/off/2 was taken as on, and the call failed inside Triton."""
    from wavkan import ops

    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert ops._interpreting() is on
    try:
        from triton import knobs
    except ImportError:  # a Triton without knobs: the words above are its documented ones
        return
    assert knobs.runtime.interpret is on


def test_cuda_triton_ops_are_defined_at_trace_time():
    """The CUDA triton ops are defined when torch.compile first traces a call that needs them:
    Dynamo calls ``cuda_ops_defined`` (marked as torch.compiler.assume_constant_result marks)
    instead of tracing it, which fails for a triton op's definition. Checked on the CPU in a
    fresh process (where no earlier test has defined them), with a function that asks for them."""
    pytest.importorskip("triton")
    code = ("import torch\n"
            "from wavkan import ops\n"
            "marked = torch.compiler.assume_constant_result(lambda: True)\n"
            "assert getattr(marked, '_dynamo_marked_constant', False) is True\n"
            "assert not hasattr(torch.ops.wavkan, 'linear_cuda')\n"
            "def needs_them(x):\n"
            "    return x + 1 if ops.cuda_ops_defined() else x\n"
            "y = torch.compile(needs_them, fullgraph=True, backend='aot_eager')(torch.zeros(3))\n"
            "assert torch.equal(y, torch.ones(3))\n"
            "assert hasattr(torch.ops.wavkan, 'linear_cuda') and hasattr(torch.ops.wavkan, 'linear_cuda_backward')\n"
            "print('ok')\n")
    run = run_python(code, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


_BROKEN_TOOLCHAIN = r"""
import warnings, torch
from wavkan import WavKANLinear, wavkan_linear
from wavkan.ops import resolve_backend
from wavkan.reference import reference_forward, reference_backward
torch.manual_seed(0)
layer = WavKANLinear(64, 32, batch_norm=False)  # backend "auto"
x = torch.randn(64, 64, requires_grad=True)
assert resolve_backend("auto", x) == "compiled"  # the compiler is on PATH
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y = layer(x)
    y.backward(torch.ones_like(y))
    layer(x)
messages = [str(w.message) for w in caught if "backend='auto' runs the CPU layers on the reference" in str(w.message)]
assert len(messages) == 1 and "could not build with the C++ compiler" in messages[0], [str(w.message) for w in caught]
args = (x.detach().double(), layer.scale.detach().double(), layer.translation.detach().double(),
        layer.wavelet_weights.detach().double())
assert torch.allclose(y.double(), reference_forward(*args, "mexican_hat"), rtol=1e-5, atol=1e-5)
grads = reference_backward(torch.ones(64, 32, dtype=torch.float64), *args, "mexican_hat")
assert torch.allclose(x.grad.double(), grads[0], rtol=1e-4, atol=1e-5)
assert resolve_backend("auto", x) == "reference"
try:
    wavkan_linear(x, layer.scale, layer.translation, layer.wavelet_weights, backend="compiled")
except RuntimeError as e:
    assert "backend='compiled' could not build here" in str(e), e
else:
    raise AssertionError("backend='compiled' ran without a working compiler")
print("fell back")
"""


# A compiler that answers --version (so Inductor takes it) and fails every build as one without
# Python's headers does; and one that fails even --version (Inductor finds no usable compiler).
_FAILING_BUILDS = ('#!/bin/sh\nfor a in "$@"; do case "$a" in --version|-v|-dumpversion) '
                   'echo "g++ (GCC) 12.2.0"; exit 0;; esac; done\n'
                   'echo "fatal error: Python.h: No such file or directory" >&2\nexit 1\n')
_FAILING_ALWAYS = '#!/bin/sh\necho "fatal error: Python.h: No such file or directory" >&2\nexit 1\n'


@pytest.mark.parametrize("compiler, reason", [(_FAILING_BUILDS, "Python.h: No such file or directory"),
                                              (_FAILING_ALWAYS, "No working C++ compiler")],
                         ids=["builds-fail", "no-working-compiler"])
def test_auto_falls_back_where_the_compiler_cannot_build(tmp_path, compiler, reason):
    """A C++ compiler on PATH that cannot build Inductor's code: backend="auto" computes the call
    on the reference with one warning naming why (the compiler's error line), and the process's
    later calls resolve to the reference; backend="compiled" is refused naming why. In a
    subprocess: the compiler is looked up at import."""
    cxx = tmp_path / "broken-c++"
    cxx.write_text(compiler)
    cxx.chmod(0o755)
    code = _BROKEN_TOOLCHAIN + f"assert {reason!r} in messages[0], messages[0]\n"
    result = run_python(code, {"CXX": str(cxx), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}, timeout=300)
    assert result.returncode == 0 and "fell back" in result.stdout, result.stdout + result.stderr


def test_only_toolchain_failures_mark_the_compiler_unusable(monkeypatch):
    """A compile that fails for another reason (a full disk, memory, a bug) propagates as it is
    and leaves the compiler usable; a toolchain failure becomes CompiledBuildError, flagged as
    the first in one call only, and marks the compiler unusable."""
    import wavkan.cpu as cpu

    monkeypatch.setattr(cpu, "_BUILD_FAILED", [])
    CppCompileError = type("CppCompileError", (RuntimeError,), {"__module__": "torch._inductor.exc"})

    def disk_full():
        raise RuntimeError("InductorError: OSError: [Errno 28] No space left on device") from OSError(28, "full")

    def toolchain():
        raise RuntimeError("InductorError") from CppCompileError("C++ compile error\n\nOutput:\nx.cpp:1: fatal error: Python.h: No such file")

    with pytest.raises(RuntimeError, match="No space left"):
        cpu._run(disk_full)
    assert cpu.build_failure() == "" and cpu.compiler_available() == cpu._COMPILER_FOUND
    firsts = []
    for _ in range(2):
        with pytest.raises(cpu.CompiledBuildError, match="x.cpp:1: fatal error: Python.h") as raised:
            cpu._run(toolchain)
        firsts.append(raised.value.first)
    assert firsts == [True, False]
    assert cpu.build_failure() == "x.cpp:1: fatal error: Python.h: No such file" and not cpu.compiler_available()
