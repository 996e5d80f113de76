//! Prometheus metrics the filter emits, and how their labels travel through Envoy.
//!
//! The proxy-wasm ABI has no metric labels, so labels are encoded in the stat name the way Istio
//! does it — `label=.=value;.;` segments before the metric name — and the Envoy config's
//! `stats_config.stats_tags` extracts them again (`envoy/envoy.template.yaml`). On
//! `/stats/prometheus` a counter then reads `spapi_guard_requests_total{operation="…",decision="…"}`.
//! Every label's values are bounded: operation ids of the catalog, reason codes, PII classes and
//! actions, and the callers listed in the policy (never raw, unknown identities).

/// A metric the filter emits: name, labels, help text.
pub struct MetricSpec {
    pub name: &'static str,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// Every metric, for the docs, the Envoy config's tag extraction and the alert rule checks.
pub const METRICS: &[MetricSpec] = &[
    MetricSpec {
        name: "spapi_guard_requests_total",
        labels: &["operation", "decision"],
        help: "Requests by catalog operation (`none` outside the catalog) and decision (allow, deny, dry_run_deny, lockout, fail_closed).",
    },
    MetricSpec { name: "spapi_guard_denials_total", labels: &["reason"], help: "Denied requests by reason code (dry-run denials included, with their reason)." },
    MetricSpec {
        name: "spapi_guard_caller_requests_total",
        labels: &["caller"],
        help: "Requests by caller id (`unknown` for identities the policy does not list, `none` without identity).",
    },
    MetricSpec { name: "spapi_guard_caller_denials_total", labels: &["caller"], help: "Denied requests by caller id." },
    MetricSpec { name: "spapi_guard_caller_pii_fields_total", labels: &["caller"], help: "PII values delivered (in any form but removed) by caller id." },
    MetricSpec {
        name: "spapi_guard_pii_fields_total",
        labels: &["class", "action"],
        help: "PII values by class and what was done to them (tokenized, hashed, redacted, clear, removed, coarsened).",
    },
    MetricSpec { name: "spapi_guard_fail_closed_total", labels: &["reason"], help: "Responses replaced by an error because they could not be protected, by reason." },
    MetricSpec {
        name: "spapi_guard_aborted_total",
        labels: &["reason"],
        help: "Exchanges that ended (reset, disconnect) while the filter held a body it had not finished checking or rewriting; nothing of that body was released.",
    },
    MetricSpec { name: "spapi_guard_lockouts_total", labels: &["trigger"], help: "Lockouts started, by trigger (denials, pii_volume)." },
    MetricSpec { name: "spapi_guard_canary_hits_total", labels: &["canary"], help: "Canary records seen in a request or response, by canary id." },
    MetricSpec {
        name: "spapi_guard_schema_drift_total",
        labels: &["operation", "kind", "action", "path"],
        help: "PII the catalog's paths do not name, by operation, what found it (member: a customer object's allow list; email, phone, address, name: a detector; zero_match: nothing matched but keys look like PII), what was done (protected, reported) and the JSON path template (`other` past 256 per VM).",
    },
    MetricSpec { name: "spapi_guard_config_total", labels: &["result"], help: "Configurations loaded or rejected (per Wasm VM)." },
    MetricSpec { name: "spapi_guard_body_bytes_total", labels: &["direction"], help: "Response body bytes processed: upstream (received) and downstream (sent)." },
    MetricSpec {
        name: "spapi_guard_documents_total",
        labels: &["report_type", "format", "result"],
        help: "Report documents downloaded through the proxy, by report type (`unknown` when not learned, `other` outside the built-in report catalog), format (tsv, csv, xml, json, binary, unknown) and result (complete, refused before any byte, reset mid-stream, aborted by a peer, binary delivered as is).",
    },
    MetricSpec { name: "spapi_guard_document_rows_total", labels: &["report_type"], help: "Data rows of report documents rewritten, by report type." },
    MetricSpec {
        name: "spapi_guard_key_tokens_total",
        labels: &["key_id", "mode"],
        help: "Tokens made per key and mode (deterministic, randomized): randomized nonces are bounded per key (docs/TOKENS.md).",
    },
    MetricSpec {
        name: "spapi_guard_token_refusals_total",
        labels: &["reason"],
        help: "Tokens the filter refused to open (detokenization, the reveal endpoint), by reason: token_expired (a key past its notAfter) or invalid_token.",
    },
    MetricSpec {
        name: "spapi_guard_key_info",
        labels: &["key_id", "state"],
        help: "Gauge per key of the ring and state (pending, active, readable, expired): 1 for the key's state, 0 for the others.",
    },
    MetricSpec {
        name: "spapi_guard_key_active_until_seconds",
        labels: &["class"],
        help: "Gauge per PII class: Unix time at which its run of active keys ends (0: no active key now; 253402300799: keys without dates).",
    },
];

/// The metrics of [`METRICS`] that are gauges (set, not counted).
pub const GAUGES: &[&str] = &["spapi_guard_key_info", "spapi_guard_key_active_until_seconds"];

/// The Envoy stat name of a counter with its labels encoded.
pub fn stat_name(metric: &str, labels: &[(&str, &str)]) -> String {
    let mut name = String::with_capacity(metric.len() + 32 * labels.len());
    write_stat_name(&mut name, metric, labels);
    name
}

/// Writes the stat name into `name` (cleared first): the hot path reuses one buffer.
pub fn write_stat_name(name: &mut String, metric: &str, labels: &[(&str, &str)]) {
    name.clear();
    for (label, value) in labels {
        name.push_str(label);
        name.push_str("=.=");
        push_label_value(name, value);
        name.push_str(";.;");
    }
    name.push_str(metric);
}

/// A label value safe inside a stat name: the encoding's delimiters and anything unusual become `_`.
pub fn label_value(value: &str) -> String {
    let mut v = String::new();
    push_label_value(&mut v, value);
    v
}

fn push_label_value(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push_str("none");
        return;
    }
    // `$[]*` for JSON path templates (`$.payload.Orders[*].BuyerInfo.X`); never the encoding's `;`
    // or `=`.
    out.extend(value.chars().take(200).map(|c| if c.is_ascii_alphanumeric() || "-_./:@$[]*".contains(c) { c } else { '_' }));
}

