//! Schema drift: PII where the catalog does not say it is. Amazon adds members and changes shapes
//! between model versions; the catalog's paths cannot know. Three nets catch what they miss
//! (docs/POLICY.md, "Drift"):
//!
//! * **customer objects** (src/path_matcher.rs): every member of an object whose members are all
//!   customer data is protected, named or not — [`member_class`] picks the class of a member the
//!   catalog does not name, from its name and value, else the object's class;
//! * **detectors** over every other string of a PII operation's response ([`detect`]): shaped like
//!   an email address, a phone number, a postal address line, or a person's name next to a
//!   name-like key — tokenized as that class or reported, per the policy;
//! * **the zero-match alarm**: a response of a PII operation in which nothing matched, but where
//!   keys look like PII ([`looks_like_pii_key`]), is reported: the shape changed under us.
//!
//! Reports name the operation and the JSON path *template* ([`template`]: array indices as `[*]`,
//! keys that are not plain identifiers as `*`), never a value.
use std::fmt::Write as _;

use crate::pii::PiiClass;

/// What found a value the catalog does not name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DriftKind {
    /// A member of a customer object that no catalog path names (protected by the allow list).
    Member,
    Email,
    Phone,
    Address,
    Name,
    /// Nothing matched in a PII operation's response, but its keys look like PII.
    ZeroMatch,
}

impl DriftKind {
    pub const ALL: [DriftKind; 6] = [DriftKind::Member, DriftKind::Email, DriftKind::Phone, DriftKind::Address, DriftKind::Name, DriftKind::ZeroMatch];
    /// The detectors the policy configures.
    pub const DETECTORS: [DriftKind; 4] = [DriftKind::Email, DriftKind::Phone, DriftKind::Address, DriftKind::Name];

    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Member => "member",
            DriftKind::Email => "email",
            DriftKind::Phone => "phone",
            DriftKind::Address => "address",
            DriftKind::Name => "name",
            DriftKind::ZeroMatch => "zero_match",
        }
    }

    /// The PII class a detector's values are protected as.
    pub fn class(self) -> PiiClass {
        match self {
            DriftKind::Email => PiiClass::Email,
            DriftKind::Phone => PiiClass::Phone,
            DriftKind::Address => PiiClass::Address,
            DriftKind::Name => PiiClass::Name,
            DriftKind::Member | DriftKind::ZeroMatch => PiiClass::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a detector does with what it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectorAction {
    /// Protected as the detector's class (the caller's level for that class applies).
    Tokenize,
    /// Left as it is, reported as `schema_drift`.
    Report,
    /// Not run.
    Off,
}

impl DetectorAction {
    pub fn parse(name: &str) -> Option<DetectorAction> {
        match name {
            "tokenize" => Some(DetectorAction::Tokenize),
            "report" => Some(DetectorAction::Report),
            "off" => Some(DetectorAction::Off),
            _ => None,
        }
    }
}

/// The `drift` section of the policy, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriftPolicy {
    detectors: [DetectorAction; 4],
    /// Scan the responses of operations the catalog lists without PII too (report only).
    pub scan_pii_free: bool,
    /// Report PII responses where nothing matched but keys look like PII.
    pub zero_match: bool,
}

impl Default for DriftPolicy {
    /// Emails and phones tokenized, addresses and names reported; the alarm on; PII-free
    /// operations not scanned.
    fn default() -> Self {
        DriftPolicy { detectors: [DetectorAction::Tokenize, DetectorAction::Tokenize, DetectorAction::Report, DetectorAction::Report], scan_pii_free: false, zero_match: true }
    }
}

impl DriftPolicy {
    /// The action of a detector (`Off` for the kinds that are not detectors).
    pub fn action(&self, kind: DriftKind) -> DetectorAction {
        match kind {
            DriftKind::Email => self.detectors[0],
            DriftKind::Phone => self.detectors[1],
            DriftKind::Address => self.detectors[2],
            DriftKind::Name => self.detectors[3],
            DriftKind::Member | DriftKind::ZeroMatch => DetectorAction::Off,
        }
    }

    pub fn set(&mut self, kind: DriftKind, action: DetectorAction) {
        let slot = match kind {
            DriftKind::Email => 0,
            DriftKind::Phone => 1,
            DriftKind::Address => 2,
            DriftKind::Name => 3,
            DriftKind::Member | DriftKind::ZeroMatch => return,
        };
        self.detectors[slot] = action;
    }

    /// Whether any detector runs.
    pub fn any_detector(&self) -> bool {
        self.detectors.iter().any(|a| *a != DetectorAction::Off)
    }

    /// Runs the detectors this policy enables over `value` (under the member, column or element
    /// name `key`, inside `parent`) and records what one found at `path` (built only then): the
    /// detector whose class the value is to be protected as, or `None` to keep it — nothing
    /// found, or the detector (or `report_only`, a body already sent) only reports.
    pub fn judge(&self, key: Option<&str>, parent: Option<&str>, value: &str, report_only: bool, findings: &mut DriftFindings, path: impl FnOnce() -> String) -> Option<DriftKind> {
        let kind = detect(key, parent, value, &|k| self.action(k) != DetectorAction::Off)?;
        if self.action(kind) == DetectorAction::Report || report_only {
            findings.add(kind, DriftAction::Reported, path);
            return None;
        }
        findings.add(kind, DriftAction::Protected, path);
        Some(kind)
    }
}

// ---------------------------------------------------------------------------------------------
// Detectors

/// Whether `value` could be anything a detector finds, from a few byte checks (no member names
/// needed): an `@`, a first character of a phone number, or a space with a capital first letter or
/// a digit. Most strings of a response (dates, codes, statuses, ids) are refused here.
#[inline]
pub fn worth_a_look(value: &str) -> bool {
    let b = value.as_bytes();
    let Some(&first) = b.first() else { return false };
    if b.len() < 5 || b.len() > 2048 {
        return false;
    }
    if first.is_ascii_digit() || first == b'+' || first == b'(' || memchr::memchr(b'@', b).is_some() {
        return true;
    }
    memchr::memchr(b' ', b).is_some() && (!first.is_ascii_lowercase() || b.iter().any(u8::is_ascii_digit))
}

/// The detector a string is shaped for, if any, given the member name it sits under (`key`) and
/// the one above that (`parent`). Only detectors `enabled` says run.
pub fn detect(key: Option<&str>, parent: Option<&str>, value: &str, enabled: &dyn Fn(DriftKind) -> bool) -> Option<DriftKind> {
    let bytes = value.as_bytes();
    if bytes.len() < 5 || bytes.len() > 2048 {
        return None;
    }
    if enabled(DriftKind::Email) && memchr::memchr(b'@', bytes).is_some() && contains_email(value) {
        return Some(DriftKind::Email);
    }
    if enabled(DriftKind::Phone) && is_phone(value, || key.is_some_and(is_phone_key)) {
        return Some(DriftKind::Phone);
    }
    if enabled(DriftKind::Address) && is_address_line(value) {
        return Some(DriftKind::Address);
    }
    if enabled(DriftKind::Name) && looks_like_person_name(value) && key.is_some_and(|k| is_person_name_key(k, parent)) {
        return Some(DriftKind::Name);
    }
    None
}

fn is_email_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'')
}

fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// Whether `s` holds an email address (`jane.doe+x@example.co.uk`, Amazon's anonymized
/// `…@marketplace.amazon.com` relay addresses), alone or inside text.
pub fn contains_email(s: &str) -> bool {
    let b = s.as_bytes();
    memchr::memchr_iter(b'@', b).any(|at| {
        let local_start = b[..at].iter().rposition(|&c| !is_email_local(c)).map_or(0, |p| p + 1);
        let local = &b[local_start..at];
        let domain_end = b[at + 1..].iter().position(|&c| !is_domain(c)).map_or(b.len(), |p| at + 1 + p);
        let domain = &b[at + 1..domain_end];
        let domain = domain.strip_suffix(b".").unwrap_or(domain);
        if local.is_empty() || local.first() == Some(&b'.') || local.last() == Some(&b'.') || local.len() > 64 {
            return false;
        }
        let labels: Vec<&[u8]> = domain.split(|&c| c == b'.').collect();
        labels.len() >= 2
            && labels.iter().all(|l| !l.is_empty() && l.len() <= 63 && l.first() != Some(&b'-') && l.last() != Some(&b'-'))
            && labels.last().is_some_and(|tld| tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic))
    })
}

const PHONE_WORDS: &[&str] = &["phone", "phones", "telephone", "tel", "mobile", "cell", "cellphone", "fax", "phonenumber"];

