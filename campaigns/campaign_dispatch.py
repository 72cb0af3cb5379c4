"""Campaigns in PostgreSQL: enqueue audience episodes, dispatch due deliveries, report conversion.

Exactly once per (campaign, user, episode) from the user's point of view:
- ``enqueue`` inserts one ``campaign_deliveries`` row per episode (a behaviour trigger id, or a segment
  entry's transition id); the unique index makes re-running it harmless. The table is partitioned by the
  episode's time (``triggered_at``, migration 0030), which the episode fixes, so the index holds it and a second
  enqueue of an episode still meets its row; the look-up names it too, so it reads one partition;
- ``dispatch_due`` takes one due row at a time with ``FOR UPDATE SKIP LOCKED`` (so parallel dispatchers
  never send the same row) and, under a per-(campaign, user) advisory lock, applies the rules and sends;
- every attempt carries the row's idempotency key. If the process dies after the receiver answered and
  before the commit, the retry carries the same key and the receiver drops it.
Failures are retried with exponential backoff; after ``max_attempts`` (or a permanent 4xx) the row is
``dead_letter`` and a bad row goes to the campaigns dead-letter topic.

A campaign with recommendations also records, for its holdout episodes, the list each would have been
sent (``record_counterfactuals``; campaign_recommendations.py).
"""

from datetime import datetime, timedelta

import orjson
from sqlalchemy import Engine, exists, func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from spoor.bad_rows import bad_row
from spoor.campaigns.campaign_recommendations import bought_recommended, recommend
from spoor.campaigns.campaign_rules import Decision, decide, idempotency_key, in_holdout, retry_at, variant_for, zone
from spoor.campaigns.campaign_spec import CampaignDefinitionError, CampaignSpec, parse_campaign
from spoor.campaigns.experiment import analyse, user_outcomes
from spoor.campaigns.lift import lift
from spoor.campaigns.webhook_delivery import Sender
from spoor.consent import MARKETING, WITHHELD
from spoor.storage.consent_store import withdrawn
from spoor.storage.identities import canonical_key
from spoor.storage.segment_tables import (
    Campaign,
    CampaignAttempt,
    CampaignDelivery,
    SegmentDefinition,
    SegmentTransition,
    UserConsent,
)
from spoor.storage.tables import BehaviourTrigger

CAMPAIGNS = Campaign.__table__
DELIVERIES = CampaignDelivery.__table__
ATTEMPTS = CampaignAttempt.__table__
CONSENT = UserConsent.__table__  # a user is "opted_out" of campaigns without marketing consent (withdrawn)
TRIGGERS = BehaviourTrigger.__table__
TRANSITIONS = SegmentTransition.__table__
ENQUEUE_BATCH = 1000


class UnknownCampaign(CampaignDefinitionError):
    pass


class CampaignStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def save(self, spec: CampaignSpec) -> None:
        if spec.audience.segment_entry:
            with self.engine.connect() as conn:
                if conn.execute(select(SegmentDefinition.name).where(
                        SegmentDefinition.name == spec.audience.segment_entry)).first() is None:
                    raise CampaignDefinitionError(f"audience: unknown segment {spec.audience.segment_entry!r}")
        self._keep_variants(spec)
        definition = spec.model_dump(mode="json")
        stmt = insert(CAMPAIGNS).values(name=spec.name, definition=definition, status="draft")
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_={
                "definition": definition, "updated_at": func.now()}))

    def _keep_variants(self, spec: CampaignSpec) -> None:
        """A launched campaign keeps its variants and weights: changing them would move users between arms
        mid-test (assignment hashes over the weights), mixing the arms' outcomes."""
        with self.engine.connect() as conn:
            row = conn.execute(select(CAMPAIGNS.c.definition, CAMPAIGNS.c.launched_at)
                               .where(CAMPAIGNS.c.name == spec.name)).first()
        if row is None or row.launched_at is None:
            return
        arms = [(v.name, v.weight) for v in parse_campaign(row.definition).arms()]
        if arms != [(v.name, v.weight) for v in spec.arms()]:
            raise CampaignDefinitionError("variants: a launched campaign keeps its variants and weights (changing "
                                          "them would move users between arms): define a new campaign")

    def get(self, name: str) -> tuple[CampaignSpec, dict]:
        with self.engine.connect() as conn:
            row = conn.execute(select(CAMPAIGNS).where(CAMPAIGNS.c.name == name)).first()
        if row is None:
            raise UnknownCampaign(f"no campaign named {name[:80]!r}")
        return parse_campaign(row.definition), dict(row._mapping)

    def rows(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(CAMPAIGNS).order_by(CAMPAIGNS.c.name))]

    def launch(self, name: str, now: datetime) -> None:
        """Start acting on episodes from now on (a relaunch after a pause keeps the first launch time)."""
        self._set(name, status="active", launched_at=func.coalesce(CAMPAIGNS.c.launched_at, now))

    def pause(self, name: str) -> None:
        self._set(name, status="paused")

    def _set(self, name: str, **values) -> None:
        with self.engine.begin() as conn:
            if not conn.execute(update(CAMPAIGNS).where(CAMPAIGNS.c.name == name)
                                .values(**values, updated_at=func.now())).rowcount:
                raise UnknownCampaign(f"no campaign named {name[:80]!r}")

    def active(self) -> list[tuple[CampaignSpec, datetime]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(CAMPAIGNS.c.definition, CAMPAIGNS.c.launched_at)
                                .where(CAMPAIGNS.c.status == "active").order_by(CAMPAIGNS.c.name)).all()
        return [(parse_campaign(r.definition), r.launched_at) for r in rows]


