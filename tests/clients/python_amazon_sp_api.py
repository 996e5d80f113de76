"""The community python-amazon-sp-api 2.1.35 (PyPI) through spapi-guard.

Setup, as docs/CLIENTS.md shows it:
- endpoint: no setting (the endpoint comes from the Marketplaces enum): set the client's
  `endpoint` attribute after constructing it.
- LWA: `auth_token_client_class=` a subclass of sp_api.auth.AccessTokenClient whose `scheme` and
  `host` name the stand-in; in production leave it out (real LWA, not through spapi-guard).
- mTLS: `verify=` an ssl.SSLContext that trusts the dev CA and holds the client certificate
  (the client hands `verify` to httpx).
"""
import os
import ssl
from urllib.parse import urlsplit

from sp_api.api import Orders
from sp_api.auth import AccessTokenClient
from sp_api.base import Marketplaces
from sp_api.base.exceptions import SellingApiException

from common import error_code, run

CREDENTIALS = {"lwa_app_id": "amzn1.application-oa2-client.test", "lwa_client_secret": "test-secret"}


def make_client(config, caller, via):
    lwa = urlsplit(config["lwa"])

    class StandInLwa(AccessTokenClient):
        scheme = f"{lwa.scheme}://"
        host = lwa.netloc
        path = lwa.path

    verify = True
    if via == "guard":
        verify = ssl.create_default_context(cafile=os.path.join(config["tls"], "ca.crt"))
        verify.load_cert_chain(os.path.join(config["tls"], f"{caller}.crt"), os.path.join(config["tls"], f"{caller}.key"))
    endpoint = config["guard"] if via == "guard" else config["direct"]
    clients = {}
    for version in ("v0", "2026-01-01"):
        client = Orders(Marketplaces.US, version=version, refresh_token=f"Atzr|test-{caller}", credentials=CREDENTIALS,
                        verify=verify, auth_token_client_class=StandInLwa)
        client.endpoint = endpoint
        clients[version] = client
    return clients


def call(clients, case):
    q = dict(case["query"])
    op = case["op"]
    v0, v2026 = clients["v0"], clients["2026-01-01"]
    # Test scaffolding only: which fixture the mock plays (the client's requests carry the
    # headers of its `headers` property; the transport is its httpx.Client).
    for c in (v0, v2026):
        c._transport._client.headers["x-mock-fixture"] = case["fixture"] or ""
    if op == "v0.getOrders":
        q.setdefault("CreatedAfter", "2020-01-01T00:00:00Z")
        r = v0.get_orders(**q)
    elif op == "v0.getOrder":
        r = v0.get_order(case["orderId"])
    elif op == "v0.getOrderAddress":
        r = v0.get_order_address(case["orderId"])
    elif op == "v0.getOrderBuyerInfo":
        r = v0.get_order_buyer_info(case["orderId"])
    elif op == "v0.getOrderItems":
        r = v0.get_order_items(case["orderId"])
    elif op == "v0.getOrderItemsBuyerInfo":
        r = v0.get_order_items_buyer_info(case["orderId"])
    elif op == "v0.getOrderRegulatedInfo":
        r = v0.get_order_regulated_info(case["orderId"])
    elif op == "2026.searchOrders":
        q.setdefault("createdAfter", "2025-01-01T00:00:00Z")
        r = v2026.search_orders(**q)
    elif op == "2026.getOrder":
        r = v2026.get_order(case["orderId"], **q)
    else:
        raise ValueError(f"unknown op {op}")
    # ApiResponse: v0 bodies are {"payload": …}; 2026 bodies are the payload itself (+ pagination).
    if op.startswith("v0."):
        return {"payload": r.payload}
    body = dict(r.payload)
    if r.pagination is not None:
        body["pagination"] = r.pagination
    return body


def describe_error(exc):
    if isinstance(exc, SellingApiException):
        # Statuses outside its table (e.g. 502) raise the generic class, whose `code` is 999.
        return (exc.code if exc.code != 999 else None), error_code(getattr(exc, "error", None))
    return None


if __name__ == "__main__":
    run(make_client, call, describe_error)
