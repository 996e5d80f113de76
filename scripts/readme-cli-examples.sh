#!/usr/bin/env bash
# The README's "The command line" examples, produced by running the command line:
#
#   bash scripts/readme-cli-examples.sh [BIN [WORKDIR]]
#
# prints every example block (```…```) in README order. tests/cli.rs
# (`the_readme_shows_what_the_command_line_prints`) runs it and fails when a block of the README
# differs (a README line "…" stands for lines left out). Paste its output into the README when a
# change of output is intended.
#
# Reproducible: the clock is fixed (SPAPI_GUARD_NOW), and the example ring's keys are derived from
# their ids (SHA-256 of a public phrase: example keys, never use them), generated into WORKDIR
# (default target/readme-cli-examples/, ignored). keygen's new random key and fingerprint are
# shown as placeholders.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/debug/spapi-guard}")
WORK=${2:-$ROOT/target/readme-cli-examples}
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
export SPAPI_GUARD_NOW=2026-11-29T17:54:03Z
unset SPAPI_GUARD_KEY_DEMO_1

# The example policy: the default one with a ring of monthly keys for every class but tax ids, a
# yearly key for tax ids, and reveal grants.
ring() { # ring FILE ID... : the default policy with these keys of the ring
  local file=$1; shift
  python3 - "$ROOT/policies/default.json" "$file" "$@" <<'EOF'
import json, sys
policy = json.load(open(sys.argv[1]))
monthly = ["name", "email", "phone", "address", "gift_message", "company", "other"]
keys = {
    "2026-09": (monthly, "2026-08-25", "2026-09-01", "2026-11-15"),
    "2026-10": (monthly, "2026-09-25", "2026-10-01", "2026-12-15"),
    "2026-11": (monthly, "2026-10-25", "2026-11-01", "2027-01-15"),
    "2026-12": (monthly, "2026-11-25", "2026-12-01", "2027-02-15"),
    "tax-2026": (["tax_id"], "2025-12-15", "2026-01-01", "2036-12-31"),
}
ring = []
for id in sys.argv[3:]:
    classes, created, active_from, not_after = keys[id]
    env = "SPAPI_GUARD_KEY_" + id.upper().replace("-", "_")
    ring.append({"id": id, "env": env, "classes": classes, "created": created, "activeFrom": active_from, "notAfter": not_after})
policy["keys"] = {"ring": ring}
# Reveal grants (docs/POLICY.md#revealing-tokens), as tests/reveal.rs gives them.
policy["roles"]["order-sync"]["reveal"] = [
    {"classes": ["address", "name"], "operations": ["shipping-v2.getRates", "shipping-v2.directPurchaseShipment"]},
    {"classes": ["email"], "operations": ["orders-v0.getOrders"]},
]
policy["roles"]["label-printer"]["reveal"] = [{"classes": ["address"], "operations": ["spapi-guard.reveal"]}]
with open(sys.argv[2], "w") as f:
    json.dump(policy, f, indent=2)
    f.write("\n")
EOF
}
ALL=(2026-09 2026-10 2026-11 2026-12 tax-2026)
ring ring.json "${ALL[@]}"
for id in "${ALL[@]}"; do
  var=SPAPI_GUARD_KEY_$(echo "$id" | tr 'a-z-' 'A-Z_')
  echo "$var=$(printf 'spapi-guard README example key %s' "$id" | sha256sum | cut -c1-64)"
done > keys.env

# show [-i FILE] [-c COMMENT] ARGS...: "$ spapi-guard ARGS", its stdout, its stderr, a non-zero
# exit status.
show() {
  local input=/dev/null shown_input="" comment=""
  while [[ $1 == -i || $1 == -c ]]; do
    if [[ $1 == -i ]]; then input=$2; shown_input=" < $2"; else comment="    # $2"; fi
    shift 2
  done
  local words=() arg
  for arg in "$@"; do
    if [[ $arg =~ [[:space:]\<\>\"\'] ]]; then words+=("\"$arg\""); else words+=("$arg"); fi
  done
  echo "\$ spapi-guard ${words[*]}$shown_input$comment"
  local status=0
  "$BIN" "$@" <"$input" >out.txt 2>err.txt || status=$?
  cat out.txt err.txt
  if [[ $status != 0 ]]; then echo "(exit status $status)"; fi
}
begin() { echo '```'; }
end() { echo '```'; echo; }

begin
show keygen --id 2027-01 | sed -E '2s#^[A-Za-z0-9+/]{43}=$#<a new random key, 44 base64 characters>#; s#fingerprint [0-9a-f]{32}#fingerprint <its fingerprint>#'
end

begin
show keys --policy ring.json --env-file keys.env
end

begin
show tokenize --policy ring.json --env-file keys.env --class email jane.buyer@example.com
show tokenize --policy ring.json --env-file keys.env --class email --all jane.buyer@example.com
end

# Two tokens an application holds: one of the active key, one made in September by a key expired since.
"$BIN" tokenize --policy ring.json --env-file keys.env --class email jane.buyer@example.com >tokens.txt
SPAPI_GUARD_NOW=2026-09-15 "$BIN" tokenize --policy ring.json --env-file keys.env --class email jane.buyer@example.com >>tokens.txt
begin
show -i tokens.txt detokenize --policy ring.json --env-file keys.env
end

begin
show keys shred 2026-09 --policy ring.json --env-file keys.env --by "Jane Operator <jane@acme.example>" --approved-by "DPO <dpo@acme.example>"
ring ring.json 2026-10 2026-11 2026-12 tax-2026
grep -v '^SPAPI_GUARD_KEY_2026_09=' keys.env >keys.env.new && mv keys.env.new keys.env
echo
show -c "after the entry and the secret are gone" keys --policy ring.json --env-file keys.env
end

ring bad.json 2026-11 2026-12 tax-2026
python3 - <<'EOF'
import json
p = json.load(open("bad.json"))
p["keys"]["ring"][1].update(created="2026-10-20", activeFrom="2026-11-01")
json.dump(p, open("bad.json", "w"), indent=2)
EOF
begin
show lint --policy ring.json --without-keys
echo
show -c "2026-12 made active from 2026-11-01 too" lint --policy bad.json --without-keys
end

begin
show catalog --policy ring.json --operation orders-v0.getOrderBuyerInfo
end

begin
show record-of-processing --policy ring.json
end

begin
show record-of-processing --policy ring.json --format json
end
