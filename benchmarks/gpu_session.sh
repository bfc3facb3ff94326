#!/usr/bin/env bash
# The benchmark on the H200 machine: run from the repository root, with OUT set to the folder
# whose contents come back. Writes $OUT/bench/{results.csv,*.png} and the log $OUT/bench.log.
# Extra arguments go to the benchmark (e.g. --quick). About 2 minutes for the default set (H200, cold).
set -euo pipefail
: "${OUT:?set OUT to the output folder}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/bench"
{
    echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(git rev-parse --short HEAD 2>/dev/null || echo no-git)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm --format=csv || true
    python -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)' || true
    time python -m wavkan.bench --out "$OUT/bench" "$@"
} 2>&1 | tee "$OUT/bench.log"
