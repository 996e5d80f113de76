#!/usr/bin/env python3
"""Checks that docker-compose.yml agrees with the Envoy config and policy the tests use:
the rendered envoy/envoy.yaml is up to date (checked by `make check-config` before this), the
files compose mounts are the ones the config names, the key variables compose passes are the
policy's, and the mock listens where the config's upstream points. Likewise for the production
profile (service envoy-production, envoy/envoy.production.yaml): its own mounts and keys, no mock,
and every upstream an SP-API endpoint over verified TLS with the image's system trust store."""
import importlib.util
import json
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("render", ROOT / "scripts" / "render-envoy-config.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)
compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
envoy = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())
policy = json.loads((ROOT / "policies" / "default.json").read_text())
failures = []
checks = 0


def check(ok, what):
    global checks
    checks += 1
    if not ok:
        failures.append(what)


listener = envoy["static_resources"]["listeners"][0]
hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
wasm = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")["typed_config"]["config"]
cluster = next(c for c in envoy["static_resources"]["clusters"] if c["name"] == "spapi")
upstream = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]

svc = compose["services"]["envoy"]
mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
check(mounts.get("/etc/envoy/envoy.yaml") == "./envoy/envoy.yaml", "compose mounts envoy/envoy.yaml")
check("/etc/envoy/envoy.yaml" in svc["command"], "compose starts Envoy with the mounted config")
check(mounts.get(wasm["vm_config"]["code"]["local"]["filename"]) == "./target/wasm32-wasip1/release/spapi_guard.wasm",
      "the wasm path in envoy.yaml is the file compose mounts")
