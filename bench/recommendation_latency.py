"""Recommendation serving latency: figures, not a test. Needs the running `make up` stack with data in it
(docs/recommendations.md#serving says how to seed it).

Requests both routes of the running admin API, ``GET /v1/recommendations/users/{user_key}`` and
``/v1/recommendations/products/{product_id}`` (half each, ``--k`` products), **open loop**: request i is
due at ``start + i / rate`` whatever the answers before it did, and its latency runs from that moment
(so a stall delays every request behind it, as it would a shop's pages: no coordinated omission). Requests
go out on keep-alive connections, a new one opened when all are busy. Users are drawn from those with
interests (one in ten unknown: the fallback), products from the catalogue weighted towards popular ones.

Authenticates with a reader key (scope recommendations) created for the run and revoked after it, as a
shop's backend would, unless ``--token`` is given. Reads the stack's settings with `spoor config get`, the
admin API's process id from its pid file (``$SPOOR_RUN_DIR``, default /var/tmp/spoor), and reports per run:
p50 / p95 / p99 / max per route, errors, the admin API's CPU time per request (the process and its
children, from /proc), the machine's CPU use; then the medians over the runs and a last line PASS or FAIL:
PASS when every run answered at the rate asked (98 % or more), without errors, with p99 under ``--target-ms``
(20) over both routes.

    .venv/bin/python bench/recommendation_latency.py --rate 500 --seconds 30 --runs 3

``--memory`` measures instead what the admin API's lists take in memory (``ServedLists`` loaded in this
process from the stack's database): bytes per user and per product, and the figure for a million users.
"""

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
SPOOR = REPO / ".venv" / "bin" / "spoor"
TICKS = os.sysconf("SC_CLK_TCK")


def config(*names: str) -> list[str]:
    out = subprocess.run([str(SPOOR), "config", "get", *names], check=True, capture_output=True, text=True)
    return out.stdout.splitlines()


def send_traffic(rate: float, collector_url: str, write_key: str, seed: int) -> None:
    """Simulated shoppers through the collector at ``rate`` events/s until killed: the pipeline at work
    (worker writes, the runner remaking the lists of the users they change) beside the measured API."""
    from datetime import datetime, timedelta, timezone

    from spoor.cli.collector_client import CollectorClient
    from spoor.cli.simulate import simulate
    client, batch, sent, started = CollectorClient(collector_url, write_key), 25, 0, time.monotonic()
    for round_ in range(1_000_000):
        now = datetime.now(timezone.utc)  # journeys that started up to 40 minutes ago, cut at now (as a shop sees)
        messages = [m for m in simulate(200, seed=seed * 1000 + round_, start=now - timedelta(minutes=40),
                                        spread_s=60) if m["timestamp"] <= now.isoformat()]
        for i in range(0, len(messages), batch):
            status, body = client.send_batch(messages[i:i + batch])
            if status != 200:
                sys.exit(f"traffic: the collector answered {status}: {body}")
            sent += len(messages[i:i + batch])
            time.sleep(max(0.0, started + sent / rate - time.monotonic()))


