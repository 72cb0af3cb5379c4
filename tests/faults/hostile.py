"""Hostile inputs for scenario a, each with what the contract says must become of it.

Three kinds:
- ``Message``: one message inside a batch, beside valid ones. ``verdict`` "reject" (the collector must
  name it in the 400's ``rejected`` and dead-letter it), "accept" (it is a valid event, however odd:
  it must be stored once), or "either" (a repair is as good as a rejection, e.g. a lone surrogate).
- ``Request``: a whole request body (bad JSON, gzip bomb, ...) with the statuses allowed for it.
- ``Record``: a record written straight onto the events topic, as a backend service could: it must
  be dead-lettered by the worker ("dead_letter"), or may be ignored ("either"); some hold valid
  events beside bad ones.

Every input carries a tag (``fzc000123`` / ``fzw000123``) where the contract lets it survive: as the
userId and messageId of a message, as the event_id (or raw text) of a record; a dead letter is
matched to its input by it. Inputs whose tag cannot survive (a null value, a payload so big or deep
that the dead letter keeps only a summary) are counted instead.
"""

import gzip
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson


@dataclass
class Message:
    tag: str
    category: str
    body: Any
    verdict: str                  # reject | accept | either
    user_key: str | None = None   # its user key if it is accepted
    taggable: bool = True         # its dead letter names its tag


@dataclass
class Request:
    tag: str
    category: str
    content: bytes
    statuses: tuple               # statuses allowed
    headers: dict = field(default_factory=dict)
    auth: bool = True
    method: str = "POST"
    path: str = "/v1/batch"
    user_key: str | None = None   # if given: that user has exactly ``events_if_ok`` events when it was 200
    events_if_ok: int = 0


@dataclass
class Record:
    tag: str
    category: str
    value: bytes | None
    verdict: str                  # dead_letter | either
    key: bytes | None = None      # None: the tag (and its partition, as for a user key)
    tags: list | None = None      # tags its dead letters must show (default: [tag], or none if not taggable)
    untagged: int = 0             # dead letters it makes that cannot show a tag
    good: list = field(default_factory=list)  # valid canonical events inside it (checked with the workload)
    raw_key: bool = False         # send ``key`` as it is (a bad Kafka key), partition chosen by Kafka


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = {"n": value} if i % 2 else [value]
    return value


def _base(tag: str, **over) -> dict:
    message = {"type": "track", "userId": tag, "messageId": tag, "event": "Product Viewed",
               "properties": {"product_id": "P1", "price": 10}}
    message.update(over)
    return message


def _without(message: dict, *keys: str) -> dict:
    return {k: v for k, v in message.items() if k not in keys}


def collector_message(i: int, tag: str) -> Message:
    """The i-th hostile message (categories in turn, each with variants)."""
    categories = _MESSAGES
    category, make = categories[i % len(categories)]
    variant = i // len(categories)
    message = make(tag, variant)
    message.category = category
    return message


def _m(verdict: str, body, tag, user_key=None, taggable=True) -> Message:
    return Message(tag, "", body, verdict, user_key if user_key is not None else (tag if verdict != "reject" else None),
                   taggable)


def _not_object(tag, v):
    bodies = [tag, [tag], 42, None, True, 1.5]
    body = bodies[v % len(bodies)]
    return _m("reject", body, tag, taggable=isinstance(body, (str, list)))


def _bad_type(tag, v):
    return _m("reject", [_without(_base(tag), "type"), _base(tag, type="teleport"), _base(tag, type=5),
                         _base(tag, type=None)][v % 4], tag)


def _no_user(tag, v):
    return _m("reject", [_without(_base(tag), "userId"), _base(tag, userId=""), _base(tag, userId=None)][v % 3], tag)


def _user_types(tag, v):
    return _m("reject", _base(tag, userId=[{}, [tag], True, 1.5, {"id": tag}][v % 5]), tag)


def _user_int(tag, v):
    number = 7_000_000_000 + int(tag[3:])
    return _m("accept", _base(tag, userId=number), tag, user_key=str(number))


def _message_id_types(tag, v):
    return _m("reject", _base(tag, messageId=[1.5, {}, [tag], True][v % 4]), tag)


def _message_id_int(tag, v):
    return _m("accept", _base(tag, messageId=8_000_000_000 + int(tag[3:])), tag)


def _event_types(tag, v):
    return _m("reject", _base(tag, event=[5, "", "   ", None, [tag], {"n": tag}][v % 6]), tag)


def _property_types(tag, v):
    return _m("reject", [_base(tag, properties=[tag]), _base(tag, properties="x"), _base(tag, properties=5),
                         _base(tag, context="x"), _base(tag, context=[tag])][v % 5], tag)


