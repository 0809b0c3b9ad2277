#!/usr/bin/env bash
# Set up .venv (tools/setup_env.sh --dev, and Chromium via apt-get when missing) and run the whole test suite.
#   bash tools/run_tests.sh [extra pytest arguments]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup_env.sh --dev   # with the extras of tests/test_export.py, tests/test_web.py and tests/test_cluster_launch.py
# tests/test_web.py drives the web page in headless Chromium: Debian's chromium + chromium-driver
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        echo "[run_tests] installing chromium and chromium-driver (apt-get) for tests/test_web.py"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
            echo "[run_tests] WARNING: apt-get install chromium chromium-driver failed: tests/test_web.py will fail" >&2
        fi
    else
        echo "[run_tests] WARNING: chromium / chromedriver missing (install: apt-get install chromium chromium-driver):" \
             "tests/test_web.py will fail" >&2
    fi
fi
exec "$ROOT/.venv/bin/python" -m pytest tests "$@"