def sample_ids(database_url: str, users: int, products: int, seed: int) -> tuple[list[str], list[str]]:
    from sqlalchemy import create_engine, text
    engine = create_engine(database_url)
    with engine.connect() as conn:
        user_keys = conn.execute(text("SELECT DISTINCT user_key FROM user_interests WHERE facet = 'product'"
                                      )).scalars().all()
        catalogue = conn.execute(text("SELECT product_id FROM product_popularity ORDER BY weight DESC")).scalars().all()
    engine.dispose()
    if not user_keys or not catalogue:
        sys.exit("no interests in the database: seed it first (docs/recommendations.md#serving)")
    rng = random.Random(seed)
    chosen = rng.sample(user_keys, min(users, len(user_keys)))
    chosen += [f"unknown-{i}" for i in range(max(1, len(chosen) // 9))]  # one in ten: the fallback
    # Popular products are asked for more often (rank-weighted), as product pages are visited.
    weights = [1.0 / (rank + 10) for rank in range(len(catalogue))]
    return chosen, rng.choices(catalogue, weights, k=products)


def process_tree_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants (uvicorn workers), in seconds."""
    parents: dict[int, int] = {}
    cpu: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = int(fields[11]) + int(fields[12])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(cpu.get(p, 0) for p in tree) / TICKS


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class Connections:
    """Keep-alive HTTP/1.1 connections to one host; a new one when every open one is busy."""

    def __init__(self, host: str, port: int, limit: int):
        self.host, self.port, self.limit = host, port, limit
        self.idle: list = []
        self.opened = 0
        self.slots = asyncio.Semaphore(limit)

    async def get(self, path: str, headers: bytes) -> tuple[int, bytes]:
        async with self.slots:
            if self.idle:
                reader, writer = self.idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                self.opened += 1
            try:
                writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\n" + headers)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError):
                writer.close()
                raise
            if b"connection: close" in head.lower():
                writer.close()
            else:
                self.idle.append((reader, writer))
            return status, body

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def one_run(args, paths: list[tuple[str, str]], headers: bytes) -> dict:
    connections = Connections(args.host, args.port, args.connections)
    for _ in range(8):  # warm keep-alive connections, outside the figures
        await connections.get("/healthz", headers)
    latencies: dict[str, list[float]] = {"users": [], "products": []}
    errors: dict[str, int] = {}
    total = int(args.rate * args.seconds)
    pending = set()

    async def request(route: str, path: str, due: float) -> None:
        try:
            status, _ = await connections.get(path, headers)
        except (OSError, asyncio.IncompleteReadError) as err:
            errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
            return
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1
        latencies[route].append(time.perf_counter() - due)

    api_cpu, busy0 = process_tree_cpu_s(args.api_pid), machine_cpu()
    own0 = time.process_time()
    start = time.perf_counter() + 0.05
    for i in range(total):
        due = start + i / args.rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        route, path = paths[i % len(paths)]
        task = asyncio.create_task(request(route, path, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)
    elapsed = time.perf_counter() - start
    api_cpu = process_tree_cpu_s(args.api_pid) - api_cpu
    busy1 = machine_cpu()
    own = time.process_time() - own0
    connections.close()
    done = sum(len(v) for v in latencies.values())
    result = {"requests": total, "answered": done, "achieved_rate": done / elapsed, "errors": errors,
              "connections": connections.opened, "api_cpu_ms_per_request": 1000 * api_cpu / max(1, total),
              "bench_cpu_ms_per_request": 1000 * own / max(1, total),
              "machine_cpu_percent": 100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])}
    for route, values in [*latencies.items(), ("both", latencies["users"] + latencies["products"])]:
        values.sort()
        for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
            result[f"{route}_{name}_ms"] = 1000 * values[min(len(values) - 1, int(q * len(values)))] if values else None
    return result


FIGURES = ["users_p50_ms", "users_p95_ms", "users_p99_ms", "users_max_ms", "products_p50_ms", "products_p95_ms",
           "products_p99_ms", "products_max_ms", "both_p99_ms", "achieved_rate", "api_cpu_ms_per_request",
           "bench_cpu_ms_per_request", "machine_cpu_percent"]


def wait_for_lists(database_url: str, timeout_s: float = 300.0) -> None:
    """Wait until the segments runner has made (storage/recommendation_reads.py: make_lists) a list for
    nearly every user with interests and every product, as in a shop running for a while: a freshly seeded
    stack answers the fallback for those without one until then."""
    from sqlalchemy import create_engine, text
    engine = create_engine(database_url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            with engine.connect() as conn:
                users, made, products, products_made = conn.execute(text(
                    "SELECT (SELECT count(DISTINCT user_key) FROM user_interests), "
                    "(SELECT count(*) FROM user_recommendations), (SELECT count(*) FROM product_popularity), "
                    "(SELECT count(*) FROM product_recommendations)")).one()
            print(f"lists made ahead by the segments runner: users {made}/{users}, products {products_made}/{products}",
                  flush=True)
            if made >= 0.98 * users and products_made >= 0.98 * products or time.monotonic() > deadline:
                return
            time.sleep(5)
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second, both routes together")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--route", choices=["both", "users", "products", "healthz"], default="both",
                        help="both (half each, the figures asked for), one route alone, or /healthz (the floor)")
    parser.add_argument("--connections", type=int, default=64, help="most keep-alive connections open at once")
    parser.add_argument("--token", default=None, help="a bearer token to use instead of a reader key of the run")
    parser.add_argument("--api-pid", type=int, default=None, help="default: the pid file of `make up`")
    parser.add_argument("--port", type=int, default=None,
                        help="another admin API than the stack's (with --api-pid): e.g. an older design side by side")
    parser.add_argument("--target-ms", type=float, default=20.0, help="the p99 a run must stay under to pass")
    parser.add_argument("--memory", action="store_true",
                        help="measure the memory of the served lists instead of the latency")
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--warmup-seconds", type=float, default=10.0,
                        help="an unmeasured run first, at the same rate: a freshly started API opens its database "
                             "connections and fills its caches, which a running shop's API has done long before")
    parser.add_argument("--traffic", type=float, default=0.0, metavar="EVENTS_PER_S",
                        help="also send simulated shoppers through the stack's collector at this rate (a separate "
                             "process), so the worker and the segments runner work beside the API")
    parser.add_argument("--send-traffic", type=float, help=argparse.SUPPRESS)  # the --traffic process itself
    args = parser.parse_args()

    if args.send_traffic:
        collector_host, collector_port, write_key = config("collector_host", "collector_port", "demo_write_key")
        return send_traffic(args.send_traffic, f"http://{collector_host}:{collector_port}", write_key, args.seed)
    host, port, database_url = config("admin_api_host", "admin_api_port", "database_url")
    if args.memory:
        return measure_memory(database_url)
    args.host, args.port = host, args.port or int(port)
    port = args.port
    run_dir = Path(os.environ.get("SPOOR_RUN_DIR", "/var/tmp/spoor"))
    args.api_pid = args.api_pid or int((run_dir / "admin-api.pid").read_text())
    users, products = sample_ids(database_url, 5000, 5000, args.seed)
    wait_for_lists(database_url)
    rng = random.Random(args.seed)
    paths = []
    for i in range(20_000):
        if args.route == "healthz":
            paths.append(("products", "/healthz"))
        elif args.route == "users" or args.route == "both" and i % 2 == 0:
            paths.append(("users", f"/v1/recommendations/users/{quote(rng.choice(users), safe='')}?k={args.k}"))
        else:
            paths.append(("products", f"/v1/recommendations/products/{quote(rng.choice(products), safe='')}"
                                      f"?k={args.k}"))
    key_name = None
    token = args.token
    if token is None:
        key_name = f"bench-latency-{uuid.uuid4().hex[:8]}"
        token = subprocess.run([str(SPOOR), "keys", "create-reader", key_name], check=True, capture_output=True,
                               text=True).stdout.strip()
    headers = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    print(f"admin API http://{host}:{port} (pid {args.api_pid}), {'a reader key' if key_name else '--token'}; "
          f"{len(users)} users ({len(users) // 10} unknown), {len(set(products))} products, k={args.k}; "
          f"{args.rate:.0f} requests/s open loop for {args.seconds:.0f} s, {args.runs} runs")
    traffic = None
    if args.traffic > 0:
        traffic = subprocess.Popen([sys.executable, __file__, "--send-traffic", str(args.traffic),
                                    "--seed", str(args.seed)])
        print(f"traffic: simulated shoppers at {args.traffic:.0f} events/s through the collector (pid {traffic.pid})",
              flush=True)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    results = []
    try:
        if args.warmup_seconds > 0:
            warmup = runner(one_run(argparse.Namespace(**{**vars(args), "seconds": args.warmup_seconds}),
                                    paths[::-1], headers))
            print(f"warm-up ({args.warmup_seconds:.0f} s, not counted): both_p99_ms {warmup['both_p99_ms'] or 0:.2f}"
                  f"  errors {warmup['errors'] or 0}", flush=True)
        for run in range(args.runs):
            result = runner(one_run(args, paths[run * 1000:] + paths[:run * 1000], headers))
            results.append(result)
            print(f"run {run + 1}: " + "  ".join(
                f"{name} {result[name]:.2f}" for name in FIGURES if result[name] is not None)
                + f"  errors {result['errors'] or 0}  connections {result['connections']}", flush=True)
    finally:
        if key_name:
            subprocess.run([str(SPOOR), "keys", "revoke", "--reader", key_name], check=True)
        if traffic is not None:
            if traffic.poll() is not None:
                print(f"traffic: the sender stopped early (exit {traffic.returncode}): the figures are without it")
            traffic.terminate()
            traffic.wait(10)
    print(f"medians of {len(results)} runs:")
    for name in FIGURES:
        values = [r[name] for r in results if r[name] is not None]
        if values:
            print(f"{name}: {statistics.median(values):.2f}")
    print(f"errors: {sum(sum(r['errors'].values()) for r in results)}")
    failing = [f"run {i + 1}: p99 {r['both_p99_ms']:.1f} ms, {r['achieved_rate']:.0f} req/s, "
               f"{sum(r['errors'].values())} errors" for i, r in enumerate(results)
               if not (r["both_p99_ms"] is not None and r["both_p99_ms"] < args.target_ms
                       and r["achieved_rate"] >= 0.98 * args.rate and not r["errors"])]
    worst = max((r["both_p99_ms"] or float("inf")) for r in results) if results else float("inf")
    if results and not failing:
        print(f"PASS: p99 under {args.target_ms:.0f} ms at {args.rate:.0f} requests/s in all {len(results)} runs "
              f"(worst {worst:.1f} ms)")
    else:
        print(f"FAIL: p99 under {args.target_ms:.0f} ms at {args.rate:.0f} requests/s not met: " + "; ".join(failing))


def measure_memory(database_url: str) -> None:
    """What ServedLists holds, measured with tracemalloc while it loads the stack's lists."""
    import gc
    import tracemalloc

    from sqlalchemy import create_engine, text

    from spoor.storage.recommendation_reads import ServedLists
    engine = create_engine(database_url)
    with engine.connect() as conn:
        users, products, ids = conn.execute(text(
            "SELECT count(*), (SELECT count(*) FROM product_recommendations), "
            "coalesce(sum(cardinality(ids)), 0) FROM user_recommendations")).one()
    served = ServedLists(engine)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    served._load()
    loaded = tracemalloc.get_traced_memory()[0] - before
    users_bytes = sum(len(key) + 49 + len(value) + 33 for key, value in served.users.items())
    tracemalloc.stop()
    served._close()
    product_bytes = sum(len(key) + 49 + len(value) + 33 for key, value in served.products.items())
    per_user = (loaded - product_bytes) / max(1, users)
    print(f"{users} users ({ids} ids merged into them), {products} products: {loaded / 2 ** 20:.1f} MiB in all "
          f"(tracemalloc), of which the users' keys and lists {users_bytes / 2 ** 20:.1f} MiB and the products' "
          f"{product_bytes / 2 ** 20:.1f} MiB (object sizes)")
    print(f"per user: {per_user:.0f} bytes with the dictionaries' slots; a million users: "
          f"{per_user * 1e6 / 2 ** 30:.2f} GiB per admin API process (SPOOR_ADMIN_API_WORKERS processes each hold one)")


if __name__ == "__main__":
    main()