/// Whether `s` is shaped like a phone number. `phone_key` says whether the member's name is about
/// phones (asked only for bare digit strings: `"7132341234"` is a phone under `Phone`, an id
/// elsewhere).
///
/// Accepted: an international number (`+` then 8–15 digits in groups: `+44 20 7946 0958`,
/// `+1 480-386-0930 ext. 73824`), a North American 3-3-4 number (`206-555-1234`,
/// `(206) 555-1234`), a national number with its trunk 0 (`020 7946 0958`), or 7–15 digits
/// under a phone-like key. Not phones: order ids (`902-3159896-1390916`: groups of 7), dates
/// (`2020-01-01`), amounts (`1234567.89`), times, ASINs and SKUs (letters), tracking numbers (too
/// many digits, or letters), zip+4 codes (two groups).
pub fn is_phone(s: &str, phone_key: impl FnOnce() -> bool) -> bool {
    let s = s.trim();
    let b = s.as_bytes();
    let Some(&first) = b.first() else { return false };
    if !(first == b'+' || first == b'(' || first.is_ascii_digit()) || b.len() < 7 || b.len() > 40 {
        return false;
    }
    // Most strings that start like a number (dates, ids, amounts) fail here, without allocating.
    if !b.iter().all(|&c| c.is_ascii_digit() || matches!(c, b' ' | b'-' | b'.' | b'(' | b')' | b'+' | b'#' | b'x' | b'X' | b'e' | b'E' | b't' | b'T')) {
        return false;
    }
    let core = strip_extension(s).as_bytes();
    let mut groups = [0u8; 8];
    let mut count = 0usize;
    let mut digits = 0usize;
    let mut run = 0u8;
    let mut dots = 0;
    let mut other_separators = 0;
    for (i, &c) in core.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                digits += 1;
                run = run.saturating_add(1);
            }
            b'+' if i == 0 => {}
            b' ' | b'-' | b'.' | b'(' | b')' => {
                if c == b'.' {
                    dots += 1;
                } else {
                    other_separators += 1;
                }
                if run > 0 {
                    if count == groups.len() {
                        return false;
                    }
                    groups[count] = run;
                    count += 1;
                    run = 0;
                }
            }
            _ => return false,
        }
    }
    if run > 0 {
        if count == groups.len() {
            return false;
        }
        groups[count] = run;
        count += 1;
    }
    let groups = &groups[..count];
    if !(7..=15).contains(&digits) {
        return false;
    }
    let date_like = groups.len() == 3 && ((groups[0] == 4 && groups[1] <= 2 && groups[2] <= 2) || (groups[0] <= 2 && groups[1] <= 2 && (groups[2] == 4 || groups[2] == 2)));
    let amount_like = dots == 1 && other_separators == 0 && groups.last() == Some(&2);
    if date_like || amount_like {
        return false;
    }
    if first == b'+' {
        return digits >= 8;
    }
    // North American 3-3-4 (`206-555-1234`, `(206) 555-1234`), or a national number with its
    // trunk 0 in groups of 2 to 5 (`020 7946 0958`, `0161 123 4567`).
    let north_american = groups == [3, 3, 4];
    let national = b[0] == b'0' && groups.len() >= 2 && (10..=11).contains(&digits) && groups.iter().all(|&g| (2..=5).contains(&g)) && groups.last().is_some_and(|&g| g >= 3);
    north_american || national || (groups.iter().all(|&g| g <= 12) && phone_key())
}

/// `+1 480-386-0930 ext. 73824` → `+1 480-386-0930` (also ` x123`, `#123`).
fn strip_extension(s: &str) -> &str {
    let b = s.as_bytes();
    let digits_from = b.iter().rposition(|c| !c.is_ascii_digit()).map_or(0, |p| p + 1);
    if digits_from == b.len() || b.len() - digits_from > 6 {
        return s;
    }
    let head = s[..digits_from].trim_end_matches([' ', '.']);
    for marker in [" ext", " x", " X", " EXT", " Ext", "#"] {
        if let Some(core) = head.strip_suffix(marker) {
            return core.trim_end();
        }
    }
    s
}

/// Whether a member name is about phones (`Phone`, `buyerMobileNumber`, `fax`), without
/// allocating for the usual short names.
pub fn is_phone_key(key: &str) -> bool {
    key_words(key).any(|w| PHONE_WORDS.contains(&w.as_str()))
}

/// Street types that follow a house number (`1 Cross St`, `1600 Amphitheatre Parkway`).
const STREET_SUFFIXES: &[&str] = &[
    "street",
    "st",
    "avenue",
    "ave",
    "road",
    "rd",
    "boulevard",
    "blvd",
    "drive",
    "dr",
    "lane",
    "ln",
    "way",
    "court",
    "ct",
    "place",
    "pl",
    "parkway",
    "pkwy",
    "highway",
    "hwy",
    "terrace",
    "ter",
    "circle",
    "cir",
    "square",
    "sq",
    "trail",
    "trl",
    "loop",
    "alley",
    "crescent",
];

/// What may follow a street type in a street line: a unit, or a direction (`Main St NW`).
const UNIT_WORDS: &[&str] = &["apt", "apartment", "suite", "ste", "unit", "fl", "floor", "no", "room", "bldg", "building"];
const DIRECTIONS: &[&str] = &["n", "s", "e", "w", "ne", "nw", "se", "sw", "north", "south", "east", "west"];

/// Street types a house number follows (`Hauptstraße 5`, `Rua Augusta, 1500`, `Suite 200`).
const STREET_PREFIXES: &[&str] = &[
    "calle",
    "rua",
    "avenida",
    "rue",
    "piazza",
    "strasse",
    "straße",
    "str",
    "weg",
    "gasse",
    "platz",
    "allee",
    "laan",
    "straat",
    "ulica",
    "cadde",
    "sokak",
    "suite",
    "apt",
    "apartment",
];

