//! Unit tests of the document rewriter (native, and in Wasmtime with `make test-wasm`).
use super::*;
use crate::drift::{DriftAction, DriftKind};
use crate::pii::PiiClass;
use crate::policy::Action;
use crate::tokens::Mode;

const KEY_HEX: &str = "8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
const ORDERS: &str = "GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING";

fn guard_with(extra: &str) -> Rc<Guard> {
    let config = format!(r#"{{"version":1,"keys":{{"active":"k1","env":{{"k1":"SPAPI_GUARD_KEY_K1"}}}}{extra}}}"#);
    Rc::new(Guard::load(config.as_bytes(), &|name| (name == "SPAPI_GUARD_KEY_K1").then(|| KEY_HEX.to_string())).expect("loads"))
}

fn guard() -> Rc<Guard> {
    guard_with("")
}

fn rewriter(g: &Rc<Guard>, report_type: Option<&str>, compression: Compression) -> DocumentRewriter {
    DocumentRewriter::new(g.clone(), *g.policy.actions(), report_type, compression, 0).expect("rewriter")
}

/// Pushes `doc` in the pieces `splits` cut it into; the output and the summary, or the error.
fn run_split(g: &Rc<Guard>, report_type: Option<&str>, compression: Compression, doc: &[u8], splits: &[usize]) -> Result<(Vec<u8>, DocumentSummary), DocumentError> {
    let mut r = DocumentRewriter::new(g.clone(), *g.policy.actions(), report_type, compression, 0)?;
    let mut out = Vec::new();
    let mut at = 0;
    for &s in splits.iter().chain(std::iter::once(&doc.len())) {
        r.push(&doc[at..s], &mut out)?;
        at = s;
    }
    let summary = r.finish(&mut out)?;
    Ok((out, summary))
}

fn run(g: &Rc<Guard>, report_type: Option<&str>, doc: &[u8]) -> Result<(Vec<u8>, DocumentSummary), DocumentError> {
    run_split(g, report_type, Compression::Identity, doc, &[])
}

/// Replaces every token of `text` by `<class:plaintext>` (each must open).
fn opened(g: &Guard, text: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(text).into_owned();
    for t in find_tokens(text) {
        let o = g.tokens.open(t, 0).unwrap_or_else(|e| panic!("{t} does not open: {e}"));
        s = s.replacen(t, &format!("<{}:{}>", o.class, String::from_utf8_lossy(&o.plaintext)), 1);
    }
    s
}

/// A small xorshift generator (no crate): random splits.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn splits(&mut self, len: usize, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).map(|_| (self.next() as usize) % (len + 1)).collect();
        v.sort_unstable();
        v
    }
}

/// The output of `doc` is the same for every single split point, and for random multi-splits.
fn assert_split_invariant(g: &Rc<Guard>, report_type: Option<&str>, compression: Compression, doc: &[u8]) -> Vec<u8> {
    let (whole, summary) = run_split(g, report_type, compression, doc, &[]).expect("rewrites");
    for s in 0..=doc.len() {
        let (out, sum) = run_split(g, report_type, compression, doc, &[s]).unwrap_or_else(|e| panic!("split at {s}: {e}"));
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&whole), "split at {s}");
        assert_eq!(sum, summary, "split at {s}");
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..200 {
        let n = (rng.next() % 12) as usize + 1;
        let splits = rng.splits(doc.len(), n);
        let (out, _) = run_split(g, report_type, compression, doc, &splits).expect("rewrites");
        assert_eq!(out, whole, "splits {splits:?}");
    }
    whole
}

const TSV: &str = "\u{feff}order-id\tbuyer-email\tbuyer-name\tproduct-name\tship-city\tship-country\r\n\
                   111-1\tjane@example.com\tJane Doe\tWidget 12\" ruler\tZürich\tCH\r\n\
                   \r\n\
                   111-2\t\tJoe Bloggs\tBolt, M4\t東京\tJP\r\n";

#[test]
fn sniffs_formats_from_the_first_bytes() {
    assert_eq!(sniff(b"order-id\tbuyer-email\n"), DocumentFormat::Delimited { delimiter: b'\t' });
    assert_eq!(sniff(b"\xEF\xBB\xBFOrder ID,Buyer Name\r\n"), DocumentFormat::Delimited { delimiter: b',' });
    assert_eq!(sniff(b"a\tb,c"), DocumentFormat::Delimited { delimiter: b'\t' }, "the tab wins");
    assert_eq!(sniff(b"  \n<?xml version=\"1.0\"?>"), DocumentFormat::Xml);
    assert_eq!(sniff(b"{\"endUserData\":[]}"), DocumentFormat::Json);
    assert_eq!(sniff(b"[1]"), DocumentFormat::Json);
    assert_eq!(sniff(b"%PDF-1.7\n"), DocumentFormat::Binary);
    assert_eq!(sniff(b"PK\x03\x04\x14\x00"), DocumentFormat::Binary);
    assert_eq!(sniff(b"just one column\nx\n"), DocumentFormat::Unknown);
    assert_eq!(sniff(b""), DocumentFormat::Unknown);
    assert_eq!(sniff(b"\xEF\xBB\xBF\r\n\na\tb\n"), DocumentFormat::Delimited { delimiter: b'\t' }, "after blank lines");
}

