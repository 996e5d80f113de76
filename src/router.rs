//! Maps a request (method + path) to an SP-API operation by its path template.
//!
//! Envoy has no per-route Wasm configuration, so the filter routes for itself. Templates are
//! matched segment by segment; where several match (`/fulfillmentOrders/preview` and
//! `/fulfillmentOrders/{id}`), the one with a literal segment earliest wins, as in OpenAPI.

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

    fn matches(&self, parts: &[&str]) -> bool {
        self.segments.len() == parts.len()
            && self.segments.iter().zip(parts).all(|(s, p)| match s {
                Segment::Literal(l) => l == p,
                Segment::Param => !p.is_empty(),
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

    /// The operation a request is for. `path` may carry a query string.
    pub fn route(&self, method: &str, path: &str) -> Option<usize> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let parts: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        self.routes
            .iter()
            .filter(|(m, t, _)| m == method && t.matches(&parts))
            .max_by(|a, b| a.1.specificity().cmp(&b.1.specificity()))
            .map(|(_, _, op)| *op)
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
