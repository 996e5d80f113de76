//! Maps a request (method + path) to an SP-API operation by its path template.
//!
//! Envoy has no per-route Wasm configuration, so the filter routes for itself. Templates are
//! matched segment by segment against the decoded segments of [`crate::uri`] (what the SP-API
//! sees); a path `uri` refuses (dot, empty, encoded-slash or backslash segments, bad encodings)
//! routes nowhere. Where several templates match (`/fulfillmentOrders/preview` and
//! `/fulfillmentOrders/{id}`), the one with a literal segment earliest wins, as in OpenAPI.
use std::borrow::Cow;

use crate::uri;

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

/// A parsed path template such as `/orders/v0/orders/{orderId}/address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<PathTemplate, String> {
        let rest = template.strip_prefix('/').ok_or("must start with '/'")?;
        let mut segments = Vec::new();
        for part in rest.split('/') {
            if part.is_empty() {
                return Err("has an empty segment".into());
            }
            if part.starts_with('{') && part.ends_with('}') && part.len() > 2 {
                segments.push(Segment::Param);
            } else if part.contains(['{', '}', '?', '#']) {
                return Err("has a malformed segment; parameters are whole segments like {orderId}".into());
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(PathTemplate { segments })
    }

    /// Whether decoded, checked segments (never empty, never dot segments) fit the template.
    fn matches(&self, parts: &[Cow<str>]) -> bool {
        self.segments.len() == parts.len()
            && self.segments.iter().zip(parts).all(|(s, p)| match s {
                Segment::Literal(l) => l == p,
                Segment::Param => !p.is_empty(),
            })
    }

    /// The literal segments (`orders`, `v0`…), parameters left out.
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Literal(l) => Some(l.as_str()),
            Segment::Param => None,
        })
    }

    /// Whether some path under `prefix` (decoded segments, then at least one more) could fit the
    /// template: each prefix segment meets a parameter or the same literal, and the template is
    /// longer than the prefix.
    pub fn may_extend(&self, prefix: &[String]) -> bool {
        self.segments.len() > prefix.len()
            && self.segments.iter().zip(prefix).all(|(s, p)| match s {
                Segment::Literal(l) => l == p,
                Segment::Param => true,
            })
    }

    /// Orders templates so that literal segments beat parameters, position by position.
    fn specificity(&self) -> Vec<bool> {
        self.segments.iter().map(|s| matches!(s, Segment::Literal(_))).collect()
    }
}

/// The routing table: (method, template) → operation index.
#[derive(Default)]
pub struct Router {
    routes: Vec<(String, PathTemplate, usize)>,
}

impl Router {
    /// Adds a route. Fails if the same method and template are already routed.
    pub fn add(&mut self, method: &str, template: PathTemplate, operation: usize) -> Result<(), usize> {
        if let Some((_, _, existing)) = self.routes.iter().find(|(m, t, _)| m == method && *t == template) {
            return Err(*existing);
        }
        self.routes.push((method.to_string(), template, operation));
        Ok(())
    }

    /// The operation a request is for. `path` is the raw request target, query included; a target
    /// [`uri::parse`] refuses routes nowhere.
    pub fn route(&self, method: &str, path: &str) -> Option<usize> {
        let target = uri::parse(path).ok()?;
        self.route_segments(method, &target.segments)
    }

    /// The operation of already decoded and checked path segments.
    pub fn route_segments(&self, method: &str, segments: &[Cow<str>]) -> Option<usize> {
        self.routes.iter().filter(|(m, t, _)| m == method && t.matches(segments)).max_by(|a, b| a.1.specificity().cmp(&b.1.specificity())).map(|(_, _, op)| *op)
    }

    /// Every template's literal segments.
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().flat_map(|(_, t, _)| t.literals())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let mut r = Router::default();
        let routes = [
            ("GET", "/orders/v0/orders", 0),
            ("GET", "/orders/v0/orders/{orderId}", 1),
            ("GET", "/orders/v0/orders/{orderId}/address", 2),
            ("POST", "/fba/outbound/2020-07-01/fulfillmentOrders/preview", 3),
            ("POST", "/fba/outbound/2020-07-01/fulfillmentOrders/{id}", 4),
        ];
        for (m, t, op) in routes {
            r.add(m, PathTemplate::parse(t).expect("template"), op).expect("unique");
        }
        r
    }

    #[test]
    fn routes_by_method_and_template() {
        let r = router();
        assert_eq!(r.route("GET", "/orders/v0/orders?CreatedAfter=2020"), Some(0));
        assert_eq!(r.route("GET", "/orders/v0/orders/123-456"), Some(1));
        assert_eq!(r.route("GET", "/orders/v0/orders/123-456/address"), Some(2));
        assert_eq!(r.route("POST", "/orders/v0/orders/123-456/address"), None);
        assert_eq!(r.route("GET", "/orders/v0/orders//address"), None);
        assert_eq!(r.route("GET", "/orders/v0/orders/123/address/"), None);
        assert_eq!(r.route("GET", "orders/v0/orders"), None);
    }

    #[test]
    fn refuses_dot_empty_slash_and_backslash_segments() {
        let r = router();
        for path in [
            "/orders/v0/orders/.",
            "/orders/v0/orders/..",
            "/orders/v0/orders/%2E",
            "/orders/v0/orders/%2e%2E",
            "/orders/v0/orders/..;x",
            "/orders/v0/orders/1%2F2",
            "/orders/v0/orders/1%5C2",
            "/orders/v0/orders/1\\2",
            "/orders/v0/orders/1%0A",
            "/orders/v0/orders/%ZZ",
            "/orders/v0/orders/1#x",
            "/orders/v0/orders/1?x=%ZZ",
        ] {
            assert_eq!(r.route("GET", path), None, "{path}");
        }
    }

    #[test]
    fn matches_decoded_segments() {
        let r = router();
        assert_eq!(r.route("GET", "/orders/v0/%6Frders/123"), Some(1), "Amazon decodes %6F too");
        assert_eq!(r.route("GET", "/orders/v0/orders/123%2D4/address"), Some(2));
        assert_eq!(r.route("GET", "/orders/v0/orders?CreatedAfter=2020-01-01T00%3A00%3A00Z"), Some(0));
    }

    #[test]
    fn literal_beats_parameter() {
        let r = router();
        assert_eq!(r.route("POST", "/fba/outbound/2020-07-01/fulfillmentOrders/preview"), Some(3));
        assert_eq!(r.route("POST", "/fba/outbound/2020-07-01/fulfillmentOrders/abc"), Some(4));
    }

    #[test]
    fn refuses_bad_templates_and_duplicates() {
        for bad in ["orders", "/a//b", "/a/{b", "/a/x{b}", "/a/{}"] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
        let mut r = router();
        assert_eq!(r.add("GET", PathTemplate::parse("/orders/v0/orders/{other}").expect("t"), 9), Err(1));
    }
}