#[test]
fn tsv_customer_columns_are_tokenized_every_other_byte_unchanged() {
    let g = guard();
    let (out, summary) = run(&g, Some(ORDERS), TSV.as_bytes()).expect("rewrites");
    let text = String::from_utf8(out.clone()).expect("utf8");
    for clear in ["jane@example.com", "Jane Doe", "Zürich", "Joe Bloggs", "東京"] {
        assert!(!text.contains(clear), "{clear} in {text}");
    }
    assert_eq!(
        opened(&g, &out),
        "\u{feff}order-id\tbuyer-email\tbuyer-name\tproduct-name\tship-city\tship-country\r\n\
         111-1\t<email:jane@example.com>\t<name:Jane Doe>\tWidget 12\" ruler\t<address:Zürich>\tCH\r\n\
         \r\n\
         111-2\t\t<name:Joe Bloggs>\tBolt, M4\t<address:東京>\tJP\r\n"
    );
    assert_eq!(summary.format, DocumentFormat::Delimited { delimiter: b'\t' });
    assert_eq!(summary.rows, 2, "the empty line is no row");
    assert_eq!(summary.counts.get(PiiClass::Name, Action::Tokenize(Mode::Deterministic)), 2);
    assert_eq!(summary.counts.get(PiiClass::Email, Action::Tokenize(Mode::Deterministic)), 1, "an empty value is kept, not counted");
    assert_eq!(summary.counts.total(), 5);
    assert_eq!((summary.bytes_in, summary.bytes_out), (TSV.len() as u64, out.len() as u64));
    assert_eq!(summary.report_type.as_deref(), Some(ORDERS));
    assert_eq!(summary.unknown_columns, 0);
}

#[test]
fn tsv_output_is_the_same_at_every_split_and_gzipped() {
    let g = guard();
    let plain = assert_split_invariant(&g, Some(ORDERS), Compression::Identity, TSV.as_bytes());
    for level in [0, 1, 9] {
        let gz = gzip(TSV.as_bytes(), level);
        assert_eq!(assert_split_invariant(&g, Some(ORDERS), Compression::Gzip, &gz), plain, "level {level}");
        // Gzip is recognized by its magic bytes too.
        assert_eq!(run_split(&g, Some(ORDERS), Compression::Identity, &gz, &[1]).expect("inflates").0, plain);
    }
    // Without a final line end, or with a CR alone at the end (not part of the value).
    let trimmed = TSV.trim_end_matches("\r\n");
    let out = assert_split_invariant(&g, Some(ORDERS), Compression::Identity, trimmed.as_bytes());
    assert_eq!(out, &plain[..plain.len() - 2]);
    let out = assert_split_invariant(&g, Some(ORDERS), Compression::Identity, TSV.trim_end_matches('\n').as_bytes());
    assert_eq!(out, &plain[..plain.len() - 1]);
}

