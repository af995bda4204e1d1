#!/usr/bin/env bash
# Shows that every panel query of the operations dashboard returns data from a real
# Prometheus scraping a real gateway, and that Prometheus loads the alert rules.
#
#   deploy/prometheus-check.sh                  # starts its own gateway (2 workers when
#                                               # Redis answers on REDIS_URL), then checks
#   GATEWAY_URL=http://127.0.0.1:8080 ADMIN_KEY=sk-... deploy/prometheus-check.sh
#                                               # checks a gateway that is already running
#
# KEEP=1 keeps the gateway's and Prometheus's logs (printed path).
# Needs Prometheus (Debian/Ubuntu: apt-get install prometheus; or PROMETHEUS=/path/to/it)
# and the gateway's Python (PYTHON, default .venv/bin/python, else python3). Not part of
# the test suite: it takes about 30 seconds and runs real servers.
#
# Its own gateway has a provider that refuses connections (`down`), so the traffic also
# produces upstream errors, retries, fallbacks, an open circuit and 502s. Against another
# gateway the traffic is plain and streamed requests to simulated/chat, so the panels of
# failures show their 0 fallback values.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROMETHEUS=${PROMETHEUS:-prometheus}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/15}
command -v "$PROMETHEUS" >/dev/null || { echo "prometheus not found (apt-get install prometheus)" >&2; exit 2; }

WORK=$(mktemp -d -t prometheus-check.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() {  # url, what
  for _ in $(seq 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "$2 did not come up ($1); logs in $WORK" >&2
  tail -n 30 "$WORK"/*.log >&2 || true
  exit 1
}

OWN=0
if [ -z "${GATEWAY_URL:-}" ]; then
  OWN=1
  PORT=$(free_port)
  ADMIN_KEY=sk-check-$(date +%s)
  WORKERS=1
  if "$PYTHON" -c "import redis,sys; redis.Redis.from_url('$REDIS_URL').ping()" 2>/dev/null; then
    WORKERS=2
  fi
  cat >"$WORK/gateway.toml" <<EOF
port = $PORT
workers = $WORKERS
$( [ "$WORKERS" -gt 1 ] && echo "redis_url = \"$REDIS_URL\"" )
redis_namespace = "prometheus-check-$$"
data_dir = "$WORK/data"
database_url = "sqlite:///$WORK/data/proxy.db"

[providers.down]          # refuses connections: errors, retries, fallbacks, a circuit opening
protocol = "openai"
base_url = "http://127.0.0.1:$(free_port)/v1"
api_key_env = "CHECK_DOWN_KEY"
connect_timeout_s = 1

[[models]]
id = "down/chat"
provider = "down"
upstream = "chat"

[policies.retry-then-fallback]
strategy = "fallback"
models = ["down/chat", "simulated/chat"]
retries = 1
EOF
  echo "starting a gateway with $WORKERS worker(s) on :$PORT"
  CHECK_DOWN_KEY=unused PROXY_ADMIN_KEY=$ADMIN_KEY \
    "$PYTHON" -m proxy serve --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
  PIDS+=($!)
  GATEWAY_URL=http://127.0.0.1:$PORT
fi
: "${ADMIN_KEY:?set ADMIN_KEY to an admin key of the gateway at GATEWAY_URL}"
wait_http "$GATEWAY_URL/healthz" gateway

PROM_PORT=$(free_port)
TARGET=${GATEWAY_URL#*://}
cp deploy/prometheus/alerts.yml "$WORK/alerts.yml"
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: proxy
    static_configs:
      - targets: ["$TARGET"]
        labels: {gateway: check}
EOF
"$PROMETHEUS" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PROM_PORT/-/ready" prometheus
echo "prometheus $("$PROMETHEUS" --version 2>&1 | head -n1 | cut -d' ' -f3) on :$PROM_PORT, scraping $TARGET every second"

GATEWAY_URL=$GATEWAY_URL ADMIN_KEY=$ADMIN_KEY OWN=$OWN PROM="http://127.0.0.1:$PROM_PORT" \
DASHBOARD="$ROOT/deploy/grafana/dashboards/operations.json" "$PYTHON" - <<'EOF'
import asyncio, json, os, re, sys, time, urllib.parse, urllib.request

import aiohttp

GW, KEY, PROM = os.environ["GATEWAY_URL"], os.environ["ADMIN_KEY"], os.environ["PROM"]
OWN = os.environ["OWN"] == "1"
USER = [{"role": "user", "content": "hello from prometheus-check"}]


async def traffic() -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    bodies = [{"model": "simulated/chat", "messages": USER},
              {"model": "simulated/chat", "messages": USER, "stream": True}]
    if OWN:
        bodies += [{"model": "policy/retry-then-fallback", "messages": USER},
                   {"model": "down/chat", "models": ["simulated/chat"], "messages": USER,
                    "stream": True},
                   {"model": "down/chat", "messages": USER}]  # 502
    statuses: dict[int, int] = {}
    for _ in range(8):  # spread over several scrapes
        for body in bodies:
            async with aiohttp.ClientSession() as http:  # fresh connections: every worker
                resp = await http.post(GW + "/v1/chat/completions", json=body, headers=headers)
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
        await asyncio.sleep(0.5)
    print("traffic sent, statuses:", dict(sorted(statuses.items())))


def query(expr: str) -> list[dict]:
    url = PROM + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


# Prometheus takes a few seconds to turn the config into a scrape target.
deadline = time.monotonic() + 30
while not query('up{job="proxy"} == 1'):
    assert time.monotonic() < deadline, "prometheus never scraped the gateway"
    time.sleep(0.5)
asyncio.run(traffic())
time.sleep(4)  # a few more scrapes after the last request

board = json.load(open(os.environ["DASHBOARD"]))
failed = 0
names: set[str] = set()
for panel in board["panels"]:
    for target in panel.get("targets", []):
        expr = target["expr"].replace("$gateway", ".*").replace("$__rate_interval", "1m")
        names.update(re.findall(r"\bproxy_[a-z0-9_]+", re.sub(r'"[^"]*"', "", expr)))
        result = query(expr)
        shown = ", ".join(
            f"{' '.join(f'{k}={v}' for k, v in r['metric'].items() if k not in ('job', 'instance')) or '-'}"
            f" = {float(r['value'][1]):.6g}" for r in result[:4])
        more = f" (+{len(result) - 4} more)" if len(result) > 4 else ""
        mark = "ok  " if result else "NONE"
        failed += not result
        print(f"{mark} {panel['title']} [{target['refId']}]: {shown}{more}")
print()
for name in sorted(names):
    n = len(query(f'{{__name__="{name}"}}'))
    mark = "ok  " if n else "NONE"
    failed += OWN and not n  # against another gateway, failures may simply not happen
    print(f"{mark} {name}: {n} series")
rules = json.load(urllib.request.urlopen(PROM + "/api/v1/rules", timeout=10))["data"]["groups"]
bad = [r["name"] for g in rules for r in g["rules"] if r.get("health") != "ok"]
print(f"\nalert rules loaded: {sum(len(g['rules']) for g in rules)}, unhealthy: {bad or 'none'}")
firing = [a["labels"]["alertname"] for a in json.load(urllib.request.urlopen(
    PROM + "/api/v1/alerts", timeout=10))["data"]["alerts"]]
print(f"alerts pending or firing: {sorted(set(firing)) or 'none'}")
failed += len(bad)
print("\nPASS: every panel query returned data" if not failed else f"\nFAIL: {failed} problem(s)")
sys.exit(1 if failed else 0)
EOF
