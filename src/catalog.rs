//! The SP-API PII catalog: which operation a request is, and where customer PII sits in it.
//!
//! The built-in catalog (`policies/spapi-catalog.json`, from Amazon's published API models) is
//! embedded at build time; a policy may add operations, add fields to an operation, or exclude
//! fields (`catalog` in the policy reference). Seller, vendor, Amazon-facility and carrier addresses
//! are listed per operation as protected paths: a PII rule that would reach one is refused at load.
use serde::Deserialize;
use std::collections::BTreeMap;

use crate::config_error::ConfigError;
use crate::field_path::{FieldPath, Step};
use crate::path_matcher::{ObjectSpec, PathMatcher};
use crate::pii::PiiClass;
use crate::router::{PathTemplate, Router};
use crate::schema::{is_non_pii_member, FieldSchema, JsonType, NON_PII_MEMBERS};

/// The built-in catalog, as shipped in `policies/`.
pub const BUILTIN_CATALOG: &str = include_str!("../policies/spapi-catalog.json");

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CatalogFile {
    operations: Vec<CatalogOperation>,
    /// Definitions of Amazon's models whose members are all customer data, by object id
    /// (`orders-v0.Address`): scripts/merge-schema-facts.py.
    #[serde(default)]
    customer_objects: BTreeMap<String, CatalogObject>,
}

#[derive(Deserialize)]
struct CatalogObject {
    class: String,
    members: BTreeMap<String, CatalogMember>,
}

/// A member of a customer object: PII of a class, clear (not the customer's data on its own), or
/// a nested customer object.
#[derive(Deserialize)]
struct CatalogMember {
    #[serde(default)]
    class: Option<String>,
    #[serde(default)]
    schema: Option<FieldSchema>,
    #[serde(default)]
    clear: Option<String>,
    #[serde(default)]
    object: Option<String>,
}

/// Where a customer object sits in an operation's responses.
#[derive(Deserialize, Clone)]
struct CatalogInstance {
    jsonpath: String,
    object: String,
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
    #[serde(default)]
    customer_objects: Vec<CatalogInstance>,
    /// The wrapper (`payload`) Amazon's own examples of the response leave out.
    #[serde(default)]
    also_unwrapped: Option<String>,
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

/// A customer object a policy places in an operation's responses: a built-in object (`object`)
/// or a new one (`class`), with members that stay clear.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectDoc {
    pub jsonpath: String,
    /// A built-in object id (`orders-v0.Address`): its members and class.
    #[serde(default)]
    pub object: Option<String>,
    /// The class of its members (a new object), or instead of the built-in object's.
    #[serde(default)]
    pub class: Option<String>,
    /// Members that are not customer data and stay clear (any case).
    #[serde(default)]
    pub non_pii_members: Vec<String>,
}

/// A policy's changes to a built-in customer object, wherever it sits.
#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectChangeDoc {
    /// The class of members the object's definition does not name.
    #[serde(default)]
    pub class: Option<String>,
    /// More members that stay clear.
    #[serde(default)]
    pub non_pii_members: Vec<String>,
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
    #[serde(default)]
    pub customer_objects: Vec<ObjectDoc>,
    /// A wrapper member (`payload`) responses may come without: every path under it matches
    /// without it too.
    #[serde(default)]
    pub also_unwrapped: Option<String>,
}

/// Fields a policy adds to a built-in operation.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtendDoc {
    #[serde(default)]
    pub response_pii: Vec<FieldDoc>,
    #[serde(default)]
    pub query_pii: Vec<QueryField>,
    #[serde(default)]
    pub customer_objects: Vec<ObjectDoc>,
}

/// The `catalog` section of a policy.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
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
    /// Changes to built-in customer objects, by object id.
    #[serde(default)]
    pub customer_objects: BTreeMap<String, ObjectChangeDoc>,
}

