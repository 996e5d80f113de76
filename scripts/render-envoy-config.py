#!/usr/bin/env python3
"""Render an Envoy config from envoy/envoy.template.yaml and a policy file.

The policy is the one source of truth: it is embedded as the plugin configuration, and the
environment variables its key ring names become the VM's host_env_keys. Tests, the demo and the
docker-compose config (envoy/envoy.yaml, rendered with --docker) all come from here.

    python3 scripts/render-envoy-config.py --policy policies/default.json --out .run/envoy.yaml \
        --listen-port 10000 --upstream-port 18081 --admin-port 9901 --wasm target/.../spapi_guard.wasm

Profiles (--profile): `demo` (the default) sends everything to one plaintext `spapi` cluster, the
mock SP-API; `production` has one TLS cluster per SP-API endpoint (SPAPI_ENDPOINTS below) and
picks it by the host name the app calls. The template marks profile-specific lines with `#@demo`,
`#@production`, `#@endpoints` (repeated once per endpoint, production only) and `#@end`; the rest is
shared, so both profiles keep the same listener, filter and log settings.

    python3 scripts/render-envoy-config.py --docker --profile production --out envoy/envoy.production.yaml

Tests only: --upstream-protocol changes how Envoy talks to the `spapi` cluster and nothing else:
h1 (the template's HTTP/1.1, the default), h1-trailers (HTTP/1.1 with enable_trailers, so chunked
trailers reach the filter) or h2 (HTTP/2 with prior knowledge, h2c). --upstream-override
ADDRESS:PORT points every production cluster at one address (a fake Amazon) and changes nothing
else: SNI, Host and the certificate name checked stay Amazon's.
"""
import argparse
import ipaddress
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The filter's default (src/policy.rs DEFAULT_BUFFER_LIMIT_BYTES).
DEFAULT_BUFFER_LIMIT_BYTES = 32 * 1024 * 1024
DOCKER = dict(bind="0.0.0.0", listen_port=10000, admin_port=9901, upstream_host="127.0.0.1", upstream_port=18081,
              wasm="/etc/spapi-guard/spapi_guard.wasm", tls_dir="/etc/spapi-guard/tls")

# Tests: how Envoy speaks to the `spapi` cluster (the template's own is HTTP/1.1 without trailers).
UPSTREAM_PROTOCOLS = {
    "h1": None,
    "h1-trailers": "explicit_http_config: { http_protocol_options: { enable_trailers: true } }",
    "h2": "explicit_http_config: { http2_protocol_options: {} }",
}
CLUSTER_ANCHOR = "  - name: spapi\n    type: STATIC\n    connect_timeout: 5s\n"

PROFILES = ("demo", "production")
# The SP-API endpoints (Amazon's "SP-API endpoints" page): cluster name, host name. The app's host
# name selects one by its first labels (the host name up to ".amazon.com").
SPAPI_ENDPOINTS = [
    ("spapi-na", "sellingpartnerapi-na.amazon.com"),
    ("spapi-eu", "sellingpartnerapi-eu.amazon.com"),
    ("spapi-fe", "sellingpartnerapi-fe.amazon.com"),
    ("spapi-sandbox-na", "sandbox.sellingpartnerapi-na.amazon.com"),
    ("spapi-sandbox-eu", "sandbox.sellingpartnerapi-eu.amazon.com"),
    ("spapi-sandbox-fe", "sandbox.sellingpartnerapi-fe.amazon.com"),
]
# Report document hosts when the policy lists none (src/documents.rs DEFAULT_HOSTS).
DEFAULT_DOCUMENT_HOSTS = ["*.s3.amazonaws.com", "*.s3-external-1.amazonaws.com", "*.cloudfront.net"]
# Debian/Ubuntu's CA bundle (also in the envoyproxy/envoy image): the system trust store.
SYSTEM_TRUST_STORE = "/etc/ssl/certs/ca-certificates.crt"


