#!/usr/bin/env python3
"""A small SP-API stand-in that plays recorded JSON fixtures.

    python3 tests/mock_spapi.py --port 18081 tests/fixtures/spapi [more fixture folders…]

Each folder holds an INDEX.json of entries {file, method, path, query, status} (the format of
Amazon-model fixtures in tests/fixtures/spapi); optional entry fields: `headers` (response
headers to send, e.g. a content-type or content-encoding) and `chunked` (send the body with
chunked transfer encoding instead of a content-length).

A request is answered by the first entry with the same method and path whose query matches
(exactly, else any query); the header `x-mock-fixture: <file>` picks an entry by file name
instead (several fixtures share a path). Unknown requests get an SP-API-style 404.

Control endpoints (tests call them on the mock's own port, not through Envoy):
  GET  /__mock/calls   JSON list of the requests served so far ({method, path, headers})
  POST /__mock/reset   forget them
"""
import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


class Fixtures:
    def __init__(self, folders):
        self.entries = []
        for folder in folders:
            with open(os.path.join(folder, "INDEX.json"), encoding="utf-8") as f:
                for entry in json.load(f):
                    if entry.get("kind", "response") != "response":
                        continue
                    self.entries.append(dict(entry, folder=folder))

    def find(self, method, path, query, wanted_file):
        if wanted_file:
            return next((e for e in self.entries if e["file"] == wanted_file), None)
        same_path = [e for e in self.entries if e["method"] == method and e["path"] == path]
        want = sorted(parse_qsl(query, keep_blank_values=True))
        exact = [e for e in same_path if sorted(parse_qsl(e.get("query", ""), keep_blank_values=True)) == want]
        return (exact or same_path or [None])[0]


def make_handler(fixtures, calls, lock):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body leave in one write, without Nagle's delay (else small responses wait
        # ~40 ms for a delayed ACK).
        disable_nagle_algorithm = True

        def log_message(self, fmt, *args):  # quiet: the tests read Envoy's output, not ours
            pass

        def _send(self, status, body, headers=(), chunked=False):
            self.send_response(status)
            names = {k.lower() for k, _ in headers}
            for k, v in headers:
                self.send_header(k, v)
            if "content-type" not in names and body:
                self.send_header("content-type", "application/json")
            if chunked:
                self.send_header("transfer-encoding", "chunked")
            else:
                self.send_header("content-length", str(len(body)))
            # end_headers() would send the headers on their own: keep them for one write.
            self._headers_buffer.append(b"\r\n")
            head = b"".join(self._headers_buffer)
            self._headers_buffer = []
            if self.command == "HEAD":
                self.wfile.write(head)
                return
            if chunked:
                self.wfile.write(head)
                step = 16 * 1024
                for i in range(0, len(body), step):
                    part = body[i:i + step]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.wfile.write(head + body)

        def _handle(self):
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            url = urlsplit(self.path)
            if url.path == "/__mock/calls":
                with lock:
                    body = json.dumps(calls).encode()
                return self._send(200, body)
            if url.path == "/__mock/reset":
                with lock:
                    calls.clear()
                return self._send(200, b"{}")
            with lock:
                calls.append({"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
            entry = fixtures.find(self.command, url.path, url.query, self.headers.get("x-mock-fixture"))
            if entry is None:
                body = b'{"errors":[{"code":"NotFound","message":"mock-spapi has no fixture for this request"}]}'
                return self._send(404, body)
            body = b""
            if entry["status"] != 204:
                with open(os.path.join(entry["folder"], entry["file"]), "rb") as f:
                    body = f.read()
            headers = list((entry.get("headers") or {}).items())
            self._send(entry["status"], body, headers, entry.get("chunked", False))

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client (Envoy) that hangs up mid-body is normal here: a fail-closed filter resets the
        # upstream stream as soon as it refuses a body.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18081)
    parser.add_argument("folders", nargs="+", help="fixture folders, each with an INDEX.json")
    args = parser.parse_args()
    fixtures = Fixtures(args.folders)
    server = Server((args.host, args.port), make_handler(fixtures, [], threading.Lock()))
    print(f"mock-spapi: {len(fixtures.entries)} fixtures on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
