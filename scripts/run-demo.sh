#!/usr/bin/env bash
# The demo stack, in the foreground: mock-llm (the "providers"), tollgate-counter (budgets, on
# 127.0.0.1:8787) and Envoy with the Tollgate filter on 127.0.0.1:10000 (admin 127.0.0.1:9901),
# access log on this terminal. Ctrl-C stops everything
# this script started. The filter's configuration is envoy/demo-config.json (README.md, "Configuration reference").
# A small webhook receiver (scripts/webhook-receiver.py, 127.0.0.1:9300) prints the alerts the counter
# sends (signed Slack-shaped messages, docs/counter.md "Notifications").
# Ports can be moved: LISTEN_PORT, ADMIN_PORT, MOCK_PORT, COUNTER_PORT, WEBHOOK_PORT; DEMO_DIR (default .run/demo)
# holds logs and the counter's data, emptied at every start so the walkthrough below always starts
# from fresh books (envoy/tests/test_demo.py runs it as printed).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
LISTEN_PORT="${LISTEN_PORT:-10000}"
ADMIN_PORT="${ADMIN_PORT:-9901}"
MOCK_PORT="${MOCK_PORT:-9100}"
COUNTER_PORT="${COUNTER_PORT:-8787}"
WEBHOOK_PORT="${WEBHOOK_PORT:-9300}"
WASM="$CARGO_TARGET_DIR/wasm32-wasip1/release/tollgate.wasm"
MOCK="$CARGO_TARGET_DIR/release/mock-llm"
COUNTER="$CARGO_TARGET_DIR/release/tollgate-counter"
ENVOY=.venv/bin/envoy
RUN="${DEMO_DIR:-.run/demo}"
mkdir -p "$RUN"

for f in "$WASM" "$MOCK" "$COUNTER" "$ENVOY"; do
  [ -e "$f" ] || { echo "run-demo: $f is missing: run 'make build' (or 'make run', which builds first)" >&2; exit 2; }
done

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "run-demo: stopped"
}
trap cleanup INT TERM EXIT

wait_http() { # url, what, seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "run-demo: $2 did not become ready at $1 within $3 s (logs in $RUN/)" >&2
  exit 1
}

# 1. The mock LLM upstream: every provider cluster points at it.
"$MOCK" --listen "127.0.0.1:$MOCK_PORT" --record-limit 200 >"$RUN/mock-llm.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/__mock/health" mock-llm 10

# 2a. The webhook receiver: prints each alert on this terminal after checking its signature.
export TOLLGATE_WEBHOOK_SECRET=demo-webhook-secret-0123456789
python3 scripts/webhook-receiver.py --port "$WEBHOOK_PORT" --secret-env TOLLGATE_WEBHOOK_SECRET &
pids+=($!)
cat >"$RUN/notify.json" <<NOTIFY
{"webhooks": [{"name": "demo-slack", "url": "http://127.0.0.1:$WEBHOOK_PORT/hooks/demo", "format": "slack",
               "secret_env": "TOLLGATE_WEBHOOK_SECRET"}],
 "evaluation": {"tick_ms": 200}}
NOTIFY

# 2. tollgate-counter: budgets (envoy/demo-budgets.json), leases and the ledger, in $RUN/counter-data.
#    The tokens are demo values; a real deployment keeps them in secrets (docs/counter.md).
cat >"$RUN/tokens.json" <<'TOKENS'
{"gateway": {"demo": "demo-gateway-token"}, "admin": {"demo-admin": "demo-admin-token"},
 "personal": {"user:alice": "demo-alice-personal-token"}}
TOKENS
rm -rf "$RUN/counter-data"
mkdir -p "$RUN/counter-data"
"$COUNTER" serve --listen "127.0.0.1:$COUNTER_PORT" --data "$RUN/counter-data" \
  --budgets envoy/demo-budgets.json --tokens "$RUN/tokens.json" --notify "$RUN/notify.json" 2>"$RUN/counter.log" &
pids+=($!)
wait_http "http://127.0.0.1:$COUNTER_PORT/healthz" tollgate-counter 15

