"""Journeys (stream_processors/journeys.py): page types, dwell times, depth, searches; bounds; order."""

import random
import time
from datetime import datetime, timezone

import pytest

from spoor.events import Event, EventKind
from spoor.stream_processors import journeys
from spoor.stream_processors.journeys import DWELL_CAP_S, MAX_RECORDS, MAX_TERM_CHARS, Journey, page_type, path_type
from spoor.stream_processors.sessions import Session

T0 = 1_760_000_000.0


def ev(kind: EventKind, name: str = "", **fields) -> Event:
    now = datetime.fromtimestamp(T0, timezone.utc)
    return Event(event_id=f"e{random.random()}", kind=kind, name=name or kind.value, user_key="u", event_time=now,
                 received_at=now, **fields)


def page(name: str = "page", url: str | None = None) -> Event:
    return ev(EventKind.PAGE_VIEW, name, page_url=url)


def engaged(ms: int, url: str | None = None) -> Event:
    return ev(EventKind.CUSTOM, "Page Engagement", visible_ms=ms, page_url=url)


def searched(query: str | None, results: int | None = None) -> Event:
    return ev(EventKind.CUSTOM, "Products Searched", search_query=query, result_count=results)


def journey_of(*timed: tuple[float, Event]) -> dict:
    journey = Journey()
    for at, event in timed:
        journey.add(event, T0 + at)
    return journey.summary()


# ---- page types -------------------------------------------------------------------------------------

@pytest.mark.parametrize("event, expected", [
    (ev(EventKind.PRODUCT_VIEW), "product"), (ev(EventKind.CART_ADD), "cart"), (ev(EventKind.CART_REMOVE), "cart"),
    (ev(EventKind.CHECKOUT), "checkout"), (ev(EventKind.PURCHASE), "purchase"),
    (searched("boots"), "search"), (ev(EventKind.CUSTOM, "Product List Viewed"), "listing"),
    (ev(EventKind.CUSTOM, "product_list_filtered"), "listing"), (ev(EventKind.CUSTOM, "Cart Viewed"), "cart"),
    (ev(EventKind.CUSTOM, "Checkout Step Viewed"), "checkout"),
    (page("Home"), "home"), (page("  Product   Detail "), "product"), (page("Thank You"), "purchase"),
    (page("page", "https://shop.example/"), "home"), (page("page", "https://shop.example"), "home"),
    (page("page", "https://shop.example/collections/boots/products/red?x=1"), "listing"),
    (page("page", "https://shop.example/products/red-boot"), "product"),
    (page("page", "https://shop.example/en/cart#top"), "cart"), (page("page", "/checkout/payment"), "checkout"),
    (page("Blue suede shoes", "https://shop.example/blue-suede-shoes"), "other"), (page("page"), "other"),
])
def test_page_type_from_kind_name_or_path(event, expected):
    assert page_type(event) == expected


@pytest.mark.parametrize("event", [ev(EventKind.CLICK), ev(EventKind.IDENTIFY), ev(EventKind.REFUND),
                                   ev(EventKind.CUSTOM, "Newsletter Signed Up")])
def test_events_that_show_no_page_are_no_step(event):
    assert page_type(event) is None
    assert journey_of((0, event))["page_depth"] == 0


def test_unknown_and_hostile_page_names_are_other():
    for name in ("x" * 256, "DROP TABLE sessions;--", "\u202ehome", "home page 2", "<script>"):
        assert page_type(page(name)) == "other"
    assert path_type("https://shop.example/" + "/a" * 5000) == "other"
    assert set(journeys.PAGE_NAMES.values()) | set(journeys.PATH_SEGMENTS.values()) <= set(journeys.PAGE_TYPES)


# ---- dwell and depth ---------------------------------------------------------------------------------

def test_dwell_is_the_time_to_the_next_step_and_the_last_step_has_none():
    summary = journey_of((0, page("Home")), (12.5, page("Category")), (40, ev(EventKind.PRODUCT_VIEW, product_id="p1")),
                         (41, ev(EventKind.CLICK)), (100, ev(EventKind.CART_ADD, product_id="p1")))
    assert summary["page_type"] == ["home", "listing", "product", "cart"]
    assert summary["dwell_s"] == [12.5, 27.5, 60.0, None]  # the click is no step
    assert summary["dwell_source"] == ["next", "next", "next", None]
    assert summary["product_id"] == [None, None, "p1", "p1"]
    assert summary["page_depth"] == 4 and summary["steps_beyond"] == 0


def test_dwell_is_capped():
    summary = journey_of((0, ev(EventKind.PRODUCT_VIEW)), (3 * 3600, ev(EventKind.PRODUCT_VIEW)),
                         (3 * 3600 + 1, engaged(10**11)))
    assert summary["dwell_s"] == [DWELL_CAP_S, DWELL_CAP_S]
    assert summary["dwell_source"] == ["next", "visible"]


