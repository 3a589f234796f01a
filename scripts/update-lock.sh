#!/usr/bin/env bash
# Refresh the tested lock: a brand-new virtual environment gets the newest releases (the drift
# check, scripts/test.sh --latest), the whole suite runs there, and only if it passes are that
# environment's exact versions written to requirements/lock.txt (scripts/lock.py write), with the
# suite's summary line in the header. Review the diff and commit it.
#
#   bash scripts/update-lock.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
. "$venv/bin/activate"
log=$(mktemp)
set +e
bash scripts/test.sh --latest "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" != 0 ]; then
  echo "== the suite failed on the newest releases: the lock is unchanged (log: $log, venv: $venv)"
  exit "$status"
fi
summary=$(grep -E '^[0-9]+ passed' "$log" | tail -1)
python scripts/lock.py write --summary "$summary"
rm -rf "$(dirname "$venv")" "$log"
git --no-pager diff --stat -- requirements/lock.txt || true