def select_profile(text, profile, upstream_override=None):
    """Keeps the shared lines and the active profile's blocks; repeats `#@endpoints` blocks once
    per SP-API endpoint (production only). Marker lines themselves are dropped."""
    if profile not in PROFILES:
        raise SystemExit(f"render-envoy-config: unknown profile {profile!r}")
    out, block, mode = [], [], None
    for line in text.splitlines(keepends=True):
        if line.startswith("#@"):
            tag = line[2:].strip()
            if tag not in PROFILES + ("endpoints", "end"):
                raise SystemExit(f"render-envoy-config: unknown template marker {line.strip()!r}")
            if mode == "endpoints" and profile == "production":
                out.extend(expand_endpoints("".join(block), upstream_override))
            block, mode = [], (None if tag == "end" else tag)
        elif mode is None or mode == profile:
            out.append(line)
        elif mode == "endpoints":
            block.append(line)
    if mode is not None:
        raise SystemExit("render-envoy-config: a template block has no #@end")
    return "".join(out)


def expand_endpoints(block, upstream_override):
    address, port = None, 443
    if upstream_override:
        address, _, port = upstream_override.rpartition(":")
    for cluster, host in SPAPI_ENDPOINTS:
        values = {"EP_CLUSTER": cluster, "EP_HOST": host, "EP_HOST_PREFIX": host.removesuffix(".amazon.com"),
                  "EP_ADDRESS": address or host, "EP_PORT": str(int(port))}
        text = block
        for name, value in values.items():
            text = text.replace("{{" + name + "}}", value)
        yield text


def set_upstream_protocol(text, protocol):
    """Adds the cluster's HTTP protocol options for `protocol`; h1 leaves the text as it is."""
    http_config = UPSTREAM_PROTOCOLS[protocol]
    if http_config is None:
        return text
    if text.count(CLUSTER_ANCHOR) != 1:
        raise SystemExit("render-envoy-config: the template's spapi cluster is not where --upstream-protocol expects it")
    options = (
        "    typed_extension_protocol_options:\n"
        "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
        '        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n'
        f"        {http_config}\n"
    )
    return text.replace(CLUSTER_ANCHOR, CLUSTER_ANCHOR + options)


# Clusters of the policy's third-party upstreams are named this prefix + the upstream's name: the
# filter binds each request to the cluster Envoy selected (src/upstreams.rs CLUSTER_PREFIX).
UPSTREAM_CLUSTER_PREFIX = "upstream_"


def yaml_str(value):
    """A YAML double-quoted scalar (JSON's string syntax is valid YAML)."""
    return json.dumps(str(value))


def upstream_routes(policy):
    """One route per upstream of the policy, first in every virtual host: its prefix, rewritten to
    `/`, to its own cluster, under its server name, whatever host name the app called Envoy by."""
    out = []
    for name, up in sorted((policy.get("upstreams") or {}).items()):
        prefix = up["routePrefix"].rstrip("/") + "/"
        server = up["tls"].get("serverName") or up["address"]["host"]
        out.append(
            f"              # Approved upstream {name} (policy upstreams.{name}): plaintext of revealed tokens goes only here.\n"
            f"              - match: {{ prefix: {yaml_str(prefix)} }}\n"
            f"                route: {{ cluster: {UPSTREAM_CLUSTER_PREFIX}{name}, prefix_rewrite: \"/\", host_rewrite_literal: {yaml_str(server)}, timeout: 30s }}\n")
    return "".join(out)


