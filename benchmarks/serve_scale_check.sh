#!/usr/bin/env bash
# The serving step run on a bigger machine, e.g. a 16-core GPU machine (the GPU is not
# used): Ray colocated with an Ingress replica per two cores (step run from 200 req/s, then
# a 5-minute soak at 2,000 req/s, the target rate), then uvicorn with a worker per core (step
# run only). About 14 minutes. Needs data/ml-100k and the ML-100K artifacts of
# configs/serve_ml100k.yaml (README: train + export), and the project's venv.
# Results: benchmarks/results/scale/{ray,uvicorn}.json and the engines' step/soak JSON + PNGs.
set -eu
cores=$(nproc)
out=${OUT:-benchmarks/results/scale}
common=(--start-rate 200 --step-s 15 --step-max-total 240)
.venv/bin/python benchmarks/engine_compare.py --engines ray-colocated \
  --replicas $((cores / 2)) "${common[@]}" --soak-rates 2000 --soak-s 300 --out "$out/ray.json"
.venv/bin/python benchmarks/engine_compare.py --engines uvicorn --workers "$cores" \
  "${common[@]}" --soak-rates --out "$out/uvicorn.json"
