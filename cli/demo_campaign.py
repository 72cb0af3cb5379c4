"""The demo's campaign: the shoppers who abandoned a cart get a reminder, a 10% discount, or nothing (the
holdout), through signed webhooks to a receiver the demo runs; some of them come back and buy; the
campaign's report shows the lift of each variant with its interval and the ROI.

- the campaign (``demo_cart_rescue_<seed>``) acts on the cart abandonments of the demo's traffic: it is
  launched as of the first shopper, and paused when the demo ends, so nothing is sent after it;
- the demo enqueues and dispatches its own campaign's deliveries (``only``): the stack's campaigns runner
  may share the work (deploy/stack.sh lets the local stack's runner call webhooks on this machine);
- ``SignedReceiver`` answers 200 only to a POST whose ``X-Spoor-Signature`` verifies
  (``webhook_delivery.verify``), 401 otherwise;
- who comes back is simulated, with known rates (``RETURN_RATE``): users who received a message return
  at their variant's rate, everyone else (holdout, or no message) at the holdout's. They buy their
  abandoned cart (less 10% with the discount), sent through the collector like any order.
"""

import http.server
import json
import random
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import Engine, select, text

from spoor.campaigns.campaign_dispatch import CampaignStore, dispatch_due, enqueue, report
from spoor.campaigns.campaign_spec import parse_campaign
from spoor.campaigns.webhook_delivery import Sender, verify
from spoor.settings import Settings
from spoor.storage.segment_tables import CampaignDelivery
from spoor.storage.tables import BehaviourTrigger

HOLDOUT_PERCENT = 30  # a few hundred abandoned carts: a larger holdout narrows the intervals more than variants
RETURN_RATE = {"holdout": 0.08, "reminder": 0.20, "discount": 0.30}
DISCOUNT = 0.10
COST_PER_MESSAGE = 0.05  # an e-mail through the shop's provider
FIXED_COST = 1500.0  # the agency that wrote the two messages
MAX_BODY_BYTES = 1 << 20
FIRST_VARIANT = "reminder"


