#!/usr/bin/env python3
"""Writes SP-API report documents with planted customer PII, for the report-document tests.

The columns of each report type come from policies/spapi-report-columns.json (the rewriter's own
catalog, derived from Amazon's report documentation); every PII column of every row gets a
distinct planted value, and the manifest printed on stdout (JSON) lists them so a test can check
that none comes out of the proxy in clear and that every token opens to the original.

    tests/gen_reports.py --type GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING --rows 1000 --out /tmp/r.tsv
    tests/gen_reports.py --type SC_VAT_TAX_REPORT --rows 50 --gzip --out /tmp/r.csv.gz
    tests/gen_reports.py --type GET_ORDER_REPORT_DATA_SHIPPING --format xml --rows 10 --out /tmp/r.xml
    tests/gen_reports.py --type END_USER_DATA_REPORT --rows 10 --out /tmp/r.json
    tests/gen_reports.py --type GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING --size-mb 256 --gzip --out /tmp/big.tsv.gz --manifest-rows 100

Options: --format tsv|csv|xml|json (default: the catalog's format of the type), --gzip,
--crlf (CRLF line ends), --bom (a UTF-8 byte order mark), --tricky (values with non-ASCII text,
and in CSV embedded commas, quotes and newlines; in XML entities and CDATA), --seed, --size-mb
(rows until the uncompressed document reaches that size), --manifest-rows (planted values listed
for the first N rows only; counts cover all rows; default all rows, 1000 with --size-mb).

Manifest: {"type", "format", "gzip", "rows", "bytes" (uncompressed), "bytes_written",
"columns", "pii_columns" {column: class}, "planted": [{"row", "column", "class", "value"}],
"planted_total", "per_class" {class: count}}. Stdlib only.
"""
import argparse
import gzip
import json
import os
import random
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATALOG = os.path.join(ROOT, "policies", "spapi-report-columns.json")


def load_catalog():
    with open(CATALOG, encoding="utf-8") as f:
        return json.load(f)


def normalize(name):
    """The rewriter's normalization (src/report/columns.rs): lowercase words joined by '-'."""
    words, current = [], ""
    chars = list(name)
    for i, c in enumerate(chars):
        if not c.isalnum():
            if current:
                words.append(current)
                current = ""
            continue
        prev = chars[i - 1] if i > 0 else None
        nxt = chars[i + 1] if i + 1 < len(chars) else None
        camel = c.isupper() and ((prev is not None and (prev.islower() or prev.isdigit())) or (nxt is not None and nxt.islower()))
        digits = prev is not None and prev.isdigit() != c.isdigit()
        if current and (camel or digits):
            words.append(current)
            current = ""
        current += c.lower()
    if current:
        words.append(current)
    return "-".join(words)


def column_class(cat, name, restricted):
    """The class the rewriter gives a column (None: clear)."""
    n = normalize(name)
    if n in cat["columns"]:
        return cat["columns"][n]
    if n in cat["notPii"]:
        return None
    for p in cat["notPiiPrefixes"]:
        if n.startswith(p):
            return None
    for p, cls in cat["prefixes"]:
        if n.startswith(p):
            return cls
    return "other" if restricted else None


def report_entry(cat, rtype):
    entry = cat["reportTypes"].get(rtype)
    if entry is None:
        sys.exit(f"unknown report type {rtype}; known: {', '.join(sorted(cat['reportTypes']))}")
    if "sameAs" in entry:
        base = cat["reportTypes"][entry["sameAs"]]
        entry = dict(base, **{k: v for k, v in entry.items() if k != "sameAs"})
    return entry


FIRST = ["Jane", "Ana", "Björn", "Zoë", "Hiroshi", "Amélie", "Олег", "李"]
LAST = ["Doe", "Smith", "Müller", "García", "Tanaka", "Østergaard", "Ivanova", "王"]
CITIES = ["Seattle", "München", "Zürich", "São Paulo", "Kraków", "東京"]


class Planter:
    """Distinct values per row: the row number sits between letters (`Pl12x`), so no planted
    value is a substring of another one."""

    def __init__(self, rng, tricky, delimiter):
        self.rng, self.tricky, self.delimiter = rng, tricky, delimiter

    def value(self, cls, row, column):
        r = self.rng
        tag = f"Pl{row}x"
        if cls == "email":
            v = f"buyer.{tag.lower()}@marketplace.example"
        elif cls == "phone":
            v = f"+1 206-555-{row % 10000:04d} ext {row}"
        elif cls == "name":
            v = f"{r.choice(FIRST)} {tag} {r.choice(LAST)}"
        elif cls == "address":
            n = normalize(column)
            if "city" in n:
                v = f"{r.choice(CITIES)} {tag}"
            elif "postal" in n or "post-code" in n or "zip" in n:
                v = f"{98000 + row % 1000} {tag}"
            elif "state" in n:
                v = f"WA {tag}"
            else:
                v = f"{row % 9000 + 1} Planted Street {tag}"
        elif cls == "tax_id":
            v = f"DE{tag}99"
        elif cls == "gift_message":
            v = f"Happy birthday {tag}!"
        elif cls == "company":
            v = f"Buyer Company {tag} GmbH"
        else:
            v = f"PO-{tag}"
        if self.tricky and row % 3 == 1:
            if self.delimiter == ",":
                v = f'{v}, "quoted"\nsecond line'
            elif self.delimiter == "xml":
                v = f"{v} & <co> ü"
            else:
                v = f"{v} ÄÖÜ €"
        return v


