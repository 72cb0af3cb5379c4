"""a. Hostile inputs, through the collector and straight onto the events topic, between valid traffic.

Through the collector: messages that break the contract in every way the suite knows (wrong types,
far-future and out-of-range times, huge strings, NULs, deep nesting, bad money, ...) mixed into
batches of valid ones, odd-but-valid messages, and whole requests that are not even batches (bad
JSON, invalid UTF-8, lone surrogates, gzip bombs, 2,501 messages, 600 KB bodies, bad write keys).
Onto the topic, as a backend service could write: null values, non-JSON, deep nesting, wrong types,
over-long sources/field names/ids/categories, year-9999 times, arrays mixing good and bad events,
and a user with a huge number of distinct products and cart lines.

Checked: no 5xx from the collector; each message's verdict is what the contract says; every
rejected message and every bad record is in dead_letters with a reason; every valid event (and
every odd-but-valid one) is stored once and every profile is exact; `spoor worker` never exits or
fail-stops (same child process throughout); a canary sent afterwards is stored within seconds.
"""

import json
import random
import re
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import httpx
import orjson
import pytest
from kafka import KafkaProducer
from sqlalchemy import text

from spoor.topics import partition_for
from tests.faults import hostile
from tests.faults.harness import FORMS, Summary, wait_with_progress
from tests.faults.workload import canary, canonical, check, ids_of, persisted_count, shoppers, truth

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TAG = re.compile(r"fz[cw]\d{6}(?:-[a-z])?")
MAX_MONEY = Decimal("99999999999999.9999")  # NUMERIC(18,4)
SIZES = {  # hostile messages, hostile requests, hostile records; valid users via collector / onto the topic;
           # the huge user's distinct product views and cart lines; users with two maximal orders
    "short": dict(messages=1100, requests=100, records=300, users=150, direct_users=40, views=3000, lines=300, money=3),
    "full": dict(messages=7500, requests=600, records=2500, users=1500, direct_users=300, views=30000, lines=3000,
                 money=10),
}


def encode(body) -> bytes:
    """JSON as a careless client writes it: big integers, NULs and all (orjson refuses some of them)."""
    try:
        return orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(body, ensure_ascii=False, allow_nan=False).encode()


def huge_user(views: int, lines: int) -> list[dict]:
    user = "huge-shopper"
    start = datetime.now(timezone.utc) - timedelta(hours=30)
    messages = []
    for i in range(views + lines):
        at = (start + timedelta(seconds=i)).isoformat()
        if i < views:
            props = {"product_id": f"HP{i:06d}", "category": f"cat{i % 40}", "price": "1.50"}
            messages.append({"type": "track", "userId": user, "messageId": f"huge-{i}", "timestamp": at,
                             "event": "Product Viewed", "properties": props})
        else:
            props = {"product_id": f"HC{i:06d}", "price": "2.25", "quantity": 1 + i % 3}
            messages.append({"type": "track", "userId": user, "messageId": f"huge-{i}", "timestamp": at,
                             "event": "Product Added", "properties": props})
    return messages


