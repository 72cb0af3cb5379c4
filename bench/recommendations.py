"""Recommendations proven on real purchases (issue 22): figures, not a test. Needs Kafka and PostgreSQL
(`deploy/stack.sh infra`); it runs its own collector, worker and admin API on a scratch database and
fresh topics, and does not touch a running `make up` stack.

Online Retail (a UK gift shop, Dec 2010 - Jun 2011) is split in time at ``--cut``:

- the invoices before the cut go through the real pipeline, mapped as `spoor replay` maps them
  (spoor.cli.replay: customers -> users, invoices -> orders with lines, cancellations -> refunds,
  guests -> anonymous ids) with their original times: collector -> Kafka -> worker -> PostgreSQL;
- once every event is in PostgreSQL, every customer who bought both before the cut and in
  [cut, ``--end``) gets Spoor's top 10: through the admin API's ``GET /v1/recommendations/users/{key}``
  when the API has the route, else from ``storage.recommendations.for_user`` on the same database
  (the output says which);
- beside them, ``for_user`` without the demand term (``Blend(demand_exponent=0)``) on the same database:
  the ablation that shows what that term adds;
- three baselines are computed from the CSV alone with pandas and scipy, on the same split and the
  same training data (guest invoices included): global popularity, buy-again (the customer's own
  most-bought, filled with popular products) and item-kNN (cosine over the buyer x product matrix,
  50 neighbours per product, self-similarity left out, the customer's own products kept as candidates).

Metrics over those customers, against the distinct products each bought in [cut, end): hit rate@10
(share with at least one of the 10 bought), precision@10 (hits / 10), recall@10 (hits / products
bought, per customer), averaged; coverage is distinct products recommended / products in the training
side.

    .venv/bin/python bench/recommendations.py                      # the reported split
    .venv/bin/python bench/recommendations.py --validation         # the tuning split, inside the training period

``--validation`` cuts six weeks earlier (2011-04-08) and evaluates on [2011-04-08, 2011-05-20): only
data from before the reported cut. Scoring was tuned on it only; the reported split was then run once.
``--database URL`` evaluates an existing database (kept with ``--keep``) without replaying.
"""

import argparse
import csv
import gzip
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from scipy import sparse
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.analytics import ScratchRun, free_port, start, wait_healthy  # noqa: E402
from bench.pipeline import post_all  # noqa: E402
from spoor.cli.replay import Tally, online_retail_messages  # noqa: E402
from spoor.settings import Settings  # noqa: E402
from spoor.storage.recommendation_reads import make_every_list  # noqa: E402
from spoor.storage.recommendations import Blend, for_user  # noqa: E402

DATA = Path("/work/shared/data/online_retail_2010-12_2011-06.csv.gz")
CUT, END = "2011-05-20", "2011-07-01"  # the last six weeks of the file are the test side
VALIDATION_CUT, VALIDATION_END = "2011-04-08", "2011-05-20"
K = 10
NEIGHBOURS = 50  # item-kNN: neighbours kept per product
BATCH_EVENTS, BATCH_BYTES = 500, 400 * 1024  # as `spoor replay` sends
ROUTE = "/v1/recommendations/users/{user_key}"


# ---- the data set, with pandas --------------------------------------------------------------------

def order_lines(path: Path) -> pd.DataFrame:
    """One row per (invoice, product) of the invoices (not cancellations, positive quantities):
    invoice, buyer (CustomerID, or ``guest-<invoice>``), customer (None for guests), product, time
    (the invoice's earliest line, as the replay takes it), taken as UTC."""
    frame = pd.read_csv(path, dtype={"InvoiceNo": str, "StockCode": str, "CustomerID": str})
    frame = frame[~frame.InvoiceNo.str.startswith("C") & (frame.Quantity > 0) & frame.StockCode.str.strip().ne("")]
    frame = frame.assign(time=pd.to_datetime(frame.InvoiceDate).dt.tz_localize("UTC"),
                         product=frame.StockCode.str.strip(),
                         customer=frame.CustomerID.map(lambda v: str(int(float(v))) if isinstance(v, str) else None))
    frame["time"] = frame.groupby("InvoiceNo").time.transform("min")
    frame["buyer"] = frame.customer.fillna("guest-" + frame.InvoiceNo)
    return frame[["InvoiceNo", "buyer", "customer", "product", "time"]].drop_duplicates(["InvoiceNo", "product"])


@dataclass
class Split:
    cut: pd.Timestamp
    end: pd.Timestamp
    train: pd.DataFrame  # order lines before the cut
    truth: dict[str, set[str]]  # customer on both sides -> distinct products bought in [cut, end)

    @property
    def products(self) -> int:
        return self.train["product"].nunique()


