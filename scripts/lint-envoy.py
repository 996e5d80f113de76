#!/usr/bin/env python3
"""lint-envoy: checks an Envoy config for every setting spapi-guard's safety rests on.

    python3 scripts/lint-envoy.py CONFIG [CONFIG…]       (YAML or JSON: a bootstrap, or an admin
                                                          /config_dump, e.g. from an Istio proxy)

For each listener that runs the spapi-guard Wasm filter (root_id or name `spapi-guard`):

  wasm-failure-policy      failure_policy: FAIL_RELOAD (FAIL_CLOSED answers 503 forever after one
                           crash; FAIL_OPEN passes PII through)
  wasm-stop-iteration      allow_on_headers_stop_iteration: true (the filter holds response headers
                           until the rewritten body's length is known; without it PII responses hang)
  wasm-env-keys            every key variable the policy names is in host_env_keys
  buffer-limit             the listener's per_connection_buffer_limit_bytes is at least the policy's
                           bufferLimitBytes, which is at least 3 × maxBodyBytes (tokens grow bodies)
  path-normalization       normalize_path, merge_slashes, path_with_escaped_slashes_action REJECT_REQUEST
                           (or UNESCAPE_AND_REDIRECT): one canonical path per request for the router
  client-address           use_remote_address: true and xff_num_trusted_hops = the policy's
                           access.xffTrustedHops: the allow lists never believe a client's X-Forwarded-For
  access-log               no access log prints the path, the query or request headers (%REQ(…)%
                           but :METHOD, %PATH%, CEL on request.*), no default format, no gRPC logger
  filter-order             spapi-guard after every authentication filter; with header identities, the
                           client's copy of the identity header removed before them; no filter chain of
                           the listener without spapi-guard; not disabled on any route
  route-match              the filter's routes match by path prefix only (prefix, path_separated_prefix; header
                           matchers on other headers): no exact path, regex, URI template or query matcher. The
                           filter decides a request's destination before it writes revealed values into :path;
                           Envoy routes the rewritten path again, and a matcher that reads inside a segment or the
                           query could send plaintext to another cluster than the one the filter checked
  upstream-tls             every cluster the filter's routes reach, and every cluster naming an Amazon
                           host, speaks TLS ≥ 1.2 with SNI, a trust store and a SAN match; plaintext only
                           to a loopback address (the demo's mock, a local sidecar)
  document-buffer          the documents cluster (dynamic forward proxy) reads at most 256 KiB per read
                           (per_connection_buffer_limit_bytes): each read is inflated and tokenized into
                           ~16x as much output at once, which Envoy holds until the client takes it

Each failure is printed with the fix. Exit status 1 if any check failed, 2 if the file is unusable.
"""
import ipaddress
import json
import re
import sys

import yaml

WASM_TYPE = "envoy.extensions.filters.http.wasm.v3.Wasm"
HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
UPSTREAM_TLS_TYPE = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DEFAULT_BUFFER_LIMIT = 1024 * 1024  # Envoy's per_connection_buffer_limit_bytes default
POLICY_DEFAULT_BUFFER = 32 * 1024 * 1024  # src/policy.rs
POLICY_DEFAULT_MAX_BODY = 8 * 1024 * 1024
# HTTP filters that authenticate a caller (and may set the identity header a policy trusts).
AUTHN_FILTERS = {
    "envoy.filters.http.jwt_authn", "envoy.filters.http.oauth2", "envoy.filters.http.basic_auth",
    "envoy.filters.http.api_key_auth", "envoy.filters.http.ext_authz", "envoy.filters.http.credential_injector",
    "istio_authn", "istio.authn", "envoy.filters.http.lua", "envoy.filters.http.ext_proc",
}
AUTHN_TYPES = ("jwt_authn", "oauth2", "basic_auth", "api_key_auth", "ext_authz", "ext_proc", ".lua.")
TLS_ORDER = {"TLS_AUTO": 2, "TLSv1_0": 0, "TLSv1_1": 1, "TLSv1_2": 2, "TLSv1_3": 3}
AMAZON = re.compile(r"(^|\.)amazon\.com$|sellingpartnerapi", re.I)
# Access-log command operators that print request data (the path, the query, headers, bodies).
LOG_LEAKS = [
    (re.compile(r"%REQ(?:_WITHOUT_QUERY)?\((?!:METHOD\))[^)]*\)(?::\d+)?%"), "prints a request header or the path"),
    (re.compile(r"%PATH(?:\([^)]*\))?%"), "prints the path (with its query)"),
    (re.compile(r"%REQUEST_HEADERS%|%REQUEST_BODY"), "prints request headers or the body"),
    (re.compile(r"%CEL\([^%]*request\.(?:path|url_path|query|headers|host)"), "prints the path, query or headers through CEL"),
    (re.compile(r"%DYNAMIC_METADATA\([^)]*\)%"), "prints dynamic metadata, which filters fill from request headers"),
]