def _time_types(tag, v):
    return _m("reject", _base(tag, timestamp=[12345, "not-a-time", "2024-13-45T00:00:00Z", [tag], "",
                                              "9999-99-99"][v % 6]), tag)


def _time_range(tag, v):
    times = [{"timestamp": "9999-12-31T23:59:59Z"}, {"timestamp": "2099-01-01T00:00:00Z"},
             {"timestamp": (_now() + timedelta(hours=1)).isoformat()}, {"timestamp": "0001-01-01T00:00:00Z"},
             {"timestamp": "1969-12-31T23:59:59Z"},
             {"timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T23:59:59Z"},
             {"timestamp": "9999-12-31T23:59:59Z", "sentAt": "0001-01-01T00:00:00Z"},
             {"originalTimestamp": "9999-12-31T23:59:59+14:00"}]
    return _m("reject", _base(tag, **times[v % len(times)]), tag)


def _time_edge_ok(tag, v):
    now = _now()
    times = [{"timestamp": (now + timedelta(seconds=60)).isoformat()},
             {"timestamp": (now - timedelta(hours=1)).isoformat(),
              "sentAt": (now - timedelta(hours=1) + timedelta(seconds=10)).isoformat()},
             {"timestamp": "1970-01-01T00:00:00Z"}]
    return _m("accept", _base(tag, **times[v % len(times)]), tag)


def _money(tag, v):
    prices = ["abc", -1, True, {"a": 1}, "NaN", "Infinity", 1e30, 0.00001, "1e400", "-0.01", [10]]
    return _m("reject", _base(tag, properties={"product_id": "P1", "price": prices[v % len(prices)]}), tag)


def _quantity(tag, v):
    quantities = [1.5, "2", -1, 10 ** 20, True, 1e300]
    return _m("reject", _base(tag, event="Product Added",
                              properties={"product_id": "P1", "price": 1, "quantity": quantities[v % len(quantities)]}), tag)


def _currency(tag, v):
    return _m("reject", _base(tag, event="Order Completed",
                              properties={"order_id": tag, "revenue": 5, "currency": ["EURO", 978, "E1R", ""][v % 4]}), tag)


def _products(tag, v):
    lines = ["x", [1], [{"quantity": -1}], [{"price": "abc"}], [{"product_id": {"a": 1}}], [None]]
    return _m("reject", _base(tag, event="Order Completed",
                              properties={"order_id": tag, "revenue": 5, "products": lines[v % len(lines)]}), tag)


def _session(tag, v):
    return _m("reject", _base(tag, context={"sessionId": [1.5, {}, [1], True][v % 4]}), tag)


def _huge_strings(tag, v):
    bodies = [_base(tag, event="x" * 40_000), _base(tag, userId=tag + "u" * 250), _base(tag, messageId=tag + "m" * 250),
              _base(tag, properties={"product_id": tag + "p" * 250}),
              _base(tag, properties={"product_id": "P1", "category": "c" * 300}),
              _base(tag, type="page", name="Home", properties={"url": "https://shop.example/" + "a" * 3000}),
              _base(tag, properties={"product_id": "P1", "blob": "b" * 40_000}),
              _base(tag, anonymousId="a" * 300)]
    return _m("reject", bodies[v % len(bodies)], tag)


def _big_but_valid(tag, v):
    bodies = [_base(tag, properties={"product_id": "P1", "blob": "b" * 20_000}),
              _base(tag, properties={"product_id": "P1", **{f"k{j}": j for j in range(800)}}),
              _base(tag, properties={"product_id": "P1", "k" * 5000: 1}),
              _base(tag, properties={"product_id": "P1", "": "empty key"}),
              _base(tag, properties={"product_id": "P1", "category": "c" * 256})]
    return _m("accept", bodies[v % len(bodies)], tag)


def _nul(tag, v):
    bodies = [_base(tag, userId=tag + "\x00"), _base(tag, event="View\x00ed"), _base(tag, messageId=tag + "\x00"),
              _base(tag, properties={"product_id": "P\x001"}), _base(tag, properties={"product_id": "P1", "category": "c\x00"}),
              _base(tag, anonymousId="\x00")]
    return _m("reject", bodies[v % len(bodies)], tag)


def _nul_unused(tag, v):
    return _m("either", _base(tag, properties={"product_id": "P1", "note": "a\x00b", "k\x00": 1}), tag)


