//! The SP-API query parameters spapi-guard knows, and the shape of their values: the one table the
//! audit log's allow list ([`crate::audit`]) and the `includedData` check ([`crate::access`]) read.
//!
//! The audit log prints a query parameter's *name* only if it is in this table (or a `queryPii`
//! parameter of the operation), and its *value* only if the row applies to the request's operation
//! and the value has the row's [`Shape`]; everything else is `{redacted}`. A shape admits only
//! values that cannot carry PII (dates, enumerations, marketplace ids, small integers); identifiers,
//! page tokens and free text are [`Shape::Hidden`]: the name is logged, the value never.
//!
//! Source: the query parameters of the catalog's operations in Amazon's SP-API models
//! (`amzn/selling-partner-api-models` at the catalog's commit, see `policies/spapi-catalog.json`).
//! [`Scope::All`] rows are parameters many SP-API operations share with one meaning (date filters,
//! marketplace ids, page sizes and tokens); they also apply outside the catalog (pass-through
//! paths). Other rows apply only to the operations they name.

/// Which operations a row applies to.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// Every operation, and paths outside the catalog.
    All,
    /// Only these catalog operation ids.
    Operations(&'static [&'static str]),
}

impl Scope {
    /// Whether the row applies to `operation` (a catalog id; `None` outside the catalog).
    pub fn covers(&self, operation: Option<&str>) -> bool {
        match self {
            Scope::All => true,
            Scope::Operations(ids) => operation.is_some_and(|op| ids.contains(&op)),
        }
    }
}

/// What a loggable value looks like. Nothing that matches a shape can be PII.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// An ISO 8601 date or date-time: `2024-01-01`, `2024-12-20T00:00:00Z`, `2020-02-15T14:00:00.5-08:00`
    /// (also reduced precision: `2020`, `2020-11`).
    DateTime,
    /// Exactly one of these values.
    OneOf(&'static [&'static str]),
    /// A comma-separated list of these values.
    ListOf(&'static [&'static str]),
    /// A comma-separated list of Amazon marketplace ids (`ATVPDKIKX0DER,A1F83G8C2ARO7P`), at most
    /// 50: `A` then 9–15 of `A-Z 0-9`, letters and digits mixed. (Stricter than `[A-Z0-9]{10,16}`,
    /// which a 10-digit phone number or a name in capitals fits.)
    MarketplaceIds,
    /// A decimal integer within these bounds.
    Integer(u64, u64),
    /// `true` or `false`.
    Boolean,
    /// Two capital letters (ISO 3166-1 alpha-2).
    CountryCode,
    /// Never logged: identifiers, page tokens, customer data.
    Hidden,
}

/// One known query parameter.
#[derive(Debug, Clone, Copy)]
pub struct QueryParam {
    /// The name, exactly as Amazon's model spells it (names are case-sensitive).
    pub name: &'static str,
    pub scope: Scope,
    pub shape: Shape,
}

/// `includedData` values of Orders 2026-01-01 (`searchOrders`, `getOrder`).
pub const INCLUDED_DATA: &[&str] = &["BUYER", "RECIPIENT", "PROCEEDS", "EXPENSE", "PROMOTION", "CANCELLATION", "FULFILLMENT", "PACKAGES", "TAX", "PAYMENT", "FULFILLMENT_ORDERS"];

