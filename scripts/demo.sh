#!/usr/bin/env bash
# The spapi-guard demo: mock SP-API + a real Envoy + the filter, on loopback.
#   bash scripts/demo.sh            start, show results, keep running until Ctrl-C  (make run)
#   bash scripts/demo.sh --exit     start, show results, check them, stop            (make demo)
#   --quiet                          print only the checks (used by make test)
# Ports: DEMO_PORT (10000), DEMO_ADMIN_PORT (9901), DEMO_MOCK_PORT (18081).
set -euo pipefail
cd "$(dirname "$0")/.."

EXIT=0 QUIET=0
for arg in "$@"; do
  case "$arg" in
    --exit) EXIT=1 ;;
    --quiet) QUIET=1 ;;
    *) echo "usage: $0 [--exit] [--quiet]" >&2; exit 2 ;;
  esac
done

PORT=${DEMO_PORT:-10000}
ADMIN_PORT=${DEMO_ADMIN_PORT:-9901}
MOCK_PORT=${DEMO_MOCK_PORT:-18081}
RUN=.run/demo
ENVOY_BIN=${ENVOY_BIN:-.venv/envoy-bin}
WASM=target/wasm32-wasip1/release/spapi_guard.wasm
URL=https://127.0.0.1:$PORT

exec 3>&1  # the terminal, also from inside $(...)
say() { [ "$QUIET" = 1 ] || echo -e "$@" >&3; }
fail() { echo "demo: FAILED: $*" >&2; exit 1; }

[ -x "$ENVOY_BIN" ] || fail "Envoy is not installed; run 'make run' (it installs it)"
[ -f "$WASM" ] || fail "$WASM is missing; run 'make run' (it builds it)"
mkdir -p "$RUN"

# A demo key, generated at run time into the ignored .run folder; never committed.
if [ ! -s "$RUN/keys.env" ]; then
  umask 077
  key=$(python3 -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())')
  echo "SPAPI_GUARD_KEY_DEMO_1=$key" > "$RUN/keys.env"
fi
set -a; . "$RUN/keys.env"; set +a

# A dev PKI, also generated at run time: a CA, Envoy's certificate, one client certificate per
# demo caller, and "intruder" (signed by the CA but unknown to the policy).
bash scripts/gen-certs.sh "$RUN/tls" >/dev/null
python3 scripts/render-envoy-config.py --policy policies/default.json --out "$RUN/envoy.yaml" \
  --listen-port "$PORT" --admin-port "$ADMIN_PORT" --upstream-port "$MOCK_PORT" --wasm "$WASM" --tls-dir "$RUN/tls"

cleanup() {
  for p in envoy mock; do
    [ -f "$RUN/$p.pid" ] && kill "$(cat "$RUN/$p.pid")" 2>/dev/null || true
    rm -f "$RUN/$p.pid"
  done
}
trap cleanup EXIT
trap 'exit 0' INT TERM

for port in "$PORT" "$ADMIN_PORT" "$MOCK_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then fail "port $port is in use (set DEMO_PORT, DEMO_ADMIN_PORT, DEMO_MOCK_PORT)"; fi
done

( python3 tests/mock_spapi.py --port "$MOCK_PORT" tests/fixtures/spapi > "$RUN/mock.log" 2>&1 & echo $! > "$RUN/mock.pid" )
# stdout: the audit log (one JSON event per request); stderr: Envoy's and the filter's log.
( "$ENVOY_BIN" -c "$RUN/envoy.yaml" --concurrency 1 --log-level info --disable-hot-restart --file-flush-interval-msec 250 > "$RUN/audit.log" 2> "$RUN/envoy.log" & echo $! > "$RUN/envoy.pid" )

for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null 2>&1 && break
  kill -0 "$(cat "$RUN/envoy.pid")" 2>/dev/null || { cat "$RUN/envoy.log" >&2; fail "Envoy exited"; }
  sleep 0.2
done
curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null || fail "Envoy did not become ready"

show() { # title, then curl arguments
  local title=$1; shift
  local out
  out=$(curl -s -w '\nHTTP %{http_code}' "$@")
  say "\n\033[1m== $title\033[0m\n\$ curl $(printf '%q ' "$@")"
  say "$(echo "$out" | sed '$d' | python3 -m json.tool 2>/dev/null || echo "$out" | sed '$d')"
  say "$(echo "$out" | tail -n 1)"
  echo "$out"
}

as() { # caller: curl options for its client certificate
  echo "--cacert $RUN/tls/ca.crt --cert $RUN/tls/$1.crt --key $RUN/tls/$1.key"
}
say "spapi-guard demo: Envoy on $URL (mTLS), mock SP-API on 127.0.0.1:$MOCK_PORT, Envoy admin on 127.0.0.1:$ADMIN_PORT"
address=$(show "order-sync: Orders v0 getOrderAddress — every customer field is a token" \
  $(as order-sync) "$URL/orders/v0/orders/902-3159896-1390916/address" -H "x-mock-fixture: orders-v0_getOrderAddress_1.json")