def _episodes(conn, spec: CampaignSpec, launched_at: datetime, now: datetime):
    """Audience episodes since launch (and since ``launched_at``, which the caller moves up to the deliveries'
    retention) that have no delivery row yet: (episode, user_key, at, details)."""
    already = exists().where(DELIVERIES.c.campaign == spec.name)  # with user_key: the unique index answers
    if spec.audience.trigger:
        query = (select(TRIGGERS.c.trigger_id, TRIGGERS.c.user_key, TRIGGERS.c.fired_at, TRIGGERS.c.details)
                 .where(TRIGGERS.c.kind == spec.audience.trigger, TRIGGERS.c.fired_at >= launched_at,
                        TRIGGERS.c.fired_at <= now,
                        ~already.where(DELIVERIES.c.user_key == TRIGGERS.c.user_key,
                                       DELIVERIES.c.episode == TRIGGERS.c.trigger_id,
                                       DELIVERIES.c.triggered_at == TRIGGERS.c.fired_at))
                 .order_by(TRIGGERS.c.fired_at))
    else:
        episode = func.concat("segment:", TRANSITIONS.c.segment, ":", TRANSITIONS.c.id)
        query = (select(episode, TRANSITIONS.c.user_key, TRANSITIONS.c.at,
                        func.jsonb_build_object("segment", TRANSITIONS.c.segment))
                 .where(TRANSITIONS.c.segment == spec.audience.segment_entry, TRANSITIONS.c.change == "enter",
                        TRANSITIONS.c.at >= launched_at, TRANSITIONS.c.at <= now,
                        ~already.where(DELIVERIES.c.user_key == TRANSITIONS.c.user_key,
                                       DELIVERIES.c.episode == episode, DELIVERIES.c.triggered_at == TRANSITIONS.c.at))
                 .order_by(TRANSITIONS.c.id))
    return conn.execute(query.limit(ENQUEUE_BATCH)).all()