const ORDERS_V0_GET_ORDERS: &[&str] = &["orders-v0.getOrders"];
const ORDERS_2026: &[&str] = &["orders-2026-01-01.searchOrders", "orders-2026-01-01.getOrder"];
const SEARCH_ORDERS: &[&str] = &["orders-2026-01-01.searchOrders"];
const ACCESS_POINTS: &[&str] = &["shipping-v2.getAccessPoints"];
const SHIPMENT_DOCUMENTS: &[&str] = &["shipping-v2.getShipmentDocuments"];
const SHIPPING_TRACKING: &[&str] = &["shipping-v2.getTracking"];
const MCF_2026: &[&str] = &["fulfillment-outbound-2026-07-04.getOrder", "fulfillment-outbound-2026-07-04.listOrders"];
const MCF_TRACKING: &[&str] = &["fulfillment-outbound-2020-07-01.getPackageTrackingDetails"];
const VDF_ORDERS: &[&str] = &["vdf-orders-v1.getOrders", "vdf-orders-2021-12-28.getOrders"];
const VDF_LISTS: &[&str] = &[
    "vdf-orders-v1.getOrders",
    "vdf-orders-2021-12-28.getOrders",
    "vdf-shipping-v1.getShippingLabels",
    "vdf-shipping-v1.getCustomerInvoices",
    "vdf-shipping-v1.getPackingSlips",
    "vdf-shipping-2021-12-28.getShippingLabels",
    "vdf-shipping-2021-12-28.getCustomerInvoices",
    "vdf-shipping-2021-12-28.getPackingSlips",
];
const SERVICE_JOBS: &[&str] = &["services-v1.getServiceJobs"];
const EF_SHIPMENTS: &[&str] = &["external-fulfillment-shipments-2024-09-11.getShipments"];
const EF_SHIP_LABELS: &[&str] = &["external-fulfillment-shipments-2024-09-11.generateShipLabels"];
const DELIVERY_INVOICE: &[&str] = &["delivery-shipment-invoice-2022-07-01.submitInvoice"];
const REPORT_DOCUMENT: &[&str] = &["reports-2021-06-30.getReportDocument"];

const fn row(name: &'static str, scope: Scope, shape: Shape) -> QueryParam {
    QueryParam { name, scope, shape }
}

use Scope::{All, Operations as Ops};
use Shape::*;