/// What kind of rule selects a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// A catalog path (built-in, or the policy's).
    Catalog,
    /// A member of a customer object that the object's definition classifies, where no catalog
    /// path names it (`BuyerTaxInfo.TaxingRegion`).
    Member,
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
    pub kind: RuleKind,
}

/// The catch-all of a customer object: the members no rule names (Amazon added them later), and
/// everything nested in them.
#[derive(Debug, Clone)]
pub struct CatchAll {
    /// The object id (`orders-v0.Address`; `policy` for a policy's own object).
    pub object: String,
    /// The class of members whose name and value say nothing ([`crate::drift::member_class`]).
    pub class: PiiClass,
}

/// A customer object where it sits in an operation's responses.
#[derive(Debug, Clone)]
pub struct ObjectInstance {
    pub jsonpath: String,
    pub object: String,
    /// Index in [`Operation::catch_alls`].
    pub catch_all: usize,
    /// Members the catch-all leaves alone (any case): clear members, nested customer objects
    /// (which have their own), members the policy excludes.
    pub except: Vec<String>,
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
    /// Response PII rules; a matcher rule index below their count is an index here.
    pub response_rules: Vec<FieldRule>,
    /// Customer objects' catch-alls: the matcher's rule `response_rules.len() + i` is `catch_alls[i]`.
    pub catch_alls: Vec<CatchAll>,
    /// The customer objects in the responses.
    pub objects: Vec<ObjectInstance>,
    /// Subtrees of seller, vendor, Amazon or carrier data (parents of the catalog's non-customer
    /// paths): never matched, never scanned.
    pub quiet_paths: Vec<String>,
    /// The wrapper (`payload`) responses may come without: every path under it matches without it.
    pub also_unwrapped: Option<String>,
    pub response_matcher: PathMatcher,
    /// Query parameters that carry PII.
    pub query_pii: Vec<(String, PiiClass)>,
    /// Requests of this operation carry customer PII in their body (Amazon's models): where an
    /// application sends data it holds as tokens.
    pub has_request_pii: bool,
    /// The third-party upstream it belongs to (an index in [`crate::upstreams::Upstreams::list`]);
    /// `None` for SP-API operations.
    pub upstream: Option<usize>,
}

impl Operation {
    /// Whether responses of this operation must be buffered and rewritten.
    pub fn has_response_pii(&self) -> bool {
        !self.response_rules.is_empty() || !self.objects.is_empty()
    }

    /// The classes of the catalog's response fields that `data_element` unlocks (all fields for
    /// `None`): what access decisions read (the allow list and the detectors do not change them).
    pub fn classes_of<'a>(&'a self, data_element: Option<&'a str>) -> impl Iterator<Item = PiiClass> + 'a {
        self.response_rules.iter().filter(move |r| r.kind == RuleKind::Catalog && (data_element.is_none() || r.data_element.as_deref() == data_element)).map(|r| r.class)
    }

    /// The catch-all a matcher rule index stands for, if it is one.
    pub fn catch_all(&self, rule: u32) -> Option<&CatchAll> {
        (rule as usize).checked_sub(self.response_rules.len()).and_then(|i| self.catch_alls.get(i))
    }
}

/// The compiled catalog with its router.
pub struct Catalog {
    pub operations: Vec<Operation>,
    router: Router,
}

/// A member of a customer object's definition.
#[derive(Clone)]
enum DraftMember {
    Pii(String, Option<FieldSchema>),
    Clear,
    Object,
}

/// A customer object placed in an operation.
#[derive(Clone)]
struct DraftObject {
    jsonpath: String,
    object: String,
    class: String,
    members: Vec<(String, DraftMember)>,
    /// Members that stay clear beyond the definition's (the policy's), and excluded members.
    non_pii: Vec<String>,
    /// Where it came from, for error messages.
    at: String,
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
    objects: Vec<DraftObject>,
    also_unwrapped: Option<String>,
    has_request_pii: bool,
    upstream: Option<usize>,
}