class Lint:
    def __init__(self, source):
        self.source = source
        self.failures = []
        self.passed = 0
        self.notes = []

    def check(self, ok, check_id, where, problem, fix):
        if ok:
            self.passed += 1
        else:
            self.failures.append((check_id, where, problem, fix))
        return ok

    def note(self, text):
        self.notes.append(text)


def type_name(typed_config):
    return (typed_config or {}).get("@type", "").rsplit("/", 1)[-1]


def iter_dicts(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from iter_dicts(v)
    elif isinstance(node, list):
        for v in node:
            yield from iter_dicts(v)


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def collect(doc):
    """Listeners, clusters and ECDS filter configs of a bootstrap or an admin /config_dump."""
    listeners, clusters, ecds = [], [], {}
    static = doc.get("static_resources") or {}
    listeners += static.get("listeners") or []
    clusters += static.get("clusters") or []
    for section in doc.get("configs") or []:
        for key in ("static_listeners", "dynamic_listeners"):
            for entry in section.get(key) or []:
                listener = entry.get("listener") or (entry.get("active_state") or {}).get("listener")
                if listener:
                    listeners.append(listener)
        for key in ("static_clusters", "dynamic_active_clusters"):
            for entry in section.get(key) or []:
                if entry.get("cluster"):
                    clusters.append(entry["cluster"])
        for entry in section.get("ecds_filters") or []:
            ec = entry.get("ecds_filter") or {}
            if ec.get("name"):
                ecds[ec["name"]] = ec.get("typed_config") or {}
        if "bootstrap" in section:
            inner = collect(section["bootstrap"])
            listeners += inner[0]
            clusters += inner[1]
    # A config dump lists static resources twice (bootstrap and listener/cluster dumps).
    unique = lambda items: list({json.dumps(i, sort_keys=True): i for i in items}.values())
    return unique(listeners), unique(clusters), ecds


def http_filter_config(f, ecds):
    if "typed_config" in f:
        return f["typed_config"]
    cd = f.get("config_discovery")
    if cd is not None:
        return ecds.get(f.get("name"), cd.get("default_config") or {})
    return {}


def is_guard(f, ecds):
    tc = http_filter_config(f, ecds)
    if type_name(tc) != WASM_TYPE:
        return False
    cfg = tc.get("config") or {}
    return "spapi-guard" in (cfg.get("root_id"), cfg.get("name"), (cfg.get("vm_config") or {}).get("vm_id"))


def is_authn(f, ecds):
    if f.get("name") in AUTHN_FILTERS:
        return True
    t = type_name(http_filter_config(f, ecds))
    return any(a in t for a in AUTHN_TYPES) and WASM_TYPE not in t


def policy_of(cfg):
    value = (cfg.get("configuration") or {}).get("value")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return None


def hcms(listener):
    chains = list(listener.get("filter_chains") or [])
    if listener.get("default_filter_chain"):
        chains.append(listener["default_filter_chain"])
    for i, chain in enumerate(chains):
        name = chain.get("name") or f"#{i}"
        for f in chain.get("filters") or []:
            if type_name(f.get("typed_config")) == HCM_TYPE:
                yield name, f["typed_config"]


def routed_clusters(hcm):
    out = set()
    for vh in (hcm.get("route_config") or {}).get("virtual_hosts") or []:
        for r in vh.get("routes") or []:
            action = r.get("route") or {}
            if action.get("cluster"):
                out.add(action["cluster"])
            for wc in (action.get("weighted_clusters") or {}).get("clusters") or []:
                out.add(wc.get("name"))
    return out


# Route match fields that read more of the path than a prefix of whole literal segments, or the query.
PATH_READING_MATCHES = ("path", "safe_regex", "regex", "path_match_policy", "query_parameters", "connect_matcher")


def lint_routes(lint, where, hcm):
    """route-match: the filter rewrites :path (revealed values) after deciding the destination;
    only prefix matches keep Envoy's second route selection where the filter's decision was."""
    for vh in (hcm.get("route_config") or {}).get("virtual_hosts") or []:
        for i, r in enumerate(vh.get("routes") or []):
            match = r.get("match") or {}
            reads = [k for k in PATH_READING_MATCHES if k in match]
            reads += [f"headers[{h.get('name')}]" for h in match.get("headers") or [] if str(h.get("name", "")).lower() == ":path"]
            lint.check(not reads, "route-match", f"{where} virtual host {vh.get('name', '?')} route #{i}",
                       f"matches on {', '.join(reads)}",
                       "match the filter's routes by path prefix only (prefix or path_separated_prefix): the filter "
                       "writes revealed values into :path after it checked the destination, and Envoy routes the new "
                       "path again; an exact, regex, template or query matcher could send the plaintext elsewhere")


def lint_wasm(lint, where, cfg, policy):
    lint.check(cfg.get("failure_policy") == "FAIL_RELOAD" and not cfg.get("fail_open"), "wasm-failure-policy", where,
               f"failure_policy is {cfg.get('failure_policy', 'unset (FAIL_CLOSED)')}"
               + (", fail_open: true" if cfg.get("fail_open") else ""),
               "set `failure_policy: FAIL_RELOAD` in the Wasm filter's config (and no fail_open): a crashed VM is then "
               "reloaded; FAIL_CLOSED answers 503 to every request after one crash, FAIL_OPEN passes PII through")
    stop = cfg.get("allow_on_headers_stop_iteration")
    lint.check(stop is True or (isinstance(stop, dict) and stop.get("value") is True), "wasm-stop-iteration", where,
               "allow_on_headers_stop_iteration is not true",
               "set `allow_on_headers_stop_iteration: true` in the Wasm filter's config: the filter holds response "
               "headers until the rewritten body's length is known; without it every PII response hangs")
    if policy is None:
        lint.check(False, "wasm-policy", where, "the plugin configuration is not a JSON policy",
                   "put the policy (policies/*.json) in `configuration: {\"@type\": type.googleapis.com/google.protobuf.StringValue, value: '<json>'}`")
        return
    keys = policy.get("keys") or {}
    wanted = sorted({e.get("env") for e in keys["ring"] if e.get("env")} if "ring" in keys else set((keys.get("env") or {}).values()))
    have = ((cfg.get("vm_config") or {}).get("environment_variables") or {})
    present = set(have.get("host_env_keys") or []) | set((have.get("key_values") or {}))
    missing = [k for k in wanted if k not in present]
    lint.check(not missing, "wasm-env-keys", where, f"key variables not passed to the VM: {', '.join(missing)}",
               "list them in vm_config.environment_variables.host_env_keys (and export them to Envoy): the filter "
               "refuses to start without its keys")


def lint_access_logs(lint, where, logs):
    for i, log in enumerate(logs or []):
        tc = log.get("typed_config") or {}
        t = type_name(tc)
        name = log.get("name") or t
        at = f"{where} access_log[{i}] ({name})"
        if "grpc" in t.lower() or "grpc" in (log.get("name") or ""):
            lint.check(False, "access-log", at, "a gRPC access logger sends the request path (and any "
                       "additional_request_headers_to_log) with every entry",
                       "log through a stdout/file logger with the filter's audit event "
                       "(%FILTER_STATE(wasm.spapi_guard.audit:PLAIN)%) instead")
            continue
        fmt = tc.get("log_format") or tc.get("format") or {k: tc[k] for k in ("body", "attributes") if k in tc}
        if "path" in tc and not fmt and t.endswith("FileAccessLog"):
            fmt = None
        if not fmt:
            lint.check(False, "access-log", at, "no log_format: Envoy's default format prints the path with its query, "
                       "the user agent and the authority",
                       "give it a log_format, e.g. text_format_source.inline_string: \"%FILTER_STATE(wasm.spapi_guard.audit:PLAIN)%\\n\"")
            continue
        leaks = sorted({f"{m.group(0)} ({why})" for s in strings(fmt) for rx, why in LOG_LEAKS for m in rx.finditer(s)})
        lint.check(not leaks, "access-log", at, "the format " + "; ".join(leaks),
                   "log the filter's audit event (%FILTER_STATE(wasm.spapi_guard.audit:PLAIN)%): it carries the path "
                   "as a template with PII redacted; request paths, queries and headers can carry PII and the LWA token")


def lint_filters(lint, where, hcm, ecds, policy):
    filters = hcm.get("http_filters") or []
    names = [f.get("name") for f in filters]
    guard_at = next(i for i, f in enumerate(filters) if is_guard(f, ecds))
    late = [names[i] for i, f in enumerate(filters) if i > guard_at and is_authn(f, ecds)]
    lint.check(not late, "filter-order", where, f"authentication filters after spapi-guard: {', '.join(late)}",
               "move spapi-guard after every authentication filter: it must decide on an authenticated caller (and "
               "audits requests those filters refuse)")
    identity = (policy or {}).get("access", {}).get("identity", {})
    header = identity.get("header")
    if header and "header" in (identity.get("sources") or []):
        removed = False
        for f in filters[:guard_at]:
            tc = http_filter_config(f, ecds)
            if is_authn(f, ecds):
                break
            for m in ((tc.get("mutations") or {}).get("request_mutations") or []):
                if (m.get("remove") or "").lower() == header.lower():
                    removed = True
        lint.check(removed, "filter-order", where,
                   f"the policy trusts the identity header {header}, but no filter removes a client's copy before authentication",
                   f"add an envoy.filters.http.header_mutation with `request_mutations: [{{remove: {header}}}]` before the "
                   "authentication filter that sets it (see scripts/render-envoy-config.py)")
    guard_names = {names[guard_at]}
    disabled = []
    for vh in (hcm.get("route_config") or {}).get("virtual_hosts") or []:
        scopes = [("virtual host " + str(vh.get("name")), vh)] + [(f"route {r.get('name') or i} of {vh.get('name')}", r)
                                                                 for i, r in enumerate(vh.get("routes") or [])]
        for label, scope in scopes:
            for fname, fcfg in (scope.get("typed_per_filter_config") or {}).items():
                if fname in guard_names and (fcfg.get("disabled") or "FilterConfig" in type_name(fcfg) and fcfg.get("disabled")):
                    disabled.append(label)
    lint.check(not disabled, "filter-order", where, f"spapi-guard disabled on: {', '.join(disabled)}",
               "remove typed_per_filter_config that disables the filter: those routes would pass PII through")


def loopback(address):
    if address in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def cluster_hosts(cluster):
    hosts = []
    for group in (cluster.get("load_assignment") or {}).get("endpoints") or []:
        for lb in group.get("lb_endpoints") or []:
            endpoint = lb.get("endpoint") or {}
            sa = (endpoint.get("address") or {}).get("socket_address")
            if isinstance(sa, dict):
                hosts.append(sa.get("address"))
            if endpoint.get("hostname"):
                hosts.append(endpoint["hostname"])
    return hosts


# The documents cluster's read size bound (bytes of gzip per read; see lint_cluster).
DOCUMENT_BUFFER_MAX = 256 * 1024


def auto_sni_and_san(cluster):
    """None for a cluster that is no dynamic forward proxy; else whether SNI and the SAN checked
    come from the request's host name."""
    if (cluster.get("cluster_type") or {}).get("name") != "envoy.clusters.dynamic_forward_proxy":
        return None
    options = ((cluster.get("typed_extension_protocol_options") or {}).get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions") or {})
    upstream = options.get("upstream_http_protocol_options") or {}
    return bool(upstream.get("auto_sni") and upstream.get("auto_san_validation"))


def lint_cluster(lint, cluster, routed):
    name = cluster.get("name")
    where = f"cluster {name}"
    hosts = cluster_hosts(cluster)
    ts = cluster.get("transport_socket") or {}
    tc = ts.get("typed_config") or {}
    amazon = any(AMAZON.search(h or "") for h in hosts) or AMAZON.search(tc.get("sni") or "")
    if not amazon and not routed:
        return
    if type_name(tc) != UPSTREAM_TLS_TYPE:
        if not amazon and hosts and all(loopback(h) for h in hosts if h):
            lint.note(f"{where}: plaintext to a loopback address ({', '.join(sorted(set(hosts)))}): fine for a mock or a local "
                      "sidecar, never for Amazon")
            lint.passed += 1
            return
        lint.check(False, "upstream-tls", where, "no UpstreamTlsContext: requests and LWA tokens would cross the network in clear",
                   "add a transport_socket envoy.transport_sockets.tls with UpstreamTlsContext: sni, tls_params "
                   "tls_minimum_protocol_version TLSv1_2, validation_context trusted_ca + match_typed_subject_alt_names "
                   "(see envoy/envoy.production.yaml)")
        return
    if cluster.get("transport_socket_matches"):
        lint.check(False, "upstream-tls", where, "transport_socket_matches can select another (plaintext) socket per endpoint",
                   "use one transport_socket for SP-API clusters")
    # A dynamic forward proxy (report documents) names its host per request: SNI and the SAN
    # checked must come from that name (auto_sni, auto_san_validation).
    auto = auto_sni_and_san(cluster)
    if auto is not None:
        lint.check(auto, "upstream-tls", where, "a dynamic forward proxy without auto_sni and auto_san_validation: the document host's "
                   "certificate would not be checked against its name", "set typed_extension_protocol_options HttpProtocolOptions "
                   "upstream_http_protocol_options: {auto_sni: true, auto_san_validation: true} (see envoy/envoy.production.yaml)")
    if auto is not None:
        # The filter inflates and tokenizes each chunk Envoy reads from the document host: one
        # read of up to this cluster's buffer limit of gzip becomes ~16× as much output at once,
        # held by Envoy until the client reads it. A small limit keeps a download's memory flat.
        limit = cluster.get("per_connection_buffer_limit_bytes", 1 << 20)
        lint.check(int(limit) <= DOCUMENT_BUFFER_MAX, "document-buffer", where,
                   f"per_connection_buffer_limit_bytes {limit}: one read of the document host's gzip inflates and tokenizes into "
                   "~16x as much output at once (Envoy's memory grows by tens of MiB per download)",
                   f"set per_connection_buffer_limit_bytes: 65536 on the documents cluster (at most {DOCUMENT_BUFFER_MAX}; "
                   "see envoy/envoy.production.yaml)")
    lint.check(bool(tc.get("sni")) or bool(auto), "upstream-tls", where, "no sni", "set `sni:` to the endpoint's host name (Amazon serves by SNI)")
    common = tc.get("common_tls_context") or {}
    params = common.get("tls_params") or {}
    low = params.get("tls_minimum_protocol_version", "TLSv1_2")  # Envoy's client default is TLS 1.2
    high = params.get("tls_maximum_protocol_version", "TLSv1_3")
    lint.check(TLS_ORDER.get(low, 0) >= 2 and TLS_ORDER.get(high, 3) >= 2, "upstream-tls", where,
               f"TLS versions {low}..{high} allow less than TLS 1.2",
               "set tls_params.tls_minimum_protocol_version: TLSv1_2 (DPP: encryption in transit, TLS 1.2+)")
    vc = common.get("validation_context") or (common.get("combined_validation_context") or {}).get("default_validation_context")
    if vc is None and common.get("validation_context_sds_secret_config"):
        lint.note(f"{where}: validation context from SDS: check that it has a trust store and SAN matchers")
        lint.passed += 1
        return
    vc = vc or {}
    trusted = vc.get("trusted_ca") or vc.get("system_root_certs") is not None or vc.get("ca_certificate_provider_instance")
    lint.check(bool(trusted) and vc.get("trust_chain_verification") != "ACCEPT_UNTRUSTED", "upstream-tls", where,
               "the server certificate is not verified (no trusted_ca, or ACCEPT_UNTRUSTED)",
               "set validation_context.trusted_ca to the system CA bundle (/etc/ssl/certs/ca-certificates.crt)")
    sans = vc.get("match_typed_subject_alt_names") or vc.get("match_subject_alt_names") or auto
    lint.check(bool(sans), "upstream-tls", where, "no subject alternative name is required: any certificate from any "
               "trusted CA would do", "add match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: <host>}}]")


def lint_doc(lint, doc):
    listeners, clusters, ecds = collect(doc)
    guarded = 0
    routed = set()
    for listener in listeners:
        lname = listener.get("name") or "?"
        chains = list(hcms(listener))
        with_guard = [(c, h) for c, h in chains if any(is_guard(f, ecds) for f in h.get("http_filters") or [])]
        if not with_guard:
            continue
        guarded += 1
        lint_access_logs(lint, f"listener {lname}", listener.get("access_log"))
        without = [c for c, h in chains if (c, h) not in with_guard]
        lint.check(not without, "filter-order", f"listener {lname}", f"filter chains without spapi-guard: {', '.join(without)}",
                   "put spapi-guard in every HTTP filter chain of the listener (TLS and plaintext): a chain without it is a bypass")
        policies = []
        for cname, hcm in with_guard:
            where = f"listener {lname} chain {cname}"
            guard = next(f for f in hcm["http_filters"] if is_guard(f, ecds))
            cfg = http_filter_config(guard, ecds).get("config") or {}
            policy = policy_of(cfg)
            policies.append(policy)
            lint_wasm(lint, where, cfg, policy)
            lint.check(hcm.get("normalize_path") is True and hcm.get("merge_slashes") is True
                       and hcm.get("path_with_escaped_slashes_action") in ("REJECT_REQUEST", "UNESCAPE_AND_REDIRECT"),
                       "path-normalization", where,
                       "normalize_path: {}, merge_slashes: {}, path_with_escaped_slashes_action: {}".format(
                           hcm.get("normalize_path", "unset"), hcm.get("merge_slashes", "unset"),
                           hcm.get("path_with_escaped_slashes_action", "unset")),
                       "set normalize_path: true, merge_slashes: true, path_with_escaped_slashes_action: REJECT_REQUEST on the "
                       "HTTP connection manager: the filter maps each path to an SP-API operation, and /orders//v0/%2e%2e/… "
                       "must not reach Amazon as something the filter did not decide on")
            hops = int(((policy or {}).get("access") or {}).get("xffTrustedHops", 0))
            lint.check(hcm.get("use_remote_address") is True and int(hcm.get("xff_num_trusted_hops", 0)) == hops,
                       "client-address", where,
                       f"use_remote_address: {hcm.get('use_remote_address', 'unset')}, xff_num_trusted_hops: "
                       f"{hcm.get('xff_num_trusted_hops', 0)} (policy access.xffTrustedHops: {hops})",
                       f"set use_remote_address: true and xff_num_trusted_hops: {hops}: otherwise the address the allow lists "
                       "check comes from a client-supplied X-Forwarded-For")
            lint_access_logs(lint, where, hcm.get("access_log"))
            lint_filters(lint, where, hcm, ecds, policy)
            lint_routes(lint, where, hcm)
            routed |= routed_clusters(hcm)
        limit = int(listener.get("per_connection_buffer_limit_bytes", DEFAULT_BUFFER_LIMIT))
        for policy in {json.dumps(p, sort_keys=True) for p in policies if p is not None}:
            policy = json.loads(policy)
            want = int(policy.get("bufferLimitBytes", POLICY_DEFAULT_BUFFER))
            body = int(policy.get("maxBodyBytes", POLICY_DEFAULT_MAX_BODY))
            lint.check(limit >= want and want >= 3 * body, "buffer-limit", f"listener {lname}",
                       f"per_connection_buffer_limit_bytes {limit}, policy bufferLimitBytes {want}, maxBodyBytes {body} "
                       f"(tokenized bodies grow up to 3x: {3 * body})",
                       f"set the listener's per_connection_buffer_limit_bytes to the policy's bufferLimitBytes ({want}), and "
                       f"keep bufferLimitBytes >= 3 x maxBodyBytes: otherwise Envoy overflows (500 or a reset) before the "
                       f"filter can refuse cleanly")
    lint.check(guarded > 0, "wasm-present", lint.source, "no listener runs the spapi-guard Wasm filter "
               "(an envoy.filters.http.wasm with root_id spapi-guard)",
               "add the filter (see envoy/envoy.template.yaml), or lint the config that has it")
    for cluster in clusters:
        lint_cluster(lint, cluster, cluster.get("name") in routed)


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(argv) >= 2 else 2
    failed = 0
    total_passed = total_failed = 0
    for path in argv[1:]:
        lint = Lint(path)
        try:
            with open(path, encoding="utf-8") as f:
                doc = yaml.safe_load(f)
            if not isinstance(doc, dict):
                raise ValueError("not a YAML/JSON mapping")
        except (OSError, ValueError, yaml.YAMLError) as e:
            print(f"{path}: cannot read: {e}", file=sys.stderr)
            return 2
        lint_doc(lint, doc)
        for check_id, where, problem, fix in lint.failures:
            print(f"{path}: FAIL {check_id}: {where}: {problem}\n    fix: {fix}")
        for note in lint.notes:
            print(f"{path}: note: {note}")
        status = "ok" if not lint.failures else "FAILED"
        print(f"{path}: {status} ({lint.passed} checks passed, {len(lint.failures)} failed)")
        total_passed += lint.passed
        total_failed += len(lint.failures)
        failed += bool(lint.failures)
    print(f"lint-envoy: {total_passed} passed, {total_failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
