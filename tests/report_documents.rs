//! Report documents written by tests/gen_reports.py (the generator the end-to-end tests serve)
//! through the document rewriter, in the chunks a stream brings: no planted value comes out in
//! clear, every token opens to a planted value of the right class, and (flat files without
//! quoting) every other byte is the input's.
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;

use spapi_guard::guard::Guard;
use spapi_guard::pii::PiiClass;
use spapi_guard::report::{find_tokens, Compression, DocumentFormat, DocumentRewriter};

const KEY_HEX: &str = "8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

fn guard() -> Rc<Guard> {
    let config = r#"{"version":1,"keys":{"active":"k1","env":{"k1":"K1"}},"classes":{"address":{"mode":"randomized"}}}"#;
    Rc::new(Guard::load(config.as_bytes(), &|_| Some(KEY_HEX.to_string())).expect("policy"))
}

struct Generated {
    document: Vec<u8>,
    /// (class, value) of every planted value.
    planted: Vec<(String, String)>,
}

fn generate(args: &[&str]) -> Generated {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("report-documents");
    std::fs::create_dir_all(&dir).expect("dir");
    let out = dir.join(format!("{}.doc", args.join("_").replace(['-', ' ', '/'], "")));
    let output = Command::new("python3").arg(root.join("tests/gen_reports.py")).args(args).arg("--out").arg(&out).output().expect("python3");
    assert!(output.status.success(), "gen_reports.py {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&output.stdout).expect("manifest");
    let planted = manifest["planted"]
        .as_array()
        .expect("planted")
        .iter()
        .map(|p| (p["class"].as_str().expect("class").to_string(), p["value"].as_str().expect("value").to_string()))
        .collect::<Vec<_>>();
    assert_eq!(planted.len() as u64, manifest["planted_total"].as_u64().expect("total"), "every value listed");
    Generated { document: std::fs::read(&out).expect("document"), planted }
}

/// Rewrites `doc` in chunks of `chunk` bytes.
fn rewrite(g: &Rc<Guard>, report_type: &str, compression: Compression, doc: &[u8], chunk: usize) -> (Vec<u8>, spapi_guard::report::DocumentSummary) {
    let mut r = DocumentRewriter::new(g.clone(), *g.policy.actions(), Some(report_type), compression, 0).expect("rewriter");
    let mut out = Vec::new();
    for piece in doc.chunks(chunk) {
        r.push(piece, &mut out).unwrap_or_else(|e| panic!("{report_type}: {e}"));
    }
    let summary = r.finish(&mut out).unwrap_or_else(|e| panic!("{report_type}: {e}"));
    (out, summary)
}

/// No planted value in clear (nor its XML or CSV spelling); every token opens to a planted
/// value of its class, and there is one per non-empty planted value. Returns the output with
/// each token replaced by its plaintext.
fn check(g: &Guard, generated: &Generated, out: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(out);
    let spellings: Vec<String> = generated
        .planted
        .iter()
        .flat_map(|(_, v)| [v.clone(), v.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;"), v.replace('"', "\"\"")])
        .filter(|v| !v.trim().is_empty())
        .collect();
    let finder = aho_corasick::AhoCorasick::new(&spellings).expect("patterns");
    if let Some(m) = finder.find(text.as_ref()) {
        panic!("planted value {:?} in the output", spellings[m.pattern().as_usize()]);
    }
    let mut by_value: HashMap<(String, String), usize> = HashMap::new();
    for (class, value) in &generated.planted {
        if !value.trim().is_empty() {
            *by_value.entry((class.clone(), value.clone())).or_default() += 1;
        }
    }
    let mut restored = Vec::with_capacity(out.len());
    let mut copied = 0;
    for t in find_tokens(out) {
        let opened = g.tokens.open(t, 0).unwrap_or_else(|e| panic!("{t}: {e}"));
        let plain = String::from_utf8(opened.plaintext).expect("utf8");
        let class = opened.class.as_str();
        let n = by_value.get_mut(&(class.to_string(), plain.clone())).unwrap_or_else(|| panic!("{t} opens to {plain:?} ({class}), not a planted value"));
        assert!(*n > 0, "more tokens of {plain:?} than planted");
        *n -= 1;
        let at = t.as_ptr() as usize - out.as_ptr() as usize;
        restored.extend_from_slice(&out[copied..at]);
        restored.extend_from_slice(plain.as_bytes());
        copied = at + t.len();
    }
    restored.extend_from_slice(&out[copied..]);
    assert!(by_value.values().all(|&n| n == 0), "planted values without a token: {:?}", by_value.iter().filter(|(_, &n)| n > 0).collect::<Vec<_>>());
    restored
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let g = guard();
    let mut actions = *g.policy.actions();
    for c in PiiClass::ALL {
        actions[c] = spapi_guard::policy::Action::Clear;
    }
    let mut r = DocumentRewriter::new(g, actions, None, Compression::Gzip, 0).expect("rewriter");
    let mut out = Vec::new();
    r.push(data, &mut out).expect("inflates");
    r.finish(&mut out).expect("inflates");
    out
}

#[test]
fn flat_files_every_planted_value_tokenized_every_other_byte_unchanged() {
    let g = guard();
    for (report_type, extra) in [
        ("GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING", &[][..]),
        ("GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING", &["--crlf", "--bom", "--tricky"][..]),
        ("GET_AMAZON_FULFILLED_SHIPMENTS_DATA_INVOICING", &["--gzip"][..]),
        ("GET_FLAT_FILE_ORDER_REPORT_DATA_TAX", &["--gzip", "--tricky"][..]),
        ("GET_FLAT_FILE_ORDERS_RECONCILIATION_DATA_SHIPPING", &[][..]),
        ("GET_FLAT_FILE_VAT_INVOICE_DATA_REPORT", &["--crlf"][..]),
        ("GET_FLAT_FILE_ALL_ORDERS_DATA_BY_ORDER_DATE_GENERAL", &[][..]),
        ("SC_VAT_TAX_REPORT", &[][..]),
        ("GET_VAT_TRANSACTION_DATA", &["--gzip", "--crlf"][..]),
        ("GET_GST_MTR_B2B_CUSTOM", &[][..]),
        ("GET_GST_MTR_B2B_CUSTOM", &["--tricky", "--crlf"][..]),
    ] {
        let mut args = vec!["--type", report_type, "--rows", "300"];
        args.extend_from_slice(extra);
        let generated = generate(&args);
        let gz = extra.contains(&"--gzip");
        let compression = if gz { Compression::Gzip } else { Compression::Identity };
        for chunk in [1 << 16, 4093] {
            let (out, summary) = rewrite(&g, report_type, compression, &generated.document, chunk);
            assert_eq!(summary.rows, 300, "{report_type}");
            assert_eq!(summary.counts.total() as usize, generated.planted.iter().filter(|(_, v)| !v.trim().is_empty()).count(), "{report_type}");
            assert!(matches!(summary.format, DocumentFormat::Delimited { .. }), "{report_type}");
            let restored = check(&g, &generated, &out);
            let original = if gz { gunzip(&generated.document) } else { generated.document.clone() };
            // Tokens stand where the values stood: put back, the document is the input byte for
            // byte (but for quoted CSV values, whose quotes inside are doubled in the input).
            if !(extra.contains(&"--tricky") && summary.format == DocumentFormat::Delimited { delimiter: b',' }) {
                assert_eq!(String::from_utf8_lossy(&restored), String::from_utf8_lossy(&original), "{report_type} {extra:?}");
            }
        }
    }
}

#[test]
fn xml_and_json_reports_every_planted_value_tokenized() {
    let g = guard();
    for (report_type, extra, format) in [
        ("GET_ORDER_REPORT_DATA_SHIPPING", &[][..], DocumentFormat::Xml),
        ("GET_ORDER_REPORT_DATA_INVOICING", &["--tricky", "--crlf", "--bom", "--gzip"][..], DocumentFormat::Xml),
        ("END_USER_DATA_REPORT", &[][..], DocumentFormat::Json),
        ("END_USER_DATA_REPORT", &["--gzip", "--tricky"][..], DocumentFormat::Json),
    ] {
        let mut args = vec!["--type", report_type, "--rows", "120"];
        args.extend_from_slice(extra);
        let generated = generate(&args);
        let compression = if extra.contains(&"--gzip") { Compression::Gzip } else { Compression::Identity };
        let (out, summary) = rewrite(&g, report_type, compression, &generated.document, 8191);
        assert_eq!(summary.format, format);
        if format == DocumentFormat::Xml {
            assert_eq!(summary.rows, 120);
        }
        check(&g, &generated, &out);
    }
}