@pytest.mark.parametrize("form", FORMS)
def test_hostile_inputs_cost_only_themselves(form, collector, write_key, engine, workers, test_settings):
    size = SIZES[form]
    summary = Summary("a. hostile inputs", form)
    rng = random.Random(1818)
    partitions = test_settings.topic_partitions
    worker = workers().start()
    child = worker.note_child()
    http = httpx.Client(base_url=collector, timeout=60)
    answers: Counter = Counter()
    received = datetime.now(timezone.utc)

    # The inputs ------------------------------------------------------------------------------------
    valid = shoppers("valid", size["users"], 12, seed=1)
    direct = shoppers("direct", size["direct_users"], 12, seed=2)
    huge = huge_user(size["views"], size["lines"])
    mixed_good: list[dict] = []  # Segment form of the valid events inside hostile arrays (their answers)

    def good(n: int) -> list[dict]:
        user = f"mix-{len(mixed_good)}"
        at = received - timedelta(minutes=30)
        messages = [{"type": "track", "userId": user, "messageId": f"{user}-{k}", "event": "Product Viewed",
                     "timestamp": (at + timedelta(seconds=k)).isoformat(), "properties": {"product_id": f"P{k}"}}
                    for k in range(n)]
        mixed_good.extend(messages)
        return [canonical(m, received) for m in messages]

    messages = hostile.shuffled([hostile.collector_message(i, f"fzc{i:06d}") for i in range(size["messages"])], 1)
    base = size["messages"]
    requests = hostile.shuffled([hostile.collector_request(i, f"fzc{base + i:06d}") for i in range(size["requests"])], 2)
    records = hostile.shuffled([hostile.topic_record(i, f"fzw{i:06d}", good) for i in range(size["records"])], 3)
    if form == "full":  # one request of 2,500 messages that are all bad
        base += size["requests"]
        all_bad, i = [], 0  # small ones: the request stays under the 512 KB body limit
        while len(all_bad) < 2500:
            message = hostile.collector_message(i, f"fzc{base + i:06d}")
            if message.verdict == "reject" and len(encode(message.body)) <= 190:
                all_bad.append(message)
            i += 1
        assert len(encode({"batch": [m.body for m in all_bad]})) < 512 * 1024
    else:
        all_bad = []
    money_users = [f"fzc{900000 + i:06d}" for i in range(size["money"])]  # two maximal orders each
    money_messages = [{"type": "track", "userId": user, "messageId": f"{user}-{s}", "event": "Order Completed",
                       "properties": {"order_id": f"{user}-{s}", "revenue": str(MAX_MONEY)}}
                      for user in money_users for s in "ab"]

    # Valid events onto the topic: records of 1-50 events of one partition, in each user's order.
    direct_values: list[tuple[int, bytes, bytes]] = []
    buffers: dict[int, list] = {}
    for message in direct + huge:
        p = partition_for(message["userId"], partitions)
        buffers.setdefault(p, []).append(canonical(message, received))
        limit = 500 if message["userId"] == "huge-shopper" else rng.randint(1, 50)
        if len(buffers[p]) >= limit:
            events = buffers.pop(p)
            direct_values.append((p, events[0]["user_key"].encode(), encode(events[0] if len(events) == 1 else events)))
    direct_values += [(p, e[0]["user_key"].encode(), encode(e)) for p, e in buffers.items()]

    # Sending, interleaved ----------------------------------------------------------------------------
    valid_batches = [valid[i:i + 40] for i in range(0, len(valid), 40)]
    steps = len(valid_batches)
    verdicts: dict[str, bool] = {}  # tag -> rejected by the collector
    wrongly_rejected: list = []
    statuses_by_category: dict[str, Counter] = {}
    producer = KafkaProducer(bootstrap_servers=test_settings.kafka_bootstrap, acks="all", linger_ms=5,
                             max_request_size=2 * 1024 * 1024)

    def post(content: bytes, auth=True, headers=None, method="POST", path="/v1/batch") -> httpx.Response:
        response = http.request(method, path, content=content, auth=(write_key, "") if auth else None,
                                headers={"Content-Type": "application/json", **(headers or {})})
        answers[response.status_code] += 1
        return response

    def send_batch(items: list, hostile_at: dict[int, hostile.Message]) -> None:
        response = post(encode({"batch": items}))
        rejected = {r["index"] for r in response.json().get("rejected", [])} if response.status_code == 400 else set()
        if response.status_code not in (200, 400):  # not judged message by message: no dead letters
            summary.problem(f"a batch with hostile messages {sorted({m.category for m in hostile_at.values()})} "
                            f"got {response.status_code}: {response.text[:300]}")
            for index, item in enumerate(items):
                if index in hostile_at:
                    verdicts[hostile_at[index].tag] = None
                else:
                    wrongly_rejected.append(item["messageId"])
            return
        for index, item in enumerate(items):
            if index in hostile_at:
                verdicts[hostile_at[index].tag] = index in rejected
            elif index in rejected:
                wrongly_rejected.append(item["messageId"])

    def produce(record: hostile.Record) -> None:
        if record.raw_key:
            producer.send(test_settings.events_topic, key=record.key, value=record.value)
        else:
            key = record.key or record.tag.encode()
            producer.send(test_settings.events_topic, key=key, value=record.value,
                          partition=partition_for(key.decode(), partitions))

    def share(items: list, step: int) -> list:
        return items[len(items) * step // steps:len(items) * (step + 1) // steps]

    for step in range(steps):
        batch_hostile = share(messages, step)
        items = list(valid_batches[step])
        hostile_at = {}
        for message in batch_hostile:
            position = rng.randint(0, len(items))
            items.insert(position, message.body)
            hostile_at = {i + (i >= position): m for i, m in hostile_at.items()}
            hostile_at[position] = message
        send_batch(items, hostile_at)
        for request in share(requests, step):
            response = post(request.content, request.auth, request.headers, request.method, request.path)
            statuses_by_category.setdefault(request.category, Counter())[response.status_code] += 1
            verdicts[request.tag] = response.status_code
        for p, key, value in share(direct_values, step):
            producer.send(test_settings.events_topic, key=key, value=value, partition=p)
        for record in share(records, step):
            produce(record)
    if all_bad:
        send_batch([m.body for m in all_bad], dict(enumerate(all_bad)))
    for message in money_messages:
        send_batch([message], {})
    producer.flush()
    producer.close()

    # What the contract says must be in PostgreSQL ------------------------------------------------
    hostile_messages = messages + all_bad
    expected = truth([m for m in valid if m["messageId"] not in set(wrongly_rejected)] + direct + huge + mixed_good)
    expected_ids = ids_of(valid + direct + huge + mixed_good) - set(wrongly_rejected)
    if wrongly_rejected:
        summary.problem(f"{len(wrongly_rejected)} valid messages were rejected in batches with hostile ones: "
                        f"{wrongly_rejected[:5]}")
    verdict_problems = Counter()
    one_event_users = {}  # users of accepted odd-but-valid inputs: exactly one event each
    for m in hostile_messages:
        rejected = verdicts[m.tag]
        if rejected is None:
            continue
        if m.verdict == "reject" and not rejected or m.verdict == "accept" and rejected:
            verdict_problems[(m.category, m.verdict)] += 1
        if not rejected and m.user_key:
            one_event_users[m.user_key] = 1
    for (category, verdict), n in sorted(verdict_problems.items()):
        summary.problem(f"collector: {n} message(s) of '{category}' were "
                        f"{'accepted' if verdict == 'reject' else 'rejected'}; the contract says {verdict}")
    absent_users = []
    for r in requests:
        status = verdicts[r.tag]
        if status not in r.statuses:
            summary.problem(f"collector: a '{r.category}' request got {status}, expected {r.statuses}")
        if r.user_key and status == 200 and r.events_if_ok:
            one_event_users[r.user_key] = r.events_if_ok
        elif r.user_key:
            absent_users.append(r.user_key)
    five_xx = {s: n for s, n in answers.items() if s >= 500}
    if five_xx:
        summary.problem(f"collector answered {five_xx}")
    rejected_messages = [m for m in hostile_messages if verdicts[m.tag]]
    either_records = [r for r in records if r.verdict == "either" and r.value not in (b"[]",)]

    def dead_letters() -> tuple[dict, Counter, list]:
        found: dict[str, set] = {"collector": set(), "worker": set()}
        untagged: Counter = Counter()
        reasonless = []
        with engine.connect() as conn:
            for processor, field, reason, payload in conn.execute(text(
                    "SELECT processor, field, reason, payload::text FROM dead_letters")):
                tags = set(TAG.findall(payload)) | set(TAG.findall(field or ""))
                if tags:
                    found.setdefault(processor, set()).update(tags)
                else:
                    untagged[processor] += 1
                if not (reason or "").strip():
                    reasonless.append((processor, field, payload[:100]))
        return found, untagged, reasonless

    def missing_dead_letters() -> dict:
        found, untagged, _ = dead_letters()
        collector_tags = {m.tag for m in rejected_messages if m.taggable}
        collector_untagged = sum(1 for m in rejected_messages if not m.taggable and m.tag not in found["collector"])
        worker_tags = {t for r in records if r.verdict == "dead_letter" for t in r.tags}
        worker_untagged = sum(r.untagged for r in records if r.verdict == "dead_letter" and r.tag not in found["worker"])
        return {"collector": sorted(collector_tags - found["collector"]),
                "collector_untagged": max(0, collector_untagged - untagged["collector"]),
                "worker": sorted(worker_tags - found["worker"]),
                "worker_untagged": max(0, worker_untagged - untagged["worker"])}

    def users_with_events(keys: list) -> dict:
        with engine.connect() as conn:
            profiles = dict(conn.execute(text("SELECT user_key, events FROM user_profiles WHERE user_key = ANY(:k)"),
                                         {"k": keys}).all())
            rows = dict(conn.execute(text("SELECT user_key, count(*) FROM events WHERE user_key = ANY(:k) GROUP BY 1"),
                                     {"k": keys}).all())
        return {k: (profiles.get(k, 0), rows.get(k, 0)) for k in keys}

    def settled() -> bool:
        if not check(engine, expected, expected_ids, loose={"huge-shopper": {"cart_value"}}).ok:
            return False
        if any(v for v in missing_dead_letters().values()):
            return False
        odd = users_with_events(list(one_event_users))
        return all(odd[k] == (n, n) for k, n in one_event_users.items())

    def progress():
        with engine.connect() as conn:
            return persisted_count(engine), conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one()

    try:
        waited = wait_with_progress(settled, progress, "the worker to store every valid event and dead letter",
                                    stall_s=60, limit_s=900 if form == "full" else 300, interval=2)
    except AssertionError as err:
        waited = None
        summary.problem(str(err).splitlines()[0])

    # The findings --------------------------------------------------------------------------------
    result = check(engine, expected, expected_ids, loose={"huge-shopper": {"cart_value"}})
    if not result.ok:
        summary.problem(f"valid events: {result.describe()}")
    missing = missing_dead_letters()
    by_tag = {m.tag: m.category for m in hostile_messages} | {t: r.category for r in records for t in r.tags}
    inputs = {m.tag: m.body for m in hostile_messages} | {t: r.value for r in records for t in r.tags}
    for where in ("collector", "worker"):
        if missing[where]:
            categories = Counter(by_tag.get(t, t[:9]) for t in missing[where])
            examples = [repr(inputs.get(t))[:160] for t in missing[where][:3]]
            summary.problem(f"{len(missing[where])} {where} inputs have no dead letter: {dict(categories)}, "
                            f"e.g. {examples}")
        if missing[f"{where}_untagged"]:
            summary.problem(f"{missing[f'{where}_untagged']} untagged {where} dead letters missing (null values, "
                            "summarised payloads)")
    found, untagged, reasonless = dead_letters()
    if reasonless:
        summary.problem(f"{len(reasonless)} dead letters without a reason: {reasonless[:3]}")
    odd = users_with_events(list(one_event_users))
    wrong_odd = {k: v for k, v in odd.items() if v != (one_event_users[k], one_event_users[k])}
    if wrong_odd:
        summary.problem(f"{len(wrong_odd)} accepted odd-but-valid inputs not stored exactly once "
                        f"(user: (profile events, rows)): {dict(list(wrong_odd.items())[:5])}")
    present = {k: v for k, v in users_with_events(absent_users).items() if v != (0, 0)}
    if present:
        summary.problem(f"events of rejected requests were stored: {present}")
    for r in either_records:  # repaired and stored, or dead-lettered
        if r.tag not in found["worker"] and users_with_events([r.tag])[r.tag] != (1, 1):
            summary.problem(f"record '{r.category}' {r.tag}: neither dead-lettered nor stored once")
    with engine.connect() as conn:
        money = {u: conn.execute(text("SELECT orders, revenue FROM user_profiles WHERE user_key = :u"),
                                 {"u": u}).first() for u in money_users}
        money_rows = conn.execute(text("SELECT count(*) FROM events WHERE user_key = ANY(:k)"),
                                  {"k": money_users}).scalar_one()
    money_dead = {t.rsplit("-", 1)[0] for t in found["worker"] if t.rsplit("-", 1)[0] in money_users}
    if any(tuple(v or ()) != (1, MAX_MONEY) for v in money.values()) or money_rows != len(money_users) \
            or money_dead != set(money_users):
        summary.problem(f"two orders of {MAX_MONEY}: profiles {money}, {money_rows} event rows for "
                        f"{len(money_users)} users, second order dead-lettered for {len(money_dead)}")

    if not worker.alive() or worker.fail_stops() or worker.note_child() != child or worker.exits:
        summary.problem(f"the worker did not survive: alive {worker.alive()}, exits {worker.exits}, fail-stops "
                        f"{worker.fail_stops()}, child {child} -> {worker.note_child()}; log: {worker.critical_lines(10)}")
    latency = canary(_client(collector, write_key), engine, "hostile")
    if latency is None:
        summary.problem("the canary event was not persisted within the deadline")
    http.close()
    huge_events = users_with_events(["huge-shopper"])["huge-shopper"][0]
    summary.add(hostile_inputs=len(hostile_messages) + len(requests) + len(records),
                via_collector=f"{len(hostile_messages):,} messages in {len(hostile.MESSAGE_CATEGORIES)} categories "
                              f"+ {len(requests):,} requests in {len(hostile.REQUEST_CATEGORIES)}",
                onto_topic=f"{len(records):,} records in {len(hostile.RECORD_CATEGORIES)} categories",
                collector_answers=dict(sorted(answers.items())), rejected_by_collector=len(rejected_messages),
                dead_letters=f"collector {len(found['collector']) + untagged['collector']:,}, "
                             f"worker {len(found['worker']) + untagged['worker']:,}",
                valid_events=len(expected_ids), odd_but_valid_stored=len(one_event_users),
                huge_user=f"{size['views']:,} products + {size['lines']:,} cart lines, events {huge_events:,}",
                persisted=result.persisted, lost=len(result.lost), doubled=result.doubled,
                worker_exits=len(worker.exits), fail_stops=worker.fail_stops(),
                settled_s=waited if waited is not None else "never",
                canary_s=latency if latency is not None else "missing")
    summary.finish()


def _client(url: str, write_key: str):
    from tests.faults.harness import Client
    return Client(url, write_key, give_up_s=30)
