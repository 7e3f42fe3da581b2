#!/usr/bin/env bash
# One prepared run for a lent GPU (the device tool runs it from the repo root; $OUT comes back).
# Everything is in bench/gpu_session.py: each phase (install, env, GPU tests, one process per
# benchmark suite with VQ and sampling first and decode last) has its own timeout under one
# 540 s deadline, and writes its files into $OUT (else bench/results/) as soon as it ends.
# Usage: bash bench/gpu_session.sh [--quick] [--device cpu] [--deadline S] [--skip-install]
#   CPU dry run (what CI runs): bash bench/gpu_session.sh --device cpu --quick --skip-install
# $PYTHON picks the interpreter (default: python3 on PATH), e.g. a virtual environment's.
set -uo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" bench/gpu_session.py "$@"
