"""Benchmark: the fused Wav-KAN op and network against the paper's formula, eager and compiled.

    python -m wavkan.bench [--quick] [--out DIR] [--wavelet NAME|all] [--dtype fp32|bf16|fp16 ...]
                           [--shape BxINxOUT ...] [--level all|op|network|conv]
                           [--protocol cuda-port|kan-benchmarking ...] ...

Op level (one layer, no BatchNorm), modes:

- ``forward``: ``y = f(x, scale, translation, weights)`` with inputs that require grad (the
  training forward: it builds the autograd graph, which is dropped untimed);
- ``backward``: ``y.backward(g)`` alone; the forward that builds the graph runs before the
  start event of every repetition, outside the timed region. All four gradients (x, scale,
  translation, weights) are computed;
- ``full``: forward and backward together.

Providers: ``wavkan`` (``wavkan_linear(..., backend="triton")``), ``linear`` (``nn.Linear(in,
out)`` with its bias, called as a module, the row's weights: what a plain layer of the same
in/out costs), ``reference-eager`` (the paper's formula, ``wavkan_linear_unchunked``,
differentiated by autograd) and ``reference-compiled`` (``torch.compile(..., dynamic=False)``
of it, compiled once per shape).

Every op row carries three figures, side by side: the GPU time (``median_ms``: a GPU spin,
``torch.cuda._sleep``, queued before each start event lets the host queue the whole call before
the GPU gets there, so the events time GPU work alone), the latency with a synchronize per call
(``latency_ms``: the GPU idle, events around the call, then ``torch.cuda.synchronize()``, as the
public protocols time it: where the GPU waits for the host, the wait counts) and the host's wall
time per call (``host_ms``). Where host time exceeds GPU time, a loop of calls is host-bound.

Network level, one protocol or more (``--protocol``, ``protocol.PROTOCOLS``):

- ``cuda-port`` (default), the seed's protocol (benchmarks/RECORDED.md): widths
  1024-1024-1024-1024-1024-128, BatchNorm in every layer, batch 256, MSE loss against a random
  target, gradients set to None before each step, the median reported;
- ``kan-benchmarking``, the public KAN-benchmarking repository's ``benchmark.py`` at the options
  of its Wav-KAN figures: the Wav-KAN network 1000-2000-1 (BN in every layer), its MLP
  1000-10000-1 with ReLU and a sigmoid, batches of 100 rows drawn from 1000 rows in host memory
  and copied before the start event, MSE, gradients never zeroed (they accumulate), one
  dropped step then 10 timed ones, the mean reported.

Each step: CUDA events around ``model(x)``, a synchronize, the loss (untimed), events around
``loss.backward()``, a synchronize; the host's time of each call beside. Providers ``wavkan``
(``WavKAN``, backend triton, eager), ``wavkan-compiled`` (``torch.compile(model)``, the default
mode), ``wavkan-reduce-overhead`` (``torch.compile(model, mode="reduce-overhead")``),
``wavkan-graphed`` (the forward, the loss and the backward each replayed from a CUDA graph,
captured as the training app captures its step: ``network_step.CapturedNetwork``),
``paper-eager`` (the same network computing each layer with the paper's formula),
``paper-compiled``, ``mlp`` (the protocol's MLP), ``mlp-compiled`` (``torch.compile`` of it, the
default mode: what compiling costs or saves a network with no wavelet in it, beside
``wavkan-compiled``) and ``mlp-graphed``. The untimed first steps
(1; 3 for compiled providers: the compile, the CUDA-graph warm-up and recording) are reported
as ``first_call_s`` and never enter a statistic. ``params`` = sum(p.numel()) of the model.

Figures: median, p20, p80 and mean of per-repetition CUDA-event times (after warm-up; op inputs
rotate among at least 3 sets, more when a set fits twice in L2). Evaluations per second =
B*in*out (summed over layers for a network) / median time, counted the same way in every mode;
the fraction of the exp2 ceiling = evals * passes / time / ceiling, passes = 1 for forward and
backward and 2 for full (one exp2 per evaluation and pass); peak memory above what was
allocated before the timed call. The exp2 ceiling is measured first (``wavkan.bench.ceiling``).
The recorded figures for the seed's CUDA kernels (benchmarks/RECORDED.md), which cannot be
rerun, are added as rows marked "recorded".

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
``models`` (each network provider's module), ``runners`` (CUDA-event timing; a fake runner for
``--dry-run``), ``report`` (CSV, table, plots), ``ceiling`` (the exp2 ceiling kernel), ``run``
(runs them and parses the options).
"""

from .run import build_parser, main

__all__ = ["main", "build_parser"]