def enqueue(engine: Engine, now: datetime, only: set[str] | None = None, kept_since: datetime | None = None) -> int:
    """One delivery row per new audience episode of every active campaign. Opted-out users are recorded
    as such (never in the holdout, so holdout and treated both hold consenting users only). ``only``: these
    campaigns only (the demo acts on its own campaign, not on the shop's). ``kept_since``: the oldest episode
    time whose delivery the retention keeps (``retention_deliveries_days`` ago): an older episode is not
    enqueued, since its delivery row may have gone with its partition and it would be sent a second time."""
    created = 0
    for spec, launched_at in CampaignStore(engine).active():
        if only is not None and spec.name not in only:
            continue
        with engine.begin() as conn:
            episodes = _episodes(conn, spec, max(launched_at, kept_since) if kept_since else launched_at, now)
            if not episodes:
                continue
            opted_out = _without_marketing_consent(conn, {e[1] for e in episodes})
            rows = []
            for episode, user_key, at, _details in episodes:
                status = ("opted_out" if user_key in opted_out
                          else "holdout" if in_holdout(spec.name, user_key, spec.holdout_percent) else "pending")
                due = at + timedelta(seconds=spec.delay)
                rows.append({"campaign": spec.name, "user_key": user_key, "episode": episode,
                             "variant": variant_for(spec.name, user_key, spec.arms()) if status == "pending" else None,
                             "idempotency_key": idempotency_key(spec.name, user_key, episode), "triggered_at": at,
                             "due_at": due, "next_attempt_at": due, "status": status,
                             "expires_at": at + timedelta(seconds=spec.expires_after) if spec.expires_after else None,
                             "recommendations_k": spec.recommendations.k
                             if spec.recommendations and status != "opted_out" else None})
            inserted = conn.execute(insert(DELIVERIES).values(rows).on_conflict_do_nothing()
                                    .returning(DELIVERIES.c.status)).scalars().all()
            created += len(inserted)
            WITHHELD.labels(MARKETING).inc(inserted.count("opted_out"))
    return created


def _payload(spec: CampaignSpec, delivery, details: dict, recommendations: list[dict] | None = None) -> bytes:
    """The message body. ``variant``: the episode's A/B/n variant, whose message it carries (else the campaign's).
    ``recommendations``: ``[{product_id, score, reason}]``, only when the episode has them."""
    variant = spec.variant(delivery.variant)
    body = {"campaign": spec.name, "variant": variant.name, "user_key": delivery.user_key, "episode": delivery.episode,
            "triggered_at": delivery.triggered_at.isoformat(), "delivery_id": delivery.id,
            "idempotency_key": delivery.idempotency_key, "audience": spec.audience.model_dump(exclude_none=True),
            "details": details, "message": spec.message if variant.message is None else variant.message}
    if recommendations is not None:
        body["recommendations"] = recommendations
    return orjson.dumps(body)


def _details(conn, spec: CampaignSpec, episode: str) -> dict:
    if spec.audience.trigger:
        return conn.execute(select(TRIGGERS.c.details).where(TRIGGERS.c.trigger_id == episode)).scalar() or {}
    return {"segment": spec.audience.segment_entry}


def dispatch_due(engine: Engine, sender: Sender, now: datetime, default_time_zone: str = "UTC",
                 dead_letter_topic: str | None = None, limit: int = 500, only: set[str] | None = None) -> dict:
    """Apply the rules to every due delivery of an active campaign (of ``only``, if given) and send it;
    counts by outcome."""
    counts: dict[str, int] = {}
    specs = {spec.name: spec for spec, _ in CampaignStore(engine).active() if only is None or spec.name in only}
    for _ in range(limit):
        with engine.begin() as conn:
            row = conn.execute(
                select(DELIVERIES).where(DELIVERIES.c.status == "pending", DELIVERIES.c.next_attempt_at <= now,
                                         DELIVERIES.c.campaign.in_(list(specs)))
                .order_by(DELIVERIES.c.next_attempt_at, DELIVERIES.c.id).limit(1)
                .with_for_update(skip_locked=True)).first()
            if row is None:
                break
            spec = specs[row.campaign]
            decision = _decision(conn, spec, row, now, default_time_zone)
            outcome_name = decision.status or decision.action
            if decision.action == "drop":
                _update(conn, row.id, status=decision.status)
            elif decision.action == "postpone":
                _update(conn, row.id, next_attempt_at=decision.until)
            else:
                outcome_name = _attempt(conn, sender, spec, row, now, dead_letter_topic)
        counts[outcome_name] = counts.get(outcome_name, 0) + 1
    return counts


def _without_marketing_consent(conn, users: set[str]) -> set[str]:
    """Those of ``users`` without marketing consent, judged as the person each id belongs to now (a segment
    entry or trigger may name an id merged into someone since: the person's consent is the one that holds)."""
    person = {user: canonical_key(conn, user) or user for user in users}
    withdrawn_keys = set(conn.execute(select(CONSENT.c.user_key).where(
        CONSENT.c.user_key.in_(users | set(person.values())), withdrawn(MARKETING))).scalars())
    return {user for user in users if user in withdrawn_keys or person[user] in withdrawn_keys}