# 3. Envoy with the filter.
#    The access log prints what the filter publishes: its `access_log` setting picks the format.
access_log=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("access_log", "summary"))' envoy/demo-config.json)
python3 envoy/render.py envoy/envoy.yaml.tmpl \
  LISTEN_PORT="$LISTEN_PORT" ADMIN_PORT="$ADMIN_PORT" UPSTREAM_PORT="$MOCK_PORT" \
  WASM_PATH="$(realpath "$WASM")" WASM_NAME=tollgate PLUGIN_CONFIG=@envoy/demo-config.json \
  ACCESS_LOG_PATH=/dev/stdout ACCESS_LOG_SUMMARY="$([ "$access_log" = summary ] && echo 1)" \
  ACCESS_LOG_FIELDS="$([ "$access_log" = fields ] && echo 1)" COUNTER_PORT="$COUNTER_PORT" >"$RUN/envoy.yaml"
"$ENVOY" -c "$RUN/envoy.yaml" --concurrency 2 --disable-hot-restart --file-flush-interval-msec 200 \
  --log-level warn --component-log-level wasm:info 2>"$RUN/envoy.log" &
pids+=($!)
for ((i = 0; i < 300; i++)); do
  curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" 2>/dev/null | grep -q LIVE && break
  kill -0 "${pids[-1]}" 2>/dev/null || { echo "run-demo: envoy exited; its log:" >&2; tail -20 "$RUN/envoy.log" >&2; exit 1; }
  sleep 0.1
done
curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" | grep -q LIVE || { echo "run-demo: envoy not ready after 30 s; see $RUN/envoy.log" >&2; exit 1; }

alice='-H "authorization: Bearer sk-demo-alice" -H "content-type: application/json"'
ask='{"model":"tier:premium","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}'
cat <<MSG

Tollgate demo: Envoy + filter on http://127.0.0.1:$LISTEN_PORT, admin http://127.0.0.1:$ADMIN_PORT,
mock providers on 127.0.0.1:$MOCK_PORT, tollgate-counter on 127.0.0.1:$COUNTER_PORT, webhook receiver on
127.0.0.1:$WEBHOOK_PORT. Access log lines and received alerts appear below. Ctrl-C stops everything.

Try, in this order:
  # 1. alice asks for the premium tier: routed to gpt-4o, attributed to her by her virtual key, 200.
  #    (max_tokens bounds what the filter reserves: without it, gpt-4o's 16k output tokens cost
  #    \$0.16, more than her whole day, and the request would be refused before it is sent.)
  curl -s localhost:$LISTEN_PORT/v1/chat/completions $alice -d '$ask'
  # 2. alice has \$0.003 a day, with a soft alert at 50 %: 15 more requests, one every 0.3 s. Past
  #    half her budget the answers carry x-tollgate-budget-status: soft; at the hard limit they turn
  #    into 429; the counter sends a signed soft alert to the webhook receiver, which prints it below.
  #    (Sent back to back, some are refused early for a moment: the previous request's
  #    worst case stays reserved until the gateway's next settlement tick and acknowledgement.)
  for i in \$(seq 15); do curl -s -o /dev/null -w '%{http_code} %header{x-tollgate-budget-status}\n' localhost:$LISTEN_PORT/v1/chat/completions $alice -d '$ask'; sleep 0.3; done
  # 3. the refusal, in OpenAI's error shape, names her budget
  curl -s localhost:$LISTEN_PORT/v1/chat/completions $alice -d '$ask'
  # 4. Anthropic, streaming, routed to claude-haiku-4-5 (charged to the org, which has room)
  curl -sN localhost:$LISTEN_PORT/v1/messages -H 'content-type: application/json' \\
    -d '{"model":"claude-cheap","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
  # 5. a retired model: 403 in OpenAI's error shape, before anything reaches a provider
  curl -s localhost:$LISTEN_PORT/v1/chat/completions -d '{"model":"gpt-4-32k","messages":[]}'
  # 6. the meters: Envoy's stats, then the counter's books
  curl -s 'localhost:$ADMIN_PORT/stats?filter=tollgate'
  $COUNTER utilization --url http://127.0.0.1:$COUNTER_PORT --token demo-admin-token
  $COUNTER report --url http://127.0.0.1:$COUNTER_PORT --token demo-admin-token --group-by team,model
  # 7. the events log: alice's soft alert (50 %) and hard stop, each delivered to the local receiver
  $COUNTER events --url http://127.0.0.1:$COUNTER_PORT --token demo-admin-token --scope user:alice
  # 8. what alice herself may see, with her personal token: her budget and spend, nobody else's
  #    (the console at http://127.0.0.1:$COUNTER_PORT/console/ shows the same as "My spend")
  curl -s -H 'authorization: Bearer demo-alice-personal-token' localhost:$COUNTER_PORT/reports/principal

MSG
wait -n "${pids[@]}"
echo "run-demo: a process exited; logs in $RUN/" >&2
