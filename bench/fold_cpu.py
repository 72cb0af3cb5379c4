"""CPU per event of the worker's fold (ProfileTracker.process, analytics on), in-process: no Kafka, no
PostgreSQL. 60,000 simulated events of 9,000 users in batches of 2,000. Figures, not a test.

    .venv/bin/python bench/fold_cpu.py "$PWD" new     # this tree (records with their Kafka timestamp)
    git worktree add /tmp/old 391f7a8
    (cd /tmp/old && "$OLDPWD/.venv/bin/python" "$OLDPWD/bench/fold_cpu.py" /tmp/old)   # an older tree

The first argument is the tree whose code runs; with a second argument the records carry a Kafka
timestamp (trees from 0d9efc6 on); a third, ``identities``, wires the identity graph (trees from
3bbed1f on) and gives a third of the users an anonymous id beside their user id, as after a login.
Alternate old and new runs and compare medians.
"""
import asyncio
import importlib
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from source_tree import use_tree

stages = "spoor.stream_processors" if use_tree(sys.argv[1]) else "stream_processors"
from spoor.events import Event, EventKind, encode_events
from spoor.settings import Settings

AnalyticsTracker = importlib.import_module(f"{stages}.analytics_tracker").AnalyticsTracker
analytics_rules = importlib.import_module(f"{stages}.app").analytics_rules
ProfileTracker = importlib.import_module(f"{stages}.profile_tracker").ProfileTracker
class T(dict):
    async def changelog_durable(self): pass
class W:
    def write_batch(self, *a, **k): pass
async def nothing(*a, **k): pass
rng = random.Random(7); t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
kinds = [EventKind.PAGE_VIEW]*4 + [EventKind.PRODUCT_VIEW]*3 + [EventKind.CART_ADD, EventKind.PURCHASE]
events = []
for n in range(60000):
    u = f"user-{rng.randrange(9000)}"; k = rng.choice(kinds); at = t0 + timedelta(seconds=n)
    extra = {"product_id": f"p{rng.randrange(500)}", "category": "shoes", "price": "9.99"} if k != EventKind.PAGE_VIEW else {}
    if k == EventKind.PURCHASE: extra = {"order_id": f"o{n}", "revenue": "19.98"}
    if len(sys.argv) > 3 and int(u[5:]) % 3 == 0: extra["anonymous_id"] = f"anon-{u}"; extra["user_id"] = u
    events.append(Event(event_id=f"e-{n:08d}-aaaaaaaa-bbbb-cccc", kind=k, name="x", user_key=u, event_time=at, received_at=at, source="web", **extra))
records = [(hash(e.user_key) % 4, encode_events([e])) for e in events]
arrived = (t0 + timedelta(days=1)).timestamp()
new = len(sys.argv) > 2
wiring = {}
if len(sys.argv) > 3:
    graph = importlib.import_module(f"{stages}.identities").IdentityGraph(T(), 25, ["null"])
    async def sent(key, value):
        done = asyncio.get_running_loop().create_future(); done.set_result(None); return done
    wiring = {"identities": graph, "send_record": sent}
tr = ProfileTracker(T(), W(), 512, nothing, AnalyticsTracker(analytics_rules(Settings()), 4, nothing), **wiring)
async def run():
    for s in range(0, len(records), 2000):
        batch = records[s:s+2000]
        await tr.process([(p, r, arrived) for p, r in batch] if new else batch)
c = time.process_time(); asyncio.run(run()); c = time.process_time() - c
print(f"{'new' if new else 'old'}{' identities' if wiring else ''} cpu_us_per_event {c / len(records) * 1e6:.1f}")
