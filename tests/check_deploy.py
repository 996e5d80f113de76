#!/usr/bin/env python3
"""Checks the manifests under deploy/ (scripts/gen-deploy.py):

1. up to date: regenerated from the policy and the template, byte for byte;
2. schema-valid: Istio kinds against Istio's published CRD schemas (deploy/istio/schemas/,
   vendored from istio/api), core Kubernetes kinds against the Kubernetes OpenAPI schemas that the
   PyPI package kubernetes-validate bundles; both strictly (an unknown field is an error). The CEL
   rules of the CRDs (x-kubernetes-validations) are not evaluated;
3. what the filter's safety rests on: FAIL_RELOAD, allow_on_headers_stop_iteration, the policy in
   the plugin config, keys from the Secret, buffer limit, path normalisation, trusted hops, no
   retried POSTs, TLS origination with SNI and SAN;
4. Envoy accepts the EnvoyFilter's Envoy config: the patches applied in order to the production
   profile without its report-document pieces (Istio's gateway has none of them), the way Istio applies them (with the module as a local file, as istio-agent does) make a config
   that `envoy --mode validate` loads and scripts/lint-envoy.py passes; the ConfigMap's envoy.yaml
   likewise.

Usage: check_deploy.py [WASM]   (without a built module, step 4 is skipped and says so)"""
import base64
import copy
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SCHEMAS = DEPLOY / "istio" / "schemas"
K8S_VERSION = "1.33.0"  # image volumes (beta) are in the API from here
results = {"passed": 0, "failed": 0}
sys.path.insert(0, str(ROOT / "scripts"))


def check(ok, what, detail=""):
    results["passed" if ok else "failed"] += 1
    if not ok:
        print(f"FAIL {what}" + (f"\n{detail}" if detail else ""))
    return ok


def strict(schema):
    """additionalProperties: false wherever the schema lists properties and does not keep unknown fields."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        for v in schema.values():
            strict(v)
    elif isinstance(schema, list):
        for v in schema:
            strict(v)
    return schema


def istio_schemas():
    out = {}
    for path in SCHEMAS.glob("*.json"):
        s = json.loads(path.read_text())
        out[(f"{s['group']}/{s['version']}", s["kind"])] = strict(copy.deepcopy(s["openAPIV3Schema"]))
    return out


def manifests():
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                yield path.relative_to(ROOT), i, doc


def validate_schemas():
    schemas = istio_schemas()
    kinds = set()
    for path, i, doc in manifests():
        where = f"{path} #{i} {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        key = (doc.get("apiVersion"), doc.get("kind"))
        kinds.add(key)
        if key[0].split("/")[0].endswith("istio.io"):
            schema = schemas.get(key)
            if not check(schema is not None, f"{where}: Istio schema for {key} is vendored"):
                continue
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(body), key=lambda e: list(e.path))
            check(not errors, f"{where}: valid against Istio's CRD schema",
                  "\n".join(f"  {'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10]))
        else:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                check(True, where)
            except kubernetes_validate.ValidationError as e:
                check(False, f"{where}: valid against the Kubernetes {K8S_VERSION} schema", str(e))
    # The validators bite: a misspelt enum, an unknown field, a wrong type are each refused.
    wp = load("istio/wasmplugin/wasmplugin.yaml")[0]
    for change, what in ((lambda s: s.update(failStrategy="FAIL_RELAOD"), "a misspelt failStrategy"),
                         (lambda s: s.update(allowOnHeadersStopIteration=True), "a field WasmPlugin does not have"),
                         (lambda s: s.update(priority="high"), "a string priority")):
        bad = copy.deepcopy(wp)
        change(bad["spec"])
        errors = list(jsonschema.Draft7Validator(schemas[("extensions.istio.io/v1alpha1", "WasmPlugin")]).iter_errors({"spec": bad["spec"]}))
        check(bool(errors), f"the Istio schema check refuses {what}")
    dep = copy.deepcopy(next(d for d in load("kubernetes/spapi-guard.yaml") if d["kind"] == "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFS"] = True
    try:
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
        check(False, "the Kubernetes schema check refuses an unknown container field")
    except kubernetes_validate.ValidationError:
        check(True, "the Kubernetes schema check refuses an unknown container field")
    return kinds


def load(rel):
    return [d for d in yaml.safe_load_all((DEPLOY / rel).read_text()) if d]


def key_variables(policy):
    """The key variables the policy names: keys.ring[].env, or the short form's keys.env values."""
    keys = policy.get("keys") or {}
    if "ring" in keys:
        return sorted({entry.get("env") for entry in keys["ring"] if entry.get("env")})
    return sorted(set((keys.get("env") or {}).values()))


