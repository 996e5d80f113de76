//! The SP-API PII catalog: which operation a request is, and where customer PII sits in it.
//!
//! The built-in catalog (`policies/spapi-catalog.json`, from Amazon's published API models) is
//! embedded at build time; a policy may add operations, add fields to an operation, or exclude
//! fields (`catalog` in the policy reference). Seller, vendor, Amazon-facility and carrier addresses
//! are listed per operation as protected paths: a PII rule that would reach one is refused at load.
use serde::Deserialize;
use std::collections::BTreeMap;

use crate::config_error::ConfigError;
use crate::field_path::FieldPath;
use crate::path_matcher::PathMatcher;
use crate::pii::PiiClass;
use crate::router::{PathTemplate, Router};
use crate::schema::{is_non_pii_member, FieldSchema};

/// The built-in catalog, as shipped in `policies/`.
pub const BUILTIN_CATALOG: &str = include_str!("../policies/spapi-catalog.json");

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

#[derive(Deserialize)]
struct CatalogFile {
    operations: Vec<CatalogOperation>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CatalogOperation {
    id: String,
    api: String,
    version: String,
    method: String,
    path_template: String,
    restricted: bool,
    response_pii: Vec<CatalogField>,
    /// Where requests of this operation carry PII (only whether there is any is used: the
    /// filter then reads those bodies for tokens to reveal or refuse).
    #[serde(default)]
    request_pii: Vec<serde::de::IgnoredAny>,
    query_pii: Vec<CatalogQueryField>,
    non_customer_paths: Vec<NonCustomerPath>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CatalogField {
    jsonpath: String,
    class: String,
    /// The RDT dataElement (Orders v0) or includedData value (Orders 2026-01-01) that unlocks it.
    data_element: Option<String>,
    /// What Amazon's model says of the value (scripts/merge-schema-facts.py).
    #[serde(default)]
    schema: Option<FieldSchema>,
}

#[derive(Deserialize)]
struct CatalogQueryField {
    param: String,
    class: String,
}

#[derive(Deserialize)]
struct NonCustomerPath {
    jsonpath: String,
}

/// A PII field in a policy's catalog section.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FieldDoc {
    pub jsonpath: String,
    pub class: String,
    /// The RDT dataElement or Orders includedData value that gates the field, if any.
    #[serde(default)]
    pub data_element: Option<String>,
}

/// A query parameter that carries PII.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct QueryField {
    pub param: String,
    pub class: String,
}

/// An operation a policy adds to the catalog.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OperationDoc {
    pub id: String,
    pub method: String,
    pub path_template: String,
    #[serde(default)]
    pub response_pii: Vec<FieldDoc>,
    #[serde(default)]
    pub query_pii: Vec<QueryField>,
}

/// Fields a policy adds to a built-in operation.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtendDoc {
    #[serde(default)]
    pub response_pii: Vec<FieldDoc>,
    #[serde(default)]
    pub query_pii: Vec<QueryField>,
}

/// The `catalog` section of a policy.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CatalogOverrides {
    /// New operations (for SP-API operations newer than the built-in catalog).
    #[serde(default)]
    pub operations: Vec<OperationDoc>,
    /// Extra PII fields of built-in operations, by operation id.
    #[serde(default)]
    pub extend: BTreeMap<String, ExtendDoc>,
    /// Catalog PII paths to leave untouched, by operation id.
    #[serde(default)]
    pub exclude: BTreeMap<String, Vec<String>>,
}

/// One PII field rule of a compiled operation.
#[derive(Debug, Clone)]
pub struct FieldRule {
    pub class: PiiClass,
    pub jsonpath: String,
    /// The RDT dataElement (Orders v0) or includedData value (Orders 2026-01-01) that unlocks it.
    pub data_element: Option<String>,
    /// What Amazon's model says of the value (built-in paths; `None` for a policy's own).
    pub schema: Option<FieldSchema>,
}

