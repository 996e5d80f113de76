//! Target (d): the report document rewriter (src/report), through `DocumentRewriter`.
//!
//! Cases: flat files (tab- or comma-separated) and XML order reports written by a reference
//! writer from the catalog's columns and elements, with a planted marker (`Mk<n>q`) in every
//! customer value — some decorated with non-ASCII text, CSV quotes, delimiters and line breaks,
//! XML entities and CDATA —, some empty or white space; clear columns with quotes and text;
//! optional BOM and CRLF line ends; gzip (random level, sometimes two members); random actions
//! per class (both token modes, hash, redact, clear, none); random chunk boundaries. Some cases
//! are then mutated (a byte flipped, deleted or inserted, the document truncated).
//!
//! Oracle, for every case:
//! * no panic; the same result (output, or error) whatever the chunk boundaries;
//! * if accepted: no marker of a class whose action is not `clear` anywhere in the output (a
//!   mutated case has no class in clear: no marker at all), and every token opens (unmutated: to a
//!   planted value of its column's class).
//!
//! and for unmutated cases: accepted, and the output is the reference writer's document with each
//! customer value replaced as its class's action says (tokens compared after opening, the exact
//! pseudonym, the mask, nothing for `none`), every other byte the input's.
use spapi_guard::guard::Guard;
use spapi_guard::pii::PiiClass;
use spapi_guard::policy::{Action, ClassActions};
use spapi_guard::report::{find_tokens, gzip, Column, Compression, DocumentError, DocumentRewriter, ReportCatalog};
use spapi_guard::tokens::{Mode, ValueKind};
use std::rc::Rc;

use crate::engine::{json_string, rust_bytes, Failure, Outcome, Rng, Target};

const KEY_HEX: &str = "8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
const MASK: &str = "MASKED";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Tsv,
    Csv,
    Xml,
}

/// One customer value: its class and text (a marker inside, unless empty or white space).
#[derive(Clone, Debug)]
pub struct Planted {
    class: PiiClass,
    value: String,
    /// XML: written as CDATA; CSV: quoted.
    wrapped: bool,
}

/// A piece of the document: bytes as they are, or a customer value (XML: text, or an attribute
/// value of a customer element).
#[derive(Clone, Debug)]
pub enum Piece {
    Raw(String),
    Value(Planted),
    Attr(Planted),
}

#[derive(Clone, Debug)]
pub struct Case {
    format: Format,
    report_type: &'static str,
    pieces: Vec<Piece>,
    actions: ClassActions,
    gzip: Option<(u8, usize)>,
    splits: Vec<usize>,
    /// (kind, position, byte) of a mutation of the (uncompressed or compressed) document.
    mutation: Option<(u8, usize, u8)>,
}

pub struct ReportTarget {
    guard: Rc<Guard>,
    /// The restricted order report's columns, and what the catalog says of each.
    tsv_columns: Vec<(String, Option<PiiClass>)>,
    csv_columns: Vec<(String, Option<PiiClass>)>,
}

fn columns_of(cat: &ReportCatalog, report: &str) -> Vec<(String, Option<PiiClass>)> {
    let info = cat.report(report).unwrap_or_else(|| panic!("{report} in the catalog"));
    info.columns
        .iter()
        .map(|c| {
            let class = match cat.column(c) {
                Column::Pii(class) | Column::Unknown(class) => Some(class),
                Column::Clear => None,
            };
            (c.clone(), class)
        })
        .collect()
}

