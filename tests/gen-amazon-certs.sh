#!/usr/bin/env bash
# Test PKI for the fake Amazon of tests/production.rs, made at run time into an ignored folder:
#   amazon-ca.crt/key   the test CA the production config is pointed at (--trust-store)
#   na.crt/key          sellingpartnerapi-na.amazon.com, from that CA (the good server)
#   wrong-name.crt/key  from that CA, CN sellingpartnerapi-na.amazon.com but DNS SAN
#                       sellingpartnerapi-eu.amazon.com (the SAN decides, not the CN)
#   rogue.crt/key       sellingpartnerapi-na.amazon.com from a CA nobody trusts (rogue-ca)
#   carrier-ca.crt/key  the CA of a third-party upstream (tests/upstreams.rs: a mock carrier)
#   carrier.crt/key     carrier.test, from carrier-ca
#   carrier-other-ca.crt/key  carrier.test, from amazon-ca: a CA the carrier's caFile does not hold
# Usage: tests/gen-amazon-certs.sh OUT_DIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$1
mkdir -p "$out"
cd "$out"
[ -s carrier-other-ca.crt ] && exit 0
umask 077
na=sellingpartnerapi-na.amazon.com

# shellcheck source=scripts/pki.sh
source "$here/../scripts/pki.sh"

ca amazon-ca "/CN=fake Amazon test CA"
server_leaf na amazon-ca "/CN=$na" "DNS:$na"
server_leaf wrong-name amazon-ca "/CN=$na" "DNS:sellingpartnerapi-eu.amazon.com"
ca rogue-ca "/CN=someone else's CA"
server_leaf rogue rogue-ca "/CN=$na" "DNS:$na"
ca carrier-ca "/CN=fake carrier test CA"
server_leaf carrier carrier-ca "/CN=carrier.test" "DNS:carrier.test"
server_leaf carrier-other-ca amazon-ca "/CN=carrier.test" "DNS:carrier.test"
chmod 644 ./*.crt ./*.key
echo "fake Amazon certificates in $out"