#[test]
fn randomized_tokens_open_to_the_same_document_at_every_split() {
    let g = guard_with(r#","classes":{"name":{"mode":"randomized"},"address":{"mode":"randomized"},"email":{"mode":"randomized"}}"#);
    let (whole, _) = run(&g, Some(ORDERS), TSV.as_bytes()).expect("rewrites");
    let expected = opened(&g, &whole);
    for s in 0..=TSV.len() {
        let (out, _) = run_split(&g, Some(ORDERS), Compression::Identity, TSV.as_bytes(), &[s]).expect("rewrites");
        assert_eq!(opened(&g, &out), expected, "split at {s}");
    }
}

const CSV: &str = "Order ID,Buyer Name,Ship To City,Gift Message,Quantity\n\
                   1,\"Doe, Jane \"\"JD\"\"\",\"Line\nbreak\",\"Happy, \"\"day\"\"\",\"3\"\n\
                   2,Plain Name,,,\"1,5\"\n";

#[test]
fn csv_quoting_is_read_and_kept_well_formed() {
    let g = guard();
    let out = assert_split_invariant(&g, Some("SC_VAT_TAX_REPORT"), Compression::Identity, CSV.as_bytes());
    assert_eq!(
        opened(&g, &out),
        "Order ID,Buyer Name,Ship To City,Gift Message,Quantity\n\
         1,\"<name:Doe, Jane \"JD\">\",\"<address:Line\nbreak>\",\"<gift_message:Happy, \"day\">\",\"3\"\n\
         2,<name:Plain Name>,,,\"1,5\"\n"
    );
    // Without tokens, the quoted fields are written back byte for byte.
    let clear = {
        let mut actions = *g.policy.actions();
        for c in PiiClass::ALL {
            actions[c] = Action::Clear;
        }
        let mut r = DocumentRewriter::new(g.clone(), actions, Some("SC_VAT_TAX_REPORT"), Compression::Identity, 0).expect("rewriter");
        let mut out = Vec::new();
        r.push(CSV.as_bytes(), &mut out).expect("push");
        let summary = r.finish(&mut out).expect("finish");
        assert_eq!(summary.counts.get(PiiClass::Name, Action::Clear), 2);
        out
    };
    assert_eq!(clear, CSV.as_bytes());
}

#[test]
fn each_action_keeps_the_row_shape() {
    let g = guard_with(r#","redactMask":"X, \"Y\"""#);
    let mut actions = *g.policy.actions();
    actions[PiiClass::Name] = Action::Redact;
    actions[PiiClass::Address] = Action::Remove;
    actions[PiiClass::GiftMessage] = Action::Hash;
    let mut r = DocumentRewriter::new(g.clone(), actions, Some("SC_VAT_TAX_REPORT"), Compression::Identity, 0).expect("rewriter");
    let mut out = Vec::new();
    r.push(CSV.as_bytes(), &mut out).expect("push");
    let summary = r.finish(&mut out).expect("finish");
    let text = String::from_utf8(out).expect("utf8");
    let lines: Vec<&str> = text.split('\n').collect();
    let (head, rest) = lines[1].split_once("\"spgh2.k1.gift_message.").expect("hashed gift message");
    assert_eq!(head, "1,\"X, \"\"Y\"\"\",\"\",", "the mask quoted, the removed address an empty quoted field");
    assert!(rest.ends_with("\",\"3\""), "{rest}");
    assert_eq!(lines[2], "2,\"X, \"\"Y\"\"\",,,\"1,5\"", "a mask with a comma is quoted");
    assert_eq!(summary.counts.get(PiiClass::Address, Action::Remove), 1);
    assert_eq!(summary.counts.get(PiiClass::Name, Action::Redact), 2);
    // In a tab-separated file, the mask as it is (a policy's mask has no control characters).
    let mut r = DocumentRewriter::new(g.clone(), actions, Some(ORDERS), Compression::Identity, 0).expect("rewriter");
    let mut out = Vec::new();
    r.push(b"order-id\tbuyer-name\n1\tJane\n", &mut out).expect("push");
    r.finish(&mut out).expect("finish");
    assert_eq!(out, b"order-id\tbuyer-name\n1\tX, \"Y\"\n");
}

#[test]
fn unknown_columns_of_restricted_reports_are_protected() {
    let g = guard();
    let doc = "order-id\tloyalty-tier\talt-phone\tship-country\n1\tgold\t555-0100\tUS\n";
    let (out, summary) = run(&g, Some(ORDERS), doc.as_bytes()).expect("rewrites");
    assert_eq!(opened(&g, &out), "order-id\tloyalty-tier\talt-phone\tship-country\n1\t<other:gold>\t<phone:555-0100>\tUS\n");
    assert_eq!(summary.unknown_columns, 2);
    // Unknown report types are restricted too.
    let (out, _) = run(&g, Some("GET_SOMETHING_NEW"), doc.as_bytes()).expect("rewrites");
    assert!(!String::from_utf8_lossy(&out).contains("gold"));
    let (out, _) = run(&g, None, doc.as_bytes()).expect("rewrites");
    assert!(!String::from_utf8_lossy(&out).contains("gold"));
    // A report Amazon does not restrict: its known customer columns, and the drift detectors
    // over the unknown one (nothing there looks like PII: kept).
    let doc = "amazon-order-id\tloyalty-tier\tship-city\n1\tgold\tSeattle\n";
    let (out, summary) = run(&g, Some(UNRESTRICTED), doc.as_bytes()).expect("rewrites");
    assert_eq!(opened(&g, &out), "amazon-order-id\tloyalty-tier\tship-city\n1\tgold\t<address:Seattle>\n");
    assert_eq!(summary.unknown_columns, 1);
    assert!(summary.drift.is_empty());
}

const UNRESTRICTED: &str = "GET_FLAT_FILE_ALL_ORDERS_DATA_BY_ORDER_DATE_GENERAL";

/// A report Amazon does not list restricted, with columns the catalog does not know (schema
/// drift): what the detectors find there is protected or reported as the policy's `drift` says;
/// every other byte is unchanged.
const DRIFTED_CSV: &str = "amazon-order-id,contact-point,backup-phone,delivery-contact-name,drop-off-note,ship-city\r\n\
1,jane.doe@example.com,+1 206-555-0100,Jane Doe,\"Leave at door, \"\"back\"\"\",Seattle\r\n\
2,,(206) 555-0199,\"John Doe\",12 Main Street,Portland\r\n\
3,n/a,ABC-123,gold tier,see notes,Austin\r\n";

#[test]
fn unknown_columns_of_other_reports_go_to_the_drift_detectors() {
    let g = guard();
    let (out, summary) = run(&g, Some(UNRESTRICTED), DRIFTED_CSV.as_bytes()).expect("rewrites");
    // Default detectors: email and phone tokenized; address and name reported, left as they are.
    assert_eq!(
        opened(&g, &out),
        "amazon-order-id,contact-point,backup-phone,delivery-contact-name,drop-off-note,ship-city\r\n\
         1,<email:jane.doe@example.com>,<phone:+1 206-555-0100>,Jane Doe,\"Leave at door, \"\"back\"\"\",<address:Seattle>\r\n\
         2,,<phone:(206) 555-0199>,\"John Doe\",12 Main Street,<address:Portland>\r\n\
         3,n/a,ABC-123,gold tier,see notes,<address:Austin>\r\n"
    );
    assert_eq!(summary.unknown_columns, 4);
    assert_eq!(summary.drift.count(DriftKind::Email, DriftAction::Protected), 1);
    assert_eq!(summary.drift.count(DriftKind::Phone, DriftAction::Protected), 2);
    assert_eq!(summary.drift.count(DriftKind::Name, DriftAction::Reported), 2);
    assert_eq!(summary.drift.count(DriftKind::Address, DriftAction::Reported), 1);
    let paths: Vec<String> = summary.drift.findings().iter().map(crate::drift::describe).collect();
    assert_eq!(
        paths,
        [
            "email protected at column/contact-point",
            "phone protected at column/backup-phone",
            "name reported at column/delivery-contact-name",
            "address reported at column/drop-off-note"
        ]
    );
    assert_eq!(summary.counts.get(PiiClass::Email, Action::Tokenize(Mode::Deterministic)), 1);
    // Every detector set to tokenize: the name and the address line too (a quoted value stays
    // quoted); the policy's drift section off: the unknown columns pass as they came.
    let all = guard_with(r#","drift":{"detectors":{"address":"tokenize","name":"tokenize"}}"#);
    let (out, summary) = run(&all, Some(UNRESTRICTED), DRIFTED_CSV.as_bytes()).expect("rewrites");
    let text = opened(&all, &out);
    assert!(text.contains(",<name:Jane Doe>,") && !text.contains(",12 Main Street,") && text.contains(",\"<name:John Doe>\","), "{text}");
    assert_eq!(summary.drift.count(DriftKind::Name, DriftAction::Protected), 2);
    let off = guard_with(r#","drift":{"detectors":{"email":"off","phone":"off","address":"off","name":"off"}}"#);
    let (out, summary) = run(&off, Some(UNRESTRICTED), DRIFTED_CSV.as_bytes()).expect("rewrites");
    assert!(String::from_utf8_lossy(&out).contains("jane.doe@example.com"));
    assert_eq!(summary.unknown_columns, 0);
    assert!(summary.drift.is_empty());
    // Split at every byte: the same output.
    let (whole, _) = run(&g, Some(UNRESTRICTED), DRIFTED_CSV.as_bytes()).expect("rewrites");
    for at in 0..=DRIFTED_CSV.len() {
        let (split, _) = run_split(&g, Some(UNRESTRICTED), Compression::Identity, DRIFTED_CSV.as_bytes(), &[at]).expect("rewrites");
        assert_eq!(split, whole, "split at {at}");
    }
}

#[test]
fn malformed_flat_files_fail_closed_before_the_bad_record_is_sent() {
    let g = guard();
    let header = "order-id\tsku\tbuyer-name\n";
    // A missing tab would shift the name into a clear column: the record is refused whole.
    for bad in ["1\tJane Doe\n", "1\tS\tJane Doe\textra\n", "1\tS\tJane Doe\tJane Doe\n"] {
        let doc = format!("{header}0\tS\tok\n{bad}");
        let mut r = rewriter(&g, Some(ORDERS), Compression::Identity);
        let mut out = Vec::new();
        let mut sent = Vec::new();
        let mut failed = false;
        for b in doc.as_bytes() {
            match r.push(std::slice::from_ref(b), &mut out) {
                Ok(()) => sent.extend_from_slice(&out),
                Err(e) => {
                    assert_eq!(e, DocumentError::MalformedDelimited);
                    failed = true;
                    break;
                }
            }
            out.clear();
        }
        assert!(failed, "{bad:?} accepted");
        let sent = String::from_utf8_lossy(&sent);
        assert!(!sent.contains("Jane") && !sent.contains("1\t"), "{sent}");
        assert_eq!(r.push(b"x", &mut out), Err(DocumentError::Closed), "dead after an error");
    }
    // A header that swallowed the first data row (a lost line end) is not sent.
    assert_eq!(run(&g, Some(ORDERS), b"order-id\tbuyer-name1\tJane\n2\tJoe\n").err(), Some(DocumentError::MalformedDelimited));
    assert_eq!(run(&g, Some(ORDERS), b"order-id\tbuyer-name1\tJane\n").err(), Some(DocumentError::MalformedDelimited), "unknown names, no row");
    assert_eq!(run(&g, Some(ORDERS), b"order-id\tbuyer-name\n").expect("a header alone").0, b"order-id\tbuyer-name\n");
    assert_eq!(run(&g, Some(ORDERS), b"ship-state%Seattle\nWA\n").err(), Some(DocumentError::MalformedDelimited), "one column, unknown");
    let csv = |doc: &str| run(&g, Some("SC_VAT_TAX_REPORT"), doc.as_bytes()).err();
    assert_eq!(csv("Order ID,Buyer Name\n1,\"Jane"), Some(DocumentError::MalformedDelimited), "an open quote at the end");
    assert_eq!(csv("Order ID,Buyer Name\n1,\"Jane\"x\n"), Some(DocumentError::MalformedDelimited), "text after the closing quote");
    assert_eq!(csv("Order ID,Buyer Name\n1,\"Jane\"\rx\n"), Some(DocumentError::MalformedDelimited));
    assert_eq!(csv("Order ID,Buyer Name\n1,Ja\"ne\n"), Some(DocumentError::MalformedDelimited), "a quote inside an unquoted field (RFC 4180)");
    // The damage that rule stops: a quoted value whose opening delimiter was lost would put
    // its first part in a clear column, with the record's field count intact.
    assert_eq!(csv("Order ID,Transaction Type,Buyer Name\n1,USD'\"Jane, Jr.\"\n"), Some(DocumentError::MalformedDelimited));
    // A record past the bound.
    let long = format!("order-id\tbuyer-name\n1\t{}\n", "x".repeat(MAX_CARRY_BYTES + 1));
    assert_eq!(run(&g, Some(ORDERS), long.as_bytes()).err(), Some(DocumentError::FieldTooLarge));
    let long = format!("order-id\tsku\n1\t{}\n", "x".repeat(MAX_CARRY_BYTES + 1));
    assert_eq!(run(&g, Some(ORDERS), long.as_bytes()).err(), Some(DocumentError::FieldTooLarge), "clear fields too: the record is held");
}

const XML: &str = "\u{feff}<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<!DOCTYPE AmazonEnvelope>\n\
<AmazonEnvelope xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n\
<Message><OrderReport><AmazonOrderID>111-1</AmazonOrderID>\n\
<BillingData><BuyerEmailAddress>jane@example.com</BuyerEmailAddress><BuyerName>Jane &amp; Joe &#x4E2D;</BuyerName>\
<BuyerPhoneNumber><![CDATA[+1 <555>]]> 0100</BuyerPhoneNumber><BuyerNote>call me</BuyerNote></BillingData>\n\
<FulfillmentData><Address type='ship' a=\"x>y\"><Name>Zoë</Name><City>Zürich</City><CountryCode>CH</CountryCode><!-- c --><?pi x?></Address></FulfillmentData>\n\
<Item><SKU>S-1</SKU><Title>Bolt &amp; nut</Title><GiftMessageText>Happy day</GiftMessageText><Empty/></Item>\n\
</OrderReport></Message>\n\
<Message><OrderReport><BillingData><BuyerName>   </BuyerName></BillingData></OrderReport></Message>\n\
</AmazonEnvelope>\n";

#[test]
fn xml_customer_elements_are_tokenized_byte_faithfully() {
    let g = guard();
    let out = assert_split_invariant(&g, Some("GET_ORDER_REPORT_DATA_SHIPPING"), Compression::Identity, XML.as_bytes());
    let expected = XML
        .replace("jane@example.com", "<email:jane@example.com>")
        .replace("Jane &amp; Joe &#x4E2D;", "<name:Jane & Joe 中>")
        .replace("<![CDATA[+1 <555>]]> 0100", "<phone:+1 <555> 0100>")
        .replace("call me", "<other:call me>")
        .replace(">Zoë<", "><name:Zoë><")
        .replace("Zürich", "<address:Zürich>")
        .replace("Happy day", "<gift_message:Happy day>")
        .replace("type='ship' a=\"x>y\"", "type='<address:ship>' a=\"<address:x>y>\"");
    assert_eq!(opened(&g, &out), expected);
    let (_, summary) = run(&g, Some("GET_ORDER_REPORT_DATA_SHIPPING"), XML.as_bytes()).expect("rewrites");
    assert_eq!(summary.format, DocumentFormat::Xml);
    assert_eq!(summary.rows, 2);
    assert_eq!(summary.counts.total(), 9, "white space carries nothing; the Address's attributes count");
    let gz = gzip(XML.as_bytes(), 6);
    assert_eq!(run_split(&g, None, Compression::Gzip, &gz, &[7]).expect("inflates").0, out);
}

/// An XML order report with elements the catalog does not name (schema drift): a contact email,
/// a phone in CDATA, an entity-encoded address line and a recipient's name, next to clear text,
/// text with an entity this filter does not decode, and a long note past the detectors' reach.
fn drifted_xml() -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<AmazonEnvelope><Message><OrderReport><AmazonOrderID>111-1</AmazonOrderID>\n\
         <DeliveryContact><ContactEmail>jane.doe@example.com</ContactEmail><BackupPhone><![CDATA[+1 206]]>-555-0100</BackupPhone>\
         <DropOffLine>12 Main&#32;Street</DropOffLine><RecipientName>Jane Doe</RecipientName></DeliveryContact>\n\
         <Item><SKU>S-1</SKU><Title>Bolt &amp; nut</Title><Odd>x@y &nbsp; z</Odd><Note>{}</Note></Item>\n\
         </OrderReport></Message></AmazonEnvelope>\n",
        "call jane.doe@example.com ".repeat(100)
    )
}

#[test]
fn xml_elements_no_entry_names_go_to_the_drift_detectors() {
    let g = guard_with(r#","drift":{"detectors":{"address":"tokenize","name":"tokenize"}}"#);
    let doc = drifted_xml();
    let (out, summary) = run(&g, Some("GET_ORDER_REPORT_DATA_SHIPPING"), doc.as_bytes()).expect("rewrites");
    let expected = doc
        .replace(">jane.doe@example.com<", "><email:jane.doe@example.com><")
        .replace("<![CDATA[+1 206]]>-555-0100", "<phone:+1 206-555-0100>")
        .replace("12 Main&#32;Street", "<address:12 Main Street>")
        .replace(">Jane Doe<", "><name:Jane Doe><");
    assert_eq!(opened(&g, &out), expected);
    let paths: Vec<String> = summary.drift.findings().iter().map(crate::drift::describe).collect();
    assert_eq!(
        paths,
        [
            "email protected at */message/orderreport/deliverycontact/contactemail",
            "phone protected at */message/orderreport/deliverycontact/backupphone",
            "address protected at */message/orderreport/deliverycontact/dropoffline",
            "name protected at */message/orderreport/deliverycontact/recipientname"
        ]
    );
    // Defaults: the address line and the name are reported, left as they came.
    let d = guard();
    let (out, summary) = run(&d, Some("GET_ORDER_REPORT_DATA_SHIPPING"), doc.as_bytes()).expect("rewrites");
    assert!(String::from_utf8_lossy(&out).contains("<RecipientName>Jane Doe</RecipientName>"));
    assert_eq!(summary.drift.count(DriftKind::Name, DriftAction::Reported), 1);
    assert_eq!(summary.drift.count(DriftKind::Email, DriftAction::Protected), 1);
    // Every split point gives the same output.
    let short = doc.replace(&"call jane.doe@example.com ".repeat(100), "n");
    assert_split_invariant(&g, Some("GET_ORDER_REPORT_DATA_SHIPPING"), Compression::Identity, short.as_bytes());
    // Detectors off: the elements pass as they came.
    let off = guard_with(r#","drift":{"detectors":{"email":"off","phone":"off","address":"off","name":"off"}}"#);
    let (out, _) = run(&off, Some("GET_ORDER_REPORT_DATA_SHIPPING"), doc.as_bytes()).expect("rewrites");
    assert_eq!(out, doc.as_bytes());
}

#[test]
fn canary_records_are_found_in_the_decompressed_text_at_every_split() {
    let g = guard_with(r#","canaries":{"records":[{"id":"canary-order","value":"111-0000001-7777777"},{"id":"canary-email","value":"canary.buyer@example.com"}]}"#);
    let doc = "order-id\tbuyer-email\tsku\n111-0000001-7777777\tcanary.buyer@example.com\tS-1\n111-2\tjoe@example.com\tS-2\n";
    let gz = gzip(doc.as_bytes(), 6);
    for (input, compression) in [(doc.as_bytes(), Compression::Identity), (&gz[..], Compression::Gzip)] {
        for at in 0..=input.len() {
            let mut r = rewriter(&g, Some(ORDERS), compression);
            let mut out = Vec::new();
            let mut hits = Vec::new();
            for part in [&input[..at], &input[at..]] {
                r.push(part, &mut out).expect("push");
                hits.extend(r.take_canary_hits());
            }
            r.finish(&mut out).expect("finish");
            hits.extend(r.take_canary_hits());
            assert_eq!(hits, ["canary-order", "canary-email"], "split at {at}: each once, in the order found");
            // The email is a customer value: tokenized as any (the canary is an alarm, not a leak).
            assert!(!String::from_utf8_lossy(&out).contains("canary.buyer@example.com"));
        }
    }
    // No canaries in the policy: nothing to find.
    let mut r = rewriter(&guard(), Some(ORDERS), Compression::Identity);
    r.push(doc.as_bytes(), &mut Vec::new()).expect("push");
    assert!(r.take_canary_hits().is_empty());
}

/// Elements are matched by their local name: a namespace prefix (`<ns:BillingData>`) does not take
/// a customer element out of the catalog's reach (an XML reader that ignores prefixes, as most
/// applications do, reads the same buyer's name). Found by the attack review: it passed in clear.
#[test]
fn xml_namespace_prefixes_do_not_hide_customer_elements() {
    let g = guard();
    let doc = "<AmazonEnvelope xmlns:ns=\"urn:x\"><Message><OrderReport>\
<ns:BillingData><ns:BuyerName>Jane Doe</ns:BuyerName><BuyerEmailAddress>jane@example.com</BuyerEmailAddress></ns:BillingData>\
<ns:FulfillmentData><a:Address xmlns:a=\"urn:a\"><a:City>Zürich</a:City><a:CountryCode>CH</a:CountryCode></a:Address></ns:FulfillmentData>\
<Item><ns:GiftMessageText>Happy day</ns:GiftMessageText></Item></OrderReport></Message></AmazonEnvelope>";
    let out = assert_split_invariant(&g, Some("GET_ORDER_REPORT_DATA_SHIPPING"), Compression::Identity, doc.as_bytes());
    let expected = doc
        .replace(">Jane Doe<", "><name:Jane Doe><")
        .replace(">jane@example.com<", "><email:jane@example.com><")
        .replace(">Zürich<", "><address:Zürich><")
        .replace(">Happy day<", "><gift_message:Happy day><");
    assert_eq!(opened(&g, &out), expected);
}

/// A text run held for the detectors that outgrows them (over 8 KiB) goes out as it came, CDATA
/// and entities included, at every split; the run after the next tag is read again.
#[test]
fn xml_text_too_long_for_the_detectors_passes_unchanged_at_every_split() {
    let g = guard();
    let long = format!("{}<![CDATA[ tail & more ]]>{}", "note &amp; text ".repeat(600), "x".repeat(100));
    assert!(long.len() > super::xml::DETECT_RUN_BYTES);
    let doc = format!("<r><Message><Odd>{long}</Odd><ContactEmail>jane@example.com</ContactEmail></Message></r>");
    let out = assert_split_invariant(&g, Some("GET_ORDER_REPORT_DATA_SHIPPING"), Compression::Identity, doc.as_bytes());
    assert_eq!(opened(&g, &out), doc.replace(">jane@example.com<", "><email:jane@example.com><"));
}

#[test]
fn xml_masks_are_escaped_and_none_empties_the_element() {
    let g = guard_with(r#","redactMask":"<R&D>""#);
    let mut actions = *g.policy.actions();
    actions[PiiClass::Name] = Action::Redact;
    actions[PiiClass::Email] = Action::Remove;
    let doc = "<r><BillingData><BuyerName nick=\"J&amp;J\" xmlns:x=\"urn:x\">Jane</BuyerName><BuyerEmailAddress>a@b.c</BuyerEmailAddress></BillingData></r>";
    let mut r = DocumentRewriter::new(g.clone(), actions, None, Compression::Identity, 0).expect("rewriter");
    let mut out = Vec::new();
    r.push(doc.as_bytes(), &mut out).expect("push");
    r.finish(&mut out).expect("finish");
    assert_eq!(
        String::from_utf8(out).expect("utf8"),
        "<r><BillingData><BuyerName nick=\"&lt;R&amp;D&gt;\" xmlns:x=\"urn:x\">&lt;R&amp;D&gt;</BuyerName><BuyerEmailAddress></BuyerEmailAddress></BillingData></r>"
    );
}

#[test]
fn malformed_xml_fails_closed() {
    let g = guard();
    for bad in [
        "<r><BillingData><BuyerName>Jane</BuyerNam></BillingData></r>",
        "<r><BillingData><BuyerName>Jane &bogus; x</BuyerName></BillingData></r>",
        "<r><BillingData><BuyerName>Jane &#0; x</BuyerName></BillingData></r>",
        "<r><BillingData><BuyerName>Jane</BuyerName></BillingData>",
        "<r></r><r2></r2>",
        "<r></r>text",
        "<!DOCTYPE r [<!ENTITY e \"Jane\">]><r>&e;</r>",
        "<r><a b=\"</r>",
        "<r><![CDATA[x</r>",
        "<r><!-- x </r>",
        "<r><!-- c --\n<BillingData><BuyerName>Jane</BuyerName></BillingData><!-- d --></r>",
        "<r><BillingData><BuyerName Jane > x</BuyerName></BillingData></r>",
        "<r><BillingData><BuyerName a=\"1\"b=\"2\">Jane</BuyerName></BillingData></r>",
        "<r><BillingData><BuyerName a=1>Jane</BuyerName></BillingData></r>",
    ] {
        assert_eq!(run(&g, None, bad.as_bytes()).err(), Some(DocumentError::MalformedXml), "{bad}");
    }
    assert_eq!(run(&g, None, b"text<r></r>").err(), Some(DocumentError::UnknownFormat), "not XML at all");
}

#[test]
fn json_reports_go_through_the_response_rewriter_within_the_body_limit() {
    let g = guard();
    let doc = r#"{"reportSpecification":{"reportType":"END_USER_DATA_REPORT"},"endUserData":[{"fullName":"Jane Doe","primaryEmail":"j@x.de","newMember":"x1",
        "mailingAddress":{"addressLine1":"ABC Blvd","city":"Berlin","countryCode":"DE","floor":"3"},"asinMetrics":[{"asin":"B00EZ1IGCO","pageViews":12}]}]}"#;
    let out = assert_split_invariant(&g, Some("END_USER_DATA_REPORT"), Compression::Identity, doc.as_bytes());
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    let u = &v["endUserData"][0];
    let class = |t: &serde_json::Value| g.tokens.open(t.as_str().expect("token"), 0).expect("opens").class;
    assert_eq!((class(&u["fullName"]), class(&u["primaryEmail"]), class(&u["newMember"])), (PiiClass::Name, PiiClass::Email, PiiClass::Other));
    assert_eq!((class(&u["mailingAddress"]["city"]), class(&u["mailingAddress"]["floor"])), (PiiClass::Address, PiiClass::Address));
    assert_eq!((u["mailingAddress"]["countryCode"].as_str(), u["asinMetrics"][0]["asin"].as_str()), (Some("DE"), Some("B00EZ1IGCO")));
    let (_, summary) = run(&g, Some("END_USER_DATA_REPORT"), doc.as_bytes()).expect("rewrites");
    assert_eq!((summary.format, summary.counts.total()), (DocumentFormat::Json, 6));
    let small = guard_with(r#","maxBodyBytes":1024"#);
    let large = doc.replace("ABC Blvd", &"ABC Blvd ".repeat(120));
    assert_eq!(run(&small, Some("END_USER_DATA_REPORT"), large.as_bytes()).err(), Some(DocumentError::DocumentTooLarge));
    assert_eq!(run(&g, Some("END_USER_DATA_REPORT"), b"{\"endUserData\":[").err(), Some(DocumentError::InvalidJson));
}

/// A JSON report whose type is not known (not learned: the getReport went through another Envoy,
/// or a type the catalog lacks) is restricted: every value is protected, whatever its shape — not
/// read with another report's paths, which a different shape would slip past (found by the attack
/// review: `{"users":[{"fullName":…}]}` passed the name in clear).
#[test]
fn json_reports_of_unknown_types_have_every_value_protected() {
    let g = guard();
    let doc = r#"{"users":[{"fullName":"Jane Doe","contact":{"email":"j@x.de","cell":"+49 30 1234567"},"tier":"gold","visits":12,"vip":true,"note":null}],"owner":"Joe Bloggs","count":1}"#;
    for report_type in [None, Some("GET_SOMETHING_NEW_AS_JSON")] {
        let out = assert_split_invariant(&g, report_type, Compression::Identity, doc.as_bytes());
        let text = String::from_utf8_lossy(&out).into_owned();
        for clear in ["Jane Doe", "j@x.de", "1234567", "gold", "Joe Bloggs"] {
            assert!(!text.contains(clear), "{report_type:?}: {clear} in clear: {text}");
        }
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        let u = &v["users"][0];
        let class = |t: &serde_json::Value| g.tokens.open(t.as_str().expect("token"), 0).expect("opens").class;
        assert_eq!((class(&u["fullName"]), class(&u["contact"]["email"]), class(&u["tier"])), (PiiClass::Name, PiiClass::Email, PiiClass::Other));
        // Shapes stay: booleans and null as they are, objects and arrays kept.
        assert_eq!((u["vip"].as_bool(), u["note"].is_null(), v["users"].is_array()), (Some(true), true, true));
    }
    // An array at the top: each element, objects and loose strings alike.
    let (out, _) = run(&g, None, br#"[{"fullName":"Jane Doe"},"Joe Bloggs",[7,"x y z"]]"#).expect("rewrites");
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(["Jane Doe", "Joe Bloggs", "x y z"].iter().all(|v| !text.contains(v)), "{text}");
    // A type the catalog knows in another format: no JSON rules for it, refused.
    assert_eq!(run(&g, Some(ORDERS), doc.as_bytes()).err(), Some(DocumentError::UnknownFormat));
}

#[test]
fn binary_and_unknown_documents_are_not_tokenizable() {
    let g = guard();
    assert_eq!(report_info("GET_EASYSHIP_DOCUMENTS").map(|i| (i.restricted, i.format)), Some((true, "pdf".to_string())));
    assert_eq!(report_info("GET_NOT_A_REPORT"), None);
    assert_eq!(DocumentRewriter::new(g.clone(), *g.policy.actions(), Some("GET_EASYSHIP_DOCUMENTS"), Compression::Identity, 0).err(), Some(DocumentError::NotTokenizable));
    assert_eq!(run(&g, None, b"%PDF-1.7\n%\xE2\xE3\n").err(), Some(DocumentError::NotTokenizable));
    assert_eq!(run(&g, None, b"PK\x03\x04\x14\x00\x00\x00").err(), Some(DocumentError::NotTokenizable));
    assert_eq!(run(&g, None, b"one column only\nJane\n").err(), Some(DocumentError::UnknownFormat));
    // A one-column flat file of a known report type has nothing to sniff: the catalog says.
    let (out, _) = run(&g, Some(ORDERS), b"buyer-name\nJane\n").expect("rewrites");
    assert_eq!(opened(&g, &out), "buyer-name\n<name:Jane>\n");
    // Blank lines before the first significant byte do not decide the format, wherever the
    // chunks end.
    let xml = b"\xEF\xBB\xBF\n\n<r></r>\n";
    assert_eq!(assert_split_invariant(&g, None, Compression::Identity, xml), xml);
    let (out, summary) = run(&g, None, b"").expect("empty");
    assert_eq!((out.len(), summary.format, summary.rows), (0, DocumentFormat::Unknown, 0));
    assert_eq!(run_split(&g, None, Compression::Gzip, b"", &[]).err(), Some(DocumentError::CorruptGzip), "declared gzip, nothing came");
}

#[test]
fn gzip_members_corruption_and_truncation() {
    let g = guard();
    let mut two = gzip(b"order-id\tbuyer-name\n1\tJane\n", 6);
    two.extend_from_slice(&gzip(b"2\tJoe\n", 1));
    let (out, summary) = run_split(&g, Some(ORDERS), Compression::Gzip, &two, &[3, 30]).expect("inflates");
    assert_eq!(opened(&g, &out), "order-id\tbuyer-name\n1\t<name:Jane>\n2\t<name:Joe>\n");
    assert_eq!(summary.rows, 2);
    let n = two.len();
    for cut in [5, 12, n / 2, n - 4, n - 1] {
        assert!(run_split(&g, Some(ORDERS), Compression::Gzip, &two[..cut], &[]).is_err(), "cut at {cut}");
    }
    let mut bad = two.clone();
    bad[n - 6] ^= 1;
    assert_eq!(run(&g, Some(ORDERS), &bad).err(), Some(DocumentError::CorruptGzip), "length");
}

#[test]
fn a_decompression_bomb_cannot_grow_one_push_without_bound() {
    let g = guard();
    let mut doc = b"order-id\tsku\n".to_vec();
    doc.extend(std::iter::repeat_n(b"1\tS\n".as_slice(), (4 << 20) / 4).flatten());
    let gz = gzip(&doc, 9);
    assert!(gz.len() < 64 * 1024, "{}", gz.len());
    let limited = |splits: &[usize]| {
        let mut r = rewriter(&g, Some(ORDERS), Compression::Gzip);
        r.set_max_output_per_push(1 << 20);
        let mut out = Vec::new();
        let mut at = 0;
        for &s in splits.iter().chain(std::iter::once(&gz.len())) {
            r.push(&gz[at..s], &mut out)?;
            assert!(out.len() <= (1 << 20) + crate::report::inflate::SLICE);
            out.clear();
            at = s;
        }
        r.finish(&mut out)
    };
    assert_eq!(limited(&[]).err(), Some(DocumentError::OutputTooLarge));
    // The same document in small chunks streams.
    let splits: Vec<usize> = (1..gz.len() / 512 + 1).map(|i| i * 512).collect();
    assert_eq!(limited(&splits).expect("streams").rows as usize, (4 << 20) / 4);
    // Tiny customer values grow in the rewrite (a token is longer than its value): under the
    // inflate bound (512 KiB of text for 1 MiB), over the bound on what one push writes.
    let mut tiny = b"order-id\tbuyer-email\n".to_vec();
    tiny.extend(std::iter::repeat_n(b"1\ta@b.c\n".as_slice(), (512 << 10) / 8).flatten());
    let mut r = rewriter(&g, Some(ORDERS), Compression::Gzip);
    r.set_max_output_per_push(1 << 20);
    let mut out = Vec::new();
    assert_eq!(r.push(&gzip(&tiny, 9), &mut out).err(), Some(DocumentError::OutputTooLarge));
    assert!(out.len() < (2 << 20) + 64 * 1024, "stopped near the bound: {}", out.len());
}

#[test]
fn a_class_without_an_active_key_is_refused_at_the_start() {
    let config = r#"{"version":1,"keys":{"ring":[{"id":"k1","env":"K","classes":["name","email","phone","address","tax_id","gift_message","company","other"],"created":"2026-10-01","activeFrom":"2026-10-01","notAfter":"2027-03-31"}]}}"#;
    let g = Rc::new(Guard::load(config.as_bytes(), &|_| Some(KEY_HEX.to_string())).expect("loads"));
    let early = crate::keyring::parse_instant("2026-09-01", false).expect("date");
    assert_eq!(DocumentRewriter::new(g.clone(), *g.policy.actions(), Some(ORDERS), Compression::Identity, early).err(), Some(DocumentError::NoActiveKey));
    let mut clear = *g.policy.actions();
    for c in PiiClass::ALL {
        clear[c] = Action::Redact;
    }
    assert!(DocumentRewriter::new(g.clone(), clear, Some(ORDERS), Compression::Identity, early).is_ok(), "no key needed to redact");
}

/// Memory stays flat: a generated document of tens of MB (a few MB in Wasmtime), pushed in
/// chunks, compressed and not, never makes the rewriter hold more than a bounded amount.
#[test]
fn memory_stays_flat_over_a_large_document() {
    // (Unoptimized test builds inflate and parse slowly: 24 MB there, 64 MB optimized.)
    let target = if cfg!(target_arch = "wasm32") {
        4 << 20
    } else if cfg!(debug_assertions) {
        24 << 20
    } else {
        64 << 20
    };
    let g = guard();
    let header = b"order-id\tbuyer-email\tbuyer-name\tsku\tship-city\tship-postal-code\n";
    let mut doc = header.to_vec();
    let mut i = 0u64;
    while doc.len() < target {
        // A few distinct values repeat (the memo), and every 64th row is new (it is emptied).
        let k = if i.is_multiple_of(64) { i } else { i % 50 };
        doc.extend_from_slice(format!("{i}\tb{k}@example.com\tName {k}\tSKU-{i}\tCity {k}\t{:05}\n", k % 99999).as_bytes());
        i += 1;
    }
    for compressed in [false, true] {
        let input = if compressed { gzip(&doc, 1) } else { doc.clone() };
        let mut r = rewriter(&g, Some(ORDERS), if compressed { Compression::Gzip } else { Compression::Identity });
        let mut out = Vec::new();
        let mut peak = 0;
        let mut total_out = 0u64;
        for chunk in input.chunks(16 * 1024 + 7) {
            r.push(chunk, &mut out).expect("push");
            peak = peak.max(r.held_bytes());
            assert!(r.carry_len() < 64 * 1024, "{}", r.carry_len());
            total_out += out.len() as u64;
            assert!(out.len() < 4 << 20, "one push's output: {}", out.len());
            out.clear();
        }
        let summary = r.finish(&mut out).expect("finish");
        assert_eq!(summary.rows, i);
        assert!(total_out > doc.len() as u64, "tokens are longer than the values");
        assert!(peak < 3 << 20, "held {peak} bytes");
    }
}