orders=$(show "order-sync: Orders 2026-01-01 searchOrders — buyer and recipient tokenized, the rest byte for byte" \
  $(as order-sync) "$URL/orders/2026-01-01/orders?createdAfter=2025-01-01T00:00:00Z" -H "x-mock-fixture: orders-2026-01-01_searchOrders_1.json")
label=$(show "label-printer: the same address — the address in clear, the name removed (need to know)" \
  $(as label-printer) "$URL/orders/v0/orders/902-3159896-1390916/address" -H "x-mock-fixture: orders-v0_getOrderAddress_1.json")
analytics=$(show "analytics: getOrders is a restricted operation — denied before Amazon is contacted" \
  $(as analytics) "$URL/orders/v0/orders?CreatedAfter=TEST_CASE_200&MarketplaceIds=ATVPDKIKX0DER" -H "x-mock-fixture: orders-v0_getOrders_1.json")
intruder=$(show "intruder: a valid certificate the policy does not know — denied" \
  $(as intruder) "$URL/orders/v0/orders/902-3159896-1390916/address" -H "x-mock-fixture: orders-v0_getOrderAddress_1.json")
rdt=$(show "order-sync: Tokens createRestrictedDataToken — resources checked, response passed through" \
  $(as order-sync) -X POST "$URL/tokens/2021-03-01/restrictedDataToken" -H "x-mock-fixture: tokens-2021-03-01_createRestrictedDataToken_1.json" \
  -H "content-type: application/json" --data-binary '{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/{orderId}/address"}]}')

# Envoy flushes its access log about once a second.
for _ in $(seq 1 50); do [ "$(wc -l < "$RUN/audit.log")" -ge 6 ] && break; sleep 0.1; done
say "\n\033[1m== Audit log: $RUN/audit.log (one JSON event per request; no PII; paths redacted)\033[0m"
audit=$(cat "$RUN/audit.log")
say "$audit"

# Checks: the demo fails loudly if the filter did not do its job.
grep -q '"Name": *"spgt1\.\|"Name":"spgt1\.' <<<"$address" || fail "getOrderAddress Name is not a token"
grep -q 'HTTP 200' <<<"$address" || fail "getOrderAddress did not answer 200"
! grep -q 'Michigan address\|1 cross st' <<<"$address" || fail "PII passed through"
grep -q 'spgt1\.' <<<"$orders" || fail "searchOrders has no token"
grep -q '"City": *"Canton"\|"City":"Canton"' <<<"$label" || fail "label-printer did not get the address in clear"
! grep -q '"Name"' <<<"$label" || fail "label-printer got the name"
grep -q 'HTTP 403' <<<"$analytics" || fail "analytics was not denied getOrders"
grep -q 'unknown_caller' <<<"$intruder" || fail "intruder was not denied"
grep -q 'restrictedDataToken' <<<"$rdt" || fail "createRestrictedDataToken was changed"
[ "$(grep -c '"outcome":"protected"' <<<"$audit")" -ge 3 ] || fail "audit events missing"
[ "$(grep -c '"decision":"deny"' <<<"$audit")" -ge 2 ] || fail "denials missing from the audit log"
echo "demo: tokenized responses, per-caller access, denials and audit events: OK"

if [ "$EXIT" = 0 ]; then
  cat <<EOF

The stack keeps running; try (Ctrl-C stops it). Each demo caller has its own client certificate:
  C="--cacert $RUN/tls/ca.crt --cert $RUN/tls/order-sync.crt --key $RUN/tls/order-sync.key"
  curl -s \$C $URL/orders/v0/orders/902-3159896-1390916/address -H 'x-mock-fixture: orders-v0_getOrderAddress_1.json'
  curl -s \$C '$URL/orders/v0/orders?CreatedAfter=TEST_CASE_200&MarketplaceIds=ATVPDKIKX0DER' -H 'x-mock-fixture: orders-v0_getOrders_1.json'
  curl -s \$C $URL/mfn/v0/shipments/abc -H 'x-mock-fixture: merchant-fulfillment-v0_getShipment_1.json'
  Other callers: label-printer (addresses in clear, nothing else), analytics (no PII, no restricted
  operations), intruder (unknown): swap the certificate names. Without --cert: denied (unauthenticated).
  tail -f $RUN/audit.log          # audit events;  grep 'spapi-guard event' $RUN/envoy.log: security events
  curl -s http://127.0.0.1:$ADMIN_PORT/stats/prometheus | grep spapi_guard
Fixtures: tests/fixtures/spapi/INDEX.json (x-mock-fixture picks one by file name).
EOF
  while kill -0 "$(cat "$RUN/envoy.pid")" 2>/dev/null; do sleep 1; done
  fail "Envoy stopped; see $RUN/envoy.log"
fi