/// A compiled catalog operation.
pub struct Operation {
    /// Stable id, `<api-slug>.<operationId>`, e.g. `orders-v0.getOrder`.
    pub id: String,
    pub api: String,
    pub version: String,
    pub method: String,
    pub path_template: String,
    /// Amazon lists it as restricted (needs a Restricted Data Token).
    pub restricted: bool,
    /// Response PII rules; a matcher rule index is an index here.
    pub response_rules: Vec<FieldRule>,
    pub response_matcher: PathMatcher,
    /// Query parameters that carry PII.
    pub query_pii: Vec<(String, PiiClass)>,
    /// Requests of this operation carry customer PII in their body (Amazon's models): where an
    /// application sends data it holds as tokens.
    pub has_request_pii: bool,
}

impl Operation {
    /// Whether responses of this operation must be buffered and rewritten.
    pub fn has_response_pii(&self) -> bool {
        !self.response_rules.is_empty()
    }

    /// The classes of the response fields that `data_element` unlocks (all fields for `None`).
    pub fn classes_of<'a>(&'a self, data_element: Option<&'a str>) -> impl Iterator<Item = PiiClass> + 'a {
        self.response_rules.iter().filter(move |r| data_element.is_none() || r.data_element.as_deref() == data_element).map(|r| r.class)
    }
}

/// The compiled catalog with its router.
pub struct Catalog {
    pub operations: Vec<Operation>,
    router: Router,
}

struct Draft {
    id: String,
    api: String,
    version: String,
    method: String,
    path_template: String,
    restricted: bool,
    /// (field, where it came from for error messages, schema facts); policy fields first: they
    /// take priority.
    response: Vec<(FieldDoc, String, Option<FieldSchema>)>,
    /// Built-in paths that are not PII on their own (enumerations, country codes), with why.
    not_pii: Vec<(String, String)>,
    query: Vec<(QueryField, String)>,
    protected: Vec<String>,
    has_request_pii: bool,
}

