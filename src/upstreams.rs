//! Approved third-party upstreams (a carrier API, a label service, an email provider): the only
//! destinations besides the SP-API that ever receive detokenized data.
//!
//! The policy names each upstream with a route prefix, its address and its TLS settings. Envoy
//! gets one route (the prefix, rewritten to `/`) and one TLS cluster per upstream
//! (`scripts/render-envoy-config.py`, cluster `upstream_<name>`); the filter routes the paths
//! under the prefix to the upstream's own operations (`<name>.<operationId>` in the catalog), so
//! access decisions, reveal grants, response protection and the audit log all treat them as
//! operations. Because Envoy, not the filter, picks where a request goes, every forwarded
//! request is bound to the cluster Envoy selected for it (`xds.cluster_name`): a request the
//! filter decided for an upstream must go to that upstream's cluster, a request it decided for
//! the SP-API to none of the upstreams' clusters, and a request with a reveal grant toward the
//! SP-API to an SP-API cluster (`spapiClusters`).
use serde::Deserialize;
use std::collections::BTreeMap;

use crate::catalog::OperationDoc;
use crate::config_error::ConfigError;
use crate::uri;

/// The Envoy cluster of an upstream is this prefix and its name.
pub const CLUSTER_PREFIX: &str = "upstream_";
/// The clusters that lead to the SP-API when the policy does not say: the names
/// `scripts/render-envoy-config.py` gives them (`spapi` in the demo, `spapi-na`… in production).
pub const DEFAULT_SPAPI_CLUSTERS: [&str; 2] = ["spapi", "spapi-*"];
/// Longest upstream name (it is part of operation ids, cluster names and metric labels).
const MAX_NAME: usize = 32;

/// One upstream of the policy's `upstreams` map.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamDoc {
    /// Whole path segments (`/upstreams/carrier/`): requests under it go to this upstream, with
    /// the prefix replaced by `/`.
    pub route_prefix: String,
    pub address: AddressDoc,
    pub tls: TlsDoc,
    /// What happens to its responses: `protect` (default: by its operations' `responsePii` and
    /// `customerObjects`, like SP-API responses) or `pass` (never inspected).
    #[serde(default)]
    pub responses: Option<String>,
    /// Its operations: `{id, method, pathTemplate, responsePii, queryPii, customerObjects}`, the
    /// path template as the upstream sees it (after the prefix).
    pub operations: Vec<OperationDoc>,
}

/// Where the upstream listens.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressDoc {
    /// A DNS name or an IP address.
    pub host: String,
    pub port: u16,
}

/// TLS toward the upstream: always on, the certificate always verified.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsDoc {
    /// PEM file of the CAs trusted for this upstream (an absolute path where Envoy runs).
    pub ca_file: String,
    /// The name sent as SNI and as the Host header, and required as a DNS SAN of the upstream's
    /// certificate (default: `address.host`).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// What the filter does with an upstream's responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Responses {
    /// Protected where its operations name PII (paths, customer objects, the drift detectors),
    /// exactly like SP-API responses; operations without PII stream unchanged.
    Protect,
    /// Passed unchanged, never inspected: the policy says the upstream returns no customer data.
    Pass,
}

impl Responses {
    pub fn as_str(self) -> &'static str {
        match self {
            Responses::Protect => "protect",
            Responses::Pass => "pass",
        }
    }
}

/// A compiled upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// The route prefix without its trailing `/` (`/upstreams/carrier`).
    pub prefix: String,
    /// The prefix as decoded segments.
    pub segments: Vec<String>,
    /// The Envoy cluster that leads to it (`upstream_<name>`).
    pub cluster: String,
    pub host: String,
    pub port: u16,
    pub server_name: String,
    pub ca_file: String,
    pub responses: Responses,
}

/// The policy's upstreams and the clusters that lead to the SP-API.
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub list: Vec<Upstream>,
    /// Envoy cluster names (with `*` wildcards) that lead to the SP-API.
    pub spapi_clusters: Vec<String>,
}

/// Why a request may not go where Envoy would send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongDestination;

