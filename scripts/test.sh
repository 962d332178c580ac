#!/usr/bin/env bash
# The test command: set up (idempotent: installs missing Debian packages, builds), then run the whole
# GoogleTest suite through ctest. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ctest --test-dir build --output-on-failure -j2 --timeout 900