/// Whether `s` is shaped like a postal address line: a house number then words with a street
/// type (`1 Cross St`, `1600 Amphitheatre Parkway`, `221B Baker Street, Flat 2`), a PO box, or a
/// street type then a number (`Hauptstraße 5`, `Rua Augusta, 1500`).
pub fn is_address_line(s: &str) -> bool {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 6 || b.len() > 120 || memchr::memchr(b' ', b).is_none() || !b.iter().any(u8::is_ascii_digit) || memchr::memchr(b'@', b).is_some() {
        return false;
    }
    let mut words = s.split(|c: char| c.is_whitespace() || c == ',').filter(|w| !w.is_empty());
    let Some(first) = words.next() else { return false };
    let word_is = |w: &str, list: &[&str]| {
        let w = w.trim_end_matches('.');
        list.iter().any(|x| x.eq_ignore_ascii_case(w))
    };
    let is_number = |w: &str| {
        let digits = w.bytes().take_while(u8::is_ascii_digit).count();
        (1..=6).contains(&digits) && w.len() - digits <= 2 && w[digits..].chars().all(|c| c.is_alphabetic() || c == '-')
    };
    let prefix = |w: &str| {
        word_is(w, STREET_PREFIXES) || {
            let lower = w.to_lowercase();
            lower.ends_with("straße") || lower.ends_with("strasse")
        }
    };
    // PO Box 1234 / P.O. Box 1234
    if first.eq_ignore_ascii_case("po") || first.eq_ignore_ascii_case("p.o.") || first.eq_ignore_ascii_case("p") {
        let rest: Vec<&str> = words.clone().take(3).collect();
        return rest.iter().any(|w| w.eq_ignore_ascii_case("box")) && rest.iter().any(|w| w.bytes().all(|c| c.is_ascii_digit()));
    }
    // 1 Cross St / 1600 Amphitheatre Parkway / 123 Main St. Apt 4 / 221B Baker Street, Flat 2:
    // the street type ends the street (`2 Pack Road Sign` is a product).
    if is_number(first) {
        let street = s.split(',').next().unwrap_or(s);
        let rest: Vec<&str> = street.split_whitespace().skip(1).take(11).collect();
        return rest
            .iter()
            .enumerate()
            .any(|(i, w)| word_is(w, STREET_SUFFIXES) && rest.get(i + 1).is_none_or(|next| next.starts_with('#') || word_is(next, UNIT_WORDS) || word_is(next, DIRECTIONS)));
    }
    // Hauptstraße 5 / Rua Augusta, 1500 / Suite 200
    let mut since_prefix: Option<usize> = prefix(first).then_some(0);
    for w in words.take(11) {
        match since_prefix {
            Some(n) if n < 3 && is_number(w) => return true,
            Some(n) => since_prefix = Some(n + 1),
            None if prefix(w) => since_prefix = Some(0),
            None => {}
        }
    }
    false
}

/// Words that are not parts of a person's name (services, businesses, places).
const NOT_NAME_WORDS: &[&str] = &[
    "amazon",
    "shipping",
    "standard",
    "express",
    "priority",
    "ground",
    "delivery",
    "store",
    "service",
    "services",
    "inc",
    "inc.",
    "llc",
    "ltd",
    "ltd.",
    "co",
    "co.",
    "corp",
    "company",
    "center",
    "centre",
    "warehouse",
    "fulfillment",
    "logistics",
    "post",
    "mail",
    "parcel",
    "international",
    "economy",
    "next",
    "day",
    "free",
    "premium",
    "prime",
    "home",
    "office",
    "shop",
    "market",
    "pharmacy",
    "station",
    "hub",
    "depot",
    "plaza",
    "mall",
    "bank",
    "cafe",
    "hotel",
    "new",
    "north",
    "south",
    "east",
    "west",
    "door",
    "front",
    "back",
    "box",
    "locker",
    "point",
    "pickup",
    "the",
    "and",
    "of",
    "for",
    "test",
    "sample",
    "example",
    "default",
    "other",
    "none",
    "unknown",
    "gift",
    "wrap",
    "message",
    "seller",
    "buyer",
    "customer",
    "merchant",
    "vendor",
    "product",
    "item",
    "order",
    "package",
    "label",
    "invoice",
    "return",
    "returns",
    "team",
];

/// Whether `s` looks like a person's name: 2–4 capitalized words (`Jane Doe`, `Jane Q. Public`,
/// `Mary-Jane O'Neil`, `JANE DOE`), no digits, none of them a common non-name word.
pub fn looks_like_person_name(s: &str) -> bool {
    let s = s.trim();
    let b = s.as_bytes();
    // Cheap refusals first: most strings are not two to four capitalized words.
    if b.len() < 5 || b.len() > 60 || !s.starts_with(char::is_uppercase) || memchr::memchr(b' ', b).is_none() || b.iter().any(u8::is_ascii_digit) {
        return false;
    }
    let count = s.split(' ').count();
    (2..=4).contains(&count)
        && s.split(' ').all(|w| {
            // Each part of `Mary-Jane`, `O'Neil`, `Q.` starts with a capital.
            let shaped = w.split(['-', '\'']).all(|part| {
                let mut chars = part.chars();
                chars.next().is_some_and(char::is_uppercase) && chars.all(|c| c.is_alphabetic() || c == '.')
            });
            shaped && !NOT_NAME_WORDS.iter().any(|n| n.eq_ignore_ascii_case(w))
        })
}

