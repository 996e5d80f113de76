#!/usr/bin/env python3
"""make bench: the same mock upstream and the same Envoy binary in three variants, side by side,
on loopback, driven by wrk.

  (a) none   — no Wasm filter
  (b) floor  — benches/buffer-filter: buffers each response body and writes it back unchanged
  (c) guard  — spapi-guard with the default policy (its order-sync role)

All three run at --concurrency 1, at the same time on different ports; only one is under load at
a time. Rounds alternate the variants' order; medians are reported. Writes target/bench/results.md.

The default policy identifies callers by mTLS client certificate; wrk cannot present one, so the
benchmark policy adds a caller identified by a header that a header_mutation filter sets — the
stand-in for a trusted authentication filter (documented in BENCHMARKS.md).
"""
import argparse
import json
import os
import pathlib
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "bench"
ENVOY = os.environ.get("ENVOY_BIN", str(ROOT / ".venv" / "envoy-bin"))
GUARD_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "spapi_guard.wasm"
FLOOR_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "buffer_filter.wasm"
PAYLOADS = [
    ("no-PII operation (16 KB catalog page)", "/catalog/2022-04-01/items", "catalog-item.json"),
    ("1-order getOrder (1.4 KB)", "/orders/v0/orders/902-3159896-1390916", "getOrder-1.json"),
    ("100-order getOrders (176 KB, 2,500 PII values)", "/orders/v0/orders", "getOrders-100.json"),
    # The same, but a different page on each request (benches/pages.lua): no value was seen before.
    ("100-order getOrders, a new page each request", "/orders/v0/orders?page=0", "pages.lua"),
]
VARIANTS = ["none", "floor", "guard"]
# Diagnostics, to show where spapi-guard's time goes: the same filter with every PII class
# cleared (walk and validate only), redacted (rewrite, no crypto), hashed (rewrite + HMAC-SHA256),
# the default policy with the drift detectors and the zero-match alarm off (the rest of the drift
# safety net — customer objects, shapes — cannot be turned off); and a Wasm filter that does
# nothing (the cost of any Wasm filter per request).
DIAGNOSTICS = {"guard-clear": "clear", "guard-redact": "redact", "guard-hash": "hash", "guard-nodetect": "nodetect", "noop": None}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


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


def bench_policy(level=None):
    policy = json.loads((ROOT / "policies" / "default.json").read_text())
    if level == "nodetect":
        policy["drift"] = {"detectors": {d: "off" for d in ("email", "phone", "address", "name")}, "zeroMatchAlarm": False}
    elif level:
        policy["roles"]["order-sync"]["pii"] = {"*": level}
    access = policy["access"]
    access["allowPlaintext"] = True
    access["identity"]["sources"] = ["uri_san", "header"]
    policy["callers"].append({"id": "bench-client", "source": "header", "roles": ["order-sync"]})
    # The benchmark sends far more PII than the demo limit allows in a minute.
    policy["roles"]["order-sync"].pop("maxPiiFieldsPerWindow", None)
    return policy


def start(variant, mock_port, procs):
    listen, admin = free_port(), free_port()
    policy_file = OUT / f"policy-{variant}.json"
    policy_file.write_text(json.dumps(bench_policy(DIAGNOSTICS.get(variant))))
    config = OUT / f"envoy-{variant}.yaml"
    kind = "guard" if variant.startswith("guard") else variant
    cmd = [sys.executable, str(ROOT / "scripts" / "render-envoy-config.py"), "--policy", str(policy_file), "--out", str(config),
           "--listen-port", str(listen), "--admin-port", str(admin), "--upstream-port", str(mock_port),
           "--wasm", str(GUARD_WASM if kind == "guard" else FLOOR_WASM), "--tls-dir", str(OUT / "tls"),
           "--variant", kind, "--trusted-identity", "bench-client"]
    subprocess.run(cmd, check=True)
    env = dict(os.environ, SPAPI_GUARD_KEY_DEMO_1=KEY)
    log = open(OUT / f"{variant}.log", "w")
    proc = subprocess.Popen([ENVOY, "-c", str(config), "--concurrency", "1", "--log-level", "warn", "--disable-hot-restart"],
                            stdout=subprocess.DEVNULL, stderr=log, env=env)
    procs.append(proc)
    wait_ready(admin, proc, variant)
    return {"port": listen, "admin": admin, "proc": proc}


def wrk(port, path, seconds, connections, payload=None):
    script = ["-s", str(ROOT / "benches" / payload)] if payload and payload.endswith(".lua") else []
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *script, f"http://127.0.0.1:{port}{path}"],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} error responses on {path}:\n{out}")
    return rps, to_ms(lat["50"]), to_ms(lat["99"])


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def check_guard_works(port):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/orders/v0/orders/902-3159896-1390916")
    body = urllib.request.urlopen(req, timeout=5).read().decode()
    if "spgt1." not in body:
        raise SystemExit("the spapi-guard variant did not tokenize: the benchmark would measure nothing")


KEY = None


