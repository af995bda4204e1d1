#!/usr/bin/env bash
# The house checks: ruff (rules in pyproject.toml) and mypy --strict on proxy/ and tests/.
# Installs the exact versions of requirements/lint-lock.txt into .venv first (the test
# dependencies too: mypy reads their types). Exit status non-zero on any finding.
# `scripts/lint.sh --no-install` skips the install (a venv that already has them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" != "--no-install" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements/lint-lock.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
fi
.venv/bin/ruff check proxy tests
.venv/bin/mypy proxy tests
