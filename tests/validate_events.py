#!/usr/bin/env python3
"""Validates audit and security events against docs/audit-event.schema.json, or JSON lines of
another kind against their SCHEMA (tests/cli.rs: records of processing, docs/processing-record.schema.json).

    python3 tests/validate_events.py EVENTS.jsonl [SCHEMA]

Prints 'events: N passed, M failed' and exits non-zero on any failure."""
import json
import pathlib
import sys

import jsonschema

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
    events = pathlib.Path(sys.argv[1]).read_text().splitlines()
    schema = json.loads(pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else ROOT / "docs" / "audit-event.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    failed = 0
    for n, line in enumerate(events, 1):
        errors = list(validator.iter_errors(json.loads(line)))
        if errors:
            failed += 1
            best = jsonschema.exceptions.best_match(errors)
            print(f"line {n}: {best.message} at {list(best.absolute_path)}")
    print(f"events: {len(events) - failed} passed, {failed} failed")
    sys.exit(1 if failed or not events else 0)


if __name__ == "__main__":
    main()
