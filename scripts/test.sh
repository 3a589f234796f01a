#!/usr/bin/env bash
# Install what the whole test suite needs into the active Python environment, then run it.
#
#   bash scripts/test.sh [--latest | --lowest] [pytest arguments]
#
#   (default)  the tested lock, requirements/lock.txt: what the README and CI (.ci/run) run.
#   --latest   the drift check: the newest release of every dependency instead of the lock (only the
#              upstream breakages in requirements/upstream-caps.txt stay capped, and say so), then
#              the installed versions against the lock. Run it in a new virtual environment.
#   --lowest   pyproject.toml's lower bounds of the package's own dependencies (scripts/lock.py lowest).
#
# torch is installed first and pinned ($HIRES_VLM_TORCH, default torch==2.13.0): here it is a local
# CPU build, and an unpinned torch would pull gigabytes of CUDA packages. It stays at that build in
# every mode. lmms-eval goes in last, without its dependencies (its own pins would replace torch and
# pull torchvision and wandb); requirements/lmms-eval.txt lists the part of them it needs here.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=lock
case "${1:-}" in
  --latest|--lowest) mode=${1#--}; shift ;;
esac
TORCH=${HIRES_VLM_TORCH:-torch==2.13.0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "$TORCH" > "$tmp/torch.txt"

upgrade=()
case $mode in
  lock)
    cons=(-c requirements/lock.txt)
    echo "== installing the tested lock (requirements/lock.txt: $(sed -n 's/^# Date: \([0-9-]*\).*/\1/p' requirements/lock.txt))" ;;
  latest)
    cons=(-c "$tmp/torch.txt" -c requirements/upstream-caps.txt)
    upgrade=(--upgrade --upgrade-strategy eager)
    echo "== drift check: installing the newest releases (not the lock); kept capped upstream:"
    grep -v '^#' requirements/upstream-caps.txt | sed '/^$/d; s/^/     /' ;;
  lowest)
    python scripts/lock.py lowest > "$tmp/lowest.txt"
    cons=(-c "$tmp/lowest.txt" -c "$tmp/torch.txt" -c requirements/upstream-caps.txt)
    echo "== installing pyproject.toml's lower bounds: $(grep -v '^#' "$tmp/lowest.txt" | tr '\n' ' ')" ;;
esac

# This machine's pip configuration names local index folders that may not exist; pip then prints one
# "Location … is ignored" line per package. Only those lines are dropped; pip's status is kept.
pipq() {
  python -m pip install -q --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "^WARNING: Location 'file://.*' is ignored: it is neither a file nor a directory\.$" || true; }
  return "${PIPESTATUS[0]}"
}
pipq "${cons[@]}" "$TORCH"
if [ "$mode" = lowest ]; then
  # The lower bounds of the package's own dependencies; lmms-eval (an optional integration, tested on the
  # lock and by --latest) is left out: its datasets/huggingface-hub pins cannot meet transformers 5.0's.
  pipq "${cons[@]}" "$TORCH" -e ".[test,lora]"
else
  # pip's resolver makes this set consistent; its conflict report would only list lmms-eval's
  # deliberately missing dependencies on a rerun, so it is off here and `pip check` below says the rest.
  pipq --no-warn-conflicts "${cons[@]}" "${upgrade[@]}" "$TORCH" -e ".[test]" -r requirements/lmms-eval.txt
  pipq --no-deps "${cons[@]}" "${upgrade[@]}" lmms-eval
  export HIRES_VLM_REQUIRE_LMMS_EVAL=1  # its tests fail, rather than skip, if it did not install
fi

# Every installed distribution's requirements hold, but lmms-eval's (installed --no-deps on purpose).
problems=$(python -m pip check 2>&1 | grep -v -e '^lmms-eval ' -e '^No broken requirements' || true)
if [ -n "$problems" ]; then
  echo "== pip check found broken requirements:"; echo "$problems"; exit 1
fi
# The web demo's browser test (tests/serve/test_browser.py) drives a Chromium through Playwright, whose own
# browser download needs more than PyPI: Debian's chromium is used instead, installed here when it is missing
# and apt-get can (root; HIRES_VLM_NO_BROWSER_INSTALL=1 skips this). With a Chromium present the test must run:
# HIRES_VLM_REQUIRE_BROWSER=1 makes it fail instead of skip.
chromium_path() { command -v chromium || command -v chromium-browser || command -v google-chrome \
  || command -v google-chrome-stable || true; }
if [ -z "$(chromium_path)" ] && [ -z "${HIRES_VLM_CHROMIUM:-}" ] && [ -z "${HIRES_VLM_NO_BROWSER_INSTALL:-}" ] \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing Debian's chromium for the browser test (apt-get)"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$tmp/apt.log" 2>&1; then
    echo "== apt-get could not install chromium; the browser test will skip:"; tail -n 5 "$tmp/apt.log"
  fi
fi
if [ -n "${HIRES_VLM_CHROMIUM:-}$(chromium_path)" ]; then
  export HIRES_VLM_REQUIRE_BROWSER=1
  echo "== browser test: ${HIRES_VLM_CHROMIUM:-$(chromium_path)} (required)"
else
  echo "== no Chromium and no apt-get as root: the browser test will skip"
fi
python - <<'PY'
import importlib.metadata as md
names = ["torch", "transformers", "accelerate", "peft", "tokenizers", "huggingface-hub", "safetensors", "lmms-eval"]
def version(n):
    try:
        return md.version(n)
    except md.PackageNotFoundError:
        return "not installed"
print("== installed: " + ", ".join(f"{n} {version(n)}" for n in names))
PY

status=0
python -m pytest -q -p no:cacheprovider "$@" || status=$?
case $mode in
  latest) echo "== drift check: installed against the lock"; python scripts/lock.py compare || true ;;
  lock) python scripts/lock.py drift || true ;;
esac
exit $status