def _decision(conn, spec: CampaignSpec, row, now: datetime, default_time_zone: str) -> Decision:
    """The rules for a due treated row, or for a holdout row's would-be send: the cap counts the sends
    (treated), or the would-be sends, of the same arm."""
    lock = f"spoor.campaign:{spec.name}:{row.user_key}"  # serialises the cap check per user
    conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(lock))))
    person = canonical_key(conn, row.user_key) or row.user_key
    consent = conn.execute(select(CONSENT.c.user_key, withdrawn(MARKETING).label("opted_out"), CONSENT.c.time_zone)
                           .where(CONSENT.c.user_key.in_({row.user_key, person}))).all()
    time_zone = next((c.time_zone for c in sorted(consent, key=lambda c: c.user_key != person) if c.time_zone), None)
    sent_recently = 0
    if spec.frequency_cap:
        at = DELIVERIES.c.sent_at if row.status == "pending" else DELIVERIES.c.recommended_at
        sent_recently = conn.execute(select(func.count()).where(
            DELIVERIES.c.campaign == spec.name, DELIVERIES.c.user_key == row.user_key,
            DELIVERIES.c.status == ("sent" if row.status == "pending" else row.status),
            at > now - timedelta(seconds=spec.frequency_cap.per))).scalar_one()
    decision = decide(spec, now, expires_at=row.expires_at, opted_out=any(c.opted_out for c in consent),
                      sent_in_cap_window=sent_recently, tz=zone(time_zone, default_time_zone))
    if decision.status == "opted_out":
        WITHHELD.labels(MARKETING).inc()
    return decision


def record_counterfactuals(engine: Engine, now: datetime, default_time_zone: str = "UTC", limit: int = 500) -> dict:
    """For each due holdout episode of an active campaign with recommendations: the list its message would
    have carried, computed when it would have been sent (the treated rules apply: a would-be send that
    is postponed waits, one that would be dropped records no list). Nothing is sent. Counts by outcome."""
    counts: dict[str, int] = {}
    specs = {spec.name: spec for spec, _ in CampaignStore(engine).active()}
    for _ in range(limit):
        with engine.begin() as conn:
            row = conn.execute(
                select(DELIVERIES).where(DELIVERIES.c.status == "holdout", DELIVERIES.c.recommendations_k.is_not(None),
                                         DELIVERIES.c.recommended_at.is_(None), DELIVERIES.c.next_attempt_at <= now,
                                         DELIVERIES.c.campaign.in_(list(specs)))
                .order_by(DELIVERIES.c.next_attempt_at, DELIVERIES.c.id).limit(1)
                .with_for_update(skip_locked=True)).first()
            if row is None:
                break
            decision = _decision(conn, specs[row.campaign], row, now, default_time_zone)
            if decision.action == "drop":  # the treated twin gets no message: no counterfactual either
                _update(conn, row.id, recommendations_k=None)
            elif decision.action == "postpone":
                _update(conn, row.id, next_attempt_at=decision.until)
            else:
                _update(conn, row.id, **recommend(conn, row, now)[1])
        outcome = decision.status or ("recorded" if decision.action == "send" else decision.action)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def _update(conn, delivery_id: int, **values) -> None:
    conn.execute(update(DELIVERIES).where(DELIVERIES.c.id == delivery_id).values(**values, updated_at=func.now()))


def _attempt(conn, sender: Sender, spec: CampaignSpec, row, now: datetime, dead_letter_topic: str | None) -> str:
    recommendations, recommended = recommend(conn, row, now)  # kept with the row, whatever the outcome
    payload = _payload(spec, row, _details(conn, spec, row.episode), recommendations)
    outcome = sender.send(spec, payload, row.idempotency_key, row.user_key)
    attempt = row.attempts + 1
    conn.execute(ATTEMPTS.insert().values(delivery_id=row.id, triggered_at=row.triggered_at, attempt=attempt, at=now,
                                          status_code=outcome.status_code, response=outcome.response,
                                          error=outcome.error))
    common = {"attempts": attempt, "last_status_code": outcome.status_code,
              "last_response": outcome.response if outcome.response is not None else outcome.error, **recommended}
    if outcome.ok:
        _update(conn, row.id, status="sent", sent_at=now, **common)
        return "sent"
    if outcome.permanent or attempt >= spec.max_attempts:
        if dead_letter_topic and sender.producer is not None:
            sender.producer.send(dead_letter_topic, key=row.user_key.encode(), value=bad_row(
                "campaigns", "action", f"gave up after {attempt} attempts: {common['last_response']}",
                orjson.loads(payload), source=spec.name)).get(timeout=30)
        _update(conn, row.id, status="dead_letter", **common)
        return "dead_letter"
    _update(conn, row.id, next_attempt_at=retry_at(spec, now, attempt), **common)
    return "retry"


