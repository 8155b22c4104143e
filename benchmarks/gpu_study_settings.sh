#!/usr/bin/env bash
# On a lent GPU machine: 10 stacked seeds vs 10 separate runs of the study's three model kinds at the
# study's own lengths (mnist1d_mlp 170 epochs, mnist1d_cnn1d 100, mnist5k_seed_cnn 8; regularizer=dropout,
# one repeat), the per-setting evidence for what stacking would gain the study on a GPU.
# Usage (repository root): OUT=folder PY=python3 bash benchmarks/gpu_study_settings.sh -> OUT/gpu_study_settings.md
# Where regbench is not installed, PYTHONPATH must hold src/, tests/ and its pure-Python dependencies.
set -u
OUT=${OUT:-gpu_out}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 REGBENCH_DATA=${REGBENCH_DATA:-/tmp/regbench-data}
timeout 420 $PY benchmarks/bench_replicas.py --device cuda --repeats 1 --arms dropout --gpu-scaling \
  --settings mnist1d_cnn1d:100 mnist5k_seed_cnn:8 --epochs 170 2>&1 | tee "$OUT/gpu_study_settings.md"
