#!/usr/bin/env bash
# Generates a development PKI for the demo and the tests, at run time, into an ignored folder:
#   ca.crt/key            the dev CA that Envoy trusts for client certificates
#   server.crt/key        Envoy's listener certificate (localhost, 127.0.0.1)
#   <caller>.crt/key      one client certificate per caller, URI SAN spiffe://spapi-guard.demo/<caller>
#   rogue-ca.crt, rogue.crt/key   a client certificate from a CA Envoy does not trust
# Usage: scripts/gen-certs.sh OUT_DIR [caller…]   (default callers: the demo's, plus "intruder")
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$1; shift
callers=("$@")
[ ${#callers[@]} -gt 0 ] || callers=(order-sync label-printer analytics intruder)
domain=spapi-guard.demo
mkdir -p "$out"
cd "$out"
[ -s ca.crt ] && [ -s "${callers[-1]}.crt" ] && exit 0
umask 077

# shellcheck source=scripts/pki.sh
source "$here/pki.sh"

ca ca "/CN=spapi-guard demo CA"
leaf server ca "/CN=localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
for c in "${callers[@]}"; do
  leaf "$c" ca "/CN=$c/O=spapi-guard demo" "subjectAltName=URI:spiffe://$domain/$c
extendedKeyUsage=clientAuth"
done
ca rogue-ca "/CN=someone else's CA"
leaf rogue rogue-ca "/CN=order-sync/O=spapi-guard demo" "subjectAltName=URI:spiffe://$domain/order-sync
extendedKeyUsage=clientAuth"
chmod 644 ./*.crt
echo "certificates in $out"
