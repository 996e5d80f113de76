#!/usr/bin/env python3
"""Runs scripts/lint-envoy.py over every Envoy config this repo ships or tests with (they must
pass) and over deliberately broken copies (each must fail with the check it breaks, and say how to
fix it). Run by `make lint-envoy` (part of `make test`)."""
import base64
import copy
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
RENDER = ROOT / "scripts" / "render-envoy-config.py"
LINT = ROOT / "scripts" / "lint-envoy.py"
results = {"passed": 0, "failed": 0}
TEST_TRUST_STORE = "/nonexistent/amazon-ca.crt"  # replaced by a real file where Envoy runs it


def report(ok, what, detail=""):
    results["passed" if ok else "failed"] += 1
    if not ok:
        print(f"FAIL {what}\n{detail}")
    return ok


def lint(path):
    p = subprocess.run([sys.executable, str(LINT), str(path)], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def render(out, *args, policy=None):
    cmd = [sys.executable, str(RENDER), "--out", str(out), *args]
    if policy is not None:
        pol = out.with_suffix(".policy.json")
        pol.write_text(json.dumps(policy))
        cmd += ["--policy", str(pol)]
    subprocess.run(cmd, check=True)
    return out


def load(path):
    return yaml.safe_load(pathlib.Path(path).read_text())


def listener(doc):
    return doc["static_resources"]["listeners"][0]


def hcm(doc, chain=0):
    return listener(doc)["filter_chains"][chain]["filters"][0]["typed_config"]


def wasm(doc, chain=0):
    return next(f for f in hcm(doc, chain)["http_filters"] if f["name"] == "envoy.filters.http.wasm")["typed_config"]["config"]


def set_policy(doc, change):
    for chain in range(len(listener(doc)["filter_chains"])):
        cfg = wasm(doc, chain)
        policy = json.loads(cfg["configuration"]["value"])
        change(policy)
        cfg["configuration"]["value"] = json.dumps(policy)


def na_tls(doc):
    cluster = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "spapi-na")
    return cluster["transport_socket"]["typed_config"]


