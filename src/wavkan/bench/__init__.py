"""Benchmark: the fused Wav-KAN op and network against the paper's formula, eager and compiled.

    python -m wavkan.bench [--quick] [--out DIR] [--wavelet NAME|all] [--dtype fp32|bf16|fp16 ...]
                           [--shape BxINxOUT ...] [--level all|op|network|conv] ...

Op level (one layer, no BatchNorm), modes:

- ``forward``: ``y = f(x, scale, translation, weights)`` with inputs that require grad (the
  training forward: it builds the autograd graph, which is dropped untimed);
- ``backward``: ``y.backward(g)`` alone; the forward that builds the graph runs before the
  start event of every repetition, outside the timed region. All four gradients (x, scale,
  translation, weights) are computed;
- ``full``: forward and backward together.

Providers: ``wavkan`` (``wavkan_linear(..., backend="triton")``), ``wavkan-fast`` (the same with
``fast_math=True``: the packed-half forward, fp16/bf16 only; its forward row notes its relative
error against the fp32 kernel on the same inputs), ``reference-eager`` (the
paper's formula, ``wavkan_linear_unchunked``, differentiated by autograd) and
``reference-compiled`` (``torch.compile(..., dynamic=False)`` of it, compiled once per shape).

Network level, the seed's protocol (benchmarks/RECORDED.md): widths 1024-1024-1024-1024-1024-128,
BatchNorm in every layer, batch 256, MSE loss against a random target, CUDA events around
``model(x)`` and around ``loss.backward()``. Providers ``wavkan``, ``wavkan-graphed`` (the same
model with the forward, the loss and the backward each replayed from a CUDA graph, captured as
the training app captures its step, so the events time the kernels without the host's launch
cost: ``network_step.CapturedNetwork``), ``paper-eager`` (the same
network computing each layer with the paper's formula), ``paper-compiled`` and ``mlp``
(nn.Linear + BatchNorm1d per layer, no activation: the seed's MLP row).

Figures: median, p20, p80 of per-repetition CUDA-event times (after warm-up; inputs rotate
among at least 3 sets, more when a set fits twice in L2). At the op level a GPU spin
(``torch.cuda._sleep``) is queued before each start event so the host has queued the whole
call before the GPU gets there: the events time GPU work, and the host's own time per call is
reported beside it (``host_ms``). The network level keeps the seed's protocol as it is
(events around the call, host time included when the GPU waits). Evaluations per second = B*in*out
(summed over layers for a network) / median time, counted the same way in every mode; the
fraction of the exp2 ceiling = evals * passes / time / ceiling, passes = 1 for forward and
backward and 2 for full (one exp2 per evaluation and pass); peak memory above what was
allocated before the timed step. The exp2 ceiling is measured first
(``wavkan.bench.ceiling``). The recorded figures for the seed's CUDA kernels (benchmarks/RECORDED.md), which cannot
be rerun, are added as rows marked "recorded".

Conv level (``--level conv``; not part of ``all``): one convolutional layer without BatchNorm in
three cases (``protocol.CONV_CASES``: a CIFAR-sized 3x3 layer, batch 128, 64 -> 64 channels,
32x32, padding 1; an ECG-like 1-D layer, batch 64, 12 -> 64 channels, kernel 7, length 5000; a
strided, dilated, grouped 3x3 layer), modes ``forward`` and ``full``, providers ``wavkan``
(``wavkan_conv(..., backend="triton")``), ``conv-kan-eager`` (torch-conv-kan's wavelet branch
restated: the (B, out, in, *spatial) wavelet tensor, then a grouped convolution:
``models.conv_kan_wavelet_branch``) and ``conv-kan-compiled`` (``torch.compile`` of it). Each row
gives the joint limit of the exp unit (one exp per wavelet value and pass) and the FMA pipe (one
FMA per tap forward, two more backward) and the fraction of it reached, and the peak extra memory
against the bytes of input, output, parameters and a gradient of each (``mem/io``); the fused
forward row notes its errors (output, four gradients) against the float64 reference.

Without a CUDA GPU it says so and returns 0; it never times the CPU or Triton's interpreter.

Modules: ``protocol`` (what is measured, the recorded baselines, the pure arithmetic),
``models`` (the baselines' networks), ``runners`` (CUDA-event timing; a fake runner for
``--dry-run``), ``report`` (CSV, table, plots), ``ceiling`` (the exp2 ceiling kernel), ``run``
(runs them and parses the options).
"""

from .run import build_parser, main

__all__ = ["main", "build_parser"]
