#!/usr/bin/env bash
# Dependency audit of the lock: every pin in constraints.txt checked by pip-audit against PyPI's
# vulnerability service (the Python Packaging Advisory Database), with nothing installed.
#
#   bash scripts/audit.sh [VENV]   (pip-audit from VENV/bin, default .venv: the dev extra's)
#
# Exit 1: a vulnerability that scripts/audit-ignore.txt does not accept (`ID  # reason` lines),
# or a pin the service could not check (--strict). Exit 0: no finding, or the service could not
# be asked: then one line "dependency audit NOT RUN: <reason>". To tell these apart, pip-audit
# first checks a canary with published advisories: a service that reports none for it (no
# network, a registry mirror without vulnerability data) is not answering, and a clean audit
# from it would mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
LOCK=constraints.txt
IGNORE=scripts/audit-ignore.txt
CANARY="requests==2.31.0" # CVE-2024-35195, CVE-2024-47081 (fixed in 2.32.0 and 2.32.4)

pip_audit="$venv/bin/pip-audit"
[ -x "$pip_audit" ] || "$venv/bin/python" -m pip install -q -c "$LOCK" pip-audit
ignores=()
while read -r id reason; do
  [ -z "$id" ] || [[ "$id" == \#* ]] && continue
  if [[ "$reason" != \#* ]] || [ -z "${reason//[#[:space:]]/}" ]; then
    echo "audit.sh: $IGNORE: '$id' has no '# reason'" >&2
    exit 2
  fi
  ignores+=(--ignore-vuln "$id")
done <"$IGNORE"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "$CANARY" >"$work/canary.txt"
audit() { "$pip_audit" --no-deps --disable-pip --strict --progress-spinner off "$@"; }

# The canary's vulnerabilities come as table rows on stdout: `requests 2.31.0 <ID> <fix> ...`
rc=0
audit -r "$work/canary.txt" >"$work/canary.out" 2>"$work/canary.err" || rc=$?
if [ "$rc" = 0 ] || ! grep -qE "^requests +2\.31\.0 +[A-Za-z]" "$work/canary.out"; then
  why="$(grep -v '^WARNING' "$work/canary.err" | grep . | tail -n 1 | sed 's/^ERROR:[^:]*://')"
  [ "$rc" = 0 ] && why="no advisories reported for $CANARY, which has some"
  echo "dependency audit NOT RUN: the vulnerability service did not answer (${why:0:200})"
  exit 0
fi

rc=0
audit --desc on -r "$LOCK" "${ignores[@]}" >"$work/audit.out" 2>&1 || rc=$?
pins="$(grep -c "^[^# ]" "$LOCK" || true)"
if [ "$rc" = 0 ]; then
  echo "dependency audit: $pins pins in $LOCK, no known vulnerabilities" \
    "($((${#ignores[@]} / 2)) accepted in $IGNORE)"
  exit 0
fi
grep -v '^WARNING' "$work/audit.out" >&2 || true
echo "dependency audit FAILED: fix the pins (bash scripts/lock.sh --upgrade-package NAME) or" \
  "accept each finding with a reason in $IGNORE" >&2
exit 1