def semantics(policy):
    keys = key_variables(policy)
    limit = policy.get("bufferLimitBytes", 32 * 1024 * 1024)
    hops = policy.get("access", {}).get("xffTrustedHops", 0)
    # The gateway runs the policy with spapiClusters naming its outbound clusters of the
    # ServiceEntry's hosts (Istio's outbound|<port>||<host>), unless the policy names its own.
    entry = next(d for d in load("istio/traffic.yaml") if d["kind"] == "ServiceEntry")["spec"]
    port = entry["ports"][0]["number"]
    istio_policy = policy if "spapiClusters" in policy else {**policy, "spapiClusters": [f"outbound|{port}||{h}" for h in entry["hosts"]]}
    # WasmPlugin
    wp = load("istio/wasmplugin/wasmplugin.yaml")[0]["spec"]
    check(wp["failStrategy"] == "FAIL_RELOAD", "WasmPlugin failStrategy FAIL_RELOAD")
    check(wp["phase"] == "AUTHZ", "WasmPlugin phase AUTHZ: after Istio's authentication filters")
    check(wp["pluginConfig"] == istio_policy, "WasmPlugin pluginConfig is the policy (with the gateway's SP-API clusters)")
    check(wp["pluginName"] == "spapi-guard", "WasmPlugin root id spapi-guard")
    check(wp["vmConfig"]["env"] == [{"name": k, "valueFrom": "HOST"} for k in keys], "WasmPlugin keys from the gateway's environment")
    # EnvoyFilter
    ef = load("istio/envoyfilter.yaml")[0]["spec"]
    patches = {p["applyTo"]: p for p in ef["configPatches"]}
    ext = patches["EXTENSION_CONFIG"]["patch"]["value"]
    http_filters = [p for p in ef["configPatches"] if p["applyTo"] == "HTTP_FILTER"]
    patches["HTTP_FILTER"] = next(p for p in http_filters if p["patch"]["value"]["name"] == ext["name"])
    cfg = ext["typed_config"]["config"]
    check(cfg["failure_policy"] == "FAIL_RELOAD" and cfg["allow_on_headers_stop_iteration"] is True,
          "EnvoyFilter filter: FAIL_RELOAD and allow_on_headers_stop_iteration")
    check(json.loads(cfg["configuration"]["value"]) == istio_policy, "EnvoyFilter filter configuration is the policy (with the gateway's SP-API clusters)")
    check(cfg["vm_config"]["environment_variables"]["host_env_keys"] == keys, "EnvoyFilter filter host_env_keys are the policy's")
    check(cfg["vm_config"]["code"]["remote"]["http_uri"]["uri"].startswith("oci://"), "EnvoyFilter filter module from the OCI image")
    check(patches["HTTP_FILTER"]["patch"]["value"]["name"] == ext["name"], "the HTTP filter refers to the ECDS config by name")
    check(patches["HTTP_FILTER"]["patch"]["operation"] == "INSERT_BEFORE"
          and patches["HTTP_FILTER"]["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == "envoy.filters.http.router",
          "the filter sits just before the router (after authentication and authorization)")
    check(patches["LISTENER"]["patch"]["value"]["per_connection_buffer_limit_bytes"] == limit, "listener buffer limit = bufferLimitBytes")
    # Report documents: the client's route header removed first, the dynamic forward proxy filter
    # after spapi-guard, the documents virtual host and cluster as the template has them.
    order = [(p["patch"]["operation"], p["patch"]["value"]["name"]) for p in http_filters]
    check(order == [("INSERT_BEFORE", ext["name"]), ("INSERT_FIRST", "envoy.filters.http.header_mutation"),
                    ("INSERT_BEFORE", "envoy.filters.http.dynamic_forward_proxy")],
          "documents: the route header stripped before every filter, the forward proxy filter between spapi-guard and the router", str(order))
    strip = http_filters[1]["patch"]["value"]["typed_config"]["mutations"]["request_mutations"]
    check(strip == [{"remove": "x-spapi-guard-document-route"}], "documents: a client's route header is removed", str(strip))
    vhosts = [p for p in ef["configPatches"] if p["applyTo"] == "VIRTUAL_HOST"]
    check(len(vhosts) == 1 and vhosts[0]["patch"]["operation"] == "ADD" and vhosts[0]["match"]["routeConfiguration"].get("gateway") == "spapi-guard/spapi-guard-egress",
          "documents: the virtual host is added to the gateway's routes")
    vhost = vhosts[0]["patch"]["value"] if vhosts else {}
    routed = [r for r in vhost.get("routes", []) if "route" in r]
    check(len(routed) == 1 and routed[0]["match"].get("headers") == [{"name": "x-spapi-guard-document-route", "present_match": True}]
          and routed[0]["route"]["cluster"] == "documents" and vhost["routes"][-1].get("direct_response", {}).get("status") == 404,
          "documents: the route only with the route header, else a 404 (no open proxy)", str(vhost))
    clusters = [p["patch"]["value"] for p in ef["configPatches"] if p["applyTo"] == "CLUSTER" and p["patch"]["operation"] == "ADD"]
    documents = next((c for c in clusters if c["name"] == "documents"), {})
    check(documents.get("cluster_type", {}).get("name") == "envoy.clusters.dynamic_forward_proxy" and documents.get("per_connection_buffer_limit_bytes", 1 << 20) <= 262144,
          "documents: a dynamic forward proxy cluster reading at most 256 KiB at a time", str(documents)[:500])
    hcm = patches["NETWORK_FILTER"]["patch"]["value"]["typed_config"]
    check(hcm["normalize_path"] and hcm["merge_slashes"] and hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST",
          "path normalisation")
    check(hcm["use_remote_address"] is True and hcm["xff_num_trusted_hops"] == hops, "use_remote_address + trusted hops")
    # Gateway deployment: keys from the Secret
    dep = next(d for d in load("istio/egress-gateway.yaml") if d["kind"] == "Deployment")
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    check(sorted(e["name"] for e in env) == keys and all("secretKeyRef" in e["valueFrom"] for e in env),
          "gateway keys come from a Kubernetes Secret")
    # Traffic: TLS origination, no retried POST
    traffic = load("istio/traffic.yaml")
    for dr in (d for d in traffic if d["kind"] == "DestinationRule" and d["spec"]["host"].endswith("amazon.com")):
        tls = dr["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]
        host = dr["spec"]["host"]
        check(tls["mode"] == "SIMPLE" and tls["sni"] == host and tls["subjectAltNames"] == [host] and not tls["insecureSkipVerify"],
              f"{host}: TLS origination with SNI and SAN")
    for vs in (d for d in traffic if d["kind"] == "VirtualService"):
        for route in vs["spec"]["http"]:
            methods = [m.get("method", {}).get("exact") for m in route["match"]]
            if methods != ["GET"]:
                check(route["retries"] == {"attempts": 0}, f"{vs['metadata']['name']} {route['name']}: no retries for non-GET")
    se = next(d for d in traffic if d["kind"] == "ServiceEntry")
    check([p["protocol"] for p in se["spec"]["ports"]] == ["HTTP"], "ServiceEntry declares no TLS passthrough port (no bypass)")
    # Kubernetes
    k8s = load("kubernetes/spapi-guard.yaml")
    dep = next(d for d in k8s if d["kind"] == "Deployment")
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    check(sorted(e["name"] for e in env) == keys and all("secretKeyRef" in e["valueFrom"] for e in env),
          "plain Envoy keys come from a Kubernetes Secret")


def merge(dst, src):
    """Protobuf-style merge as Istio's EnvoyFilter MERGE does it: maps merge, lists append."""
    for k, v in src.items():
        if k == "@type":
            continue
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        elif isinstance(v, list) and isinstance(dst.get(k), list):
            dst[k] = dst[k] + v
        else:
            dst[k] = copy.deepcopy(v)


def envoy_accepts(wasm, policy_path):
    render = ROOT / "scripts" / "render-envoy-config.py"
    envoy = os.environ.get("ENVOY_BIN") or str(ROOT / ".venv" / "envoy-bin")
    key_env = {v: base64.b64encode(os.urandom(32)).decode() for v in key_variables(json.loads(pathlib.Path(policy_path).read_text()))}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        tls = tmp / "tls"
        subprocess.run(["bash", str(ROOT / "scripts" / "gen-certs.sh"), str(tls)], check=True, stdout=subprocess.DEVNULL)
        base = tmp / "base.yaml"
        subprocess.run([sys.executable, str(render), "--profile", "production", "--policy", str(policy_path), "--out", str(base),
                        "--listen-port", "0", "--admin-port", "0", "--wasm", str(wasm), "--tls-dir", str(tls)], check=True)
        # The gateway as Istio builds it, approximated: the production listener with Istio's
        # access log disabled (telemetry.yaml), the EnvoyFilter's patches applied, and the module
        # as the local file istio-agent writes.
        doc = yaml.safe_load(base.read_text())
        listener = doc["static_resources"]["listeners"][0]
        all_patches = load("istio/envoyfilter.yaml")[0]["spec"]["configPatches"]
        patches = {p["applyTo"]: p for p in all_patches}
        merge(listener, patches["LISTENER"]["patch"]["value"])
        ext = copy.deepcopy(patches["EXTENSION_CONFIG"]["patch"]["value"])
        ext["typed_config"]["config"]["vm_config"]["code"] = {"local": {"filename": str(wasm)}}
        # Istio's gateway has none of the template's document pieces: they come from the patches.
        documents_filters = ("envoy.filters.http.wasm", "envoy.filters.http.header_mutation", "envoy.filters.http.dynamic_forward_proxy")
        doc["static_resources"]["clusters"] = [c for c in doc["static_resources"]["clusters"] if c["name"] != "documents"]
        for p in all_patches:
            if p["applyTo"] == "CLUSTER" and p["patch"]["operation"] == "ADD":
                doc["static_resources"]["clusters"].append(copy.deepcopy(p["patch"]["value"]))
        for chain in listener["filter_chains"]:
            hcm = copy.deepcopy(chain["filters"][0]["typed_config"])
            hcm["access_log"] = []
            for k in ("normalize_path", "merge_slashes", "path_with_escaped_slashes_action", "use_remote_address", "xff_num_trusted_hops"):
                hcm.pop(k, None)
            hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] not in documents_filters]
            hcm["route_config"]["virtual_hosts"] = [v for v in hcm["route_config"]["virtual_hosts"] if v["name"] != "documents"]
            merge(hcm, patches["NETWORK_FILTER"]["patch"]["value"]["typed_config"])
            # The patches in their order, as Istio applies them.
            for p in all_patches:
                op = p["patch"]["operation"]
                if p["applyTo"] == "HTTP_FILTER":
                    value = {"name": ext["name"], "typed_config": ext["typed_config"]} if p["patch"]["value"]["name"] == ext["name"] else copy.deepcopy(p["patch"]["value"])
                    router = next(i for i, f in enumerate(hcm["http_filters"]) if f["name"] == "envoy.filters.http.router")
                    hcm["http_filters"].insert(0 if op == "INSERT_FIRST" else router, value)
                elif p["applyTo"] == "VIRTUAL_HOST" and op == "ADD":
                    hcm["route_config"]["virtual_hosts"].insert(0, copy.deepcopy(p["patch"]["value"]))
            chain["filters"][0]["typed_config"] = hcm
        gateway = tmp / "gateway.yaml"
        gateway.write_text(yaml.safe_dump(doc))
        # The ConfigMap's envoy.yaml with its Kubernetes paths pointed at local files.
        cm = next(d for d in load("kubernetes/spapi-guard.yaml") if d["kind"] == "ConfigMap")["data"]["envoy.yaml"]
        configmap = tmp / "configmap.yaml"
        configmap.write_text(cm.replace("/etc/spapi-guard/module/plugin.wasm", str(wasm)).replace("/etc/spapi-guard/tls", str(tls))
                             .replace('port_value: 10000', 'port_value: 0').replace('port_value: 9901', 'port_value: 0'))
        for name, path in (("EnvoyFilter's config applied to the production profile", gateway), ("the ConfigMap's envoy.yaml", configmap)):
            p = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--log-level", "error"], capture_output=True, text=True,
                               env={**os.environ, **key_env}, timeout=120)
            check(p.returncode == 0 and "OK" in p.stdout, f"envoy --mode validate accepts {name}", p.stdout[-2000:] + p.stderr[-2000:])
            p = subprocess.run([sys.executable, str(ROOT / "scripts" / "lint-envoy.py"), str(path)], capture_output=True, text=True)
            check(p.returncode == 0, f"lint-envoy passes {name}", p.stdout)


def main():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gen_deploy", ROOT / "scripts" / "gen-deploy.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    policy_path = ROOT / "policies" / "production.example.json"
    for name, text in gen.generate(str(policy_path), "registry.example.com/spapi-guard:0.1.0", None).items():
        shipped = DEPLOY / name
        check(shipped.exists() and shipped.read_text() == text, f"deploy/{name} is up to date (make deploy)")
    kinds = validate_schemas()
    print("validated kinds: " + ", ".join(sorted(f"{k}/{v}" for v, k in kinds)))
    semantics(json.loads(policy_path.read_text()))
    wasm = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if wasm and wasm.exists():
        envoy_accepts(wasm.resolve(), policy_path)
    else:
        print("note: no Wasm module given: Envoy's own check of the EnvoyFilter config is skipped")
    print(f"deploy checks: {results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