impl Upstreams {
    /// Compiles the `upstreams` map and `spapiClusters`. `pass_through` is
    /// `access.passThroughPaths` (a prefix may not overlap them). Errors name the field.
    pub fn build(docs: &BTreeMap<String, UpstreamDoc>, spapi_clusters: Option<&[String]>, pass_through: &[String]) -> Result<Upstreams, ConfigError> {
        let mut list: Vec<Upstream> = Vec::with_capacity(docs.len());
        for (name, doc) in docs {
            let at = format!("upstreams.{name}");
            if !is_name(name) {
                return Err(ConfigError::new(at, format!("'{name}' is not an upstream name; use 1 to {MAX_NAME} of a-z 0-9 - (starting with a letter), e.g. carrier")));
            }
            let prefix = doc.route_prefix.strip_suffix('/').unwrap_or(&doc.route_prefix).to_string();
            let segments = prefix_segments(&prefix).ok_or_else(|| {
                ConfigError::new(
                    format!("{at}.routePrefix"),
                    format!("'{}' must be one or more whole path segments of a-z A-Z 0-9 - . _ ~ (no percent-encoding), like /upstreams/{name}/", doc.route_prefix),
                )
            })?;
            if let Some(other) = list.iter().find(|u| starts_with(&u.segments, &segments) || starts_with(&segments, &u.segments)) {
                return Err(ConfigError::new(
                    format!("{at}.routePrefix"),
                    format!("'{}' overlaps the prefix of upstreams.{} ({}/); give each upstream a prefix of its own", doc.route_prefix, other.name, other.prefix),
                ));
            }
            let reveal: Vec<String> = uri::path_segments(crate::exchange::REVEAL_PATH).map(|s| s.into_iter().map(|c| c.into_owned()).collect()).unwrap_or_default();
            if starts_with(&reveal, &segments) {
                return Err(ConfigError::new(
                    format!("{at}.routePrefix"),
                    format!("'{}' covers the reveal endpoint {}; choose another prefix", doc.route_prefix, crate::exchange::REVEAL_PATH),
                ));
            }
            for (i, p) in pass_through.iter().enumerate() {
                let theirs: Vec<String> = p.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
                if starts_with(&theirs, &segments) || starts_with(&segments, &theirs) {
                    return Err(ConfigError::new(
                        format!("{at}.routePrefix"),
                        format!("'{}' overlaps access.passThroughPaths[{i}] ({p}), which leads to the SP-API; choose a prefix of its own", doc.route_prefix),
                    ));
                }
            }
            let host = doc.address.host.trim();
            if !is_host(host) {
                return Err(ConfigError::new(format!("{at}.address.host"), format!("'{}' must be a DNS name or an IP address", doc.address.host)));
            }
            if doc.address.port == 0 {
                return Err(ConfigError::new(format!("{at}.address.port"), "must be a port number, 1 to 65535 (443 for HTTPS)"));
            }
            let server_name = doc.tls.server_name.as_deref().unwrap_or(host);
            if !is_dns_name(server_name) {
                return Err(ConfigError::new(
                    format!("{at}.tls.serverName"),
                    format!("'{server_name}' must be the DNS name the upstream's certificate holds (it is sent as SNI and checked as a DNS SAN); set tls.serverName when address.host is an IP address"),
                ));
            }
            let ca = doc.tls.ca_file.trim();
            if !ca.starts_with('/') || ca.chars().any(|c| c.is_control() || c == '\'' || c == '"') {
                return Err(ConfigError::new(
                    format!("{at}.tls.caFile"),
                    "must be the absolute path of a PEM file of the CAs that issue the upstream's certificate, where Envoy runs (certificate validation is always on)",
                ));
            }
            let responses = match doc.responses.as_deref() {
                None | Some("protect") => Responses::Protect,
                Some("pass") => Responses::Pass,
                Some(other) => return Err(ConfigError::new(format!("{at}.responses"), format!("'{other}' is not a response mode; use protect (default) or pass"))),
            };
            if doc.operations.is_empty() {
                return Err(ConfigError::new(format!("{at}.operations"), "is empty; list the upstream's operations (id, method, pathTemplate) callers may use"));
            }
            for (i, op) in doc.operations.iter().enumerate() {
                let at = format!("{at}.operations[{i}]");
                if op.id.is_empty() || op.id.len() > 64 || !op.id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(ConfigError::new(
                        format!("{at}.id"),
                        format!("'{}' must be an operation name of letters and digits (createShipment); its id is {name}.<id>", op.id),
                    ));
                }
                if responses == Responses::Pass && (!op.response_pii.is_empty() || !op.customer_objects.is_empty()) {
                    return Err(ConfigError::new(
                        format!("{at}.responsePii"),
                        "names response PII, but the upstream's responses are 'pass' (never inspected); set responses to protect, or remove responsePii and customerObjects",
                    ));
                }
            }
            list.push(Upstream {
                name: name.clone(),
                cluster: format!("{CLUSTER_PREFIX}{name}"),
                prefix,
                segments,
                host: host.to_string(),
                port: doc.address.port,
                server_name: server_name.to_string(),
                ca_file: ca.to_string(),
                responses,
            });
        }
        let spapi_clusters: Vec<String> = match spapi_clusters {
            Some(names) => names.to_vec(),
            None => DEFAULT_SPAPI_CLUSTERS.iter().map(|s| s.to_string()).collect(),
        };
        for (i, pattern) in spapi_clusters.iter().enumerate() {
            let at = format!("spapiClusters[{i}]");
            if pattern.is_empty() || pattern == "*" || pattern.chars().any(char::is_control) {
                return Err(ConfigError::new(at, "must be the name of an Envoy cluster that leads to the SP-API (spapi-na), with * wildcards (spapi-*), and not * alone"));
            }
            if let Some(u) = list.iter().find(|u| crate::access::glob(pattern, &u.cluster)) {
                return Err(ConfigError::new(
                    at,
                    format!("'{pattern}' matches {}, the cluster of upstreams.{}; name only the clusters that lead to the SP-API", u.cluster, u.name),
                ));
            }
        }
        Ok(Upstreams { list, spapi_clusters })
    }

    /// Whether a request the filter decided for `upstream` (an index in `list`; `None`: the
    /// SP-API) may go to `cluster`, the cluster Envoy selected (`None`: no route, Envoy answers
    /// itself). `revealing`: the caller may reveal tokens in it.
    pub fn check_destination(&self, upstream: Option<usize>, cluster: Option<&str>, revealing: bool) -> Result<(), WrongDestination> {
        match upstream {
            Some(u) => match (self.list.get(u), cluster) {
                (Some(up), Some(c)) if up.cluster == c => Ok(()),
                _ => Err(WrongDestination),
            },
            None => {
                if cluster.is_some_and(|c| self.list.iter().any(|u| u.cluster == c)) {
                    return Err(WrongDestination);
                }
                if revealing && !cluster.is_some_and(|c| self.spapi_clusters.iter().any(|p| crate::access::glob(p, c))) {
                    return Err(WrongDestination);
                }
                Ok(())
            }
        }
    }
}

