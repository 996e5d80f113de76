#!/usr/bin/env python3
"""Derive policies/spapi-schema-facts.json from Amazon's published SP-API models.

    python3 scripts/spapi-schema-facts.py MODELS_CHECKOUT [--commit SHA] [--out FILE]

MODELS_CHECKOUT is a checkout of github.com/amzn/selling-partner-api-models (its models/ folder is
read; nothing of it is copied). For every `responsePii` JSONPath of policies/spapi-catalog.json
the script finds the operation in the models (method + path template + operationId), takes its
success response schema and walks the path through it ($ref, allOf, items, additionalProperties),
and writes what the schema says of the value there:

    operations.<operation id>.<jsonpath> = {
      "type":      JSON type (string, number, integer, boolean, object, array; "any" if unspecified),
      "enum":      allowed values, if the schema lists them,
      "documentedValues": the values the member's description lists ("**Possible values**: `A`,
                   `B`", as the 2026-01-01 models do instead of an enum), if it has no enum,
      "format":    e.g. date-time, double, if given,
      "required":  the member is in its parent object's `required` list,
      "nullable":  x-nullable, if given,
      "minLength" / "maxLength" / "pattern": string constraints, if given,
      "items" / "values": the element type of an array / a map,
      "element":   "array" or "map" when the path ends at the elements of one ([*], .*),
      "parent":    the definition that holds the member, "inSchema": false if it holds no such member
                   (PII the catalog takes from Amazon's examples only)
    }

`operationModels` says which model, response definition and declared license each operation
comes from, and `examplesWithoutWrapper: "payload"` where one of Amazon's own example bodies for
the success response leaves out the `payload` wrapper the schema puts around it (Shipping v1/v2,
MCF 2020, DF v1: real responses may come in either shape). `customerObjects` lists every definition that directly holds a catalog PII member,
with all of its members and the same facts (the `pii` class where the catalog lists the member),
for allow lists of the non-PII members of customer objects. `summary` lists the PII paths that are
not strings, that are enum-typed (or list documented values), that are required, that have a
maxLength or a pattern (a token may not fit), and that the schemas do not have.

Data: "Selling Partner API models, Copyright Amazon.com, Inc. or its affiliates, Apache License 2.0"
(see policies/NOTICE.md).
"""
import argparse
import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
METHODS = ("get", "put", "post", "delete", "patch")
# "**Possible values**: `A`, `B`", "**Possible Values**: `true`, `false`.", "Possible values: `A`, `B`"
# and the list form "**Possible values**:\n- `A` (what A means)\n- `B` (…)".
POSSIBLE_VALUES = re.compile(r"(?i)(?:\*\*)?Possible values(?:\*\*)?:\s*((?:`[^`]+`[,.\s]*)+|(?:\s*[-*]\s*`[^`]+`[^\n]*)+)")
FACT_KEYS = ("format", "minLength", "maxLength", "pattern", "minimum", "maximum")


class Model:
    def __init__(self, path, rel):
        self.rel = rel
        self.doc = json.loads(path.read_text(encoding="utf-8"))
        self.defs = self.doc.get("definitions", {})
        self.license = (self.doc.get("info", {}).get("license") or {}).get("name")

    def deref(self, schema):
        """Follows $ref and merges allOf; returns (schema, definition name or None)."""
        name = None
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            if not ref.startswith("#/definitions/"):
                raise SystemExit(f"{self.rel}: unsupported $ref {ref}")
            name = ref.split("/")[-1]
            # Sibling keys of a $ref (description, x-nullable) stay; the definition fills the rest.
            extra = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**self.defs[name], **{k: v for k, v in extra.items() if k in ("x-nullable",)}}
            seen += 1
            if seen > 50:
                raise SystemExit(f"{self.rel}: $ref loop at {ref}")
        if isinstance(schema, dict) and "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            props, required = dict(merged.get("properties", {})), list(merged.get("required", []))
            for part in schema["allOf"]:
                part, part_name = self.deref(part)
                name = name or part_name
                props.update(part.get("properties", {}))
                required += part.get("required", [])
                for k in ("type", "additionalProperties", "enum"):
                    if k in part and k not in merged:
                        merged[k] = part[k]
            merged["properties"], merged["required"] = props, required
            schema = merged
        return schema, name


def type_of(schema):
    if "type" in schema:
        return schema["type"]
    if "properties" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "any"