def test_a_visible_time_beats_the_gap_and_the_largest_report_counts():
    url_a, url_b = "https://s.example/products/a", "https://s.example/products/b"
    summary = journey_of((0, page("Product", url_a)), (30, engaged(4_000, url_a)), (31, engaged(9_500, url_a)),
                         (60, page("Product", url_b)), (65, engaged(2_000, url_a)), (90, engaged(7_250, url_b)))
    assert summary["dwell_s"] == [9.5, 7.25]  # a's later, smaller report changes nothing
    assert summary["dwell_source"] == ["visible", "visible"]


def test_an_engagement_without_a_matching_page_is_ignored():
    summary = journey_of((0, engaged(5_000, "https://s.example/x")), (10, page("Home", "https://s.example/")),
                         (20, engaged(3_000, "https://s.example/other")))
    assert summary["page_type"] == ["home"] and summary["dwell_s"] == [None]


def test_an_engagement_without_a_url_reports_on_the_step_before_it():
    summary = journey_of((0, ev(EventKind.PRODUCT_VIEW)), (50, engaged(20_000)), (60, ev(EventKind.PRODUCT_VIEW)))
    assert summary["dwell_s"] == [20.0, None]


def test_a_page_call_and_its_product_viewed_are_one_step_in_either_order():
    url = "https://s.example/products/a"
    both = [(0, page("Product", url)), (0.2, ev(EventKind.PRODUCT_VIEW, product_id="a", page_url=url)),
            (30, ev(EventKind.CART_ADD, product_id="a", page_url=url))]
    for ordering in (both, [both[1], both[0], both[2]], [both[2], both[1], both[0]]):
        summary = journey_of(*ordering)
        assert summary["page_type"] == ["product", "cart"]
        assert summary["product_id"] == ["a", "a"] and summary["dwell_s"] == [30.0, None]
        assert summary["step_times"] == [T0, T0 + 30]


def test_the_summary_does_not_depend_on_arrival_order():
    rng = random.Random(7)
    kinds = [EventKind.PRODUCT_VIEW, EventKind.CART_ADD, EventKind.CHECKOUT, EventKind.PURCHASE, EventKind.CLICK]
    for _ in range(50):
        timed = [(rng.uniform(0, 3000), ev(rng.choice(kinds), product_id=f"p{rng.randint(1, 3)}")) for _ in range(20)]
        timed += [(rng.uniform(0, 3000), engaged(rng.randint(0, 10**6))) for _ in range(3)]
        reference = journey_of(*sorted(timed, key=lambda t: t[0]))
        rng.shuffle(timed)
        assert journey_of(*timed) == reference


def test_state_is_bounded_and_depth_counts_every_step():
    journey = Journey()
    for n in range(MAX_RECORDS + 40):
        journey.add(ev(EventKind.PRODUCT_VIEW, product_id="p"), T0 + n)
        journey.add(engaged(1000), T0 + n + 0.5)
    summary = journey.summary()
    assert len(journey.records) == MAX_RECORDS
    assert summary["page_depth"] == MAX_RECORDS // 2 + 90 and summary["steps_beyond"] == 90
    assert len(summary["page_type"]) == MAX_RECORDS // 2


def test_absorb_equals_one_journey_of_both():
    first = [(0, ev(EventKind.PRODUCT_VIEW, product_id="a")), (100, searched("Boots"))]
    second = [(50, page("Home")), (150, ev(EventKind.CART_ADD, product_id="b"))]
    mine, theirs = Journey(), Journey()
    for at, event in first:
        mine.add(event, T0 + at)
    for at, event in second:
        theirs.add(event, T0 + at)
    mine.absorb(theirs)
    assert mine.summary() == journey_of(*first, *second)


# ---- searches -------------------------------------------------------------------------------------

def test_searches_keep_a_folded_term_result_count_and_whether_a_cart_add_followed():
    summary = journey_of((0, searched("  Red   BOOTS ", 12)), (5, searched("zzz", 0)), (9, ev(EventKind.CART_REMOVE)),
                         (20, ev(EventKind.PRODUCT_VIEW, product_id="b")), (30, ev(EventKind.CART_ADD, product_id="b")),
                         (40, searched("socks")))
    assert summary["search_term"] == ["red boots", "zzz", None, None, None, "socks"]
    assert summary["result_count"] == [12, 0, None, None, None, None]
    assert summary["cart_add_after"] == [True, True, None, None, None, False]  # a cart removal is no cart add


def test_a_100_kb_search_term_is_cut_cheaply():
    term = "Shoes " * 20_000
    started = time.process_time()
    summary = journey_of((0, ev(EventKind.CUSTOM, "Products Searched", search_query=term[:256])))
    assert summary["search_term"] == [("shoes " * 20)[:MAX_TERM_CHARS]]
    assert journeys.search_term(term) == ("shoes " * 20)[:MAX_TERM_CHARS]
    assert time.process_time() - started < 0.05
    assert journeys.search_term("   ") is None and journeys.search_term(None) is None


