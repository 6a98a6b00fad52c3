#!/usr/bin/env bash
# Set up .venv with the test extras (and, as root on Debian, the browser), then run the whole test suite.
# Extra arguments go to pytest (-n 0: one process, in order).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# Debian packages some tests drive, installed where we may (root, apt): a real browser for the playground's test,
# GNU time for the FSDP memory test's peak over torchrun.
missing=""
command -v chromedriver >/dev/null 2>&1 || missing="chromium chromium-driver"
[ -x /usr/bin/time ] || missing="$missing time"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing $missing (for the playground's browser test and the FSDP memory test)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      $missing; } >/dev/null 2>&1 || echo "test: could not install $missing; the tests that need them will be skipped"
fi
# One worker per core, each taking whole files (module fixtures are built once): the end-to-end tests run their
# processes on one thread each (tests/conftest.py), so two at a time use a 2-core machine fully.
exec .venv/bin/python -m pytest -q -n auto --dist loadfile "$@"
