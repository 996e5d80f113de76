//! Report documents through a real Envoy (issue #10): getReport → getReportDocument (the `url`
//! becomes a sealed pointer on the proxy) → a download through the proxy, which re-routes to a
//! local TLS document host (tests/document_host.py, its own CA, reached through Envoy's dynamic
//! forward proxy with SNI and certificate validation) and streams the document back tokenized.
//! Refusals (wrong caller, expired, tampered, hosts outside the allow list, forged route header)
//! and a document corrupt mid-stream (a reset, over HTTP/1.1 and HTTP/2) are audited; nothing of
//! the pre-signed URL, the reference or the planted PII appears in Envoy's output.
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spapi_guard::documents::Reference;
use spapi_guard::tokens::KEY_LEN;
use support::*;

const REPORTS: &str = "/reports/2021-06-30/reports";
const DOCUMENTS: &str = "/reports/2021-06-30/documents";
const FLAT: &str = "GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING";
/// A report type Amazon does not list restricted (its unknown columns go to the drift detectors).
const UNRESTRICTED: &str = "GET_FLAT_FILE_ALL_ORDERS_DATA_BY_ORDER_DATE_GENERAL";
const DRIFTED_ID: &str = "amzn1.spdoc.1.4.na.drifted-tsv";

/// The document host's PKI (tests/gen-document-certs.sh), made once per test run.
fn doc_certs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| make_pki("tests/gen-document-certs.sh", "doc-certs"))
}

/// One generated report document and what was planted in it.
struct Doc {
    /// Report id / document id / file name on the document host.
    id: String,
    report_type: String,
    /// `compressionAlgorithm: GZIP` in the pointer.
    gzip_flag: bool,
    /// The uncompressed document.
    plain: Vec<u8>,
    planted: Vec<String>,
    rows: u64,
}

