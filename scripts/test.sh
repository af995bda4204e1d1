#!/usr/bin/env bash
# Installs the gateway with its test dependencies into .venv, starts PostgreSQL and Redis
# if they are down, and runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
# promtool checks the alert rules and scrape config (Debian's prometheus package).
if ! command -v promtool >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q prometheus >/dev/null 2>&1 || \
   { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q prometheus >/dev/null 2>&1; }) || \
   echo "note: promtool unavailable; its checks will be skipped" >&2
fi
bash scripts/services-up.sh
exec .venv/bin/python -m pytest "$@"