def clear_value(column, row, rng):
    n = normalize(column)
    if "date" in n:
        return f"2026-11-{row % 28 + 1:02d}T10:{row % 60:02d}:00+00:00"
    if n.endswith("order-id") or n == "order-id":
        return f"{100 + row % 900:03d}-{row % 10000000:07d}-{row % 7000000:07d}"
    if "id" in n.split("-"):
        return f"ID{row:09d}"
    if "country" in n:
        return rng.choice(["US", "DE", "IN", "FR"])
    if "price" in n or "tax" in n or "amount" in n or "rate" in n:
        return f"{rng.randint(1, 9999) / 100:.2f}"
    if "quantity" in n:
        return str(rng.randint(1, 5))
    if n in ("sku", "seller-sku"):
        return f"SKU-{row:06d}"
    if n == "asin":
        return f"B0{row % 100000000:08d}"
    if n == "currency":
        return "USD"
    if n.startswith("is-"):
        return rng.choice(["true", "false"])
    if "name" in n or "description" in n:
        return f"Widget {row % 97} (12\" ruler)"
    return f"v{row % 1000}"


def csv_field(v):
    if any(c in v for c in ',"\r\n'):
        return '"' + v.replace('"', '""') + '"'
    return v


class Writer:
    def __init__(self, path, gz, size_target):
        self.f = gzip.open(path, "wb", compresslevel=6) if gz else open(path, "wb")
        self.bytes = 0
        self.target = size_target

    def write(self, text):
        b = text.encode("utf-8")
        self.bytes += len(b)
        self.f.write(b)

    def full(self):
        return self.target is not None and self.bytes >= self.target

    def close(self):
        self.f.close()


def gen_delimited(args, cat, entry, w, planter, rng, manifest):
    delim = "\t" if args.format == "tsv" else ","
    nl = "\r\n" if args.crlf else "\n"
    columns = entry.get("columns") or []
    if not columns:
        sys.exit(f"{args.type}: the catalog lists no columns to generate")
    restricted = entry.get("restricted", True)
    classes = [column_class(cat, c, restricted) for c in columns]
    manifest["columns"] = columns
    manifest["pii_columns"] = {c: k for c, k in zip(columns, classes) if k}
    header = delim.join(csv_field(c) if delim == "," else c for c in columns)
    w.write(("\ufeff" if args.bom else "") + header + nl)
    row = 0
    while (args.size_mb is not None and not w.full()) or (args.size_mb is None and row < args.rows):
        fields = []
        for c, cls in zip(columns, classes):
            if cls:
                v = planter.value(cls, row, c)
                manifest_plant(manifest, args, row, c, cls, v)
            else:
                v = clear_value(c, row, rng)
            fields.append(csv_field(v) if delim == "," else v)
        w.write(delim.join(fields) + nl)
        row += 1
    return row


def manifest_plant(manifest, args, row, column, cls, value):
    manifest["planted_total"] += 1
    manifest["per_class"][cls] = manifest["per_class"].get(cls, 0) + 1
    if args.manifest_rows is None or row < args.manifest_rows:
        manifest["planted"].append({"row": row, "column": column, "class": cls, "value": value})


def xml_text(v, row, tricky):
    esc = v.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if tricky and row % 5 == 2 and "]]>" not in v:
        return f"<![CDATA[{v}]]>"
    return esc