/// The operations of a third-party upstream (src/upstreams.rs), routed under its prefix.
pub struct UpstreamOperations<'a> {
    pub name: &'a str,
    /// The route prefix without its trailing `/` (`/upstreams/carrier`), and as decoded segments.
    pub prefix: &'a str,
    pub segments: &'a [String],
    pub operations: &'a [OperationDoc],
}

/// The built-in customer objects, resolved: id → (class, members).
type Objects = BTreeMap<String, (String, Vec<(String, DraftMember)>)>;

fn resolve_objects(file: &BTreeMap<String, CatalogObject>) -> Objects {
    file.iter()
        .map(|(id, o)| {
            let members = o
                .members
                .iter()
                .map(|(name, m)| {
                    let member = match (&m.class, &m.object, &m.clear) {
                        (Some(class), _, _) => DraftMember::Pii(class.clone(), m.schema.clone()),
                        (None, Some(_), _) => DraftMember::Object,
                        _ => DraftMember::Clear,
                    };
                    (name.clone(), member)
                })
                .collect();
            (id.clone(), (o.class.clone(), members))
        })
        .collect()
}

/// A customer object a policy places, resolved against the built-in ones.
fn policy_object(doc: &ObjectDoc, at: &str, objects: &Objects) -> Result<DraftObject, ConfigError> {
    let (class, members, object) = match &doc.object {
        Some(id) => {
            let (class, members) = objects.get(id).ok_or_else(|| {
                ConfigError::new(
                    format!("{at}.object"),
                    format!("'{id}' is not a customer object of the catalog; see customerObjects in policies/spapi-catalog.json, or give a class instead"),
                )
            })?;
            (doc.class.clone().unwrap_or_else(|| class.clone()), members.clone(), id.clone())
        }
        None => {
            let class = doc.class.clone().ok_or_else(|| ConfigError::new(format!("{at}.class"), "a customer object needs a class (or a built-in object id in object)"))?;
            (class, Vec::new(), "policy".to_string())
        }
    };
    check_members(&doc.non_pii_members, &format!("{at}.nonPiiMembers"))?;
    Ok(DraftObject { jsonpath: doc.jsonpath.clone(), object, class, members, non_pii: doc.non_pii_members.clone(), at: at.to_string() })
}

fn check_members(members: &[String], at: &str) -> Result<(), ConfigError> {
    for (i, m) in members.iter().enumerate() {
        if m.is_empty() || m.len() > 128 || m.chars().any(char::is_control) {
            return Err(ConfigError::new(format!("{at}[{i}]"), "must be a member name (1 to 128 characters)"));
        }
    }
    Ok(())
}

impl Catalog {
    /// The built-in catalog with `overrides` applied. Errors name the policy field at fault.
    pub fn build(overrides: &CatalogOverrides) -> Result<Catalog, ConfigError> {
        Catalog::build_with_upstreams(overrides, &[])
    }

