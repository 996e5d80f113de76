#!/usr/bin/env python3
"""A small SP-API stand-in that plays recorded JSON fixtures.

    python3 tests/mock_spapi.py --port 18081 tests/fixtures/spapi [more fixture folders…]

Each folder holds an INDEX.json of entries {file, method, path, query, status} (the format of
Amazon-model fixtures in tests/fixtures/spapi); optional entry fields: `headers` (response
headers to send, e.g. a content-type or content-encoding), `chunked` (send the body with
chunked transfer encoding instead of a content-length), `trailers` (an object of response
trailers sent after the body: over HTTP/1.1 the body goes chunked, then the trailers; over
HTTP/2 a trailing HEADERS frame) and `close_after` (a byte count: send the headers with the
full body's content-length, then only that many body bytes, then close the connection).

The same port also speaks HTTP/2 with prior knowledge (h2c), told apart by the connection
preface; that needs the `h2` package (the tests run the mock with .venv/bin/python for it).

A request is answered by the first entry with the same method and path whose query matches
(exactly, else any query); the header `x-mock-fixture: <file>` picks an entry by file name
instead (several fixtures share a path). Unknown requests get an SP-API-style 404.

Control endpoints (tests call them on the mock's own port, not through Envoy):
  GET  /__mock/calls   JSON list of the requests served so far ({method, path, headers}; also
                       `trailers` when the request had some, `protocol: "h2"` over HTTP/2)
  POST /__mock/reset   forget them
"""
import argparse
import json
import os
import socket
import sys
import time
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NOT_FOUND = b'{"errors":[{"code":"NotFound","message":"mock-spapi has no fixture for this request"}]}'


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


def answer(fixtures, method, target, wanted_file):
    """The fixture's reply to a request: (status, body, headers, entry or None)."""
    url = urlsplit(target)
    entry = fixtures.find(method, url.path, url.query, wanted_file)
    if entry is None:
        return 404, NOT_FOUND, [], None
    body = b""
    if entry["status"] != 204:
        with open(os.path.join(entry["folder"], entry["file"]), "rb") as f:
            body = f.read()
    return entry["status"], body, list((entry.get("headers") or {}).items()), entry


