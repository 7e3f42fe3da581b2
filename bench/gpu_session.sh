#!/usr/bin/env bash
# One prepared run for a lent GPU (the device tool runs it from the repo root; $OUT comes back).
#   1. install seedfast into the machine's own torch/triton (no network there: --no-deps),
#   2. the GPU tests (kernels compiled for real, graph capture, graph-vs-eager decoding),
#   3. every benchmark suite side by side with its peers; the JSON lands in $OUT,
#   4. the tokenizer training budget (stage-2 MFU at official sizes vs the paper's V100-days).
# Usage: bash bench/gpu_session.sh [--full]   (default: seedfast bench --quick; the three phases are
# capped at 150 + 300 + 120 s so one device call of 600 s holds them)
set -uo pipefail
export PYTHONUNBUFFERED=1 SEEDFAST_SKIP_AOT=1
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
quick="--quick"
[ "${1:-}" = "--full" ] && quick=""

python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
  || { echo "install failed:"; tail -20 "$OUT/install.log"; exit 1; }
python3 -m seedfast env | tee "$OUT/env.txt"

timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/ops tests/generation tests/models/test_llama.py \
  tests/benchmarks/test_constrained_sample.py tests/benchmarks/test_decode.py \
  2>&1 | tee "$OUT/gpu_tests.log" | tail -15

timeout 300 python3 -m seedfast bench $quick --out "$OUT" --plot "$OUT/speedups.png" 2>"$OUT/bench.err" \
  | tee "$OUT/bench.txt"
tail -5 "$OUT/bench.err"

timeout 120 python3 -m seedfast budget --measure --preset official --batch 256 --out "$OUT" 2>&1 \
  | tee -a "$OUT/bench.txt" | tail -25
