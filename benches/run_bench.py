#!/usr/bin/env python3
"""make bench: the same upstream and the same Envoy binary in three variants, side by side, on
loopback, driven by wrk.

  (a) none   — no Wasm filter
  (b) floor  — benches/buffer-filter: buffers each response body and writes it back unchanged
  (c) guard  — spapi-guard with the default policy (its order-sync role, plus a label-buyer role
               that may reveal ship-to tokens toward the Shipping v2 API)

The upstream is a second Envoy answering every request with a `direct_response` whose body is a
file from benches/gen_payloads.py (one route per payload file, the 50 "new page" pages told apart
by their `page` query parameter): no Python on the request path, a few microseconds of CPU per
request, so the proxy under test is what is measured (BENCHMARKS.md shows the upstream alone and
the CPU each process uses during every run).

All proxies run at --concurrency 1, at the same time on different ports; only one is under load
at a time. Rounds alternate the variants' order; medians are reported. Writes
target/bench/results.md.

The default policy identifies callers by mTLS client certificate; wrk cannot present one, so the
benchmark policy adds a caller identified by a header that a header_mutation filter sets — the
stand-in for a trusted authentication filter (documented in BENCHMARKS.md).

Payloads are rows of PAYLOADS: method, request target, the upstream's response file, an optional
request body and wrk script, which variants run them. A row that needs another kind of upstream
(a streamed document of hundreds of MB) adds its own route to upstream_config() and its own
check to check_payloads().

The report-document download (issue #10) is a row of its own, not a wrk load: one large order
report (--report-mb of TSV, gzip on the wire) on a local TLS document host (tests/document_host.py,
its own CA), fetched once at a time with curl — (a) through the no-filter Envoy's documents route
(the same dynamic-forward-proxy TLS cluster spapi-guard uses, selected by a benchmark header
instead of the filter), gzip bytes as served; (c) getReport -> getReportDocument (answered by the
upstream Envoy) -> GET of spapi-guard's pointer, decompressed and tokenized as it streams; and the
document host alone (curl straight to it), which may bound (a). Envoy RSS is sampled during each
download. --download-only runs just this row.
"""
import argparse
import base64
import dataclasses
import gzip
import json
import os
import pathlib
import re
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

from gen_payloads import LABEL_ORDER_ID, SHIP_TO

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "bench"
FIXTURES = OUT / "fixtures"
ENVOY = os.environ.get("ENVOY_BIN", str(ROOT / ".venv" / "envoy-bin"))
GUARD_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "spapi_guard.wasm"
FLOOR_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "buffer_filter.wasm"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Payload:
    name: str
    target: str  # the request target (a wrk script may vary it per request)
    response: str  # the upstream's response body (a file of FIXTURES)
    method: str = "GET"
    script: str | None = None  # a wrk Lua script under benches/
    body: str | None = None  # the request body in clear (a file of FIXTURES); spapi-guard's variant sends it tokenized
    tokenized: bool = True  # spapi-guard's response carries tokens (else it must be the upstream's bytes)
    variants: tuple = ("none", "floor", "guard")
    diagnostics: tuple = ()  # DIAGNOSTICS variants that also run it


