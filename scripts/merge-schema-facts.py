#!/usr/bin/env python3
"""Copies the schema facts the filter acts on into the built-in catalog.

    python3 scripts/merge-schema-facts.py [--check]

policies/spapi-schema-facts.json (generated from Amazon's models by scripts/spapi-schema-facts.py)
holds, for every response PII path of policies/spapi-catalog.json, what Amazon's model says of the
value: JSON type, enumeration, required, nullable, length limits. The filter embeds only the
catalog, so the facts it needs are written into it:

1. Each responsePii entry gets `schema` (what keeps protection schema-faithful, src/schema.rs):

    {"type": "string|number|integer|boolean|object|array|any", "required": bool,
     "nullable": bool?, "enum": [..]?, "maxLength": n?}

   `enum` holds the model's enumeration, or the values its description lists when the model has
   no formal enumeration (Orders 2026 addressType).

2. `customerObjects` (top level): the definitions of Amazon's models whose members are *all*
   customer data, which the filter protects by allow list (docs/POLICY.md, "Customer objects").
   They are derived from the facts' `customerObjects` (every definition that directly holds a
   catalogued PII member) by one rule, applied until nothing changes (a greatest fixed point):

       a definition is a customer object when each of its members is
         - customer PII: a member the catalog classifies (in any operation), or one listed in
           REVIEWED_PII below;
         - clear by schema: an enumeration (enum or documented "Possible values"), a country code
           or address type (src/schema.rs NON_PII_MEMBERS), a boolean — or listed in
           REVIEWED_CLEAR below (labels, identifiers and prices that are not the customer's);
         - another customer object (a nested object, or an array of them).

   Any other member (an order id, a tracking number, a nested business object) makes the
   definition a business object that merely carries PII: its catalogued fields stay protected
   by path, not by allow list. Each object gets a class for members Amazon adds later: the most
   frequent class of its PII members, a nested customer object counting as one member of its
   own class (`other` on a tie). The filter first tries the new member's name and value
   (`email`, `phone`…: src/drift.rs) and uses this class when they say nothing.

3. Per operation, `customerObjects`: where those objects sit in its responses, as
   `{"jsonpath", "object"}` — every parent of a catalogued PII path whose definition is a customer
   object (the catalog decides which instances are the customer's: a seller's ship-from address
   has the same definition as the buyer's), and below each, its nested customer objects.

4. Per operation, `alsoUnwrapped: "payload"` when Amazon's own examples of the response leave out
   the `payload` wrapper the schema requires (facts `operationModels.*.examplesWithoutWrapper`).

--check exits 1 if the catalog is not up to date.
"""
import collections
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CATALOG = ROOT / "policies" / "spapi-catalog.json"
FACTS = ROOT / "policies" / "spapi-schema-facts.json"

# src/schema.rs NON_PII_MEMBERS: never personal data on their own, in any customer object.
NON_PII_MEMBERS = {"CountryCode", "countryCode", "AddressType", "addressType"}

# Members the catalog does not classify that are the customer's: (model file, definition, member)
# → (class, why). Each one is Amazon's own description.
REVIEWED_PII = {
    ("ordersV0.json", "BuyerTaxInfo", "TaxingRegion"): ("address", "\"The country or region imposing the tax\": the buyer's region, like StateOrRegion"),
    ("shipmentInvoicingV0.json", "BuyerTaxInfo", "TaxingRegion"): ("address", "\"The country or region imposing the tax\": the buyer's region, like StateOrRegion"),
}

