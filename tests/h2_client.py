#!/usr/bin/env python3
"""A one-request HTTP/2 client with request trailers, for the end-to-end tests (needs `h2`).

    .venv/bin/python tests/h2_client.py --port 10000 --ca ca.crt --cert order-sync.crt \
        --key order-sync.key --method POST --path /tokens/2021-03-01/restrictedDataToken \
        --header 'content-type: application/json' --body-file body.json --chunks 3 \
        --trailer 'x-foo: bar'

TLS (with --ca; --cert/--key for a client certificate) offering ALPN `h2`, or cleartext HTTP/2
with prior knowledge (--plaintext). The body (--body or --body-file) is sent in --chunks DATA
frames, each flushed on its own with a short pause so that Envoy hands them to the filters one by
one; then the trailers (--trailer, repeatable) end the stream, or the last DATA frame does. A
content-length header is sent with a body unless --no-content-length.

Prints one JSON object: {"alpn", "status", "headers": [[k, v]…], "body_b64", "trailers": [[k, v]…],
"error"}. `error` is null for a complete response, else what ended it early ("stream reset:
<code>", "connection terminated: <code>", "connection closed", "timeout"); whatever arrived
before that is still reported. The exit status is 0 whenever it printed that object.
"""
import argparse
import base64
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def header(text):
    name, sep, value = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"not 'name: value': {text!r}")
    return name.strip().lower(), value.strip()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--plaintext", action="store_true", help="h2c with prior knowledge instead of TLS")
    p.add_argument("--ca", help="CA that signed the server certificate")
    p.add_argument("--cert", help="client certificate")
    p.add_argument("--key", help="client key")
    p.add_argument("--method", default="GET")
    p.add_argument("--path", required=True)
    p.add_argument("--header", type=header, action="append", default=[])
    p.add_argument("--body")
    p.add_argument("--body-file")
    p.add_argument("--chunks", type=int, default=1, help="DATA frames to split the body into")
    p.add_argument("--trailer", type=header, action="append", default=[])
    p.add_argument("--no-content-length", action="store_true")
    p.add_argument("--timeout", type=float, default=30)
    a = p.parse_args()

    body = None
    if a.body_file:
        with open(a.body_file, "rb") as f:
            body = f.read()
    elif a.body is not None:
        body = a.body.encode()

    result = {"alpn": None, "status": None, "headers": [], "body_b64": "", "trailers": [], "error": None}
    received = bytearray()
    deadline = time.monotonic() + a.timeout
    sock = socket.create_connection((a.host, a.port), timeout=a.timeout)
    if not a.plaintext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=a.ca)
        if a.cert:
            ctx.load_cert_chain(a.cert, a.key)
        ctx.set_alpn_protocols(["h2"])
        sock = ctx.wrap_socket(sock, server_hostname=a.host)
        result["alpn"] = sock.selected_alpn_protocol()

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    stream = conn.get_next_available_stream_id()
    headers = [(":method", a.method), (":path", a.path), (":scheme", "http" if a.plaintext else "https"),
               (":authority", f"{a.host}:{a.port}")]
    headers += a.header
    if body is not None and not a.no_content_length and not any(k == "content-length" for k, _ in a.header):
        headers.append(("content-length", str(len(body))))
    done = False

    def handle(events):
        nonlocal done
        for event in events:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                result["headers"] = [[k, v] for k, v in event.headers if k != ":status"]
                result["status"] = int(dict(event.headers)[":status"])
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id == stream:
                    received.extend(event.data)
            elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == stream:
                result["trailers"] = [[k, v] for k, v in event.headers]
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                done = True
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                result["error"] = f"stream reset: {event.error_code!s}"
                done = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                if not done:
                    result["error"] = f"connection terminated: {event.error_code!s}"
                done = True

    def read_some(wait):
        """Reads and handles what arrives within `wait` seconds; False once the socket closed."""
        sock.settimeout(wait)
        try:
            data = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return True
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            return False
        handle(conn.receive_data(data))
        sock.sendall(conn.data_to_send())
        return True

    def send_data(data, end_stream):
        """Sends `data` as DATA frames, waiting for flow-control window as needed."""
        view = memoryview(data)
        while True:
            n = min(len(view), conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
            if n == 0 and len(view) > 0:
                if not read_some(1) or done or time.monotonic() > deadline:
                    return False
                continue
            last = n == len(view)
            conn.send_data(stream, bytes(view[:n]), end_stream=end_stream and last)
            sock.sendall(conn.data_to_send())
            view = view[n:]
            if last:
                return True

    try:
        conn.send_headers(stream, headers, end_stream=body is None and not a.trailer)
        sock.sendall(conn.data_to_send())
        sending = True
        if body is not None:
            chunks = max(1, min(a.chunks, len(body) or 1))
            size = -(-len(body) // chunks) if body else 0
            parts = [body[i:i + size] for i in range(0, len(body), size)] if body else [b""]
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                if not send_data(part, end_stream=last and not a.trailer):
                    sending = False
                    break
                if not last:
                    # Let each DATA frame reach Envoy (and the filter) on its own.
                    time.sleep(0.05)
                    read_some(0.001)
        if sending and a.trailer and not done:
            conn.send_headers(stream, a.trailer, end_stream=True)
            sock.sendall(conn.data_to_send())
        while not done:
            if time.monotonic() > deadline:
                result["error"] = "timeout"
                break
            if not read_some(max(0.01, deadline - time.monotonic())):
                result["error"] = result["error"] or "connection closed"
                break
    except (BrokenPipeError, ConnectionResetError) as e:
        result["error"] = result["error"] or f"connection closed: {e}"
    except h2.exceptions.ProtocolError as e:
        result["error"] = result["error"] or f"protocol error: {e}"
    result["body_b64"] = base64.b64encode(bytes(received)).decode()
    print(json.dumps(result))
    try:
        sock.close()
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
