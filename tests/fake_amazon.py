#!/usr/bin/env python3
"""A fake SP-API endpoint over TLS, for the production profile's tests (tests/production.rs).

    python3 tests/fake_amazon.py serve --port 18443 --cert na.crt --key na.key --events events.jsonl \
        [--max-tls 1.1] [--plaintext] tests/fixtures/spapi
    python3 tests/fake_amazon.py probe --port 18443 --ca amazon-ca.crt --name sellingpartnerapi-na.amazon.com \
        [--max-tls 1.1]

`serve` answers like tests/mock_spapi.py (same fixtures, same `x-mock-fixture` header), but only
over TLS with the given certificate, and appends one JSON line per event to --events:
  {"event": "client_hello", "sni": ...}                      (every TLS ClientHello with SNI)
  {"event": "handshake", "ok": true, "sni": ..., "version": "TLSv1.3"}
  {"event": "handshake", "ok": false, "sni": ..., "error": "..."}
  {"event": "request", "method": ..., "path": ..., "headers": {...}, "sni": ..., "version": ...}
  {"event": "received", "method": ..., "path": ..., "body": "..."}  (after a request was answered:
                                                              the body it carried, for tests of
                                                              detokenization toward an upstream)
  {"event": "plaintext", "first_bytes": "<hex>"}           (--plaintext: what arrived first on
                                                              each connection)
A request path containing `/drop-connection` is recorded, then the connection is closed without a
response (for the retry tests). --max-tls 1.1 makes it a TLS 1.0/1.1-only server (OpenSSL security level 0, so it really offers
them); --plaintext serves plain HTTP on the port instead, to show nobody falls back to it.

`probe` connects as a TLS client that checks the certificate and name the way Envoy should, with
the highest version --max-tls, and prints the negotiated version: it proves a refusal by Envoy is
Envoy's doing, not a broken test server.
"""
import argparse
import json
import os
import socket
import ssl
import sys
import threading
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mock_spapi  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)  # TLS 1.0/1.1 are deprecated: that is the point
VERSIONS = {"1.1": ssl.TLSVersion.TLSv1_1, "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class Events:
    def __init__(self, path):
        self.path, self.lock = path, threading.Lock()

    def add(self, **event):
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


def server_context(cert, key, max_tls, events):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if max_tls:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = VERSIONS[max_tls]

    def remember_sni(sock, name, _ctx):
        sock.sni = name
        events.add(event="client_hello", sni=name)

    ctx.sni_callback = remember_sni
    return ctx


def serve(args):
    events = Events(args.events)
    fixtures = mock_spapi.Fixtures(args.folders)
    base = mock_spapi.make_handler(fixtures, [], threading.Lock())
    ctx = None if args.plaintext else server_context(args.cert, args.key, args.max_tls, events)

    class Handler(base):
        def handle(self):
            # No h2c: this server speaks HTTP/1.1 over TLS, as Envoy's production clusters do.
            return super(base, self).handle()

        def _handle(self):
            tls = {}
            if isinstance(self.connection, ssl.SSLSocket):
                tls = {"sni": getattr(self.connection, "sni", None), "version": self.connection.version()}
            events.add(event="request", method=self.command, path=self.path,
                       headers={k.lower(): v for k, v in self.headers.items()}, **tls)
            if "/drop-connection" in self.path:
                # An endpoint that dies after reading the request, before any response byte.
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return None
            self.recorded = False
            result = super()._handle()
            self.record_received()
            return result

        def record_received(self):
            """Records what was received once, before the first response byte (send_response):
            a test that has its answer finds the record already written."""
            if not getattr(self, "recorded", True):
                self.recorded = True
                events.add(event="received", method=self.command, path=self.path,
                           body=getattr(self, "request_body", b"").decode("utf-8", "replace"))

        def send_response(self, code, message=None):
            self.record_received()
            super().send_response(code, message)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    class Server(mock_spapi.Server):
        def finish_request(self, request, client_address):
            if ctx is None:
                # A plain HTTP server: what arrives is recorded, then answered as HTTP (a TLS
                # ClientHello gets a 400, as from any HTTP server).
                first = request.recv(64, socket.MSG_PEEK)
                events.add(event="plaintext", first_bytes=first.hex())
                return super().finish_request(request, client_address)
            try:
                conn = ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                events.add(event="handshake", ok=False, error=str(e))
                return
            events.add(event="handshake", ok=True, sni=getattr(conn, "sni", None), version=conn.version())
            try:
                super().finish_request(conn, client_address)
            finally:
                try:
                    conn.close()
                except OSError:
                    pass

    server = Server(("127.0.0.1", args.port), Handler)
    events.add(event="listening", port=args.port, tls=ctx is not None, max_tls=args.max_tls)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def probe(args):
    ctx = ssl.create_default_context(cafile=args.ca)
    if args.max_tls:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = VERSIONS[args.max_tls]
    with socket.create_connection(("127.0.0.1", args.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=args.name) as conn:
            print(conn.version())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--cert")
    s.add_argument("--key")
    s.add_argument("--events", required=True)
    s.add_argument("--max-tls", choices=sorted(VERSIONS))
    s.add_argument("--plaintext", action="store_true")
    s.add_argument("folders", nargs="+")
    q = sub.add_parser("probe")
    q.add_argument("--port", type=int, required=True)
    q.add_argument("--ca", required=True)
    q.add_argument("--name", required=True)
    q.add_argument("--max-tls", choices=sorted(VERSIONS))
    args = p.parse_args()
    return serve(args) if args.command == "serve" else probe(args)


if __name__ == "__main__":
    sys.exit(main())
