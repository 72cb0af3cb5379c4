"""Hypothesis strategies for Segment-like messages: well-formed, odd, and arbitrary JSON.

Everything but ``python_oddities`` and what is built from it can be sent as JSON (orjson.dumps);
those are values only a Python caller (a replayed PostgreSQL row) can hand the intake.
"""

from datetime import datetime, timedelta, timezone

from hypothesis import strategies as st

# Values a JSON body can carry that sit at some edge: the 64-bit bounds orjson keeps as integers,
# the largest and smallest doubles, NUL and other odd characters, out-of-range or malformed times.
edge_numbers = st.sampled_from([2**64 - 1, -2**63, 2**63, 1e308, -1e308, 5e-324, 1e20, 1.5, -0.0, 0.1])
edge_texts = st.sampled_from(["", "\x00", "a\x00b", "\u2028", "\ufffd", "\U0001f600", "x" * 300, "1e400", "NaN",
                              "Infinity", "-1", "9999-12-31T23:59:59+14:00", "0001-01-01", "0001-01-01T00:00:00-14:00",
                              "2099-01-01T00:00:00Z", "2024-02-30T00:00:00Z", "2024-01-01T24:00:00"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20), edge_numbers, edge_texts)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)
ids = st.one_of(st.text(min_size=1, max_size=12), st.integers(-10**6, 10**6), edge_numbers, json_values)
offsets = st.timedeltas(-timedelta(hours=23, minutes=59), timedelta(hours=23, minutes=59)).map(
    lambda d: timezone(timedelta(minutes=d // timedelta(minutes=1))))
times = st.one_of(st.datetimes().map(lambda t: t.isoformat() + "Z"),
                  st.datetimes(timezones=offsets).map(lambda t: t.isoformat()),  # years 1..9999, any offset
                  st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1)).map(lambda t: t.isoformat() + "Z"),
                  edge_texts, st.text(max_size=30), json_values)
moneys = st.one_of(st.decimals(allow_nan=False, allow_infinity=False, places=2).map(str),
                   st.floats(allow_nan=False, allow_infinity=False), st.integers(-10, 2**63 - 1), edge_numbers,
                   st.sampled_from(["1e400", "-1e400", "1e-400", "9e999999", "NaN", "sNaN", "Infinity", "-0", " 12 "]),
                   json_values)
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
                                                                       "referrer": json_values})),
    "campaign": st.one_of(json_values, st.fixed_dictionaries({}, optional={"source": json_values,
                                                                           "name": json_values})),
    "sessionId": st.one_of(ids, json_values)}))
messages = st.fixed_dictionaries({}, optional={
    "type": st.one_of(st.sampled_from(["track", "page", "screen", "identify", "alias", "group"]), json_values),
    "userId": ids, "anonymousId": ids, "messageId": ids,
    "event": st.one_of(st.sampled_from(["Product Viewed", "product_added", "Order Completed", "Checkout Started",
                                        "Product Removed", "Whatever"]), json_values),
    "name": json_values, "properties": properties, "context": context, "traits": json_values,
    "timestamp": times, "sentAt": times, "originalTimestamp": times, "writeKey": st.just("fuzz-secret-key")})
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

# Only a Python caller can pass these (orjson reads none of them from JSON, and cannot write them).
python_oddities = st.one_of(st.sampled_from([float("nan"), float("inf"), float("-inf"), 2**64, -2**63 - 1, 10**30,
                                             "\ud800", "a\udfffb", "\ud83d", b"bytes", (1, 2)]),
                            st.builds(lambda: 10**5000))  # (sampled_from would repr it: too many digits)


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


deep_values = st.integers(1, 400).map(_nested)  # past orjson.dumps' 254 levels too
python_values = st.recursive(st.one_of(scalars, python_oddities, deep_values),
                             lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                                 st.one_of(st.text(max_size=8), st.sampled_from(["\udc00", "k\ud800"])),
                                 inner, max_size=4), max_leaves=12)


@st.composite
def with_oddities(draw, message_strategy=some_messages):
    """A message with Python oddities (or deep nesting) put at a few random places."""
    message = draw(message_strategy)
    if not isinstance(message, dict):
        return message
    message = dict(message)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["userId", "messageId", "timestamp", "sentAt", "properties", "context",
                                      "event", "type", "anonymousId", "traits"]))
        target = message
        if where in ("properties", "context") and isinstance(message.get(where), dict):
            target = message[where] = dict(message[where])
            where = draw(st.sampled_from(["price", "quantity", "revenue", "product_id", "products", "page",
                                          "campaign", "sessionId", "ip", "userAgent", "x"]))
        target[where] = draw(python_values)
    return message