/// Words before `name` in a key that make it a person's name (`buyerName`, `recipient_name`,
/// `firstName`); `name` alone counts too.
const PERSON_WORDS: &[&str] = &[
    "buyer",
    "recipient",
    "customer",
    "contact",
    "first",
    "last",
    "full",
    "given",
    "family",
    "middle",
    "sur",
    "person",
    "receiver",
    "consignee",
    "addressee",
    "attention",
    "signer",
    "shipto",
    "billto",
    "owner",
    "user",
    "neighbor",
    "neighbour",
    "legal",
];

/// Keys whose value is a person's name without the word `name` in them.
const PERSON_KEYS: &[&str] = &["attention", "signedforby", "receivedby", "recipient", "contactperson", "surname", "firstname", "lastname", "fullname"];

/// Words of an object's name that make its `name` member a person's (`recipient.name`,
/// `shipToParty.name`, `buyer.name`); a bare `name` elsewhere is as often a shop's, a service's
/// or a product's.
const PERSON_OBJECTS: &[&str] = &[
    "buyer",
    "recipient",
    "customer",
    "contact",
    "receiver",
    "consignee",
    "addressee",
    "person",
    "party",
    "address",
    "owner",
    "user",
    "neighbor",
    "neighbour",
    "signer",
    "shipto",
    "billto",
    "attention",
    "people",
    "persons",
];

/// Whether a member name, under its parent's, says the value is a person's name: a person's key
/// (`buyerName`, `firstName`, `signedForBy`), or `name` in an object named for a person.
pub fn is_person_name_key(key: &str, parent: Option<&str>) -> bool {
    if key.eq_ignore_ascii_case("name") {
        return parent.is_some_and(|p| key_words(p).any(|w| PERSON_OBJECTS.contains(&w.as_str())));
    }
    is_name_key(key)
}

/// Whether a member name says its value is a person's name (`name` alone counts: inside a
/// customer object, it is the customer's).
pub fn is_name_key(key: &str) -> bool {
    let words: Vec<String> = key_words(key).collect();
    let joined: String = words.concat();
    if PERSON_KEYS.contains(&joined.as_str()) {
        return true;
    }
    match words.split_last() {
        Some((last, before)) if last == "name" => before.is_empty() || before.iter().any(|w| PERSON_WORDS.contains(&w.as_str())),
        _ => false,
    }
}

/// The lowercase words of a member name: `buyerPhoneNumber` → buyer, phone, number;
/// `ship_to-Name` → ship, to, name; `URLValue` → url, value.
pub fn key_words(key: &str) -> impl Iterator<Item = String> + '_ {
    let chars: Vec<char> = key.chars().collect();
    let mut words = Vec::new();
    let mut current = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            continue;
        }
        let previous = i.checked_sub(1).and_then(|p| chars.get(p));
        let camel = c.is_uppercase() && (previous.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit()) || chars.get(i + 1).is_some_and(|n| n.is_lowercase()));
        let digits = previous.is_some_and(|p| p.is_ascii_digit() != c.is_ascii_digit());
        let boundary = !current.is_empty() && (camel || digits);
        if boundary {
            words.push(std::mem::take(&mut current));
        }
        current.extend(c.to_lowercase());
    }
    if !current.is_empty() {
        words.push(current);
    }
    words.into_iter()
}

/// The class a member name says its value has, if it says one.
pub fn class_from_key(key: &str) -> Option<PiiClass> {
    let words: Vec<String> = key_words(key).collect();
    let has = |set: &[&str]| words.iter().any(|w| set.contains(&w.as_str()));
    if has(&["email", "emails", "mail"]) {
        return Some(PiiClass::Email);
    }
    if has(PHONE_WORDS) {
        return Some(PiiClass::Phone);
    }
    if has(&["company", "business", "organization", "organisation", "employer"]) {
        return Some(PiiClass::Company);
    }
    if has(&["tax", "vat", "gst", "cpf", "cnpj", "registration"]) {
        return Some(PiiClass::TaxId);
    }
    if has(&["gift"]) {
        return Some(PiiClass::GiftMessage);
    }
    if is_name_key(key) {
        return Some(PiiClass::Name);
    }
    const ADDRESS: &[&str] = &[
        "address",
        "line",
        "line1",
        "line2",
        "line3",
        "street",
        "house",
        "building",
        "city",
        "town",
        "postal",
        "postcode",
        "zip",
        "zipcode",
        "state",
        "region",
        "province",
        "county",
        "district",
        "municipality",
        "neighborhood",
        "neighbourhood",
        "suburb",
        "locality",
        "latitude",
        "longitude",
        "geo",
        "country",
        "apartment",
        "apt",
        "suite",
        "floor",
        "unit",
    ];
    if has(ADDRESS) {
        return Some(PiiClass::Address);
    }
    None
}