def _deep(tag, v):
    bodies = [_base(tag, properties={"product_id": "P1", "deep": _nested(40)}),
              _base(tag, context={"deep": _nested(60)}), _base(tag, traits=_nested(200)),
              _base(tag, properties={"product_id": "P1", "deep": _nested(240)})]
    return _m("reject", bodies[v % len(bodies)], tag)


def _shallow_ok(tag, v):
    return _m("accept", _base(tag, properties={"product_id": "P1", "deep": _nested(20)}), tag)


def _odd_but_valid(tag, v):
    names = ["'; DROP TABLE events; --", "\U0001F6D2 cart", "\u202eRTL", "a\tb\nc", "\\\"quoted\\\"", "日本語"]
    prefix = names[v % len(names)]
    return _m("accept", _base(prefix + tag, messageId=tag, event=prefix + " event"), tag, user_key=prefix + tag)


_MESSAGES = [
    ("not an object", _not_object), ("bad type", _bad_type), ("no user", _no_user), ("userId of a wrong type", _user_types),
    ("numeric userId", _user_int), ("messageId of a wrong type", _message_id_types),
    ("numeric messageId", _message_id_int), ("event of a wrong type", _event_types),
    ("properties/context of a wrong type", _property_types), ("time of a wrong type", _time_types),
    ("far-future/out-of-range time", _time_range), ("edge times that are fine", _time_edge_ok),
    ("bad money", _money), ("bad quantity", _quantity), ("bad currency", _currency), ("bad product lines", _products),
    ("bad sessionId", _session), ("huge strings", _huge_strings), ("big but valid", _big_but_valid),
    ("NUL in stored fields", _nul), ("NUL in unstored fields", _nul_unused), ("deep nesting", _deep),
    ("nesting within the limit", _shallow_ok), ("odd but valid strings", _odd_but_valid),
]
MESSAGE_CATEGORIES = [name for name, _ in _MESSAGES]


_BOMB: bytes | None = None


def _bomb() -> bytes:
    global _BOMB
    if _BOMB is None:  # 64 MB of zeros in ~64 KB
        _BOMB = gzip.compress(b'{"batch": [], "pad": "' + b"0" * 64 * 1024 * 1024 + b'"}', compresslevel=9)
    return _BOMB