fn gen_report(dir: &Path, name: &str, args: &[&str]) -> (Value, Vec<u8>) {
    let out = dir.join(name);
    let o = Command::new("python3").arg(repo().join("tests/gen_reports.py")).args(args).arg("--out").arg(&out).output().expect("gen_reports");
    assert!(o.status.success(), "gen_reports.py {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    let manifest: Value = serde_json::from_slice(&o.stdout).expect("manifest");
    (manifest, fs::read(&out).expect("report"))
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip").args(["-dc"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("gzip");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("gzip output");
    let _ = writer.join();
    out.stdout
}

/// `X-Amz-Date` of now (`YYYYMMDDTHHMMSSZ`).
fn amz_date(ms: u64) -> String {
    let t = spapi_guard::audit::rfc3339_ms(ms);
    format!("{}{}{}T{}{}{}Z", &t[0..4], &t[5..7], &t[8..10], &t[11..13], &t[14..16], &t[17..19])
}

fn presigned(port: u16, file: &str) -> String {
    format!(
        "https://localhost:{port}/{file}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={}&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=5ec4e7d1c0ffee",
        amz_date(now_ms())
    )
}

/// The mock SP-API, Envoy with the filter, and the TLS document host with its documents.
struct DocStack {
    stack: Stack,
    key: [u8; KEY_LEN],
    doc_port: u16,
    docs: Vec<Doc>,
    doc_dir: PathBuf,
    host: Child,
    /// The same documents behind a certificate from a CA Envoy does not trust.
    rogue_port: u16,
    rogue: Child,
}

impl Drop for DocStack {
    fn drop(&mut self) {
        for child in [&mut self.host, &mut self.rogue] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn document_host(port: u16, cert: &str, dir: &Path, events: &Path) -> Child {
    let certs = doc_certs();
    Command::new("python3")
        .arg(repo().join("tests/document_host.py"))
        .args(["--port", &port.to_string()])
        .arg("--cert")
        .arg(certs.join(format!("{cert}.crt")))
        .arg("--key")
        .arg(certs.join(format!("{cert}.key")))
        .arg("--dir")
        .arg(dir)
        .arg("--events")
        .arg(events)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("document host")
}

impl DocStack {
    fn start(name: &'static str) -> DocStack {
        let key = random_key();
        let doc_port = free_port();
        let doc_dir = stack_dir(&format!("{name}-docs"));
        let mut docs = Vec::new();
        let mut index = serde_json::Map::new();
        // (file, gen args, compressionAlgorithm GZIP, Content-Encoding: gzip)
        let plan: [(&str, &[&str], bool, bool); 5] = [
            ("flat.tsv", &["--type", FLAT, "--rows", "300"], false, false),
            ("flat.tsv.gz", &["--type", FLAT, "--rows", "300", "--gzip", "--seed", "11"], true, false),
            ("vat.csv.gz", &["--type", "SC_VAT_TAX_REPORT", "--rows", "120", "--gzip"], true, true),
            ("orders.xml", &["--type", "GET_ORDER_REPORT_DATA_SHIPPING", "--format", "xml", "--rows", "60"], false, false),
            ("users.json", &["--type", "END_USER_DATA_REPORT", "--rows", "20"], false, false),
        ];
        for (file, args, gzip_flag, encoded) in plan {
            let (manifest, bytes) = gen_report(&doc_dir, file, args);
            let plain = if args.contains(&"--gzip") { gunzip(&bytes) } else { bytes };
            let planted = manifest["planted"].as_array().expect("planted").iter().map(|p| p["value"].as_str().expect("value").to_string()).collect();
            if encoded {
                index.insert(file.into(), json!({"headers": {"Content-Encoding": "gzip"}}));
            }
            docs.push(Doc {
                id: format!("amzn1.spdoc.1.4.na.{}", file.replace('.', "-")),
                report_type: manifest["type"].as_str().expect("type").to_string(),
                gzip_flag,
                plain,
                planted,
                rows: manifest["rows"].as_u64().expect("rows"),
            });
            fs::rename(doc_dir.join(file), doc_dir.join(&docs.last().expect("doc").id)).expect("rename");
        }
        // A report Amazon does not list restricted, with columns the catalog does not know (schema
        // drift): the drift detectors find the email and the phones there; the known column too.
        let drifted = "amazon-order-id\tcontact-point\tbackup-phone\tloyalty-tier\tship-city\n\
                       111-0000001-0000001\tdrift.buyer@example.com\t+1 206-555-0142\tgold\tSeattle\n\
                       111-0000001-0000002\t\t(206) 555-0177\tsilver\tPortland\n";
        docs.push(Doc {
            id: DRIFTED_ID.into(),
            report_type: UNRESTRICTED.into(),
            gzip_flag: false,
            plain: drifted.as_bytes().to_vec(),
            planted: ["drift.buyer@example.com", "+1 206-555-0142", "(206) 555-0177", "Seattle", "Portland"].map(String::from).to_vec(),
            rows: 2,
        });
        fs::write(doc_dir.join(DRIFTED_ID), drifted).expect("write");
        // A gzip document corrupt after its first MB (the host pauses there, so bytes surely went).
        let (_, big) = gen_report(&doc_dir, "big.tsv.gz", &["--type", FLAT, "--size-mb", "6", "--gzip", "--manifest-rows", "10"]);
        let mut corrupt = big.clone();
        let at = 1024 * 1024;
        assert!(corrupt.len() > at + 4096, "the big document is large enough");
        for b in &mut corrupt[at..at + 4096] {
            *b ^= 0x5a;
        }
        fs::write(doc_dir.join("corrupt"), &corrupt).expect("write");
        index.insert("corrupt".into(), json!({"pause_after": at + 65536}));
        fs::write(doc_dir.join("INDEX.json"), serde_json::to_vec(&index).expect("json")).expect("index");

        let host = document_host(doc_port, "localhost", &doc_dir, &doc_dir.join("events.jsonl"));
        let rogue_port = free_port();
        let rogue = document_host(rogue_port, "rogue", &doc_dir, &doc_dir.join("rogue-events.jsonl"));

        // The mock SP-API: getReport and getReportDocument of each document.
        let mut entries = Vec::new();
        let mut bodies: Vec<(String, String, String, Vec<u8>)> = Vec::new();
        for (i, d) in docs.iter().enumerate() {
            let report = json!({"reportId": format!("r{i}"), "reportType": d.report_type, "processingStatus": "DONE", "reportDocumentId": d.id});
            bodies.push((format!("report_{i}.json"), format!("{REPORTS}/r{i}"), d.id.clone(), serde_json::to_vec(&report).expect("json")));
            let mut pointer = json!({"reportDocumentId": d.id, "url": presigned(doc_port, &d.id)});
            if d.gzip_flag {
                pointer["compressionAlgorithm"] = json!("GZIP");
            }
            bodies.push((format!("document_{i}.json"), format!("{DOCUMENTS}/{}", d.id), d.id.clone(), serde_json::to_vec(&pointer).expect("json")));
        }
        let corrupt_pointer = json!({"reportDocumentId": "corrupt", "url": presigned(doc_port, "corrupt"), "compressionAlgorithm": "GZIP"});
        bodies.push(("document_corrupt.json".into(), format!("{DOCUMENTS}/corrupt"), "corrupt".into(), serde_json::to_vec(&corrupt_pointer).expect("json")));
        let outside = json!({"reportDocumentId": "outside", "url": "https://reports.example.test/doc?X-Amz-Signature=x"});
        bodies.push(("document_outside.json".into(), format!("{DOCUMENTS}/outside"), "outside".into(), serde_json::to_vec(&outside).expect("json")));
        for (file, path, _, body) in &bodies {
            entries.push((file.as_str(), "GET", path.as_str(), 200, json!({"content-type": "application/json"}), false, body.clone()));
        }
        let fixtures = fixture_dir(&format!("{name}-mock"), &entries);

        let mut policy = default_policy();
        policy["documents"] = json!({"hosts": [format!("localhost:{doc_port}"), format!("localhost:{rogue_port}")]});
        policy["access"]["passThroughPaths"].as_array_mut().expect("list").push(json!("/reports/"));
        policy["roles"]["order-sync"]["documents"] = json!({"reportTypes": ["*"]});
        policy["roles"]["label-printer"]["documents"] = json!({"reportTypes": ["GET_FLAT_FILE_*"]});
        // A canary record planted in the drifted report (an order id): alert only.
        policy["canaries"] = json!({"records": [{"id": "canary-report-order", "value": "111-0000001-0000002"}]});
        let mut opts = Options::new(name, &key);
        opts.policy = policy;
        opts.fixture_dirs = vec![fixtures];
        opts.render_args = vec!["--document-trust-store".into(), doc_certs().join("doc-ca.crt").display().to_string()];
        let stack = Stack::start(opts);
        // The document host is up once it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", doc_port)).is_err() {
            assert!(Instant::now() < deadline, "the document host did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        DocStack { stack, key, doc_port, docs, doc_dir, host, rogue_port, rogue }
    }

    fn get(&self, caller: &str, path: &str) -> Response {
        self.stack.send(Client::Cert(caller), "GET", path, &[], None, None).expect("curl")
    }

    /// getReport, then getReportDocument: the pointer's path on the proxy.
    fn pointer(&self, caller: &str, i: usize) -> (Value, String) {
        let report = self.get(caller, &format!("{REPORTS}/r{i}"));
        assert_eq!(report.status, 200, "{}", report.text());
        let document = self.get(caller, &format!("{DOCUMENTS}/{}", self.docs[i].id));
        assert_eq!(document.status, 200, "{}", document.text());
        let body = document.json();
        let url = body["url"].as_str().expect("url").to_string();
        let prefix = format!("https://127.0.0.1:{}/spapi-guard/v1/documents/", self.stack.port);
        let path = url.strip_prefix(&prefix).map(|r| format!("/spapi-guard/v1/documents/{r}")).unwrap_or_else(|| panic!("not a proxy pointer: {url}"));
        (body, path)
    }

    fn host_requests(&self) -> Vec<Value> {
        fs::read_to_string(self.doc_dir.join("events.jsonl")).unwrap_or_default().lines().map(|l| serde_json::from_str(l).expect("event")).collect()
    }

    /// A reference the proxy would accept, sealed by the test with the same key.
    fn seal(&self, url: &str, caller: &str, expires_ms: u64) -> String {
        let reference = Reference { url: url.into(), expires_ms, caller: caller.into(), report_type: Some(FLAT.into()), gzip: false };
        let sealed = reference.seal(&engine(&self.key), now_ms()).expect("sealed");
        format!("/spapi-guard/v1/documents/{sealed}")
    }
}

/// Validates the audit and security events against docs/audit-event.schema.json.
fn assert_schema_valid(stack: &Stack, events: &[Value]) {
    let lines: Vec<String> = events.iter().chain(stack.security_events().iter()).map(Value::to_string).collect();
    let file = stack.dir.join("events.jsonl");
    fs::write(&file, lines.join("\n") + "\n").expect("write");
    let out = Command::new(repo().join(".venv/bin/python")).arg(repo().join("tests/validate_events.py")).arg(&file).output().expect("python");
    assert!(out.status.success(), "schema: {}", String::from_utf8_lossy(&out.stdout));
}

fn caller_id(name: &str) -> String {
    format!("spiffe://spapi-guard.demo/{name}")
}

/// Every token in `text`, opened: token → plaintext.
fn open_tokens(key: &[u8; KEY_LEN], text: &str) -> BTreeMap<String, String> {
    let engine = engine(key);
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some(at) = rest.find("spgt1.") {
        let token: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')).collect();
        let token = token.trim_end_matches('.').to_string();
        let opened = engine.open(&token, now_ms()).unwrap_or_else(|e| panic!("a token in the document does not open ({e:?})"));
        out.insert(token.clone(), String::from_utf8(opened.plaintext).expect("utf-8"));
        rest = &rest[at + token.len()..];
    }
    out
}

/// The document with every token replaced by its plaintext: must be the original, byte for byte.
fn restore(text: &str, tokens: &BTreeMap<String, String>) -> String {
    let mut restored = text.to_string();
    // Longest first: no token is a prefix of another's replacement.
    let mut list: Vec<_> = tokens.iter().collect();
    list.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
    for (token, plain) in list {
        restored = restored.replace(token.as_str(), plain);
    }
    restored
}

#[test]
fn report_documents_stream_through_the_proxy_tokenized_byte_for_byte() {
    let s = DocStack::start("documents");
    let mut secrets: BTreeSet<String> = BTreeSet::new();
    for (i, doc) in s.docs.iter().enumerate() {
        let (pointer, path) = s.pointer("order-sync", i);
        assert!(pointer.get("compressionAlgorithm").is_none(), "compressionAlgorithm removed: {pointer}");
        assert_eq!(pointer["reportDocumentId"], json!(doc.id));
        secrets.insert(path.rsplit('/').next().expect("reference").to_string());
        let got = s.get("order-sync", &path);
        assert_eq!(got.status, 200, "{}: {}", doc.report_type, got.text());
        assert!(got.header("content-length").is_none() && got.header("content-encoding").is_none(), "{:?}", got.headers);
        assert_eq!(got.header("cache-control"), Some("no-store"));
        let text = got.text();
        for value in &doc.planted {
            assert!(!text.contains(value.as_str()), "{}: a planted value came out in clear", doc.report_type);
        }
        let tokens = open_tokens(&s.key, &text);
        let opened: BTreeSet<&str> = tokens.values().map(String::as_str).collect();
        for value in &doc.planted {
            assert!(opened.contains(value.as_str()), "{}: a planted value has no token that opens to it", doc.report_type);
        }
        if doc.report_type != "END_USER_DATA_REPORT" && !text.contains('&') {
            assert!(restore(&text, &tokens).as_bytes() == doc.plain.as_slice(), "{}: every other byte unchanged", doc.report_type);
        }
        secrets.extend(doc.planted.iter().cloned());
    }
    // HTTP/2 to the proxy: the same stream (the gzip TSV), every value protected.
    let (_, path) = s.pointer("order-sync", 1);
    secrets.insert(path.rsplit('/').next().expect("reference").to_string());
    let h2 = s.stack.h2(&H2Request::new(Client::Cert("order-sync"), "GET", &path));
    assert_eq!((h2.status, h2.error.as_deref()), (Some(200), None), "{h2:?}");
    let text = h2.text();
    assert!(s.docs[1].planted.iter().all(|v| !text.contains(v.as_str())));
    assert!(restore(&text, &open_tokens(&s.key, &text)).as_bytes() == s.docs[1].plain.as_slice(), "HTTP/2: every other byte unchanged");
    // The document host got each request as Amazon would: the pre-signed path, SNI/Host its own
    // name, none of the caller's credentials, no route header.
    let requests = s.host_requests();
    assert_eq!(requests.len(), s.docs.len() + 1, "{requests:?}");
    for r in &requests {
        assert!(r["path"].as_str().expect("path").contains("X-Amz-Signature="));
        assert_eq!(r["headers"]["host"], json!(format!("localhost:{}", s.doc_port)));
        for h in ["x-spapi-guard-document-route", "x-amz-access-token", "authorization", "x-spapi-guard-caller"] {
            assert!(r["headers"].get(h).is_none(), "{h} reached the document host");
        }
    }
    let events = s.stack.wait_for_audit_events(3 * (s.docs.len() + 1));
    let downloads: Vec<&Value> = events.iter().filter(|e| e.get("document").is_some()).collect();
    assert_eq!(downloads.len(), s.docs.len() + 1, "{events:#?}");
    for (e, doc) in downloads.iter().zip(&s.docs) {
        assert_eq!(e["path"], json!("/spapi-guard/v1/documents/{reference}"));
        assert_eq!((e["outcome"].as_str(), e["decision"].as_str()), (Some("protected"), Some("allow")), "{e}");
        assert_eq!(e["document"]["report_type"], json!(doc.report_type));
        assert_eq!(e["document"]["result"], json!("complete"));
        if doc.report_type != "END_USER_DATA_REPORT" {
            // (A JSON document is one value: the rewriter counts no rows in it.)
            assert_eq!(e["document"]["rows"], json!(doc.rows), "{e}");
        }
        let tokenized: u64 = e["pii"].as_object().expect("pii").values().filter_map(|a| a["tokenized"].as_u64()).sum();
        assert!(tokenized >= doc.planted.len() as u64, "{e}");
    }
    // Schema drift in the report that is not restricted: counted in its audit event, one
    // security event per column (its name, never a value), and the drift metric.
    let drifted = downloads.iter().zip(&s.docs).find(|(_, d)| d.id == DRIFTED_ID).map(|(e, _)| *e).expect("the drifted document's event");
    assert_eq!(drifted["drift"], json!({"email": {"protected": 1}, "phone": {"protected": 2}}), "{drifted}");
    assert_eq!(drifted["document"]["unknown_columns"], json!(3), "{drifted}");
    let drift_events: Vec<Value> = s.stack.security_events().into_iter().filter(|e| e["event"] == json!("schema_drift")).collect();
    let columns: BTreeSet<(&str, &str)> = drift_events.iter().map(|e| (e["path"].as_str().unwrap_or(""), e["reason"].as_str().unwrap_or(""))).collect();
    assert_eq!(columns, BTreeSet::from([("column/backup-phone", "phone"), ("column/contact-point", "email")]), "{drift_events:?}");
    assert!(drift_events.iter().all(|e| e["operation"] == json!("documents")), "{drift_events:?}");
    // The canary record in the drifted report: alarmed by its id (never its value), delivered.
    assert_eq!(drifted["canaries"], json!(["canary-report-order"]), "{drifted}");
    let canary_events: Vec<Value> = s.stack.security_events().into_iter().filter(|e| e["event"] == json!("canary_hit")).collect();
    assert_eq!(canary_events.iter().map(|e| e["detail"].clone()).collect::<Vec<_>>(), [json!("canary-report-order")], "{canary_events:?}");
    assert_schema_valid(&s.stack, &events);
    let metrics = s.stack.metrics();
    assert_eq!(metrics.get("spapi_guard_canary_hits_total{canary=\"canary-report-order\"}"), Some(&1), "{metrics:?}");
    assert!(metrics.keys().any(|k| k.starts_with("spapi_guard_documents_total") && k.contains("result=\"complete\"")), "{metrics:?}");
    assert!(
        metrics.keys().any(|k| k.starts_with("spapi_guard_schema_drift_total") && k.contains("operation=\"documents\"") && k.contains("path=\"column/contact-point\"")),
        "{metrics:?}"
    );
    secrets.insert("X-Amz-Signature".into());
    secrets.insert("5ec4e7d1c0ffee".into());
    assert_nothing_printed_holds(&s.stack, &secrets, "report documents");
}

#[test]
fn references_are_refused_to_other_callers_after_expiry_when_tampered_or_off_the_allow_list() {
    let s = DocStack::start("documents-refused");
    let (_, path) = s.pointer("order-sync", 0);
    let code = |r: &Response| r.json()["errors"][0]["details"].as_str().unwrap_or_default().to_string();

    // Another caller, even one whose roles grant documents of this type.
    let other = s.get("label-printer", &path);
    assert_eq!((other.status, code(&other).as_str()), (403, "spapi-guard:document_caller_mismatch"), "{}", other.text());
    // A caller whose roles grant no documents at all.
    let analytics = s.get("analytics", &path);
    assert_eq!(analytics.status, 403, "{}", analytics.text());
    // Tampered: one character changed, or cut short.
    let mut tampered = path.clone().into_bytes();
    let last = tampered.len() - 5;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let r = s.get("order-sync", std::str::from_utf8(&tampered).expect("ascii"));
    assert_eq!((r.status, code(&r).as_str()), (400, "spapi-guard:invalid_document_reference"));
    let r = s.get("order-sync", &path[..path.len() - 10]);
    assert_eq!(r.status, 400);
    // Expired (sealed by the test with the proxy's key, so only the expiry is wrong).
    let expired = s.seal(&presigned(s.doc_port, &s.docs[0].id), &caller_id("order-sync"), now_ms() - 1000);
    let r = s.get("order-sync", &expired);
    assert_eq!((r.status, code(&r).as_str()), (410, "spapi-guard:document_reference_expired"));
    // Valid references to hosts outside the allow list: another name, an IP literal, another port.
    for url in [
        "https://reports.example.test/doc?X-Amz-Signature=x".to_string(),
        format!("https://127.0.0.1:{}/{}?X-Amz-Signature=x", s.doc_port, s.docs[0].id),
        format!("https://localhost:{}/{}?X-Amz-Signature=x", s.doc_port + 1, s.docs[0].id),
        format!("http://localhost:{}/{}?X-Amz-Signature=x", s.doc_port, s.docs[0].id),
    ] {
        let r = s.get("order-sync", &s.seal(&url, &caller_id("order-sync"), now_ms() + 60_000));
        assert_eq!((r.status, code(&r).as_str()), (403, "spapi-guard:document_host_not_allowed"), "{url}");
    }
    // getReportDocument pointing outside the allow list: no pointer at all, and no URL either.
    let r = s.get("order-sync", &format!("{DOCUMENTS}/outside"));
    assert_eq!((r.status, code(&r).as_str()), (502, "spapi-guard:document_host_not_allowed"));
    assert!(!r.text().contains("example.test"));
    // The document host refuses (S3's XML error echoes the request): a 502, never its body.
    let unsigned = s.seal(&format!("https://localhost:{}/{}?X-Amz-Date=20261129T000000Z", s.doc_port, s.docs[0].id), &caller_id("order-sync"), now_ms() + 60_000);
    let r = s.get("order-sync", &unsigned);
    assert_eq!((r.status, code(&r).as_str()), (502, "spapi-guard:document_host_error"), "{}", r.text());
    assert!(!r.text().contains("<Key>"));
    // A document host whose certificate does not chain to the trust store: Envoy's handshake
    // fails, no request reaches it, the client gets Envoy's 503 and no document byte.
    let rogue = s.seal(&presigned(s.rogue_port, &s.docs[0].id), &caller_id("order-sync"), now_ms() + 60_000);
    let r = s.get("order-sync", &rogue);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(s.docs[0].planted.iter().all(|v| !r.text().contains(v.as_str())));
    assert!(fs::read_to_string(s.doc_dir.join("rogue-events.jsonl")).unwrap_or_default().is_empty(), "no request over an unverified connection");
    // A client cannot pick the document route itself: a forged route header and the document
    // host's name on a pass-through path reach Envoy's 404, never the document host.
    let before = s.host_requests().len();
    let forged = s.stack.send(
        Client::Cert("order-sync"),
        "GET",
        &format!("/catalog/{}?X-Amz-Signature=x", s.docs[0].id),
        &[("host", &format!("localhost:{}", s.doc_port)), ("x-spapi-guard-document-route", "1")],
        None,
        None,
    );
    assert_eq!(forged.expect("curl").status, 404);
    assert_eq!(s.host_requests().len(), before, "the forged route reached the document host");
    // getReport + getReportDocument, 2 callers, 2 tampered, 1 expired, 4 outside, 1 pointer, 1 unsigned, 1 rogue, 1 forged.
    let events = s.stack.wait_for_audit_events(16);
    assert!(events.iter().any(|e| e["outcome"] == json!("upstream_failed") && e.get("document").is_some()), "the unverified host: {events:#?}");
    for reason in ["document_caller_mismatch", "invalid_document_reference", "document_reference_expired", "document_host_not_allowed", "document_host_error"] {
        assert!(events.iter().any(|e| e["reason"] == json!(reason)), "{reason} audited: {events:#?}");
    }
    assert!(s.stack.security_events().iter().any(|e| e["event"] == json!("document_refused")));
    assert_schema_valid(&s.stack, &events);
    let secrets: BTreeSet<String> = [path.rsplit('/').next().expect("ref").to_string(), "X-Amz-Signature".into()].into();
    assert_nothing_printed_holds(&s.stack, &secrets, "refused documents");
}

#[test]
fn a_document_corrupt_mid_stream_resets_the_stream_over_http1_and_http2() {
    let s = DocStack::start("documents-corrupt");
    let document = s.get("order-sync", &format!("{DOCUMENTS}/corrupt"));
    let url = document.json()["url"].as_str().expect("url").to_string();
    let path = url.split_once(&format!("127.0.0.1:{}", s.stack.port)).expect("pointer").1.to_string();
    // HTTP/1.1: curl sees the transfer end without its final chunk (exit 18), after bytes arrived.
    let h1 = s.stack.send(Client::Cert("order-sync"), "GET", &path, &[], None, None);
    let err = h1.expect_err("a reset, not a complete response");
    assert!(err.contains("transfer closed") || err.contains("(18)") || err.contains("chunk"), "{err}");
    // HTTP/2: RST_STREAM.
    let (_, path2) = {
        let d = s.get("order-sync", &format!("{DOCUMENTS}/corrupt"));
        let u = d.json()["url"].as_str().expect("url").to_string();
        ((), u.split_once(&format!("127.0.0.1:{}", s.stack.port)).expect("pointer").1.to_string())
    };
    let h2 = s.stack.h2(&H2Request::new(Client::Cert("order-sync"), "GET", &path2));
    assert_eq!(h2.status, Some(200), "{h2:?}");
    assert!(h2.error.as_deref().is_some_and(|e| e.contains("reset")), "{h2:?}");
    // (The client reads one flow-control window, 64 KiB: bytes went before the reset.)
    assert!(!h2.body.is_empty(), "bytes went before the reset");
    let events = s.stack.wait_for_audit_events(4);
    let resets: Vec<&Value> = events.iter().filter(|e| e["outcome"] == json!("reset")).collect();
    assert_eq!(resets.len(), 2, "{events:#?}");
    for e in resets {
        // Inflated garbage may fail the gzip checks or the flat file's shape first.
        assert!(["corrupt_gzip", "malformed_flat_file"].contains(&e["reason"].as_str().unwrap_or_default()), "{e}");
        assert_eq!(e["document"]["result"], json!("reset"));
    }
    assert!(s.stack.security_events().iter().any(|e| e["event"] == json!("fail_closed") && e["detail"] == json!("reset")));
    assert_schema_valid(&s.stack, &events);
}

/// A hostile or broken document host's raw HTTP/1.1 response (tests/document_host.py `raw`), and
/// a reference to it the proxy accepts (a flat file, identity).
fn raw_document(s: &DocStack, name: &str, response: &[u8]) -> String {
    fs::write(s.doc_dir.join(name), response).expect("write");
    let index_file = s.doc_dir.join("INDEX.json");
    let mut index: Value = serde_json::from_slice(&fs::read(&index_file).expect("index")).expect("json");
    index[name] = json!({"raw": true});
    fs::write(&index_file, serde_json::to_vec(&index).expect("json")).expect("index");
    s.seal(&presigned(s.doc_port, name), &caller_id("order-sync"), now_ms() + 60_000)
}

#[test]
fn a_hostile_document_hosts_headers_trailers_and_broken_responses_never_reach_the_client() {
    let s = DocStack::start("documents-hostile");
    let (name, email) = ("Jane Hostilehost", "jane.hostile@example.com");
    let tsv = format!("order-id\tbuyer-name\tbuyer-email\tquantity-purchased\n111-2223333-4444444\t{name}\t{email}\t1\n");
    // Headers no S3 object should carry, but a document host can: the buyer's data in user
    // metadata and a file name, a cookie, a redirect target, and a trailer with PII (chunked).
    let mut chunked = String::new();
    for part in tsv.as_bytes().chunks(16) {
        chunked += &format!("{:x}\r\n{}\r\n", part.len(), String::from_utf8_lossy(part));
    }
    chunked += &format!("0\r\nx-buyer-email: {email}\r\n\r\n");
    let hostile = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/tab-separated-values\r\nx-amz-meta-buyer: {name}\r\nContent-Disposition: attachment; filename=\"{email}.tsv\"\r\n\
         Set-Cookie: session=hostile\r\nLocation: https://evil.example.test/{email}\r\nTrailer: x-buyer-email\r\nx-amz-request-id: 4442587FB7D0A2F9\r\n\
         Transfer-Encoding: chunked\r\n\r\n{chunked}"
    );
    let path = raw_document(&s, "hostile-headers", hostile.as_bytes());
    let check = |headers: &[(String, String)], body: &[u8], trailers: &[(String, String)], how: &str| {
        let text = String::from_utf8_lossy(body);
        assert!(!text.contains(name) && !text.contains(email) && text.contains("spgt1."), "{how}: {text}");
        for (k, v) in headers.iter().chain(trailers) {
            assert!(!v.contains(name) && !v.contains(email) && !v.contains("hostile") && !v.contains("evil"), "{how}: {k}: {v} reached the client");
            assert!(
                !["set-cookie", "location", "content-disposition", "trailer", "x-buyer-email"].contains(&k.to_ascii_lowercase().as_str()) && !k.starts_with("x-amz-meta-"),
                "{how}: {k}"
            );
        }
        assert!(headers.iter().any(|(k, v)| k == "x-amz-request-id" && v == "4442587FB7D0A2F9"), "{how}: Amazon's request id is kept");
    };
    let h1 = s.get("order-sync", &path);
    assert_eq!(h1.status, 200, "{}", h1.text());
    check(&h1.headers, &h1.body, &[], "HTTP/1.1");
    let h2 = s.stack.h2(&H2Request::new(Client::Cert("order-sync"), "GET", &path));
    assert_eq!((h2.status, h2.error.as_deref()), (Some(200), None), "{h2:?}");
    check(&h2.headers, &h2.body, &h2.trailers, "HTTP/2");

    // Protocol corners that held (the attack review): each is refused before a byte (502 with
    // its code) or reset after bytes went, never delivered as a complete document.
    let code = |r: &Response| r.json()["errors"][0]["details"].as_str().unwrap_or_default().to_string();
    // A redirect (to the proxy's own document host, to the buyer's data): Envoy does not follow
    // it, the client gets a 502 without the Location.
    let before = s.host_requests().len();
    for status in ["301 Moved Permanently", "302 Found", "307 Temporary Redirect"] {
        let target = format!("https://localhost:{}/{}?X-Amz-Signature=x&to={email}", s.doc_port, s.docs[0].id);
        let path = raw_document(&s, "redirect", format!("HTTP/1.1 {status}\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n").as_bytes());
        let r = s.get("order-sync", &path);
        assert_eq!((r.status, code(&r).as_str()), (502, "spapi-guard:document_host_error"), "{status}");
        assert!(r.header("location").is_none() && !r.text().contains(email), "{status}: {:?}", r.headers);
    }
    assert_eq!(s.host_requests().len(), before + 3, "a redirect is never followed");
    // Two Content-Encoding headers (identity, then gzip): Envoy joins them, the filter refuses the list.
    let gz = spapi_guard::report::gzip(tsv.as_bytes(), 6);
    let mut twice = format!("HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n", gz.len()).into_bytes();
    twice.extend_from_slice(&gz);
    let r = s.get("order-sync", &raw_document(&s, "two-encodings", &twice));
    assert_eq!((r.status, code(&r).as_str()), (502, "spapi-guard:unsupported_content_encoding"));
    // A gzip member followed by bytes that are no member: refused (a 502, or a reset if the first
    // member's rows went in an earlier chunk), never the first member passed as the whole.
    let mut trailing = format!("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n", gz.len() + 9).into_bytes();
    trailing.extend_from_slice(&gz);
    trailing.extend_from_slice(b"\tgarbage\n");
    match s.stack.send(Client::Cert("order-sync"), "GET", &raw_document(&s, "gzip-trailing", &trailing), &[], None, None) {
        Ok(r) => assert_eq!((r.status, code(&r).as_str()), (502, "spapi-guard:corrupt_gzip")),
        Err(err) => assert!(err.contains("(18)") || err.contains("transfer closed"), "{err}"),
    }
    // A body shorter than its Content-Length, then the connection closes: the client sees the
    // transfer cut, never an end.
    let short = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{tsv}", tsv.len() + 100);
    let err = s.stack.send(Client::Cert("order-sync"), "GET", &raw_document(&s, "short", short.as_bytes()), &[], None, None).expect_err("short");
    assert!(err.contains("(18)") || err.contains("transfer closed"), "short: {err}");
    // An uncompressed body that only the connection's close ends (HTTP/1.0, no length, not
    // chunked), cut inside a record or right after a complete one: nothing tells it from the whole
    // document, so it is refused before any byte (it used to pass as complete when cut after a
    // record: found by the attack review).
    let cut = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{tsv}111-2223333-5555555\t{name}");
    let whole_records = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{tsv}");
    for (file, response) in [("cut", cut), ("close-delimited", whole_records)] {
        let r = s.get("order-sync", &raw_document(&s, file, response.as_bytes()));
        assert_eq!((r.status, code(&r).as_str()), (502, "spapi-guard:document_length_unknown"), "{file}");
        assert!(!r.text().contains(name), "{file}");
    }
    // Every refusal and reset above is audited with a reason the audit schema knows.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut events = s.stack.audit_events();
    while events.iter().filter(|e| e["reason"] == json!("document_length_unknown")).count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        events = s.stack.audit_events();
    }
    assert_eq!(events.iter().filter(|e| e["reason"] == json!("document_length_unknown")).count(), 2, "{events:#?}");
    assert_schema_valid(&s.stack, &events);
    let secrets: BTreeSet<String> = [name.to_string(), email.to_string(), "X-Amz-Signature".into(), "5ec4e7d1c0ffee".into()].into();
    assert_nothing_printed_holds(&s.stack, &secrets, "a hostile document host");
}