def split(lines: pd.DataFrame, cut: str, end: str) -> Split:
    cut_at, end_at = pd.Timestamp(cut, tz="UTC"), pd.Timestamp(end, tz="UTC")
    train = lines[lines.time < cut_at]
    test = lines[(lines.time >= cut_at) & (lines.time < end_at) & lines.customer.notna()]
    test = test[test.customer.isin(set(train.customer.dropna()))]
    truth = {customer: set(group) for customer, group in test.groupby("customer")["product"]}
    return Split(cut_at, end_at, train, truth)


# ---- baselines, with pandas and scipy -------------------------------------------------------------

def popularity(train: pd.DataFrame) -> list[str]:
    """Products by the number of orders that hold them (ties: product id)."""
    counts = train.groupby("product").InvoiceNo.nunique().reset_index(name="orders")
    return counts.sort_values(["orders", "product"], ascending=[False, True])["product"].head(4 * K).tolist()


def top_up(items: list[str], fallback: list[str]) -> list[str]:
    return (items + [p for p in fallback if p not in items])[:K]


def buy_again(train: pd.DataFrame, customers: list[str], popular: list[str]) -> dict[str, list[str]]:
    """The customer's own products by orders holding them, then by the latest; then popular ones."""
    own = train[train.customer.isin(customers)].groupby(["customer", "product"]) \
        .agg(orders=("InvoiceNo", "nunique"), last=("time", "max")).reset_index() \
        .sort_values(["customer", "orders", "last", "product"], ascending=[True, False, False, True])
    lists = {customer: group["product"].head(K).tolist() for customer, group in own.groupby("customer")}
    return {customer: top_up(lists.get(customer, []), popular) for customer in customers}


def item_knn(train: pd.DataFrame, customers: list[str], popular: list[str]) -> dict[str, list[str]]:
    """score(u, q) = sum over the products p u bought of cosine(p, q), the 50 nearest q of each p kept;
    cosine over the binary buyer x product matrix (every buyer, guests included)."""
    buyers = pd.Categorical(train.buyer)
    products = pd.Categorical(train["product"])
    matrix = sparse.csr_matrix((np.ones(len(train)), (buyers.codes, products.codes)),
                               shape=(len(buyers.categories), len(products.categories)))
    matrix.data[:] = 1.0  # bought or not (an order's duplicate lines were dropped; several orders add up)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=0)).ravel())
    together = (matrix.T @ matrix).toarray()
    similarity = together / np.outer(norms, norms)
    np.fill_diagonal(similarity, 0.0)
    weakest = np.argpartition(-similarity, NEIGHBOURS, axis=1)[:, NEIGHBOURS:]
    np.put_along_axis(similarity, weakest, 0.0, axis=1)
    rows = {buyer: index for index, buyer in enumerate(buyers.categories)}
    names = np.asarray(products.categories)
    lists = {}
    for customer in customers:
        scores = matrix[rows[customer]] @ similarity
        scores = np.asarray(scores).ravel()
        best = np.argsort(-scores, kind="stable")[:K]
        lists[customer] = top_up([names[i] for i in best if scores[i] > 0], popular)
    return lists


# ---- Spoor: the pipeline --------------------------------------------------------------------------

def replay_messages(path: Path, before: pd.Timestamp) -> tuple[list[dict], Tally]:
    """`spoor replay`'s messages for the file's invoices and cancellations before ``before``."""
    tally = Tally()
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = [name.strip().lstrip("\ufeff") for name in next(reader)]
        rows = ((line, dict(zip(header, values))) for line, values in enumerate(reader, start=2))
        messages = online_retail_messages(rows, tally)
    limit = before.to_pydatetime()
    kept = [m for m in messages if datetime.fromisoformat(m["timestamp"].replace("Z", "+00:00")) < limit]
    return kept, tally


def bodies_of(messages: list[dict]) -> list[bytes]:
    bodies, batch, size = [], [], 0
    for message in messages:
        encoded = orjson.dumps(message)
        if batch and (len(batch) == BATCH_EVENTS or size + len(encoded) > BATCH_BYTES):
            bodies.append(b'{"batch":[' + b",".join(batch) + b"]}")
            batch, size = [], 0
        batch.append(encoded)
        size += len(encoded) + 1
    if batch:
        bodies.append(b'{"batch":[' + b",".join(batch) + b"]}")
    return bodies