def facts_of(model, schema):
    """The facts of one value's schema (no `required`: that belongs to the parent)."""
    s, name = model.deref(schema)
    out = {"type": type_of(s)}
    if "enum" in s:
        out["enum"] = s["enum"]
    else:
        # The 2026 models list the values of many string members in the text, not as an enum.
        m = POSSIBLE_VALUES.search(schema.get("description") or s.get("description") or "")
        if m:
            out["documentedValues"] = re.findall(r"`([^`]+)`", m.group(1))
    for k in FACT_KEYS:
        if k in s:
            out[k] = s[k]
    if s.get("x-nullable") or schema.get("x-nullable"):
        out["nullable"] = True
    if name:
        out["ref"] = name
    if out["type"] == "array" and "items" in s:
        items = facts_of(model, s["items"])
        out["items"] = items.get("ref") or items["type"]
    if out["type"] == "object" and isinstance(s.get("additionalProperties"), dict):
        values = facts_of(model, s["additionalProperties"])
        out["values"] = values.get("ref") or values["type"]
    return out


def steps_of(path):
    """`$.a.b[*].c`, `$['a b']`, `.*` → [("member", "a"), ("member", "b"), ("each",), …]."""
    steps, rest = [], path[1:]
    while rest:
        if rest.startswith("[*]") or rest.startswith(".*"):
            steps.append(("each",))
            rest = rest[3:] if rest.startswith("[*]") else rest[2:]
        elif rest.startswith("['"):
            end = rest.index("']")
            steps.append(("member", rest[2:end]))
            rest = rest[end + 2:]
        elif rest.startswith("."):
            m = re.match(r"\.([^.\[]+)", rest)
            steps.append(("member", m.group(1)))
            rest = rest[m.end():]
        else:
            raise SystemExit(f"unsupported JSONPath {path}")
    return steps


def walk(model, schema, steps):
    """Facts of the value at `steps` below `schema`, and the (definition, member) that holds it."""
    holder = None
    required = False
    element = None
    current = schema
    for i, step in enumerate(steps):
        s, name = model.deref(current)
        if step[0] == "member":
            props = s.get("properties", {})
            if step[1] in props:
                required = step[1] in s.get("required", [])
                holder = (name, step[1])
                current, element = props[step[1]], None
            elif isinstance(s.get("additionalProperties"), dict):
                required, holder, element = False, None, None
                current = s["additionalProperties"]
            else:
                return {"inSchema": False, "parent": name, "missing": step[1]}, None
        else:
            if type_of(s) == "array" and "items" in s:
                current, element = s["items"], "array"
            elif isinstance(s.get("additionalProperties"), dict):
                current, element = s["additionalProperties"], "map"
            elif s.get("additionalProperties") is True or type_of(s) in ("object", "any"):
                return {"type": "any", "element": "map", "required": False, "parent": name}, None
            else:
                return {"inSchema": False, "parent": name, "missing": "*"}, None
            required = False
    out = facts_of(model, current)
    out["required"] = required
    if element:
        out["element"] = element
    if holder:
        out["parent"] = holder[0]
    return out, holder


def norm_path(template):
    return re.sub(r"\{[^}]+\}", "{}", template.rstrip("/"))


def load_models(checkout):
    models, index = [], {}
    for path in sorted((checkout / "models").glob("*/*.json")):
        model = Model(path, str(path.relative_to(checkout)))
        models.append(model)
        for p, item in model.doc.get("paths", {}).items():
            for method in METHODS:
                op = item.get(method)
                if op:
                    index.setdefault((method.upper(), norm_path(p), op.get("operationId")), []).append((model, op))
    return models, index


def success_schema(op):
    for code in ("200", "201", "202"):
        r = op.get("responses", {}).get(code)
        if r and "schema" in r:
            return r["schema"], code
    return None, None


def example_bodies(response):
    """Every example body Amazon gives for one response: `examples` (by media type, or named), and
    the sandbox responses (`x-amzn-api-sandbox` static and dynamic)."""
    bodies = []
    examples = response.get("examples")
    if isinstance(examples, dict):
        for value in examples.values():
            if isinstance(value, dict) and "value" in value and len(value) <= 2:
                value = value["value"]
            bodies.append(value)
    sandbox = response.get("x-amzn-api-sandbox") or {}
    for kind in ("static", "dynamic"):
        for case in sandbox.get(kind, []):
            if isinstance(case, dict) and "response" in case:
                bodies.append(case["response"])
    return [b for b in bodies if isinstance(b, dict)]