/// The `stats_tags` entries that decode the labels (rendered into the Envoy config).
pub fn tag_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = METRICS.iter().flat_map(|m| m.labels.iter().copied()).collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_labels_istio_style() {
        assert_eq!(
            stat_name("spapi_guard_requests_total", &[("operation", "orders-v0.getOrder"), ("decision", "allow")]),
            "operation=.=orders-v0.getOrder;.;decision=.=allow;.;spapi_guard_requests_total"
        );
        assert_eq!(label_value("spiffe://a.b/c d;e=f"), "spiffe://a.b/c_d_e_f");
        assert_eq!(label_value(""), "none");
        assert_eq!(label_value("$.payload.Orders[*].BuyerInfo.*"), "$.payload.Orders[*].BuyerInfo.*");
    }

    #[test]
    fn every_metric_is_named_and_labelled_consistently() {
        for m in METRICS {
            let gauge = GAUGES.contains(&m.name);
            assert!(m.name.starts_with("spapi_guard_") && m.name.ends_with("_total") != gauge, "{}", m.name);
            assert!(!m.labels.is_empty());
        }
        for (name, _) in [(crate::key_status::KEY_INFO, 0), (crate::key_status::ACTIVE_UNTIL, 0), (crate::key_status::KEY_TOKENS, 1), (crate::key_status::TOKEN_REFUSALS, 1)] {
            assert!(METRICS.iter().any(|m| m.name == name), "{name} is not in METRICS");
        }
        assert!(GAUGES.iter().all(|g| METRICS.iter().any(|m| m.name == *g)));
        assert!(tag_names().contains(&"operation"));
    }

    /// The Envoy template extracts every label the filter encodes (a label without its
    /// stats_tags entry would silently turn into part of the metric name).
    #[test]
    fn the_envoy_template_extracts_every_label() {
        let template = include_str!("../envoy/envoy.template.yaml");
        for tag in tag_names() {
            let entry = format!("- tag_name: {tag}\n    regex: \"({tag}=\\\\.=(.*?);\\\\.;)\"");
            assert!(template.contains(&entry), "envoy/envoy.template.yaml has no stats_tags entry for {tag}");
        }
    }
}
