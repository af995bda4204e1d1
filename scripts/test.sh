#!/usr/bin/env bash
# Installs the gateway with its test and lint dependencies into .venv (the exact versions of
# requirements/lint-lock.txt, a superset of test-lock.txt), runs the house checks (ruff and
# mypy --strict, scripts/lint.sh), starts PostgreSQL and Redis if they are down, and runs the
# whole test suite; a lint or type error fails it before any test runs. Extra arguments go
# to pytest: `scripts/test.sh -m "not slow"` is the quick run (no multi-process tests); CI
# runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements/lint-lock.txt
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
# promtool checks the alert rules and scrape config (Debian's prometheus package).
if ! command -v promtool >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q prometheus >/dev/null 2>&1 || \
   { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q prometheus >/dev/null 2>&1; }) || \
   echo "note: promtool unavailable; its checks will be skipped" >&2
fi
bash scripts/lint.sh --no-install
bash scripts/services-up.sh
exec .venv/bin/python -m pytest "$@"