/// Every known query parameter. A name may have several rows for different operations; the first
/// row that covers the request's operation decides.
pub const QUERY_PARAMS: &[QueryParam] = &[
    // Shared by many operations: dates, marketplaces, page sizes and tokens.
    row("CreatedAfter", All, DateTime),
    row("CreatedBefore", All, DateTime),
    row("LastUpdatedAfter", All, DateTime),
    row("LastUpdatedBefore", All, DateTime),
    row("EarliestDeliveryDateAfter", All, DateTime),
    row("EarliestDeliveryDateBefore", All, DateTime),
    row("LatestDeliveryDateAfter", All, DateTime),
    row("LatestDeliveryDateBefore", All, DateTime),
    row("createdAfter", All, DateTime),
    row("createdBefore", All, DateTime),
    row("lastUpdatedAfter", All, DateTime),
    row("lastUpdatedBefore", All, DateTime),
    row("updatedAfter", All, DateTime),
    row("queryStartDate", All, DateTime),
    row("scheduleStartDate", All, DateTime),
    row("scheduleEndDate", All, DateTime),
    row("MarketplaceIds", All, MarketplaceIds),
    row("marketplaceIds", All, MarketplaceIds),
    row("marketplaceId", All, MarketplaceIds),
    row("MaxResultsPerPage", All, Integer(1, 100)),
    row("maxResultsPerPage", All, Integer(1, 100)),
    row("maxResults", All, Integer(1, 100)),
    row("limit", All, Integer(1, 100)),
    row("pageSize", All, Integer(1, 100)),
    row("sortOrder", All, OneOf(&["ASC", "DESC"])),
    row("NextToken", All, Hidden),
    row("nextToken", All, Hidden),
    row("pageToken", All, Hidden),
    row("paginationToken", All, Hidden),
    // Orders v0.
    row(
        "OrderStatuses",
        Ops(ORDERS_V0_GET_ORDERS),
        ListOf(&["PendingAvailability", "Pending", "Unshipped", "PartiallyShipped", "Shipped", "InvoiceUnconfirmed", "Canceled", "Unfulfillable"]),
    ),
    row("FulfillmentChannels", Ops(ORDERS_V0_GET_ORDERS), ListOf(&["AFN", "MFN"])),
    row("PaymentMethods", Ops(ORDERS_V0_GET_ORDERS), ListOf(&["COD", "CVS", "Other"])),
    row(
        "EasyShipShipmentStatuses",
        Ops(ORDERS_V0_GET_ORDERS),
        ListOf(&[
            "PendingSchedule",
            "PendingPickUp",
            "PendingDropOff",
            "LabelCanceled",
            "PickedUp",
            "DroppedOff",
            "AtOriginFC",
            "AtDestinationFC",
            "Delivered",
            "RejectedByBuyer",
            "Undeliverable",
            "ReturningToSeller",
            "ReturnedToSeller",
            "Lost",
            "OutForDelivery",
            "Damaged",
        ]),
    ),
    row("ElectronicInvoiceStatuses", Ops(ORDERS_V0_GET_ORDERS), ListOf(&["NotRequired", "NotFound", "Processing", "Errored", "Accepted"])),
    row("IsISPU", Ops(ORDERS_V0_GET_ORDERS), Boolean),
    row("BuyerEmail", Ops(ORDERS_V0_GET_ORDERS), Hidden),
    row("SellerOrderId", Ops(ORDERS_V0_GET_ORDERS), Hidden),
    row("AmazonOrderIds", Ops(ORDERS_V0_GET_ORDERS), Hidden),
    row("ActualFulfillmentSupplySourceId", Ops(ORDERS_V0_GET_ORDERS), Hidden),
    row("StoreChainStoreId", Ops(ORDERS_V0_GET_ORDERS), Hidden),
    // Orders 2026-01-01.
    row("includedData", Ops(ORDERS_2026), ListOf(INCLUDED_DATA)),
    row("fulfillmentStatuses", Ops(SEARCH_ORDERS), ListOf(&["PENDING_AVAILABILITY", "PENDING", "UNSHIPPED", "PARTIALLY_SHIPPED", "SHIPPED", "CANCELLED", "UNFULFILLABLE"])),
    row("fulfilledBy", Ops(SEARCH_ORDERS), ListOf(&["MERCHANT", "AMAZON"])),
    // Shipping v2.
    row("accessPointTypes", Ops(ACCESS_POINTS), ListOf(&["HELIX", "CAMPUS_LOCKER", "OMNI_LOCKER", "ODIN_LOCKER", "DOBBY_LOCKER", "CORE_LOCKER", "3P", "CAMPUS_ROOM"])),
    row("countryCode", Ops(ACCESS_POINTS), CountryCode),
    row("postalCode", Ops(ACCESS_POINTS), Hidden),
    row("format", Ops(SHIPMENT_DOCUMENTS), OneOf(&["PDF", "PNG", "ZPL"])),
    row("dpi", Ops(SHIPMENT_DOCUMENTS), Integer(1, 2400)),
    row("packageClientReferenceId", Ops(SHIPMENT_DOCUMENTS), Hidden),
    row("trackingId", Ops(SHIPPING_TRACKING), Hidden),
    row("carrierId", Ops(SHIPPING_TRACKING), Hidden),
    // Fulfillment Outbound (MCF).
    row("shipments", Ops(MCF_2026), OneOf(&["INCLUDE", "EXCLUDE"])),
    row("packageNumber", Ops(MCF_TRACKING), Hidden),
    // Vendor Direct Fulfillment.
    row("status", Ops(VDF_ORDERS), OneOf(&["NEW", "SHIPPED", "ACCEPTED", "CANCELLED"])),
    row("includeDetails", Ops(VDF_ORDERS), Boolean),
    row("shipFromPartyId", Ops(VDF_LISTS), Hidden),
    // Services.
    row("serviceJobStatus", Ops(SERVICE_JOBS), ListOf(&["NOT_SERVICED", "CANCELLED", "COMPLETED", "PENDING_SCHEDULE", "NOT_FULFILLABLE", "HOLD", "PAYMENT_DECLINED"])),
    row("sortField", Ops(SERVICE_JOBS), OneOf(&["JOB_DATE", "JOB_STATUS"])),
    row("serviceOrderIds", Ops(SERVICE_JOBS), Hidden),
    row("productOrderIds", Ops(SERVICE_JOBS), Hidden),
    row("trackingIds", Ops(SERVICE_JOBS), Hidden),
    row("asins", Ops(SERVICE_JOBS), Hidden),
    row("requiredSkills", Ops(SERVICE_JOBS), Hidden),
    row("storeIds", Ops(SERVICE_JOBS), Hidden),
    // External Fulfillment.
    row(
        "status",
        Ops(EF_SHIPMENTS),
        OneOf(&["CREATED", "ACCEPTED", "CONFIRMED", "PACKAGE_CREATED", "PICKUP_SLOT_RETRIEVED", "INVOICE_GENERATED", "SHIPLABEL_GENERATED", "CANCELLED", "SHIPPED", "DELIVERED"]),
    ),
    row("locationId", Ops(EF_SHIPMENTS), Hidden),
    row("channelName", Ops(EF_SHIPMENTS), Hidden),
    row("operation", Ops(EF_SHIP_LABELS), OneOf(&["GENERATE", "REGENERATE"])),
    row("shippingOptionId", Ops(EF_SHIP_LABELS), Hidden),
    // Delivery Shipment Invoicing, Reports.
    row("orderId", Ops(DELIVERY_INVOICE), Hidden),
    row("shipmentId", Ops(DELIVERY_INVOICE), Hidden),
    row("enableContentEncodingUrlHeader", Ops(REPORT_DOCUMENT), Boolean),
];