check(json.loads(wasm["configuration"]["value"]) == policy, "envoy.yaml embeds policies/default.json")
tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
tls_dir = pathlib.PurePosixPath(tls["validation_context"]["trusted_ca"]["filename"]).parent
check(mounts.get(str(tls_dir)) == "./.run/demo/tls", "compose mounts the certificates where envoy.yaml reads them")
check(tls["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_2", "TLS 1.2 or later")
env_keys = set(render.key_variables(policy))
check(set(wasm["vm_config"]["environment_variables"]["host_env_keys"]) == env_keys, "host_env_keys are the policy's key variables")
check(set(svc.get("environment", {})) == env_keys, "compose passes exactly the policy's key variables")
check(f'{listener["address"]["socket_address"]["port_value"]}:{listener["address"]["socket_address"]["port_value"]}' in svc["ports"],
      "compose publishes the listener port")
mock = compose["services"]["spapi-mock"]
check(mock.get("network_mode") == "service:envoy" and upstream["address"] == "127.0.0.1", "the mock shares Envoy's loopback")
check(str(upstream["port_value"]) in mock["command"], "the mock listens on the config's upstream port")
check(wasm.get("failure_policy") == "FAIL_RELOAD", "failure_policy FAIL_RELOAD")
check(listener["per_connection_buffer_limit_bytes"] == policy.get("bufferLimitBytes", 32 * 1024 * 1024),
      "the listener's buffer limit is the policy's bufferLimitBytes (the filter sizes rewrites by it)")
check(listener["per_connection_buffer_limit_bytes"] >= 3 * policy.get("maxBodyBytes", 8 * 1024 * 1024),
      "maxBodyBytes can grow 3x within the buffer limit")

# The production profile.
prod = yaml.safe_load((ROOT / "envoy" / "envoy.production.yaml").read_text())
psvc = compose["services"].get("envoy-production") or {}
check(psvc.get("profiles") == ["production"], "envoy-production runs only with --profile production")
pmounts = {v.split(":")[1]: v.split(":")[0] for v in psvc.get("volumes", [])}
check(pmounts.get("/etc/envoy/envoy.yaml") == "./envoy/envoy.production.yaml", "envoy-production mounts envoy/envoy.production.yaml")
check("/etc/envoy/envoy.yaml" in psvc.get("command", []), "envoy-production starts Envoy with the mounted config")
plistener = prod["static_resources"]["listeners"][0]
phcm = plistener["filter_chains"][0]["filters"][0]["typed_config"]
pwasm = next(f for f in phcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")["typed_config"]["config"]
check(pmounts.get(pwasm["vm_config"]["code"]["local"]["filename"]) == "./target/wasm32-wasip1/release/spapi_guard.wasm",
      "the wasm path in envoy.production.yaml is the file compose mounts")
check(json.loads(pwasm["configuration"]["value"]) == policy, "envoy.production.yaml embeds policies/default.json")
ptls = plistener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
check(pmounts.get(str(pathlib.PurePosixPath(ptls["validation_context"]["trusted_ca"]["filename"]).parent)) == "./.run/demo/tls",
      "envoy-production mounts the listener certificates where the config reads them")
check(set(psvc.get("environment", {})) == env_keys, "envoy-production passes exactly the policy's key variables")
check(any(port.endswith(f":{plistener['address']['socket_address']['port_value']}") for port in psvc.get("ports", [])),
      "envoy-production publishes the listener port")
check(not set(p.split(":")[-2] if p.count(":") == 2 else p.split(":")[0] for p in psvc.get("ports", []))
      & set(p.split(":")[-2] if p.count(":") == 2 else p.split(":")[0] for p in svc["ports"]),
      "the demo and production services publish different host ports")
check("network_mode" not in psvc and "depends_on" not in psvc, "envoy-production needs no mock")
clusters = [c for c in prod["static_resources"]["clusters"] if c["name"] != "documents"]
check(len(clusters) == 6, "six SP-API clusters (NA, EU, FE and their sandboxes)")
for c in clusters:
    ts = c["transport_socket"]["typed_config"]
    vc = ts["common_tls_context"]["validation_context"]
    host = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["hostname"]
    check(host.endswith(".amazon.com") and ts["sni"] == host
          and vc["match_typed_subject_alt_names"] == [{"san_type": "DNS", "matcher": {"exact": host}}],
          f"{c['name']}: TLS with SNI and SAN {host}")
    check(vc["trusted_ca"]["filename"] == "/etc/ssl/certs/ca-certificates.crt", f"{c['name']}: the image's system trust store")
    check(ts["common_tls_context"]["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_2", f"{c['name']}: TLS 1.2 or later")
check(plistener["per_connection_buffer_limit_bytes"] == listener["per_connection_buffer_limit_bytes"], "same buffer limit in both profiles")

# Report documents, both profiles: a dynamic forward proxy to the policy's document hosts only,
# verified TLS, and a route header only the filter can set.
for name, config, h in (("envoy.yaml", envoy, hcm), ("envoy.production.yaml", prod, phcm)):
    docs = next((c for c in config["static_resources"]["clusters"] if c["name"] == "documents"), None)
    check(docs is not None and docs["cluster_type"]["name"] == "envoy.clusters.dynamic_forward_proxy", f"{name}: a documents DFP cluster")
    if docs is None:
        continue
    options = docs["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["upstream_http_protocol_options"]
    check(options == {"auto_sni": True, "auto_san_validation": True}, f"{name}: documents: SNI and SAN from the document host's name")
    dctx = docs["transport_socket"]["typed_config"]["common_tls_context"]
    check(dctx["validation_context"]["trusted_ca"]["filename"] == "/etc/ssl/certs/ca-certificates.crt", f"{name}: documents: the system trust store")
    check(dctx["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_2", f"{name}: documents: TLS 1.2 or later")
    vhost = next(v for v in h["route_config"]["virtual_hosts"] if v["name"] == "documents")
    check(vhost["domains"] == render.document_domains(policy), f"{name}: the documents domains are the policy's documents.hosts")
    check(vhost["routes"][0]["match"]["headers"][0]["name"] == "x-spapi-guard-document-route" and "direct_response" in vhost["routes"][-1],
          f"{name}: documents are routed only with the filter's route header")
    names = [f["name"] for f in h["http_filters"]]
    first = h["http_filters"][0]["typed_config"]["mutations"]["request_mutations"]
    check(names[0] == "envoy.filters.http.header_mutation" and {"remove": "x-spapi-guard-document-route"} in first,
          f"{name}: a client's route header is removed before the filter")
    check(names.index("envoy.filters.http.wasm") < names.index("envoy.filters.http.dynamic_forward_proxy") < names.index("envoy.filters.http.router"),
          f"{name}: the forward proxy resolves after the filter chose the route")

for f in failures:
    print("docker-compose check failed:", f)
print(f"docker-compose checks: {checks - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
