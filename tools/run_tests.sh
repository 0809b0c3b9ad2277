#!/usr/bin/env bash
# Set up .venv (tools/setup_env.sh) and run the whole test suite.
#   bash tools/run_tests.sh [extra pytest arguments]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup_env.sh
exec "$ROOT/.venv/bin/python" -m pytest tests "$@"