/// Whether `name` (decoded) is the name of some known SP-API query parameter.
pub fn is_known_name(name: &str) -> bool {
    QUERY_PARAMS.iter().any(|p| p.name == name)
}

/// The row of `name` that applies to `operation` (`None` outside the catalog).
pub fn lookup(name: &str, operation: Option<&str>) -> Option<&'static QueryParam> {
    QUERY_PARAMS.iter().find(|p| p.name == name && p.scope.covers(operation))
}

/// Whether the audit log may print this (decoded) value of parameter `name` of `operation`.
pub fn loggable(name: &str, value: &str, operation: Option<&str>) -> bool {
    lookup(name, operation).is_some_and(|p| p.shape.accepts(value))
}

impl Shape {
    /// Whether a decoded value has this shape.
    pub fn accepts(&self, value: &str) -> bool {
        match *self {
            DateTime => is_date_time(value),
            OneOf(values) => values.contains(&value),
            ListOf(values) => value.split(',').all(|v| values.contains(&v)),
            MarketplaceIds => value.split(',').count() <= 50 && value.split(',').all(is_marketplace_id),
            Integer(min, max) => value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit()) && value.parse::<u64>().is_ok_and(|n| (min..=max).contains(&n)),
            Boolean => value == "true" || value == "false",
            CountryCode => value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase()),
            Hidden => false,
        }
    }
}

/// `A`, then 9–15 capital letters and digits with at least one of each (every marketplace id
/// Amazon lists has both; an all-letter word or an all-digit number is not let through).
fn is_marketplace_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix('A') else { return false };
    (9..=15).contains(&rest.len())
        && rest.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && rest.bytes().any(|b| b.is_ascii_digit())
        && rest.bytes().any(|b| b.is_ascii_uppercase())
}

/// A strict ISO 8601 reader: `YYYY[-MM[-DD[THH[:MM[:SS[.fff]]][zone]]]]`, zone `Z` or `±HH[[:]MM]`.
fn is_date_time(s: &str) -> bool {
    let mut r = Reader { b: s.as_bytes(), i: 0 };
    if r.number(4, 0, 9999).is_none() {
        return false;
    }
    if r.eat(b'-') {
        if r.number(2, 1, 12).is_none() {
            return false;
        }
        if r.eat(b'-') {
            if r.number(2, 1, 31).is_none() {
                return false;
            }
            if r.eat(b'T') && !time_and_zone(&mut r) {
                return false;
            }
        }
    }
    r.done()
}