# ---- in the session state --------------------------------------------------------------------------

def test_the_session_state_carries_the_journey_and_reads_states_from_before_it():
    session = Session("s", True, T0, T0)
    session.add(ev(EventKind.PRODUCT_VIEW, product_id="a"), T0)
    session.add(ev(EventKind.CART_ADD, product_id="a"), T0 + 5)
    again = Session.decode(session.encode())
    assert again.journey.summary() == session.journey.summary()
    assert again.journey.summary()["page_type"] == ["product", "cart"]
    before_0030 = Session.decode(session.encode()[:-1])  # stored by a worker without opened_at
    assert before_0030.journey.summary() == session.journey.summary()
    old = Session.decode(session.encode()[:-2])  # stored by a worker without journeys
    assert old.journey.summary()["page_depth"] == 0 and old.product_views == 1


def test_a_repeated_order_is_no_step():
    session = Session("s", True, T0, T0)
    session.add(ev(EventKind.PURCHASE, order_id="o1"), T0)
    session.add(ev(EventKind.PURCHASE, order_id="o1"), T0 + 1, repeated_order=True)
    assert session.journey.summary()["page_type"] == ["purchase"]


# ---- what the collector takes from Segment messages (ingest/normalize.py) ------------------------

def message(event: str, **props) -> dict:
    return {"type": "track", "event": event, "userId": "u", "properties": props,
            "context": {"page": {"url": "https://s.example/products/a"}}}


def normalized(msg: dict) -> Event:
    from spoor.ingest.normalize import normalize
    return normalize(msg, received_at=datetime.now(timezone.utc), source="web")


def test_products_searched_and_page_engagement_are_read_from_segment_messages():
    search = normalized(message("Products Searched", query="Red boots", result_count=0))
    assert (search.search_query, search.result_count, page_type(search)) == ("Red boots", 0, "search")
    engagement = normalized(message("page_engagement", visible_ms=1234.6))
    assert (engagement.visible_ms, engagement.page_url, page_type(engagement)) == (1235, "https://s.example/products/a",
                                                                                   None)
    assert normalized(message("Products Searched", query=5)).search_query is None  # not a text: no term
    assert normalized(message("Product Viewed", query="x", visible_ms=5)).visible_ms is None  # other events: ignored


def test_a_100_kb_query_is_cut_at_the_collector():
    assert normalized(message("Products Searched", query="q" * 100_000)).search_query == "q" * 256


@pytest.mark.parametrize("props, field", [
    ({"visible_ms": -1}, "properties.visible_ms"), ({"visible_ms": 1e300}, "properties.visible_ms"),
    ({"visible_ms": float("inf")}, "properties.visible_ms"), ({"visible_ms": "10"}, "properties.visible_ms"),
    ({"visible_ms": True}, "properties.visible_ms"),
])
def test_a_negative_huge_or_wrong_visible_time_is_a_bad_row(props, field):
    from spoor.ingest.normalize import InvalidEvent
    with pytest.raises(InvalidEvent) as raised:
        normalized(message("Page Engagement", **props))
    assert raised.value.field == field


@pytest.mark.parametrize("count", [-1, 1.5, "3", 10**13])
def test_a_wrong_result_count_is_a_bad_row(count):
    from spoor.ingest.normalize import InvalidEvent
    with pytest.raises(InvalidEvent) as raised:
        normalized(message("Products Searched", query="boots", result_count=count))
    assert raised.value.field == "properties.result_count"


def test_a_late_step_between_two_records_of_one_page_keeps_them_apart():
    url = "https://s.example/"
    in_order = journey_of((0, page("Home", url)), (10, ev(EventKind.PRODUCT_VIEW, product_id="a")), (20, page("Home", url)))
    late = journey_of((0, page("Home", url)), (20, page("Home", url)), (10, ev(EventKind.PRODUCT_VIEW, product_id="a")))
    assert late == in_order and in_order["page_type"] == ["home", "product", "home"]
    assert journey_of((0, page("Home", url)), (20, page("Home", url)))["page_type"] == ["home"]  # a reload


def test_the_summary_with_urls_and_engagements_does_not_depend_on_arrival_order():
    rng = random.Random(11)
    urls = [f"https://s.example/products/{n}" for n in range(3)]
    for _ in range(50):
        timed = [(rng.uniform(0, 600), page("Product", rng.choice(urls))) for _ in range(8)]
        timed += [(rng.uniform(0, 600), ev(EventKind.PRODUCT_VIEW, page_url=rng.choice(urls), product_id="p"))
                  for _ in range(8)]
        timed += [(rng.uniform(0, 600), engaged(rng.randint(0, 10**5), rng.choice(urls))) for _ in range(4)]
        reference = journey_of(*sorted(timed, key=lambda t: t[0]))
        rng.shuffle(timed)
        assert journey_of(*timed) == reference
