#!/usr/bin/env bash
# Regenerates the lock files from pyproject.toml, with hashes:
#   requirements/lock.txt       the runtime dependencies (the Docker image installs these)
#   requirements/test-lock.txt  runtime + the `test` extra (the test dependencies alone)
#   requirements/lint-lock.txt  runtime + `test` + `lint` (test.sh and lint.sh install these)
# Run it after changing a dependency in pyproject.toml, and commit the three files.
# pip-tools lives in its own virtualenv (LOCK_VENV), never in the project's.
# Versions are resolved for the running Python (3.11 here; the image's 3.12 installs the
# same pins); `--upgrade` as an argument moves every pin to the newest allowed version.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LOCK_VENV:-${TMPDIR:-/tmp}/llm-proxy-lockvenv}
[ -x "$VENV/bin/pip-compile" ] || {
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'pip-tools>=7.6,<8'
}
mkdir -p requirements
compile() {
  local out=$1; shift
  CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$VENV/bin/pip-compile" -q --generate-hashes \
    --allow-unsafe --strip-extras --no-emit-index-url --output-file "$out" "$@" pyproject.toml
}
compile requirements/lock.txt "$@"
compile requirements/test-lock.txt --extra test "$@"
compile requirements/lint-lock.txt --extra test --extra lint "$@"
echo "requirements/: lock.txt, test-lock.txt, lint-lock.txt written"
