#!/usr/bin/env python3
"""Generates the benchmark's payloads into a folder the benchmark's upstream Envoy serves (one
route per INDEX.json entry: method, path, query → the file as a direct response):

- getOrders-100.json: a 100-order Orders v0 getOrders page (176 KB), built from Amazon's example
  order with every catalog PII field of getOrders present (25 per order) and varied values (some
  repeat within the page, as countries, states and cities do in real pages);
- getOrders-100-p0.json … p49.json: 50 more such pages with different buyers (served for
  ?page=0…49), for the benchmark's "a different page per request" case;
- getOrder-1.json: Amazon's example getOrder response (one order);
- catalog-item.json: a response of an operation without PII (a ~16 KB catalog item page);
- label-order.json: a getOrder response for the order a label is bought for (the ship-to below);
  read through spapi-guard it gives the application's tokens of that ship-to;
- directPurchaseShipment.request.json: the Shipping v2 directPurchaseShipment request body with
  that ship-to in clear (10 customer values: name, company, three address lines, city, state,
  postal code, phone, email) — what the no-filter variant sends and what the upstream must receive
  from spapi-guard when the application sends the tokens instead;
- directPurchaseShipment.json: its response (one package, a small ZPL label).

    python3 benches/gen_payloads.py OUT_DIR
"""
import base64
import json
import pathlib
import random
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "spapi"
FIRST = ["Jane", "John", "Maria", "Wei", "Aisha", "Lukas", "Sofia", "Kenji", "Olga", "Pedro", "Amara", "Noah"]
LAST = ["Doe", "Smith", "García", "Chen", "Okafor", "Müller", "Rossi", "Tanaka", "Ivanova", "Silva", "Nguyen"]
CITIES = [("Seattle", "WA", "King"), ("Canton", "MI", "Wayne"), ("Austin", "TX", "Travis"), ("Denver", "CO", "Denver"),
          ("Portland", "OR", "Multnomah"), ("Boston", "MA", "Suffolk")]
STREETS = ["Cross St", "Pine Ave", "Lake Rd", "2nd Ave", "Elm Ct", "Harbor Blvd", "Maple Dr"]


def order(rng, i, template, page=""):
    first, last = rng.choice(FIRST), rng.choice(LAST)
    city, state, county = rng.choice(CITIES)
    street, number = rng.choice(STREETS), str(rng.randint(1, 9999))
    o = dict(template)
    o["AmazonOrderId"] = f"902-{rng.randint(1000000, 9999999)}-{rng.randint(1000000, 9999999)}"
    o["OrderTotal"] = {"CurrencyCode": "USD", "Amount": f"{rng.randint(5, 500)}.{rng.randint(0, 99):02d}"}
    o["ShippingAddress"] = {
        "Name": f"{first} {last}", "CompanyName": f"{last} Household", "AddressLine1": f"{number} {street}",
        "AddressLine2": f"Apt {rng.randint(1, 400)}", "AddressLine3": "", "City": city, "County": county,
        "District": "Downtown", "StateOrRegion": state, "Municipality": city, "PostalCode": f"{rng.randint(10000, 99999)}",
        "CountryCode": "US", "Phone": f"+1 206-555-{rng.randint(1000, 9999)}", "AddressType": "Residential",
        "ExtendedFields": {"StreetName": street, "StreetNumber": number, "Complement": "Door code 1234",
                           "Neighborhood": "Belltown",
                           "GeoCoordinates": {"Latitude": round(rng.uniform(25, 48), 6), "Longitude": round(rng.uniform(-122, -71), 6)}},
    }
    o["BuyerInfo"] = {
        "BuyerEmail": f"{first.lower()}.{last.lower()}{page}{i}@marketplace.amazon.com", "BuyerName": f"{first} {last}",
        "BuyerCounty": county, "BuyerTaxInfo": {"CompanyLegalName": f"{last} LLC", "TaxingRegion": state,
                                               "TaxClassifications": [{"Name": "VATNumber", "Value": f"XI{rng.randint(10**8, 10**9 - 1)}"}]},
        "PurchaseOrderNumber": f"PO-{rng.randint(10**6, 10**7 - 1)}",
    }
    o["DefaultShipFromLocationAddress"] = {"Name": "Acme Seller Warehouse", "AddressLine1": "100 Commerce Way",
                                           "City": "Reno", "StateOrRegion": "NV", "PostalCode": "89501", "CountryCode": "US"}
    return o


