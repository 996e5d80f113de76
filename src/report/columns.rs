//! The built-in catalog of customer PII in report documents (`policies/spapi-report-columns.json`):
//! flat-file column names, XML element paths, JSON paths, and what is known of each report type.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use serde::Deserialize;

use crate::catalog::{CatchAll, FieldRule, ObjectInstance, Operation, RuleKind};
use crate::drift::{class_from_key, key_words};
use crate::field_path::FieldPath;
use crate::path_matcher::{ObjectSpec, PathMatcher};
use crate::pii::PiiClass;

const BUILTIN: &str = include_str!("../../policies/spapi-report-columns.json");

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CatalogFile {
    columns: BTreeMap<String, String>,
    prefixes: Vec<(String, String)>,
    not_pii: Vec<String>,
    not_pii_prefixes: Vec<String>,
    report_types: BTreeMap<String, ReportDoc>,
    xml: XmlDoc,
    json: BTreeMap<String, JsonDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportDoc {
    restricted: bool,
    format: String,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    same_as: Option<String>,
}

#[derive(Deserialize)]
struct XmlDoc {
    elements: BTreeMap<String, String>,
    containers: BTreeMap<String, ContainerDoc>,
}

#[derive(Deserialize)]
struct ContainerDoc {
    class: String,
    clear: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonDoc {
    fields: BTreeMap<String, String>,
    objects: Vec<JsonObjectDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonObjectDoc {
    jsonpath: String,
    class: String,
    non_pii_members: Vec<String>,
}

/// What a report type is, as far as the catalog knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportInfo {
    /// Amazon lists it restricted: columns the catalog does not know are protected.
    pub restricted: bool,
    /// `tsv`, `csv`, `xml`, `json` or `pdf`.
    pub format: String,
    /// The documented columns (flat files), in order.
    pub columns: Vec<String>,
}

/// What the catalog says of a flat-file column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// A customer column: its class.
    Pii(PiiClass),
    /// Known not to be customer data.
    Clear,
    /// Not in the catalog; `class` is what its name suggests (else `other`).
    Unknown(PiiClass),
}

/// An XML element path (names from the outermost, any case) with its class.
pub struct XmlRule {
    pub path: Vec<String>,
    pub class: PiiClass,
}

/// A customer container: every element inside it is customer data but the `clear` ones.
pub struct XmlContainer {
    pub path: Vec<String>,
    pub class: PiiClass,
    pub clear: Vec<String>,
}

/// The compiled catalog.
pub struct ReportCatalog {
    columns: HashMap<String, PiiClass>,
    prefixes: Vec<(String, PiiClass)>,
    not_pii: HashSet<String>,
    not_pii_prefixes: Vec<String>,
    reports: BTreeMap<String, ReportInfo>,
    pub xml_rules: Vec<XmlRule>,
    pub xml_containers: Vec<XmlContainer>,
    json: BTreeMap<String, Rc<Operation>>,
    /// JSON reports of a type the catalog does not know (or none): every value protected.
    json_unknown: Rc<Operation>,
}

/// A column name as the catalog keys it: lowercase words joined by `-` (`Ship To City`,
/// `SHIP_TO_CITY`, `shipToCity` and `ship-to-city` are one name).
pub fn normalize(name: &str) -> String {
    key_words(name).collect::<Vec<_>>().join("-")
}

fn class(name: &str, at: &str) -> Result<PiiClass, String> {
    PiiClass::parse(name).ok_or_else(|| format!("{at}: '{name}' is not a PII class ({})", PiiClass::names()))
}

fn xml_path(path: &str) -> Vec<String> {
    path.split('/').map(str::to_ascii_lowercase).collect()
}

thread_local! {
    static CATALOG: std::cell::RefCell<Option<Rc<ReportCatalog>>> = const { std::cell::RefCell::new(None) };
}

impl ReportCatalog {
    /// The built-in catalog, compiled once per thread (a VM is one thread).
    pub fn builtin() -> Result<Rc<ReportCatalog>, String> {
        CATALOG.with(|cell| {
            if let Some(c) = cell.borrow().as_ref() {
                return Ok(c.clone());
            }
            let compiled = Rc::new(ReportCatalog::parse(BUILTIN)?);
            *cell.borrow_mut() = Some(compiled.clone());
            Ok(compiled)
        })
    }

    /// Compiles a catalog document; errors name the entry at fault.
    pub fn parse(text: &str) -> Result<ReportCatalog, String> {
        let file: CatalogFile = serde_json::from_str(text).map_err(|e| format!("report column catalog: {e}"))?;
        let mut columns = HashMap::new();
        for (name, c) in &file.columns {
            columns.insert(normalize(name), class(c, &format!("columns.{name}"))?);
        }
        let prefixes = file.prefixes.iter().map(|(p, c)| Ok((normalize(p) + "-", class(c, &format!("prefixes.{p}"))?))).collect::<Result<Vec<_>, String>>()?;
        let not_pii: HashSet<String> = file.not_pii.iter().map(|n| normalize(n)).collect();
        let not_pii_prefixes = file.not_pii_prefixes.iter().map(|p| normalize(p) + "-").collect();
        let mut reports = BTreeMap::new();
        for (name, doc) in &file.report_types {
            let base = match &doc.same_as {
                Some(other) => file.report_types.get(other).ok_or_else(|| format!("reportTypes.{name}.sameAs: no report type {other}"))?,
                None => doc,
            };
            reports.insert(name.clone(), ReportInfo { restricted: doc.restricted, format: doc.format.clone(), columns: base.columns.clone() });
        }
        let xml_rules = file.xml.elements.iter().map(|(p, c)| Ok(XmlRule { path: xml_path(p), class: class(c, &format!("xml.elements.{p}"))? })).collect::<Result<_, String>>()?;
        let xml_containers = file
            .xml
            .containers
            .iter()
            .map(|(p, c)| {
                Ok(XmlContainer {
                    path: xml_path(p),
                    class: class(&c.class, &format!("xml.containers.{p}.class"))?,
                    clear: c.clear.iter().map(|n| n.to_ascii_lowercase()).collect(),
                })
            })
            .collect::<Result<_, String>>()?;
        let mut json = BTreeMap::new();
        for (name, doc) in &file.json {
            json.insert(name.clone(), Rc::new(json_operation(name, doc)?));
        }
        // A JSON report of a type the catalog does not know is restricted, as flat files of such types
        // are: the whole document is one customer object (each value tokenized as the class its
        // member name or shape says, else `other`; objects and arrays keep their shape).
        let everything = JsonDoc { fields: BTreeMap::new(), objects: vec![JsonObjectDoc { jsonpath: "$".into(), class: "other".into(), non_pii_members: Vec::new() }] };
        let json_unknown = Rc::new(json_operation("unknown", &everything)?);
        Ok(ReportCatalog { columns, prefixes, not_pii, not_pii_prefixes, reports, xml_rules, xml_containers, json, json_unknown })
    }

    /// What the catalog knows of `report_type`.
    pub fn report(&self, report_type: &str) -> Option<&ReportInfo> {
        self.reports.get(report_type)
    }

    /// Every report type the catalog knows.
    pub fn report_types(&self) -> impl Iterator<Item = (&str, &ReportInfo)> {
        self.reports.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The JSON rewriting rules of `report_type`, as an operation of the response rewriter.
    pub fn json_operation(&self, report_type: Option<&str>) -> Option<Rc<Operation>> {
        match report_type {
            Some(t) if self.json.contains_key(t) => self.json.get(t).cloned(),
            // A type the catalog knows in another format: no JSON rules to apply (refused).
            Some(t) if self.reports.contains_key(t) => None,
            // Unknown (or not learned, e.g. a download behind another Envoy than the getReport):
            // every value protected, never another report's paths (a shape they miss would pass).
            _ => Some(self.json_unknown.clone()),
        }
    }

    /// Whether `op` is the rule set of JSON reports of unknown types (the whole document protected).
    pub fn is_unknown_json(&self, op: &Rc<Operation>) -> bool {
        Rc::ptr_eq(op, &self.json_unknown)
    }

    /// Whether the catalog lists `name` itself (not by a prefix) as customer data or clear.
    pub fn knows(&self, name: &str) -> bool {
        let n = normalize(name);
        self.columns.contains_key(&n) || self.not_pii.contains(&n)
    }

    /// The rule for a flat-file column: exact PII names, then known clear names, then clear
    /// prefixes (`ship-from-`, `seller-`), then PII prefixes (`bill-`, `buyer-`).
    pub fn column(&self, name: &str) -> Column {
        let n = normalize(name);
        if let Some(c) = self.columns.get(&n) {
            return Column::Pii(*c);
        }
        if self.not_pii.contains(&n) || self.not_pii_prefixes.iter().any(|p| n.starts_with(p.as_str())) {
            return Column::Clear;
        }
        if let Some((_, c)) = self.prefixes.iter().find(|(p, _)| n.starts_with(p.as_str())) {
            // `buyer-alt-phone`: the prefix says customer data, the name says which class.
            return Column::Pii(class_from_key(&n).unwrap_or(*c));
        }
        Column::Unknown(class_from_key(&n).unwrap_or(PiiClass::Other))
    }
}

/// A JSON report's rules as an [`Operation`] of the response rewriter (src/json_rewrite.rs):
/// named fields, and customer objects whose other members are protected too.
fn json_operation(name: &str, doc: &JsonDoc) -> Result<Operation, String> {
    let mut rules = Vec::new();
    let mut paths = Vec::new();
    for (i, (path, c)) in doc.fields.iter().enumerate() {
        let class = class(c, &format!("json.{name}.fields.{path}"))?;
        paths.push((i, FieldPath::parse(path).map_err(|e| format!("json.{name}.fields.{path}: {e}"))?));
        rules.push(FieldRule { class, jsonpath: path.clone(), data_element: None, schema: None, kind: RuleKind::Catalog });
    }
    let mut catch_alls = Vec::new();
    let mut objects = Vec::new();
    let mut object_paths = Vec::new();
    for (i, o) in doc.objects.iter().enumerate() {
        let class = class(&o.class, &format!("json.{name}.objects[{i}].class"))?;
        // `$`: the whole document is the customer object (JSON reports of unknown types).
        let path =
            if o.jsonpath == "$" { FieldPath { steps: Vec::new() } } else { FieldPath::parse(&o.jsonpath).map_err(|e| format!("json.{name}.objects[{i}].jsonpath: {e}"))? };
        object_paths.push((path, rules.len() + i, o.non_pii_members.clone()));
        catch_alls.push(CatchAll { object: format!("report.{name}[{i}]"), class });
        objects.push(ObjectInstance { jsonpath: o.jsonpath.clone(), object: format!("report.{name}[{i}]"), catch_all: i, except: o.non_pii_members.clone() });
    }
    let specs = object_paths.iter().map(|(path, catch_all, except)| ObjectSpec { path, catch_all: *catch_all, except: except.clone() });
    let matcher = PathMatcher::compile(paths.iter().map(|(i, p)| (*i, p)), specs, std::iter::empty()).map_err(|c| format!("json.{name}: rule {} conflicts", c.rule))?;
    Ok(Operation {
        id: format!("report-document.{name}"),
        api: "Reports".into(),
        version: "2021-06-30".into(),
        method: "GET".into(),
        path_template: "(report document)".into(),
        restricted: true,
        response_rules: rules,
        catch_alls,
        objects,
        quiet_paths: Vec::new(),
        also_unwrapped: None,
        response_matcher: matcher,
        query_pii: Vec::new(),
        has_request_pii: false,
        upstream: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalog_compiles_and_knows_every_documented_column() {
        let cat = ReportCatalog::builtin().expect("compiles");
        for (name, info) in cat.report_types() {
            for column in &info.columns {
                assert!(cat.knows(column), "{name}: column {column} is not listed (PII or clear) in the catalog");
            }
        }
        assert!(cat.report("GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING").is_some_and(|r| r.restricted && r.format == "tsv"));
        assert_eq!(cat.report("GET_FLAT_FILE_ORDERS_RECONCILIATION_DATA_TAX").map(|r| r.columns.len()), cat.report("GET_FLAT_FILE_ORDER_REPORT_DATA_TAX").map(|r| r.columns.len()));
        assert!(cat.json_operation(Some("END_USER_DATA_REPORT")).is_some());
    }

    #[test]
    fn column_names_match_in_any_case_and_separator() {
        let cat = ReportCatalog::builtin().expect("compiles");
        for name in ["buyer-email", "BUYER_EMAIL", "Buyer Email", "buyerEmail", " buyer-email "] {
            assert_eq!(cat.column(name), Column::Pii(PiiClass::Email), "{name}");
        }
        assert_eq!(cat.column("Ship To Postalcode"), Column::Pii(PiiClass::Address));
        assert_eq!(cat.column("ship-address-1"), Column::Pii(PiiClass::Address));
        assert_eq!(cat.column("bill-address-4"), Column::Pii(PiiClass::Address), "a bill- column the catalog does not list");
        assert_eq!(cat.column("Bill From City"), Column::Clear, "the seller's");
        assert_eq!(cat.column("ship-country"), Column::Clear);
        assert_eq!(cat.column("order-id"), Column::Clear);
        assert_eq!(cat.column("buyer-alt-phone"), Column::Pii(PiiClass::Phone), "buyer- prefix, class by name");
        assert_eq!(cat.column("buyer-loyalty-tier"), Column::Pii(PiiClass::Other));
        assert_eq!(cat.column("alternate-phone"), Column::Unknown(PiiClass::Phone));
        assert_eq!(cat.column("loyalty-tier"), Column::Unknown(PiiClass::Other));
        assert!(cat.knows("Buyer Email") && cat.knows("order-id") && !cat.knows("bill-address-4") && !cat.knows("seller-x"));
    }

    #[test]
    fn bad_catalogs_are_refused_naming_the_entry() {
        let base = |columns: &str| {
            format!(r#"{{"columns":{columns},"prefixes":[],"notPii":[],"notPiiPrefixes":[],"reportTypes":{{}},"xml":{{"elements":{{}},"containers":{{}}}},"json":{{}}}}"#)
        };
        assert!(ReportCatalog::parse(&base("{}")).is_ok());
        let e = ReportCatalog::parse(&base(r#"{"buyer-email":"mail"}"#)).err().expect("refused");
        assert!(e.starts_with("columns.buyer-email: 'mail' is not a PII class"), "{e}");
    }
}
