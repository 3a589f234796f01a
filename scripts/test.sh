#!/usr/bin/env bash
# Install what the whole test suite needs into the active Python environment, then run it.
# torch first, pinned: here it is a local CPU build, and an unpinned torch would pull CUDA packages.
# lmms-eval goes in without its dependencies (its own pins would replace torch), then the few it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q torch==2.13.0
pip install -q -e ".[test]"
pip install -q --no-deps lmms-eval==0.7.3
pip install -q loguru datasets sacrebleu evaluate pytz tenacity pytablewriter
python -m pytest -q -p no:cacheprovider "$@"