def upstream_clusters(policy):
    """One cluster per upstream: TLS 1.2+ with SNI, the certificate verified against the
    upstream's own CA file and required to name its server name (DNS SAN); never plaintext."""
    out = []
    for name, up in sorted((policy.get("upstreams") or {}).items()):
        host, port = up["address"]["host"], int(up["address"]["port"])
        server = up["tls"].get("serverName") or host
        try:
            ipaddress.ip_address(host)
            discovery = "    type: STATIC\n"
        except ValueError:
            discovery = "    type: LOGICAL_DNS\n    dns_lookup_family: V4_PREFERRED\n    respect_dns_ttl: true\n"
        cluster = UPSTREAM_CLUSTER_PREFIX + name
        out.append(
            f"  # Approved upstream {name} (policy upstreams.{name}): verified TLS, its own CA file.\n"
            f"  - name: {cluster}\n{discovery}"
            "    connect_timeout: 5s\n"
            "    load_assignment:\n"
            f"      cluster_name: {cluster}\n"
            "      endpoints:\n"
            "      - lb_endpoints:\n"
            "        - endpoint:\n"
            "            address:\n"
            f"              socket_address: {{ address: {yaml_str(host)}, port_value: {port} }}\n"
            "    transport_socket:\n"
            "      name: envoy.transport_sockets.tls\n"
            "      typed_config:\n"
            '        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n'
            f"        sni: {yaml_str(server)}\n"
            "        common_tls_context:\n"
            "          tls_params: { tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3 }\n"
            "          validation_context:\n"
            f"            trusted_ca: {{ filename: {yaml_str(up['tls']['caFile'])} }}\n"
            "            match_typed_subject_alt_names:\n"
            "            - san_type: DNS\n"
            f"              matcher: {{ exact: {yaml_str(server)} }}\n")
    return "".join(out)


def key_variables(policy):
    """The environment variables the policy's key ring names: keys.ring[].env, or keys.env's values
    (the short form)."""
    keys = policy.get("keys", {})
    if "ring" in keys:
        return sorted({entry.get("env") for entry in keys["ring"] if entry.get("env")})
    return sorted(set(keys.get("env", {}).values()))


def document_domains(policy):
    """The Envoy domains of the documents virtual host: the policy's documents.hosts (src/documents.rs
    DEFAULT_HOSTS when absent), as the filter writes :authority (a name alone for port 443)."""
    hosts = policy.get("documents", {}).get("hosts", DEFAULT_DOCUMENT_HOSTS)
    return [h.removesuffix(":443") for h in hosts]