impl ReportTarget {
    pub fn new() -> ReportTarget {
        let config = format!(r#"{{"version":1,"keys":{{"active":"k1","env":{{"k1":"K1"}}}},"redactMask":"{MASK}"}}"#);
        let guard = Rc::new(Guard::load(config.as_bytes(), &|_| Some(KEY_HEX.to_string())).expect("policy"));
        let cat = ReportCatalog::builtin().expect("catalog");
        ReportTarget { guard, tsv_columns: columns_of(&cat, "GET_FLAT_FILE_ORDER_REPORT_DATA_INVOICING"), csv_columns: columns_of(&cat, "GET_GST_MTR_B2B_CUSTOM") }
    }

    fn rewrite(&self, case: &Case, doc: &[u8], splits: &[usize]) -> Result<Vec<u8>, DocumentError> {
        let compression = if case.gzip.is_some() { Compression::Gzip } else { Compression::Identity };
        let mut r = DocumentRewriter::new(self.guard.clone(), case.actions, Some(case.report_type), compression, 0)?;
        let mut out = Vec::new();
        let mut at = 0;
        for &s in splits.iter().chain(std::iter::once(&doc.len())) {
            let s = s.clamp(at, doc.len());
            r.push(&doc[at..s], &mut out)?;
            at = s;
        }
        r.finish(&mut out)?;
        Ok(out)
    }
}

fn marker(rng: &mut Rng, n: usize, format: Format) -> String {
    let core = format!("Mk{n}q");
    let deco: &[&str] = match format {
        Format::Tsv => &["", " Zoë", "東京 ", " O'Brien", " \"x\"", ", Jr."],
        Format::Csv => &["", " Zoë", ", Jr.", " \"quoted\"", "\nsecond line", "\r\nthird", " 12\""],
        Format::Xml => &["", " Zoë", " & Co", " <b>", " \"x\" 'y'", " ]]", "\n line"],
    };
    let before = *rng.pick(deco);
    let after = *rng.pick(deco);
    format!("{before}{core}{after}")
}

fn clear_text(rng: &mut Rng, format: Format) -> String {
    let words: &[&str] = match format {
        Format::Tsv => &["2026-11-01", "Widget 12\" ruler", "USD", "B00EZ1IGCO", "", "3", "a,b"],
        Format::Csv => &["2026-11-01", "\"Widget 12\"\" ruler\"", "USD", "\"a,b\"", "", "3"],
        Format::Xml => &["x"],
    };
    rng.pick(words).to_string()
}

/// The reference writer: the document's text from its pieces, each customer value written as
/// `render` gives it.
fn render(case: &Case, value: &dyn Fn(&Planted) -> String) -> String {
    case.pieces
        .iter()
        .map(|p| match p {
            Piece::Raw(s) => s.clone(),
            Piece::Value(v) | Piece::Attr(v) => value(v),
        })
        .collect()
}

/// The output without its tokens and pseudonyms (their base64 could spell a marker by chance).
fn without_tokens(out: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(out).into_owned();
    for prefix in ["spgt1.", "spgh2."] {
        while let Some(i) = s.find(prefix) {
            let len = s[i..].find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))).unwrap_or(s.len() - i);
            s.replace_range(i..i + len, " ");
        }
    }
    s
}

fn csv_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The value as the input writes it.
fn encode(format: Format, v: &Planted) -> String {
    match format {
        Format::Tsv => v.value.clone(),
        Format::Csv if v.wrapped => csv_quote(&v.value),
        Format::Csv => v.value.clone(),
        Format::Xml if v.wrapped => format!("<![CDATA[{}]]>", v.value),
        // (Attribute values are planted unwrapped, and their quotes escaped: text may keep them.)
        Format::Xml => xml_escape(&v.value).replace('"', "&quot;"),
    }
}

fn wrap_token(format: Format, v: &Planted, token: &str) -> String {
    if format == Format::Csv && v.wrapped {
        format!("\"{token}\"")
    } else {
        token.to_string()
    }
}

impl Target for ReportTarget {
    type Case = Case;