def config_dump(tmp, rendering):
    """A running Envoy's admin /config_dump (what an Istio user lints) passes like its bootstrap."""
    envoy = pathlib.Path(os.environ.get("ENVOY_BIN") or ROOT / ".venv" / "envoy-bin")
    wasm = pathlib.Path(os.environ.get("SPAPI_GUARD_WASM") or ROOT / "target" / "wasm32-wasip1" / "release" / "spapi_guard.wasm")
    if not envoy.exists() or not wasm.exists():
        print("note: no Envoy or no built module: the /config_dump check is skipped")
        return
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    admin = sock.getsockname()[1]
    sock.close()
    doc = load(rendering)
    doc["admin"]["address"]["socket_address"]["port_value"] = admin
    listener(doc)["address"]["socket_address"]["port_value"] = 0
    cfg = wasm_of_all(doc)
    for c in cfg:
        c["vm_config"]["code"]["local"]["filename"] = str(wasm)
    certs = tmp / "tls"
    subprocess.run(["bash", str(ROOT / "scripts" / "gen-certs.sh"), str(certs)], check=True, stdout=subprocess.DEVNULL)
    text = yaml.safe_dump(doc).replace(str(ROOT / ".run" / "demo" / "tls"), str(certs)).replace(TEST_TRUST_STORE, str(certs / "ca.crt"))
    path = tmp / "running.yaml"
    path.write_text(text)
    policy_keys = json.loads(cfg[0]["configuration"]["value"])["keys"]
    names = {e["env"] for e in policy_keys["ring"]} if "ring" in policy_keys else set(policy_keys["env"].values())
    keys = {v: base64.b64encode(os.urandom(32)).decode() for v in names}
    proc = subprocess.Popen([str(envoy), "-c", str(path), "--disable-hot-restart", "--log-level", "error", "--concurrency", "1"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "envoy.log", "w"), env={**os.environ, **keys})
    try:
        dump = None
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            try:
                dump = urllib.request.urlopen(f"http://127.0.0.1:{admin}/config_dump", timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        if not report(dump is not None, "a running Envoy serves its /config_dump", (tmp / "envoy.log").read_text()[-3000:]):
            return
        (tmp / "dump.json").write_bytes(dump)
        code, out = lint(tmp / "dump.json")
        report(code == 0 and "0 failed" in out, "lint-envoy passes a running Envoy's /config_dump", out)
        broken = json.loads(dump)
        for section in broken["configs"]:
            for entry in section.get("dynamic_active_clusters", []) + section.get("static_clusters", []):
                entry["cluster"].pop("transport_socket", None)
        for section in broken["configs"]:
            for c in (section.get("bootstrap") or {}).get("static_resources", {}).get("clusters", []):
                c.pop("transport_socket", None)
        (tmp / "broken-dump.json").write_text(json.dumps(broken))
        code, out = lint(tmp / "broken-dump.json")
        report(code == 1 and "FAIL upstream-tls:" in out, "lint-envoy fails a /config_dump whose SP-API clusters lost TLS", out)
    finally:
        proc.kill()
        proc.wait()


def wasm_of_all(doc):
    return [next(f for f in c["filters"][0]["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.wasm")["typed_config"]["config"]
            for c in listener(doc)["filter_chains"]]


def main():
    with tempfile.TemporaryDirectory(prefix="lint-envoy-") as d:
        return run(pathlib.Path(d))


def run(tmp):
    policy = json.loads((ROOT / "policies" / "default.json").read_text())
    header_policy = copy.deepcopy(policy)
    header_policy["access"]["identity"]["sources"] = ["header"]
    hops_policy = copy.deepcopy(policy)
    hops_policy["access"]["xffTrustedHops"] = 2

    # Every config the repo ships, and the renderings the tests and the demo use.
    good = {
        "envoy/envoy.yaml (docker-compose, demo)": ROOT / "envoy" / "envoy.yaml",
        "envoy/envoy.production.yaml (docker-compose, production)": ROOT / "envoy" / "envoy.production.yaml",
        "demo/test rendering": render(tmp / "demo.yaml"),
        "test rendering, HTTP/2 upstream": render(tmp / "h2.yaml", "--upstream-protocol", "h2"),
        "test rendering, trailers": render(tmp / "trailers.yaml", "--upstream-protocol", "h1-trailers"),
        "test rendering, header identities": render(tmp / "header.yaml", policy=header_policy),
        "test rendering, 2 trusted hops": render(tmp / "hops.yaml", policy=hops_policy),
        "production test rendering (fake Amazon)": render(tmp / "prod-test.yaml", "--profile", "production", "--trust-store",
                                                         TEST_TRUST_STORE, "--upstream-override", "127.0.0.1:18443"),
    }
    for what, path in good.items():
        code, out = lint(path)
        report(code == 0, f"{what} passes lint-envoy", out)

    demo, prod = load(good["demo/test rendering"]), load(good["envoy/envoy.production.yaml (docker-compose, production)"])
    header = load(good["test rendering, header identities"])

    def broken(base, change):
        doc = copy.deepcopy(base)
        # The template's chains share their filters through a YAML anchor: break one at a time.
        for chain in listener(doc)["filter_chains"]:
            chain["filters"] = copy.deepcopy(chain["filters"])
        change(doc)
        return doc

    def add_log(fmt):
        def change(doc):
            for chain in range(2):
                hcm(doc, chain)["access_log"][0]["typed_config"]["log_format"] = {"text_format_source": {"inline_string": fmt}}
        return change

    def pop_filter(doc, chain, pred):
        filters = hcm(doc, chain)["http_filters"]
        filters.pop(next(i for i, f in enumerate(filters) if pred(f)))

    def is_wasm(f):
        return f["name"] == "envoy.filters.http.wasm"

    def strips_identity(f):
        return "x-spapi-guard-caller" in json.dumps(f)

    jwt = {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication", "providers": {}}}
    cases = [
        ("failure_policy FAIL_OPEN", demo, lambda d: wasm(d).update(failure_policy="FAIL_OPEN"), "wasm-failure-policy"),
        ("no failure_policy (FAIL_CLOSED)", demo, lambda d: wasm(d).pop("failure_policy"), "wasm-failure-policy"),
        ("no allow_on_headers_stop_iteration", demo, lambda d: wasm(d).pop("allow_on_headers_stop_iteration"), "wasm-stop-iteration"),
        ("a key variable missing from host_env_keys", demo,
         lambda d: wasm(d)["vm_config"]["environment_variables"].update(host_env_keys=[]), "wasm-env-keys"),
        ("Envoy's default 1 MiB buffer limit", demo, lambda d: listener(d).pop("per_connection_buffer_limit_bytes"), "buffer-limit"),
        ("maxBodyBytes that cannot grow 3x", demo,
         lambda d: set_policy(d, lambda p: p.update(maxBodyBytes=16 * 1024 * 1024)), "buffer-limit"),
        ("listener limit below the policy's bufferLimitBytes", demo,
         lambda d: listener(d).update(per_connection_buffer_limit_bytes=16 * 1024 * 1024), "buffer-limit"),
        ("normalize_path false", demo, lambda d: hcm(d).update(normalize_path=False), "path-normalization"),
        ("no merge_slashes", demo, lambda d: hcm(d).pop("merge_slashes"), "path-normalization"),
        ("escaped slashes kept", demo, lambda d: hcm(d).update(path_with_escaped_slashes_action="KEEP_UNCHANGED"), "path-normalization"),
        ("use_remote_address false", demo, lambda d: hcm(d).update(use_remote_address=False), "client-address"),
        ("trusted hops not the policy's", demo, lambda d: hcm(d).update(xff_num_trusted_hops=1), "client-address"),
        ("access log prints %REQ(:PATH)%", demo, add_log("%FILTER_STATE(wasm.spapi_guard.audit:PLAIN)% %REQ(:PATH)%\n"), "access-log"),
        ("access log prints the original path", demo, add_log("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\n"), "access-log"),
        ("access log prints the LWA token header", demo, add_log("%REQ(x-amz-access-token)%\n"), "access-log"),
        ("access log prints %PATH%", demo, add_log("%PATH(WQ)%\n"), "access-log"),
        ("access log prints the query through CEL", demo, add_log("%CEL(request.query)%\n"), "access-log"),
        ("access log with Envoy's default format", demo,
         lambda d: hcm(d)["access_log"][1]["typed_config"].pop("log_format"), "access-log"),
        ("gRPC access log", demo, lambda d: hcm(d)["access_log"].append({"name": "envoy.access_loggers.http_grpc", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"}}), "access-log"),
        ("jwt_authn after spapi-guard", demo, lambda d: hcm(d)["http_filters"].insert(-1, jwt), "filter-order"),
        ("header identities without removing the client's copy", header,
         lambda d: pop_filter(d, 0, strips_identity), "filter-order"),
        ("a plaintext chain without the filter", demo, lambda d: pop_filter(d, 1, is_wasm), "filter-order"),
        ("filter disabled on a route", demo, lambda d: hcm(d)["route_config"]["virtual_hosts"][0]["routes"][0].update(
            typed_per_filter_config={"envoy.filters.http.wasm": {
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}}), "filter-order"),
        ("a route matching an exact path", demo, lambda d: hcm(d)["route_config"]["virtual_hosts"][0]["routes"].insert(0, {
            "match": {"path": "/upstreams/carrier/v1/tracking/Zanzibar"}, "route": {"cluster": "spapi"}}), "route-match"),
        ("a route matching a regex", demo, lambda d: hcm(d)["route_config"]["virtual_hosts"][0]["routes"].insert(0, {
            "match": {"safe_regex": {"regex": "/orders/.*/address"}}, "route": {"cluster": "spapi"}}), "route-match"),
        ("a route matching a query parameter", demo, lambda d: hcm(d)["route_config"]["virtual_hosts"][0]["routes"].insert(0, {
            "match": {"prefix": "/", "query_parameters": [{"name": "BuyerEmail", "present_match": True}]}, "route": {"cluster": "spapi"}}),
         "route-match"),
        ("no spapi-guard filter at all", demo, lambda d: [pop_filter(d, c, is_wasm) for c in range(2)], "wasm-present"),
        ("demo cluster sent to a remote address in plaintext", demo,
         lambda d: next(c for c in d["static_resources"]["clusters"] if c["name"] == "spapi")["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
             "address"]["socket_address"].update(address="10.0.0.8"), "upstream-tls"),
        ("SP-API cluster without TLS", prod,
         lambda d: next(c for c in d["static_resources"]["clusters"] if c["name"] == "spapi-na").pop("transport_socket"), "upstream-tls"),
        ("SP-API cluster allowing TLS 1.1", prod,
         lambda d: na_tls(d)["common_tls_context"]["tls_params"].update(tls_minimum_protocol_version="TLSv1_1"), "upstream-tls"),
        ("SP-API cluster without a SAN match", prod,
         lambda d: na_tls(d)["common_tls_context"]["validation_context"].pop("match_typed_subject_alt_names"), "upstream-tls"),
        ("SP-API cluster without a trust store", prod,
         lambda d: na_tls(d)["common_tls_context"].pop("validation_context"), "upstream-tls"),
        ("SP-API cluster accepting untrusted chains", prod,
         lambda d: na_tls(d)["common_tls_context"]["validation_context"].update(trust_chain_verification="ACCEPT_UNTRUSTED"),
         "upstream-tls"),
        ("SP-API cluster without SNI", prod, lambda d: na_tls(d).pop("sni"), "upstream-tls"),
        ("documents forward proxy without SAN validation", prod,
         lambda d: next(c for c in d["static_resources"]["clusters"] if c["name"] == "documents")["typed_extension_protocol_options"][
             "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["upstream_http_protocol_options"].pop("auto_san_validation"),
         "upstream-tls"),
        ("documents forward proxy reading 1 MiB of gzip at a time", prod,
         lambda d: next(c for c in d["static_resources"]["clusters"] if c["name"] == "documents").pop("per_connection_buffer_limit_bytes"),
         "document-buffer"),
    ]
    for i, (what, base, change, check_id) in enumerate(cases):
        path = tmp / f"broken-{i}.yaml"
        path.write_text(yaml.safe_dump(broken(base, change)))
        code, out = lint(path)
        named = f"FAIL {check_id}:" in out and "fix:" in out
        report(code == 1 and named, f"broken copy '{what}' fails {check_id} with a fix", out)
    config_dump(tmp, good["production test rendering (fake Amazon)"])
    print(f"lint-envoy checks: {results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