# The ship-to of the label the request-side row buys (Shipping v2 Address member → getOrder's
# ShippingAddress/BuyerInfo member it comes from). Non-ASCII on purpose: JSON-escaping on the way out.
SHIP_TO = [
    ("name", ("ShippingAddress", "Name"), "Jürgen Müller-Okafor"),
    ("companyName", ("ShippingAddress", "CompanyName"), "Müller Household"),
    ("addressLine1", ("ShippingAddress", "AddressLine1"), "4821 Harbor Blvd"),
    ("addressLine2", ("ShippingAddress", "AddressLine2"), "Apt 317"),
    ("addressLine3", ("ShippingAddress", "AddressLine3"), "Door code 4471, ring twice"),
    ("city", ("ShippingAddress", "City"), "Seattle"),
    ("stateOrRegion", ("ShippingAddress", "StateOrRegion"), "WA"),
    ("postalCode", ("ShippingAddress", "PostalCode"), "98121-3312"),
    ("phoneNumber", ("ShippingAddress", "Phone"), "+1 206-555-0187"),
    ("email", ("BuyerInfo", "BuyerEmail"), "j.mueller.okafor@marketplace.amazon.com"),
]
LABEL_ORDER_ID = "902-0000000-0004821"


def label_order(sample):
    """getOrder of the label's order: Amazon's example with the ship-to above."""
    order = json.loads(json.dumps(sample))
    order["payload"]["AmazonOrderId"] = LABEL_ORDER_ID
    order["payload"]["ShippingAddress"] = {"CountryCode": "US", "AddressType": "Residential"}
    for _, (obj, member), value in SHIP_TO:
        order["payload"].setdefault(obj, {})[member] = value
    return order