def make_handler(fixtures, calls, lock):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body leave in one write, without Nagle's delay (else small responses wait
        # ~40 ms for a delayed ACK).
        disable_nagle_algorithm = True

        def log_message(self, fmt, *args):  # quiet: the tests read Envoy's output, not ours
            pass

        def _send(self, status, body, headers=(), chunked=False, trailers=None, close_after=None):
            self.send_response(status)
            names = {k.lower() for k, _ in headers}
            for k, v in headers:
                self.send_header(k, v)
            if "content-type" not in names and body:
                self.send_header("content-type", "application/json")
            chunked = chunked or bool(trailers)
            if trailers:
                self.send_header("trailer", ", ".join(trailers))
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
            if close_after is not None:
                # An upstream that dies mid-body: the declared length, part of the body, then EOF.
                self.wfile.write(head + body[:close_after])
                self.close_connection = True
                time.sleep(0.05)
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if chunked:
                self.wfile.write(head)
                step = 16 * 1024
                for i in range(0, len(body), step):
                    part = body[i:i + step]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                tail = b"".join(b"%s: %s\r\n" % (k.encode(), str(v).encode()) for k, v in (trailers or {}).items())
                self.wfile.write(b"0\r\n" + tail + b"\r\n")
            else:
                self.wfile.write(head + body)

        def _read_body(self):
            """Reads the request body (content-length or chunked) into self.request_body; returns
            its trailers, if any."""
            self.request_body = b""
            if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        break
                    self.request_body += self.rfile.read(size + 2)[:size]
                trailers = {}
                while True:
                    line = self.rfile.readline()
                    if line in (b"\r\n", b"\n", b""):
                        return trailers
                    k, _, v = line.decode("latin-1").partition(":")
                    trailers[k.strip().lower()] = v.strip()
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.request_body = self.rfile.read(length)
            return {}

        def handle(self):
            if self._h2_preface():
                return serve_h2(self.connection, fixtures, calls, lock)
            return super().handle()

        def _h2_preface(self):
            """True if the client opened with the HTTP/2 connection preface (prior knowledge)."""
            got = b""
            deadline = time.monotonic() + 5
            while len(got) < len(H2_PREFACE) and time.monotonic() < deadline:
                try:
                    got = self.connection.recv(len(H2_PREFACE), socket.MSG_PEEK)
                except OSError:
                    return False
                if not got or not H2_PREFACE.startswith(got):
                    return False
                if len(got) < len(H2_PREFACE):
                    time.sleep(0.001)
            return got == H2_PREFACE

        def _handle(self):
            request_trailers = self._read_body()
            url = urlsplit(self.path)
            if url.path == "/__mock/calls":
                with lock:
                    body = json.dumps(calls).encode()
                return self._send(200, body)
            if url.path == "/__mock/reset":
                with lock:
                    calls.clear()
                return self._send(200, b"{}")
            call = {"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
            if self.request_body:
                # What the upstream received, for tests of request rewriting (detokenization).
                call["body"] = self.request_body.decode("utf-8", "replace")
            if request_trailers:
                call["trailers"] = request_trailers
            with lock:
                calls.append(call)
            status, body, headers, entry = answer(fixtures, self.command, self.path, self.headers.get("x-mock-fixture"))
            entry = entry or {}
            self._send(status, body, headers, entry.get("chunked", False), entry.get("trailers"), entry.get("close_after"))

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return Handler


def serve_h2(sock, fixtures, calls, lock):
    """One HTTP/2 (h2c, prior knowledge) connection: the same fixtures, streams interleaved."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    requests = {}  # stream id -> {"headers": dict, "trailers": dict}
    replies = {}  # stream id -> {"body": bytes, "sent": int, "trailers": dict, "close_after": int|None}

    def start_reply(stream_id):
        request = requests.pop(stream_id)
        h = request["headers"]
        call = {"method": h.get(":method"), "path": h.get(":path"), "protocol": "h2",
                "headers": {k: v for k, v in h.items() if not k.startswith(":")}}
        if request["trailers"]:
            call["trailers"] = request["trailers"]
        with lock:
            calls.append(call)
        status, body, headers, entry = answer(fixtures, h.get(":method"), h.get(":path", "/"), h.get("x-mock-fixture"))
        entry = entry or {}
        out = [(":status", str(status))] + [(k.lower(), str(v)) for k, v in headers]
        names = {k for k, _ in out}
        if "content-type" not in names and body:
            out.append(("content-type", "application/json"))
        if h.get(":method") == "HEAD":
            body = b""
        out.append(("content-length", str(len(body))))
        trailers = [(k.lower(), str(v)) for k, v in (entry.get("trailers") or {}).items()]
        ends_now = not body and not trailers and entry.get("close_after") is None
        conn.send_headers(stream_id, out, end_stream=ends_now)
        if not ends_now:
            replies[stream_id] = {"body": body, "sent": 0, "trailers": trailers, "close_after": entry.get("close_after")}

    def pump():
        """Sends what the flow-control windows allow; False once a reply asked to drop the connection."""
        for stream_id in list(replies):
            r = replies[stream_id]
            end = len(r["body"]) if r["close_after"] is None else min(r["close_after"], len(r["body"]))
            while r["sent"] < end:
                n = min(end - r["sent"], conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                if n <= 0:
                    break
                last = r["sent"] + n == len(r["body"]) and not r["trailers"] and r["close_after"] is None
                conn.send_data(stream_id, r["body"][r["sent"]:r["sent"] + n], end_stream=last)
                r["sent"] += n
                if last:
                    del replies[stream_id]
            if r["sent"] < end:
                continue
            if r["close_after"] is not None:
                return False
            if stream_id in replies:
                if r["trailers"]:
                    conn.send_headers(stream_id, r["trailers"], end_stream=True)
                else:
                    conn.end_stream(stream_id)
                del replies[stream_id]
        return True

    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    requests[event.stream_id] = {"headers": dict(event.headers), "trailers": {}}
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    requests[event.stream_id]["trailers"] = dict(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    if event.stream_id in requests:
                        start_reply(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    requests.pop(event.stream_id, None)
                    replies.pop(event.stream_id, None)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    sock.sendall(conn.data_to_send())
                    return
            keep = pump()
            sock.sendall(conn.data_to_send())
            if not keep:
                # An upstream that dies mid-body: part of the body, then the connection drops.
                time.sleep(0.05)
                sock.shutdown(socket.SHUT_RDWR)
                return
    except (ConnectionResetError, BrokenPipeError):
        return


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
