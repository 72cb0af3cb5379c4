"""Events that move the worker's clock: its watermarks advance per partition, with the events read."""

from datetime import datetime

from spoor.stream_processors.rocksdb_store import key_partition


def clock_messages(partitions: int, when: datetime) -> list[dict]:
    """An event at ``when`` on every partition: moves each partition's watermark past earlier deadlines."""
    users, i = {}, 0
    while len(users) < partitions:
        user = f"clock-{i}"
        users.setdefault(key_partition(user.encode(), partitions), user)
        i += 1
    stamp = when.isoformat().replace("+00:00", "Z")
    return [{"type": "page", "userId": user, "messageId": f"{user}-{when.timestamp()}", "timestamp": stamp}
            for user in users.values()]