def unwrapped_examples(model, schema, response):
    """The wrapper member (`payload`) the response schema puts around the body, if one of Amazon's
    own examples for the response leaves it out and holds the wrapped object's members at the top
    level instead (Shipping v1: `{"trackingId":…,"eventHistory":…}`): real responses may come in
    either shape, so the filter matches both."""
    root, _ = model.deref(schema)
    for wrapper, member in root.get("properties", {}).items():
        if wrapper != "payload":
            continue
        inner, _ = model.deref(member)
        names = set(inner.get("properties", {}))
        if type_of(inner) != "object" or not names:
            continue
        for body in example_bodies(response):
            keys = set(body)
            if wrapper not in keys and keys and keys <= names | {"errors"} and keys & names:
                return wrapper
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkout", type=pathlib.Path, help="a checkout of amzn/selling-partner-api-models")
    ap.add_argument("--commit", help="the models' commit (default: git rev-parse HEAD in the checkout)")
    ap.add_argument("--catalog", type=pathlib.Path, default=ROOT / "policies/spapi-catalog.json")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "policies/spapi-schema-facts.json")
    args = ap.parse_args()
    commit = args.commit
    if not commit:
        try:
            commit = subprocess.run(["git", "-C", str(args.checkout), "rev-parse", "HEAD"], check=True,
                                    capture_output=True, text=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            raise SystemExit("not a git checkout: pass --commit SHA")
    catalog = json.loads(args.catalog.read_text(encoding="utf-8"))
    _, index = load_models(args.checkout)

    operations, op_models, holders = {}, {}, {}
    summary = {"nonString": [], "enum": [], "documentedValues": [], "required": [], "maxLength": [], "pattern": [], "notInSchema": []}
    problems = []
    for op in catalog["operations"]:
        found = index.get((op["method"], norm_path(op["pathTemplate"]), op["operationId"]), [])
        if len(found) != 1:
            problems.append(f"{op['id']}: {len(found)} model operations match")
            continue
        model, mop = found[0]
        schema, code = success_schema(mop)
        if schema is None:
            if op["responsePii"]:
                problems.append(f"{op['id']}: no success response schema")
            continue
        _, response_def = model.deref(schema)
        op_models[op["id"]] = {"model": model.rel, "modelLicense": model.license, "response": code, "responseSchema": response_def}
        wrapper = unwrapped_examples(model, schema, mop["responses"][code])
        if wrapper:
            op_models[op["id"]]["examplesWithoutWrapper"] = wrapper
        paths = {}
        for rule in op["responsePii"]:
            facts, holder = walk(model, schema, steps_of(rule["jsonpath"]))
            facts["class"] = rule["class"]
            paths[rule["jsonpath"]] = facts
            entry = [op["id"], rule["jsonpath"]]
            if facts.get("inSchema") is False:
                summary["notInSchema"].append(entry)
                continue
            if facts["type"] != "string":
                summary["nonString"].append(entry + [facts["type"] + (f"<{facts['items']}>" if "items" in facts else "")])
            if "enum" in facts:
                summary["enum"].append(entry + [facts["enum"]])
            if "documentedValues" in facts:
                summary["documentedValues"].append(entry + [facts["documentedValues"]])
            if facts["required"]:
                summary["required"].append(entry + [facts.get("parent")])
            # A token (spgt1.…, 70 characters and more) does not fit a short maxLength or a pattern.
            if "maxLength" in facts:
                summary["maxLength"].append(entry + [facts["maxLength"]])
            if "pattern" in facts:
                summary["pattern"].append(entry + [facts["pattern"]])
            if holder and holder[0]:
                h = holders.setdefault((model.rel, holder[0]), {"model": model.rel, "definition": holder[0], "api": op["api"],
                                                                 "version": op["version"], "usedBy": set(), "pii": {}})
                h["usedBy"].add(op["id"])
                h["pii"][holder[1]] = rule["class"]
        operations[op["id"]] = paths

    models = {m.rel: m for m in load_models(args.checkout)[0]}
    customer_objects = {}
    for (rel, name), h in sorted(holders.items()):
        model = models[rel]
        s, _ = model.deref({"$ref": f"#/definitions/{name}"})
        members = {}
        for member, schema in s.get("properties", {}).items():
            f = facts_of(model, schema)
            f["required"] = member in s.get("required", [])
            if member in h["pii"]:
                f["pii"] = h["pii"][member]
            members[member] = f
        customer_objects[f"{rel}#/definitions/{name}"] = {
            "api": h["api"], "version": h["version"], "usedBy": sorted(h["usedBy"]), "members": members,
        }

    if problems:
        print("\n".join(problems), file=sys.stderr)
        raise SystemExit(1)
    out = {
        "about": "Schema facts of every customer-PII JSONPath of spapi-catalog.json, from Amazon's SP-API models; "
                 "generated by scripts/spapi-schema-facts.py (see its docstring for the fields and policies/NOTICE.md).",
        "attribution": "Selling Partner API models, Copyright Amazon.com, Inc. or its affiliates, Apache License 2.0",
        "source": {"repository": "amzn/selling-partner-api-models", "commit": commit},
        "summary": summary,
        "operations": operations,
        "operationModels": op_models,
        "customerObjects": customer_objects,
    }
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    n = sum(len(p) for p in operations.values())
    print(f"{args.out}: {len(operations)} operations, {n} PII paths ({len(summary['nonString'])} not strings, "
          f"{len(summary['enum'])} enum-typed, {len(summary['documentedValues'])} with documented values, {len(summary['required'])} required, {len(summary['maxLength'])} with a maxLength, {len(summary['pattern'])} with a pattern, {len(summary['notInSchema'])} not in "
          f"the schema), {len(customer_objects)} customer objects")


if __name__ == "__main__":
    main()