    /// The built-in catalog with `overrides` applied and the operations of the policy's
    /// third-party upstreams added (ids `<upstream>.<operationId>`, templates under their prefix).
    pub fn build_with_upstreams(overrides: &CatalogOverrides, upstreams: &[UpstreamOperations]) -> Result<Catalog, ConfigError> {
        let file: CatalogFile = serde_json::from_str(BUILTIN_CATALOG).map_err(|e| ConfigError::new("(built-in catalog)", format!("cannot be read: {e}; rebuild the filter")))?;
        let objects = resolve_objects(&file.customer_objects);
        let mut drafts: Vec<Draft> = file
            .operations
            .into_iter()
            .map(|op| {
                // Enumerations and country codes are not personal data on their own, and a token
                // in their place breaks clients (src/schema.rs): they stay clear.
                let (not_pii, pii): (Vec<_>, Vec<_>) =
                    op.response_pii.into_iter().partition(|f| is_non_pii_member(&f.jsonpath) || f.schema.as_ref().is_some_and(FieldSchema::is_enum));
                let placed = op
                    .customer_objects
                    .iter()
                    .filter_map(|i| {
                        let (class, members) = objects.get(&i.object)?;
                        Some(DraftObject {
                            jsonpath: i.jsonpath.clone(),
                            object: i.object.clone(),
                            class: class.clone(),
                            members: members.clone(),
                            non_pii: Vec::new(),
                            at: format!("(built-in catalog) {}", op.id),
                        })
                    })
                    .collect();
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
                    objects: placed,
                    also_unwrapped: op.also_unwrapped,
                    has_request_pii: !op.request_pii.is_empty(),
                    upstream: None,
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
            let draft = policy_operation(doc, doc.id.clone(), doc.path_template.clone(), &at, &objects)?;
            drafts.push(draft);
        }
        for (id, ext) in &overrides.extend {
            let at = format!("catalog.extend.{id}");
            let draft = drafts.iter_mut().find(|d| &d.id == id).ok_or_else(|| unknown_operation(&at, id))?;
            let added: Vec<_> = ext.response_pii.iter().enumerate().map(|(j, f)| (f.clone(), format!("{at}.responsePii[{j}]"), None)).collect();
            draft.response.splice(0..0, added);
            draft.query.extend(ext.query_pii.iter().enumerate().map(|(j, q)| (q.clone(), format!("{at}.queryPii[{j}]"))));
            for (j, o) in ext.customer_objects.iter().enumerate() {
                draft.objects.push(policy_object(o, &format!("{at}.customerObjects[{j}]"), &objects)?);
            }
        }

        for (id, change) in &overrides.customer_objects {
            let at = format!("catalog.customerObjects.{id}");
            if !objects.contains_key(id) {
                return Err(ConfigError::new(at, format!("'{id}' is not a customer object of the catalog; see customerObjects in policies/spapi-catalog.json")));
            }
            if let Some(class) = &change.class {
                parse_class(class).map_err(|m| ConfigError::new(format!("{at}.class"), m))?;
            }
            check_members(&change.non_pii_members, &format!("{at}.nonPiiMembers"))?;
            for o in drafts.iter_mut().flat_map(|d| d.objects.iter_mut()).filter(|o| &o.object == id) {
                if let Some(class) = &change.class {
                    o.class = class.clone();
                }
                o.non_pii.extend(change.non_pii_members.iter().cloned());
            }
        }

        for (id, paths) in &overrides.exclude {
            let at = format!("catalog.exclude.{id}");
            let draft = drafts.iter_mut().find(|d| &d.id == id).ok_or_else(|| unknown_operation(&at, id))?;
            for (j, path) in paths.iter().enumerate() {
                let before = draft.response.len();
                draft.response.retain(|(f, _, _)| &f.jsonpath != path);
                let mut found = draft.response.len() != before;
                // A member of a customer object: its rule goes, and its catch-all leaves it alone.
                for o in &mut draft.objects {
                    if let Some(member) = path.strip_prefix(o.jsonpath.as_str()).and_then(|m| m.strip_prefix('.')) {
                        if !member.is_empty() && !member.contains(['.', '[']) {
                            o.non_pii.push(member.to_string());
                            found = true;
                        }
                    }
                }
                // A path the catalog already leaves clear (an enumeration) is excluded already.
                if !found && !draft.not_pii.iter().any(|(p, _)| p == path) {
                    return Err(ConfigError::new(
                        format!("{at}[{j}]"),
                        format!("'{path}' is not a response PII path of {id} or a member of one of its customer objects; copy the path from policies/spapi-catalog.json"),
                    ));
                }
            }
        }

        for up in upstreams {
            let at = format!("upstreams.{}", up.name);
            let slug = format!("{}.", up.name);
            if let Some(d) = drafts.iter().find(|d| d.id.starts_with(&slug)) {
                return Err(ConfigError::new(at, format!("'{}' is the API of catalog operations ({}); give the upstream another name", up.name, d.id)));
            }
            for d in &drafts {
                if PathTemplate::parse(&d.path_template).is_ok_and(|t| t.may_extend(up.segments)) {
                    return Err(ConfigError::new(
                        format!("{at}.routePrefix"),
                        format!(
                            "'{}/' is also where {} {} is ({}), which leads to the SP-API; choose a prefix no SP-API path starts with, like /upstreams/{}/",
                            up.prefix, d.method, d.path_template, d.id, up.name
                        ),
                    ));
                }
            }
        }
        for (u, up) in upstreams.iter().enumerate() {
            for (i, doc) in up.operations.iter().enumerate() {
                let at = format!("upstreams.{}.operations[{i}]", up.name);
                let template = format!("{}{}", up.prefix, doc.path_template);
                if !doc.path_template.starts_with('/') {
                    return Err(ConfigError::new(format!("{at}.pathTemplate"), format!("'{}' must start with '/' (the path as the upstream sees it)", doc.path_template)));
                }
                let mut draft = policy_operation(doc, format!("{}.{}", up.name, doc.id), template, &at, &objects)?;
                draft.api = up.name.to_string();
                draft.upstream = Some(u);
                drafts.push(draft);
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

/// The same path without the wrapper member it starts with (`$.payload.a.b` → `$.a.b`), if it
/// starts with it and does not end there.
fn unwrapped(path: &FieldPath, wrapper: Option<&str>) -> Option<FieldPath> {
    let wrapper = wrapper?;
    match path.steps.split_first() {
        Some((Step::Member(first), rest)) if first == wrapper && !rest.is_empty() => Some(FieldPath { steps: rest.to_vec() }),
        _ => None,
    }
}

/// The container a non-customer path sits in (`$.payload.ShipFromAddress.Name` →
/// `$.payload.ShipFromAddress`): the whole seller, vendor or Amazon object is not customer data.
fn quiet_container(path: &FieldPath) -> FieldPath {
    match path.steps.split_last() {
        Some((_, parent)) if !parent.is_empty() => FieldPath { steps: parent.to_vec() },
        _ => path.clone(),
    }
}

fn compile(draft: Draft) -> Result<Operation, ConfigError> {
    let wrapper = draft.also_unwrapped.as_deref();
    let mut rules = Vec::with_capacity(draft.response.len());
    // Every path the matcher compiles, with its rule index; where each rule came from.
    let mut paths: Vec<(usize, FieldPath)> = Vec::with_capacity(draft.response.len());
    let mut origins: Vec<(String, String)> = Vec::new();
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
        rules.push(FieldRule { class, jsonpath: field.jsonpath.clone(), data_element: field.data_element.clone(), schema: schema.clone(), kind: RuleKind::Catalog });
        origins.push((format!("{at}.jsonpath"), field.jsonpath.clone()));
        paths.push((rules.len() - 1, path));
    }

    // Customer objects: the members their definitions classify, where no catalog path names
    // them, then one catch-all per object and class.
    let mut parsed_objects = Vec::with_capacity(draft.objects.len());
    for o in &draft.objects {
        let path = FieldPath::parse(&o.jsonpath).map_err(|m| ConfigError::new(format!("{}.jsonpath", o.at), format!("'{}' {m}", o.jsonpath)))?;
        let class = parse_class(&o.class).map_err(|m| ConfigError::new(format!("{}.class", o.at), m))?;
        let data_element = {
            // The gate of the catalog's fields inside the object, if they share one.
            let inside: Vec<Option<&String>> =
                rules.iter().filter(|r| r.kind == RuleKind::Catalog && r.jsonpath.starts_with(&format!("{}.", o.jsonpath))).map(|r| r.data_element.as_ref()).collect();
            inside.first().copied().flatten().filter(|d| inside.iter().all(|x| *x == Some(*d))).cloned()
        };
        for (member, m) in &o.members {
            let DraftMember::Pii(member_class, schema) = m else { continue };
            let at_member = format!("{}.{member}", o.jsonpath);
            let excluded = o.non_pii.iter().any(|n| n.eq_ignore_ascii_case(member));
            let named = rules.iter().any(|r| r.jsonpath == at_member || r.jsonpath.starts_with(&format!("{at_member}[")) || r.jsonpath.starts_with(&format!("{at_member}.")));
            if excluded || named || is_non_pii_member(&at_member) || schema.as_ref().is_some_and(FieldSchema::is_enum) {
                continue;
            }
            let class = parse_class(member_class).map_err(|m| ConfigError::new(o.at.clone(), m))?;
            let mut member_path = path.clone();
            member_path.steps.push(Step::Member(member.clone()));
            // The values of an array or a map, one by one (the container keeps its shape).
            let jsonpath = match schema.as_ref().map(|s| s.json_type) {
                Some(JsonType::Array | JsonType::Object | JsonType::Any) => {
                    member_path.steps.push(Step::Wildcard);
                    format!("{at_member}[*]")
                }
                _ => at_member,
            };
            rules.push(FieldRule { class, jsonpath: jsonpath.clone(), data_element: data_element.clone(), schema: schema.clone(), kind: RuleKind::Member });
            origins.push((format!("{}.jsonpath", o.at), jsonpath));
            paths.push((rules.len() - 1, member_path));
        }
        parsed_objects.push((path, class));
    }
    let mut catch_alls: Vec<CatchAll> = Vec::new();
    let mut objects = Vec::with_capacity(draft.objects.len());
    for (o, (_, class)) in draft.objects.iter().zip(&parsed_objects) {
        let catch_all = match catch_alls.iter().position(|c| c.object == o.object && c.class == *class) {
            Some(i) => i,
            None => {
                catch_alls.push(CatchAll { object: o.object.clone(), class: *class });
                origins.push((format!("{}.jsonpath", o.at), o.jsonpath.clone()));
                catch_alls.len() - 1
            }
        };
        let mut except: Vec<String> = o.members.iter().filter(|(_, m)| !matches!(m, DraftMember::Pii(..))).map(|(n, _)| n.clone()).collect();
        except.extend(o.non_pii.iter().cloned());
        except.extend(NON_PII_MEMBERS.iter().map(|m| m.to_string()));
        // Members with enumerations stay clear wherever they are.
        except.extend(o.members.iter().filter(|(_, m)| matches!(m, DraftMember::Pii(_, Some(s)) if s.is_enum())).map(|(n, _)| n.clone()));
        except.sort_by_key(|m| m.to_ascii_lowercase());
        except.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        objects.push(ObjectInstance { jsonpath: o.jsonpath.clone(), object: o.object.clone(), catch_all, except });
    }

    let protected = draft
        .protected
        .iter()
        .map(|p| FieldPath::parse(p).map(|p| quiet_container(&p)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| ConfigError::new(format!("(built-in catalog) {}", draft.id), format!("non-customer path {m}")))?;
    let mut quiet: Vec<FieldPath> = Vec::new();
    for p in protected {
        if !quiet.contains(&p) {
            quiet.push(p);
        }
    }

    // Responses without the wrapper match the same rules.
    let extra: Vec<(usize, FieldPath)> = paths.iter().filter_map(|(i, p)| unwrapped(p, wrapper).map(|u| (*i, u))).collect();
    paths.extend(extra);
    let base = rules.len();
    let mut object_paths: Vec<(FieldPath, usize, Vec<String>)> = Vec::new();
    for (instance, (path, _)) in objects.iter().zip(&parsed_objects) {
        object_paths.push((path.clone(), base + instance.catch_all, instance.except.clone()));
        // Without the wrapper, the object at `$.payload` is the body itself: its members are the
        // body's, except the SP-API error envelope (`errors`), which is never customer data.
        if let Some(steps) = wrapper.and_then(|w| match path.steps.split_first() {
            Some((Step::Member(first), rest)) if first == w => Some(rest.to_vec()),
            _ => None,
        }) {
            let mut except = instance.except.clone();
            if steps.is_empty() {
                except.push("errors".to_string());
            }
            object_paths.push((FieldPath { steps }, base + instance.catch_all, except));
        }
    }
    let quiet_extra: Vec<FieldPath> = quiet.iter().filter_map(|p| unwrapped(p, wrapper)).collect();
    quiet.extend(quiet_extra);

    let specs = object_paths.iter().map(|(path, catch_all, except)| ObjectSpec { path, catch_all: *catch_all, except: except.clone() });
    let matcher = PathMatcher::compile(paths.iter().map(|(i, p)| (*i, p)), specs, &quiet).map_err(|c| {
        let (field, path) = origins.get(c.rule).cloned().unwrap_or_default();
        ConfigError::new(field, format!("'{path}' reaches a seller, vendor, Amazon or carrier address that is not customer data; name the customer field instead"))
    })?;
    let mut query_pii = Vec::with_capacity(draft.query.len());
    for (q, at) in &draft.query {
        let class = parse_class(&q.class).map_err(|m| ConfigError::new(format!("{at}.class"), m))?;
        if q.param.is_empty() {
            return Err(ConfigError::new(format!("{at}.param"), "must name a query parameter"));
        }
        query_pii.push((q.param.clone(), class));
    }
    let quiet_paths =
        draft.protected.iter().filter_map(|p| FieldPath::parse(p).ok()).map(|p| render(&quiet_container(&p))).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    Ok(Operation {
        id: draft.id,
        api: draft.api,
        version: draft.version,
        method: draft.method,
        path_template: draft.path_template,
        restricted: draft.restricted,
        response_rules: rules,
        catch_alls,
        objects,
        quiet_paths,
        also_unwrapped: draft.also_unwrapped,
        response_matcher: matcher,
        query_pii,
        has_request_pii: draft.has_request_pii,
        upstream: draft.upstream,
    })
}

/// A policy's own operation (`catalog.operations[]`, an upstream's `operations[]`) as a draft.
fn policy_operation(doc: &OperationDoc, id: String, path_template: String, at: &str, objects: &Objects) -> Result<Draft, ConfigError> {
    if !METHODS.contains(&doc.method.as_str()) {
        return Err(ConfigError::new(format!("{at}.method"), format!("must be one of {}", METHODS.join(", "))));
    }
    if let Some(wrapper) = &doc.also_unwrapped {
        if wrapper.is_empty() || wrapper.len() > 128 {
            return Err(ConfigError::new(format!("{at}.alsoUnwrapped"), "must be the wrapper member's name (payload)"));
        }
    }
    let placed = doc.customer_objects.iter().enumerate().map(|(j, o)| policy_object(o, &format!("{at}.customerObjects[{j}]"), objects)).collect::<Result<_, _>>()?;
    Ok(Draft {
        api: id.split('.').next().unwrap_or_default().to_string(),
        id,
        version: String::new(),
        method: doc.method.clone(),
        path_template,
        restricted: false,
        response: doc.response_pii.iter().enumerate().map(|(j, f)| (f.clone(), format!("{at}.responsePii[{j}]"), None)).collect(),
        not_pii: Vec::new(),
        query: doc.query_pii.iter().enumerate().map(|(j, q)| (q.clone(), format!("{at}.queryPii[{j}]"))).collect(),
        protected: Vec::new(),
        objects: placed,
        also_unwrapped: doc.also_unwrapped.clone(),
        // A policy's own operation may carry anything: its request bodies are read.
        has_request_pii: true,
        upstream: None,
    })
}

/// A field path written back as JSONPath (`$.a[*].b`, `$['a b']`).
pub fn render(path: &FieldPath) -> String {
    let mut out = String::from("$");
    for step in &path.steps {
        match step {
            Step::Wildcard => out.push_str("[*]"),
            Step::Member(name) if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                out.push('.');
                out.push_str(name);
            }
            Step::Member(name) => {
                out.push_str("['");
                out.push_str(&name.replace('\\', "\\\\").replace('\'', "\\'"));
                out.push_str("']");
            }
        }
    }
    out
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
