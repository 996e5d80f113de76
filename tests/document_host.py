#!/usr/bin/env python3
"""A stand-in for Amazon's report document hosts (S3, CloudFront) over TLS, for tests/documents.rs.

    python3 tests/document_host.py --port 18443 --cert localhost.crt --key localhost.key \
        --dir DOCS --events events.jsonl

Serves the files of DOCS at pre-signed-looking URLs, `/<name>?X-Amz-Date=…&X-Amz-Expires=…&
X-Amz-Signature=…`: a request without an `X-Amz-Signature` is refused with S3's XML error (which
echoes the request, as S3's does: the filter must never pass such a body on). DOCS/INDEX.json may
give per file: `headers` (e.g. {"Content-Encoding": "gzip"}), `chunk` (bytes per write, default
65536) and `pause_after` (bytes after which the host waits 0.3 s, so the first part surely reached
the client before what follows), or `raw: true`: the file is the whole HTTP response (status
line, headers, body, trailers — a hostile or broken host), written as it is before the
connection closes. One JSON line per request is appended to --events:
{"method", "path", "headers"}.
"""
import argparse
import json
import os
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--events", required=True)
    a = ap.parse_args()
    lock = threading.Lock()

    def index():
        try:
            with open(os.path.join(a.dir, "INDEX.json"), encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def do_GET(self):
            url = urlsplit(self.path)
            with lock, open(a.events, "a", encoding="utf-8") as f:
                f.write(json.dumps({"method": "GET", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}) + "\n")
            name = url.path.lstrip("/")
            query = parse_qs(url.query)
            target = os.path.join(a.dir, name)
            if "X-Amz-Signature" not in query or "/" in name or not os.path.isfile(target):
                body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code>"
                        f"<Message>Request has expired</Message><Key>{name}</Key><RequestId>test</RequestId></Error>").encode()
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            entry = index().get(name, {})
            with open(target, "rb") as f:
                data = f.read()
            if entry.get("raw"):
                self.close_connection = True
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return
            self.send_response(200)
            self.send_header("Content-Type", entry.get("content_type", "text/plain"))
            self.send_header("ETag", '"0123456789abcdef"')
            for k, v in entry.get("headers", {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            chunk, pause_after = entry.get("chunk", 65536), entry.get("pause_after")
            sent = 0
            try:
                while sent < len(data):
                    part = data[sent:sent + chunk]
                    self.wfile.write(part)
                    self.wfile.flush()
                    before, sent = sent, sent + len(part)
                    if pause_after is not None and before < pause_after <= sent:
                        time.sleep(0.3)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