impl Upstreams {
    /// Whether responses of this destination are passed unread (`responses: "pass"`).
    pub fn passes_unread(&self, upstream: Option<usize>) -> bool {
        upstream.and_then(|u| self.list.get(u)).is_some_and(|u| u.responses == Responses::Pass)
    }
}

/// Whether `path` starts with all of `prefix`'s segments.
fn starts_with(path: &[String], prefix: &[String]) -> bool {
    path.len() >= prefix.len() && prefix.iter().zip(path).all(|(a, b)| a == b)
}

/// The segments of a route prefix: unreserved characters only, so that Envoy's prefix match on
/// the raw path and the filter's on the decoded one agree.
fn prefix_segments(prefix: &str) -> Option<Vec<String>> {
    let rest = prefix.strip_prefix('/')?;
    let segments: Vec<String> = rest.split('/').map(str::to_string).collect();
    let ok = segments.iter().all(|s| !s.is_empty() && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)));
    ok.then_some(segments)
}

fn is_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len()) && name.starts_with(|c: char| c.is_ascii_lowercase()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_dns_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|l| (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-') && !l.ends_with('-'))
}

fn is_host(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok() || is_dns_name(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(json: &str) -> BTreeMap<String, UpstreamDoc> {
        serde_json::from_str(json).expect("parses")
    }

    const CARRIER: &str = r#"{"carrier":{"routePrefix":"/upstreams/carrier/","address":{"host":"api.carrier.example","port":443},
        "tls":{"caFile":"/etc/spapi-guard/carrier-ca.pem"},"operations":[{"id":"createShipment","method":"POST","pathTemplate":"/v1/shipments"}]}}"#;

    #[test]
    fn an_upstream_compiles_with_its_cluster_and_tls_defaults() {
        let u = Upstreams::build(&doc(CARRIER), None, &[]).expect("valid");
        let c = &u.list[0];
        assert_eq!((c.name.as_str(), c.prefix.as_str(), c.cluster.as_str()), ("carrier", "/upstreams/carrier", "upstream_carrier"));
        assert_eq!((c.server_name.as_str(), c.port, c.responses), ("api.carrier.example", 443, Responses::Protect));
        assert_eq!(u.spapi_clusters, vec!["spapi", "spapi-*"]);
    }

    #[test]
    fn errors_name_the_field() {
        let with = |from: &str, to: &str| CARRIER.replace(from, to);
        let cases = [
            (with("\"carrier\":", "\"Carrier\":"), "upstreams.Carrier", "not an upstream name"),
            (with("/upstreams/carrier/", "/upstreams/%63arrier/"), "upstreams.carrier.routePrefix", "whole path segments"),
            (with("/upstreams/carrier/", "/"), "upstreams.carrier.routePrefix", "whole path segments"),
            (with("/upstreams/carrier/", "/upstreams/../x/"), "upstreams.carrier.routePrefix", "whole path segments"),
            (with("/upstreams/carrier/", "/spapi-guard/"), "upstreams.carrier.routePrefix", "reveal endpoint"),
            (with("api.carrier.example", "127.0.0.1"), "upstreams.carrier.tls.serverName", "set tls.serverName"),
            (with("api.carrier.example", "bad host"), "upstreams.carrier.address.host", "DNS name"),
            (with("443", "0"), "upstreams.carrier.address.port", "port number"),
            (with("/etc/spapi-guard/carrier-ca.pem", "carrier-ca.pem"), "upstreams.carrier.tls.caFile", "absolute path"),
            (with("\"tls\":{", "\"responses\":\"scan\",\"tls\":{"), "upstreams.carrier.responses", "protect (default) or pass"),
            (with("{\"id\":\"createShipment\"", "{\"id\":\"create.shipment\""), "upstreams.carrier.operations[0].id", "letters and digits"),
            (
                with("\"pathTemplate\":\"/v1/shipments\"", "\"pathTemplate\":\"/v1/shipments\",\"responsePii\":[{\"jsonpath\":\"$.to\",\"class\":\"address\"}]")
                    .replace("\"tls\":{", "\"responses\":\"pass\",\"tls\":{"),
                "upstreams.carrier.operations[0].responsePii",
                "never inspected",
            ),
        ];
        for (json, field, text) in cases {
            let e = Upstreams::build(&doc(&json), None, &[]).expect_err(&json);
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(text), "{e}");
        }
        let e =
            Upstreams::build(&doc(&with("\"operations\":[{\"id\":\"createShipment\",\"method\":\"POST\",\"pathTemplate\":\"/v1/shipments\"}]", "\"operations\":[]")), None, &[])
                .expect_err("no operations");
        assert_eq!(e.field, "upstreams.carrier.operations");
        let e = Upstreams::build(&doc(CARRIER), None, &["/upstreams/".to_string()]).expect_err("pass-through overlap");
        assert!(e.field == "upstreams.carrier.routePrefix" && e.message.contains("passThroughPaths[0]"), "{e}");
        let e = Upstreams::build(&doc(CARRIER), Some(&["upstream_*".to_string()]), &[]).expect_err("spapi clusters");
        assert!(e.field == "spapiClusters[0]" && e.message.contains("upstream_carrier"), "{e}");
        let e = Upstreams::build(&doc(CARRIER), Some(&["*".to_string()]), &[]).expect_err("spapi clusters");
        assert_eq!(e.field, "spapiClusters[0]");
    }

    #[test]
    fn two_upstreams_may_not_share_a_prefix() {
        let two = CARRIER.replace("{\"carrier\":", "{\"label\":").replace("}]}}", "}]},") + &CARRIER[1..].replace("/upstreams/carrier/", "/upstreams/carrier/eu/");
        let e = Upstreams::build(&doc(&two), None, &[]).expect_err("nested prefixes");
        assert!(e.field == "upstreams.label.routePrefix" && e.message.contains("upstreams.carrier"), "{e}");
    }

    #[test]
    fn requests_are_bound_to_the_cluster_envoy_selected() {
        let u = Upstreams::build(&doc(CARRIER), None, &[]).expect("valid");
        // Decided for the carrier: only its cluster.
        assert_eq!(u.check_destination(Some(0), Some("upstream_carrier"), true), Ok(()));
        for cluster in [Some("spapi"), Some("upstream_carrierx"), None] {
            assert_eq!(u.check_destination(Some(0), cluster, false), Err(WrongDestination), "{cluster:?}");
        }
        // Decided for the SP-API: never an upstream's cluster; with a grant, an SP-API cluster.
        assert_eq!(u.check_destination(None, Some("upstream_carrier"), false), Err(WrongDestination));
        assert_eq!(u.check_destination(None, Some("spapi-eu"), true), Ok(()));
        assert_eq!(u.check_destination(None, Some("internal"), false), Ok(()));
        assert_eq!(u.check_destination(None, None, false), Ok(()));
        for cluster in [Some("internal"), None] {
            assert_eq!(u.check_destination(None, cluster, true), Err(WrongDestination), "{cluster:?}");
        }
    }
}