/// The class of a member of a customer object that the catalog does not name: what its name says,
/// else what its value looks like (an email, a phone number), else the object's class.
pub fn member_class(key: Option<&str>, value: Option<&str>, object_class: PiiClass) -> PiiClass {
    if let Some(class) = key.and_then(class_from_key) {
        return class;
    }
    if let Some(v) = value {
        if memchr::memchr(b'@', v.as_bytes()).is_some() && contains_email(v) {
            return PiiClass::Email;
        }
        if is_phone(v, || false) {
            return PiiClass::Phone;
        }
    }
    object_class
}

/// Whether a member name looks like it holds PII (for the zero-match alarm): an email, a phone, a
/// person's name, an address line, a street, a city, a postal code.
pub fn looks_like_pii_key(key: &str) -> bool {
    // Without allocating, most names hold none of the words (every one below contains one of
    // these, in any case).
    const MARKS: [&str; 16] = ["name", "mail", "phone", "tel", "mobile", "cell", "fax", "street", "city", "zip", "post", "addressline", "attention", "by", "recipient", "person"];
    let lower_contains = |mark: &str| key.as_bytes().windows(mark.len()).any(|w| w.eq_ignore_ascii_case(mark.as_bytes()));
    if !MARKS.iter().any(|m| lower_contains(m)) {
        return false;
    }
    if is_name_key(key) {
        return true;
    }
    let words: Vec<String> = key_words(key).collect();
    let joined = words.concat();
    words.iter().any(|w| matches!(w.as_str(), "email" | "street" | "city" | "zip" | "zipcode" | "postcode") || PHONE_WORDS.contains(&w.as_str()))
        || joined.contains("addressline")
        || joined.contains("postalcode")
}

// ---------------------------------------------------------------------------------------------
// Path templates

/// One step of the path to a value, as the walker sees it: a member (its name's byte range in the
/// body, escaped or not) or an array element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg {
    Member { start: u32, end: u32 },
    Element,
}

/// Longest template written (longer ones end in `…`).
pub const MAX_TEMPLATE: usize = 200;

/// The JSON path template of a location: `$.payload.Orders[*].BuyerInfo.BuyerPhone`. Array
/// indices are `[*]`; a member name that is not a plain identifier (it could be data: map keys,
/// an email as a key) is `*`. `text` is the body the ranges point into.
pub fn template(text: &str, path: &[Seg]) -> String {
    let mut out = String::from("$");
    for seg in path {
        if out.len() > MAX_TEMPLATE {
            out.push('…');
            break;
        }
        match *seg {
            Seg::Element => out.push_str("[*]"),
            Seg::Member { start, end } => {
                let name = text.get(start as usize..end as usize).unwrap_or("");
                out.push('.');
                if is_identifier(name) {
                    out.push_str(name);
                } else {
                    out.push('*');
                }
            }
        }
    }
    out
}

/// A plain identifier: a letter then up to 63 letters, digits or `_` (no `-`, spaces, `@`, dots,
/// escapes), and not shaped like data (no run of 5 digits).
fn is_identifier(name: &str) -> bool {
    let b = name.as_bytes();
    let mut digits = 0;
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|&c| {
            digits = if c.is_ascii_digit() { digits + 1 } else { 0 };
            (c.is_ascii_alphanumeric() || c == b'_') && digits < 5
        })
}

// ---------------------------------------------------------------------------------------------
// What one response showed

/// Distinct findings kept per response (events and metric label sets); more are counted only.
pub const MAX_FINDINGS: usize = 16;

/// What was done with what drift found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DriftAction {
    /// The value got its class's treatment for the caller (tokenized, hashed, redacted, clear, removed).
    Protected,
    /// The value was left as it is and reported.
    Reported,
}

impl DriftAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftAction::Protected => "protected",
            DriftAction::Reported => "reported",
        }
    }
}

/// One distinct finding: kind, action, where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: DriftKind,
    pub action: DriftAction,
    /// The path template (never a value).
    pub path: String,
    pub count: u32,
}

/// Everything drift found in one response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriftFindings {
    counts: [[u32; 2]; 6],
    findings: Vec<Finding>,
}

impl DriftFindings {
    /// Records one value found by `kind` at `path` (a template, built only if new).
    pub fn add(&mut self, kind: DriftKind, action: DriftAction, path: impl FnOnce() -> String) {
        let slot = &mut self.counts[kind.index()][action as usize];
        *slot = slot.saturating_add(1);
        let path = path();
        if let Some(f) = self.findings.iter_mut().find(|f| f.kind == kind && f.action == action && f.path == path) {
            f.count = f.count.saturating_add(1);
        } else if self.findings.len() < MAX_FINDINGS {
            self.findings.push(Finding { kind, action, path, count: 1 });
        }
    }