impl Catalog {
    /// The built-in catalog with `overrides` applied. Errors name the policy field at fault.
    pub fn build(overrides: &CatalogOverrides) -> Result<Catalog, ConfigError> {
        let file: CatalogFile = serde_json::from_str(BUILTIN_CATALOG).map_err(|e| ConfigError::new("(built-in catalog)", format!("cannot be read: {e}; rebuild the filter")))?;
        let mut drafts: Vec<Draft> = file
            .operations
            .into_iter()
            .map(|op| {
                // Enumerations and country codes are not personal data on their own, and a token
                // in their place breaks clients (src/schema.rs): they stay clear.
                let (not_pii, pii): (Vec<_>, Vec<_>) =
                    op.response_pii.into_iter().partition(|f| is_non_pii_member(&f.jsonpath) || f.schema.as_ref().is_some_and(FieldSchema::is_enum));
                Draft {
                    not_pii: not_pii
                        .into_iter()
                        .map(|f| {
                            let why = match f.schema.as_ref().and_then(|s| s.values.as_ref()) {
                                Some(values) => format!("an enumeration ({})", values.join(", ")),
                                None => "a country code or address type".to_string(),
                            };
                            (f.jsonpath, why)
                        })
                        .collect(),
                    response: pii
                        .into_iter()
                        .map(|f| (FieldDoc { jsonpath: f.jsonpath, class: f.class, data_element: f.data_element }, format!("(built-in catalog) {}", op.id), f.schema))
                        .collect(),
                    query: op.query_pii.into_iter().map(|q| (QueryField { param: q.param, class: q.class }, format!("(built-in catalog) {}", op.id))).collect(),
                    protected: op.non_customer_paths.into_iter().map(|p| p.jsonpath).collect(),
                    has_request_pii: !op.request_pii.is_empty(),
                    id: op.id,
                    api: op.api,
                    version: op.version,
                    method: op.method,
                    path_template: op.path_template,
                    restricted: op.restricted,
                }
            })
            .collect();

        for (i, doc) in overrides.operations.iter().enumerate() {
            let at = format!("catalog.operations[{i}]");
            check_operation_id(&doc.id).map_err(|m| ConfigError::new(format!("{at}.id"), m))?;
            if drafts.iter().any(|d| d.id == doc.id) {
                return Err(ConfigError::new(format!("{at}.id"), format!("'{}' is already in the catalog; use catalog.extend to add fields to it", doc.id)));
            }
            if !METHODS.contains(&doc.method.as_str()) {
                return Err(ConfigError::new(format!("{at}.method"), format!("must be one of {}", METHODS.join(", "))));
            }
            drafts.push(Draft {
                id: doc.id.clone(),
                api: doc.id.split('.').next().unwrap_or_default().to_string(),
                version: String::new(),
                method: doc.method.clone(),
                path_template: doc.path_template.clone(),
                restricted: false,
                response: doc.response_pii.iter().enumerate().map(|(j, f)| (f.clone(), format!("{at}.responsePii[{j}]"), None)).collect(),
                not_pii: Vec::new(),
                query: doc.query_pii.iter().enumerate().map(|(j, q)| (q.clone(), format!("{at}.queryPii[{j}]"))).collect(),
                protected: Vec::new(),
                // A policy's own operation may carry anything: its request bodies are read.
                has_request_pii: true,
            });
        }

        for (id, ext) in &overrides.extend {
            let at = format!("catalog.extend.{id}");
            let draft = drafts.iter_mut().find(|d| &d.id == id).ok_or_else(|| unknown_operation(&at, id))?;
            let added: Vec<_> = ext.response_pii.iter().enumerate().map(|(j, f)| (f.clone(), format!("{at}.responsePii[{j}]"), None)).collect();
            draft.response.splice(0..0, added);
            draft.query.extend(ext.query_pii.iter().enumerate().map(|(j, q)| (q.clone(), format!("{at}.queryPii[{j}]"))));
        }

        for (id, paths) in &overrides.exclude {
            let at = format!("catalog.exclude.{id}");
            let draft = drafts.iter_mut().find(|d| &d.id == id).ok_or_else(|| unknown_operation(&at, id))?;
            for (j, path) in paths.iter().enumerate() {
                let before = draft.response.len();
                draft.response.retain(|(f, _, _)| &f.jsonpath != path);
                // A path the catalog already leaves clear (an enumeration) is excluded already.
                if draft.response.len() == before && !draft.not_pii.iter().any(|(p, _)| p == path) {
                    return Err(ConfigError::new(format!("{at}[{j}]"), format!("'{path}' is not a response PII path of {id}; copy the path from policies/spapi-catalog.json")));
                }
            }
        }

        let ids: Vec<String> = drafts.iter().map(|d| d.id.clone()).collect();
        let mut router = Router::default();
        let mut operations = Vec::with_capacity(drafts.len());
        for (index, draft) in drafts.into_iter().enumerate() {
            let template =
                PathTemplate::parse(&draft.path_template).map_err(|m| ConfigError::new(format!("{} pathTemplate", draft.id), format!("'{}' {m}", draft.path_template)))?;
            if let Err(other) = router.add(&draft.method, template, index) {
                return Err(ConfigError::new(
                    format!("{} pathTemplate", draft.id),
                    format!("{} {} is already the route of {}; give each operation its own method and path", draft.method, draft.path_template, ids[other]),
                ));
            }
            operations.push(compile(draft)?);
        }
        Ok(Catalog { operations, router })
    }

    /// The operation a request is for, if the catalog knows it.
    pub fn route(&self, method: &str, path: &str) -> Option<&Operation> {
        self.route_index(method, path).and_then(|i| self.operations.get(i))
    }

    /// The index in `operations` of the operation a request is for. `path` is the raw `:path`,
    /// query included; a path [`crate::uri`] refuses has no operation.
    pub fn route_index(&self, method: &str, path: &str) -> Option<usize> {
        self.router.route(method, path)
    }

