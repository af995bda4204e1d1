#!/usr/bin/env bash
# The benchmark, from a fresh clone: installs what it needs, then runs loadtest/bench.py.
#   nginx-light and wrk (the bench's upstream and load generator), when root and missing;
#   the gateway into .venv (the exact versions of requirements/lock.txt), which bench.py
#   runs the gateway and the bare forwarder with;
#   PostgreSQL and Redis started if installed and down (scripts/services-up.sh).
# Arguments go to bench.py: `scripts/bench.sh --quick`, `scripts/bench.sh --ratio`, ...
# LiteLLM (the `litellm` target) is not installed here: see loadtest/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || \
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${missing[@]}" >/dev/null; }
  else
    echo "bench: missing ${missing[*]}: apt-get install -y ${missing[*]} (as root)" >&2
    exit 2
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements/lock.txt
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
bash scripts/services-up.sh >/dev/null
exec "$PY" loadtest/bench.py "$@"