# Members of customer-data definitions that are not the customer's data and stay clear (their
# object is still protected by allow list): (model file, definition, member) → why.
REVIEWED_CLEAR = {
    ("ordersV0.json", "TaxClassification", "Name"): "\"The type of tax\": a label, not the buyer's value",
    ("shipmentInvoicingV0.json", "TaxClassification", "Name"): "\"The type of tax\": a label, not the buyer's value",
    ("ordersV0.json", "DeliveryPreferences", "PreferredDeliveryTime"): "business hours and days (structured times), clear as the catalog leaves them",
    ("ordersV0.json", "DeliveryPreferences", "OtherAttributes"): "an enumerated list of delivery attributes",
    ("orders_2026-01-01.json", "DeliveryPreference", "deliveryTime"): "business hours and days (structured times), clear as the catalog leaves them",
    ("orders_2026-01-01.json", "DeliveryPreference", "deliveryCapabilities"): "an enumerated list of delivery capabilities",
    ("ordersV0.json", "OrderAddress", "AmazonOrderId"): "the order's identifier, which applications key on",
    ("ordersV0.json", "OrderBuyerInfo", "AmazonOrderId"): "the order's identifier, which applications key on",
    ("ordersV0.json", "OrderItemBuyerInfo", "OrderItemId"): "the order item's identifier",
    ("ordersV0.json", "OrderItemBuyerInfo", "GiftWrapLevel"): "the gift wrap option, a seller's catalog value",
    ("ordersV0.json", "OrderItemBuyerInfo", "GiftWrapPrice"): "a price (Money)",
    ("ordersV0.json", "OrderItemBuyerInfo", "GiftWrapTax"): "a price (Money)",
    ("ordersV0.json", "ItemBuyerInfo", "GiftWrapLevel"): "the gift wrap option, a seller's catalog value",
    ("ordersV0.json", "ItemBuyerInfo", "GiftWrapPrice"): "a price (Money)",
    ("ordersV0.json", "ItemBuyerInfo", "GiftWrapTax"): "a price (Money)",
    ("orders_2026-01-01.json", "GiftOption", "giftWrapLevel"): "the gift wrap option, a seller's catalog value",
    ("vendorDirectFulfillmentOrdersV1.json", "GiftDetails", "giftWrapId"): "the gift wrap option's identifier",
    ("vendorDirectFulfillmentOrders_2021-12-28.json", "GiftDetails", "giftWrapId"): "the gift wrap option's identifier",
    ("shipping.json", "Label", "labelSpecification"): "the label format and stock size the seller asked for (enumerations)",
    ("shipping.json", "RetrieveShippingLabelResult", "labelSpecification"): "the label format and stock size the seller asked for (enumerations)",
}

SCALARS = ("string", "number", "integer")


def compact(fact):
    out = {"type": fact.get("type", "any"), "required": bool(fact.get("required", False))}
    if fact.get("nullable") is not None:
        out["nullable"] = bool(fact["nullable"])
    values = fact.get("enum") or fact.get("documentedValues")
    if values:
        out["enum"] = list(values)
    if fact.get("maxLength") is not None:
        out["maxLength"] = int(fact["maxLength"])
    return out


def slug_of(entry):
    """The API slug of a definition: the prefix of the operation ids that use it (orders-v0)."""
    slugs = {op.split(".")[0] for op in entry["usedBy"]}
    if len(slugs) != 1:
        raise SystemExit(f"definition used by several APIs: {entry['usedBy']}")
    return slugs.pop()


def customer_objects(facts):
    """The customer objects: id → {definition, class, members}, by the rule in the docstring."""
    defs = facts["customerObjects"]
    ids = {key: f"{slug_of(entry)}.{key.split('/')[-1]}" for key, entry in defs.items()}
    if len(set(ids.values())) != len(ids):
        raise SystemExit("two customer-object definitions share an id")

    def ref_key(key, name):
        return f"{key.split('#')[0]}#/definitions/{name}"

    def member_kind(key, member, fact):
        """('pii', class, why) | ('clear', why) | ('object', definition key) | ('business', why)."""
        model, definition = key.split("#")[0].split("/")[-1], key.split("/")[-1]
        reviewed = (model, definition, member)
        if member in NON_PII_MEMBERS:
            return ("clear", "a country code or address type")
        if fact.get("enum") or fact.get("documentedValues"):
            return ("clear", "an enumeration")
        if "pii" in fact:
            return ("pii", fact["pii"], None)
        if reviewed in REVIEWED_PII:
            cls, why = REVIEWED_PII[reviewed]
            return ("pii", cls, why)
        if reviewed in REVIEWED_CLEAR:
            return ("clear", REVIEWED_CLEAR[reviewed])
        if fact.get("type") == "boolean":
            return ("clear", "a boolean")
        ref = fact.get("ref") if fact.get("type") == "object" else fact.get("items") if fact.get("type") == "array" else None
        if ref and ref not in SCALARS and ref != "boolean":
            return ("object", ref_key(key, ref))
        return ("business", f"{member}: {fact.get('type')}")

    candidates = set(defs)
    while True:
        dropped = set()
        for key in candidates:
            for member, fact in defs[key]["members"].items():
                kind = member_kind(key, member, fact)
                if kind[0] == "business" or (kind[0] == "object" and kind[1] not in candidates):
                    dropped.add(key)
                    break
        if not dropped:
            break
        candidates -= dropped

    def class_of(key, seen=()):
        """The most frequent class of the PII members, a nested object counting as one member of
        its own class; `other` on a tie."""
        classes = collections.Counter()
        for member, fact in defs[key]["members"].items():
            kind = member_kind(key, member, fact)
            if kind[0] == "pii":
                classes[kind[1]] += 1
            elif kind[0] == "object" and kind[1] not in seen:
                classes[class_of(kind[1], seen + (key,))] += 1
        top = classes.most_common()
        return top[0][0] if top and (len(top) == 1 or top[0][1] > top[1][1]) else "other"

    out = {}
    for key in sorted(candidates, key=lambda k: ids[k]):
        members = {}
        for member, fact in defs[key]["members"].items():
            kind = member_kind(key, member, fact)
            if kind[0] == "pii":
                m = {"class": kind[1], "schema": compact(fact)}
                if kind[2]:
                    m["reviewed"] = kind[2]
                members[member] = m
            elif kind[0] == "clear":
                members[member] = {"clear": kind[1]}
            else:
                members[member] = {"object": ids[kind[1]], "array": fact.get("type") == "array"}
        out[ids[key]] = {"definition": key, "class": class_of(key), "members": members}
    return out, ids


