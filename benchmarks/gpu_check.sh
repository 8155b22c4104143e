#!/usr/bin/env bash
# The GPU checks, as one short script for a lent GPU machine (never part of the tests, which run on CPUs):
#   1. benchmarks/bench_replicas.py on CUDA: 1 / 100 / 1000 stacked replicas vs one separate run (MNIST-1D MLP);
#   2. every model trains through run.py on the GPU (none, 5 epochs; seed_cnn 3): the per-model GPU check;
#   3. the MLP and both conv nets as stacked replica groups (replicas=10, dropout + early stopping);
#   4. bench_replicas on CUDA: 10 stacked seeds vs 10 separate runs (MLP, cnn1d, seed_cnn).
# Usage (repository root): OUT=folder PY=python3 bash benchmarks/gpu_check.sh   (ACCEL=cpu: a smoke test without a GPU)
# Writes OUT/gpu_check.log (everything), OUT/gpu_scaling.md, OUT/gpu_runs.md (the runs' per-arm table),
# OUT/gpu_seeds10.md.
# Where regbench is not installed, PYTHONPATH must hold src/ and its pure-Python dependencies.
set -u
OUT=${OUT:-gpu_out}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 REGBENCH_DATA=${REGBENCH_DATA:-/tmp/regbench-data}
RUNS=/tmp/regbench-gpu-runs
GPU="trainer.accelerator=${ACCEL:-gpu} runs_root=$RUNS name=gpu trainer.progress_every=0"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, '| lightning', pl.__version__, '|', torch.cuda.get_device_name(0))"
  echo "== 1. 1000 / 100 / 1 stacked replicas vs one separate run (MNIST-1D MLP)"
  timeout 150 $PY benchmarks/bench_replicas.py --repeats 3 --epochs 5 --arms | tee "$OUT/gpu_scaling.md"
  echo "== 2. every model on the GPU, separate runs"
  timeout 100 $PY run.py -m model=mlp,resmlp,logreg,cnn1d regularizer=none trainer.max_epochs=5 $GPU
  timeout 60 $PY run.py -m +setting=mnist5k_seed_cnn regularizer=none trainer.max_epochs=3 $GPU
  echo "== 3. stacked replica groups on the GPU"
  timeout 120 $PY run.py -m +setting=mnist1d_mlp,mnist1d_cnn1d,mnist5k_seed_cnn regularizer=dropout_early_stop \
    replicas=10 seed=0 trainer.max_epochs=5 $GPU
  $PY -m regbench.tables "$RUNS/gpu" && cp "$RUNS/gpu/per_arm.md" "$OUT/gpu_runs.md"
  echo "== 4. 10 stacked seeds vs 10 separate runs on CUDA (MLP, cnn1d, seed_cnn)"
  timeout 180 $PY benchmarks/bench_replicas.py --device cuda --repeats 2 --epochs 5 --arms dropout --gpu-scaling \
    --settings mnist1d_cnn1d:5 mnist5k_seed_cnn:2 | tee "$OUT/gpu_seeds10.md"
} 2>&1 | tee "$OUT/gpu_check.log"