fn time_and_zone(r: &mut Reader) -> bool {
    if r.number(2, 0, 24).is_none() {
        return false;
    }
    if r.eat(b':') {
        if r.number(2, 0, 59).is_none() {
            return false;
        }
        if r.eat(b':') {
            if r.number(2, 0, 60).is_none() {
                return false;
            }
            if (r.eat(b'.') || r.eat(b',')) && !r.digits(1, 9) {
                return false;
            }
        }
    }
    if r.eat(b'Z') {
        return true;
    }
    if r.eat(b'+') || r.eat(b'-') {
        if r.number(2, 0, 23).is_none() {
            return false;
        }
        let colon = r.eat(b':');
        let minutes = r.number(2, 0, 59).is_some();
        return minutes || !colon;
    }
    true
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn eat(&mut self, c: u8) -> bool {
        let hit = self.b.get(self.i) == Some(&c);
        if hit {
            self.i += 1;
        }
        hit
    }

    /// Exactly `len` digits forming a number in `min..=max`.
    fn number(&mut self, len: usize, min: u32, max: u32) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + len)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
        if !(min..=max).contains(&n) {
            return None;
        }
        self.i += len;
        Some(n)
    }

    /// Between `min` and `max` digits.
    fn digits(&mut self, min: usize, max: usize) -> bool {
        let n = self.b.get(self.i..).unwrap_or_default().iter().take_while(|b| b.is_ascii_digit()).count();
        self.i += n;
        (min..=max).contains(&n)
    }

    fn done(&self) -> bool {
        self.i == self.b.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, CatalogOverrides};
    use std::collections::BTreeSet;

    #[test]
    fn every_row_names_catalog_operations_and_pii_parameters_are_hidden() {
        let catalog = Catalog::build(&CatalogOverrides::default()).expect("catalog");
        for p in QUERY_PARAMS {
            if let Scope::Operations(ids) = p.scope {
                for id in ids {
                    assert!(catalog.get(id).is_some(), "{}: {id} is not a catalog operation", p.name);
                }
            }
            assert!(!p.name.is_empty() && p.name.bytes().all(|b| b.is_ascii_alphanumeric()), "{}", p.name);
        }
        // The catalog's PII query parameters are never printed, whatever their value.
        for op in &catalog.operations {
            for (param, _) in &op.query_pii {
                let row = lookup(param, Some(&op.id)).unwrap_or_else(|| panic!("{} {param} is not in the table", op.id));
                assert!(matches!(row.shape, Hidden), "{} {param}", op.id);
            }
        }
        // One row per (name, operation): the table is unambiguous.
        for op in catalog.operations.iter().map(|o| Some(o.id.as_str())).chain([None]) {
            let mut names = BTreeSet::new();
            for p in QUERY_PARAMS.iter().filter(|p| p.scope.covers(op)) {
                assert!(names.insert(p.name), "{} has two rows for {op:?}", p.name);
            }
        }
    }

    #[test]
    fn every_query_parameter_of_the_fixtures_is_known() {
        let catalog = Catalog::build(&CatalogOverrides::default()).expect("catalog");
        let index: serde_json::Value = serde_json::from_str(include_str!("../tests/fixtures/spapi/INDEX.json")).expect("fixture index");
        let mut checked = 0;
        for entry in index.as_array().expect("list") {
            let (Some(method), Some(path), Some(query)) = (entry["method"].as_str(), entry["path"].as_str(), entry["query"].as_str()) else { continue };
            let Some(op) = catalog.route(method, path) else { continue };
            for (name, _) in crate::uri::query_pairs(query).expect("fixture query") {
                assert!(lookup(&name, Some(&op.id)).is_some(), "{} ?{name}", op.id);
                checked += 1;
            }
        }
        assert!(checked > 40, "{checked}");
    }

    #[test]
    fn shapes_admit_their_values_and_no_pii() {
        let date = DateTime;
        for ok in [
            "2024",
            "2024-01",
            "2024-01-01",
            "2024-12-20T00:00:00Z",
            "2020-02-15T14:00:00-08:00",
            "2019-08-20T14:00:00.123+0530",
            "2024-01-01T10",
            "2024-01-01T10:30",
            "2024-06-30T23:59:60,5Z",
        ] {
            assert!(date.accepts(ok), "{ok}");
        }
        for bad in [
            "",
            "TEST_CASE_200",
            "2024-13-01",
            "2024-01-32",
            "2024-01-01T25:00",
            "2024-01-01 10:00",
            "20240101",
            "2024-01-01T10:00:00+",
            "2024-01-01T10:00:00+08:",
            "4155-551-234",
            "2015551234",
            "jane@example.com",
            "2024-01-01T00:00:00Zjane",
        ] {
            assert!(!date.accepts(bad), "{bad}");
        }
        let markets = MarketplaceIds;
        for ok in ["ATVPDKIKX0DER", "ATVPDKIKX0DER,A1F83G8C2ARO7P", "A2Q3Y263D00KWC", "AMEN7PMS3EDWL", "A21TJRUUN4KGV"] {
            assert!(markets.accepts(ok), "{ok}");
        }
        let too_long = "A1".repeat(9);
        for bad in ["", "jane@example.com", "4155551234", "+14155551234", "ATVPDKIKX0DER,", "atvpdkikx0der", "JANEDOEJANEDOE", "ANNASMITHJONES", "A123456789", "A123", &too_long] {
            assert!(!markets.accepts(bad), "{bad}");
        }
        let statuses = lookup("OrderStatuses", Some("orders-v0.getOrders")).expect("row").shape;
        assert!(statuses.accepts("Shipped") && statuses.accepts("Unshipped,PartiallyShipped"));
        assert!(!statuses.accepts("shipped") && !statuses.accepts("Shipped,") && !statuses.accepts("Jane Doe"));
        assert!(Integer(1, 100).accepts("100") && !Integer(1, 100).accepts("0") && !Integer(1, 100).accepts("101") && !Integer(1, 100).accepts("+5"));
        assert!(Integer(1, 100).accepts("1") && !Integer(1, 100).accepts("4155551234") && !Integer(1, 100).accepts("99999999999999999999"));
        assert!(Boolean.accepts("true") && !Boolean.accepts("TRUE"));
        assert!(CountryCode.accepts("US") && !CountryCode.accepts("us") && !CountryCode.accepts("USA"));
        assert!(!Hidden.accepts("anything"));
    }

    #[test]
    fn rows_apply_to_their_operations_only() {
        assert!(loggable("CreatedAfter", "2024-01-01", Some("orders-v0.getOrders")));
        assert!(loggable("CreatedAfter", "2024-01-01", None), "shared parameters apply outside the catalog too");
        assert!(loggable("marketplaceIds", "ATVPDKIKX0DER", None));
        assert!(loggable("OrderStatuses", "Shipped", Some("orders-v0.getOrders")));
        assert!(!loggable("OrderStatuses", "Shipped", Some("orders-v0.getOrder")));
        assert!(!loggable("OrderStatuses", "Shipped", None));
        assert!(loggable("status", "NEW", Some("vdf-orders-v1.getOrders")));
        assert!(!loggable("status", "NEW", Some("external-fulfillment-shipments-2024-09-11.getShipments")));
        assert!(loggable("status", "PACKAGE_CREATED", Some("external-fulfillment-shipments-2024-09-11.getShipments")));
        assert!(!loggable("BuyerEmail", "x", Some("orders-v0.getOrders")));
        assert!(!loggable("NextToken", "abc", Some("orders-v0.getOrders")));
        assert!(is_known_name("BuyerEmail") && is_known_name("includedData"));
        assert!(!is_known_name("buyeremail") && !is_known_name("BuyerEmail ") && !is_known_name("BuyerEmail[]") && !is_known_name("keywords"));
    }
}