    /// How many values `kind` found and `action` was done to.
    pub fn count(&self, kind: DriftKind, action: DriftAction) -> u32 {
        self.counts[kind.index()][action as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.counts.iter().flatten().all(|&n| n == 0)
    }

    /// Distinct findings (at most [`MAX_FINDINGS`]), in the order first seen.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Non-zero counts as (kind, action, count).
    pub fn entries(&self) -> impl Iterator<Item = (DriftKind, DriftAction, u32)> + '_ {
        DriftKind::ALL.into_iter().flat_map(move |k| {
            [DriftAction::Protected, DriftAction::Reported].into_iter().filter_map(move |a| {
                let n = self.count(k, a);
                (n > 0).then_some((k, a, n))
            })
        })
    }

    /// Adds another response's findings (a streamed body scanned in parts).
    pub fn merge(&mut self, other: &DriftFindings) {
        for f in &other.findings {
            for _ in 0..f.count {
                self.add(f.kind, f.action, || f.path.clone());
            }
        }
    }
}

/// A short, value-free description of a finding for logs: `email protected at $.a.b`.
pub fn describe(f: &Finding) -> String {
    let mut s = String::new();
    let _ = write!(s, "{} {} at {}", f.kind.as_str(), f.action.as_str(), f.path);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: DriftKind) -> bool {
        true
    }

    #[test]
    fn emails_including_amazons_relay_addresses() {
        for yes in
            ["jane@example.com", "buyer-email@marketplace.amazon.com.br", "2c6m0kt2f7xgh5y@marketplace.amazon.com", "Contact: j.doe+x@mail.example.co.uk, thanks", "o'neil@ex.io"]
        {
            assert!(contains_email(yes), "{yes}");
            assert_eq!(detect(None, None, yes, &all), Some(DriftKind::Email), "{yes}");
        }
        for no in ["user@host", "@example.com", "a@b.c", "x@.com", "1@2.34", "support at example.com", "https://example.com/a@", "jane@-x.com"] {
            assert!(!contains_email(no), "{no}");
        }
    }

    #[test]
    fn phones_but_not_ids_dates_amounts_or_tracking_numbers() {
        let phones = [
            "+1 480-386-0930 ext. 73824",
            "+44 20 7946 0958",
            "+55 11 98765-4321",
            "206-555-1234",
            "(206) 555-1234",
            "020 7946 0958",
            "0161 123 4567",
            "+12065550100",
            "555.123.4567",
        ];
        for p in phones {
            assert!(is_phone(p, || false), "{p}");
        }
        let not = [
            "902-3159896-1390916",
            "2020-01-01",
            "2019-04-04T06:45:12Z",
            "12/31/2024",
            "1234567.89",
            "1,234,567.89",
            "B00551Q3CS",
            "SKU-123-4567",
            "1Z999AA10123456784",
            "9400111899223197428490",
            "48817-1234",
            "123456789012",
            "12:30:45",
            "v1.2.3.4567",
            "555-1234",
            "1234-5678-9012",
        ];
        for n in not {
            assert!(!is_phone(n, || false), "{n}");
        }
        // A bare number is a phone under a phone-like key only.
        assert!(is_phone("7132341234", || true));
        assert!(!is_phone("7132341234", || false));
        assert_eq!(detect(Some("Phone"), None, "7132341234", &all), Some(DriftKind::Phone));
        assert_eq!(detect(Some("buyerMobileNumber"), None, "7132341234", &all), Some(DriftKind::Phone));
        assert_eq!(detect(Some("OrderItemId"), None, "71323412349876", &all), None);
        assert_eq!(detect(Some("cancellationId"), None, "7132341234", &all), None, "cancel is not cell");
    }

    #[test]
    fn address_lines() {
        for yes in ["1 Cross St", "1600 Amphitheatre Parkway", "221B Baker Street, Flat 2", "PO Box 1234", "Hauptstraße 5", "Rua Augusta, 1500", "123 Main St. Apt 4"] {
            assert!(is_address_line(yes), "{yes}");
        }
        for no in
            ["Standard shipping", "2 Pack", "2020-01-01", "Delivered", "Order 902-3159896-1390916", "jane@example.com", "12 x 24 inch", "Via UPS 2nd Day Air", "2 Pack Road Sign"]
        {
            assert!(!is_address_line(no), "{no}");
        }
    }

    #[test]
    fn names_next_to_name_like_keys() {
        assert_eq!(detect(Some("recipientName"), None, "Jane Doe", &all), Some(DriftKind::Name));
        assert_eq!(detect(Some("name"), Some("shipToParty"), "Mary-Jane O'Neil", &all), Some(DriftKind::Name));
        assert_eq!(detect(Some("name"), None, "Mary-Jane O'Neil", &all), None, "a bare name, nothing says whose");
        assert_eq!(detect(Some("name"), Some("accessPoint"), "Corner Shop", &all), None);
        assert_eq!(detect(Some("signedForBy"), None, "JANE Q. PUBLIC", &all), Some(DriftKind::Name));
        assert_eq!(detect(Some("productName"), None, "Jane Doe", &all), None, "not a person's key");
        assert_eq!(detect(Some("name"), Some("recipient"), "Standard Shipping", &all), None);
        assert_eq!(detect(Some("name"), Some("recipient"), "Amazon Locker", &all), None);
        assert_eq!(detect(Some("status"), None, "Jane Doe", &all), None);
        assert!(!looks_like_person_name("jane doe"));
        assert!(!looks_like_person_name("Jane"));
        assert!(!looks_like_person_name("Unit 2 Jane"));
        let only_names = |k: DriftKind| k == DriftKind::Name;
        assert_eq!(detect(Some("name"), Some("buyer"), "jane@example.com", &only_names), None, "detectors can be off");
    }

    #[test]
    fn the_quick_look_lets_every_detectors_shape_through() {
        for v in ["jane@example.com", "+44 20 7946 0958", "206-555-1234", "(206) 555-1234", "1 Cross St", "Hauptstraße 5", "rua augusta 15", "Jane Doe", "PO Box 12", "ÉMILE ZOLA"]
        {
            assert!(worth_a_look(v), "{v}");
        }
        for v in ["Shipped", "standard", "ATVPDKIKX0DER", "true", "Ship", "B00551Q3CS", "abc def"] {
            assert!(!worth_a_look(v), "{v}");
        }
    }

    #[test]
    fn key_words_and_classes() {
        assert_eq!(key_words("buyerPhoneNumber").collect::<Vec<_>>(), ["buyer", "phone", "number"]);
        assert_eq!(key_words("URLValue").collect::<Vec<_>>(), ["url", "value"]);
        assert_eq!(key_words("ship_to-Name").collect::<Vec<_>>(), ["ship", "to", "name"]);
        assert_eq!(key_words("AddressLine1").collect::<Vec<_>>(), ["address", "line", "1"]);
        assert_eq!(class_from_key("BuyerEmail2"), Some(PiiClass::Email));
        assert_eq!(class_from_key("contactPhone"), Some(PiiClass::Phone));
        assert_eq!(class_from_key("companyName"), Some(PiiClass::Company));
        assert_eq!(class_from_key("Nickname"), None);
        assert_eq!(class_from_key("middleName"), Some(PiiClass::Name));
        assert_eq!(class_from_key("StreetNumber2"), Some(PiiClass::Address));
        assert_eq!(class_from_key("TaxingRegion"), Some(PiiClass::Address));
        assert_eq!(class_from_key("taxId"), Some(PiiClass::TaxId));
        assert_eq!(member_class(Some("Contact"), Some("jane@example.com"), PiiClass::Address), PiiClass::Email);
        assert_eq!(member_class(Some("Contact"), Some("+1 206 555 0100"), PiiClass::Address), PiiClass::Phone);
        assert_eq!(member_class(Some("Notes"), Some("ring twice"), PiiClass::Other), PiiClass::Other);
        assert!(looks_like_pii_key("buyerEmail") && looks_like_pii_key("name") && looks_like_pii_key("AddressLine1") && looks_like_pii_key("postalCode"));
        for key in ["recipient", "signedForBy", "attention", "contactPerson", "surname", "Phone", "fax", "cellPhone", "ZipCode", "city"] {
            assert!(looks_like_pii_key(key), "{key}");
        }
        assert!(!looks_like_pii_key("AmazonOrderId") && !looks_like_pii_key("productName") && !looks_like_pii_key("BuyerInfo") && !looks_like_pii_key("ShippingAddress"));
    }

    #[test]
    fn templates_name_no_values() {
        let text = r#"{"payload":{"Orders":[{"jane@x.com":{"Tel-2":"1"}},{"BuyerInfo":{"X12345":"v"}}]}}"#;
        let at = |s: &str| {
            let i = text.find(s).expect("in text") as u32;
            Seg::Member { start: i, end: i + s.len() as u32 }
        };
        let path = [at("payload"), at("Orders"), Seg::Element, at("jane@x.com"), at("Tel-2")];
        assert_eq!(template(text, &path), "$.payload.Orders[*].*.*");
        let path = [at("payload"), at("Orders"), Seg::Element, at("BuyerInfo"), at("X12345")];
        assert_eq!(template(text, &path), "$.payload.Orders[*].BuyerInfo.*", "a run of digits may be data");
    }

    #[test]
    fn findings_count_and_cap() {
        let mut f = DriftFindings::default();
        for i in 0..40 {
            f.add(DriftKind::Email, DriftAction::Protected, || format!("$.a{}", i % 20));
        }
        f.add(DriftKind::Name, DriftAction::Reported, || "$.n".into());
        assert_eq!(f.count(DriftKind::Email, DriftAction::Protected), 40);
        assert_eq!(f.findings().len(), MAX_FINDINGS);
        assert_eq!(f.findings()[0].count, 2);
        assert_eq!(f.entries().count(), 2);
    }
}