def gen_xml(args, cat, entry, w, planter, rng, manifest):
    nl = "\r\n" if args.crlf else "\n"
    elements = {k.lower(): v for k, v in cat["xml"]["elements"].items()}
    manifest["columns"] = list(cat["xml"]["elements"])
    manifest["pii_columns"] = dict(cat["xml"]["elements"])
    w.write(("\ufeff" if args.bom else "") + '<?xml version="1.0" encoding="UTF-8"?>' + nl)
    w.write('<AmazonEnvelope xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">' + nl)
    w.write(f"<Header><DocumentVersion>1.01</DocumentVersion></Header>{nl}<MessageType>OrderReport</MessageType>{nl}")
    row = 0

    def el(path, name, row):
        cls = elements[(path + "/" + name).lower()]
        v = planter.value(cls, row, name)
        manifest_plant(manifest, args, row, path + "/" + name, cls, v)
        return f"<{name}>{xml_text(v, row, args.tricky)}</{name}>"

    while (args.size_mb is not None and not w.full()) or (args.size_mb is None and row < args.rows):
        billing = "".join(el("BillingData", n, row) for n in ("BuyerEmailAddress", "BuyerName", "BuyerPhoneNumber"))
        addr = "".join(el("FulfillmentData/Address", n, row) for n in ("Name", "AddressFieldOne", "AddressFieldTwo", "City", "StateOrRegion", "PostalCode", "PhoneNumber"))
        gift = el("Item", "GiftMessageText", row)
        w.write(
            f"<Message>{nl}<MessageID>{row + 1}</MessageID>{nl}<OrderReport>{nl}"
            f"<AmazonOrderID>{clear_value('order-id', row, rng)}</AmazonOrderID>{nl}"
            f"<!-- order {row} --><BillingData>{billing}</BillingData>{nl}"
            f'<FulfillmentData type="ship"><FulfillmentMethod>Ship</FulfillmentMethod><Address>{addr}<CountryCode>US</CountryCode></Address></FulfillmentData>{nl}'
            f"<Item><AmazonOrderItemCode>{row:014d}</AmazonOrderItemCode><SKU>SKU-{row:06d}</SKU><Title>Widget &amp; Co 12&quot;</Title><Quantity>1</Quantity>{gift}</Item>{nl}"
            f"</OrderReport>{nl}</Message>{nl}"
        )
        row += 1
    w.write("</AmazonEnvelope>" + nl)
    return row


def gen_json(args, cat, entry, w, planter, rng, manifest):
    manifest["columns"] = ["fullName", "primaryEmail", "mailingAddress.*"]
    manifest["pii_columns"] = {"fullName": "name", "primaryEmail": "email", "mailingAddress.*": "address"}
    users = []
    row = 0
    size = 0
    while (args.size_mb is not None and size < args.size_mb * 1024 * 1024) or (args.size_mb is None and row < args.rows):
        def p(cls, col):
            v = planter.value(cls, row, col)
            manifest_plant(manifest, args, row, col, cls, v)
            return v

        u = {
            "fullName": p("name", "fullName"),
            "mailingAddress": {
                "addressLine1": p("address", "addressLine1"),
                "addressLine2": "",
                "city": p("address", "city"),
                "stateOrRegion": p("address", "stateOrRegion"),
                "postalCode": p("address", "postalCode"),
                "countryCode": "DE",
            },
            "primaryEmail": p("email", "primaryEmail"),
            "asinMetrics": [{"startDate": "2026-11-01", "endDate": "2026-11-07", "marketplaceId": "A1PA6795UKMFR9", "asin": f"B0{row:08d}", "pageViews": row, "gms": 12.5, "currencyCode": "EUR"}],
        }
        size += len(json.dumps(u, ensure_ascii=False))
        users.append(u)
        row += 1
    doc = {"reportSpecification": {"reportType": args.type, "marketplaceIds": ["A1PA6795UKMFR9"], "dataStartTime": "2026-11-01", "dataEndTime": "2026-11-07"}, "endUserData": users}
    w.write(json.dumps(doc, ensure_ascii=False, indent=2 if args.rows < 100 else None))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--type", required=True)
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--format", choices=["tsv", "csv", "xml", "json"])
    ap.add_argument("--gzip", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--crlf", action="store_true")
    ap.add_argument("--bom", action="store_true")
    ap.add_argument("--tricky", action="store_true")
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--size-mb", type=float)
    ap.add_argument("--manifest-rows", type=int)
    args = ap.parse_args()
    cat = load_catalog()
    entry = report_entry(cat, args.type)
    args.format = args.format or entry.get("format")
    if args.format not in ("tsv", "csv", "xml", "json"):
        sys.exit(f"{args.type} is a {args.format} document: nothing to generate")
    if args.size_mb is not None and args.manifest_rows is None:
        args.manifest_rows = 1000
    rng = random.Random(args.seed)
    planter = Planter(rng, args.tricky, {"csv": ",", "xml": "xml"}.get(args.format, "\t"))
    manifest = {"type": args.type, "format": args.format, "gzip": args.gzip, "planted": [], "planted_total": 0, "per_class": {}}
    w = Writer(args.out, args.gzip, None if args.size_mb is None else int(args.size_mb * 1024 * 1024))
    gen = {"tsv": gen_delimited, "csv": gen_delimited, "xml": gen_xml, "json": gen_json}[args.format]
    rows = gen(args, cat, entry, w, planter, rng, manifest)
    w.close()
    manifest["rows"] = rows
    manifest["bytes"] = w.bytes
    manifest["bytes_written"] = os.path.getsize(args.out)
    json.dump(manifest, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