NEW_PAGE = "100-order getOrders, a new page each request"
REQUEST_SIDE = "directPurchaseShipment request, 10 tokens revealed"
PAYLOADS = [
    Payload("no-PII operation (16 KB catalog page)", "/catalog/2022-04-01/items", "catalog-item.json", tokenized=False, diagnostics=("noop",)),
    Payload("1-order getOrder (1.4 KB)", "/orders/v0/orders/902-3159896-1390916", "getOrder-1.json", diagnostics=("noop",)),
    Payload("100-order getOrders (176 KB, 2,500 PII values)", "/orders/v0/orders", "getOrders-100.json"),
    # The same, but a different page on each request (benches/pages.lua): no value was seen before.
    Payload(NEW_PAGE, "/orders/v0/orders?page=0", "getOrders-100-p0.json", script="pages.lua",
            diagnostics=("guard-clear", "guard-redact", "guard-hash", "guard-nodetect")),
    # Request side (issue #11): the application buys a label with the ship-to tokens it holds; the
    # buffer-only filter does nothing to requests, so it has no row here.
    Payload(REQUEST_SIDE, "/shipping/v2/shipments/directPurchase", "directPurchaseShipment.json", method="POST", script="post.lua",
            body="directPurchaseShipment.request.json", variants=("none", "guard")),
]
VARIANTS = ["none", "floor", "guard"]
NAMES = {"none": "(a) no filter", "floor": "(b) buffer-only Wasm", "guard": "(c) spapi-guard"}
# Diagnostics, to show where spapi-guard's time goes: the same filter with every PII class
# cleared (walk and validate only), redacted (rewrite, no crypto), hashed (rewrite + HMAC-SHA256),
# the default policy with the drift detectors and the zero-match alarm off (the rest of the drift
# safety net — customer objects, shapes — cannot be turned off); and a Wasm filter that does
# nothing (the cost of any Wasm filter per request).
DIAGNOSTICS = {"guard-clear": "clear", "guard-redact": "redact", "guard-hash": "hash", "guard-nodetect": "nodetect", "noop": None}
# Where the label's ship-to tokens come from: the application read the order through spapi-guard.
LABEL_ORDER = f"/orders/v0/orders/{LABEL_ORDER_ID}"
RECORD_HEADER = "x-bench-record"
# The report-document download (issue #10).
REPORT_TYPE = "GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING"
REPORT_PATH = "/reports/2021-06-30/reports/bench-order-report"
DOCUMENT_ID = "amzn1.spdoc.1.4.na.bench-order-report"
DOCUMENT_PATH = f"/reports/2021-06-30/documents/{DOCUMENT_ID}"
# The no-filter variant's stand-in for spapi-guard's document route header (which its Envoy
# removes from client requests): the same route and cluster, chosen by the benchmark's client.
BENCH_DOCUMENT_ROUTE = "x-bench-document-route"
DOCS = OUT / "docs"
DOWNLOADS = {
    "host": "document host alone (curl straight to it, TLS, gzip as served)",
    "none": "(a) Envoy, no filter (gzip as served)",
    "none-identity": "(a′) Envoy, no filter, the same report served uncompressed (diagnostic)",
    "guard-clear": "spapi-guard, every class clear (inflate + parse, no crypto; diagnostic)",
    "guard": "(c) spapi-guard (decompressed, tokenized)",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    """User + system CPU time of a process (all its threads), in seconds."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds():
    """CPU seconds the whole machine spent busy (all cores; idle and iowait excluded)."""
    values = [int(x) for x in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLOCK_TICKS


def wait_ready(admin_port, proc, name):
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"Envoy ({name}) exited; see {OUT / name}.log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"Envoy ({name}) not ready")


def bench_policy(level=None, doc_port=None):
    policy = json.loads((ROOT / "policies" / "default.json").read_text())
    if doc_port:
        # The download row: its document host, getReport/getReportDocument passed to the upstream,
        # and order reports readable by the benchmark caller (as tests/documents.rs sets it up).
        policy["documents"] = {"hosts": [f"localhost:{doc_port}"]}
        policy["access"]["passThroughPaths"].append("/reports/")
        policy["roles"]["order-sync"]["documents"] = {"reportTypes": [REPORT_TYPE]}
    if level == "nodetect":
        policy["drift"] = {"detectors": {d: "off" for d in ("email", "phone", "address", "name")}, "zeroMatchAlarm": False}
    elif level:
        policy["roles"]["order-sync"]["pii"] = {"*": level}
    access = policy["access"]
    access["allowPlaintext"] = True
    access["identity"]["sources"] = ["uri_san", "header"]
    # Buying labels (docs/POLICY.md "Revealing tokens"): the ship-to goes to the Shipping API in clear.
    policy["roles"]["label-buyer"] = {"operations": ["shipping-v2.*"], "pii": {},
                                      "reveal": [{"classes": ["name", "company", "address", "phone", "email"], "operations": ["shipping-v2.*"]}]}
    policy["callers"].append({"id": "bench-client", "source": "header", "roles": ["order-sync", "label-buyer"]})
    # The benchmark sends far more PII than the demo limit allows in a minute.
    policy["roles"]["order-sync"].pop("maxPiiFieldsPerWindow", None)
    return policy


def upstream_config(listen, admin, recorder_port, extra=()):
    """The upstream Envoy: every INDEX.json entry of the payloads as a direct response from its file
    (routes with a query first: a path match ignores the query); a request carrying RECORD_HEADER
    goes to the recorder instead (a one-off check of what the upstream receives). One worker: it
    answers from memory, a few µs of CPU per request (BENCHMARKS.md measures it alone)."""
    index = json.loads((FIXTURES / "INDEX.json").read_text()) + list(extra)
    routes = [{"match": {"prefix": "/", "headers": [{"name": RECORD_HEADER, "present_match": True}]}, "route": {"cluster": "recorder"}}]
    for e in sorted(index, key=lambda e: not e["query"]):
        match = {"path": e["path"], "headers": [{"name": ":method", "string_match": {"exact": e["method"]}}]}
        if e["query"]:
            match["query_parameters"] = [{"name": k, "string_match": {"exact": v}} for k, v in parse_qsl(e["query"])]
        routes.append({"match": match, "direct_response": {"status": e["status"], "body": {"filename": str(FIXTURES / e["file"])}}})
    routes.append({"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": '{"errors":[{"code":"NotFound"}]}'}}})
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "upstream",
        "route_config": {"name": "payloads", "max_direct_response_body_size_bytes": 4 * 1024 * 1024, "virtual_hosts": [{
            "name": "payloads", "domains": ["*"], "routes": routes,
            "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}]},
        # The whole request body is read before the answer: a direct response sent while a body
        # is still arriving makes Envoy close the HTTP/1.1 connection, one connection per POST.
        "http_filters": [{"name": "envoy.filters.http.buffer",
                          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": 1024 * 1024}},
                         {"name": "envoy.filters.http.router",
                          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "payloads", "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
            "clusters": [{"name": "recorder", "type": "STATIC", "connect_timeout": "5s", "load_assignment": {
                "cluster_name": "recorder",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": recorder_port}}}}]}]}}],
        },
    }


def launch(name, config, procs, env=None):
    """Starts an Envoy on a rendered config, at --concurrency 1."""
    log = open(OUT / f"{name}.log", "w")
    proc = subprocess.Popen([ENVOY, "-c", str(config), "--concurrency", "1", "--log-level", "warn", "--disable-hot-restart"],
                            stdout=subprocess.DEVNULL, stderr=log, env=env)
    procs.append(proc)
    return proc


def start(variant, upstream_port, procs, doc_port=None):
    listen, admin = free_port(), free_port()
    policy_file = OUT / f"policy-{variant}.json"
    policy_file.write_text(json.dumps(bench_policy(DIAGNOSTICS.get(variant), doc_port)))
    config = OUT / f"envoy-{variant}.yaml"
    kind = "guard" if variant.startswith("guard") else variant
    cmd = [sys.executable, str(ROOT / "scripts" / "render-envoy-config.py"), "--policy", str(policy_file), "--out", str(config),
           "--listen-port", str(listen), "--admin-port", str(admin), "--upstream-port", str(upstream_port),
           "--wasm", str(GUARD_WASM if kind == "guard" else FLOOR_WASM), "--tls-dir", str(OUT / "tls"),
           "--variant", kind, "--trusted-identity", "bench-client", "--document-trust-store", str(OUT / "doc-certs" / "doc-ca.crt")]
    subprocess.run(cmd, check=True)
    if kind == "none":
        # No filter to choose the documents route: the benchmark's client does, by its own header.
        text = config.read_text()
        route = "headers: [{ name: x-spapi-guard-document-route, present_match: true }]"
        if route not in text:
            raise SystemExit("the documents route of envoy/envoy.template.yaml changed: update run_bench.py's no-filter download")
        config.write_text(text.replace(route, f"headers: [{{ name: {BENCH_DOCUMENT_ROUTE}, present_match: true }}]"))
    proc = launch(variant, config, procs, dict(os.environ, SPAPI_GUARD_KEY_DEMO_1=KEY))
    wait_ready(admin, proc, variant)
    return {"port": listen, "admin": admin, "proc": proc}


def wrk(port, payload, seconds, connections, body=None, watch=None):
    """One wrk run: req/s, p50 and p99 in ms, and the CPU seconds of each watched process, of wrk
    and of the whole machine during the run."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    cmd += ["-s", str(ROOT / "benches" / payload.script)] if payload.script else []
    cmd.append(f"http://127.0.0.1:{port}{payload.target}")
    cmd += ["--", str(body)] if body else []
    watch = watch or {}
    before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    children, busy, start_time = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy_seconds(), time.monotonic()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in watch.items()}
    cpu["wrk"] = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    cpu["machine"] = machine_busy_seconds() - busy
    elapsed = time.monotonic() - start_time
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} error responses on {payload.target}:\n{out}")
    return {"rps": rps, "p50": to_ms(lat["50"]), "p99": to_ms(lat["99"]), "requests": max(requests, 1), "elapsed": elapsed, "cpu": cpu}


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def call(port, method, target, body=None, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{target}", data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()


class Recorder:
    """The one-off recording upstream: keeps the body of each request it is sent and answers with
    the request-side payload's response."""

    def __init__(self, answer):
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                bodies.append(self.rfile.read(int(self.headers.get("content-length", "0"))))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def tokenized_request(guard_port, plaintext):
    """The request body the application sends: the plaintext body with each ship-to value replaced
    by the token spapi-guard gave the application when it read the order (same key as the
    proxy's; deterministic tokens, so the same on every read)."""
    status, order = call(guard_port, "GET", LABEL_ORDER)
    order = json.loads(order)["payload"]
    body = json.loads(plaintext)
    for member, (obj, source), _ in SHIP_TO:
        token = order[obj][source]
        if not token.startswith("spgt1."):
            raise SystemExit(f"spapi-guard did not tokenize the label order's {obj}.{source}: the request-side row would reveal nothing")
        body["shipTo"][member] = token
    return json.dumps(body, ensure_ascii=False).encode()


def revealed_values(admin_port):
    """spapi-guard's count of values revealed so far (its spapi_guard_pii_fields_total metric)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats/prometheus", timeout=5) as r:
        stats = r.read().decode()
    return sum(int(n) for n in re.findall(r'^spapi_guard_pii_fields_total\{[^}]*action="revealed"[^}]*\} (\d+)', stats, re.M))


def check_request_side(envoys, recorder, plaintext, tokenized):
    """Once, before timing: the upstream receives the ship-to in clear from both variants — the
    plaintext body's exact bytes — and spapi-guard counts 10 revealed values for the request."""
    payload = next(p for p in PAYLOADS if p.name == REQUEST_SIDE)
    before = revealed_values(envoys["guard"]["admin"])
    for variant, body in (("none", plaintext), ("guard", tokenized)):
        status, _ = call(envoys[variant]["port"], "POST", payload.target, body, {"content-type": "application/json", RECORD_HEADER: "1"})
        received = recorder.bodies[-1] if recorder.bodies else b""
        if status != 200 or received != plaintext:
            raise SystemExit(f"{variant}: the upstream did not receive the ship-to in clear (status {status}); see {OUT}")
    revealed = revealed_values(envoys["guard"]["admin"]) - before
    if revealed != 10:
        raise SystemExit(f"spapi-guard counted {revealed} revealed values for one request with 10 tokens")


def check_payloads(envoys, bodies):
    """Once, before timing: every variant answers every payload; the no-filter and buffer-only
    variants with the upstream's exact bytes, spapi-guard with tokens (or, for the operation
    without PII, the upstream's exact bytes too)."""
    for p in PAYLOADS:
        expected = (FIXTURES / p.response).read_bytes()
        for v in p.variants:
            body = bodies[(p.name, v)].read_bytes() if p.body else None
            headers = {"content-type": "application/json"} if body else {}
            status, got = call(envoys[v]["port"], p.method, p.target, body, headers)
            ok = status == 200 and (("spgt1." in got.decode()) if v == "guard" and p.tokenized else got == expected)
            if not ok:
                raise SystemExit(f"{NAMES[v]} answered {p.target} with {status}, {len(got)} bytes: the benchmark would measure something else")


def median(samples, f):
    return statistics.median(f(s) for s in samples)


def per_request_us(sample, process):
    return sample["cpu"][process] / sample["requests"] * 1e6


def cores(sample, process):
    return sample["cpu"][process] / sample["elapsed"]


# ---- The report-document download (issue #10) ----


def prepare_report(report_mb):
    """The order report (gzip TSV: every row a new buyer, 9 of its 18 columns customer data) and
    tests/gen_reports.py's manifest (planted values of the first 1,000 rows), generated once per
    size into target/bench/docs (minutes for 256 MB: Python); the document host's certificates."""
    DOCS.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bash", str(ROOT / "tests" / "gen-document-certs.sh"), str(OUT / "doc-certs")], check=True, stdout=subprocess.DEVNULL)
    report = DOCS / f"order-report-{report_mb:g}mb.tsv.gz"
    manifest = DOCS / f"{report.name}.json"
    if not (report.exists() and manifest.exists()):
        print(f"generating the {report_mb:g} MB order report (once, kept in {DOCS})", file=sys.stderr, flush=True)
        partial = DOCS / f"{report.name}.json.partial"
        with open(partial, "w") as out:
            subprocess.run([sys.executable, str(ROOT / "tests" / "gen_reports.py"), "--type", REPORT_TYPE, "--size-mb", f"{report_mb:g}",
                            "--gzip", "--manifest-rows", "1000", "--out", str(report)], check=True, stdout=out)
        partial.rename(manifest)
    # The same document uncompressed, for the no-filter diagnostic that moves the text itself.
    plain = DOCS / report.stem
    if not plain.exists():
        with gzip.open(report) as src, open(DOCS / f"{plain.name}.partial", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        (DOCS / f"{plain.name}.partial").rename(plain)
    return report, json.loads(manifest.read_text())


def start_document_host(procs):
    """tests/document_host.py over TLS (its own CA) serving target/bench/docs; waits until it accepts."""
    port, certs = free_port(), OUT / "doc-certs"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "document_host.py"), "--port", str(port), "--cert", str(certs / "localhost.crt"),
                             "--key", str(certs / "localhost.key"), "--dir", str(DOCS), "--events", str(OUT / "document-host-events.jsonl")],
                            stdout=subprocess.DEVNULL, stderr=open(OUT / "document-host.log", "w"))
    procs.append(proc)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port, proc
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the document host did not start; see {OUT / 'document-host.log'}")


