#!/usr/bin/env bash
# The README's test command: set up the venv (Python 3.11, the versions of the lock
# constraints.txt), lint, audit the lock and run the default test suite (not slow, not gpu).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --editable --extras dev --quiet .venv  # the venv with $PYTHON (python3.11)
# PostgreSQL (multi-worker tuning test), redis-server (online store, multi-replica serving) and
# Prometheus with promtool (alert rules and dashboard, tests/ops): the tests start their own
# throwaway servers on free loopback ports, and are skipped where the binaries are missing and
# cannot be installed.
missing=()
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
{ command -v prometheus && command -v promtool; } >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") \
    >/dev/null 2>&1 || echo "note: could not install ${missing[*]}; their tests will be skipped"
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/hadolint --failure-threshold style Dockerfile.gpu
# The lock against PyPI's vulnerability advisories: a finding fails the run unless
# scripts/audit-ignore.txt accepts it; where the service cannot be reached it says "NOT RUN".
bash scripts/audit.sh
# One pytest-xdist worker per core; the modules that start a local Ray, and the retrain loop's,
# run on one worker, in turn (tests/ray_modules.py). One BLAS/OpenMP thread per process: the workers, the training runs
# they start and a test's Ray replicas would otherwise each take every core.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
SCHEMATHESIS=tests/serving/test_schemathesis.py
.venv/bin/python -m pytest -n auto --ignore "$SCHEMATHESIS" "$@"
# Then schemathesis in a pytest of its own: under xdist it folds its per-operation tests into
# one and sends a seventh of its requests (402 instead of about 2,800).
.venv/bin/python -m pytest -n 0 "$SCHEMATHESIS"
