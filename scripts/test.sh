#!/usr/bin/env bash
# Set up .venv with the test extras (and, as root on Debian, the browser), then run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# The playground's test drives a real browser: Debian's chromium and its driver, installed where we may (root, apt).
if ! command -v chromedriver >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing chromium + chromium-driver (for the playground's browser test)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver; } >/dev/null 2>&1 || echo "test: could not install chromium; the browser test will be skipped"
fi
exec .venv/bin/python -m pytest -q "$@"
