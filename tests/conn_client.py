#!/usr/bin/env python3
"""A test client that holds several persistent mTLS connections to Envoy, driven line by line
on stdin (used where a test must control which connection — hence which Envoy worker — a
request travels on):

    open                  → "<index>"                         opens a new keep-alive connection
    req <i> <METHOD> <path> → "<status> <x-request-id> <x-spapi-guard or ->"

    python3 tests/conn_client.py PORT CERT_DIR CALLER
"""
import http.client
import os
import ssl
import sys


def main():
    port, cert_dir, caller = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    ctx = ssl.create_default_context(cafile=os.path.join(cert_dir, "ca.crt"))
    ctx.load_cert_chain(os.path.join(cert_dir, f"{caller}.crt"), os.path.join(cert_dir, f"{caller}.key"))
    conns = []
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "open":
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
            conn.connect()
            conns.append(conn)
            print(len(conns) - 1, flush=True)
        elif words[0] == "req":
            conn = conns[int(words[1])]
            conn.request(words[2], words[3], headers={"x-mock-fixture": words[4]} if len(words) > 4 else {})
            resp = conn.getresponse()
            resp.read()
            print(resp.status, resp.getheader("x-request-id", "-"), resp.getheader("x-spapi-guard", "-"), flush=True)


if __name__ == "__main__":
    main()
