#!/usr/bin/env bash
# Test PKI for the document host of tests/documents.rs, made at run time into an ignored folder:
#   doc-ca.crt/key     the test CA the documents cluster is pointed at (--document-trust-store)
#   localhost.crt/key  DNS SAN localhost, from that CA (the document host Envoy's DFP resolves)
#   rogue.crt/key      localhost from a CA nobody trusts (certificate validation must refuse it)
# Usage: tests/gen-document-certs.sh OUT_DIR
set -euo pipefail
out=$1
mkdir -p "$out"
cd "$out"
[ -s rogue.crt ] && exit 0
umask 077

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

ca doc-ca "/CN=test document host CA"
leaf localhost doc-ca "/CN=localhost" "DNS:localhost"
ca rogue-ca "/CN=someone else's CA"
leaf rogue rogue-ca "/CN=localhost" "DNS:localhost"
chmod 644 ./*.crt ./*.key
echo "document host certificates in $out"
