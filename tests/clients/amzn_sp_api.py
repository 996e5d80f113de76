"""Amazon's official Python SDK (PyPI amzn-sp-api 1.13.0) through spapi-guard.

Setup, as docs/CLIENTS.md shows it:
- endpoint: SPAPIClient(config, endpoint="https://<spapi-guard>")
- LWA: SPAPIClient(config, oauth_endpoint="<LWA URL>") — here the stand-in; in production leave it
  out (the token exchange goes straight to Amazon's LWA, not through spapi-guard)
- mTLS: a Configuration with ssl_ca_cert / cert_file / key_file made the process-wide default
  (Configuration.set_default) BEFORE SPAPIClient is built: SPAPIClient copies the default into its
  own Configuration, and has no parameter for certificates.
"""
import json
import os

from spapi import ApiClient, Configuration
from spapi.api.orders_v0.orders_v0_api import OrdersV0Api
from spapi.api.orders_v2026_01_01.get_order_api import GetOrderApi
from spapi.api.orders_v2026_01_01.search_orders_api import SearchOrdersApi
from spapi.auth.credentials import SPAPIConfig
from spapi.client import SPAPIClient
from spapi.rest import ApiException

from common import error_code, run, split


def make_client(config, caller, via):
    tls = config["tls"]
    defaults = Configuration()
    if via == "guard":
        defaults.ssl_ca_cert = os.path.join(tls, "ca.crt")
        defaults.cert_file = os.path.join(tls, f"{caller}.crt")
        defaults.key_file = os.path.join(tls, f"{caller}.key")
    Configuration.set_default(defaults)
    credentials = SPAPIConfig(client_id="amzn1.application-oa2-client.test", client_secret="test-secret",
                              refresh_token="Atzr|test-refresh-token", region="NA")
    endpoint = config["guard"] if via == "guard" else config["direct"]
    client = SPAPIClient(credentials, oauth_endpoint=config["lwa"], endpoint=endpoint)
    Configuration.set_default(None)
    return client.api_client


def call(api_client: ApiClient, case):
    api_client.set_default_header("x-mock-fixture", case["fixture"] or "")
    q = case["query"]
    op = case["op"]
    if op == "v0.getOrders":
        kwargs = {"created_after": q.get("CreatedAfter", "2020-01-01T00:00:00Z")}
        if "NextToken" in q:
            kwargs["next_token"] = q["NextToken"]
        result = OrdersV0Api(api_client).get_orders(split(q.get("MarketplaceIds", "ATVPDKIKX0DER")), **kwargs)
    elif op == "v0.getOrder":
        result = OrdersV0Api(api_client).get_order(case["orderId"])
    elif op == "v0.getOrderAddress":
        result = OrdersV0Api(api_client).get_order_address(case["orderId"])
    elif op == "v0.getOrderBuyerInfo":
        result = OrdersV0Api(api_client).get_order_buyer_info(case["orderId"])
    elif op == "v0.getOrderItems":
        result = OrdersV0Api(api_client).get_order_items(case["orderId"])
    elif op == "v0.getOrderItemsBuyerInfo":
        result = OrdersV0Api(api_client).get_order_items_buyer_info(case["orderId"])
    elif op == "v0.getOrderRegulatedInfo":
        result = OrdersV0Api(api_client).get_order_regulated_info(case["orderId"])
    elif op == "2026.searchOrders":
        kwargs = {"created_after": q.get("createdAfter", "2025-01-01T00:00:00Z"),
                  "marketplace_ids": split(q.get("marketplaceIds", "ATVPDKIKX0DER"))}
        if "includedData" in q:
            kwargs["included_data"] = split(q["includedData"])
        if "paginationToken" in q:
            kwargs["pagination_token"] = q["paginationToken"]
        result = SearchOrdersApi(api_client).search_orders(**kwargs)
    elif op == "2026.getOrder":
        kwargs = {"included_data": split(q["includedData"])} if "includedData" in q else {}
        result = GetOrderApi(api_client).get_order(case["orderId"], **kwargs)
    else:
        raise ValueError(f"unknown op {op}")
    # The model back to JSON with the wire's member names (what the app would store).
    return api_client.sanitize_for_serialization(result)


def describe_error(exc):
    if isinstance(exc, ApiException):
        return exc.status, error_code(exc.body)
    return None


if __name__ == "__main__":
    run(make_client, call, describe_error)