def main():
    global KEY
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=4)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    import base64
    import secrets
    KEY = base64.b64encode(secrets.token_bytes(32)).decode()
    subprocess.run(["bash", str(ROOT / "scripts" / "gen-certs.sh"), str(OUT / "tls")], check=True, stdout=subprocess.DEVNULL)
    fixtures = OUT / "fixtures"
    subprocess.run([sys.executable, str(ROOT / "benches" / "gen_payloads.py"), str(fixtures)], check=True, stdout=subprocess.DEVNULL)

    procs = []
    try:
        mock_port = free_port()
        mock = subprocess.Popen([sys.executable, str(ROOT / "tests" / "mock_spapi.py"), "--port", str(mock_port), str(fixtures)],
                                stdout=subprocess.DEVNULL)
        procs.append(mock)
        time.sleep(0.5)
        envoys = {v: start(v, mock_port, procs) for v in VARIANTS + list(DIAGNOSTICS)}
        check_guard_works(envoys["guard"]["port"])
        time.sleep(1)
        memory = {v: {"idle": rss_kb(e["proc"].pid), "rounds": []} for v, e in envoys.items()}
        results = {(p[0], v): [] for p in PAYLOADS for v in VARIANTS}
        for payload in PAYLOADS:  # warm-up: JIT, connection pools, first allocations
            for v in VARIANTS:
                wrk(envoys[v]["port"], payload[1], 1, args.connections, payload[2])
        for r in range(args.rounds):
            order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
            for name, path, payload in PAYLOADS:
                for v in order:
                    results[(name, v)].append(wrk(envoys[v]["port"], path, args.seconds, args.connections, payload))
            for v in VARIANTS:
                memory[v]["rounds"].append(rss_kb(envoys[v]["proc"].pid))
            for v in DIAGNOSTICS:
                for name, path, payload in (PAYLOADS[:3] if v == "noop" else PAYLOADS[2:]):
                    results.setdefault((name, v), []).append(wrk(envoys[v]["port"], path, args.seconds, args.connections, payload))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()

    lines = [f"Envoy {subprocess.run([ENVOY, '--version'], capture_output=True, text=True).stdout.split('version:')[-1].strip()}, "
             f"--concurrency 1; wrk -t1 -c{args.connections} -d{args.seconds}s, {args.rounds} rounds, medians; "
             f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| payload | variant | req/s | p50 ms | p99 ms | (c)/(a) | (c)/(b) |", "|---|---|---:|---:|---:|---:|---:|"]
    names = {"none": "(a) no filter", "floor": "(b) buffer-only Wasm", "guard": "(c) spapi-guard"}
    summary = {}
    for name, _, _ in PAYLOADS:
        med = {v: tuple(statistics.median(x[i] for x in results[(name, v)]) for i in range(3)) for v in VARIANTS}
        ca, cb = med["guard"][0] / med["none"][0], med["guard"][0] / med["floor"][0]
        summary[name] = (ca, cb)
        for v in VARIANTS:
            rps, p50, p99 = med[v]
            ratio = f"{ca:.2f} | {cb:.2f}" if v == "guard" else " | "
            lines.append(f"| {name} | {names[v]} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {ratio} |")
    lines += ["", "| variant | RSS idle (MiB) | RSS after each round (MiB) | after load / idle |", "|---|---:|---|---:|"]
    for v in VARIANTS:
        m = memory[v]
        rounds = ", ".join(f"{x / 1024:.1f}" for x in m["rounds"])
        lines.append(f"| {names[v]} | {m['idle'] / 1024:.1f} | {rounds} | {m['rounds'][-1] / m['idle']:.2f} |")
    idle_ratio = memory["guard"]["idle"] / memory["none"]["idle"]
    lines += ["", f"spapi-guard idle RSS / no-filter idle RSS: {idle_ratio:.2f}"]
    # Where the time goes: per-request cost over the no-filter variant, in microseconds.
    lines += ["", "Where the time goes (median per-request time, µs; extra = over the previous row):", "",
              "| payload | variant | µs per request | extra µs |", "|---|---|---:|---:|"]
    steps = [("none", "no filter"), ("noop", "no-op Wasm filter"), ("floor", "buffer-only Wasm"),
             ("guard-clear", "spapi-guard, every class clear (parse + validate)"),
             ("guard-redact", "spapi-guard, every class redacted (+ rewrite)"),
             ("guard-hash", "spapi-guard, every class hashed (+ HMAC-SHA256)"),
             ("guard-nodetect", "spapi-guard, default policy, drift detectors off (+ AES-GCM)"),
             ("guard", "spapi-guard, default policy (+ drift detectors, zero-match alarm)")]
    for name, _, _ in PAYLOADS:
        previous = None
        for v, label in steps:
            if (name, v) not in results:
                continue
            us = 1e6 / statistics.median(x[0] for x in results[(name, v)])
            extra = "" if previous is None else f"{us - previous:+,.0f}"
            lines.append(f"| {name} | {label} | {us:,.0f} | {extra} |")
            previous = us
    table = "\n".join(lines)
    (OUT / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