def collector_request(i: int, tag: str) -> Request:
    kinds = _REQUESTS
    category, make = kinds[i % len(kinds)]
    request = make(tag, i // len(kinds))
    request.category = category
    return request


def _r(tag, content, statuses, **kw) -> Request:
    return Request(tag, "", content, statuses, **kw)


def _bad_json(tag, v):
    bodies = [b"{not json", b'{"batch": [', b"", b"\x00\x01\x02", b'{"batch": [{"type": "track",}]}', b"{" * 10,
              b'{"batch": [], "writeKey": }', tag.encode()]
    return _r(tag, bodies[v % len(bodies)], (400,))


def _invalid_utf8(tag, v):
    body = (b'{"batch": [{"type": "track", "userId": "' + tag.encode() + b'", "messageId": "' + tag.encode()
            + b'", "event": "View \xff\xfe"}]}')
    return _r(tag, body, (200, 400), user_key=tag, events_if_ok=1)


def _lone_surrogate(tag, v):
    escapes = [b"\\ud800", b"\\udfff", b"\\ud83d", b"\\ud83d\\ud83d"]
    body = (b'{"batch": [{"type": "track", "userId": "' + tag.encode() + b'", "messageId": "' + tag.encode()
            + b'", "event": "View ' + escapes[v % len(escapes)] + b'"}]}')
    return _r(tag, body, (200, 400), user_key=tag, events_if_ok=1)


def _body_not_object(tag, v):
    return _r(tag, [b"[]", b"42", b'"x"', b"null", b"true", b"[{}]"][v % 6], (400,))


def _batch_not_list(tag, v):
    return _r(tag, [b'{"batch": {}}', b'{"batch": "x"}', b'{"batch": null}', b'{"batch": 5}', b"{}"][v % 5], (400,))


def _too_many(tag, v):
    messages = [{"type": "track", "userId": tag, "event": "X"} for _ in range(2501)]
    return _r(tag, orjson.dumps({"batch": messages}), (413,), user_key=tag, events_if_ok=0)


def _too_large(tag, v):
    body = orjson.dumps({"batch": [_base(tag, properties={"blob": "x" * 600_000})]})
    return _r(tag, body, (413,), user_key=tag, events_if_ok=0)


def _gzip_bomb(tag, v):
    return _r(tag, _bomb(), (413,), headers={"Content-Encoding": "gzip"})


def _bad_gzip(tag, v):
    bodies = [b"not gzip at all", gzip.compress(orjson.dumps({"batch": [_base(tag)]}))[:30]]
    return _r(tag, bodies[v % 2], (400,), headers={"Content-Encoding": "gzip"}, user_key=tag, events_if_ok=0)


def _deep_body(tag, v):
    bodies = [b"[" * 100_000, b'{"batch": ' + b"[" * 5000, b'{"batch": [' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"]}"]
    return _r(tag, bodies[v % 3], (400,))


def _auth(tag, v):
    body = orjson.dumps({"batch": [_base(tag)]})
    variants = [dict(auth=False), dict(auth=False, headers={"Authorization": "Basic !!!"}),
                dict(auth=False, headers={"Authorization": "Bearer " + "k" * 5000}),
                dict(auth=False, content=orjson.dumps({"batch": [_base(tag)], "writeKey": 5})),
                dict(auth=False, content=orjson.dumps({"batch": [_base(tag)], "writeKey": "wrong"}))]
    kw = {"content": body, **variants[v % len(variants)]}
    content = kw.pop("content")
    return _r(tag, content, (401,), user_key=tag, events_if_ok=0, **kw)


def _wrong_method(tag, v):
    return _r(tag, b"", (405,), method="GET")


def _many_keys(tag, v):
    body = orjson.dumps({"batch": [], **{f"k{j}": j for j in range(20_000)}})
    return _r(tag, body, (200,))


_REQUESTS = [("bad JSON", _bad_json), ("invalid UTF-8", _invalid_utf8), ("lone surrogates", _lone_surrogate),
             ("body not an object", _body_not_object), ("batch not a list", _batch_not_list),
             ("2,501 messages", _too_many), ("body over 512 KB", _too_large), ("gzip bomb", _gzip_bomb),
             ("bad gzip", _bad_gzip), ("deep nesting of the body", _deep_body), ("bad write keys", _auth),
             ("wrong method", _wrong_method), ("20,000 keys", _many_keys)]
REQUEST_CATEGORIES = [name for name, _ in _REQUESTS]


# Straight onto the events topic -------------------------------------------------------------------

def _event(tag: str, **over) -> dict:
    now = _now()
    event = {"event_id": tag, "kind": "product_view", "name": "Product Viewed", "user_key": tag,
             "event_time": (now - timedelta(minutes=5)).isoformat(), "received_at": now.isoformat(),
             "source": "backend", "product_id": "P1"}
    event.update(over)
    return event


def _rec(tag, value, verdict="dead_letter", taggable=True, **kw) -> Record:
    record = Record(tag, "", value, verdict, **kw)
    if record.tags is None:
        record.tags = [tag] if taggable and verdict == "dead_letter" else []
        record.untagged = 0 if taggable or verdict != "dead_letter" else 1
    return record


def _j(value) -> bytes:
    return orjson.dumps(value)


def topic_record(i: int, tag: str, good_event) -> Record:
    """The i-th hostile record; ``good_event(n)`` gives n valid canonical events of a fresh user."""
    kinds = _RECORDS
    category, make = kinds[i % len(kinds)]
    record = make(tag, i // len(kinds), good_event)
    record.category = category
    return record


def _null_values(tag, v, good):
    return _rec(tag, [None, b"", b"null", b"   "][v % 4], taggable=False)


def _not_json(tag, v, good):
    values = [b"not json " + tag.encode(), b"\xff\xfe" + tag.encode(), b"{" + tag.encode(),
              b'{"event_id": "' + tag.encode() + b'", "name": "\xff\xfe"}', b"\x00" * 10 + tag.encode()]
    return _rec(tag, values[v % len(values)])


def _scalars(tag, v, good):
    values = [_j(tag), _j(42), _j(True), _j([tag]), _j([[tag]]), _j({"event_id": tag})]
    return _rec(tag, values[v % len(values)], taggable=v % len(values) not in (1, 2))


def _deep_record(tag, v, good):
    values = [b"[" * 3000 + b"]" * 3000, _j(_event(tag, extra=_nested(50))), _j(_event(tag, extra=_nested(250))),
              b'{"event_id": "' + tag.encode() + b'", "x": ' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"}"]
    return _rec(tag, values[v % 4], taggable=v % 4 == 1)


def _wrong_types(tag, v, good):
    variants = [dict(event_id=5, name=tag), dict(kind="teleport"), dict(user_key=[tag]), dict(event_time="yesterday"),
                dict(received_at="soon"), dict(price="abc"), dict(quantity=-1), dict(quantity=1.5), dict(products="x"),
                dict(schema_version="one"), dict(is_bot="maybe"), dict(currency="euro"), dict(user_key=""),
                dict(event_time=None), dict(price="-3")]
    return _rec(tag, _j(_event(tag, **variants[v % len(variants)])))


def _over_long(tag, v, good):
    variants = [dict(source="s" * 65), dict(source=""), dict(event_id=tag + "i" * 300), dict(user_key=tag + "u" * 300),
                dict(category="c" * 300), dict(product_id=tag + "p" * 300), dict(name="n" * 300),
                dict(page_url="https://x/" + "a" * 3000), dict(order_id="o" * 300, kind="purchase"),
                dict(session_id="s" * 300), dict(utm_source="u" * 300), dict(browser="b" * 200),
                dict(anonymized_ip="1" * 60), dict(kind="purchase", products=[{"product_id": "P", "category": "c" * 300}]),
                dict(kind="purchase", products=[{"product_id": f"P{j}"} for j in range(1001)])]
    event = _event(tag, **variants[v % len(variants)])
    return _rec(tag, _j(event))


def _long_field_name(tag, v, good):
    return _rec(tag, _j(_event(tag, **{"f" * [300, 10_000, 100_000][v % 3]: 1})))


def _future(tag, v, good):
    times = ["9999-12-31T23:59:59Z", "2099-01-01T00:00:00Z", (_now() + timedelta(hours=1)).isoformat(),
             "9999-12-31T23:59:59.999999-12:00"]
    return _rec(tag, _j(_event(tag, event_time=times[v % len(times)])))


def _nul_fields(tag, v, good):
    raw = _j(_event(tag, user_key=tag + "-x", name="View")).replace(b'"View"', b'"Vi\\u0000ew"')
    values = [_j(_event(tag, user_key=tag + "\x00")), _j(_event(tag, category="c\x00")), raw,
              _j(_event(tag, kind="purchase", products=[{"product_id": "P\x00"}]))]
    return _rec(tag, values[v % len(values)])


def _surrogate(tag, v, good):
    value = _j(_event(tag, name="View")).replace(b'"View"', b'"View \\ud800"')
    return _rec(tag, value, verdict="either")


def _money_records(tag, v, good):
    variants = [dict(price="1e20"), dict(price="0.00001"), dict(kind="purchase", revenue="NaN"),
                dict(kind="purchase", revenue="Infinity"), dict(kind="purchase", revenue="-5"),
                dict(kind="purchase", revenue="1e400")]
    return _rec(tag, _j(_event(tag, **variants[v % len(variants)])))


def _erasure_lookalikes(tag, v, good):
    values = [_j({"erase_user_key": 5}), _j({"erase_user_key": tag, "more": 1}), _j({"erase_user_key": [tag]}),
              _j([{"erase_user_key": tag}])]
    return _rec(tag, values[v % 4], taggable=v % 4 != 0)


def _mixed_array(tag, v, good):
    goods = good(3)  # three events of one fresh user: the record goes to that user's partition
    bads = [_event(tag + "-a", kind="teleport"), _event(tag + "-b", event_time="9999-12-31T23:59:59Z"),
            _event(tag + "-c", source="s" * 100)]
    items = [goods[0], bads[0], goods[1], bads[1], None, goods[2], bads[2]]
    return _rec(tag, _j(items), tags=[tag + "-a", tag + "-b", tag + "-c"], untagged=1, good=goods,
                key=goods[0]["user_key"].encode())


def _bad_keys(tag, v, good):
    return _rec(tag, _j(_event(tag, kind="teleport")), key=[None, b"\xff\x00\xfe", b"k" * 10_000][v % 3], raw_key=True)


def _huge_record(tag, v, good):
    return _rec(tag, _j(_event(tag, name="x" * 700_000)), taggable=False)


def _empty_array(tag, v, good):
    return _rec(tag, b"[]", verdict="either", taggable=False)


_RECORDS = [("null/empty values", _null_values), ("not JSON", _not_json), ("JSON scalars and lists", _scalars),
            ("deep nesting", _deep_record), ("wrong types", _wrong_types), ("over-long fields", _over_long),
            ("over-long field names", _long_field_name), ("year-9999/far-future times", _future),
            ("NUL in fields", _nul_fields), ("lone surrogates", _surrogate), ("bad money", _money_records),
            ("erasure look-alikes", _erasure_lookalikes), ("arrays mixing good and bad events", _mixed_array),
            ("bad Kafka keys", _bad_keys), ("a ~700 KB record", _huge_record), ("empty array", _empty_array)]
RECORD_CATEGORIES = [name for name, _ in _RECORDS]


def shuffled(items: list, seed: int) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items
