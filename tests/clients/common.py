"""Shared by the Python client scripts: reads the cases tests/clients.rs wrote, runs each with a
time limit, writes one result per case. Usage: python3 <client script> CASES_JSON RESULTS_JSON

A case: {id, via: "guard"|"direct", caller, op, orderId, query, fixture}; `op` is one of
v0.getOrders v0.getOrder v0.getOrderAddress v0.getOrderBuyerInfo v0.getOrderItems
v0.getOrderItemsBuyerInfo v0.getOrderRegulatedInfo 2026.searchOrders 2026.getOrder.
A result: {id, ok, data | status, error_class, error_code, error, ms}.
"""
import json
import signal
import sys
import time
import traceback


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout("no answer within the case's time limit (the client kept waiting or retrying)")


def plain(value):
    """JSON-able copy of a client's value; non-finite floats become the string "NaN"."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return "NaN"
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def error_code(body):
    """The SP-API `errors[0].code` of an error body (bytes, str or parsed)."""
    try:
        if isinstance(body, (bytes, str)):
            body = json.loads(body)
        if isinstance(body, dict):
            body = body.get("errors")
        return body[0].get("code")
    except Exception:
        return None


def split(value):
    return [v for v in value.split(",") if v] if isinstance(value, str) else value


def run(make_client, call, describe_error):
    """make_client(config, caller, via) → client; call(client, case) → data (JSON-able);
    describe_error(exc) → (status, error_code) for the client's error type, or None."""
    cases_path, results_path = sys.argv[1], sys.argv[2]
    with open(cases_path, encoding="utf-8") as f:
        config = json.load(f)
    signal.signal(signal.SIGALRM, _alarm)
    clients = {}
    results = []
    for case in config["cases"]:
        key = (case["caller"], case["via"])
        start = time.monotonic()
        result = {"id": case["id"]}
        signal.alarm(int(config["timeout_s"]))
        try:
            if key not in clients:
                clients[key] = make_client(config, case["caller"], case["via"])
            data = call(clients[key], case)
            result.update(ok=True, data=plain(data))
        except BaseException as exc:  # noqa: BLE001 — every failure is a result
            if isinstance(exc, KeyboardInterrupt):
                raise
            described = describe_error(exc)
            result.update(ok=False, error_class=type(exc).__name__, error=(str(exc) or repr(exc))[:2000])
            if described is not None:
                result.update(status=described[0], error_code=described[1])
            elif not isinstance(exc, CaseTimeout):
                result["traceback"] = traceback.format_exc()[-3000:]
        finally:
            signal.alarm(0)
        result["ms"] = int((time.monotonic() - start) * 1000)
        results.append(result)
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
