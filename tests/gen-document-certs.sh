#!/usr/bin/env bash
# Test PKI for the document host of tests/documents.rs, made at run time into an ignored folder:
#   doc-ca.crt/key     the test CA the documents cluster is pointed at (--document-trust-store)
#   localhost.crt/key  DNS SAN localhost, from that CA (the document host Envoy's DFP resolves)
#   rogue.crt/key      localhost from a CA nobody trusts (certificate validation must refuse it)
# Usage: tests/gen-document-certs.sh OUT_DIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$1
mkdir -p "$out"
cd "$out"
[ -s rogue.crt ] && exit 0
umask 077

# shellcheck source=scripts/pki.sh
source "$here/../scripts/pki.sh"

ca doc-ca "/CN=test document host CA"
server_leaf localhost doc-ca "/CN=localhost" "DNS:localhost"
ca rogue-ca "/CN=someone else's CA"
server_leaf rogue rogue-ca "/CN=localhost" "DNS:localhost"
chmod 644 ./*.crt ./*.key
echo "document host certificates in $out"
