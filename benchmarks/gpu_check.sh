#!/usr/bin/env bash
# One short GPU check on a CUDA machine (e.g. one H100 or H200), in priority
# order, each step time-boxed so the whole run ends in about 8 minutes:
#   1. the gpu-marked tests (bf16 training, CUDA full ranking == CPU, chunked CE under autocast)
#   2. one SASRec training step in plain PyTorch (step_profile.py) at batch 64/256/1024
#   3. train_bench on CUDA in bf16: ML-100K and synth-1M (ML-1M size), SASRec and two-tower;
#      then synth-1M again with the network compiled (--compile true)
#   4. a 4-trial `recstack tune` study on ML-100K on the GPU (pruning, report, best.yaml)
#   5. train_bench at ML-20M size (synth-20m), SASRec, 300 batches + 20k validation users
#   6. inference_bench on CUDA: torch (CUDA) vs onnxruntime for SASRec and the user tower with
#      their parity (export parity on the GPU), and exact top-100 retrieval on the GPU over
#      100k / 1M items (torch matmul + topk) against FAISS on the CPU
# Results (JSON, logs, the study report) go to $OUT (default benchmarks/results/gpu); the
# last step prints a JSON summary of them all and writes it to $OUT/gpu_summary.json.
#
# On a machine without the Python deps, put wheels in .whl/ (see the README, "Benchmarks"); they are
# installed into /tmp/site first. Needs data/bench/ml100k (prepared ML-100K).
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3} -P"  # -P: import the installed recstack, not the repo's bare recstack/
STEPS=${STEPS:-gpu_tests,step_profile,train_bench,train_bench_compile,tune_gpu,train_bench_20m,inference}  # a subset reruns fewer
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && \
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
    --target /tmp/site . || exit 1
  export PYTHONPATH=/tmp/site
fi
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  [[ ",$STEPS," == *",$name,"* ]] || return 0
  echo "=== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "--- $name: rc=$rc in $((SECONDS - start))s"; tail -n 25 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"

step gpu_tests 90 $PY -m pytest -q -p no:cacheprovider -m gpu tests/training/test_gpu.py

step step_profile 60 $PY benchmarks/step_profile.py --device cuda --out "$OUT/step_profile.json"

step train_bench 150 $PY benchmarks/train_bench.py --sizes ml100k,synth-1m \
  --models sasrec,two_tower --epochs 2 --num_workers 4 --device cuda \
  --out "$OUT/train_bench_gpu.json"

# the same, the network compiled (recstack train --compile true): 3 epochs, the first compiles
step train_bench_compile 150 $PY benchmarks/train_bench.py --sizes synth-1m \
  --models sasrec,two_tower --epochs 3 --num_workers 4 --device cuda --compile true \
  --out "$OUT/train_bench_gpu_compile.json"

cat > /tmp/gpu_search.yaml <<'YAML'
sampler: {kind: tpe, seed: 0, n_startup_trials: 3}
pruner: {kind: median, n_startup_trials: 2, n_warmup_steps: 3}
fixed: {trainer.max_epochs: 8, trainer.enable_progress_bar: false, data.dataset: data/bench/ml100k}
params:
  model.optim.lr: {type: float, low: 3.0e-4, high: 5.0e-3, log: true}
  model.model.dropout: {type: float, low: 0.1, high: 0.6}
  model.model.n_layers: {type: int, low: 1, high: 3}
YAML
step tune_gpu 110 $PY -m recstack.cli tune --config configs/train/sasrec_ml100k.yaml \
  --search /tmp/gpu_search.yaml --study gpu-check --out /tmp/tune-gpu --n-trials 4
cp /tmp/tune-gpu/report.md /tmp/tune-gpu/report.json "$OUT/" 2>/dev/null

step train_bench_20m 150 $PY benchmarks/train_bench.py --sizes synth-20m --models sasrec \
  --epochs 2 --max_batches 300 --val_users 20000 --num_workers 4 --device cuda \
  --out "$OUT/train_bench_gpu_20m.json"
step inference 120 $PY benchmarks/inference_bench.py --device cuda \
  --out "$OUT/inference_bench_gpu.json" --plot "$OUT/inference_bench_gpu.png"

$PY benchmarks/gpu_summary.py "$OUT" | tee "$OUT/gpu_summary.json"
echo "done in ${SECONDS}s"
