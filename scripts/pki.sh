# Test and demo PKI helpers, sourced by scripts/gen-certs.sh, tests/gen-amazon-certs.sh and
# tests/gen-document-certs.sh (one way to make a key, a CA and a certificate).
# Everything is made at run time into the caller's (ignored) output folder: no key is committed.

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ca() { # name subject
  newkey "$1.key"
  openssl req -x509 -new -key "$1.key" -out "$1.crt" -days 30 -subj "$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

leaf() { # name ca subject extensions (openssl extfile lines)
  newkey "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "$3" 2>/dev/null
  printf '%s\n' "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -out "$1.crt" -days 30 -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

server_leaf() { # name ca subject san: a TLS server certificate
  leaf "$1" "$2" "$3" "$(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth' "$4")"
}