def stored(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM events WHERE event_id LIKE 'online-retail-%'")).scalar()


def wait_stored(engine, expected: int, timeout: float) -> None:
    deadline, last = time.monotonic() + timeout, -1
    while (count := stored(engine)) < expected:
        if time.monotonic() > deadline:
            sys.exit(f"only {count} of {expected} events reached PostgreSQL in {timeout:.0f}s")
        if count != last:
            print(f"  ... {count:,} of {expected:,} events in PostgreSQL", flush=True)
            last = count
        time.sleep(5)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ApiRecommender:
    """Spoor's lists through the admin API's route."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url, token

    def __call__(self, user_key: str) -> list[str]:
        request = urllib.request.Request(
            f"{self.url}{ROUTE.format(user_key=urllib.parse.quote(user_key, safe=''))}?k={K}",
            headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return [item["product_id"] for item in orjson.loads(response.read())["items"]]


def has_route(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/openapi.json", timeout=10) as response:
        return ROUTE in orjson.loads(response.read()).get("paths", {})


def direct_lists(engine, customers: list[str], blend: Blend = Blend()) -> dict[str, list[str]]:
    with engine.connect() as conn:
        return {c: [item["product_id"] for item in for_user(conn, c, K, blend)["items"]] for c in customers}


def spoor_lists(database_url: str, customers: list[str], api_env: dict | None, work: Path) -> tuple[dict, dict, str]:
    """Each customer's top 10 from Spoor, how they were asked for, and the ablation's lists (``for_user``
    without the demand term, on the same database)."""
    engine = create_engine(database_url)
    api = None
    try:
        ablation = direct_lists(engine, customers, Blend(demand_exponent=0.0))
        if api_env is not None:
            made = make_every_list(engine)  # what the segments runner does as traffic comes (the API serves them)
            print(f"lists made ahead: {made.users} users, {made.products} products", flush=True)
            api = subprocess.Popen([sys.executable, "-m", "spoor.cli", "segments", "api"], env=api_env,
                                   stdout=open(work / "admin-api.log", "ab"), stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{api_env['SPOOR_ADMIN_API_PORT']}"
            wait_healthy(api, f"{url}/healthz", 60)
            if has_route(url):
                ask = ApiRecommender(url, api_env["SPOOR_ADMIN_TOKEN"])
                return {c: ask(c) for c in customers}, ablation, f"HTTP GET {ROUTE}?k={K} on the admin API"
        how = "storage.recommendations.for_user, " + (
            "called directly (--database)" if api_env is None else "the admin API having no recommendations route")
        return direct_lists(engine, customers), ablation, how
    finally:
        if api is not None:
            stop(api)
        engine.dispose()


def run_pipeline(base: Settings, split_: Split, work: Path, keep: bool) -> tuple[dict, dict, dict, str]:
    """Replays the training side through collector -> Kafka -> worker -> PostgreSQL; Spoor's lists."""
    figures = {}
    messages, tally = replay_messages(DATA, split_.cut)
    figures["training events sent"] = len(messages)
    scratch = ScratchRun(base, work, "recs", {})
    collector_url = f"http://127.0.0.1:{scratch.settings.collector_port}"
    worker_url = f"http://127.0.0.1:{scratch.settings.worker_web_port}"
    collector = start("collector", scratch.env, work / "collector.log")
    worker = start("worker", scratch.env, work / "worker.log")
    try:
        wait_healthy(collector, f"{collector_url}/healthz", 60)
        wait_healthy(worker, f"{worker_url}/healthz", 120)
        started = time.perf_counter()
        print(f"replaying {len(messages):,} events (orders and refunds before {split_.cut:%Y-%m-%d}) ...",
              flush=True)
        post_all(collector_url, scratch.key, bodies_of(messages), threads=2)
        wait_stored(create_engine(scratch.settings.database_url), len(messages), timeout=3600)
        figures["pipeline seconds (collector to PostgreSQL)"] = round(time.perf_counter() - started, 1)
    finally:
        stop(worker)
        stop(collector)
    try:
        api_env = {**scratch.env, "SPOOR_ADMIN_TOKEN": secrets.token_hex(16),
                   "SPOOR_AUDIT_HMAC_KEY": secrets.token_hex(32),  # the admin API refuses to start without one
                   "SPOOR_ADMIN_API_PORT": str(free_port())}
        started = time.perf_counter()
        lists, ablation, how = spoor_lists(scratch.settings.database_url, sorted(split_.truth), api_env, work)
        figures["seconds for the lists (API start and the ablation included)"] = round(time.perf_counter() - started, 1)
    finally:
        if keep:
            print(f"kept the database: {scratch.settings.database_url}", flush=True)
        else:
            scratch.drop()
    return lists, ablation, figures, how


# ---- metrics ---------------------------------------------------------------------------------------

def scores(lists: dict[str, list[str]], split_: Split) -> dict:
    hits = [len(set(lists[c][:K]) & bought) for c, bought in split_.truth.items()]
    recommended = {p for c in split_.truth for p in lists[c][:K]}
    return {"hit@10": np.mean([h > 0 for h in hits]), "precision@10": np.mean([h / K for h in hits]),
            "recall@10": np.mean([h / len(split_.truth[c]) for h, c in zip(hits, split_.truth)]),
            "coverage": len(recommended) / split_.products, "customers": len(hits)}


def discordant(a: dict, b: dict, split_: Split) -> tuple[int, int]:
    """Customers hit by ``a``'s list and not ``b``'s, and the other way round."""
    hit_a = {c for c, bought in split_.truth.items() if set(a[c][:K]) & bought}
    hit_b = {c for c, bought in split_.truth.items() if set(b[c][:K]) & bought}
    return len(hit_a - hit_b), len(hit_b - hit_a)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial test of ``wins`` against ``losses`` at one half (McNemar's, exact)."""
    from scipy.stats import binomtest
    return binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0


def table(rows: dict[str, dict]) -> list[str]:
    lines = ["| method | hit@10 | precision@10 | recall@10 | coverage | customers |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['hit@10']:.3f} | {row['precision@10']:.3f} | {row['recall@10']:.3f} | "
                     f"{row['coverage']:.3f} | {row['customers']:,} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--validation", action="store_true", help="the tuning split, inside the training period")
    parser.add_argument("--cut", help=f"first day of the test side (default {CUT}, {VALIDATION_CUT} with "
                                      "--validation)")
    parser.add_argument("--end", help="first day after the test side")
    parser.add_argument("--database", help="evaluate this database (a kept run of the same cut) without replaying")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and print its URL")
    args = parser.parse_args()
    cut = args.cut or (VALIDATION_CUT if args.validation else CUT)
    end = args.end or (VALIDATION_END if args.validation else END)
    started = time.perf_counter()
    split_ = split(order_lines(DATA), cut, end)
    customers = sorted(split_.truth)
    print(f"{'validation' if args.validation else 'reported'} split: train before {cut}, test [{cut}, {end}); "
          f"training: {split_.train.InvoiceNo.nunique():,} orders, {split_.train.customer.nunique():,} customers, "
          f"{split_.products:,} products; test: {len(customers):,} customers on both sides, "
          f"{sum(len(v) for v in split_.truth.values()):,} (customer, product) pairs", flush=True)

    baseline_started = time.perf_counter()
    popular = popularity(split_.train)
    baselines = {"global popularity": {c: popular[:K] for c in customers},
                 "buy-again": buy_again(split_.train, customers, popular),
                 "item-kNN (cosine)": item_knn(split_.train, customers, popular)}
    results = {name: scores(lists, split_) for name, lists in baselines.items()}
    baseline_s = time.perf_counter() - baseline_started

    work = Path(tempfile.mkdtemp(prefix="spoor-recs-"))
    print(f"logs under {work}", flush=True)
    figures: dict = {}
    if args.database:
        spoor, ablation, how = spoor_lists(args.database, customers, None, work)
    else:
        spoor, ablation, figures, how = run_pipeline(Settings(), split_, work, args.keep)
    results = {"Spoor": scores(spoor, split_), **results,
               "Spoor without demand (ablation)": scores(ablation, split_)}

    print()
    print(f"cut: {cut} (train before it, test [{cut}, {end}), times as UTC); "
          f"{'VALIDATION split (inside the training period)' if args.validation else 'reported split'}")
    print(f"Spoor's lists: {how}")
    for name, value in figures.items():
        print(f"{name}: {value:,}" if isinstance(value, int) else f"{name}: {value}")
    print(f"baselines computed in {baseline_s:.1f}s; whole run {time.perf_counter() - started:.0f}s")
    print()
    print("\n".join(table(results)))
    best = max((name for name in results if not name.startswith("Spoor")), key=lambda name: results[name]["hit@10"])
    ratio = results["Spoor"]["hit@10"] / results[best]["hit@10"]
    print()
    print(f"Spoor vs the best baseline on hit@10 ({best}): {results['Spoor']['hit@10']:.3f} vs "
          f"{results[best]['hit@10']:.3f} ({ratio - 1:+.1%})")
    only_spoor, only_best = discordant(spoor, baselines[best], split_)
    print(f"customers hit by Spoor only: {only_spoor}, by {best} only: {only_best}; two-sided sign test "
          f"(McNemar, exact) p = {sign_test(only_spoor, only_best):.2g}")


if __name__ == "__main__":
    main()
