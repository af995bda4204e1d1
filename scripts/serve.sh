#!/usr/bin/env bash
# Installs the gateway into .venv and starts it on its embedded defaults
# (SQLite in ./proxy-data, in-process limits and cache, the simulated provider).
# Extra arguments go to `python -m proxy serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e .
exec .venv/bin/python -m proxy serve "$@"
