#!/usr/bin/env bash
# Dependency audit: every package installed in the venv, checked against the Python Packaging
# Advisory Database (pip-audit's PyPI service). --strict: a package that could not be audited
# (no answer from the service) is a failure, never a silent "no known vulnerabilities".
# Usage: bash scripts/audit.sh [VENV]   (the venv of the README's commands by default)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
"$venv/bin/python" -m pip_audit --version >/dev/null 2>&1 || "$venv/bin/python" -m pip install -q "pip-audit>=2.7"
exec "$venv/bin/python" -m pip_audit --strict --skip-editable --progress-spinner off --desc on
