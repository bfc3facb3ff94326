#!/usr/bin/env bash
# A short GPU session for a tree whose training runs are already measured: the kernel tests,
# the quick benchmark, the quick config sweep and the host-overhead profile, most important
# first, each under its own time limit. From the repository root: OUT=results bash benchmarks/h200_final.sh
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-h200-results}
mkdir -p "$OUT"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
timeout 130 python -m pytest -q -p no:cacheprovider tests/test_kernels.py 2>&1 | tee "$OUT/pytest.log" | tail -12
timeout 130 python -m wavkan.bench --quick --out "$OUT/bench" 2>&1 | tail -42
timeout 70 python benchmarks/kernel_sweep.py --quick --out /tmp 2>&1 | grep -v failed > "$OUT/sweep.log"; grep best "$OUT/sweep.log"
timeout 30 python benchmarks/host_profile.py > "$OUT/host_profile.log" 2>&1; head -30 "$OUT/host_profile.log"
