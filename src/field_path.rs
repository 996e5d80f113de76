//! Field paths: the subset of JSONPath the catalog and policies use, parsed with jsonpath-rust.
//!
//! Accepted: `$`, then any sequence of member names (`.name`, `['name']`), `[*]` (every array
//! element) and `.*` (every member of an object). That is every path SP-API PII sits at; filters,
//! slices, indices and recursive descent are refused at load so a policy can never hold a path the
//! fast matcher would evaluate differently from the JSONPath standard (RFC 9535).
use jsonpath_rust::parser::model::{Segment, Selector};
use jsonpath_rust::parser::parse_json_path;

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// An object member by name.
    Member(String),
    /// Every element of an array (`[*]`) or every member of an object (`.*`): RFC 9535's wildcard
    /// selects children of both kinds.
    Wildcard,
}

/// A parsed field path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldPath {
    pub steps: Vec<Step>,
}

impl FieldPath {
    /// Parses `text`. The error says what is wrong without repeating more than the path itself.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let query = parse_json_path(text).map_err(|e| format!("is not valid JSONPath ({})", first_line(&e.to_string())))?;
        let mut steps = Vec::with_capacity(query.segments.len());
        for segment in &query.segments {
            match segment {
                Segment::Selector(selector) => steps.push(step(selector)?),
                Segment::Selectors(selectors) if selectors.len() == 1 => steps.push(step(&selectors[0])?),
                Segment::Selectors(_) => return Err("uses a union selector; list each path separately".into()),
                Segment::Descendant(_) => return Err("uses recursive descent (`..`); name the full path from `$`".into()),
            }
        }
        if steps.is_empty() {
            return Err("selects the whole document; name a field".into());
        }
        Ok(FieldPath { steps })
    }
}

fn step(selector: &Selector) -> Result<Step, String> {
    match selector {
        Selector::Name(name) => Ok(Step::Member(name.clone())),
        Selector::Wildcard => Ok(Step::Wildcard),
        Selector::Index(_) => Err("uses an array index; use `[*]`".into()),
        Selector::Slice(..) => Err("uses an array slice; use `[*]`".into()),
        Selector::Filter(_) => Err("uses a filter expression; name the field path instead".into()),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_catalog_forms() {
        let p = FieldPath::parse("$.payload.Orders[*].ShippingAddress.Name").expect("parses");
        assert_eq!(
            p.steps,
            vec![Step::Member("payload".into()), Step::Member("Orders".into()), Step::Wildcard, Step::Member("ShippingAddress".into()), Step::Member("Name".into())]
        );
        let q = FieldPath::parse("$['payload'].attributes.*").expect("parses");
        assert_eq!(q.steps, vec![Step::Member("payload".into()), Step::Member("attributes".into()), Step::Wildcard]);
    }

    #[test]
    fn refuses_what_the_matcher_does_not_do() {
        for bad in ["$..Name", "$.a[0]", "$.a[1:2]", "$.a[?@.b]", "$", "payload.Name", "$.a[", "$['a','b']"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