    /// The index of the operation of decoded, checked path segments ([`crate::uri::Target`]).
    pub fn route_segments(&self, method: &str, segments: &[std::borrow::Cow<str>]) -> Option<usize> {
        self.router.route_segments(method, segments)
    }

    /// The literal segments of every operation's path template (`orders`, `v0`, `address`…).
    pub fn template_literals(&self) -> impl Iterator<Item = &str> {
        self.router.literals()
    }

    /// The operation with this id.
    pub fn get(&self, id: &str) -> Option<&Operation> {
        self.operations.iter().find(|o| o.id == id)
    }
}

fn compile(draft: Draft) -> Result<Operation, ConfigError> {
    let mut rules = Vec::with_capacity(draft.response.len());
    let mut paths = Vec::with_capacity(draft.response.len());
    for (field, at, schema) in &draft.response {
        let class = parse_class(&field.class).map_err(|m| ConfigError::new(format!("{at}.class"), m))?;
        if schema.is_none() {
            // A policy's own field: it may not turn a value that is not PII on its own into PII
            // (a token there is an invalid enum member for every typed client).
            let why = draft.not_pii.iter().find(|(p, _)| p == &field.jsonpath).map(|(_, why)| why.clone());
            let why = why.or_else(|| is_non_pii_member(&field.jsonpath).then(|| "a country code or address type".to_string()));
            if let Some(why) = why {
                return Err(ConfigError::new(
                    format!("{at}.jsonpath"),
                    format!("'{}' is {why}: not personal data on its own, and a token or mask there is an invalid value for Amazon's SDKs; remove this entry", field.jsonpath),
                ));
            }
        }
        let path = FieldPath::parse(&field.jsonpath).map_err(|m| ConfigError::new(format!("{at}.jsonpath"), format!("'{}' {m}", field.jsonpath)))?;
        rules.push(FieldRule { class, jsonpath: field.jsonpath.clone(), data_element: field.data_element.clone(), schema: schema.clone() });
        paths.push(path);
    }
    let protected = draft
        .protected
        .iter()
        .map(|p| FieldPath::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| ConfigError::new(format!("(built-in catalog) {}", draft.id), format!("non-customer path {m}")))?;
    let matcher = PathMatcher::compile(&paths, &protected).map_err(|c| {
        let (_, at, _) = &draft.response[c.rule];
        ConfigError::new(
            format!("{at}.jsonpath"),
            format!("'{}' reaches a seller, vendor, Amazon or carrier address that is not customer data; name the customer field instead", draft.response[c.rule].0.jsonpath),
        )
    })?;
    let mut query_pii = Vec::with_capacity(draft.query.len());
    for (q, at) in &draft.query {
        let class = parse_class(&q.class).map_err(|m| ConfigError::new(format!("{at}.class"), m))?;
        if q.param.is_empty() {
            return Err(ConfigError::new(format!("{at}.param"), "must name a query parameter"));
        }
        query_pii.push((q.param.clone(), class));
    }
    Ok(Operation {
        id: draft.id,
        api: draft.api,
        version: draft.version,
        method: draft.method,
        path_template: draft.path_template,
        restricted: draft.restricted,
        response_rules: rules,
        response_matcher: matcher,
        query_pii,
        has_request_pii: draft.has_request_pii,
    })
}

pub(crate) fn parse_class(name: &str) -> Result<PiiClass, String> {
    PiiClass::parse(name).ok_or_else(|| format!("'{name}' is not a PII class; use one of {}", PiiClass::names()))
}

fn unknown_operation(at: &str, id: &str) -> ConfigError {
    ConfigError::new(at, format!("'{id}' is not an operation of the catalog; see the ids in policies/spapi-catalog.json"))
}

