#!/usr/bin/env bash
# The device checks in one command (run on a lent GPU machine from the repo root; figures
# go to BUILD_NOTES.md). Each benchmark runs with its own time limit; its log and final
# JSON line land in $OUT (results.jsonl). QUICK=1 runs the --quick shapes (a local dry run).
set -u
OUT=${OUT:-/tmp/gpu_suite}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
# Session 2 on an H200: first calls of the unrolled all-pairs programs spent minutes in
# XLA:GPU GEMM autotuning, so autotuning is off by default here (AUTOTUNE=4 turns it on)
# and compiled programs are cached across the benchmarks' processes.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=${AUTOTUNE:-0}"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}
PY=${PY:-python3}
Q=${QUICK:+--quick}
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi") | tee "$OUT/device.txt"
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1 | tail -1 | tee -a "$OUT/device.txt"
run() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" $PY "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc $((SECONDS - t0))s"
  [ $rc -eq 0 ] && tail -1 "$OUT/$name.log" | tee -a "$OUT/results.jsonl" || tail -5 "$OUT/$name.log"
}
run lead_scale 200 benchmarks/bench_lead_scale.py --repeats 3 $Q
run closed_form 90 benchmarks/bench_closed_form.py $Q
run cka 60 benchmarks/bench_cka.py $Q
run scaling 60 benchmarks/bench_scaling.py --repeats 3 $Q
run mlp 90 benchmarks/bench_mlp.py $Q
[ -z "${QUICK:-}" ] && run encoder 60 benchmarks/bench_encoder.py --gpu
exit 0