class SignedReceiver:
    """A local webhook endpoint that checks every call's signature; ``calls``: the verified payloads."""

    def __init__(self, secret: str):
        self.calls: list[dict] = []
        self.refused = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, MAX_BODY_BYTES))
                valid = length <= MAX_BODY_BYTES and verify(secret, self.headers.get("X-Spoor-Timestamp", ""), body,
                                                             self.headers.get("X-Spoor-Signature", ""))
                with receiver.lock:
                    if valid:
                        receiver.calls.append(json.loads(body))
                    else:
                        receiver.refused += 1
                self.send_response(200 if valid else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/crm/cart-rescue"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def definition(name: str, url: str) -> dict:
    return {"name": name, "description": "make demo: cart abandoners, a reminder or a 10% discount",
            "audience": {"trigger": "cart_abandonment"}, "action": {"webhook": url},
            "holdout_percent": HOLDOUT_PERCENT, "frequency_cap": {"max": 1, "per": "7d"}, "conversion_window_days": 7,
            "message": {"template": "cart-reminder"}, "cost_per_message": COST_PER_MESSAGE, "fixed_cost": FIXED_COST,
            "variants": [{"name": FIRST_VARIANT, "weight": 1}, {"name": "discount", "weight": 1, "message": {
                "template": "cart-10-off", "discount": DISCOUNT}}]}


@dataclass
class DemoCampaign:
    name: str
    settings: Settings  # the demo's: its secret, and webhooks to this machine allowed
    receiver: SignedReceiver
    dispatched: dict = field(default_factory=dict)
    stopped: bool = False


def launch(engine: Engine, settings: Settings, seed: int, since: datetime) -> DemoCampaign:
    """Define the demo's campaign and launch it as of ``since`` (the first shopper of the traffic)."""
    secret = settings.campaign_webhook_secret or secrets.token_urlsafe(32)
    settings = settings.model_copy(update={"campaign_webhook_secret": secret,
                                           "webhook_allow_private_addresses": True})  # the receiver is local
    receiver = SignedReceiver(secret)
    name = f"demo_cart_rescue_{seed}"
    store = CampaignStore(engine)
    store.save(parse_campaign(definition(name, receiver.url)))
    store.launch(name, since)
    return DemoCampaign(name, settings, receiver)


PENDING = select(CampaignDelivery.id).where(CampaignDelivery.status == "pending").limit(1)


def dispatch(engine: Engine, campaign: DemoCampaign, timeout_s: float = 60) -> dict:
    """Enqueue the cart abandonments since launch and send until none is pending, then pause the campaign
    (nothing is sent once the demo is over) and close the receiver; counts by outcome (of this process)."""
    sender = Sender(campaign.settings)
    pending = PENDING.where(CampaignDelivery.campaign == campaign.name)
    deadline = time.monotonic() + timeout_s
    while True:
        now = datetime.now(timezone.utc)
        enqueue(engine, now, only={campaign.name})
        for outcome, n in dispatch_due(engine, sender, now, only={campaign.name}).items():
            campaign.dispatched[outcome] = campaign.dispatched.get(outcome, 0) + n
        with engine.connect() as conn:
            if conn.execute(pending).first() is None or time.monotonic() > deadline:
                break
        time.sleep(0.2)
    stop(engine, campaign)
    return campaign.dispatched


def stop(engine: Engine, campaign: DemoCampaign) -> None:
    """Pause the campaign and close the receiver, once (also when the demo fails half-way)."""
    if not campaign.stopped:
        campaign.stopped = True
        CampaignStore(engine).pause(campaign.name)
        campaign.receiver.close()


EPISODES = (select(CampaignDelivery.user_key, CampaignDelivery.status, CampaignDelivery.variant,
                   BehaviourTrigger.details)
            .join(BehaviourTrigger, BehaviourTrigger.trigger_id == CampaignDelivery.episode)
            .order_by(CampaignDelivery.id))


def returning_shoppers(engine: Engine, campaign: DemoCampaign, seed: int) -> tuple[list[dict], dict[str, int]]:
    """The orders of the shoppers who come back (simulated at ``RETURN_RATE``), stamped now, and how many
    came back per arm they were assigned to (a variant, or the holdout)."""
    with campaign.receiver.lock:
        received = {call["user_key"]: call.get("variant", FIRST_VARIANT) for call in campaign.receiver.calls}
    with engine.connect() as conn:
        episodes = conn.execute(EPISODES.where(CampaignDelivery.campaign == campaign.name,
                                               CampaignDelivery.status != "opted_out")).all()
    rng = random.Random(f"returns-{seed}")
    now = datetime.now(timezone.utc).isoformat()
    messages, returned = [], {}
    for user_key, status, assigned, details in episodes:
        variant = received.get(user_key, "holdout")  # no message received: the holdout's behaviour
        if rng.random() >= RETURN_RATE[variant]:
            continue
        # rows a runner older than variants enqueued have none: the report counts them in the first
        arm = "holdout" if status == "holdout" else assigned or FIRST_VARIANT
        returned[arm] = returned.get(arm, 0) + 1
        factor = 1 - DISCOUNT if variant == "discount" else 1
        lines = [{"product_id": item["product_id"], "quantity": item["quantity"],
                  "price": round(float(item["price"] or 0) * factor, 2)} for item in details.get("items", [])]
        ids = {"anonymousId": user_key} if user_key.startswith("anon-") else {"userId": user_key}
        # a shopper the message brought back arrives by its link (a channel for attribution); the holdout direct
        came_by = ({"context": {"campaign": {"source": "cart_rescue", "medium": "email", "name": campaign.name}}}
                   if variant != "holdout" else {})
        messages.append({"type": "track", **ids, "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
                         "timestamp": now, **came_by, "event": "Order Completed", "properties": {
                             "order_id": f"demo-return-{uuid.UUID(int=rng.getrandbits(128))}", "currency": "EUR",
                             "revenue": round(sum(line["price"] * line["quantity"] for line in lines), 2),
                             "products": lines}})
    return messages, returned


def campaign_report(engine: Engine, campaign: DemoCampaign) -> dict:
    """The campaign's report, with what the receiver saw."""
    result = report(engine, campaign.name)
    with campaign.receiver.lock:
        result["receiver"] = {"verified": len(campaign.receiver.calls), "refused": campaign.receiver.refused}
    return result


SEGMENT_SIZES = text("""
    SELECT s.name, (SELECT count(*) FROM segment_members m WHERE m.segment = s.name) AS members
      FROM segments s WHERE s.status = 'active' ORDER BY s.name
""")
SEGMENTS_CURSOR = text("SELECT changed_since FROM segment_cursors WHERE name = 'incremental'")
NOW = text("SELECT clock_timestamp()")


def database_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        return conn.execute(NOW).scalar_one()


def segment_sizes(engine: Engine, since: datetime, timeout_s: float = 15) -> dict:
    """Active segments and their members, once the segments runner has passed over what was persisted
    before ``since`` (the database's clock; its cursor is past it), or as they are after ``timeout_s``
    (``current`` False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with engine.connect() as conn:
            cursor = conn.execute(SEGMENTS_CURSOR).scalar()
            current = cursor is not None and cursor >= since
            if current or time.monotonic() > deadline:
                return {"current": current, "sizes": {r.name: r.members for r in conn.execute(SEGMENT_SIZES)}}
        time.sleep(0.5)


def print_segments(segments: dict, width: int = 100) -> None:
    """Every active segment and its members, a few per line."""
    sizes = [f"{name} {n:,}" for name, n in segments["sizes"].items()] or ["no active segment"]
    lines, line = [], ""
    for size in sizes:
        if line and len(line) + len(size) + 2 > width:
            lines.append(line + ",")
            line = ""
        line = f"{line}, {size}" if line else size
    lines.append(line)
    print("  segments (members)  " + "\n                      ".join(lines))
    if not segments["current"]:
        print("                      (as last computed: the segments runner has not passed over the demo's "
              "traffic yet)")


def print_campaign(result: dict) -> None:
    experiment = result["experiment"]
    sent = ", ".join(f"{v['name']} {v['messages_sent']}" for v in experiment["variants"])
    other = {k: n for k, n in result["deliveries_by_status"].items() if k not in ("sent", "holdout")}
    print(f"  campaign            {result['campaign']}: cart abandoners, {HOLDOUT_PERCENT}% holdout, "
          f"variants reminder / discount ({DISCOUNT:.0%} off)")
    print(f"      deliveries      sent per variant: {sent}; holdout {experiment['holdout']['episodes']} (nothing "
          f"sent){''.join(f'; {k} {n}' for k, n in sorted(other.items()))}; receiver verified "
          f"{result['receiver']['verified']} signatures, refused {result['receiver']['refused']}")
    if other.get("dead_letter"):
        print("      (dead letters: a campaigns runner started before this version may refuse webhooks to this "
              "machine: restart the stack)")
    from spoor.campaigns.experiment_text import experiment_lines
    for line in experiment_lines(result)[1:]:
        print("    " + line)