def parent_of(path):
    """The object holding the member a PII path ends in: `$.a.b[*].c[*]` → `$.a.b[*]`."""
    while path.endswith("[*]") or path.endswith(".*"):
        path = path[:-3] if path.endswith("[*]") else path[:-2]
    m = re.match(r"^(.*?)(?:\.[^.\[\]]+|\['[^']+'\])$", path)
    return m.group(1) if m else None


def merged():
    catalog = json.loads(CATALOG.read_text())
    facts = json.loads(FACTS.read_text())
    objects, ids = customer_objects(facts)
    op_facts_all, models = facts["operations"], facts["operationModels"]
    for op in catalog["operations"]:
        op_facts = op_facts_all.get(op["id"], {})
        for field in op["responsePii"]:
            fact = op_facts.get(field["jsonpath"])
            if fact is None:
                field.pop("schema", None)
            else:
                field["schema"] = compact(fact)
        # Where customer objects sit: parents of catalogued PII, then their nested objects.
        model = models.get(op["id"], {}).get("model")
        found = {}
        for path, fact in op_facts.items():
            parent = parent_of(path)
            key = f"{model}#/definitions/{fact.get('parent')}"
            if parent and fact.get("inSchema") is not False and ids.get(key) in objects:
                found[parent] = ids[key]
        todo = list(found.items())
        while todo:
            path, obj = todo.pop()
            for member, m in objects[obj]["members"].items():
                if "object" in m:
                    child = f"{path}.{member}" + ("[*]" if m["array"] else "")
                    if child not in found:
                        found[child] = m["object"]
                        todo.append((child, m["object"]))
        if found:
            op["customerObjects"] = [{"jsonpath": p, "object": o} for p, o in sorted(found.items())]
        else:
            op.pop("customerObjects", None)
        wrapper = models.get(op["id"], {}).get("examplesWithoutWrapper")
        if wrapper:
            op["alsoUnwrapped"] = wrapper
        else:
            op.pop("alsoUnwrapped", None)
    used = {o["object"] for op in catalog["operations"] for o in op.get("customerObjects", [])}
    catalog["customerObjects"] = {k: v for k, v in objects.items() if k in used}
    return catalog


def main():
    catalog = merged()
    text = json.dumps(catalog, indent=1, ensure_ascii=False) + "\n"
    if "--check" in sys.argv:
        if CATALOG.read_text() != text:
            print("policies/spapi-catalog.json lacks the schema facts: run scripts/merge-schema-facts.py")
            sys.exit(1)
        print("policies/spapi-catalog.json carries the schema facts")
        return
    CATALOG.write_text(text)
    objects = catalog["customerObjects"]
    instances = sum(len(op.get("customerObjects", [])) for op in catalog["operations"])
    print(f"{len(objects)} customer objects at {instances} places in responses: {', '.join(sorted(objects))}")


if __name__ == "__main__":
    main()
