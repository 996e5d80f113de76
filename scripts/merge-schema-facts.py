#!/usr/bin/env python3
"""Copies the schema facts the filter acts on into the built-in catalog.

    python3 scripts/merge-schema-facts.py [--check]

policies/spapi-schema-facts.json (generated from Amazon's models by scripts/spapi-schema-facts.py)
holds, for every response PII path of policies/spapi-catalog.json, what Amazon's model says of the
value: JSON type, enumeration, required, nullable, length limits. The filter embeds only the
catalog, so the facts it needs to keep protection schema-faithful (src/schema.rs) are written into
each responsePii entry as `schema`:

    {"type": "string|number|integer|boolean|object|array|any", "required": bool,
     "nullable": bool?, "enum": [..]?, "maxLength": n?}

`enum` holds the model's enumeration, or the values its description lists when the model has no
formal enumeration (Orders 2026 addressType). --check exits 1 if the catalog is not up to date.
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CATALOG = ROOT / "policies" / "spapi-catalog.json"
FACTS = ROOT / "policies" / "spapi-schema-facts.json"


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


def merged():
    catalog = json.loads(CATALOG.read_text())
    facts = json.loads(FACTS.read_text())["operations"]
    for op in catalog["operations"]:
        op_facts = facts.get(op["id"], {})
        for field in op["responsePii"]:
            fact = op_facts.get(field["jsonpath"])
            if fact is None:
                field.pop("schema", None)
            else:
                field["schema"] = compact(fact)
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


if __name__ == "__main__":
    main()