def direct_purchase(ship_to):
    """A directPurchaseShipment request (Shipping v2 model) shipping one package to `ship_to`
    (Address members in the order of the model); the seller's ship-from is not customer data."""
    return {
        "shipTo": dict(ship_to, countryCode="US"),
        "shipFrom": {"name": "Acme Seller Warehouse", "addressLine1": "100 Commerce Way", "city": "Reno",
                     "stateOrRegion": "NV", "postalCode": "89501", "countryCode": "US", "phoneNumber": "+1 775-555-0100"},
        "shipDate": "2026-11-30T15:00:00Z",
        "packages": [{"dimensions": {"length": 30, "width": 20, "height": 12, "unit": "CENTIMETER"},
                      "weight": {"value": 1.25, "unit": "KILOGRAM"},
                      "insuredValue": {"value": 49.99, "unit": "USD"},
                      "packageClientReferenceId": f"{LABEL_ORDER_ID}-1",
                      "items": [{"itemValue": {"value": 49.99, "unit": "USD"}, "description": "Widget model 7",
                                 "itemIdentifier": "B0CHX3QBCH", "quantity": 1, "weight": {"value": 1.1, "unit": "KILOGRAM"}}]}],
        # EXTERNAL: the shipTo is used (for AMAZON, Amazon takes it from the order).
        "channelDetails": {"channelType": "EXTERNAL"},
        "labelSpecifications": {"format": "ZPL", "size": {"width": 4, "length": 6, "unit": "INCH"}, "dpi": 203,
                                "pageLayout": "DEFAULT", "needFileJoining": False, "requestedDocumentTypes": ["LABEL"]},
        "serviceSelection": {"serviceId": ["std-us-swa-mfn"]},
    }


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261129)
    sample = json.loads((FIXTURES / "orders-v0_getOrders_1.json").read_text())
    template = {k: v for k, v in sample["payload"]["Orders"][0].items() if k not in ("ShippingAddress", "BuyerInfo")}
    page = {"payload": {"Orders": [order(rng, i, template) for i in range(100)], "NextToken": "2YgYW55IGNhcm5hbCBwbGVhc3VyZQ==",
                        "CreatedBefore": "2026-11-01T00:00:00Z"}}
    (out / "getOrders-100.json").write_text(json.dumps(page, ensure_ascii=False))
    pages = []
    for p in range(50):
        orders = [order(rng, i, template, f"p{p}x") for i in range(100)]
        (out / f"getOrders-100-p{p}.json").write_text(json.dumps({"payload": {"Orders": orders}}, ensure_ascii=False))
        pages.append({"file": f"getOrders-100-p{p}.json", "method": "GET", "path": "/orders/v0/orders", "query": f"page={p}", "status": 200})
    (out / "getOrder-1.json").write_bytes((FIXTURES / "orders-v0_getOrder_1.json").read_bytes())
    items = {"numberOfResults": 40, "items": [{"asin": f"B0{rng.randint(10**7, 10**8 - 1)}", "summaries": [
        {"marketplaceId": "ATVPDKIKX0DER", "brandName": "Acme", "itemName": f"Widget model {i} with a fairly long descriptive title",
         "manufacturer": "Acme Corp", "modelNumber": f"W-{i}", "packageQuantity": 1, "size": "Large", "style": "Modern",
         "websiteDisplayGroup": "home_display_on_website"}]} for i in range(40)]}
    (out / "catalog-item.json").write_text(json.dumps(items, indent=1))
    index = [
        {"file": "getOrders-100.json", "method": "GET", "path": "/orders/v0/orders", "query": "", "status": 200},
        {"file": "getOrder-1.json", "method": "GET", "path": "/orders/v0/orders/902-3159896-1390916", "query": "", "status": 200},
        {"file": "catalog-item.json", "method": "GET", "path": "/catalog/2022-04-01/items", "query": "", "status": 200},
    ] + pages
    (out / "label-order.json").write_text(json.dumps(label_order(json.loads((FIXTURES / "orders-v0_getOrder_1.json").read_text())), ensure_ascii=False))
    ship_to = {member: value for member, _, value in SHIP_TO}
    (out / "directPurchaseShipment.request.json").write_text(json.dumps(direct_purchase(ship_to), ensure_ascii=False))
    label = base64.b64encode(("^XA^CF0,40^FO50,50^FDShipping label " + LABEL_ORDER_ID + "^FS^BY3^FO50,120^BCN,120,Y,N,N^FD1Z999AA10123456784^FS^XZ\n").encode() * 8).decode()
    response = {"payload": {"packageDocumentDetailList": [{"packageClientReferenceId": f"{LABEL_ORDER_ID}-1", "trackingId": "1Z999AA10123456784",
                                                           "packageDocuments": [{"type": "LABEL", "format": "ZPL", "contents": label}]}]}}
    (out / "directPurchaseShipment.json").write_text(json.dumps(response))
    index += [
        {"file": "label-order.json", "method": "GET", "path": f"/orders/v0/orders/{LABEL_ORDER_ID}", "query": "", "status": 200},
        {"file": "directPurchaseShipment.json", "method": "POST", "path": "/shipping/v2/shipments/directPurchase", "query": "", "status": 200},
    ]
    (out / "INDEX.json").write_text(json.dumps(index, indent=1))
    for e in index[:3]:
        print(f"{e['file']}: {(out / e['file']).stat().st_size} bytes")
    print(f"{len(pages)} more getOrders pages")


if __name__ == "__main__":
    main()
