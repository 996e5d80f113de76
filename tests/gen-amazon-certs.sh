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
out=$1
mkdir -p "$out"
cd "$out"
[ -s carrier-other-ca.crt ] && exit 0
umask 077
na=sellingpartnerapi-na.amazon.com

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() { # name subject
  newkey "$1.key"
  openssl req -x509 -new -key "$1.key" -out "$1.crt" -days 30 -subj "$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
leaf() { # name ca subject san
  newkey "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "$3" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -out "$1.crt" -days 30 -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

ca amazon-ca "/CN=fake Amazon test CA"
leaf na amazon-ca "/CN=$na" "DNS:$na"
leaf wrong-name amazon-ca "/CN=$na" "DNS:sellingpartnerapi-eu.amazon.com"
ca rogue-ca "/CN=someone else's CA"
leaf rogue rogue-ca "/CN=$na" "DNS:$na"
ca carrier-ca "/CN=fake carrier test CA"
leaf carrier carrier-ca "/CN=carrier.test" "DNS:carrier.test"
leaf carrier-other-ca amazon-ca "/CN=carrier.test" "DNS:carrier.test"
chmod 644 ./*.crt ./*.key
echo "fake Amazon certificates in $out"