def document_fixtures(doc_port, report):
    """getReport and getReportDocument for the upstream Envoy: the pointer carries a pre-signed-looking
    URL to the local document host (valid for an hour: the pointer is asked again before each download)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    url = (f"https://localhost:{doc_port}/{report.name}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={stamp}&X-Amz-Expires=3600"
           "&X-Amz-SignedHeaders=host&X-Amz-Signature=5ec4e7d1c0ffee")
    bodies = {"bench-getReport.json": (REPORT_PATH, {"reportId": "bench-order-report", "reportType": REPORT_TYPE, "processingStatus": "DONE",
                                                      "reportDocumentId": DOCUMENT_ID}),
              "bench-getReportDocument.json": (DOCUMENT_PATH, {"reportDocumentId": DOCUMENT_ID, "url": url, "compressionAlgorithm": "GZIP"})}
    for file, (_, body) in bodies.items():
        (FIXTURES / file).write_text(json.dumps(body))
    return [{"file": file, "method": "GET", "path": path, "query": "", "status": 200} for file, (path, _) in bodies.items()], url


def document_pointer(port):
    """getReport, then getReportDocument through spapi-guard: the path of its pointer on the proxy."""
    for target in (REPORT_PATH, DOCUMENT_PATH):
        status, body = call(port, "GET", target)
        if status != 200:
            raise SystemExit(f"spapi-guard answered {target} with {status}")
    pointer = json.loads(body)
    path = "/" + pointer["url"].split("://", 1)[-1].split("/", 1)[-1]
    if not path.startswith("/spapi-guard/v1/documents/") or "compressionAlgorithm" in pointer:
        raise SystemExit("spapi-guard's getReportDocument is not a pointer on the proxy to the decompressed document")
    return path


def download(url, headers=(), out="/dev/null", watch=None, cacert=None):
    """One download with curl (--fail: a reset or an error status fails it): bytes received and
    seconds (curl's), the CPU seconds of each watched process, of curl and of the whole machine,
    and the watched proxy's RSS before and at its peak (sampled every 20 ms)."""
    cmd = ["curl", "-sS", "--fail", "-o", str(out), "-w", "%{size_download} %{time_total}", *[a for h in headers for a in ("-H", h)]]
    cmd += ["--cacert", str(cacert), url] if cacert else [url]
    watch = watch or {}
    proxy = watch.get("proxy")
    rss = {"idle": rss_kb(proxy) if proxy else 0}
    rss["peak"] = rss["idle"]
    done = threading.Event()

    def sample():
        while proxy and not done.wait(0.02):
            rss["peak"] = max(rss["peak"], rss_kb(proxy))

    sampler = threading.Thread(target=sample, daemon=True)
    before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    children, busy = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy_seconds()
    sampler.start()
    result = subprocess.run(cmd, capture_output=True, text=True)
    done.set()
    sampler.join()
    if result.returncode != 0:
        raise SystemExit(f"the download of {url.split('?')[0]} failed: {result.stderr.strip()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in watch.items()}
    cpu["curl"] = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    cpu["machine"] = machine_busy_seconds() - busy
    size, seconds = result.stdout.split()
    return {"bytes": int(size), "seconds": float(seconds), "cpu": cpu, "rss_idle": rss["idle"], "rss_peak": rss["peak"]}


def download_targets(envoys, doc):
    """Per variant: the URL and headers of one download (spapi-guard's asks for a fresh pointer)."""
    host = f"localhost:{doc['port']}"
    path = doc["url"].split(host, 1)[1]
    # The same documents route and TLS cluster as spapi-guard's download, chosen by a header.
    none = f"http://127.0.0.1:{envoys['none']['port']}", (f"host: {host}", f"{BENCH_DOCUMENT_ROUTE}: 1"), None
    targets = {
        "host": lambda: (f"https://{host}{path}", (), OUT / "doc-certs" / "doc-ca.crt"),
        "none": lambda: (none[0] + path, *none[1:]),
        "none-identity": lambda: (none[0] + path.replace(doc["report"].name, doc["report"].stem), *none[1:]),
    }
    for v in ("guard", "guard-clear"):
        if v in envoys:
            targets[v] = lambda port=envoys[v]["port"]: (f"http://127.0.0.1:{port}{document_pointer(port)}", (), None)
    return targets


def check_download(envoys, doc, manifest):
    """Once, before timing: (a) and the host alone return the gzip document's exact bytes; (c) the
    document decompressed with every row there (as many lines as the original), none of the planted
    values of the first 1,000 rows in clear nor a sample of them anywhere, a token per planted value."""
    served = doc["report"].read_bytes()
    plain = gzip.decompress(served)
    if plain.count(b"\n") != manifest["rows"] + 1:
        raise SystemExit(f"the generated report is not {manifest['rows']} rows and a header: regenerate it (rm -r {DOCS})")
    targets = download_targets(envoys, doc)
    for v in sorted(targets, key=lambda v: v == "guard"):
        url, headers, cacert = targets[v]()
        out = DOCS / f"check-{v}.out"
        download(url, headers, out, cacert=cacert)
        got = out.read_bytes()
        out.unlink()
        if v != "guard":
            # Every class clear: the filter inflates and parses, and must change no byte.
            expected = plain if v in ("none-identity", "guard-clear") else served
            if got != expected:
                raise SystemExit(f"{v}: the document came back with {len(got)} bytes, not the {len(expected)} expected")
            continue
        planted = [p["value"].encode() for p in manifest["planted"]]
        head_end = 0
        for _ in range(min(manifest["rows"], 1001)):  # the header and the first 1,000 rows: every value planted there
            head_end = got.index(b"\n", head_end) + 1
        head = got[:head_end]
        leaked = [v for v in planted if v in head] + [v for v in planted[::max(len(planted) // 20, 1)] if v in got]
        if leaked:
            raise SystemExit(f"spapi-guard let {len(leaked)} planted values through in clear")
        lines, tokens = got.count(b"\n"), got.count(b"spgt1.")
        if lines != manifest["rows"] + 1 or tokens < manifest["planted_total"]:
            raise SystemExit(f"spapi-guard's document: {lines} lines for {manifest['rows'] + 1}, {tokens} tokens for {manifest['planted_total']} PII values")
        return {"text_bytes": len(plain), "out_bytes": len(got), "tokens": tokens}


def run_downloads(envoys, doc, rounds):
    """The host alone, then (a) and (c) in alternating order, one download at a time."""
    targets, samples = download_targets(envoys, doc), {}
    proxied = [v for v in DOWNLOADS if v in targets and v != "host"]
    for r in range(rounds):
        for v in ("host", *proxied[r % len(proxied):], *proxied[:r % len(proxied)]):
            url, headers, cacert = targets[v]()
            watch = {"host": doc["proc"].pid} if v == "host" else {"proxy": envoys[v.removesuffix("-identity")]["proc"].pid, "host": doc["proc"].pid}
            time.sleep(0.5)
            samples.setdefault(v, []).append(download(url, headers, cacert=cacert, watch=watch))
        print(f"download round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return samples


def download_report(samples, check, manifest, doc, rounds, load_before, idle):
    text, mb = check["text_bytes"], 1e6
    others = statistics.mean((x["cpu"]["machine"] - sum(c for k, c in x["cpu"].items() if k != "machine")) / x["seconds"]
                             for s in samples.values() for x in s)
    lines = [f"Report-document download: {REPORT_TYPE}, {text / mb:,.1f} MB of TSV ({doc['report'].stat().st_size / mb:,.1f} MB gzip), "
             f"{manifest['rows']:,} rows, {manifest['planted_total']:,} PII values (every row a new buyer); spapi-guard's output "
             f"{check['out_bytes'] / mb:,.1f} MB with {check['tokens']:,} tokens. One curl download at a time, {rounds} rounds, medians; "
             f"MB = 10^6 bytes; MB/s of report text = the uncompressed document's size / the download's time, whatever crossed "
             f"the wire. Load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; other processes used {others:.2f} "
             "cores on average during the downloads.", "",
             "| variant | report text MB/s | seconds | bytes out (MB) | proxy Envoy cores | text MB per proxy CPU-second | "
             "document host cores | curl cores | Envoy RSS idle at start (MiB) | RSS before (MiB) | RSS peak during (MiB) | "
             "peak over idle at start (MiB) | growth per round (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    med = {}
    for v, name in DOWNLOADS.items():
        if v not in samples:
            continue
        s = samples[v]
        m = med[v] = {"rate": median(s, lambda x: text / x["seconds"] / mb), "host": median(s, lambda x: x["cpu"]["host"] / x["seconds"])}
        cells = [f"{m['rate']:,.1f}", f"{median(s, lambda x: x['seconds']):.2f}", f"{median(s, lambda x: x['bytes'] / mb):,.1f}"]
        if v == "host":
            cells += ["—", "—", f"{m['host']:.2f}", f"{median(s, lambda x: x['cpu']['curl'] / x['seconds']):.2f}", "—", "—", "—", "—", "—"]
        else:
            # CPU time is counted in clock ticks (10 ms): a download of a few ms has no figure.
            proxy_cpu = median(s, lambda x: x["cpu"]["proxy"])
            m["per_cpu"] = text / mb / proxy_cpu if proxy_cpu >= 0.1 else None
            m["growth"] = max(x["rss_peak"] - x["rss_idle"] for x in s) / 1024
            # Over the Envoy's RSS once started and ready, before any document (its VM included).
            start = idle[v.removesuffix("-identity")]
            m["over_idle"] = (max(x["rss_peak"] for x in s) - start) / 1024
            cells += [f"{median(s, lambda x: x['cpu']['proxy'] / x['seconds']):.2f}", f"{m['per_cpu']:,.1f}" if m["per_cpu"] else "—",
                      f"{m['host']:.2f}", f"{median(s, lambda x: x['cpu']['curl'] / x['seconds']):.2f}",
                      f"{start / 1024:.1f}", f"{s[0]['rss_idle'] / 1024:.1f}", f"{max(x['rss_peak'] for x in s) / 1024:.1f}",
                      f"{m['over_idle']:+.1f}", ", ".join(f"{(x['rss_peak'] - x['rss_idle']) / 1024:+.1f}" for x in s)]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    guard, none = med["guard"], med["none"]
    lines += ["", f"(c)/(a) by throughput of report text: **{guard['rate'] / none['rate']:.3f}** (target ≥ 0.25); against the same "
              f"report served uncompressed (a′): {guard['rate'] / med['none-identity']['rate']:.3f}. spapi-guard per Envoy worker "
              f"(--concurrency 1): **{guard['rate']:,.1f} MB/s** of report text, {guard['per_cpu'] or 0:,.1f} MB per CPU-second of its Envoy "
              f"(target ≥ 20). Envoy RSS during the downloads over its level when started and idle (no document yet): "
              f"**{guard['over_idle']:+.1f} MiB** at the peak with spapi-guard, {none['over_idle']:+.1f} MiB without (target ≤ 32); "
              f"growth within a download, worst round: {guard['growth']:.1f} MiB with spapi-guard, {none['growth']:.1f} MiB without. The document host alone serves {med['host']['rate'] / none['rate']:.2f}× "
              "what (a) achieves through Envoy."]
    return "\n".join(lines)

KEY = None


def main():
    global KEY
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    # Enough requests in flight that the proxy's one worker, not the round trip, bounds throughput.
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--report-mb", type=float, default=256, help="size of the downloaded order report's text (default 256; smaller for a quick run)")
    ap.add_argument("--download-rounds", type=int, default=3)
    ap.add_argument("--download-only", action="store_true", help="only the report-document download row")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    KEY = base64.b64encode(secrets.token_bytes(32)).decode()
    subprocess.run(["bash", str(ROOT / "scripts" / "gen-certs.sh"), str(OUT / "tls")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, str(ROOT / "benches" / "gen_payloads.py"), str(FIXTURES)], check=True, stdout=subprocess.DEVNULL)
    report_file, manifest = prepare_report(args.report_mb)
    load_before = os.getloadavg()

    procs = []
    try:
        doc_port, doc_proc = start_document_host(procs)
        document_entries, document_url = document_fixtures(doc_port, report_file)
        doc = {"port": doc_port, "proc": doc_proc, "url": document_url, "report": report_file}
        request_side = next(p for p in PAYLOADS if p.name == REQUEST_SIDE)
        recorder = Recorder((FIXTURES / request_side.response).read_bytes())
        upstream_port, upstream_admin = free_port(), free_port()
        (OUT / "envoy-upstream.yaml").write_text(json.dumps(upstream_config(upstream_port, upstream_admin, recorder.port, document_entries), indent=1))
        upstream = launch("upstream", OUT / "envoy-upstream.yaml", procs)
        wait_ready(upstream_admin, upstream, "upstream")
        variants = ["none", "guard", "guard-clear"] if args.download_only else VARIANTS + list(DIAGNOSTICS)
        envoys = {v: start(v, upstream_port, procs, doc_port) for v in variants}
        time.sleep(1)
        idle = {v: rss_kb(e["proc"].pid) for v, e in envoys.items()}
        check = check_download(envoys, doc, manifest)
        results = memory = None
        if not args.download_only:
            results, memory = run_requests(args, envoys, upstream, upstream_port, recorder, idle)
        downloads = run_downloads(envoys, doc, args.download_rounds)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()

    tables = [] if args.download_only else [report(args, results, memory, load_before)]
    tables.append(download_report(downloads, check, manifest, doc, args.download_rounds, load_before, idle))
    text = "\n\n".join(tables)
    (OUT / ("results-download.md" if args.download_only else "results.md")).write_text(text + "\n")
    print(text)


def run_requests(args, envoys, upstream, upstream_port, recorder, idle):
    """The wrk rows: checks, warm-up, the upstream alone, then the rounds."""
    request_side = next(p for p in PAYLOADS if p.name == REQUEST_SIDE)
    plaintext = (FIXTURES / request_side.body).read_bytes()
    (OUT / "directPurchaseShipment.tokens.json").write_bytes(tokenized_request(envoys["guard"]["port"], plaintext))
    bodies = {}
    for p in PAYLOADS:
        for v in (*p.variants, *p.diagnostics, "upstream"):
            bodies[(p.name, v)] = (OUT / "directPurchaseShipment.tokens.json" if v.startswith("guard") else FIXTURES / p.body) if p.body else None
    check_payloads(envoys, bodies)
    check_request_side(envoys, recorder, plaintext, (OUT / "directPurchaseShipment.tokens.json").read_bytes())
    time.sleep(1)

    # Idle: each Envoy as started and ready, before any request or document (the check downloads
    # before this grow a no-filter Envoy's buffers by ~35 MiB: not idle any more).
    memory = {v: {"idle": idle[v], "rounds": []} for v in envoys}
    results = {}
    for p in PAYLOADS:  # warm-up: JIT, connection pools, first allocations
        for v in p.variants:
            wrk(envoys[v]["port"], p, 1, args.connections, bodies[(p.name, v)])

    def run(p, v, seconds=args.seconds):
        port, proxy = (upstream_port, {}) if v == "upstream" else (envoys[v]["port"], {"proxy": envoys[v]["proc"].pid})
        sample = wrk(port, p, seconds, args.connections, bodies[(p.name, v)], {**proxy, "upstream": upstream.pid})
        results.setdefault((p.name, v), []).append(sample)

    # The upstream alone, under the same wrk load: what it can serve when nothing else runs.
    for p in PAYLOADS:
        run(p, "upstream")
    for r in range(args.rounds):
        for p in PAYLOADS:
            order = p.variants[r % len(p.variants):] + p.variants[:r % len(p.variants)]
            for v in order:
                run(p, v)
        for v in VARIANTS:
            memory[v]["rounds"].append(rss_kb(envoys[v]["proc"].pid))
        for p in PAYLOADS:
            for v in p.diagnostics:
                run(p, v)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    return results, memory


def report(args, results, memory, load_before):
    version = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout.split("version:")[-1].strip()
    # The machine's busy time minus ours (proxy, upstream, wrk): the other engineers' load.
    others = statistics.mean((s["cpu"]["machine"] - sum(x for k, x in s["cpu"].items() if k != "machine")) / s["elapsed"]
                             for samples in results.values() for s in samples)
    load_after = os.getloadavg()
    lines = [f"Envoy {version}, --concurrency 1 (proxy and upstream); wrk -t1 -c{args.connections} -d{args.seconds}s, "
             f"{args.rounds} rounds, medians; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; other processes used "
             f"{others:.2f} cores on average during the runs.", "",
             "| payload | variant | req/s | p50 ms | p99 ms | (c)/(a) | (c)/(b) |", "|---|---|---:|---:|---:|---:|---:|"]
    for p in PAYLOADS:
        med = {v: {k: median(results[(p.name, v)], lambda s, k=k: s[k]) for k in ("rps", "p50", "p99")} for v in p.variants}
        for v in p.variants:
            ratios = " | "
            if v == "guard":
                ca = med["guard"]["rps"] / med["none"]["rps"]
                cb = f"{med['guard']['rps'] / med['floor']['rps']:.2f}" if "floor" in med else "—"
                ratios = f"{ca:.2f} | {cb}"
            m = med[v]
            lines.append(f"| {p.name} | {NAMES[v]} | {m['rps']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {ratios} |")

    lines += ["", "Is the upstream the bound? The upstream Envoy alone under the same wrk load, and the CPU each process used "
              "during the proxied runs (cores: CPU seconds per second of run; µs: CPU per request; medians):", "",
              "| payload | variant | req/s | proxy Envoy cores | upstream Envoy cores | wrk cores | proxy µs/req | upstream µs/req | wrk µs/req |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in PAYLOADS:
        for v in ("upstream", *p.variants):
            s = results[(p.name, v)]
            name = "upstream Envoy alone" if v == "upstream" else NAMES[v]
            proxy = ("—", "—") if v == "upstream" else (f"{median(s, lambda x: cores(x, 'proxy')):.2f}", f"{median(s, lambda x: per_request_us(x, 'proxy')):,.0f}")
            lines.append(f"| {p.name} | {name} | {median(s, lambda x: x['rps']):,.0f} | {proxy[0]} | {median(s, lambda x: cores(x, 'upstream')):.2f} | "
                         f"{median(s, lambda x: cores(x, 'wrk')):.2f} | {proxy[1]} | {median(s, lambda x: per_request_us(x, 'upstream')):,.0f} | "
                         f"{median(s, lambda x: per_request_us(x, 'wrk')):,.0f} |")

    lines += ["", "| variant | RSS idle (MiB) | RSS after each round (MiB) | after load / idle |", "|---|---:|---|---:|"]
    for v in VARIANTS:
        m = memory[v]
        rounds = ", ".join(f"{x / 1024:.1f}" for x in m["rounds"])
        lines.append(f"| {NAMES[v]} | {m['idle'] / 1024:.1f} | {rounds} | {m['rounds'][-1] / m['idle']:.2f} |")
    idle_ratio = memory["guard"]["idle"] / memory["none"]["idle"]
    lines += ["", f"spapi-guard idle RSS / no-filter idle RSS: {idle_ratio:.2f}"]

    # Where the time goes: per request, as throughput (1 / req/s) and as the proxy's own CPU.
    lines += ["", "Where the time goes (medians per request: wall µs = 1 / req/s; proxy CPU µs = the proxy Envoy's CPU time; "
              "extra = over the previous row):", "",
              "| payload | variant | wall µs | extra | proxy CPU µs | extra |", "|---|---|---:|---:|---:|---:|"]
    steps = [("none", "no filter"), ("noop", "no-op Wasm filter"), ("floor", "buffer-only Wasm"),
             ("guard-clear", "spapi-guard, every class clear (parse + validate)"),
             ("guard-redact", "spapi-guard, every class redacted (+ rewrite)"),
             ("guard-hash", "spapi-guard, every class hashed (+ HMAC-SHA256)"),
             ("guard-nodetect", "spapi-guard, default policy, drift detectors off (+ AES-GCM)"),
             ("guard", "spapi-guard, default policy (+ drift detectors, zero-match alarm)")]
    for p in PAYLOADS:
        previous = None
        for v, label in steps:
            if (p.name, v) not in results:
                continue
            s = results[(p.name, v)]
            now = (1e6 / median(s, lambda x: x["rps"]), median(s, lambda x: per_request_us(x, "proxy")))
            extra = ("", "") if previous is None else tuple(f"{a - b:+,.0f}" for a, b in zip(now, previous))
            lines.append(f"| {p.name} | {label} | {now[0]:,.0f} | {extra[0]} | {now[1]:,.0f} | {extra[1]} |")
            previous = now
    return "\n".join(lines)


if __name__ == "__main__":
    main()
