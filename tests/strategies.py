"""Hypothesis strategies for Segment-like messages: well-formed, odd, and arbitrary JSON."""

from datetime import datetime

from hypothesis import strategies as st

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)
ids = st.one_of(st.text(min_size=1, max_size=12), st.integers(-10**6, 10**6), json_values)
times = st.one_of(st.datetimes().map(lambda t: t.isoformat() + "Z"), st.text(max_size=30), json_values)
moneys = st.one_of(st.decimals(allow_nan=False, allow_infinity=False, places=2).map(str),
                   st.floats(allow_nan=False, allow_infinity=False), st.integers(-10, 2**63 - 1), json_values)
product_line = st.fixed_dictionaries({}, optional={"product_id": ids, "sku": ids, "price": moneys,
                                                   "quantity": st.one_of(st.integers(-3, 10**7), json_values),
                                                   "category": json_values})
properties = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "product_id": ids, "sku": ids, "price": moneys, "quantity": st.one_of(st.integers(-3, 10**7), st.floats()),
    "currency": st.one_of(st.sampled_from(["EUR", "usd", "€€€"]), json_values), "revenue": moneys,
    "total": moneys, "order_id": ids, "category": json_values, "url": json_values,
    "products": st.one_of(st.lists(product_line, max_size=3), json_values)}))
context = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "userAgent": st.one_of(st.sampled_from(["Mozilla/5.0 (compatible; Googlebot/2.1)", "curl/8"]),
                           st.text(max_size=600), json_values),
    "ip": st.one_of(st.ip_addresses().map(str), st.text(max_size=20), json_values),
    "page": st.one_of(json_values, st.fixed_dictionaries({}, optional={"url": json_values,
                                                                       "referrer": json_values}))}))
messages = st.fixed_dictionaries({}, optional={
    "type": st.one_of(st.sampled_from(["track", "page", "screen", "identify", "alias", "group"]), json_values),
    "userId": ids, "anonymousId": ids, "messageId": ids,
    "event": st.one_of(st.sampled_from(["Product Viewed", "product_added", "Order Completed", "Checkout Started",
                                        "Product Removed", "Whatever"]), json_values),
    "name": json_values, "properties": properties, "context": context, "traits": json_values,
    "timestamp": times, "sentAt": times, "originalTimestamp": times})
# Mostly well-formed messages, so that the accepting path is exercised as much as the refusing one.
plausible = st.fixed_dictionaries({
    "type": st.sampled_from(["track", "track", "page", "screen", "identify"]),
    "userId": st.text(min_size=1, max_size=10), "messageId": st.uuids().map(str),
    "event": st.sampled_from(["Product Viewed", "Product Added", "Order Completed", "Something Else"]),
}, optional={
    "properties": st.fixed_dictionaries({}, optional={
        "product_id": st.text(min_size=1, max_size=8), "price": st.decimals(0, 10**6, places=2).map(str),
        "quantity": st.integers(0, 100), "currency": st.sampled_from(["EUR", "usd"]), "category": st.text()}),
    "context": st.fixed_dictionaries({}, optional={
        "userAgent": st.one_of(st.sampled_from(["Mozilla/5.0 (compatible; Googlebot/2.1)", "curl/8"]), st.text()),
        "ip": st.one_of(st.ip_addresses().map(str), st.text(max_size=20))}),
    "timestamp": st.datetimes(datetime(2000, 1, 1), datetime(2090, 1, 1))
                                      .map(lambda t: t.isoformat() + "Z")})
some_messages = st.one_of(plausible, plausible, messages, json_values)