REPORT = text("""
    SELECT d.status AS arm, count(*) AS episodes,
           count(*) FILTER (WHERE EXISTS (
               SELECT 1 FROM events e
                WHERE e.user_key = d.user_key AND e.kind = 'purchase'
                  AND e.event_time > d.triggered_at
                  AND e.event_time <= d.triggered_at + make_interval(days => :days))) AS converted
      FROM campaign_deliveries d
     WHERE d.campaign = :campaign AND d.status IN ('sent', 'holdout')
     GROUP BY d.status
""")


def report(engine: Engine, name: str, days: int | None = None) -> dict:
    """Conversion (a purchase within N days of the trigger) of treated (sent) vs holdout episodes; for a
    campaign with recommendations, also ``recommended_products_bought`` (campaign_recommendations.py);
    ``experiment``: each variant against the holdout per user, revenue and ROI (experiment.py)."""
    spec, _ = CampaignStore(engine).get(name)
    days = days or spec.conversion_window_days
    with engine.connect() as conn:
        arms = {r.arm: r for r in conn.execute(REPORT, {"campaign": name, "days": days})}
        statuses = dict(conn.execute(select(DELIVERIES.c.status, func.count()).where(DELIVERIES.c.campaign == name)
                                     .group_by(DELIVERIES.c.status)).all())
        bought = bought_recommended(conn, name, days)
        outcomes = user_outcomes(conn, spec, days)
    sent, hold = arms.get("sent"), arms.get("holdout")
    out = {"campaign": name, "conversion_window_days": days, "deliveries_by_status": statuses,
           **lift(sent.episodes if sent else 0, sent.converted if sent else 0,
                  hold.episodes if hold else 0, hold.converted if hold else 0)}
    if spec.recommendations or bought["treated"] or bought["holdout"]:
        out["recommended_products_bought"] = bought
    out["experiment"] = analyse(spec, outcomes)
    return out


def user_history(engine: Engine, user_key: str, limit: int = 100) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            select(DELIVERIES.c.campaign, DELIVERIES.c.episode, DELIVERIES.c.status, DELIVERIES.c.triggered_at,
                   DELIVERIES.c.sent_at, DELIVERIES.c.attempts, DELIVERIES.c.last_status_code)
            .where(DELIVERIES.c.user_key == user_key).order_by(DELIVERIES.c.id.desc()).limit(limit))]


def preview(engine: Engine, spec: CampaignSpec, now: datetime, sample: int = 10) -> dict:
    """Who the campaign would reach: current segment members, or users with such a trigger in 7 days."""
    with engine.connect() as conn:
        if spec.audience.segment_entry:
            from spoor.storage.segment_tables import SegmentMember
            users = select(SegmentMember.user_key).where(SegmentMember.segment == spec.audience.segment_entry)
        else:
            users = select(TRIGGERS.c.user_key).where(TRIGGERS.c.kind == spec.audience.trigger,
                                                      TRIGGERS.c.fired_at > now - timedelta(days=7)).distinct()
        users = users.subquery()
        opted_out = exists().where(CONSENT.c.user_key == users.c.user_key, withdrawn(MARKETING))
        size = conn.execute(select(func.count()).select_from(users).where(~opted_out)).scalar_one()
        keys = conn.execute(select(users.c.user_key).where(~opted_out).order_by(users.c.user_key)
                            .limit(sample)).scalars().all()
    return {"campaign": spec.name, "audience": spec.audience.model_dump(exclude_none=True), "reachable_users": size,
            "expected_holdout": round(size * spec.holdout_percent / 100), "sample": list(keys)}