fn check_operation_id(id: &str) -> Result<(), String> {
    let ok = id
        .split_once('.')
        .is_some_and(|(api, op)| !api.is_empty() && !op.is_empty() && api.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && op.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(format!("'{id}' is not an operation id; write <api-slug>.<operationId>, e.g. orders-v0.getOrder"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Catalog {
        Catalog::build(&CatalogOverrides::default()).expect("built-in catalog compiles")
    }

    #[test]
    fn builtin_catalog_has_all_82_operations() {
        let c = builtin();
        assert_eq!(c.operations.len(), 82);
        let with_pii = c.operations.iter().filter(|o| o.has_response_pii()).count();
        assert!(with_pii > 50, "{with_pii}");
    }

    #[test]
    fn routes_sp_api_paths() {
        let c = builtin();
        let op = c.route("GET", "/orders/v0/orders/902-3159896-1390916/address").expect("routed");
        assert_eq!(op.id, "orders-v0.getOrderAddress");
        assert!(op.restricted);
        assert_eq!(c.route("GET", "/orders/v0/orders?BuyerEmail=x").map(|o| o.id.as_str()), Some("orders-v0.getOrders"));
        assert_eq!(c.route("GET", "/orders/v0/orders").expect("routed").query_pii, vec![("BuyerEmail".to_string(), PiiClass::Email)]);
        assert!(c.route("GET", "/catalog/2022-04-01/items").is_none());
    }

    fn overrides(json: &str) -> CatalogOverrides {
        serde_json::from_str(json).expect("overrides parse")
    }

    #[test]
    fn policy_can_add_extend_and_exclude() {
        let c = Catalog::build(&overrides(
            r#"{"operations":[{"id":"custom-v1.getThing","method":"GET","pathTemplate":"/custom/v1/things/{id}","responsePii":[{"jsonpath":"$.owner","class":"name"}]}],
                "extend":{"orders-v0.getOrder":{"responsePii":[{"jsonpath":"$.payload.BuyerInfo.Nickname","class":"name"}]}},
                "exclude":{"orders-v0.getOrder":["$.payload.ShippingAddress.CountryCode"]}}"#,
        ))
        .expect("builds");
        assert_eq!(c.route("GET", "/custom/v1/things/1").expect("routed").id, "custom-v1.getThing");
        let op = c.get("orders-v0.getOrder").expect("op");
        assert_eq!(op.response_rules[0].jsonpath, "$.payload.BuyerInfo.Nickname");
        assert!(op.response_rules.iter().all(|r| r.jsonpath != "$.payload.ShippingAddress.CountryCode"));
    }

    #[test]
    fn bad_overrides_name_the_field() {
        let cases = [
            (r#"{"extend":{"orders-v0.getOrder":{"responsePii":[{"jsonpath":"$..Name","class":"name"}]}}}"#, "catalog.extend.orders-v0.getOrder.responsePii[0].jsonpath"),
            (r#"{"extend":{"orders-v0.getOrder":{"responsePii":[{"jsonpath":"$.x","class":"shoe_size"}]}}}"#, "catalog.extend.orders-v0.getOrder.responsePii[0].class"),
            (r#"{"extend":{"nope.getX":{}}}"#, "catalog.extend.nope.getX"),
            (r#"{"exclude":{"orders-v0.getOrder":["$.not.there"]}}"#, "catalog.exclude.orders-v0.getOrder[0]"),
            (r#"{"operations":[{"id":"orders-v0.getOrder","method":"GET","pathTemplate":"/x"}]}"#, "catalog.operations[0].id"),
            (r#"{"operations":[{"id":"x.y","method":"FETCH","pathTemplate":"/x"}]}"#, "catalog.operations[0].method"),
            (r#"{"operations":[{"id":"bad id","method":"GET","pathTemplate":"/x"}]}"#, "catalog.operations[0].id"),
            (
                r#"{"extend":{"orders-v0.getOrders":{"responsePii":[{"jsonpath":"$.payload.Orders[*].DefaultShipFromLocationAddress.Name","class":"name"}]}}}"#,
                "catalog.extend.orders-v0.getOrders.responsePii[0].jsonpath",
            ),
        ];
        for (json, field) in cases {
            let err = Catalog::build(&overrides(json)).err().expect("refused");
            assert_eq!(err.field, field, "{err}");
        }
    }
}