    fn name(&self) -> &'static str {
        "report"
    }

    fn generate(&mut self, rng: &mut Rng) -> Case {
        let format = *rng.pick(&[Format::Tsv, Format::Csv, Format::Xml]);
        let nl = if rng.chance(30) { "\r\n" } else { "\n" };
        let mut pieces = Vec::new();
        let mut n = 0;
        let mut plant = |rng: &mut Rng, class: PiiClass, wrap_percent: u32| {
            n += 1;
            let wrapped = rng.chance(wrap_percent);
            let value = match rng.below(10) {
                0 => String::new(),
                1 => " ".into(),
                _ => marker(rng, n, format),
            };
            // Values with line breaks or quotes must be quoted in CSV.
            let must = format == Format::Csv && value.contains(['"', ',', '\n', '\r']);
            Piece::Value(Planted { class, value, wrapped: wrapped || must })
        };
        let bom = if rng.chance(20) { "\u{feff}" } else { "" };
        let report_type;
        match format {
            Format::Tsv | Format::Csv => {
                let (all, delim) = if format == Format::Tsv { (&self.tsv_columns, "\t") } else { (&self.csv_columns, ",") };
                report_type = if format == Format::Tsv { "GET_FLAT_FILE_ORDER_REPORT_DATA_INVOICING" } else { "GET_GST_MTR_B2B_CUSTOM" };
                let k = rng.range(1, all.len().min(12));
                let cols: Vec<&(String, Option<PiiClass>)> = (0..k).map(|_| rng.pick(all)).collect();
                let header: Vec<&str> = cols.iter().map(|c| c.0.as_str()).collect();
                pieces.push(Piece::Raw(format!("{bom}{}{nl}", header.join(delim))));
                for _ in 0..rng.small(8) {
                    for (i, (_, class)) in cols.iter().enumerate() {
                        if i > 0 {
                            pieces.push(Piece::Raw(delim.into()));
                        }
                        match class {
                            Some(c) => pieces.push(plant(rng, *c, if format == Format::Csv { 30 } else { 0 })),
                            None => pieces.push(Piece::Raw(clear_text(rng, format))),
                        }
                    }
                    pieces.push(Piece::Raw(nl.into()));
                }
                if rng.chance(20) {
                    // No final line end.
                    pieces.pop();
                }
            }
            Format::Xml => {
                report_type = "GET_ORDER_REPORT_DATA_SHIPPING";
                pieces.push(Piece::Raw(format!("{bom}<?xml version=\"1.0\"?>{nl}<AmazonEnvelope>{nl}")));
                let elements = [
                    ("BillingData", "BuyerEmailAddress", PiiClass::Email),
                    ("BillingData", "BuyerName", PiiClass::Name),
                    ("BillingData", "BuyerPhoneNumber", PiiClass::Phone),
                    ("BillingData", "BuyerNote", PiiClass::Other),
                    ("Address", "Name", PiiClass::Name),
                    ("Address", "AddressFieldOne", PiiClass::Address),
                    ("Address", "City", PiiClass::Address),
                    ("Address", "PostalCode", PiiClass::Address),
                    ("Address", "PhoneNumber", PiiClass::Phone),
                ];
                for _ in 0..rng.small(5) {
                    pieces.push(Piece::Raw(format!("<Message><OrderReport><AmazonOrderID>1</AmazonOrderID>{nl}<BillingData>")));
                    for (_, name, class) in elements.iter().filter(|e| e.0 == "BillingData") {
                        if rng.chance(80) {
                            if rng.chance(20) {
                                // An attribute of a customer element: protected like its text.
                                pieces.push(Piece::Raw(format!("<{name} note=\"")));
                                if let Piece::Value(v) = plant(rng, *class, 0) {
                                    pieces.push(Piece::Attr(v));
                                }
                                pieces.push(Piece::Raw("\">".into()));
                            } else {
                                pieces.push(Piece::Raw(format!("<{name}>")));
                            }
                            pieces.push(plant(rng, *class, 20));
                            pieces.push(Piece::Raw(format!("</{name}>")));
                        }
                    }
                    pieces.push(Piece::Raw(format!("</BillingData><!-- c -->{nl}<FulfillmentData kind=\"ship\"><Address>")));
                    for (_, name, class) in elements.iter().filter(|e| e.0 == "Address") {
                        if rng.chance(80) {
                            pieces.push(Piece::Raw(format!("<{name}>")));
                            pieces.push(plant(rng, *class, 20));
                            pieces.push(Piece::Raw(format!("</{name}>")));
                        }
                    }
                    pieces.push(Piece::Raw(format!(
                        "<CountryCode>US</CountryCode></Address></FulfillmentData>{nl}<Item><Title>Bolt &amp; nut</Title></Item></OrderReport></Message>{nl}"
                    )));
                }
                pieces.push(Piece::Raw(format!("</AmazonEnvelope>{nl}")));
            }
        }
        let mut actions = crate::rewriter::random_actions(rng);
        let gzip = rng.chance(40).then(|| (rng.below(10) as u8, rng.below(4)));
        let splits = (0..rng.small(6)).map(|_| rng.below(1 << 14)).collect::<Vec<_>>();
        let mutation = rng.chance(25).then(|| (rng.below(4) as u8, rng.below(1 << 14), *rng.pick(b"\t,\n\r\"<>&x\0;/]")));
        if mutation.is_some() {
            // A mutated header name can move a column to another class: with no class in clear,
            // any marker in the output is a leak.
            for c in PiiClass::ALL {
                if actions[c] == Action::Clear {
                    actions[c] = Action::Tokenize(Mode::Deterministic);
                }
            }
        }
        Case { format, report_type, pieces, actions, gzip, splits, mutation }
    }

    fn check(&mut self, case: &Case) -> Result<Outcome, Failure> {
        let text = render(case, &|v| encode(case.format, v));
        let mut doc = text.clone().into_bytes();
        if let Some((level, second)) = case.gzip {
            // Sometimes two members: the document cut in two.
            let cut = if second > 0 { doc.len() * second / 4 } else { doc.len() };
            let mut gz = gzip(&doc[..cut], level);
            if cut < doc.len() {
                gz.extend_from_slice(&gzip(&doc[cut..], level));
            }
            doc = gz;
        }
        if let Some((kind, at, byte)) = case.mutation {
            let at = at % (doc.len() + 1);
            match kind {
                0 if at < doc.len() => doc[at] ^= byte | 1,
                1 if at < doc.len() => {
                    doc.remove(at);
                }
                2 => doc.insert(at, byte),
                _ => doc.truncate(at),
            }
        }
        let mut splits = case.splits.iter().map(|s| s % (doc.len() + 1)).collect::<Vec<_>>();
        splits.sort_unstable();
        let whole = self.rewrite(case, &doc, &[]);
        let split = self.rewrite(case, &doc, &splits);
        let randomized = case.actions.iter().any(|(_, a)| *a == Action::Tokenize(Mode::Randomized));
        let opened = |out: &[u8]| -> Result<String, Failure> {
            let mut s = String::from_utf8_lossy(out).into_owned();
            for t in find_tokens(out) {
                let o = self.guard.tokens.open(t, 0).map_err(|e| Failure::new("token_does_not_open", format!("{t}: {e}")))?;
                s = s.replacen(t, &format!("<{}:{}>", o.class, String::from_utf8_lossy(&o.plaintext)), 1);
            }
            Ok(s)
        };
        match (&whole, &split) {
            (Ok(a), Ok(b)) if a == b || (randomized && opened(a)? == opened(b)?) => {}
            (Err(a), Err(b)) if a == b => {}
            _ => {
                return Err(Failure::new(
                    "split_variant",
                    format!(
                        "whole: {:?}, split at {splits:?}: {:?}",
                        whole.as_ref().map(|o| String::from_utf8_lossy(o).into_owned()),
                        split.as_ref().map(|o| String::from_utf8_lossy(o).into_owned())
                    ),
                ))
            }
        }
        let out = match whole {
            Ok(out) => out,
            Err(e) if case.mutation.is_some() => return Ok(if e == DocumentError::CorruptGzip { "refused_gzip" } else { "refused" }),
            Err(e) => return Err(Failure::new("refused_valid", format!("{e}"))),
        };
        // No marker of a protected class in clear, and every token opens to a planted value.
        let planted: Vec<&Planted> = case
            .pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Value(v) | Piece::Attr(v) => Some(v),
                Piece::Raw(_) => None,
            })
            .collect();
        let out_text = without_tokens(&out);
        for v in &planted {
            if case.actions[v.class] == Action::Clear {
                continue;
            }
            if let Some(m) = v.value.split(|c: char| !c.is_ascii_alphanumeric()).find(|w| w.starts_with("Mk") && w.ends_with('q')) {
                if out_text.contains(m) {
                    return Err(Failure::new("marker_in_clear", format!("{m} ({}) in the output", v.class)));
                }
            }
        }
        for t in find_tokens(&out) {
            let o = self.guard.tokens.open(t, 0).map_err(|e| Failure::new("token_does_not_open", format!("{t}: {e}")))?;
            let plain = String::from_utf8_lossy(&o.plaintext);
            if case.mutation.is_none() && !planted.iter().any(|v| v.class == o.class && v.value == plain) {
                return Err(Failure::new("token_of_no_planted_value", format!("{t} opens to {plain:?} ({})", o.class)));
            }
        }
        if case.mutation.is_some() {
            return Ok("accepted_mutated");
        }
        // The exact document: each value as its class's action says.
        let keys = self.guard.tokens.active_keys(0);
        let expected = render(case, &|v| {
            if v.value.trim().is_empty() {
                return encode(case.format, v);
            }
            match case.actions[v.class] {
                Action::Clear => encode(case.format, v),
                Action::Tokenize(_) => wrap_token(case.format, v, &format!("<{}:{}>", v.class, v.value)),
                Action::Hash => {
                    let mut h = String::new();
                    self.guard.tokens.hash_into(&keys, v.class, ValueKind::Text, v.value.as_bytes(), &mut h);
                    wrap_token(case.format, v, &h)
                }
                Action::Redact => wrap_token(case.format, v, MASK),
                Action::Remove if case.format == Format::Csv && v.wrapped => "\"\"".into(),
                Action::Remove => String::new(),
            }
        });
        let got = opened(&out)?;
        if got != expected {
            return Err(Failure::new("wrong_output", format!("expected {}\n     got {}", json_string(&expected), json_string(&got))));
        }
        Ok(if planted.iter().any(|v| !v.value.trim().is_empty()) { "rewritten" } else { "no_values" })
    }

    fn shrink(&self, case: &Case) -> Vec<Case> {
        let mut out = Vec::new();
        if !case.splits.is_empty() {
            out.push(Case { splits: Vec::new(), ..case.clone() });
        }
        if case.gzip.is_some() {
            out.push(Case { gzip: None, ..case.clone() });
        }
        // (The first piece, the header row or XML prologue, stays whole.)
        for i in (1..case.pieces.len()).rev() {
            if let Piece::Raw(s) = &case.pieces[i] {
                if s.len() > 1 {
                    let mut c = case.clone();
                    c.pieces[i] = Piece::Raw(s.chars().take(s.chars().count() / 2).collect());
                    out.push(c);
                }
            }
        }
        out
    }

    fn describe(&self, case: &Case) -> String {
        let text = render(case, &|v| encode(case.format, v));
        let actions: Vec<String> = case.actions.iter().map(|(c, a)| format!("{c}:{a:?}")).collect();
        format!(
            "{{\"format\":{},\"report_type\":{},\"document\":{},\"document_rust\":{},\"actions\":{},\"gzip\":{},\"splits\":{},\"mutation\":{}}}",
            json_string(&format!("{:?}", case.format)),
            json_string(case.report_type),
            json_string(&text),
            json_string(&rust_bytes(text.as_bytes())),
            json_string(&actions.join(",")),
            json_string(&format!("{:?}", case.gzip)),
            json_string(&format!("{:?}", case.splits)),
            json_string(&format!("{:?}", case.mutation)),
        )
    }
}