def render(policy_text, bind, listen_port, admin_port, upstream_host, upstream_port, wasm, tls_dir, template=None,
           variant="guard", trusted_identity=None, upstream_protocol="h1", profile="demo", trust_store=SYSTEM_TRUST_STORE,
           upstream_override=None, document_trust_store=SYSTEM_TRUST_STORE):
    policy = json.loads(policy_text)
    env_keys = key_variables(policy)
    compact = json.dumps(policy, separators=(",", ":"))
    identity = policy.get("access", {}).get("identity", {})
    strip = ""
    if "header" in identity.get("sources", []) and identity.get("header"):
        # Header identities: remove any client-sent copy first, so that only a trusted
        # authentication filter placed after this one (e.g. jwt_authn claim_to_headers) can set it.
        strip = (
            "          - name: envoy.filters.http.header_mutation\n"
            "            typed_config:\n"
            '              "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation\n'
            "              mutations:\n"
            "                request_mutations:\n"
            f"                - remove: {identity['header']}\n"
            "          # Place the authentication filter that sets the identity header here.\n"
        )
        if trusted_identity:
            # Benchmarks only: stands in for that authentication filter.
            strip += (
                "          - name: envoy.filters.http.header_mutation\n"
                "            typed_config:\n"
                '              "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation\n'
                "              mutations:\n"
                "                request_mutations:\n"
                f"                - append: {{ header: {{ key: {identity['header']}, value: {trusted_identity} }}, append_action: OVERWRITE_IF_EXISTS_OR_ADD }}\n"
            )
    text = select_profile(template or (ROOT / "envoy" / "envoy.template.yaml").read_text(), profile, upstream_override)
    values = {
        "BIND": bind,
        "LISTEN_PORT": str(listen_port),
        "ADMIN_PORT": str(admin_port),
        "UPSTREAM_HOST": upstream_host,
        "UPSTREAM_PORT": str(upstream_port),
        "WASM_PATH": str(wasm),
        "TLS_DIR": str(tls_dir),
        "HOST_ENV_KEYS": json.dumps(env_keys),
        "IDENTITY_HEADER_STRIP": strip,
        "XFF_HOPS": str(int(policy.get("access", {}).get("xffTrustedHops", 0))),
        # Envoy's buffer limit is the policy's, so the filter knows what fits (src/policy.rs).
        "BUFFER_LIMIT": str(int(policy.get("bufferLimitBytes", DEFAULT_BUFFER_LIMIT_BYTES))),
        "TRUST_STORE": str(trust_store),
        "DOCUMENT_TRUST_STORE": str(document_trust_store),
        "DOCUMENT_DOMAINS": json.dumps(document_domains(policy)),
        # YAML single-quoted scalar: a quote is written twice.
        "POLICY_JSON": compact.replace("'", "''"),
    }
    # Placeholders on lines of their own: nothing at all without upstreams.
    text = text.replace("{{UPSTREAM_ROUTES}}\n", upstream_routes(policy)).replace("{{UPSTREAM_CLUSTERS}}\n", upstream_clusters(policy))
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    if variant == "none":
        # Benchmarks: the same Envoy without any Wasm filter.
        start = text.index("          - name: envoy.filters.http.wasm")
        end = text.index("          # Resolves the document host")
        text = text[:start] + text[end:]
    elif variant in ("floor", "noop"):
        # Benchmarks: a filter that only buffers and writes back each response body (floor), or
        # that does nothing (noop).
        text = text.replace("vm_id: spapi-guard", "vm_id: buffer-filter").replace("root_id: spapi-guard", "root_id: buffer-filter")
        text = text.replace("value: '" + values["POLICY_JSON"] + "'", "value: '" + ("noop" if variant == "noop" else "buffer") + "'")
    return set_upstream_protocol(text, upstream_protocol)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default=str(ROOT / "policies" / "default.json"))
    p.add_argument("--out", required=True)
    p.add_argument("--docker", action="store_true", help="the docker-compose layout (envoy/envoy.yaml)")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--listen-port", type=int, default=10000)
    p.add_argument("--admin-port", type=int, default=9901)
    p.add_argument("--upstream-host", default="127.0.0.1")
    p.add_argument("--upstream-port", type=int, default=18081)
    p.add_argument("--wasm", default=str(ROOT / "target" / "wasm32-wasip1" / "release" / "spapi_guard.wasm"))
    p.add_argument("--tls-dir", default=str(ROOT / ".run" / "demo" / "tls"), help="ca.crt, server.crt, server.key")
    p.add_argument("--variant", choices=["guard", "floor", "noop", "none"], default="guard", help="benchmarks: which filter")
    p.add_argument("--trusted-identity", help="benchmarks: set the policy's identity header to this value, as a trusted authentication filter would")
    p.add_argument("--upstream-protocol", choices=sorted(UPSTREAM_PROTOCOLS), default="h1",
                   help="tests: HTTP/1.1 (default), HTTP/1.1 with trailers, or HTTP/2 (h2c) to the spapi cluster")
    p.add_argument("--profile", choices=PROFILES, default="demo",
                   help="demo: the mock SP-API over plaintext; production: Amazon's SP-API endpoints over verified TLS")
    p.add_argument("--trust-store", default=SYSTEM_TRUST_STORE, help="production: CA bundle that verifies Amazon's certificates")
    p.add_argument("--document-trust-store", default=SYSTEM_TRUST_STORE,
                   help="CA bundle that verifies the document hosts' certificates (tests: their own CA)")
    p.add_argument("--upstream-override", metavar="ADDRESS:PORT",
                   help="tests: connect every production cluster to this address (SNI, Host and SAN stay Amazon's)")
    a = p.parse_args()
    policy_text = pathlib.Path(a.policy).read_text()
    opts = DOCKER if a.docker else dict(bind=a.bind, listen_port=a.listen_port, admin_port=a.admin_port,
                                        upstream_host=a.upstream_host, upstream_port=a.upstream_port, wasm=a.wasm,
                                        tls_dir=a.tls_dir)
    pathlib.Path(a.out).write_text(render(policy_text, **opts, variant=a.variant, trusted_identity=a.trusted_identity,
                                             upstream_protocol=a.upstream_protocol, profile=a.profile,
                                             trust_store=a.trust_store, upstream_override=a.upstream_override,
                                             document_trust_store=a.document_trust_store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
